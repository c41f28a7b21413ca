//! Usage records in Valkey: one LIST per hour of the records' own time,
//! `<p>:usage:<unix hour>`, each entry a JSON record, expiring `retention` after its hour
//! ends. Every instance appends (a script: RPUSH once per batch) to the same lists, so a query sees the
//! records of all of them; a record flushed late (after a Valkey outage) still lands in its
//! own hour. Hours are separate keys, so a cluster spreads them over its nodes.

use super::ValkeyStore;
use crate::store::StoreError;
use crate::usage::UsageRecord;
use std::collections::BTreeMap;

const HOUR_MS: u64 = 3_600_000;
/// Entries per LRANGE call.
const PAGE: isize = 10_000;

/// Records per script call (each call passes them as arguments).
const CHUNK: usize = 1_000;

/// Appends ARGV[2..] to the list KEYS[1] and sets its expiry ARGV[1] (ms), unless the marker
/// KEYS[2] says this very chunk was appended before; the marker expires with the list.
/// Atomic: a reply lost after the script ran cannot make a retry append twice.
const APPEND_ONCE: &str = r"
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return 1
end
return 0
";

pub async fn append(
    store: &ValkeyStore,
    batch: &str,
    records: &[UsageRecord],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let now = crate::telemetry::now_ms();
    let mut by_hour: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    for r in records {
        let json = serde_json::to_vec(r).map_err(|e| StoreError::Invalid(e.to_string()))?;
        by_hour.entry(r.ts_ms / HOUR_MS).or_default().push(json);
    }
    // Each hour's list is its own key (its own slot in a cluster); its markers share the
    // slot (their hash tag is the list's whole name). A batch that failed part way is
    // retried whole, and only the chunks not yet appended are added.
    for (hour, entries) in by_hour {
        let expires_ms = ((hour + 1) * HOUR_MS + store.usage_retention_ms).saturating_sub(now);
        if expires_ms == 0 {
            continue; // already past the retention
        }
        append_once(
            store,
            &store.keys.usage(hour),
            batch,
            &entries,
            expires_ms,
            "usage",
        )
        .await?;
    }
    Ok(())
}

pub async fn scan(
    store: &ValkeyStore,
    from_ms: u64,
    to_ms: u64,
    max: usize,
) -> Result<Vec<UsageRecord>, StoreError> {
    let buckets = Buckets {
        span_ms: HOUR_MS,
        retention_ms: store.usage_retention_ms,
        kind: "usage",
    };
    buckets
        .scan(
            store,
            from_ms,
            to_ms,
            |hour| store.keys.usage(hour),
            |r: &UsageRecord| r.ts_ms,
            || StoreError::TooMany(max),
            max,
        )
        .await
}

/// Records kept in one list per time bucket (usage: an hour, audit: a day), each list expiring
/// `retention_ms` after its bucket ends.
pub(super) struct Buckets {
    pub span_ms: u64,
    pub retention_ms: u64,
    /// For the log: what an unreadable entry was.
    pub kind: &'static str,
}

impl Buckets {
    /// The records with `from_ms <= ts < to_ms`, oldest bucket first; at most `max` (else
    /// `too_many`).
    #[allow(clippy::too_many_arguments)]
    pub async fn scan<T: serde::de::DeserializeOwned>(
        &self,
        store: &ValkeyStore,
        from_ms: u64,
        to_ms: u64,
        key: impl Fn(u64) -> String,
        ts_ms: impl Fn(&T) -> u64,
        too_many: impl Fn() -> StoreError,
        max: usize,
    ) -> Result<Vec<T>, StoreError> {
        let now = crate::telemetry::now_ms();
        // Nothing older than the retention (and the bucket it ends in), or newer than now, is
        // stored.
        let from_ms =
            from_ms.max(now.saturating_sub(self.retention_ms.saturating_add(self.span_ms)));
        let to_ms = to_ms.min(now + self.span_ms);
        let mut out = Vec::new();
        if from_ms >= to_ms {
            return Ok(out);
        }
        for bucket in from_ms / self.span_ms..=(to_ms - 1) / self.span_ms {
            read_pages(store, &key(bucket), |page| {
                for bytes in page {
                    match serde_json::from_slice::<T>(bytes) {
                        Ok(r) if (from_ms..to_ms).contains(&ts_ms(&r)) => {
                            if out.len() >= max {
                                return Err(too_many());
                            }
                            out.push(r);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, kind = self.kind, "unreadable record skipped"),
                    }
                }
                Ok(())
            })
            .await?;
        }
        Ok(out)
    }
}

/// Append `entries` to the list `key` (expiring in `expires_ms`) in chunks, each once: a chunk
/// of `batch` appended before (a retry after a lost reply) is not added again. The markers
/// share the list's slot (their hash tag is the list's whole name, or the prefix's tag).
pub(super) async fn append_once(
    store: &ValkeyStore,
    key: &str,
    batch: &str,
    entries: &[Vec<u8>],
    expires_ms: u64,
    what: &str,
) -> Result<(), StoreError> {
    let script = redis::Script::new(APPEND_ONCE);
    for (i, chunk) in entries.chunks(CHUNK).enumerate() {
        // A prefix with its own hash tag already puts every key of it in one slot.
        let marker = match key.contains('{') {
            true => format!("{key}:batch:{batch}:{i}"),
            false => format!("{{{key}}}:batch:{batch}:{i}"),
        };
        let mut call = script.key(key);
        call.key(&marker).arg(expires_ms).arg(chunk);
        let applied: i64 = store
            .valkey
            .run(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        if applied == 0 {
            tracing::info!(
                what,
                batch,
                key,
                chunk = i,
                "chunk already written; not added again"
            );
        }
    }
    Ok(())
}

/// Every entry of the list `key`, read in pages handed to `each` (which may stop the read
/// with an error).
pub(super) async fn read_pages(
    store: &ValkeyStore,
    key: &str,
    mut each: impl FnMut(&[Vec<u8>]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut start: isize = 0;
    loop {
        let k = key.to_string();
        let page: Vec<Vec<u8>> = store
            .valkey
            .run(|mut c| async move {
                redis::cmd("LRANGE")
                    .arg(&k)
                    .arg(start)
                    .arg(start + PAGE - 1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        each(&page)?;
        if (page.len() as isize) < PAGE {
            return Ok(());
        }
        start += PAGE;
    }
}
