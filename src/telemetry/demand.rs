//! Demand telemetry per server: requests in flight (in total and per model), last use, and
//! requests per model over the last five minutes. The data plane only bumps atomics; a
//! once-a-second flush ([`super::demand_flush`]) turns them into per-minute counts here and
//! hands them to the store, which shares them between instances.

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Minutes in the request window.
pub const WINDOW_MINUTES: u64 = 5;

/// Demand on one server, summed over every instance that shares the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Demand {
    pub inflight: i64,
    /// Unix ms of the last request (0: none).
    pub last_use_ms: u64,
    pub models: Vec<ModelDemand>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModelDemand {
    pub model: String,
    pub inflight: i64,
    /// Requests in the current minute and the four before it.
    pub requests_5m: u64,
}

/// What one instance reports for one server at a flush.
#[derive(Debug, Clone)]
pub struct DemandReport {
    pub server: Arc<str>,
    pub inflight: i64,
    pub last_use_ms: u64,
    /// (model, in flight, requests since the last flush)
    pub models: Vec<(Arc<str>, i64, u64)>,
}

/// (Unix minute, requests) for the minutes of the window, oldest first.
type MinuteCounts = VecDeque<(u64, u64)>;
/// (server, model)
type Route = (Arc<str>, Arc<str>);

/// Per-minute request counts of this instance, per (server, model).
#[derive(Default)]
pub struct DemandWindows {
    counts: Mutex<HashMap<Route, MinuteCounts>>,
}

impl DemandWindows {
    /// Count `n` requests of `model` on `server` in `minute`.
    pub(super) fn add(&self, server: &Arc<str>, model: &Arc<str>, minute: u64, n: u64) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        let ring = counts.entry((server.clone(), model.clone())).or_default();
        match ring.back_mut() {
            Some((m, c)) if *m == minute => *c += n,
            _ => ring.push_back((minute, n)),
        }
        while ring
            .front()
            .is_some_and(|(m, _)| *m + WINDOW_MINUTES <= minute)
        {
            ring.pop_front();
        }
    }

    /// Requests of (server, model) over the window ending at `minute`.
    pub fn requests(&self, server: &str, model: &str, minute: u64) -> u64 {
        let Ok(counts) = self.counts.lock() else {
            return 0;
        };
        counts
            .iter()
            .filter(|((s, m), _)| &**s == server && &**m == model)
            .flat_map(|(_, ring)| ring.iter())
            .filter(|(m, _)| m + WINDOW_MINUTES > minute)
            .map(|(_, c)| c)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_five_minutes() {
        let w = DemandWindows::default();
        let (s, m): (Arc<str>, Arc<str>) = ("s".into(), "m".into());
        w.add(&s, &m, 100, 3);
        w.add(&s, &m, 100, 2);
        w.add(&s, &m, 103, 1);
        assert_eq!(w.requests("s", "m", 103), 6);
        assert_eq!(w.requests("s", "m", 104), 6);
        assert_eq!(w.requests("s", "m", 105), 1, "minute 100 left the window");
        w.add(&s, &m, 106, 4);
        assert_eq!(w.requests("s", "m", 106), 5);
        assert_eq!(w.requests("s", "other", 106), 0);
    }
}
