//! Recording admin changes, in one place: the authentication middleware hands every changing
//! call (POST, PUT, PATCH, DELETE) of an authenticated caller here, allowed or not. The action
//! comes from the route (method and template, see [`crate::audit::actions`]), the target from a
//! path parameter, the JSON body, the query or the id a create answers with, and the outcome
//! from the answer's status (with its `x-error` and `x-error-id` for a failure). The record is
//! handed off without waiting: a store that is down never delays or fails the change.
//!
//! Not recorded: reads (GET), and calls that fail authentication (401, or 429 for a blocked
//! address: the lockout logs those; no actor is known).

use super::body;
use super::AdminState;
use crate::audit::actions::{self, Created, TargetFrom};
use crate::audit::{AuditRecord, Outcome};
use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use std::sync::Arc;

/// The prefixes the admin API is served under, longest first.
const PREFIXES: [&str; 2] = ["/api/ai/v1/admin", "/admin"];

/// Who is calling, and whether they may.
pub struct Caller {
    /// The credential's api_key, or the API key's id.
    pub actor: String,
    /// Holds the role every admin endpoint requires (else the call is refused with 403).
    pub allowed: bool,
    pub address: Option<IpAddr>,
}

/// Run a changing call (or refuse it, for a caller without the role) and record it.
pub async fn change(s: &Arc<AdminState>, caller: Caller, req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_string(), |m| m.as_str().to_string());
    let relative = PREFIXES
        .iter()
        .find_map(|p| template.strip_prefix(p))
        .unwrap_or(&template);
    let route = actions::lookup(req.method(), relative);
    let method = req.method().to_string();
    let (mut parts, body) = req.into_parts();
    let params = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok();
    let param = |name: &str| {
        params
            .iter()
            .flat_map(|p| p.iter())
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let query = parts.uri.query().map(str::to_string);
    // The body is read here only when the target is in it (at most the handlers' own limit).
    let (body, sent, unreadable) = if route.target.needs_body() {
        match body::bytes(body).await {
            Ok(b) => (Body::from(b.clone()), Some(b), None),
            Err(e) => (Body::empty(), None, Some(e)),
        }
    } else {
        (body, None, None)
    };
    let resp = if !caller.allowed {
        super::auth::forbidden(super::auth::AI_ADMIN).into_response()
    } else if let Some(e) = unreadable {
        e.into_response()
    } else {
        next.run(Request::from_parts(parts, body)).await
    };
    let from_body = |names: &[&str]| sent.as_deref().and_then(|b| actions::body_fields(b, names));
    let created = resp
        .extensions()
        .get::<Created>()
        .map(|c| actions::cut(&c.0));
    let target = created.or_else(|| match route.target {
        TargetFrom::Nothing => None,
        TargetFrom::Param(n) => param(n).map(|v| actions::cut(&v)),
        TargetFrom::KeyParam(n) => param(n).map(|v| actions::key_id(&v)),
        TargetFrom::Body(names) => from_body(names),
        TargetFrom::Created(name) => from_body(&[name]),
        TargetFrom::QueryOrBody(names) => {
            let q = |n: &str| super::page::param(query.as_deref(), n);
            match names.iter().all(|n| q(n).is_some()) {
                true => actions::fields(q, names),
                false => from_body(names),
            }
        }
        TargetFrom::ConfigFile => {
            s.gw.running
                .load()
                .path
                .as_ref()
                .map(|p| p.display().to_string())
        }
    });
    let status = resp.status().as_u16();
    let outcome = Outcome::of(status);
    let header = |name: &str| {
        (outcome == Outcome::Failure)
            .then(|| resp.headers().get(name)?.to_str().ok().map(str::to_string))
            .flatten()
    };
    s.gw.audit.record(AuditRecord {
        ts_ms: crate::telemetry::now_ms(),
        actor: caller.actor,
        action: route.action,
        target,
        outcome,
        status,
        error: header("x-error"),
        error_id: header("x-error-id"),
        method,
        path: template,
        address: caller.address.map(|a| a.to_string()),
    });
    resp
}

/// The id a create made, in its answer (for the audit record).
pub type CreatedId = axum::Extension<Created>;

/// Put the id a create made in its answer, for the audit record.
pub fn created(id: &str) -> CreatedId {
    axum::Extension(Created(id.to_string()))
}
