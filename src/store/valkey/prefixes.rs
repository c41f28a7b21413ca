//! Cache-aware routing's prefixes shared between instances: each instance appends its batches
//! (every 100 ms at most) to one capped stream, and reads the others' from it.

use super::ValkeyStore;
use crate::store::StoreError;
use redis::streams::{StreamRangeReply, StreamReadReply};

/// Approximate length the stream is trimmed to (batches of every instance: seconds of them).
const MAXLEN: u64 = 1_000;
/// Batches read at most per call.
const READ_COUNT: u64 = 256;

pub async fn publish(store: &ValkeyStore, batch: Vec<u8>) -> Result<(), StoreError> {
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
                .arg("b")
                .arg(&batch)
                .query_async::<String>(&mut c)
                .await
        })
        .await
        .map(drop)
}

pub async fn read(
    store: &ValkeyStore,
    after: Option<&str>,
) -> Result<(Option<String>, Vec<Vec<u8>>), StoreError> {
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
        return Ok((Some(id), Vec::new()));
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
    let mut last = after.to_string();
    let mut batches = Vec::new();
    for k in reply.map(|r| r.keys).unwrap_or_default() {
        for e in k.ids {
            let mine = e
                .map
                .get("from")
                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                .is_some_and(|f| f == store.instance);
            if !mine {
                if let Some(b) = e
                    .map
                    .get("b")
                    .and_then(|v| redis::from_redis_value::<Vec<u8>>(v.clone()).ok())
                {
                    batches.push(b);
                }
            }
            last = e.id;
        }
    }
    Ok((Some(last), batches))
}
