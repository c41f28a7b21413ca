//! Routing state shared between instances: each instance appends to one capped stream its
//! batches of routed prompts (field `b`, every 50 ms at most) and its load snapshots (field `l`,
//! every 50 ms while it has load), each entry marked with the instance (`from`), and reads the
//! others' entries from it. (An instance of a version without load sharing skips the `l`
//! entries: it reads only `b`.)

use super::ValkeyStore;
use crate::store::{SharedRouting, StoreError};
use redis::streams::{StreamRangeReply, StreamReadReply};

/// Approximate length the stream is trimmed to (batches of every instance: seconds of them).
const MAXLEN: u64 = 1_000;
/// Batches read at most per call.
const READ_COUNT: u64 = 256;

pub async fn publish(store: &ValkeyStore, batch: Vec<u8>) -> Result<(), StoreError> {
    append(store, "b", batch).await
}

/// The seed the store holds, after setting it to `proposed` if it held none (or something
/// that is not a seed).
pub async fn seed(store: &ValkeyStore, proposed: u64) -> Result<u64, StoreError> {
    let key = store.keys.prefix_seed();
    let held: String = store
        .valkey
        .run(|mut c| async move {
            redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg(proposed.to_string())
                .arg("NX")
                .ignore()
                .cmd("GET")
                .arg(&key)
                .query_async::<(String,)>(&mut c)
                .await
                .map(|(v,)| v)
        })
        .await?;
    if let Ok(seed) = held.parse() {
        return Ok(seed);
    }
    // Not a seed (written by hand?): replaced by this instance's, which the others then take.
    tracing::warn!(
        key = %store.keys.prefix_seed(),
        "the prefix hash seed in the store is not a decimal u64: replaced"
    );
    let key = store.keys.prefix_seed();
    store
        .valkey
        .run(|mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(proposed.to_string())
                .query_async::<()>(&mut c)
                .await
        })
        .await?;
    Ok(proposed)
}

pub async fn publish_load(store: &ValkeyStore, snapshot: Vec<u8>) -> Result<(), StoreError> {
    append(store, "l", snapshot).await
}

async fn append(
    store: &ValkeyStore,
    field: &'static str,
    bytes: Vec<u8>,
) -> Result<(), StoreError> {
    let key = store.keys.prefixes();
    let from = store.instance.clone();
    store
        .valkey
        .run(|mut c| async move {
            redis::cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(MAXLEN)
                .arg("*")
                .arg("from")
                .arg(&from)
                .arg(field)
                .arg(&bytes)
                .query_async::<String>(&mut c)
                .await
        })
        .await
        .map(drop)
}

pub async fn read(store: &ValkeyStore, after: Option<&str>) -> Result<SharedRouting, StoreError> {
    let key = store.keys.prefixes();
    let Some(after) = after else {
        // From now: the newest entry's id (what others share from here on).
        let last: StreamRangeReply = store
            .valkey
            .run(|mut c| async move {
                redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let id = last
            .ids
            .first()
            .map_or_else(|| "0-0".into(), |e| e.id.clone());
        return Ok(SharedRouting {
            cursor: Some(id),
            ..Default::default()
        });
    };
    let after_owned = after.to_string();
    let reply: Option<StreamReadReply> = store
        .valkey
        .run(|mut c| async move {
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("STREAMS")
                .arg(&key)
                .arg(&after_owned)
                .query_async(&mut c)
                .await
        })
        .await?;
    let mut out = SharedRouting::default();
    let mut last = after.to_string();
    let bytes = |v: &redis::Value| redis::from_redis_value::<Vec<u8>>(v.clone()).ok();
    for k in reply.map(|r| r.keys).unwrap_or_default() {
        for e in k.ids {
            let from = e
                .map
                .get("from")
                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok());
            if from.as_deref() != Some(store.instance.as_str()) {
                if let Some(b) = e.map.get("b").and_then(bytes) {
                    out.prefixes.push(b);
                }
                if let (Some(from), Some(l)) = (&from, e.map.get("l").and_then(bytes)) {
                    out.loads.push((from.clone(), l));
                }
            }
            last = e.id;
        }
    }
    out.cursor = Some(last);
    Ok(out)
}
