//! Lifecycle nodes over Valkey: heartbeats in one hash, messages on the event stream every
//! instance already polls (so a node hears a command within 200 ms), replies in keys that
//! expire.

use super::ValkeyStore;
use crate::store::nodes::REPLY_TTL;
use crate::store::StoreError;

fn text(body: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(body).map_err(|_| StoreError::Invalid("node message is not UTF-8".into()))
}

pub async fn beat(store: &ValkeyStore, node: &str, info: &[u8]) -> Result<(), StoreError> {
    let (key, node, info) = (store.keys.nodes(), node.to_string(), info.to_vec());
    store
        .valkey
        .run(|mut c| async move {
            redis::cmd("HSET")
                .arg(&key)
                .arg(&node)
                .arg(&info)
                .query_async::<i64>(&mut c)
                .await
        })
        .await
        .map(drop)
}

pub async fn beats(store: &ValkeyStore) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let key = store.keys.nodes();
    store
        .valkey
        .run(|mut c| async move {
            redis::cmd("HGETALL")
                .arg(&key)
                .query_async::<Vec<(String, Vec<u8>)>>(&mut c)
                .await
        })
        .await
}

pub async fn send(store: &ValkeyStore, node: &str, body: &[u8]) -> Result<(), StoreError> {
    store
        .announce(&[("kind", "node"), ("node", node), ("body", text(body)?)])
        .await
}

pub async fn reply_put(store: &ValkeyStore, id: &str, body: &[u8]) -> Result<(), StoreError> {
    let (key, body) = (store.keys.reply(id), body.to_vec());
    store
        .valkey
        .run(|mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(&body)
                .arg("PX")
                .arg(REPLY_TTL.as_millis() as u64)
                .query_async::<()>(&mut c)
                .await
        })
        .await
}

pub async fn reply_take(store: &ValkeyStore, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let key = store.keys.reply(id);
    store
        .valkey
        .run(|mut c| async move {
            redis::cmd("GETDEL")
                .arg(&key)
                .query_async::<Option<Vec<u8>>>(&mut c)
                .await
        })
        .await
}
