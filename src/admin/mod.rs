//! The admin service, on its own port and threads: Prometheus metrics and a liveness check
//! (unauthenticated), and the admin API (the fleet endpoints of `shared/spec/002` and the
//! identity endpoints of `shared/spec/000`) under both `/api/ai/v1/admin/...` and
//! `/admin/...`, which requires the `ai_admin` role.

mod affinity;
mod audit;
mod audited;
pub mod auth;
mod body;
mod config;
mod csv_export;
mod demand;
pub mod error;
mod identity_views;
mod keys;
mod listener;
mod lockout;
mod model_files;
mod model_lifecycle;
mod model_registry;
mod models;
mod openapi;
mod orgs;
pub mod page;
mod pods;
mod registry;
mod routing;
mod servers;
mod system;
mod upstreams;
mod usage;
mod users;

use crate::gateway::Gateway;
use crate::pods::{Pods, PodsSetupError};
use async_trait::async_trait;
use auth::{AuthSetupError, Credentials, AI_ADMIN};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use pingora::server::ShutdownWatch;
use std::sync::Arc;

/// What the admin handlers share.
pub struct AdminState {
    pub gw: Arc<Gateway>,
    /// Built from `[admin] credentials` (and the environment), again after a reload.
    creds: crate::reload::Derived<Vec<crate::config::CredentialConfig>, Credentials>,
    /// Built from `[pods]`, again after a reload.
    pods: crate::reload::Derived<crate::config::PodsConfig, Pods>,
    /// For model discovery outside the data plane.
    pub client: reqwest::Client,
    /// Probes on demand (`POST upstreams/refresh-health`).
    pub prober: crate::health::HealthChecker,
    /// Usage queries hold their records in memory: at most two run at once.
    pub usage_scans: tokio::sync::Semaphore,
    /// Managed models: records and the engines this instance runs.
    pub life: Arc<crate::lifecycle::Lifecycle>,
    /// The Hugging Face Hub (`HF_ENDPOINT`, `HF_TOKEN`), with its answers cached.
    pub hub: crate::modelfiles::hub::Hub,
    /// This machine's GPUs (NVML, loaded at start when a driver is there).
    pub gpus: Arc<dyn crate::gpu::GpuSource>,
    /// Host, GPU, throughput and engine figures (`/admin/system/*`, `/admin/models/metrics`).
    pub monitor: Arc<crate::monitoring::Monitor>,
    /// Addresses blocked after repeated failed authentications.
    lockout: lockout::Lockout,
}

/// Why the admin service could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminSetupError {
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error(transparent)]
    Pods(#[from] PodsSetupError),
    #[error(transparent)]
    Client(#[from] crate::health::ProbeSetupError),
}

impl AdminState {
    /// The admin credentials as configured now.
    pub fn creds(&self) -> Arc<Credentials> {
        let live = self.gw.live();
        self.creds
            .get(&live.admin.credentials, "admin credentials", |_| {
                Credentials::from_env_and_config(&live.admin)
            })
    }

    /// The pod provider as configured now.
    pub fn pods(&self) -> Arc<Pods> {
        let live = self.gw.live();
        self.pods.get(&live.pods, "pod provider", Pods::from_config)
    }

    pub fn new(
        gw: Arc<Gateway>,
        life: Arc<crate::lifecycle::Lifecycle>,
        monitor: Arc<crate::monitoring::Monitor>,
    ) -> Result<Self, AdminSetupError> {
        Ok(Self {
            creds: crate::reload::Derived::new(
                gw.config.admin.credentials.clone(),
                Credentials::from_env_and_config(&gw.config.admin)?,
            ),
            pods: crate::reload::Derived::new(
                gw.config.pods.clone(),
                Pods::from_config(&gw.config.pods)?,
            ),
            client: crate::health::server_client(&gw.config)?,
            prober: crate::health::HealthChecker::new(gw.clone())?,
            usage_scans: tokio::sync::Semaphore::new(2),
            gpus: monitor.gpu_source.clone(),
            monitor,
            lockout: lockout::Lockout::new(
                gw.config.admin.auth_failures_max,
                std::time::Duration::from_secs(gw.config.admin.auth_failures_window_secs),
                std::time::Duration::from_secs(gw.config.admin.auth_block_secs),
            ),
            hub: crate::modelfiles::hub::Hub::from_env(std::time::Duration::from_secs(
                gw.config.runner.hub_timeout_secs,
            )),
            life,
            gw,
        })
    }
}

/// `page` and `limit` (documentation only: they are parsed by [`page::Page`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// Page number (default 1).
    page: Option<u64>,
    /// Items per page (default 10, at most 100; a larger limit is served as 100).
    limit: Option<u64>,
}

/// The admin service: a Pingora listening service of its own, so that its socket is handed
/// over with the data plane's in a binary upgrade.
pub struct AdminService {
    state: Arc<AdminState>,
    /// `[admin] listen`, as the key of the socket in Pingora's table of listening sockets.
    addr: String,
    /// Bound before the server starts (so that a taken port fails the start clearly); None
    /// when the socket comes from the process being upgraded.
    listener: Option<std::net::TcpListener>,
    /// Set when the admin port speaks TLS (`[admin] tls_cert`).
    tls: Option<pingora::tls::TlsAcceptor>,
}

impl AdminService {
    pub fn new(
        gw: Arc<Gateway>,
        life: Arc<crate::lifecycle::Lifecycle>,
        monitor: Arc<crate::monitoring::Monitor>,
        listener: Option<std::net::TcpListener>,
    ) -> Result<Self, AdminSetupError> {
        let addr = gw.config.admin.listen.clone();
        Ok(Self {
            state: Arc::new(AdminState::new(gw, life, monitor)?),
            addr,
            listener,
            tls: None,
        })
    }

    /// Serve over TLS with this acceptor.
    pub fn with_tls(mut self, tls: Option<pingora::tls::TlsAcceptor>) -> Self {
        self.tls = tls;
        self
    }

    /// The listening socket: the one the process being upgraded handed over, else the one
    /// bound at start (or bound now), entered in the table for the next upgrade.
    fn take_listener(
        &mut self,
        fds: Option<pingora::server::ListenFds>,
    ) -> std::io::Result<std::net::TcpListener> {
        use std::os::fd::{BorrowedFd, IntoRawFd};
        if let Some(table) = &fds {
            crate::shutdown::upgrade::remember(table);
        }
        let inherited = fds.as_ref().and_then(|t| t.lock().get(&self.addr).copied());
        if let Some(fd) = inherited {
            // SAFETY: the table holds this descriptor open for the life of the process (it is
            // sent on to the next upgrade); it is only borrowed here to be duplicated.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
            return Ok(std::net::TcpListener::from(fd));
        }
        let listener = match self.listener.take() {
            Some(l) => l,
            None => std::net::TcpListener::bind(&self.addr)?,
        };
        if let Some(table) = fds {
            let copy = listener.try_clone()?.into_raw_fd();
            table.lock().add(self.addr.clone(), copy);
        }
        Ok(listener)
    }
}

/// The fleet admin API, relative to its prefix.
fn fleet_api(state: &Arc<AdminState>) -> Router<Arc<AdminState>> {
    Router::new()
        .route("/pods", get(pods::list))
        .route("/pods/{id}", get(pods::get))
        .route("/pods/{id}/restart", post(pods::restart))
        .route("/servers", get(servers::list))
        .route("/affinity", get(affinity::report))
        .route("/affinity/clear", post(affinity::clear))
        .route("/routing", get(routing::report))
        .route(
            "/registry/refresh",
            post(registry::refresh).get(registry::get_refresh_model),
        )
        .route("/registry/{*model_id}", get(registry::get))
        .route("/demand/{*pod_url}", get(demand::get))
        .route("/orgs", get(orgs::list).post(orgs::create))
        .route("/orgs/lookup", get(orgs::lookup))
        .route(
            "/orgs/{id}",
            axum::routing::patch(orgs::patch).delete(orgs::delete),
        )
        .route("/users", get(users::list).post(users::create))
        .route("/users/lookup", get(users::lookup))
        .route(
            "/users/{id}",
            axum::routing::patch(users::patch).delete(users::delete),
        )
        .route("/keys", get(keys::list).post(keys::create))
        .route("/keys/{id}", axum::routing::delete(keys::revoke))
        .route("/usage", get(usage::list))
        .route("/usage/aggregate", get(usage::aggregate))
        .route("/usage/series", get(usage::series))
        .route("/usage/latency", get(usage::latency))
        .route("/usage/ttft", get(usage::ttft))
        .route("/usage/export", get(usage::export))
        .route("/audit", get(audit::list))
        .route("/audit/export", get(audit::export))
        .route("/upstreams", get(upstreams::get))
        .route("/config", get(config::get))
        .route("/config/reload", post(config::reload))
        .route("/upstreams/refresh-health", post(upstreams::refresh_health))
        .route("/models", get(models::list).post(models::create))
        .route(
            "/models/base-dir",
            get(model_files::get_base_dir).put(model_files::put_base_dir),
        )
        .route("/models/local-folders", get(model_files::local_folders))
        .route("/models/hf-config", get(model_files::hf_config))
        .route("/models/dry-run", post(model_lifecycle::dry_run_unsaved))
        .route("/models/{id}/dry-run", post(model_lifecycle::dry_run))
        .route("/models/inspect-folder", get(model_files::inspect_folder))
        .route("/models/metrics", get(system::model_metrics))
        .route("/system/summary", get(system::summary))
        .route("/system/throughput", get(system::throughput))
        .route("/system/gpus", get(system::gpus))
        .route("/system/host/summary", get(system::host_summary))
        .route("/system/host/trends", get(system::host_trends))
        .route("/system/capabilities", get(system::capabilities))
        .route(
            "/models/{id}",
            get(models::get).patch(models::patch).delete(models::delete),
        )
        .route("/models/{id}/start", post(model_lifecycle::start))
        .route("/models/{id}/stop", post(model_lifecycle::stop))
        .route("/models/{id}/apply", post(model_lifecycle::apply))
        .route("/models/{id}/readiness", get(model_lifecycle::readiness))
        .route("/models/{id}/test", post(model_lifecycle::test))
        .route("/models/{id}/logs", get(model_lifecycle::logs))
        .route(
            "/models/registry",
            get(model_registry::list)
                .post(model_registry::add)
                .delete(model_registry::remove),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .route("/openapi.json", get(openapi::document))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
}

/// `GET /health`: 200, or 503 `draining` once the gateway is stopping (the admin API itself
/// keeps answering until the process ends).
async fn health(State(s): State<Arc<AdminState>>) -> Response {
    if s.gw.drain.health_draining() {
        let body = axum::Json(serde_json::json!({"status": "draining"}));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    } else {
        axum::Json(serde_json::json!({"status": "ok"})).into_response()
    }
}

/// Every admin route.
pub fn router(state: Arc<AdminState>) -> Router {
    let api = fleet_api(&state);
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .nest("/api/ai/v1/admin", api.clone())
        .nest("/admin", api)
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

/// A path parameter; `invalid` answers one that axum cannot decode (e.g. not UTF-8), so that
/// it still gets the admin API's error shape.
fn path_param(
    p: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    invalid: impl FnOnce() -> ApiError,
) -> Result<String, ApiError> {
    p.map(|axum::extract::Path(v)| v).map_err(|_| invalid())
}

/// A path parameter that cannot fail with axum's plain-text rejection: one that cannot be
/// decoded is a 400 in the admin API's error shape.
pub struct PathId(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| PathId(v))
            .map_err(|e| ApiError::bad_request("invalid path", e.body_text()))
    }
}

async fn require_admin(State(s): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    // The TCP peer (set by the listener; absent when the router is served otherwise).
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<listener::Peer>>()
        .map(|axum::extract::ConnectInfo(listener::Peer(a))| a.ip());
    if let Some(left) = ip.and_then(|ip| s.lockout.blocked(ip)) {
        return too_many_failures(left, ip);
    }
    // Only credentials that were presented and wrong count (a caller without any, behind the
    // same NAT as others, is not guessing).
    let presented =
        req.headers().contains_key(header::AUTHORIZATION) || req.headers().contains_key("api-key");
    let principal = match s.creds().authenticate(req.headers(), &s.gw.keys) {
        Ok(p) => p,
        Err(e) => {
            if e.status() == StatusCode::UNAUTHORIZED && presented {
                if let Some(block) = ip.and_then(|ip| s.lockout.failed(ip)) {
                    // Logged once, when the block starts (never the credentials tried).
                    tracing::warn!(address = ?ip, block_secs = block.as_secs(), "admin authentication blocked: too many failures from this address");
                    return too_many_failures(block, ip);
                }
            }
            return e.into_response();
        }
    };
    let allowed = principal.has_role(AI_ADMIN);
    // Every change of an authenticated caller is recorded, refused ones too (403 included).
    if crate::audit::actions::is_change(req.method()) {
        let caller = audited::Caller {
            actor: principal.api_key,
            allowed,
            address: ip,
        };
        return audited::change(&s, caller, req, next).await;
    }
    if !allowed {
        return auth::forbidden(AI_ADMIN).into_response();
    }
    next.run(req).await
}

/// 429 for an address blocked after failed authentications (the answer's log line carries its
/// error id and the address; the credentials it sent are never logged).
fn too_many_failures(left: std::time::Duration, ip: Option<std::net::IpAddr>) -> Response {
    let secs = left.as_secs().max(1);
    let address = ip.map_or_else(|| "?".to_string(), |ip| ip.to_string());
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed authentications",
    )
    .detail(format!("{address} is blocked for {secs} s"))
    .into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

async fn not_found() -> ApiError {
    ApiError::not_found("not found").detail("no admin endpoint has this path")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let (m, relaxed) = (&s.gw.metrics, std::sync::atomic::Ordering::Relaxed);
    m.records_lost_to("usage", s.gw.usage.lost_total.load(relaxed));
    m.records_lost_to("audit", s.gw.audit.dropped.load(relaxed));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.gw.metrics.render(),
    )
}

#[async_trait]
impl pingora::services::Service for AdminService {
    async fn start_service(
        &mut self,
        fds: Option<pingora::server::ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let listener = match self.take_listener(fds).and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        }) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, addr = %self.addr, "admin listener unusable");
                return;
            }
        };
        let app = router(self.state.clone());
        // The admin port serves through the whole drain (its /health says draining, /metrics
        // shows it) and ends with the process; after a binary upgrade, the new process serves
        // it, and this one stops taking connections when its listener closes.
        let gw = self.state.gw.clone();
        let stop = async move {
            loop {
                if *shutdown.borrow_and_update() && gw.drain.handed_over() {
                    return;
                }
                if shutdown.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        let config = &self.state.gw.config.admin;
        let limits = listener::Limits {
            header: std::time::Duration::from_secs(config.header_timeout_secs),
            max_connections: config.max_connections,
        };
        listener::serve(listener, self.tls.clone(), app, limits, stop).await;
    }

    fn name(&self) -> &str {
        "admin"
    }

    fn threads(&self) -> Option<usize> {
        Some(self.state.gw.config.admin.threads)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.addr.clone()])
    }
}
