//! Sending a request to a server of the model's pool: selection, connect-failure retries on
//! another server, the stale-pooled-connection retry, and upstream timeouts.

use super::app::ProxyApp;
use super::errors::ProxyError;
use crate::health::Source;
use crate::routing::{choose, Member, Pool};
use crate::telemetry::now_ms;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::ServerSession;
use pingora::ErrorType;
use prometheus::IntGauge;
use std::time::Instant;

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

/// Decrements a server's in-flight gauge when the attempt ends, however it ends.
struct InFlight<'a>(&'a IntGauge);

impl<'a> InFlight<'a> {
    fn enter(g: &'a IntGauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
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

impl ProxyApp {
    pub(super) async fn forward(
        &self,
        session: &mut ServerSession,
        pool: &Pool,
        user: Option<&str>,
        body: &Bytes,
        started: Instant,
    ) -> bool {
        let gw = &self.gw;
        let mut tried = [0usize; MAX_ATTEMPTS];
        let mut attempts = 0usize;
        let now = now_ms();
        loop {
            let choice = choose(pool, user, &*gw.store, now, &tried[..attempts]);
            let Some((index, member)) = choice.member else {
                let err = if attempts == 0 {
                    ProxyError::NoHealthyServer(pool.model.to_string())
                } else {
                    ProxyError::Unreachable(pool.model.to_string())
                };
                return self.fail(session, err, &pool.model, "").await;
            };
            let backend = &member.backend;
            if attempts == 0 {
                if let Some(outcome) = choice.affinity {
                    gw.store.affinity_record(backend.provider, outcome);
                    gw.metrics.affinity(backend.provider.as_str(), outcome);
                }
            }
            let inflight = InFlight::enter(&backend.inflight);
            let result = self.attempt(session, member, body, started).await;
            drop(inflight);
            match result {
                Attempt::Done(reusable) => return reusable,
                Attempt::Failed(err) => {
                    return self.fail(session, err, &pool.model, &backend.id).await;
                }
                Attempt::ConnectFailed => {
                    backend.record_failure(gw.policy, Source::Passive, "connect failed");
                    gw.metrics.retry(&backend.id);
                    tried[attempts] = index;
                    attempts += 1;
                    if attempts > self.settings.max_retries || attempts >= MAX_ATTEMPTS {
                        let err = ProxyError::Unreachable(pool.model.to_string());
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
        started: Instant,
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
            up.set_write_timeout(Some(self.settings.write_timeout));
            let request = upstream_request(session.req_header(), backend, body.len());
            let wait = match send(&mut up, request, body).await {
                Ok(()) => wait_for_header(&mut up, session).await,
                Err(e) => HeaderWait::Failed(e),
            };
            match wait {
                HeaderWait::Ready => break up,
                HeaderWait::ClientGone => {
                    self.gw
                        .metrics
                        .count_request(&member.model, &backend.id, 499);
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
        self.relay(session, upstream, member, &peer, started).await
    }
}

async fn send(
    up: &mut HttpSession,
    request: Box<RequestHeader>,
    body: &Bytes,
) -> pingora::Result<()> {
    up.write_request_header(request).await?;
    if !body.is_empty() {
        up.write_request_body(body.clone(), true).await?;
    }
    up.finish_request_body().await
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

/// The request as the server gets it: the client's path under the server's base URL, the
/// client's headers minus credentials and hop-by-hop ones, the server's own key, exact length.
fn upstream_request(
    client: &RequestHeader,
    backend: &crate::upstream::Backend,
    body_len: usize,
) -> Box<RequestHeader> {
    let suffix = client
        .uri
        .path()
        .strip_prefix("/v1")
        .unwrap_or(client.uri.path());
    let query = client.uri.query();
    let mut path = String::with_capacity(
        backend.url.base_path.len() + suffix.len() + query.map_or(0, |q| q.len() + 1),
    );
    path.push_str(&backend.url.base_path);
    path.push_str(suffix);
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    let mut req = RequestHeader::build(
        client.method.clone(),
        path.as_bytes(),
        Some(client.headers.len() + 3),
    )
    .expect("a valid method and path");
    for (name, value) in client.headers.iter() {
        if !DROP_REQUEST_HEADERS.contains(&name.as_str()) && name != http::header::CONTENT_LENGTH {
            let _ = req.append_header(name.clone(), value.clone());
        }
    }
    let _ = req.insert_header(http::header::HOST, backend.host_header.clone());
    let mut len = itoa::Buffer::new();
    let _ = req.insert_header(http::header::CONTENT_LENGTH, len.format(body_len));
    if let Some(auth) = &backend.auth_header {
        let _ = req.insert_header(http::header::AUTHORIZATION, auth.clone());
    }
    Box::new(req)
}
