//! The demand telemetry's flush: once a second the routing table's request counters become
//! per-minute counts ([`super::demand::DemandWindows`]) and reports for the store; and this
//! instance's demand on one server, flushed or not.

use super::demand::{Demand, DemandReport, ModelDemand};
use crate::gateway::Gateway;
use crate::telemetry::now_ms;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// This instance's demand on `server` (`None` when the server is not in the routing table).
pub fn local_demand(gw: &Gateway, server: &str) -> Option<Demand> {
    let table = gw.table.load();
    let backend = table.backends().iter().find(|b| &*b.id == server)?;
    let minute = now_ms() / 60_000;
    let mut models: Vec<ModelDemand> = table
        .models_of(server)
        .iter()
        .filter_map(|m| {
            let member = table.pool(m)?.member(server)?.1;
            Some(ModelDemand {
                model: m.clone(),
                inflight: member.inflight.load(Relaxed),
                requests_5m: gw.demand.requests(server, m, minute) + member.requests.load(Relaxed)
                    - member.flushed.load(Relaxed),
            })
        })
        .collect();
    models.sort_by(|a, b| a.model.cmp(&b.model));
    Some(Demand {
        inflight: backend.inflight.get(),
        last_use_ms: backend.last_use_ms.load(Relaxed),
        models,
    })
}

/// Flush new requests into the per-minute windows and the store, once a second.
pub fn flush(gw: &Gateway) -> Vec<DemandReport> {
    let table = gw.table.load();
    let minute = now_ms() / 60_000;
    table
        .backends()
        .iter()
        .map(|b| {
            let models = table
                .models_of(&b.id)
                .iter()
                .filter_map(|m| {
                    let member = table.pool(m)?.member(&b.id)?.1;
                    let total = member.requests.load(Relaxed);
                    let new = total - member.flushed.swap(total, Relaxed);
                    if new > 0 {
                        gw.demand.add(&b.id, &member.model, minute, new);
                    }
                    Some((member.model.clone(), member.inflight.load(Relaxed), new))
                })
                .collect();
            DemandReport {
                server: b.id.clone(),
                inflight: b.inflight.get(),
                last_use_ms: b.last_use_ms.load(Relaxed),
                models,
            }
        })
        .collect()
}

/// The once-a-second flush as a background service.
pub struct DemandService {
    pub gw: Arc<Gateway>,
}

#[async_trait]
impl BackgroundService for DemandService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let reports = flush(&self.gw);
            self.gw.store.publish_demand(reports).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_demand_counts_flushed_and_unflushed_requests() {
        let cfg = crate::config::parse_str(
            "[[servers]]\nurl = \"http://127.0.0.1:9/v1\"\nprovider = \"vllm\"\nmodels = [\"m\", \"n\"]\n",
        )
        .unwrap();
        let gw = Gateway::new(cfg).unwrap();
        let url = "http://127.0.0.1:9/v1";
        {
            let table = gw.table.load();
            let member = table.pool("m").unwrap().member(url).unwrap().1;
            member.requests.fetch_add(3, Relaxed);
            member.inflight.fetch_add(1, Relaxed);
        }
        let reports = flush(&gw);
        assert_eq!(reports.len(), 1);
        let m = reports[0]
            .models
            .iter()
            .find(|(m, ..)| &**m == "m")
            .unwrap();
        assert_eq!((m.1, m.2), (1, 3), "in flight and new requests reported");
        gw.table
            .load()
            .pool("m")
            .unwrap()
            .member(url)
            .unwrap()
            .1
            .requests
            .fetch_add(2, Relaxed);
        let d = local_demand(&gw, url).unwrap();
        assert_eq!(d.models.len(), 2);
        assert_eq!(d.models[0].model, "m");
        assert_eq!(d.models[0].requests_5m, 5, "3 flushed + 2 not yet flushed");
        assert_eq!(d.models[0].inflight, 1);
        assert_eq!(d.models[1].requests_5m, 0);
        assert!(local_demand(&gw, "http://other/v1").is_none());
        // A second flush reports nothing new twice.
        let again = flush(&gw);
        let m = again[0].models.iter().find(|(m, ..)| &**m == "m").unwrap();
        assert_eq!(m.2, 2);
    }
}
