//! Monitoring reports in Valkey: one hash per kind, one field per instance with the time it
//! stops counting beside it (`<instance>:until`, on Valkey's own clock, so instances' clocks
//! need not agree). Writing and reading are scripts: a report is only removed when it is stale
//! at that moment (never a fresh one a reader raced with), and each write also removes the
//! stale reports of instances that stopped, so the hash never grows with restarts.

use super::ValkeyStore;
use crate::store::StoreError;
use std::sync::LazyLock;

/// The hash itself expires when no instance writes any more.
const KEY_TTL_MS: u64 = 3_600_000;

/// Remove the stale fields of KEYS[1] at Valkey's time `now` (ms); answer the live reports.
const SWEEP: &str = r"
local function sweep(key, now)
  local all = redis.call('HGETALL', key)
  local fields = {}
  for i = 1, #all, 2 do fields[all[i]] = all[i + 1] end
  local live = {}
  for f, v in pairs(fields) do
    if string.sub(f, -6) ~= ':until' then
      local untl = tonumber(fields[f .. ':until'])
      if untl and untl > now then
        table.insert(live, v)
      else
        redis.call('HDEL', key, f, f .. ':until')
      end
    elseif fields[string.sub(f, 1, -7)] == nil then
      redis.call('HDEL', key, f)
    end
  end
  return live
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS[1] the hash; ARGV: instance, report, ttl ms, key ttl ms.
static PUT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{SWEEP}
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[1] .. ':until', now + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
sweep(KEYS[1], now)
return 1"
    ))
});

/// KEYS[1] the hash: the live reports.
static ALL: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&format!("{SWEEP}\nreturn sweep(KEYS[1], now)")));

pub async fn put(
    store: &ValkeyStore,
    kind: &str,
    body: &[u8],
    ttl_ms: u64,
) -> Result<(), StoreError> {
    let key = store.keys.reports(kind);
    let (inst, body) = (store.instance.clone(), body.to_vec());
    store
        .valkey
        .run(|mut c| async move {
            PUT.key(&key)
                .arg(&inst)
                .arg(&body)
                .arg(ttl_ms)
                .arg(KEY_TTL_MS)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .map(drop)
}

pub async fn all(store: &ValkeyStore, kind: &str) -> Result<Vec<Vec<u8>>, StoreError> {
    let key = store.keys.reports(kind);
    store
        .valkey
        .run(|mut c| async move { ALL.key(&key).invoke_async(&mut c).await })
        .await
}
