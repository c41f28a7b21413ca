//! A `/metrics` page in the Prometheus text format, parsed by `prom_text_format_parser` (by its
//! grammar: names with colons, escaped label values, exponents, `NaN`, `±Inf`) into flat
//! series, with the reductions the monitoring endpoints need: a family summed or averaged over
//! all its label sets (never just the first series), and histograms summed per bound.

use crate::telemetry::histogram::Buckets;
use prom_text_format_parser::{Type, ValueType};

/// One series: its full name (`_bucket`, `_sum`, `_count` included) and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Series {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub series: Vec<Series>,
    /// Metric families the parser could not assemble (e.g. a `TYPE` line without samples,
    /// which `prometheus_client` prints for a labelled metric that has none yet): skipped.
    pub skipped: usize,
}

/// Why a page could not be read at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("not Prometheus text format: {0}")]
pub struct PageError(String);

impl Page {
    pub fn parse(text: &str) -> Result<Page, PageError> {
        use prom_text_format_parser::ScrapeParseError;
        if text.trim().is_empty() {
            // A server that exports nothing yet (the grammar wants at least one line).
            return Ok(Page::default());
        }
        let (metrics, errors) = prom_text_format_parser::parse_scrape(text);
        let skipped = match errors {
            None => 0,
            Some(ScrapeParseError::Collect(families)) => families.len(),
            // A line outside the grammar: nothing of the page can be trusted.
            Some(ScrapeParseError::Parse(why)) => {
                return Err(PageError(why.chars().take(300).collect()))
            }
        };
        let mut series = Vec::new();
        for m in metrics {
            for mut s in m.samples {
                let suffix = match (m.kind, s.value.value_type) {
                    (Type::Histogram, ValueType::Sample) => "_bucket",
                    (Type::Histogram | Type::Summary, ValueType::Sum) => "_sum",
                    (Type::Histogram | Type::Summary, ValueType::Count) => "_count",
                    _ => "",
                };
                series.push(Series {
                    name: format!("{}{suffix}", m.name),
                    labels: std::mem::take(&mut *s.labels)
                        .into_iter()
                        .map(|l| (l.key, l.value))
                        .collect(),
                    value: s.value.value.parse().unwrap_or(f64::NAN),
                });
            }
        }
        Ok(Page { series, skipped })
    }

    /// The series of one family with a value (NaN is "no value").
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Series> + 'a {
        self.series
            .iter()
            .filter(move |s| s.name == name && !s.value.is_nan())
    }

    /// Whether any series of this name is present (even NaN).
    pub fn has(&self, name: &str) -> bool {
        self.series.iter().any(|s| s.name == name)
    }

    /// Whether any series name starts with `prefix` (`vllm:`, `sglang:`, `llamacpp:`).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.series.iter().any(|s| s.name.starts_with(prefix))
    }

    /// The family summed over every label set, or `None` when it has no value.
    pub fn sum(&self, name: &str) -> Option<f64> {
        self.values(name).map(|s| s.value).reduce(|a, b| a + b)
    }

    /// The family's mean over its label sets (for fractions such as a cache's use, where one
    /// series per engine must not add up beyond 1).
    pub fn mean(&self, name: &str) -> Option<f64> {
        let (n, total) = self
            .values(name)
            .fold((0u32, 0.0), |(n, t), s| (n + 1, t + s.value));
        (n > 0).then(|| total / f64::from(n))
    }

    /// The first of `names` that is present, summed.
    pub fn sum_of(&self, names: &[&str]) -> Option<f64> {
        names.iter().find_map(|n| self.sum(n))
    }

    /// The first of `names` that is present, averaged.
    pub fn mean_of(&self, names: &[&str]) -> Option<f64> {
        names.iter().find_map(|n| self.mean(n))
    }

    /// A histogram family summed over every label set, per bound (`name` without `_bucket`).
    pub fn histogram(&self, name: &str) -> Option<Buckets> {
        let bucket = format!("{name}_bucket");
        let counts: Vec<(f64, f64)> = self
            .values(&bucket)
            .filter_map(|s| Some((parse_bound(s.label("le")?)?, s.value)))
            .collect();
        if counts.is_empty() {
            return None;
        }
        let sum = self.sum(&format!("{name}_sum")).unwrap_or(0.0);
        let count = self.sum(&format!("{name}_count")).unwrap_or(0.0);
        Some(Buckets::new(counts, sum, count))
    }

    /// The first of `names` that has buckets.
    pub fn histogram_of(&self, names: &[&str]) -> Option<Buckets> {
        names.iter().find_map(|n| self.histogram(n))
    }
}

/// An `le` bound: a float in Go's notation (`+Inf`, `1e-05`).
fn parse_bound(le: &str) -> Option<f64> {
    le.parse::<f64>().ok().filter(|v| !v.is_nan())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} NaN
vllm:kv_cache_usage_perc{engine="2",model_name="m"} 0.75
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="a,b=c \"q\" }"} 1.5e+03
vllm:prompt_tokens_total{engine="1",model_name="a,b=c \"q\" }"} 5E2
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3"} 1.0e+01
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf"} 12
vllm:e2e_request_latency_seconds_sum{engine="0"} 3.5
vllm:e2e_request_latency_seconds_count{engine="0"} 12
vllm:e2e_request_latency_seconds_bucket{engine="1",le="0.3"} 0
vllm:e2e_request_latency_seconds_bucket{engine="1",le="+Inf"} 8
vllm:e2e_request_latency_seconds_sum{engine="1"} 9.5
vllm:e2e_request_latency_seconds_count{engine="1"} 8
"#;

    #[test]
    fn every_label_set_counts_and_hard_values_parse() {
        let p = Page::parse(PAGE).unwrap();
        assert_eq!(p.sum("vllm:num_requests_running"), Some(5.0));
        // NaN is no value: the mean is over the engines that have one.
        assert_eq!(p.mean("vllm:kv_cache_usage_perc"), Some(0.5));
        // Exponents, upper-case E, a label value with a comma, '=', quotes and a brace.
        assert_eq!(p.sum("vllm:prompt_tokens_total"), Some(2000.0));
        // A family announced without samples is skipped, not an error.
        assert_eq!(p.sum("vllm:request_success_total"), None);
        let h = p.histogram("vllm:e2e_request_latency_seconds").unwrap();
        assert_eq!(h.counts, vec![(0.3, 10.0), (f64::INFINITY, 20.0)]);
        assert_eq!((h.sum, h.count), (13.0, 20.0));
        assert!(p.has_prefix("vllm:") && !p.has_prefix("sglang:"));
        assert_eq!(p.sum("absent"), None);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let e = Page::parse("<html>not metrics</html>").unwrap_err();
        assert!(
            e.to_string().starts_with("not Prometheus text format"),
            "{e}"
        );
        assert_eq!(Page::parse("").unwrap().series.len(), 0);
    }
}
