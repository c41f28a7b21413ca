//! `GET /admin/audit` (admin changes, newest first, paginated) and `/audit/export` (CSV,
//! oldest first). Filters: `from`/`to` (or `since`/`until`; RFC 3339 or Unix ms; default: the
//! whole retention), `actor`, `action` (exact, or `key.*` for a family), `target` (contains),
//! `outcome` (`success` or `failure`) and `status` (a code or a class: `4xx`).

use super::csv_export::{inert, CsvRow};
use super::error::{ApiError, ErrorBody};
use super::identity_views::iso;
use super::page::{param, Page};
use super::usage::time_param;
use super::{AdminState, PageParams};
use crate::audit::query::Filter;
use crate::audit::{AuditRecord, Outcome};
use crate::telemetry::now_ms;
use crate::usage::query::StatusFilter;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

/// The audit filters (documentation only).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AuditParams {
    /// Start (inclusive): RFC 3339 or Unix ms (`since` is the same). Default: the retention.
    from: Option<String>,
    /// End (exclusive): RFC 3339 or Unix ms (`until` is the same). Default: now.
    to: Option<String>,
    /// The credential's api_key or the API key's id that made the change.
    actor: Option<String>,
    /// An action (`key.create`), or a family (`key.*`).
    action: Option<String>,
    /// Records whose target contains this text.
    target: Option<String>,
    /// `success` or `failure`.
    outcome: Option<String>,
    /// A status code (`404`) or class (`4xx`).
    status: Option<String>,
}

fn invalid(detail: String) -> ApiError {
    ApiError::bad_request("invalid query parameter", detail)
}

/// A time given as `name` or as its synonym (not both).
fn time_either(query: Option<&str>, name: &str, synonym: &str) -> Result<Option<u64>, ApiError> {
    match (time_param(query, name)?, time_param(query, synonym)?) {
        (Some(_), Some(_)) => Err(invalid(format!("give {name} or {synonym}, not both"))),
        (a, b) => Ok(a.or(b)),
    }
}

/// The filter a query asks for.
fn filter(s: &AdminState, query: Option<&str>) -> Result<Filter, ApiError> {
    let to = time_either(query, "to", "until")?.unwrap_or_else(|| now_ms() + 1);
    let retention = s.gw.config.audit.retention_hours.saturating_mul(3_600_000);
    let from = time_either(query, "from", "since")?.unwrap_or(to.saturating_sub(retention));
    if from >= to {
        return Err(invalid("from must be before to".into()));
    }
    let outcome = match param(query, "outcome") {
        None => None,
        Some(o) => Some(
            Outcome::parse(&o)
                .ok_or_else(|| invalid(format!("outcome must be success or failure, got {o:?}")))?,
        ),
    };
    let status = match param(query, "status") {
        None => None,
        Some(v) => Some(StatusFilter::parse(&v).ok_or_else(|| {
            invalid(format!(
                "status must be a code such as 404 or a class such as 4xx, got {v:?}"
            ))
        })?),
    };
    Ok(Filter {
        from_ms: from,
        to_ms: to,
        actor: param(query, "actor"),
        action: param(query, "action"),
        target: param(query, "target"),
        outcome,
        status,
    })
}

/// The records a filter selects, oldest first.
async fn select(s: &AdminState, f: &Filter) -> Result<Vec<AuditRecord>, ApiError> {
    let max = s.gw.config.audit.max_scan_records;
    let mut records = s.gw.store.audit_scan(f.from_ms, f.to_ms, max).await?;
    records.retain(|r| f.matches(r));
    records.sort_by_key(|r| r.ts_ms);
    Ok(records)
}

/// One admin change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditView {
    /// When it was answered (ISO 8601).
    pub time: String,
    /// The credential's api_key, or the API key's id, that made it.
    pub actor: String,
    /// e.g. `key.create`, `org.delete`, `registry.add`, `affinity.clear`, `config.reload`.
    pub action: String,
    /// The id or name acted on.
    pub target: Option<String>,
    pub outcome: Outcome,
    pub status: u16,
    /// For a failure: the error message (`x-error`).
    pub error: Option<String>,
    /// For a failure: its `x-error-id` (also in the gateway's log).
    pub error_id: Option<String>,
    pub method: String,
    /// The route's template, e.g. `/admin/keys/{id}`.
    pub path: String,
    /// The caller's address.
    pub address: Option<String>,
}

impl From<&AuditRecord> for AuditView {
    fn from(r: &AuditRecord) -> Self {
        Self {
            time: iso(r.ts_ms),
            actor: r.actor.clone(),
            action: r.action.clone(),
            target: r.target.clone(),
            outcome: r.outcome,
            status: r.status,
            error: r.error.clone(),
            error_id: r.error_id.clone(),
            method: r.method.clone(),
            path: r.path.clone(),
            address: r.address.clone(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditList {
    /// Newest first.
    pub records: Vec<AuditView>,
    pub page: u64,
    pub limit: u64,
    pub total: u64,
    pub from: String,
    pub to: String,
}

/// Admin changes, newest first.
#[utoipa::path(get, path = "/admin/audit", tag = "Audit", params(PageParams, AuditParams),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn list(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<AuditList>, ApiError> {
    let page = Page::from_query(q.as_deref())?;
    let f = filter(&s, q.as_deref())?;
    let mut records = select(&s, &f).await?;
    records.reverse();
    Ok(Json(AuditList {
        total: records.len() as u64,
        records: page.slice(&records).iter().map(Into::into).collect(),
        page: page.page,
        limit: page.limit,
        from: iso(f.from_ms),
        to: iso(f.to_ms),
    }))
}

impl CsvRow for AuditRecord {
    const HEADER: &'static [&'static str] = &[
        "time", "actor", "action", "target", "outcome", "status", "error", "error_id", "method",
        "path", "address",
    ];

    fn row(&self) -> Vec<String> {
        let r = self;
        let opt = |v: &Option<String>| inert(v.as_deref().unwrap_or(""));
        vec![
            iso(r.ts_ms),
            inert(&r.actor),
            inert(&r.action),
            opt(&r.target),
            r.outcome.as_str().to_string(),
            r.status.to_string(),
            opt(&r.error),
            opt(&r.error_id),
            inert(&r.method),
            inert(&r.path),
            opt(&r.address),
        ]
    }
}

/// The filtered admin changes as CSV (oldest first, a header row, RFC 4180 quoting), streamed
/// in chunks of 1,000 rows.
#[utoipa::path(get, path = "/admin/audit/export", tag = "Audit", params(AuditParams),
    responses((status = 200, description = "text/csv", content_type = "text/csv", body = String), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn export(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let f = filter(&s, q.as_deref())?;
    let records = select(&s, &f).await?;
    Ok(super::csv_export::attachment(records, "audit.csv"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let r = AuditRecord {
            ts_ms: 0,
            actor: "=cmd".into(),
            action: "registry.add".into(),
            target: Some("model=a,b url=\"x\"".into()),
            outcome: Outcome::Failure,
            status: 409,
            error: Some("route exists".into()),
            error_id: Some("abc".into()),
            method: "POST".into(),
            path: "/admin/models/registry".into(),
            address: None,
        };
        let text = String::from_utf8(super::super::csv_export::chunk(&[r], true).to_vec()).unwrap();
        let mut rd = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(
            rd.headers().unwrap().iter().collect::<Vec<_>>(),
            AuditRecord::HEADER
        );
        let row = rd.records().next().unwrap().unwrap();
        assert_eq!(&row[1], "'=cmd");
        assert_eq!(&row[3], "model=a,b url=\"x\"");
        assert_eq!(&row[4], "failure");
        assert_eq!(&row[5], "409");
        assert_eq!(&row[10], "");
        assert!(text.ends_with("\r\n"));
    }
}
