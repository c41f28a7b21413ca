//! A reloaded `[[servers]]` list: the routing table is rebuilt from it (servers that stay keep
//! their health and in-flight counts), and the shared registry forgets the routes the file no
//! longer lists (they were seeded there so a Valkey that lost its data gets them back; left
//! there, a removed server would stay routed).

use crate::gateway::Gateway;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Apply the running configuration's servers; `old_routes` are the config routes before the
/// reload. Returns what was applied only in part.
pub async fn apply(gw: &Arc<Gateway>, old_routes: &[(String, String)]) -> Vec<String> {
    let mut warnings = Vec::new();
    let new_routes = gw.config_routes();
    let kept: BTreeSet<&(String, String)> = new_routes.iter().collect();
    let dropped: Vec<&(String, String)> = old_routes.iter().filter(|r| !kept.contains(r)).collect();
    if let Ok(mut tombstones) = gw.dropped_routes.lock() {
        // Listed again: the file owns it again.
        tombstones.retain(|r| !kept.contains(r));
    }
    for (model, url) in &dropped {
        if let Err(e) = gw.store.registry_remove(model, url).await {
            warnings.push(format!(
                "the route {model} -> {url} is still in the shared registry ({e}): this instance routes nothing to it, and removes it once the store answers"
            ));
            if let Ok(mut tombstones) = gw.dropped_routes.lock() {
                tombstones.insert((model.clone(), url.clone()));
            }
        }
    }
    if let Err(e) = gw.store.registry_add(&new_routes).await {
        warnings.push(format!(
            "the new servers' routes are not in the shared registry yet ({e}): other instances learn them once the store answers"
        ));
    }
    let registry = match gw.store.registry().await {
        Ok(r) => r,
        Err(_) => gw
            .last_registry()
            .into_iter()
            .filter(|r| !dropped.contains(&r))
            .collect(),
    };
    match crate::routing::registry_sync::apply(gw, registry).await {
        Ok(left_out) => warnings.extend(
            left_out
                .into_iter()
                .map(|e| format!("server left out of the routing table: {e}")),
        ),
        Err(e) => warnings.push(format!("routing table not rebuilt: {e}")),
    }
    // (A server URL may carry credentials.)
    warnings.iter().map(|w| super::scrubbed(w)).collect()
}
