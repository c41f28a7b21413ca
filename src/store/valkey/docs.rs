//! Identity documents in Valkey: HASH `<p>:{docs}:<collection>` id -> JSON, and HASH
//! `<p>:{docs}:<collection>:unique` unique name -> id, written together by a script (one hash
//! tag, so one slot in a cluster). Writes are announced on the event stream; every instance
//! reloads its key cache within a poll interval.

use super::ValkeyStore;
use crate::store::docs::{Collection, Put};
use crate::store::StoreError;

/// Write a document, claiming its unique name (and releasing the old one) atomically.
pub const PUT: &str = r"
if ARGV[3] ~= '' then
  local owner = redis.call('HGET', KEYS[2], ARGV[3])
  if owner and owner ~= ARGV[1] then return 0 end
  if ARGV[4] ~= '' and ARGV[4] ~= ARGV[3] and redis.call('HGET', KEYS[2], ARGV[4]) == ARGV[1] then
    redis.call('HDEL', KEYS[2], ARGV[4])
  end
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

/// Delete a document and its unique name.
pub const DELETE: &str = r"
if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[1] then
  redis.call('HDEL', KEYS[2], ARGV[2])
end
return redis.call('HDEL', KEYS[1], ARGV[1])
";

pub async fn list(
    store: &ValkeyStore,
    c: Collection,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let key = store.keys.docs(c);
    store
        .valkey
        .run(|mut conn| async move {
            redis::cmd("HGETALL")
                .arg(&key)
                .query_async::<Vec<(String, Vec<u8>)>>(&mut conn)
                .await
        })
        .await
}

pub async fn get(
    store: &ValkeyStore,
    c: Collection,
    id: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let key = store.keys.docs(c);
    let id = id.to_string();
    store
        .valkey
        .run(|mut conn| async move {
            redis::cmd("HGET")
                .arg(&key)
                .arg(&id)
                .query_async(&mut conn)
                .await
        })
        .await
}

pub async fn put(
    store: &ValkeyStore,
    c: Collection,
    id: &str,
    doc: &[u8],
    unique: Option<&str>,
    old_unique: Option<&str>,
) -> Result<Put, StoreError> {
    let mut inv = store.docs_put.prepare_invoke();
    inv.key(store.keys.docs(c))
        .key(store.keys.docs_unique(c))
        .arg(id)
        .arg(doc)
        .arg(unique.unwrap_or(""))
        .arg(old_unique.unwrap_or(""));
    let written: i64 = store
        .valkey
        .run(|mut conn| async move { inv.invoke_async(&mut conn).await })
        .await?;
    if written == 0 {
        return Ok(Put::Conflict);
    }
    if c.announced() {
        changed(store).await;
    }
    Ok(Put::Written)
}

pub async fn delete(
    store: &ValkeyStore,
    c: Collection,
    id: &str,
    unique: Option<&str>,
) -> Result<bool, StoreError> {
    let mut inv = store.docs_delete.prepare_invoke();
    inv.key(store.keys.docs(c))
        .key(store.keys.docs_unique(c))
        .arg(id)
        .arg(unique.unwrap_or(""));
    let removed: i64 = store
        .valkey
        .run(|mut conn| async move { inv.invoke_async(&mut conn).await })
        .await?;
    if removed > 0 && c.announced() {
        changed(store).await;
    }
    Ok(removed > 0)
}

/// Tell this instance now and the others through the event stream.
async fn changed(store: &ValkeyStore) {
    store.docs_tx.send_modify(|v| *v += 1);
    if let Err(e) = store.announce(&[("kind", "docs")]).await {
        // The others still reload on their periodic resync.
        tracing::warn!(error = %e, "identity change not announced");
    }
}
