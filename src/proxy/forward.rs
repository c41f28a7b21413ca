//! Sending a request to a server of the model's pool: selection, connect-failure retries on
//! another server, the stale-pooled-connection retry, and upstream timeouts.

use super::app::ProxyApp;
use super::errors::ProxyError;
use super::exchange::Exchange;
use super::h1::request::RequestHead;
use super::h1::{pool, UpstreamConn, UpstreamError};
use super::request_ctx::RequestCtx;
use crate::health::Source;
use crate::routing::prefix::NO_SLOT;
use crate::routing::{choose, Member, Pool};
use crate::upstream::prefill_pace::PrefillPace;
use crate::upstream::Backend;
use bytes::Bytes;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;

/// Attempts at most (first try + `max_retries`, which the config bounds).
pub const MAX_ATTEMPTS: usize = 8;

/// How one attempt on one server ended.
pub(super) enum Attempt {
    /// A response was relayed (or the client left).
    Done,
    /// No connection could be made: nothing was sent, so another server may be tried.
    ConnectFailed,
    /// Failed after the request was sent: answered with this error, no retry.
    Failed(ProxyError),
}

/// Outcome of sending the request and waiting for the response head.
enum HeaderWait {
    Ready,
    ClientGone,
    Failed(UpstreamError),
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

/// Charges a request's prefill to its server's queue ([`Backend::queued_prefill`]) until its
/// first token takes it back ([`RequestCtx::prefill`], in the relay), or, for an answer that is
/// not streamed, its likely prefill time has passed ([`release_when_prefilled`]), or the
/// attempt ends, however it ends.
///
/// [`Backend::queued_prefill`]: crate::upstream::Backend::queued_prefill
struct QueuedPrefill<'a>(&'a AtomicI64, &'a AtomicI64);

impl<'a> QueuedPrefill<'a> {
    /// Charge `blocks`; the blocks then queued on the server, these included and the `others`
    /// the other instances queued there, go to `ahead` (0 when nothing is charged: a retry's
    /// server learns nothing from an earlier attempt's).
    fn enter(
        server: &'a AtomicI64,
        left: &'a AtomicI64,
        ahead: &AtomicI64,
        blocks: i64,
        others: i64,
    ) -> Self {
        let mut queued = 0;
        if blocks != 0 {
            queued = server.fetch_add(blocks, Relaxed).max(0) + blocks + others;
            left.store(blocks, Relaxed);
        }
        ahead.store(queued, Relaxed);
        Self(server, left)
    }
}

impl Drop for QueuedPrefill<'_> {
    fn drop(&mut self) {
        take_back(self.0, self.1);
    }
}

/// Take a request's prefill (`left`) off its server's queue, once.
pub(super) fn take_back(server: &AtomicI64, left: &AtomicI64) {
    let blocks = left.swap(0, Relaxed);
    if blocks != 0 {
        server.fetch_sub(blocks, Relaxed);
    }
}

/// Run `attempt` (of a request that asked for a whole answer, not a stream); if it is still
/// running when the server has likely prefilled its prompt (the server's learnt pace times the
/// blocks that were queued ahead of it), take its prefill off the server's queue then: a whole
/// answer comes only after its last token, long after the server moved on to other prompts.
/// A server that learnt no pace (it answered no stream yet) takes the mean of those its pool's
/// servers learnt; when none did, the charge stays until the attempt ends.
async fn release_when_prefilled<F: std::future::Future>(
    attempt: F,
    pool: &Pool,
    backend: &Backend,
    ctx: &RequestCtx<'_>,
) -> F::Output {
    let ahead = ctx.prefill_ahead.load(Relaxed);
    let after = backend.prefill_pace.estimate(ahead).or_else(|| {
        PrefillPace::mean(pool.members.iter().map(|m| &m.backend.prefill_pace)).estimate(ahead)
    });
    let Some(after) = after else {
        return attempt.await;
    };
    let mut attempt = std::pin::pin!(attempt);
    tokio::select! {
        done = &mut attempt => return done,
        _ = tokio::time::sleep(after) => {}
    }
    take_back(&backend.queued_prefill, &ctx.prefill);
    attempt.await
}

/// Request headers never forwarded: hop-by-hop ones, and the client's credentials (a server
/// sees only its own configured key).
const DROP_REQUEST_HEADERS: [&str; 14] = [
    "content-length",
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
        ex: &mut Exchange<'_>,
        pool: &Pool,
        body: &Bytes,
        ctx: &RequestCtx<'_>,
    ) {
        let user = ctx.user;
        let gw = &self.gw;
        let mut tried = [0usize; MAX_ATTEMPTS];
        let mut attempts = 0usize;
        let now = ctx.started_ms;
        loop {
            let choice = choose(pool, user, ctx.chain, &*gw.store, now, &tried[..attempts]).await;
            let Some((index, member)) = choice.member else {
                let err = if attempts == 0 {
                    ProxyError::NoHealthyServer(pool.model.to_string())
                } else {
                    ProxyError::Unreachable(pool.model.to_string())
                };
                return self.give_up(ex, ctx, &pool.model, None, err).await;
            };
            let backend = &member.backend;
            // The prompt's blocks this server is not known to hold: prefill ahead of it.
            let prefill = match (&pool.prefix, choice.matched_blocks) {
                (Some(_), Some(held)) => ctx.chain.len().saturating_sub(held) as i64,
                _ => 0,
            };
            if attempts == 0 {
                if let Some(outcome) = choice.affinity {
                    gw.store.affinity_record(backend.provider, outcome);
                    gw.metrics.affinity(backend.provider.as_str(), outcome);
                }
                if let (Some(blocks), Some(h)) = (choice.matched_blocks, &pool.match_blocks) {
                    h.observe(blocks as f64);
                }
            }
            if let Some(ix) = &pool.prefix {
                // The server now has the prompt (it prefills it): later requests that share
                // its prefix find it there.
                if member.slot != NO_SLOT && !ctx.chain.is_empty() {
                    let added = ix.record(ctx.chain, usize::from(member.slot), now);
                    if let (true, Some(share)) = (added > 0, &gw.routing_share) {
                        // New to this server here: news to the other instances too.
                        share.prefixes.offer(&pool.model, &backend.id, ctx.chain);
                    }
                }
            }
            backend.last_use_ms.store(now, Relaxed);
            member.requests.fetch_add(1, Relaxed);
            let inflight = InFlight::enter(&backend.inflight, &member.inflight);
            let queued = QueuedPrefill::enter(
                &backend.queued_prefill,
                &ctx.prefill,
                &ctx.prefill_ahead,
                prefill,
                backend.others.queued_prefill(),
            );
            let attempt = self.attempt(ex, member, body, ctx);
            // (A stream's first token takes its prefill back: no timer for it.)
            let result = if prefill > 0 && !ctx.stream {
                release_when_prefilled(attempt, pool, backend, ctx).await
            } else {
                attempt.await
            };
            drop(queued);
            drop(inflight);
            match result {
                Attempt::Done => return,
                Attempt::Failed(err) => {
                    return self
                        .give_up(ex, ctx, &pool.model, Some(&backend.id), err)
                        .await;
                }
                Attempt::ConnectFailed => {
                    backend.record_failure(ex.settings.policy, Source::Passive, "connect failed");
                    gw.metrics.retry(&backend.id);
                    tried[attempts] = index;
                    attempts += 1;
                    if attempts > ex.settings.max_retries || attempts >= MAX_ATTEMPTS {
                        let err = ProxyError::Unreachable(pool.model.to_string());
                        return self
                            .give_up(ex, ctx, &pool.model, Some(&backend.id), err)
                            .await;
                    }
                }
            }
        }
    }

    /// Answer a request that reached no server's answer with the gateway's own error, and
    /// record it (usage and metrics).
    pub(super) async fn give_up(
        &self,
        ex: &mut Exchange<'_>,
        ctx: &RequestCtx<'_>,
        model: &Arc<str>,
        server: Option<&Arc<str>>,
        err: ProxyError,
    ) {
        ctx.record(&self.gw, model, server, err.status(), None, None);
        self.fail(ex, err, model, server.map_or("", |s| s)).await
    }

    async fn attempt(
        &self,
        ex: &mut Exchange<'_>,
        member: &Member,
        body: &Bytes,
        ctx: &RequestCtx<'_>,
    ) -> Attempt {
        // The request is assembled in the connection's scratch buffer, kept between requests
        // unless a large body grew it.
        let mut request = std::mem::take(&mut ex.conn.scratch);
        request.clear();
        let result = self.attempt_with(ex, member, body, ctx, &mut request).await;
        if request.capacity() <= SCRATCH_KEEP_BYTES {
            ex.conn.scratch = request;
        }
        result
    }

    async fn attempt_with(
        &self,
        ex: &mut Exchange<'_>,
        member: &Member,
        body: &Bytes,
        ctx: &RequestCtx<'_>,
        request: &mut Vec<u8>,
    ) -> Attempt {
        let backend = &member.backend;
        let peer = backend.peer.load_full();
        let coalesce = body.len() <= COALESCE_BODY_BYTES;
        write_head(request, ex.head, backend, body.len());
        let rest: &[u8] = if coalesce {
            request.extend_from_slice(body);
            &[]
        } else {
            body
        };
        // A pooled connection the server closed while idle fails on first use; that one failure is
        // retried once on a new connection, as the server never saw the request.
        let mut may_retry_stale = true;
        let upstream = loop {
            let pooled = if may_retry_stale {
                pool::take(&peer)
            } else {
                None
            };
            let mut up = match pooled {
                Some(up) => up,
                // Pingora's connect is 8 KiB of future state: on the heap (only when a new
                // server connection is made), not in every client connection's task.
                None => match Box::pin(self.connector.new_stream(&*peer)).await {
                    Ok(io) => UpstreamConn::new(io),
                    Err(e) => {
                        tracing::debug!(server = %backend.id, error = %e, "connect failed");
                        return Attempt::ConnectFailed;
                    }
                },
            };
            let wait = {
                let s = ex.settings;
                let exchange = async {
                    up.send(request, rest, s.write_timeout).await?;
                    up.read_head(s.read_timeout).await
                };
                tokio::select! {
                    biased;
                    r = exchange => match r {
                        Ok(()) => HeaderWait::Ready,
                        Err(e) => HeaderWait::Failed(e),
                    },
                    _ = ex.conn.gone() => HeaderWait::ClientGone,
                }
            };
            match wait {
                HeaderWait::Ready => break up,
                HeaderWait::ClientGone => {
                    self.gw
                        .metrics
                        .count_request(&member.model, &backend.id, 499);
                    ctx.record(&self.gw, &member.model, Some(&backend.id), 499, None, None);
                    ex.keepalive = false;
                    return Attempt::Done;
                }
                HeaderWait::Failed(e) if may_retry_stale && up.failed_unseen(&e) => {
                    tracing::debug!(server = %backend.id, error = %e, "pooled connection was stale; retrying on a new one");
                    may_retry_stale = false;
                }
                HeaderWait::Failed(e) => {
                    backend.record_failure(
                        ex.settings.policy,
                        Source::Passive,
                        if e.is_timeout() {
                            "timeout"
                        } else {
                            "upstream error"
                        },
                    );
                    tracing::warn!(server = %backend.id, error = %e, "upstream request failed");
                    return Attempt::Failed(ProxyError::upstream(&e, &member.model));
                }
            }
        };
        self.relay(ex, upstream, member, &peer, ctx).await
    }
}

/// The request scratch buffer is kept between requests up to this capacity.
const SCRATCH_KEEP_BYTES: usize = COALESCE_BODY_BYTES + 4096;

/// Bodies up to this size are sent in the same write as the request head.
const COALESCE_BODY_BYTES: usize = 64 * 1024;

/// The request head as the server gets it: the client's path under the server's base URL, the
/// client's headers minus credentials and hop-by-hop ones, the server's own key, exact length.
fn write_head(
    out: &mut Vec<u8>,
    client: &RequestHead,
    backend: &crate::upstream::Backend,
    body_len: usize,
) {
    let path = client.path();
    out.extend_from_slice(client.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(backend.url.base_path.as_bytes());
    out.extend_from_slice(path.strip_prefix("/v1").unwrap_or(path).as_bytes());
    if let Some(q) = client.query() {
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
    for (name, value) in client.headers() {
        if DROP_REQUEST_HEADERS
            .iter()
            .any(|d| name.eq_ignore_ascii_case(d.as_bytes()))
            || client.connection_lists(name)
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}
