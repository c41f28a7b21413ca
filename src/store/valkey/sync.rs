//! The Valkey store's background work, once a second (events every 200 ms): flush counter
//! deltas, push out the TTLs of used entries, apply other instances' clears, and notice a Valkey
//! that came back empty.

use super::ValkeyStore;
use crate::config::Provider;
use crate::health::HealthSnapshot;
use crate::store::memory::Entry;
use crate::store::StoreError;
use crate::telemetry::{now_ms, AffinityOutcome};
use redis::streams::StreamReadReply;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Approximate length the event stream is trimmed to.
pub const EVENTS_MAXLEN: u64 = 10_000;
const EVENTS_EVERY: Duration = Duration::from_millis(200);
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Health snapshots outlive a few missed probe rounds, then disappear with their writers.
const HEALTH_TTL_MS: u64 = 60_000;

/// `<provider>:<outcome>`, the field of the counter hash.
pub fn stats_field(p: Provider, o: AffinityOutcome) -> String {
    format!("{}:{}", p.as_str(), o.as_str())
}

/// Before serving: find out whether Valkey answers and where the event stream stands.
pub async fn first_contact(store: &ValkeyStore) {
    if let Err(e) = check_epoch(store).await {
        tracing::warn!(error = %e, "valkey not reachable at start-up; serving on local state until it is");
    }
}

/// The loop, until the process ends.
pub async fn run(store: Arc<ValkeyStore>) {
    let mut touched = store.take_touched().expect("sync runs once");
    let mut last_event = latest_event_id(&store).await;
    let mut events = tokio::time::interval(EVENTS_EVERY);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    events.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = events.tick() => {
                if last_event.is_none() {
                    last_event = latest_event_id(&store).await;
                }
                if let Some(id) = &last_event {
                    if let Ok(next) = apply_events(&store, id).await {
                        last_event = Some(next);
                    }
                }
            }
            _ = flush.tick() => {
                let was_available = store.valkey.is_available();
                let _ = check_epoch(&store).await;
                if !was_available && store.valkey.is_available() {
                    // Back after an outage: what was cleared meanwhile is in the stream.
                    if last_event.is_none() {
                        last_event = latest_event_id(&store).await;
                    }
                }
                flush_counts(&store).await;
                refresh_ttls(&store, &mut touched).await;
            }
        }
    }
}

/// `SET epoch NX`: a fresh (or emptied) Valkey has no epoch, so the instance writes back its
/// live affinity entries. Also the availability probe.
async fn check_epoch(store: &ValkeyStore) -> Result<(), StoreError> {
    let key = store.keys.epoch();
    let created: Option<String> = store
        .valkey
        .run(|mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(now_ms())
                .arg("NX")
                .query_async::<Option<String>>(&mut c)
                .await
        })
        .await?;
    if created.is_some() {
        let entries = store.local.entries(now_ms());
        if !entries.is_empty() {
            tracing::info!(
                entries = entries.len(),
                "valkey has no state: repopulating affinity"
            );
        }
        for e in entries {
            store
                .claim_shared(&e.user, &e.model, &e.server, None)
                .await?;
        }
    }
    Ok(())
}

async fn latest_event_id(store: &ValkeyStore) -> Option<String> {
    let key = store.keys.events();
    let last: Result<redis::streams::StreamRangeReply, _> = store
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
        .await;
    match last {
        Ok(r) => Some(
            r.ids
                .first()
                .map_or_else(|| "0-0".to_string(), |e| e.id.clone()),
        ),
        Err(_) => None,
    }
}

/// Apply events after `after`; returns the last id seen.
async fn apply_events(store: &ValkeyStore, after: &str) -> Result<String, StoreError> {
    let key = store.keys.events();
    let after_owned = after.to_string();
    let reply: Option<StreamReadReply> = store
        .valkey
        .run(|mut c| async move {
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1024)
                .arg("STREAMS")
                .arg(&key)
                .arg(&after_owned)
                .query_async(&mut c)
                .await
        })
        .await?;
    let mut last = after.to_string();
    for k in reply.map(|r| r.keys).unwrap_or_default() {
        for e in k.ids {
            let field = |name: &str| -> Option<String> {
                e.map
                    .get(name)
                    .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            };
            match field("kind").as_deref() {
                Some("clear") => {
                    if let Some(user) = field("user") {
                        let model = field("model").filter(|m| !m.is_empty());
                        store.local.remove(&user, model.as_deref());
                    }
                }
                Some("registry") => {
                    store.registry_tx.send_modify(|v| *v += 1);
                }
                Some("docs") => {
                    store.docs_tx.send_modify(|v| *v += 1);
                }
                Some("node") => {
                    if let (Some(node), Some(body)) = (field("node"), field("body")) {
                        store.nodes.deliver(&node, body.as_bytes());
                    }
                }
                _ => {}
            }
            last = e.id.clone();
        }
    }
    Ok(last)
}

/// Flush counter deltas; on failure they go back, so no increment is lost or counted twice.
async fn flush_counts(store: &ValkeyStore) {
    let deltas = store.local.take_counts();
    if deltas.iter().flatten().all(|d| *d == 0) {
        return;
    }
    let key = store.keys.affinity_stats();
    let mut pipe = redis::pipe();
    for p in Provider::ALL {
        for o in [
            AffinityOutcome::Hit,
            AffinityOutcome::Miss,
            AffinityOutcome::Fallback,
        ] {
            let d = deltas[crate::store::memory::provider_index(p)]
                [crate::store::memory::outcome_index(o)];
            if d > 0 {
                pipe.cmd("HINCRBY")
                    .arg(&key)
                    .arg(stats_field(p, o))
                    .arg(d)
                    .ignore();
            }
        }
    }
    // MULTI/EXEC: the deltas land all or nothing.
    pipe.atomic();
    let done = store
        .valkey
        .run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
        .await;
    if done.is_err() {
        store.local.restore_counts(deltas);
    }
}

/// Push out the shared TTL of every entry used since the last flush.
async fn refresh_ttls(store: &ValkeyStore, touched: &mut mpsc::UnboundedReceiver<Arc<Entry>>) {
    let mut batch = Vec::new();
    while let Ok(e) = touched.try_recv() {
        if e.take_touched() {
            batch.push(e);
        }
    }
    if batch.is_empty() || !store.valkey.is_available() {
        return;
    }
    for e in batch {
        let (aff, idx, ttl) = (
            store.keys.affinity(&e.user, &e.model),
            store.keys.affinity_index(&e.user),
            store.local.ttl_ms(),
        );
        let _ = store
            .valkey
            .run(|mut c| async move {
                redis::pipe()
                    .cmd("PEXPIRE")
                    .arg(&aff)
                    .arg(ttl)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&idx)
                    .arg(ttl)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
    }
}

pub async fn publish_health(store: &ValkeyStore, snapshots: Vec<(Arc<str>, HealthSnapshot)>) {
    if !store.valkey.is_available() {
        return;
    }
    for (server, h) in snapshots {
        let key = store.keys.health(&server);
        let _ = store
            .valkey
            .run(|mut c| async move {
                redis::pipe()
                    .cmd("HSET")
                    .arg(&key)
                    .arg("healthy")
                    .arg(u8::from(h.healthy))
                    .arg("consecutive_failures")
                    .arg(h.consecutive_failures)
                    .arg("consecutive_successes")
                    .arg(h.consecutive_successes)
                    .arg("last_check_ms")
                    .arg(h.last_check_ms)
                    .arg("last_failure_ms")
                    .arg(h.last_failure_ms)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(HEALTH_TTL_MS)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
    }
}

pub async fn read_health(
    store: &ValkeyStore,
    server: &str,
) -> Result<Option<HealthSnapshot>, StoreError> {
    let key = store.keys.health(server);
    let map: std::collections::HashMap<String, u64> = store
        .valkey
        .run(|mut c| async move {
            redis::cmd("HGETALL")
                .arg(&key)
                .query_async::<std::collections::HashMap<String, u64>>(&mut c)
                .await
        })
        .await?;
    if map.is_empty() {
        return Ok(None);
    }
    let get = |k: &str| map.get(k).copied().unwrap_or(0);
    Ok(Some(HealthSnapshot {
        healthy: get("healthy") == 1,
        consecutive_failures: get("consecutive_failures") as u32,
        consecutive_successes: get("consecutive_successes") as u32,
        last_check_ms: get("last_check_ms"),
        last_failure_ms: get("last_failure_ms"),
    }))
}
