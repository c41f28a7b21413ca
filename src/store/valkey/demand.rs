//! Demand telemetry in Valkey: each instance writes its own in-flight counts under a key that
//! expires unless refreshed (so a dead instance leaves nothing behind), and adds its new requests
//! to per-minute counters; readers sum over the live instances and the last five minutes.

use super::ValkeyStore;
use crate::store::StoreError;
use crate::telemetry::demand::{Demand, DemandReport, ModelDemand, WINDOW_MINUTES};
use crate::telemetry::now_ms;
use std::collections::HashMap;

/// An instance that stopped reporting this long ago no longer counts.
const INSTANCE_TTL_MS: u64 = 5_000;
/// Per-minute counters outlive the window.
const MINUTE_TTL_MS: u64 = (WINDOW_MINUTES + 1) * 60_000;

pub async fn publish(store: &ValkeyStore, reports: Vec<DemandReport>) {
    if !store.valkey.is_available() {
        return;
    }
    let now = now_ms();
    let minute = now / 60_000;
    for r in reports {
        let inst = store.keys.demand_instance(&r.server, &store.instance);
        let all = store.keys.demand_instances(&r.server);
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&inst).ignore();
        let mut hset = redis::cmd("HSET");
        hset.arg(&inst)
            .arg("inflight")
            .arg(r.inflight)
            .arg("last_use_ms")
            .arg(r.last_use_ms);
        for (model, inflight, _) in &r.models {
            hset.arg(format!("m:{model}")).arg(*inflight);
        }
        pipe.add_command(hset).ignore();
        pipe.cmd("PEXPIRE").arg(&inst).arg(INSTANCE_TTL_MS).ignore();
        pipe.cmd("ZADD")
            .arg(&all)
            .arg(now)
            .arg(&store.instance)
            .ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&all)
            .arg("-inf")
            .arg(now.saturating_sub(INSTANCE_TTL_MS))
            .ignore();
        pipe.cmd("PEXPIRE").arg(&all).arg(MINUTE_TTL_MS).ignore();
        for (model, _, new) in &r.models {
            if *new > 0 {
                let k = store.keys.demand_requests(&r.server, model, minute);
                pipe.cmd("INCRBY").arg(&k).arg(*new).ignore();
                pipe.cmd("PEXPIRE").arg(&k).arg(MINUTE_TTL_MS).ignore();
            }
        }
        // One slot ({server}), one transaction: a report lands whole or not at all.
        pipe.atomic();
        let _ = store
            .valkey
            .run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await;
    }
}

pub async fn read(store: &ValkeyStore, server: &str, local: Demand) -> Result<Demand, StoreError> {
    let now = now_ms();
    let minute = now / 60_000;
    let all = store.keys.demand_instances(server);
    let live: Vec<String> = store
        .valkey
        .run(|mut c| async move {
            redis::cmd("ZRANGEBYSCORE")
                .arg(&all)
                .arg(now.saturating_sub(INSTANCE_TTL_MS))
                .arg("+inf")
                .query_async(&mut c)
                .await
        })
        .await?;
    let mut out = Demand {
        models: local
            .models
            .iter()
            .map(|m| ModelDemand {
                model: m.model.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    for id in live {
        let key = store.keys.demand_instance(server, &id);
        let h: HashMap<String, i64> = store
            .valkey
            .run(|mut c| async move { redis::cmd("HGETALL").arg(&key).query_async(&mut c).await })
            .await?;
        out.inflight += h.get("inflight").copied().unwrap_or(0);
        out.last_use_ms = out
            .last_use_ms
            .max(h.get("last_use_ms").copied().unwrap_or(0).max(0) as u64);
        for m in &mut out.models {
            m.inflight += h.get(&format!("m:{}", m.model)).copied().unwrap_or(0);
        }
    }
    for m in &mut out.models {
        let keys: Vec<String> = (0..WINDOW_MINUTES)
            .map(|back| store.keys.demand_requests(server, &m.model, minute - back))
            .collect();
        let counts: Vec<Option<u64>> = store
            .valkey
            .run(|mut c| async move { redis::cmd("MGET").arg(&keys).query_async(&mut c).await })
            .await?;
        m.requests_5m = counts.into_iter().flatten().sum();
    }
    Ok(out)
}
