//! The data-plane app: serves each client connection (HTTP/1.1 keep-alive, pipelined requests
//! answered in order), answers what the gateway answers itself, and hands inference requests to
//! the forwarder.

use super::endpoint::{route, Endpoint};
use super::errors::ProxyError;
use super::exchange::Exchange;
use super::h1::{BodyError, ClientConn, NextRequest, RequestHead};
use super::settings::Settings;
use crate::gateway::Gateway;
use crate::identity::{presented, KeyEntry, Limited, Scope};
use crate::routing::prefix::Chainer;
use crate::routing::{route_key_json, route_key_multipart};
use crate::shutdown::Phase;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::ServerApp;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Instant;

/// A connection keeps the buffer of its prompts' block hashes up to this many (32 KiB).
const MAX_KEPT_CHAIN: usize = 4096;

/// Longest `user` (body field or `x-user-id` header) accepted as an affinity identity.
pub const MAX_USER_BYTES: usize = 256;

/// The data-plane app.
pub struct ProxyApp {
    pub(super) gw: Arc<Gateway>,
    pub(super) connector: TransportConnector,
    /// Rebuilt when a reload applies a new configuration.
    settings: ArcSwap<Settings>,
    /// Set when the listener speaks TLS: the handshake runs here, once the connection is
    /// admitted and within the header timeout (Pingora's own allows 60 s, uncounted).
    tls: Option<pingora::listeners::tls::Acceptor>,
    started_unix: u64,
}

impl ProxyApp {
    pub fn new(gw: Arc<Gateway>) -> Self {
        let p = &gw.config.proxy;
        let mut opts = ConnectorOptions::new(p.pool_size);
        opts.ca_file = p.ca_file.clone();
        Self {
            connector: TransportConnector::new(Some(opts)),
            settings: ArcSwap::from_pointee(Settings::new(&gw)),
            tls: None,
            started_unix: crate::telemetry::now_ms() / 1000,
            gw,
        }
    }

    /// The settings of the configuration applied last (rebuilt once after each reload).
    pub(super) fn settings(&self) -> Arc<Settings> {
        let current = self.settings.load_full();
        if current.version == self.gw.config_version() {
            return current;
        }
        let fresh = Arc::new(Settings::new(&self.gw));
        self.settings.store(fresh.clone());
        fresh
    }

    /// The key of a request needing `scope`, when keys are required: a 401 for a missing, unknown,
    /// revoked or expired key, a 403 for one without the path's scope, a 429 for one past its
    /// rpm or tpm (the request is counted when admitted).
    fn authorize(
        &self,
        head: &RequestHead,
        scope: Option<Scope>,
        now_ms: u64,
        required: bool,
    ) -> Result<Option<Arc<KeyEntry>>, ProxyError> {
        if !required {
            return Ok(None);
        }
        let presented = presented(|name| head.header(name))
            .map_err(|e| ProxyError::Unauthorized(e.to_string()))?;
        let key = self
            .gw
            .keys
            .verify(presented, now_ms)
            .map_err(|r| match r {
                crate::identity::Refusal::Unconfirmed => ProxyError::KeysUnconfirmed,
                r => ProxyError::Unauthorized(r.to_string()),
            })?;
        if let Some(scope) = scope {
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

    /// Answer one request; `ex.keepalive` says afterwards whether the connection goes on.
    async fn handle(&self, ex: &mut Exchange<'_>, started: Instant) {
        // One wall-clock read per request: key expiry, limits, affinity TTL and usage use it.
        let now_ms = crate::telemetry::now_ms();
        let path = ex.head.path();
        let (endpoint, scope) = route(ex.head.method(), path);
        let key = match endpoint {
            Endpoint::Json | Endpoint::Multipart | Endpoint::Models => {
                match self.authorize(ex.head, scope, now_ms, ex.settings.auth_required) {
                    Ok(k) => k,
                    Err(e) => {
                        ex.settle_unread_body();
                        self.fail(ex, e, "", "").await;
                        return;
                    }
                }
            }
            _ => None,
        };
        match endpoint {
            Endpoint::Json | Endpoint::Multipart => {
                self.proxy(ex, endpoint, key.as_deref(), started, now_ms)
                    .await
            }
            Endpoint::Models => {
                ex.settle_unread_body();
                self.models(ex).await;
            }
            Endpoint::Health => {
                ex.settle_unread_body();
                // Draining: a load balancer takes this instance out while it still serves.
                if self.gw.drain.health_draining() {
                    ex.respond_json(503, &[], b"{\"status\":\"draining\"}")
                        .await;
                } else {
                    ex.respond_json(200, &[], b"{\"status\":\"ok\"}").await;
                }
            }
            Endpoint::ServerOptions => {
                ex.settle_unread_body();
                ex.respond(200, None, &[("allow", b"GET, HEAD, POST, OPTIONS")], b"")
                    .await;
            }
            Endpoint::WrongMethod(allowed) => {
                ex.settle_unread_body();
                self.fail(ex, ProxyError::WrongMethod(allowed), "", "")
                    .await
            }
            Endpoint::Unknown => {
                ex.settle_unread_body();
                let err = ProxyError::UnknownPath(ex.head.method().to_string(), path.into());
                self.fail(ex, err, "", "").await
            }
        }
    }

    async fn proxy(
        &self,
        ex: &mut Exchange<'_>,
        endpoint: Endpoint,
        api_key: Option<&KeyEntry>,
        started: Instant,
        now_ms: u64,
    ) {
        let max = ex.settings.max_body;
        if ex.head.expects_continue && !ex.conn.body_buffered(ex.head) {
            if let Some(super::h1::request::BodyFraming::Length(n)) = ex.head.framing {
                if n > max as u64 {
                    ex.keepalive = false;
                    self.fail(ex, ProxyError::TooLarge(max), "", "").await;
                    return;
                }
            }
            ex.conn
                .out
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            if ex.conn.send(&[]).await.is_err() {
                ex.keepalive = false;
                return;
            }
        }
        let body = match ex.conn.read_body(ex.head, max).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                ex.keepalive = false;
                self.fail(ex, ProxyError::TooLarge(max), "", "").await;
                return;
            }
            Err(BodyError::Framing(e)) => {
                ex.keepalive = false;
                let err = ProxyError::BadRequest(format!("malformed chunked body: {e}"));
                self.fail(ex, err, "", "").await;
                return;
            }
            Err(BodyError::TimedOut) => {
                ex.keepalive = false;
                self.gw.metrics.client_timeout("body");
                self.fail(ex, ProxyError::ClientTimeout("body"), "", "")
                    .await;
                return;
            }
            Err(BodyError::Io) => {
                ex.keepalive = false;
                return;
            }
        };
        self.route(ex, endpoint, api_key, &body, started, now_ms)
            .await
    }

    async fn route(
        &self,
        ex: &mut Exchange<'_>,
        endpoint: Endpoint,
        api_key: Option<&KeyEntry>,
        body: &Bytes,
        started: Instant,
        now_ms: u64,
    ) {
        // The prompt's block hashes, when a model routes by prefix: read in the same scan.
        let mut chain = std::mem::take(&mut ex.conn.chain);
        let key = match (endpoint, ex.settings.prefix_chain) {
            (Endpoint::Multipart, _) => {
                let ct = ex.head.header("content-type").unwrap_or_default();
                route_key_multipart(body, ct)
            }
            (_, Some((block, max))) => {
                let seed = self
                    .gw
                    .prefix_seed
                    .load(std::sync::atomic::Ordering::Relaxed);
                let mut chainer = Chainer::new(&mut chain, block, max, seed);
                route_key_json(body, Some(&mut chainer))
            }
            (_, None) => route_key_json(body, None),
        };
        self.route_keyed(ex, key, &chain, api_key, body, started, now_ms)
            .await;
        chain.clear();
        if chain.capacity() <= MAX_KEPT_CHAIN {
            ex.conn.chain = chain;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn route_keyed(
        &self,
        ex: &mut Exchange<'_>,
        key: Result<crate::routing::RouteKey<'_>, crate::routing::BodyError>,
        chain: &[u64],
        api_key: Option<&KeyEntry>,
        body: &Bytes,
        started: Instant,
        now_ms: u64,
    ) {
        let key = match key {
            Ok(k) => k,
            Err(e) => {
                return self
                    .fail(ex, ProxyError::BadRequest(e.to_string()), "", "")
                    .await
            }
        };
        // The affinity identity: the body's `user`, else the API key's user, else the
        // x-user-id header.
        let head = ex.head;
        let user: Option<std::borrow::Cow<'_, str>> = match key.user {
            Some(u) => Some(u),
            None => match api_key.and_then(|k| k.user_id.as_deref()) {
                Some(u) => Some(std::borrow::Cow::Borrowed(u)),
                None => head
                    .header("x-user-id")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .filter(|u| !u.is_empty())
                    .map(std::borrow::Cow::Borrowed),
            },
        };
        if user.as_ref().is_some_and(|u| u.len() > MAX_USER_BYTES) {
            let err = ProxyError::BadRequest(format!(
                "the user identity (\"user\" or x-user-id) must be at most {MAX_USER_BYTES} bytes"
            ));
            return self.fail(ex, err, "", "").await;
        }
        let table = self.gw.table.load();
        let Some(pool) = table.pool(&key.model) else {
            let err = ProxyError::UnknownModel(key.model.chars().take(256).collect());
            return self.fail(ex, err, "", "").await;
        };
        let ctx = super::request_ctx::RequestCtx {
            key: api_key,
            user: user.as_deref(),
            chain: if pool.prefix.is_some() { chain } else { &[] },
            started,
            started_ms: now_ms,
            prefill: Default::default(),
            prefill_ahead: Default::default(),
            stream: key.stream,
        };
        self.forward(ex, pool, body, &ctx).await
    }

    /// `GET /v1/models`: the models with at least one healthy server, in OpenAI's list format.
    async fn models(&self, ex: &mut Exchange<'_>) {
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
        let body = serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
            .unwrap_or_default();
        ex.respond_json(200, &[], &body).await;
    }

    /// Answer an error of the gateway's own and count it.
    pub(super) async fn fail(
        &self,
        ex: &mut Exchange<'_>,
        err: ProxyError,
        model: &str,
        server: &str,
    ) {
        let status = err.status();
        self.gw.metrics.count_request(model, server, status);
        if status == 502 || status == 504 {
            tracing::warn!(status, model, server, error = %err, "request failed");
        } else {
            tracing::debug!(status, error = %err, "request refused");
        }
        let body = err.body();
        match err.field(ex.settings.retry_after_secs) {
            Some((name, value)) => {
                ex.respond_json(status, &[(name, value.as_bytes())], &body)
                    .await
            }
            None => ex.respond_json(status, &[], &body).await,
        };
    }

    /// Serve this app's connections over TLS with `acceptor`.
    pub fn with_tls(mut self, acceptor: Option<pingora::listeners::tls::Acceptor>) -> Self {
        self.tls = acceptor;
        self
    }

    /// The TLS handshake of an admitted connection, within the header timeout.
    async fn tls_handshake(
        &self,
        acceptor: &pingora::listeners::tls::Acceptor,
        io: Stream,
    ) -> Option<Stream> {
        // The listener is plain TCP: its streams are Pingora's L4 streams.
        let l4 = match io
            .into_any()
            .downcast::<pingora::protocols::l4::stream::Stream>()
        {
            Ok(l4) => *l4,
            Err(_) => {
                tracing::warn!("a TLS listener's connection is not a TCP stream");
                return None;
            }
        };
        let limit = self.settings().client_limits.header;
        match tokio::time::timeout(limit, acceptor.tls_handshake(l4)).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                self.gw.metrics.client_timeout("tls");
                None
            }
        }
    }

    /// A connection over `max_connections`: 503 before its request is read, then closed.
    async fn refuse_connection(&self, conn: &mut ClientConn) {
        let err = ProxyError::TooManyConnections;
        let settings = self.settings();
        let field = err.field(settings.retry_after_secs);
        let mut ex = Exchange {
            conn,
            head: &RequestHead::default(),
            keepalive: false,
            drain: &self.gw.drain,
            settings: &settings,
        };
        let fields: Vec<(&str, &[u8])> = field.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        ex.respond_json(err.status(), &fields, &err.body()).await;
        conn.close_soon().await;
    }

    /// A head that could not be parsed: 400 (or 431), then the connection closes.
    async fn refuse_head(
        &self,
        conn: &mut ClientConn,
        head: &RequestHead,
        e: super::h1::HeadError,
    ) {
        tracing::debug!(error = %e, "bad request head");
        let status = e.status();
        self.gw.metrics.count_request("", "", status);
        let err = ProxyError::BadRequest(e.to_string());
        let settings = self.settings();
        let mut ex = Exchange {
            conn,
            head,
            keepalive: false,
            drain: &self.gw.drain,
            settings: &settings,
        };
        ex.respond_json(status, &[], &err.body()).await;
    }
}

#[async_trait]
impl ServerApp for ProxyApp {
    async fn process_new(
        self: &Arc<Self>,
        io: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut s = self.settings();
        let metrics = &self.gw.metrics;
        // One atomic update per connection (not per request): admitted while under the cap; a
        // refused connection is never counted, so a flood of them cannot keep the count up.
        // (The count is the drain's too: it waits for it to reach zero.)
        let slot = ConnectionSlot::take(
            &self.gw.drain.open,
            s.max_connections,
            &metrics.client_connections,
        );
        let io = match (&self.tls, &slot) {
            // Over the cap on TLS: closed before any handshake work.
            (Some(_), None) => {
                metrics.client_refused.inc();
                return None;
            }
            // The handshake's 7 KiB of state on the heap, once per TLS connection, rather than
            // in the task of every connection.
            (Some(acceptor), Some(_)) => Box::pin(self.tls_handshake(acceptor, io)).await?,
            (None, _) => io,
        };
        let mut conn = ClientConn::new(io, s.client_read_buffer, s.client_limits);
        let Some(_slot) = slot else {
            metrics.client_refused.inc();
            self.refuse_connection(&mut conn).await;
            return None;
        };
        let mut head = RequestHead::default();
        // Idle connections close when the listener does (in the grace period before it, a
        // request still gets served, with `Connection: close`).
        let mut stop = self.gw.drain.subscribe();
        let closes = |p: &Phase| *p >= Phase::Closing;
        // A new connection must send its first head as promptly as any head; keep-alive idling
        // is for the time between requests.
        let mut idle = s.client_limits.header;
        loop {
            let next = conn.next_request(&mut head, idle, &mut stop, closes).await;
            idle = s.keepalive;
            match next {
                NextRequest::Ready => {}
                NextRequest::Closed => return None,
                NextRequest::TimedOut => {
                    metrics.client_timeout("head");
                    let err = ProxyError::ClientTimeout("head");
                    let mut ex = Exchange {
                        conn: &mut conn,
                        head: &RequestHead::default(),
                        keepalive: false,
                        drain: &self.gw.drain,
                        settings: &s,
                    };
                    ex.respond_json(err.status(), &[], &err.body()).await;
                    conn.shutdown().await;
                    return None;
                }
                NextRequest::Bad(e) => {
                    self.refuse_head(&mut conn, &RequestHead::default(), e)
                        .await;
                    conn.shutdown().await;
                    return None;
                }
            }
            let started = Instant::now();
            // A reload applies to the requests that follow on open connections too (a key
            // newly required is required of them).
            if s.version != self.gw.config_version() {
                s = self.settings();
            }
            let mut ex = Exchange {
                conn: &mut conn,
                head: &head,
                keepalive: !head.close && !self.gw.drain.draining(),
                drain: &self.gw.drain,
                settings: &s,
            };
            self.handle(&mut ex, started).await;
            if !ex.keepalive {
                conn.shutdown().await;
                return None;
            }
        }
    }
}

/// An admitted client connection, counted (and shown in the gauge) while it lives.
struct ConnectionSlot<'a> {
    open: &'a std::sync::atomic::AtomicUsize,
    gauge: &'a prometheus::IntGauge,
}

impl<'a> ConnectionSlot<'a> {
    /// A slot when fewer than `max` are open.
    fn take(
        open: &'a std::sync::atomic::AtomicUsize,
        max: usize,
        gauge: &'a prometheus::IntGauge,
    ) -> Option<Self> {
        use std::sync::atomic::Ordering::Relaxed;
        open.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()?;
        gauge.inc();
        Some(Self { open, gauge })
    }
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.gauge.dec();
    }
}
