//! Monitoring reports in Valkey: one hash per kind, one field per instance with the Unix ms
//! it stops counting beside it. Readers skip and remove reports whose instance stopped
//! publishing (a dead instance leaves nothing that counts).

use super::ValkeyStore;
use crate::store::StoreError;
use crate::telemetry::now_ms;

/// The hash itself expires when no instance publishes any more.
const KEY_TTL_MS: u64 = 3_600_000;

pub async fn put(
    store: &ValkeyStore,
    kind: &str,
    body: &[u8],
    ttl_ms: u64,
) -> Result<(), StoreError> {
    let key = store.keys.reports(kind);
    let (inst, body) = (store.instance.clone(), body.to_vec());
    let until = now_ms() + ttl_ms;
    store
        .valkey
        .run(|mut c| async move {
            redis::pipe()
                .cmd("HSET")
                .arg(&key)
                .arg(&inst)
                .arg(&body)
                .arg(format!("{inst}:until"))
                .arg(until)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(KEY_TTL_MS)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
}

pub async fn all(store: &ValkeyStore, kind: &str) -> Result<Vec<Vec<u8>>, StoreError> {
    let key = store.keys.reports(kind);
    let fields: Vec<(String, Vec<u8>)> = {
        let key = key.clone();
        store
            .valkey
            .run(|mut c| async move { redis::cmd("HGETALL").arg(&key).query_async(&mut c).await })
            .await?
    };
    let now = now_ms();
    let until = |inst: &str| -> Option<u64> {
        let field = format!("{inst}:until");
        let (_, v) = fields.iter().find(|(f, _)| *f == field)?;
        std::str::from_utf8(v).ok()?.parse().ok()
    };
    let mut live = Vec::new();
    let mut stale = Vec::new();
    for (field, body) in &fields {
        if field.ends_with(":until") {
            continue;
        }
        match until(field) {
            Some(t) if t > now => live.push(body.clone()),
            _ => {
                stale.push(field.clone());
                stale.push(format!("{field}:until"));
            }
        }
    }
    if !stale.is_empty() {
        let _ = store
            .valkey
            .run(|mut c| async move {
                redis::cmd("HDEL")
                    .arg(&key)
                    .arg(&stale)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await;
    }
    Ok(live)
}
