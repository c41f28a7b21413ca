//! `GET /admin/usage` (recent records), `/usage/aggregate` (totals by model), `/usage/series`
//! (per bucket), `/usage/latency` and `/usage/ttft` (p50/p95 per model), `/usage/export`
//! (CSV). Every one takes the filters `from`, `to` (RFC 3339 or Unix ms; default: the last
//! 24 hours), `key_id`, `user_id`, `org_id`, `model` and `status` (a code or a class: `5xx`).

use super::csv_export::{inert, CsvRow};
use super::error::{ApiError, ErrorBody};
use super::identity_views::iso;
use super::page::{param, Page};
use super::{AdminState, PageParams};
use crate::telemetry::now_ms;
use crate::usage::query::{self, Bucket, Filter, ModelTotals, Percentiles, StatusFilter};
use crate::usage::UsageRecord;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

const DAY_MS: u64 = 24 * 3_600_000;
/// Most buckets one series answers.
const MAX_BUCKETS: u64 = 10_000;

/// The usage filters (documentation only).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct UsageParams {
    /// Start (inclusive): RFC 3339 or Unix ms. Default: 24 hours before `to`.
    from: Option<String>,
    /// End (exclusive): RFC 3339 or Unix ms. Default: now.
    to: Option<String>,
    key_id: Option<String>,
    user_id: Option<String>,
    org_id: Option<String>,
    model: Option<String>,
    /// A status code (`429`) or class (`5xx`).
    status: Option<String>,
}

pub(super) fn time_param(query: Option<&str>, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(v) = param(query, name) else {
        return Ok(None);
    };
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().map(Some).map_err(|_| bad(name, &v));
    }
    chrono::DateTime::parse_from_rfc3339(&v)
        .map(|t| Some(t.timestamp_millis().max(0) as u64))
        .map_err(|_| bad(name, &v))
}

fn bad(name: &str, v: &str) -> ApiError {
    ApiError::bad_request(
        "invalid query parameter",
        format!("{name} must be an RFC 3339 time or Unix milliseconds, got {v:?}"),
    )
}

/// The filter a query asks for.
fn filter(query: Option<&str>) -> Result<Filter, ApiError> {
    let to = time_param(query, "to")?.unwrap_or_else(|| now_ms() + 1);
    let from = time_param(query, "from")?.unwrap_or(to.saturating_sub(DAY_MS));
    if from >= to {
        return Err(ApiError::bad_request(
            "invalid query parameter",
            "from must be before to",
        ));
    }
    let status = match param(query, "status") {
        None => None,
        Some(s) => Some(StatusFilter::parse(&s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid query parameter",
                format!("status must be a code such as 429 or a class such as 5xx, got {s:?}"),
            )
        })?),
    };
    Ok(Filter {
        from_ms: from,
        to_ms: to,
        key_id: param(query, "key_id"),
        user_id: param(query, "user_id"),
        org_id: param(query, "org_id"),
        model: param(query, "model"),
        status,
    })
}

/// The records a filter selects, oldest first.
async fn select(s: &AdminState, f: &Filter) -> Result<Vec<UsageRecord>, ApiError> {
    let mut records =
        s.gw.store
            .usage_scan(f.from_ms, f.to_ms, s.gw.config.usage.max_scan_records)
            .await?;
    records.retain(|r| f.matches(r));
    records.sort_by_key(|r| r.ts_ms);
    Ok(records)
}

/// One record.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordView {
    /// When the request arrived (ISO 8601).
    pub time: String,
    pub key_id: Option<String>,
    pub user_id: Option<String>,
    pub org_id: Option<String>,
    pub model: String,
    pub server: Option<String>,
    pub status: u16,
    pub latency_ms: f64,
    /// Streams only.
    pub ttft_ms: Option<f64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub stream: bool,
}

impl From<&UsageRecord> for RecordView {
    fn from(r: &UsageRecord) -> Self {
        Self {
            time: iso(r.ts_ms),
            key_id: r.key_id.as_deref().map(Into::into),
            user_id: r.user_id.as_deref().map(Into::into),
            org_id: r.org_id.as_deref().map(Into::into),
            model: r.model.to_string(),
            server: r.server.as_deref().map(Into::into),
            status: r.status,
            latency_ms: r.latency_ms,
            ttft_ms: r.ttft_ms,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            stream: r.stream,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordList {
    /// Newest first.
    pub records: Vec<RecordView>,
    pub page: u64,
    pub limit: u64,
    pub total: u64,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Aggregate {
    pub from: String,
    pub to: String,
    pub models: Vec<ModelTotals>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SeriesBucket {
    /// The bucket's start (ISO 8601).
    pub start: String,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl From<Bucket> for SeriesBucket {
    fn from(b: Bucket) -> Self {
        Self {
            start: iso(b.start_ms),
            requests: b.requests,
            errors: b.errors,
            prompt_tokens: b.prompt_tokens,
            completion_tokens: b.completion_tokens,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Series {
    pub from: String,
    pub to: String,
    pub bucket_seconds: u64,
    pub buckets: Vec<SeriesBucket>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LatencyReport {
    pub from: String,
    pub to: String,
    /// Per model; percentiles over every instance's records (nearest rank).
    pub models: Vec<Percentiles>,
}

/// Recent usage records, newest first.
#[utoipa::path(get, path = "/admin/usage", tag = "Usage", params(PageParams, UsageParams),
    responses((status = 200, body = RecordList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn list(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<RecordList>, ApiError> {
    let page = Page::from_query(q.as_deref())?;
    let f = filter(q.as_deref())?;
    let mut records = select(&s, &f).await?;
    records.reverse();
    Ok(Json(RecordList {
        total: records.len() as u64,
        records: page.slice(&records).iter().map(Into::into).collect(),
        page: page.page,
        limit: page.limit,
        from: iso(f.from_ms),
        to: iso(f.to_ms),
    }))
}

/// Totals by model: requests, errors (status 400 or more), tokens.
#[utoipa::path(get, path = "/admin/usage/aggregate", tag = "Usage", params(UsageParams),
    responses((status = 200, body = Aggregate), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn aggregate(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Aggregate>, ApiError> {
    let f = filter(q.as_deref())?;
    let records = select(&s, &f).await?;
    Ok(Json(Aggregate {
        from: iso(f.from_ms),
        to: iso(f.to_ms),
        models: query::aggregate(&records),
    }))
}

/// A bucket width: seconds, or a number with s, m, h or d.
fn bucket_seconds(v: &str) -> Option<u64> {
    let (n, unit) = match v.as_bytes().last()? {
        b's' => (&v[..v.len() - 1], 1),
        b'm' => (&v[..v.len() - 1], 60),
        b'h' => (&v[..v.len() - 1], 3_600),
        b'd' => (&v[..v.len() - 1], 86_400),
        _ => (v, 1),
    };
    n.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(unit))
}

/// Requests and tokens per bucket (`bucket`: seconds or e.g. `5m`, `1h`; default `1h`); every
/// bucket of the range is present.
#[utoipa::path(get, path = "/admin/usage/series", tag = "Usage",
    params(UsageParams, ("bucket" = Option<String>, Query, description = "Bucket width: seconds, or 30s, 5m, 1h, 1d (default 1h)")),
    responses((status = 200, body = Series), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn series(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Series>, ApiError> {
    let f = filter(q.as_deref())?;
    let bucket = match param(q.as_deref(), "bucket") {
        None => 3_600,
        Some(b) => bucket_seconds(&b).ok_or_else(|| {
            ApiError::bad_request(
                "invalid query parameter",
                format!("bucket must be seconds or a number with s, m, h or d, got {b:?}"),
            )
        })?,
    };
    let bucket_ms = bucket.saturating_mul(1000);
    if (f.to_ms - f.from_ms).div_ceil(bucket_ms) > MAX_BUCKETS {
        return Err(ApiError::bad_request(
            "invalid query parameter",
            format!("the range holds more than {MAX_BUCKETS} buckets: widen the bucket"),
        ));
    }
    let records = select(&s, &f).await?;
    Ok(Json(Series {
        from: iso(f.from_ms),
        to: iso(f.to_ms),
        bucket_seconds: bucket,
        buckets: query::series(&records, f.from_ms, f.to_ms, bucket_ms)
            .into_iter()
            .map(Into::into)
            .collect(),
    }))
}

/// Latency (arrival to last byte) p50/p95 per model.
#[utoipa::path(get, path = "/admin/usage/latency", tag = "Usage", params(UsageParams),
    responses((status = 200, body = LatencyReport), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn latency(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<LatencyReport>, ApiError> {
    percentile_report(&s, q.as_deref(), |r| Some(r.latency_ms)).await
}

/// Time to first token p50/p95 per model, over streams.
#[utoipa::path(get, path = "/admin/usage/ttft", tag = "Usage", params(UsageParams),
    responses((status = 200, body = LatencyReport), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn ttft(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<LatencyReport>, ApiError> {
    percentile_report(&s, q.as_deref(), |r| r.ttft_ms).await
}

/// p50/p95 per model of the value `pick` takes from the selected records.
async fn percentile_report(
    s: &AdminState,
    query: Option<&str>,
    pick: impl Fn(&UsageRecord) -> Option<f64>,
) -> Result<Json<LatencyReport>, ApiError> {
    let f = filter(query)?;
    let records = select(s, &f).await?;
    Ok(Json(LatencyReport {
        from: iso(f.from_ms),
        to: iso(f.to_ms),
        models: query::percentiles(&records, pick),
    }))
}

impl CsvRow for UsageRecord {
    const HEADER: &'static [&'static str] = &[
        "time",
        "key_id",
        "user_id",
        "org_id",
        "model",
        "server",
        "status",
        "latency_ms",
        "ttft_ms",
        "prompt_tokens",
        "completion_tokens",
        "stream",
    ];

    fn row(&self) -> Vec<String> {
        let r = self;
        let opt = |v: &Option<Arc<str>>| inert(v.as_deref().unwrap_or(""));
        vec![
            iso(r.ts_ms),
            opt(&r.key_id),
            opt(&r.user_id),
            opt(&r.org_id),
            inert(&r.model),
            opt(&r.server),
            r.status.to_string(),
            format!("{:.3}", r.latency_ms),
            r.ttft_ms.map(|t| format!("{t:.3}")).unwrap_or_default(),
            r.prompt_tokens.to_string(),
            r.completion_tokens.to_string(),
            r.stream.to_string(),
        ]
    }
}

/// The filtered records as CSV (oldest first, a header row, RFC 4180 quoting), streamed in
/// chunks of 1,000 rows.
#[utoipa::path(get, path = "/admin/usage/export", tag = "Usage", params(UsageParams),
    responses((status = 200, description = "text/csv", content_type = "text/csv", body = String), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn export(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let f = filter(q.as_deref())?;
    let records = select(&s, &f).await?;
    Ok(super::csv_export::attachment(records, "usage.csv"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_widths() {
        assert_eq!(bucket_seconds("60"), Some(60));
        assert_eq!(bucket_seconds("5m"), Some(300));
        assert_eq!(bucket_seconds("1h"), Some(3600));
        assert_eq!(bucket_seconds("1d"), Some(86_400));
        assert_eq!(bucket_seconds("0"), None);
        assert_eq!(bucket_seconds("m"), None);
        assert_eq!(bucket_seconds("x"), None);
    }

    #[test]
    fn csv_quotes_per_rfc_4180() {
        let r = UsageRecord {
            ts_ms: 0,
            key_id: None,
            user_id: Some("a \"quoted\", user".into()),
            org_id: None,
            model: "m,1".into(),
            server: None,
            status: 200,
            latency_ms: 1.5,
            ttft_ms: None,
            prompt_tokens: 1,
            completion_tokens: 2,
            stream: false,
        };
        let text = String::from_utf8(super::super::csv_export::chunk(&[r], true).to_vec()).unwrap();
        let mut lines = text.split("\r\n");
        assert!(lines.next().unwrap().starts_with("time,key_id,user_id"));
        assert_eq!(
            lines.next().unwrap(),
            "1970-01-01T00:00:00.000Z,,\"a \"\"quoted\"\", user\",,\"m,1\",,200,1.500,,1,2,false"
        );
        assert_eq!(inert("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(inert("-1"), "'-1");
        assert_eq!(inert("alice"), "alice");
    }
}
