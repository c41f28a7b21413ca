//! The HTTP app: reads a request, answers what the gateway answers itself, and hands inference
//! requests to the forwarder.

use super::body::{declared_length, read_body, BodyReadError};
use super::endpoint::{classify, Endpoint};
use super::errors::ProxyError;
use crate::gateway::Gateway;
use crate::identity::{presented, KeyEntry, Limited, Scope};
use crate::routing::{route_key_json, route_key_multipart};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Downstream keep-alive, seconds.
const KEEPALIVE_SECS: u64 = 60;
/// Longest wait for a client's next body bytes.
const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `user` (body field or `x-user-id` header) accepted as an affinity identity.
pub const MAX_USER_BYTES: usize = 256;

/// Settings of the data plane, copied out of the config once.
pub(super) struct Settings {
    pub max_body: usize,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_retries: usize,
    pub retry_after_secs: u64,
    pub pool_idle_timeout: Duration,
}

/// The data-plane app.
pub struct ProxyApp {
    pub(super) gw: Arc<Gateway>,
    pub(super) connector: Connector,
    pub(super) settings: Settings,
    started_unix: u64,
    /// `[auth] proxy = "required"`.
    auth_required: bool,
}

impl ProxyApp {
    pub fn new(gw: Arc<Gateway>) -> Self {
        let p = &gw.config.proxy;
        let mut opts = ConnectorOptions::new(p.pool_size);
        opts.ca_file = p.ca_file.clone();
        let settings = Settings {
            max_body: p.max_body_bytes,
            read_timeout: Duration::from_secs(p.read_timeout_secs),
            write_timeout: Duration::from_secs(p.write_timeout_secs),
            max_retries: p.max_retries,
            retry_after_secs: p.retry_after_secs,
            pool_idle_timeout: Duration::from_millis(p.pool_idle_timeout_ms),
        };
        Self {
            connector: Connector::new(Some(opts)),
            settings,
            started_unix: crate::telemetry::now_ms() / 1000,
            auth_required: gw.config.auth.proxy == crate::config::ProxyAuth::Required,
            gw,
        }
    }

    /// The key of a request to `path`, when keys are required: a 401 for a missing, unknown,
    /// revoked or expired key, a 403 for one without the path's scope, a 429 for one past its
    /// rpm or tpm (the request is counted when admitted).
    fn authorize(
        &self,
        session: &ServerSession,
        path: &str,
        now_ms: u64,
    ) -> Result<Option<Arc<KeyEntry>>, ProxyError> {
        if !self.auth_required {
            return Ok(None);
        }
        let presented = presented(&session.req_header().headers)
            .map_err(|e| ProxyError::Unauthorized(e.to_string()))?;
        let key = self
            .gw
            .keys
            .verify(presented, now_ms)
            .map_err(|r| ProxyError::Unauthorized(r.to_string()))?;
        if let Some(scope) = Scope::for_path(path) {
            if !key.scopes.contains(scope) {
                return Err(ProxyError::MissingScope(scope.as_str()));
            }
        }
        match self.gw.limiter.admit(&key, now_ms) {
            Ok(()) => Ok(Some(key)),
            Err(Limited::Requests {
                limit,
                retry_after_secs,
            }) => Err(ProxyError::RateLimited(
                format!("{limit} requests per minute"),
                retry_after_secs,
            )),
            Err(Limited::Tokens {
                limit,
                retry_after_secs,
            }) => Err(ProxyError::RateLimited(
                format!("{limit} tokens per minute"),
                retry_after_secs,
            )),
        }
    }

    /// Handle one request; `true` when the connection can serve another.
    async fn handle(&self, session: &mut ServerSession, started: Instant) -> bool {
        // One wall-clock read per request: key expiry, limits, affinity TTL and usage use it.
        let now_ms = crate::telemetry::now_ms();
        let endpoint = {
            let req = session.req_header();
            classify(&req.method, req.uri.path())
        };
        let key = match endpoint {
            Endpoint::Json | Endpoint::Multipart | Endpoint::Models => {
                match self.authorize(session, session.req_header().uri.path(), now_ms) {
                    Ok(k) => k,
                    Err(e) => {
                        let unread = !session.is_body_empty();
                        return self.fail(session, e, "", "").await && !unread;
                    }
                }
            }
            _ => None,
        };
        match endpoint {
            Endpoint::Json | Endpoint::Multipart => {
                self.proxy(session, endpoint, key.as_deref(), started, now_ms)
                    .await
            }
            Endpoint::Models => self.models(session).await,
            Endpoint::Health => {
                let body = Bytes::from_static(b"{\"status\":\"ok\"}");
                respond(session, json_header(200, body.len()), body).await
                    && session.is_body_empty()
            }
            Endpoint::WrongMethod(allowed) => {
                let unread = !session.is_body_empty();
                self.fail(session, ProxyError::WrongMethod(allowed), "", "")
                    .await
                    && !unread
            }
            Endpoint::Unknown => {
                let unread = !session.is_body_empty();
                let req = session.req_header();
                let err = ProxyError::UnknownPath(req.method.to_string(), req.uri.path().into());
                self.fail(session, err, "", "").await && !unread
            }
        }
    }

    async fn proxy(
        &self,
        session: &mut ServerSession,
        endpoint: Endpoint,
        api_key: Option<&KeyEntry>,
        started: Instant,
        now_ms: u64,
    ) -> bool {
        let max = self.settings.max_body;
        let expects_continue = session
            .get_header(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue && declared_length(session).is_none_or(|n| n <= max) {
            let _ = session.write_continue_response().await;
        }
        let body = match read_body(session, max).await {
            Ok(b) => b,
            Err(BodyReadError::TooLarge) => {
                self.fail(session, ProxyError::TooLarge(max), "", "").await;
                return false;
            }
            Err(BodyReadError::Io) => return false,
        };
        let key = match endpoint {
            Endpoint::Multipart => {
                let ct = session.get_header_bytes(http::header::CONTENT_TYPE);
                route_key_multipart(&body, ct)
            }
            _ => route_key_json(&body),
        };
        let key = match key {
            Ok(k) => k,
            Err(e) => {
                return self
                    .fail(session, ProxyError::BadRequest(e.to_string()), "", "")
                    .await
            }
        };
        // The affinity identity: the body's `user`, else the API key's user, else the
        // x-user-id header (copied only when it is used).
        let user: Option<std::borrow::Cow<'_, str>> = match key.user {
            Some(u) => Some(u),
            None => match api_key.and_then(|k| k.user_id.as_deref()) {
                Some(u) => Some(std::borrow::Cow::Borrowed(u)),
                None => session
                    .get_header("x-user-id")
                    .and_then(|v| v.to_str().ok())
                    .filter(|u| !u.is_empty())
                    .map(|u| std::borrow::Cow::Owned(u.to_owned())),
            },
        };
        if user.as_ref().is_some_and(|u| u.len() > MAX_USER_BYTES) {
            let err = ProxyError::BadRequest(format!(
                "the user identity (\"user\" or x-user-id) must be at most {MAX_USER_BYTES} bytes"
            ));
            return self.fail(session, err, "", "").await;
        }
        let table = self.gw.table.load();
        let Some(pool) = table.pool(&key.model) else {
            let err = ProxyError::UnknownModel(key.model.chars().take(256).collect());
            return self.fail(session, err, "", "").await;
        };
        let ctx = super::forward::RequestCtx {
            key: api_key,
            user: user.as_deref(),
            started,
            started_ms: now_ms,
        };
        self.forward(session, pool, &body, &ctx).await
    }

    /// `GET /v1/models`: the models with at least one healthy server, in OpenAI's list format.
    async fn models(&self, session: &mut ServerSession) -> bool {
        let table = self.gw.table.load();
        let data: Vec<_> = table
            .healthy_models()
            .into_iter()
            .map(|id| {
                serde_json::json!({
                    "id": id, "object": "model", "created": self.started_unix, "owned_by": "infergate"
                })
            })
            .collect();
        let body = Bytes::from(
            serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
                .unwrap_or_default(),
        );
        respond(session, json_header(200, body.len()), body).await && session.is_body_empty()
    }

    /// Answer an error of the gateway's own and count it.
    pub(super) async fn fail(
        &self,
        session: &mut ServerSession,
        err: ProxyError,
        model: &str,
        server: &str,
    ) -> bool {
        let status = err.status();
        self.gw.metrics.count_request(model, server, status);
        if status == 502 || status == 504 {
            tracing::warn!(status, model, server, error = %err, "request failed");
        } else {
            tracing::debug!(status, error = %err, "request refused");
        }
        let body = err.body();
        let header = err.header(body.len(), self.settings.retry_after_secs);
        respond(session, header, body).await
    }
}

fn json_header(status: u16, len: usize) -> ResponseHeader {
    let mut h = ResponseHeader::build(status, Some(2)).expect("valid status");
    let _ = h.insert_header(http::header::CONTENT_TYPE, "application/json");
    let _ = h.insert_header(http::header::CONTENT_LENGTH, len.to_string());
    h
}

async fn respond(session: &mut ServerSession, header: ResponseHeader, body: Bytes) -> bool {
    session
        .write_response_header(Box::new(header))
        .await
        .is_ok()
        && session.write_response_body(body, true).await.is_ok()
}

#[async_trait]
impl HttpServerApp for ProxyApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "reading request header failed");
                return None;
            }
        }
        let started = Instant::now();
        session.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE_SECS));
        session.set_read_timeout(Some(CLIENT_READ_TIMEOUT));
        // Boxed: an idle keep-alive connection then holds only the small header-read future,
        // not the (much larger) state of a request in flight.
        if !Box::pin(self.handle(&mut session, started)).await {
            return None;
        }
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, persistent)),
            _ => None,
        }
    }
}
