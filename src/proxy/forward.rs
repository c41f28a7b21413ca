//! Sending a request to a server of the model's pool: selection, connect-failure retries on
//! another server, the stale-pooled-connection retry, and upstream timeouts.

use super::app::ProxyApp;
use super::errors::ProxyError;
use crate::health::Source;
use crate::identity::KeyEntry;
use crate::routing::{choose, Member, Pool};
use crate::usage::UsageRecord;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::protocols::http::ServerSession;
use pingora::time::fast_timeout::fast_timeout;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Attempts at most (first try + `max_retries`, which the config bounds).
pub const MAX_ATTEMPTS: usize = 8;

/// How one attempt on one server ended.
pub(super) enum Attempt {
    /// A response was relayed (or the client left); `true` when the client connection is reusable.
    Done(bool),
    /// No connection could be made: nothing was sent, so another server may be tried.
    ConnectFailed,
    /// Failed after the request was sent: answered with this error, no retry.
    Failed(ProxyError),
}

/// Outcome of waiting for the response header.
enum HeaderWait {
    Ready,
    ClientGone,
    Failed(Box<pingora::Error>),
}

/// Counts a request in flight on a server (and for its model there) until the attempt ends,
/// however it ends.
struct InFlight<'a>(&'a IntGauge, &'a AtomicI64);

impl<'a> InFlight<'a> {
    fn enter(server: &'a IntGauge, model: &'a AtomicI64) -> Self {
        server.inc();
        model.fetch_add(1, Relaxed);
        Self(server, model)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
        self.1.fetch_sub(1, Relaxed);
    }
}

/// Request headers never forwarded: hop-by-hop ones, and the client's credentials (a server
/// sees only its own configured key).
const DROP_REQUEST_HEADERS: [&str; 13] = [
    "host",
    "authorization",
    "api-key",
    "api-secret",
    "x-api-key",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
    "expect",
];

/// What the gateway knows of a request besides its body: who sent it and when.
pub(super) struct RequestCtx<'a> {
    pub key: Option<&'a KeyEntry>,
    /// The affinity identity.
    pub user: Option<&'a str>,
    pub started: Instant,
    /// Unix ms when the request arrived.
    pub started_ms: u64,
}

impl RequestCtx<'_> {
    /// Hand the request's usage record to the recorder (off the hot path from here).
    pub fn record(
        &self,
        gw: &crate::gateway::Gateway,
        model: &Arc<str>,
        server: Option<&Arc<str>>,
        status: u16,
        ttft: Option<std::time::Duration>,
        usage: Option<crate::telemetry::usage::Usage>,
    ) {
        let usage = usage.unwrap_or_default();
        if let Some(k) = self.key.filter(|k| k.tpm.is_some()) {
            gw.limiter.add_tokens(
                k,
                usage.prompt_tokens.saturating_add(usage.completion_tokens),
                crate::telemetry::now_ms(),
            );
        }
        if !gw.config.usage.enabled {
            return;
        }
        gw.usage.record(UsageRecord {
            ts_ms: self.started_ms,
            key_id: self.key.map(|k| k.id.clone()),
            // With a key, only the key's user (a client cannot charge usage to someone else);
            // without keys (auth off), the request's own user.
            user_id: match self.key {
                Some(k) => k.user_id.clone(),
                None => self.user.map(Arc::from),
            },
            org_id: self.key.and_then(|k| k.org_id.clone()),
            model: model.clone(),
            server: server.cloned(),
            status,
            latency_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            ttft_ms: ttft.map(|d| d.as_secs_f64() * 1000.0),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            stream: ttft.is_some(),
        });
    }
}

impl ProxyApp {
    pub(super) async fn forward(
        &self,
        session: &mut ServerSession,
        pool: &Pool,
        body: &Bytes,
        ctx: &RequestCtx<'_>,
    ) -> bool {
        let user = ctx.user;
        let gw = &self.gw;
        let mut tried = [0usize; MAX_ATTEMPTS];
        let mut attempts = 0usize;
        let now = ctx.started_ms;
        loop {
            let choice = choose(pool, user, &*gw.store, now, &tried[..attempts]).await;
            let Some((index, member)) = choice.member else {
                let err = if attempts == 0 {
                    ProxyError::NoHealthyServer(pool.model.to_string())
                } else {
                    ProxyError::Unreachable(pool.model.to_string())
                };
                ctx.record(&self.gw, &pool.model, None, err.status(), None, None);
                return self.fail(session, err, &pool.model, "").await;
            };
            let backend = &member.backend;
            if attempts == 0 {
                if let Some(outcome) = choice.affinity {
                    gw.store.affinity_record(backend.provider, outcome);
                    gw.metrics.affinity(backend.provider.as_str(), outcome);
                }
            }
            backend.last_use_ms.store(now, Relaxed);
            member.requests.fetch_add(1, Relaxed);
            let inflight = InFlight::enter(&backend.inflight, &member.inflight);
            let result = self.attempt(session, member, body, ctx).await;
            drop(inflight);
            match result {
                Attempt::Done(reusable) => return reusable,
                Attempt::Failed(err) => {
                    ctx.record(
                        &self.gw,
                        &pool.model,
                        Some(&backend.id),
                        err.status(),
                        None,
                        None,
                    );
                    return self.fail(session, err, &pool.model, &backend.id).await;
                }
                Attempt::ConnectFailed => {
                    backend.record_failure(gw.policy, Source::Passive, "connect failed");
                    gw.metrics.retry(&backend.id);
                    tried[attempts] = index;
                    attempts += 1;
                    if attempts > self.settings.max_retries || attempts >= MAX_ATTEMPTS {
                        let err = ProxyError::Unreachable(pool.model.to_string());
                        ctx.record(
                            &self.gw,
                            &pool.model,
                            Some(&backend.id),
                            err.status(),
                            None,
                            None,
                        );
                        return self.fail(session, err, &pool.model, &backend.id).await;
                    }
                }
            }
        }
    }

    async fn attempt(
        &self,
        session: &mut ServerSession,
        member: &Member,
        body: &Bytes,
        ctx: &RequestCtx<'_>,
    ) -> Attempt {
        let backend = &member.backend;
        let peer = backend.peer.load_full();
        // A pooled connection the server closed while idle fails on first use; that one failure is
        // retried once on a fresh connection, as nothing reached the server.
        let mut may_retry_stale = true;
        let upstream = loop {
            let (mut up, reused) = match self.connector.get_http_session(&*peer).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(server = %backend.id, error = %e, "connect failed");
                    return Attempt::ConnectFailed;
                }
            };
            up.set_read_timeout(Some(self.settings.read_timeout));
            let sent = send(
                up,
                &peer,
                session.req_header(),
                backend,
                body,
                self.settings.write_timeout,
            )
            .await;
            let (mut up, wait) = match sent {
                Ok(mut up) => {
                    let wait = wait_for_header(&mut up, session).await;
                    (Some(up), wait)
                }
                Err(e) => (None, HeaderWait::Failed(e)),
            };
            match wait {
                HeaderWait::Ready => break up.take().expect("a session when ready"),
                HeaderWait::ClientGone => {
                    self.gw
                        .metrics
                        .count_request(&member.model, &backend.id, 499);
                    ctx.record(&self.gw, &member.model, Some(&backend.id), 499, None, None);
                    return Attempt::Done(false);
                }
                HeaderWait::Failed(e) if reused && may_retry_stale && !is_timeout(&e) => {
                    tracing::debug!(server = %backend.id, error = %e, "pooled connection was stale; retrying on a new one");
                    may_retry_stale = false;
                }
                HeaderWait::Failed(e) => {
                    let timeout = is_timeout(&e);
                    backend.record_failure(
                        self.gw.policy,
                        Source::Passive,
                        if timeout { "timeout" } else { "upstream error" },
                    );
                    tracing::warn!(server = %backend.id, error = %e, "upstream request failed");
                    let model = member.model.to_string();
                    return Attempt::Failed(if timeout {
                        ProxyError::Timeout(model)
                    } else {
                        ProxyError::Unreachable(model)
                    });
                }
            }
        };
        self.relay(session, upstream, member, &peer, ctx).await
    }
}

/// Bodies up to this size are sent in the same write as the request head.
const COALESCE_BODY_BYTES: usize = 64 * 1024;

/// Send the request. The head and (small) body leave in one write: Pingora's HTTP/1 client
/// flushes the head on its own, which costs a second loopback/TCP segment per request, so the
/// request is written on the raw stream and the session is rebuilt to read the response with
/// Pingora's parser. (Only POSTs are proxied, so the response framing does not depend on the
/// request the session did not see.)
async fn send(
    up: HttpSession,
    peer: &HttpPeer,
    client: &RequestHeader,
    backend: &crate::upstream::Backend,
    body: &Bytes,
    write_timeout: Duration,
) -> Result<HttpSession, Box<pingora::Error>> {
    let HttpSession::H1(h1) = up else {
        return Err(pingora::Error::explain(
            ErrorType::InternalError,
            "only HTTP/1.1 upstream sessions are used",
        ));
    };
    let (read_timeout, mut stream) = (h1.read_timeout, h1.into_inner());
    let coalesce = body.len() <= COALESCE_BODY_BYTES;
    let mut head = Vec::with_capacity(512 + if coalesce { body.len() } else { 0 });
    write_head(&mut head, client, backend, body.len());
    let write = async {
        if coalesce {
            head.extend_from_slice(body);
            stream.write_all(&head).await?;
        } else {
            stream.write_all(&head).await?;
            stream.write_all(body).await?;
        }
        stream.flush().await
    };
    match fast_timeout(write_timeout, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(pingora::Error::because(
                ErrorType::WriteError,
                "sending the request",
                e,
            ))
        }
        Err(_) => {
            return Err(pingora::Error::explain(
                ErrorType::WriteTimedout,
                "sending the request",
            ))
        }
    }
    let mut h1 = Http1Session::new_with_options(stream, peer);
    h1.read_timeout = read_timeout;
    Ok(HttpSession::H1(h1))
}

/// Wait for the response header, giving up if the client goes away first (which then frees
/// the server's slot when the upstream connection is dropped).
async fn wait_for_header(up: &mut HttpSession, session: &mut ServerSession) -> HeaderWait {
    loop {
        let r = tokio::select! {
            biased;
            r = up.read_response_header() => r,
            _ = session.read_body_or_idle(true) => return HeaderWait::ClientGone,
        };
        if let Err(e) = r {
            return HeaderWait::Failed(e);
        }
        match up.response_header() {
            // 1xx informational: read on.
            Some(h) if h.status.is_informational() => continue,
            _ => return HeaderWait::Ready,
        }
    }
}

fn is_timeout(e: &pingora::Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout
    )
}

/// The request head as the server gets it: the client's path under the server's base URL, the
/// client's headers minus credentials and hop-by-hop ones, the server's own key, exact length.
fn write_head(
    out: &mut Vec<u8>,
    client: &RequestHeader,
    backend: &crate::upstream::Backend,
    body_len: usize,
) {
    let path = client.uri.path();
    out.extend_from_slice(client.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(backend.url.base_path.as_bytes());
    out.extend_from_slice(path.strip_prefix("/v1").unwrap_or(path).as_bytes());
    if let Some(q) = client.uri.query() {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(backend.host_header.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(auth) = &backend.auth_header {
        out.extend_from_slice(b"authorization: ");
        out.extend_from_slice(auth.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in client.headers.iter() {
        if DROP_REQUEST_HEADERS.contains(&name.as_str()) || name == http::header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}
