//! Answers computed from usage records: filters, totals by model, time series, and latency and
//! TTFT percentiles. Percentiles are computed over the merged records of every instance (never
//! an average of per-instance percentiles), by nearest rank.

use super::UsageRecord;
use serde::Serialize;
use std::collections::BTreeMap;

/// Which records a query covers.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Inclusive, Unix ms.
    pub from_ms: u64,
    /// Exclusive, Unix ms.
    pub to_ms: u64,
    pub key_id: Option<String>,
    pub user_id: Option<String>,
    pub org_id: Option<String>,
    pub model: Option<String>,
    pub status: Option<StatusFilter>,
}

/// A status code, or a class such as `5xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Code(u16),
    Class(u16),
}

impl StatusFilter {
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && s[1..].eq_ignore_ascii_case("xx") {
            return Some(StatusFilter::Class(u16::from(b[0] - b'0')));
        }
        match s.parse::<u16>() {
            Ok(c) if (100..=599).contains(&c) => Some(StatusFilter::Code(c)),
            _ => None,
        }
    }

    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusFilter::Code(c) => status == c,
            StatusFilter::Class(c) => status / 100 == c,
        }
    }
}

fn same(want: &Option<String>, have: &Option<std::sync::Arc<str>>) -> bool {
    want.as_ref()
        .is_none_or(|w| have.as_deref() == Some(w.as_str()))
}

impl Filter {
    pub fn matches(&self, r: &UsageRecord) -> bool {
        r.ts_ms >= self.from_ms
            && r.ts_ms < self.to_ms
            && same(&self.key_id, &r.key_id)
            && same(&self.user_id, &r.user_id)
            && same(&self.org_id, &r.org_id)
            && self.model.as_ref().is_none_or(|m| **m == *r.model)
            && self.status.is_none_or(|s| s.matches(r.status))
    }
}

/// Totals of one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelTotals {
    pub model: String,
    pub requests: u64,
    /// Requests answered with a status of 400 or more (499: the client left).
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// Totals by model, sorted by model.
pub fn aggregate<'a>(records: impl IntoIterator<Item = &'a UsageRecord>) -> Vec<ModelTotals> {
    let mut by: BTreeMap<&str, ModelTotals> = BTreeMap::new();
    for r in records {
        let t = by.entry(&r.model).or_insert_with(|| ModelTotals {
            model: r.model.to_string(),
            ..Default::default()
        });
        t.requests += 1;
        t.errors += u64::from(r.is_error());
        t.prompt_tokens = t.prompt_tokens.saturating_add(r.prompt_tokens);
        t.completion_tokens = t.completion_tokens.saturating_add(r.completion_tokens);
        t.total_tokens = t.total_tokens.saturating_add(r.total_tokens());
    }
    by.into_values().collect()
}

/// One bucket of a time series.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Bucket {
    /// Unix ms of the bucket's start.
    pub start_ms: u64,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Requests and tokens per `bucket_ms` over [from, to), every bucket present (zeros too).
/// Buckets are aligned to multiples of `bucket_ms` since the epoch.
pub fn series<'a>(
    records: impl IntoIterator<Item = &'a UsageRecord>,
    from_ms: u64,
    to_ms: u64,
    bucket_ms: u64,
) -> Vec<Bucket> {
    let first = from_ms / bucket_ms * bucket_ms;
    let count = to_ms.saturating_sub(first).div_ceil(bucket_ms) as usize;
    let mut out: Vec<Bucket> = (0..count)
        .map(|i| Bucket {
            start_ms: first + i as u64 * bucket_ms,
            ..Default::default()
        })
        .collect();
    for r in records {
        let Some(b) = out.get_mut(((r.ts_ms.saturating_sub(first)) / bucket_ms) as usize) else {
            continue;
        };
        b.requests += 1;
        b.errors += u64::from(r.is_error());
        b.prompt_tokens = b.prompt_tokens.saturating_add(r.prompt_tokens);
        b.completion_tokens = b.completion_tokens.saturating_add(r.completion_tokens);
    }
    out
}

/// p50 and p95 of one model.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    pub model: String,
    /// Records the percentiles are computed over.
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

/// The nearest-rank `q` quantile of sorted values.
pub fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// p50/p95 per model of the values `value` picks (records without one are skipped).
pub fn percentiles<'a>(
    records: impl IntoIterator<Item = &'a UsageRecord>,
    value: impl Fn(&UsageRecord) -> Option<f64>,
) -> Vec<Percentiles> {
    let mut by: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in records {
        if let Some(v) = value(r) {
            by.entry(&r.model).or_default().push(v);
        }
    }
    by.into_iter()
        .map(|(model, mut v)| {
            v.sort_by(f64::total_cmp);
            Percentiles {
                model: model.to_string(),
                count: v.len() as u64,
                p50_ms: nearest_rank(&v, 0.50),
                p95_ms: nearest_rank(&v, 0.95),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        ts_ms: u64,
        model: &str,
        status: u16,
        latency_ms: f64,
        ttft: Option<f64>,
        tokens: (u64, u64),
    ) -> UsageRecord {
        UsageRecord {
            ts_ms,
            key_id: Some("k".into()),
            user_id: None,
            org_id: None,
            model: model.into(),
            server: None,
            status,
            latency_ms,
            ttft_ms: ttft,
            prompt_tokens: tokens.0,
            completion_tokens: tokens.1,
            stream: ttft.is_some(),
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 0.5), 50.0);
        assert_eq!(nearest_rank(&v, 0.95), 95.0);
        assert_eq!(nearest_rank(&[7.0], 0.95), 7.0);
        assert_eq!(nearest_rank(&[], 0.5), 0.0);
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0], 0.5), 2.0);
    }

    #[test]
    fn percentiles_merge_all_records_not_averages() {
        // Two "instances": one saw 1..=10 ms, the other 91..=100 ms (10 each).
        let mut records: Vec<UsageRecord> = (1..=10)
            .map(|i| rec(0, "m", 200, f64::from(i), None, (0, 0)))
            .collect();
        records.extend((91..=100).map(|i| rec(0, "m", 200, f64::from(i), None, (0, 0))));
        let p = percentiles(&records, |r| Some(r.latency_ms));
        assert_eq!(p[0].count, 20);
        assert_eq!(p[0].p50_ms, 10.0, "the merged median, not (5.5 + 95.5) / 2");
        assert_eq!(p[0].p95_ms, 99.0);
        let t = percentiles(&records, |r| r.ttft_ms);
        assert!(t.is_empty(), "no streams, no TTFT");
    }

    #[test]
    fn filters_totals_and_series() {
        let records = [
            rec(1_000, "a", 200, 5.0, None, (10, 20)),
            rec(61_000, "a", 503, 1.0, None, (0, 0)),
            rec(62_000, "b", 200, 5.0, Some(2.0), (1, 2)),
            rec(200_000, "b", 200, 5.0, None, (1, 1)),
        ];
        let f = Filter {
            from_ms: 0,
            to_ms: 120_000,
            ..Default::default()
        };
        let kept: Vec<&UsageRecord> = records.iter().filter(|r| f.matches(r)).collect();
        assert_eq!(kept.len(), 3);
        let totals = aggregate(kept.iter().copied());
        assert_eq!(
            totals[0],
            ModelTotals {
                model: "a".into(),
                requests: 2,
                errors: 1,
                prompt_tokens: 10,
                completion_tokens: 20,
                total_tokens: 30
            }
        );
        assert_eq!(totals[1].total_tokens, 3);
        let s = series(kept.iter().copied(), 0, 120_000, 60_000);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].requests, s[1].requests, s[1].errors), (1, 2, 1));
        let five = Filter {
            from_ms: 0,
            to_ms: u64::MAX,
            status: StatusFilter::parse("5xx"),
            ..Default::default()
        };
        assert_eq!(records.iter().filter(|r| five.matches(r)).count(), 1);
        assert_eq!(StatusFilter::parse("200"), Some(StatusFilter::Code(200)));
        assert_eq!(StatusFilter::parse("6xx"), None);
        assert_eq!(StatusFilter::parse("abc"), None);
    }
}
