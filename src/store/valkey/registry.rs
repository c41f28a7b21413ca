//! The persistent registry in Valkey: model -> server URLs. Changes are announced on the event
//! stream; every instance then rebuilds its routing table.

use super::ValkeyStore;
use crate::store::StoreError;

pub async fn read(store: &ValkeyStore) -> Result<Vec<(String, String)>, StoreError> {
    let models_key = store.keys.registry_models();
    let models: Vec<String> = store
        .valkey
        .run(|mut c| async move {
            redis::cmd("SMEMBERS")
                .arg(&models_key)
                .query_async(&mut c)
                .await
        })
        .await?;
    let mut routes = Vec::new();
    for model in models {
        let key = store.keys.registry(&model);
        let urls: Vec<String> = store
            .valkey
            .run(|mut c| async move { redis::cmd("SMEMBERS").arg(&key).query_async(&mut c).await })
            .await?;
        routes.extend(urls.into_iter().map(|u| (model.clone(), u)));
    }
    routes.sort();
    Ok(routes)
}

/// The server URLs of one model (one command, whatever the size of the registry).
pub async fn read_model(store: &ValkeyStore, model: &str) -> Result<Vec<String>, StoreError> {
    let key = store.keys.registry(model);
    store
        .valkey
        .run(|mut c| async move { redis::cmd("SMEMBERS").arg(&key).query_async(&mut c).await })
        .await
}

/// Add routes; announces a change when any was new.
pub async fn add(store: &ValkeyStore, routes: &[(String, String)]) -> Result<(), StoreError> {
    let mut added = 0u64;
    for (model, url) in routes {
        let (model, url) = crate::store::checked_route(model, url)?;
        let (models_key, key) = (store.keys.registry_models(), store.keys.registry(&model));
        added += store
            .valkey
            .run(|mut c| async move {
                redis::cmd("SADD")
                    .arg(&models_key)
                    .arg(&model)
                    .query_async::<u64>(&mut c)
                    .await?;
                redis::cmd("SADD")
                    .arg(&key)
                    .arg(&url)
                    .query_async::<u64>(&mut c)
                    .await
            })
            .await?;
    }
    if added > 0 {
        store.announce(&[("kind", "registry")]).await?;
    }
    Ok(())
}

pub async fn remove(store: &ValkeyStore, model: &str, url: &str) -> Result<bool, StoreError> {
    let key = store.keys.registry(model);
    let url = url.trim_end_matches('/').to_string();
    let removed: u64 = store
        .valkey
        .run(|mut c| async move {
            redis::cmd("SREM")
                .arg(&key)
                .arg(&url)
                .query_async(&mut c)
                .await
        })
        .await?;
    if removed > 0 {
        store.announce(&[("kind", "registry")]).await?;
    }
    Ok(removed > 0)
}
