//! `GET /admin/system/throughput`: requests, tokens, latency, TTFT and errors over the last 1
//! and 5 minutes, from what the gateway measures itself (its own `/metrics`, read every sample
//! interval: the request path does nothing more). Each instance publishes its windows through
//! the store; the answer sums every live instance's (rates add up, percentiles come from the
//! added buckets).

use super::promtext::Page;
use crate::telemetry::histogram::Buckets;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;

/// The windows, in seconds.
pub const WINDOWS_S: [u64; 2] = [60, 300];

/// The data plane's counts: cumulative in a snapshot, a window's difference in [`Counts`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: f64,
    /// Answers with a 5xx status (the gateway's own 502/503/504 included).
    pub errors: f64,
    pub prompt_tokens: f64,
    pub generation_tokens: f64,
    pub latency: Buckets,
    pub ttft: Buckets,
}

fn increase(new: f64, old: f64) -> f64 {
    if new >= old {
        new - old
    } else {
        new
    }
}

impl Totals {
    /// From the gateway's own exposition.
    pub fn of(page: &Page) -> Totals {
        let mut t = Totals {
            latency: page
                .histogram("infergate_request_duration_seconds")
                .unwrap_or_default(),
            ttft: page.histogram("infergate_ttft_seconds").unwrap_or_default(),
            ..Default::default()
        };
        for x in &page.series {
            if !x.value.is_finite() {
                continue;
            }
            match x.name.as_str() {
                "infergate_requests_total" => {
                    t.requests += x.value;
                    if x.label("status").is_some_and(|st| st.starts_with('5')) {
                        t.errors += x.value;
                    }
                }
                "infergate_tokens_total" => match x.label("kind") {
                    Some("prompt") => t.prompt_tokens += x.value,
                    Some("completion") => t.generation_tokens += x.value,
                    _ => {}
                },
                _ => {}
            }
        }
        t
    }

    /// What was counted since `earlier`.
    fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            requests: increase(self.requests, earlier.requests),
            errors: increase(self.errors, earlier.errors),
            prompt_tokens: increase(self.prompt_tokens, earlier.prompt_tokens),
            generation_tokens: increase(self.generation_tokens, earlier.generation_tokens),
            latency: self.latency.since(&earlier.latency),
            ttft: self.ttft.since(&earlier.ttft),
        }
    }
}

/// The data plane's totals at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub at_ms: u64,
    pub totals: Totals,
}

/// One instance's counts over one window (what it publishes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Seconds between the window's first and last snapshots.
    pub span_s: f64,
    #[serde(flatten)]
    pub counted: Totals,
}

/// One instance's windows, in the order of [`WINDOWS_S`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceWindows {
    pub windows: Vec<Counts>,
}

/// This instance's snapshots of the last five minutes.
pub struct Snapshots {
    ring: Mutex<VecDeque<Snapshot>>,
}

impl Default for Snapshots {
    fn default() -> Self {
        Self {
            ring: Mutex::new(VecDeque::new()),
        }
    }
}

impl Snapshots {
    pub fn push(&self, s: Snapshot) {
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        let keep_from = s.at_ms.saturating_sub(WINDOWS_S[1] * 1000 + 1000);
        ring.push_back(s);
        while ring.front().is_some_and(|f| f.at_ms < keep_from) {
            ring.pop_front();
        }
    }

    /// The windows ending at the newest snapshot, each from the oldest snapshot inside it.
    pub fn windows(&self) -> InstanceWindows {
        let Ok(ring) = self.ring.lock() else {
            return InstanceWindows::default();
        };
        let Some(newest) = ring.back() else {
            return InstanceWindows::default();
        };
        let windows = WINDOWS_S
            .iter()
            .map(|w| {
                let from = newest.at_ms.saturating_sub(w * 1000);
                let oldest = ring.iter().find(|s| s.at_ms >= from).unwrap_or(newest);
                Counts {
                    span_s: newest.at_ms.saturating_sub(oldest.at_ms) as f64 / 1000.0,
                    counted: newest.totals.since(&oldest.totals),
                }
            })
            .collect();
        InstanceWindows { windows }
    }
}

/// The Cortex fields of a window: rates, percentiles and error rate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Rates {
    pub req_per_sec: f64,
    pub prompt_tokens_per_sec: f64,
    pub generation_tokens_per_sec: f64,
    /// Request received to last byte sent, from the gateway's histogram buckets.
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    /// Streams only: request received to the first token passed to the client.
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    /// Share of answers with a 5xx status (null without requests).
    pub error_rate: Option<f64>,
}

/// One window of the answer, summed over instances.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ThroughputWindow {
    /// The longest span any instance's counts cover (less than the window after a start).
    pub window_s: f64,
    pub requests: f64,
    pub errors: f64,
    #[serde(flatten)]
    pub rates: Rates,
}

/// `GET /admin/system/throughput`: the Cortex fields (of the last minute) and both windows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ThroughputSummary {
    #[serde(flatten)]
    pub last_minute: Rates,
    /// The last minute.
    #[serde(rename = "1m")]
    pub one_minute: ThroughputWindow,
    /// The last five minutes.
    #[serde(rename = "5m")]
    pub five_minutes: ThroughputWindow,
    /// Gateway instances whose figures are summed.
    pub instances: usize,
}

fn sum_window(instances: &[InstanceWindows], i: usize) -> ThroughputWindow {
    let mut w = ThroughputWindow::default();
    let r = &mut w.rates;
    let mut latency = Buckets::default();
    let mut ttft = Buckets::default();
    for (span_s, c) in instances
        .iter()
        .filter_map(|inst| inst.windows.get(i))
        .map(|c| (c.span_s, &c.counted))
    {
        w.window_s = w.window_s.max(span_s);
        w.requests += c.requests;
        w.errors += c.errors;
        if span_s > 0.0 {
            r.req_per_sec += c.requests / span_s;
            r.prompt_tokens_per_sec += c.prompt_tokens / span_s;
            r.generation_tokens_per_sec += c.generation_tokens / span_s;
        }
        latency = latency.add(&c.latency);
        ttft = ttft.add(&c.ttft);
    }
    let ms = |b: &Buckets, q| b.quantile(q).map(|s| s * 1000.0);
    r.latency_p50_ms = ms(&latency, 0.5);
    r.latency_p95_ms = ms(&latency, 0.95);
    r.ttft_p50_ms = ms(&ttft, 0.5);
    r.ttft_p95_ms = ms(&ttft, 0.95);
    r.error_rate = (w.requests > 0.0).then(|| w.errors / w.requests);
    w
}

/// The answer from every instance's windows.
pub fn summary(instances: &[InstanceWindows]) -> ThroughputSummary {
    let one = sum_window(instances, 0);
    ThroughputSummary {
        last_minute: one.rates.clone(),
        one_minute: one,
        five_minutes: sum_window(instances, 1),
        instances: instances.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(at_ms: u64, requests: f64, fast: f64, slow: f64) -> Snapshot {
        Snapshot {
            at_ms,
            totals: Totals {
                requests,
                errors: requests / 10.0,
                prompt_tokens: requests * 100.0,
                generation_tokens: requests * 10.0,
                latency: Buckets::new(
                    vec![
                        (0.05, fast),
                        (1.0, fast + slow),
                        (f64::INFINITY, fast + slow),
                    ],
                    0.0,
                    fast + slow,
                ),
                ttft: Buckets::default(),
            },
        }
    }

    #[test]
    fn windows_count_what_happened_inside_them_and_instances_add_up() {
        let s = Snapshots::default();
        // 400 s of history: 20 fast requests per 5 s before the last minute, 50 slow ones since.
        let mut requests = 0.0;
        let (mut fast, mut slow) = (0.0, 0.0);
        for i in 0..=80u64 {
            let at = 1_000_000 + i * 5_000;
            s.push(snap(at, requests, fast, slow));
            if i >= 68 {
                requests += 50.0;
                slow += 50.0;
            } else {
                requests += 20.0;
                fast += 20.0;
            }
        }
        let w = s.windows();
        // The last minute: 12 steps of 50 slow requests, 60 s.
        assert_eq!(w.windows[0].span_s, 60.0);
        assert_eq!(w.windows[0].counted.requests, 600.0);
        assert_eq!(w.windows[0].counted.latency.count, 600.0);
        let one = summary(std::slice::from_ref(&w));
        assert_eq!(one.last_minute.req_per_sec, 10.0);
        assert_eq!(one.last_minute.prompt_tokens_per_sec, 1000.0);
        assert_eq!(one.last_minute.error_rate, Some(0.1));
        // Every request of the last minute took 50 ms to 1 s: the median is inside that bucket.
        let p50 = one.last_minute.latency_p50_ms.unwrap();
        assert!(p50 > 50.0 && p50 <= 1000.0, "{p50}");
        // Five minutes: 48 steps of 20 fast and 12 of 50 slow requests; most were fast.
        assert_eq!(one.five_minutes.requests, 48.0 * 20.0 + 600.0);
        assert_eq!(one.five_minutes.window_s, 300.0);
        assert!(one.five_minutes.rates.latency_p50_ms.unwrap() <= 50.0);
        // Two instances with the same traffic: twice the rate, the same percentiles.
        let two = summary(&[w.clone(), w]);
        assert_eq!((two.instances, two.last_minute.req_per_sec), (2, 20.0));
        assert_eq!(
            two.last_minute.latency_p50_ms,
            one.last_minute.latency_p50_ms
        );
    }

    #[test]
    fn no_traffic_is_zero_rates_and_no_percentiles() {
        let s = Snapshots::default();
        s.push(snap(0, 0.0, 0.0, 0.0));
        s.push(snap(5_000, 0.0, 0.0, 0.0));
        let sum = summary(&[s.windows()]);
        assert_eq!(
            (
                sum.last_minute.req_per_sec,
                sum.last_minute.latency_p50_ms,
                sum.last_minute.error_rate
            ),
            (0.0, None, None)
        );
        assert_eq!(summary(&[]).instances, 0);
    }

    #[test]
    fn totals_read_the_gateways_own_exposition() {
        let m = crate::telemetry::Metrics::new();
        m.count_request("m", "s", 200);
        m.count_request("m", "s", 502);
        m.count_request("m", "", 503);
        let r = m.route("m", "s");
        r.duration.observe(0.02);
        r.prompt_tokens.inc_by(7);
        r.completion_tokens.inc_by(3);
        let s = Totals::of(&Page::parse(&m.render()).unwrap());
        assert_eq!((s.requests, s.errors), (3.0, 2.0));
        assert_eq!((s.prompt_tokens, s.generation_tokens), (7.0, 3.0));
        assert_eq!(s.latency.count, 1.0);
    }
}
