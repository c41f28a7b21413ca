//! Relaying a server's response to the client as it arrives: event streams chunk by chunk with
//! TTFT, inter-token latency and usage measured in passing; client disconnects abort the
//! upstream request.

use super::app::ProxyApp;
use super::errors::ProxyError;
use super::exchange::Exchange;
use super::forward::{take_back, Attempt};
use super::h1::{pool, UpstreamConn, UpstreamError};
use super::request_ctx::RequestCtx;
use crate::health::Source;
use crate::routing::Member;
use crate::shutdown::Phase;
use crate::telemetry::sse::SseScanner;
use crate::telemetry::usage::{Usage, UsageTail};
use pingora::upstreams::peer::HttpPeer;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// Body bytes up to this size are copied behind the head (or chunk framing) to leave in one
/// write; larger ones are written from the server's buffer directly.
const COPY_BYTES: usize = 16 * 1024;

/// The event that ends a stream cut by the shutdown's deadline. It starts with a blank line: if
/// the stream was cut inside an event, that event ends there, and this one parses on its own.
const CUT_EVENT: &[u8] = b"\n\ndata: {\"error\":{\"message\":\"the gateway is shutting down: this stream was ended before its last token\",\"type\":\"server_error\",\"code\":\"gateway_shutting_down\"}}\n\n";

/// How long the end of a cut stream may take to write.
const CUT_SEND: std::time::Duration = std::time::Duration::from_millis(500);

/// How the body relay ended.
enum End {
    Complete,
    ClientGone,
    /// The drain's deadline passed while the stream ran: it ends with an error event.
    Cut,
    /// The server's response failed, for this reason.
    UpstreamFailed(UpstreamError),
}

/// How the body is framed towards the client.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Out {
    Length,
    Chunked,
    /// HTTP/1.0 client, unknown length: until the connection closes.
    Close,
    None,
}

impl ProxyApp {
    pub(super) async fn relay(
        &self,
        ex: &mut Exchange<'_>,
        mut up: UpstreamConn,
        member: &Member,
        peer: &Arc<HttpPeer>,
        ctx: &RequestCtx<'_>,
    ) -> Attempt {
        let started = ctx.started;
        let mut ttft = None;
        let backend = &member.backend;
        let policy = ex.settings.policy;
        let status = up.head.status;
        let sse = up.head.event_stream;
        if status >= 500 {
            backend.record_failure(policy, Source::Passive, "5xx response");
        } else {
            backend.record_success(policy, Source::Passive);
        }

        // The head, with the framing the client gets.
        let out = if matches!(status, 204 | 304) {
            Out::None
        } else if let Some(n) = up.head.body_length() {
            ex.start_head(status, up.head.reason());
            up.head.write_fields(&mut ex.conn.out);
            ex.field("content-length", itoa::Buffer::new().format(n).as_bytes());
            Out::Length
        } else if ex.head.http11 {
            Out::Chunked
        } else {
            ex.keepalive = false;
            Out::Close
        };
        if out != Out::Length {
            ex.start_head(status, up.head.reason());
            up.head.write_fields(&mut ex.conn.out);
            if out == Out::Chunked {
                ex.field("transfer-encoding", b"chunked");
            }
        }
        ex.end_head();
        let head_only = ex.head.is_head() || out == Out::None;

        let mut scanner = sse.then(SseScanner::default);
        // A stream (and only a stream: other bodies end on their own) watches for the drain's
        // deadline.
        let cuttable = sse && matches!(out, Out::Chunked | Out::Close) && !head_only;
        let mut cut_rx = cuttable.then(|| self.gw.drain.subscribe());
        // One wait for the whole stream (registered once, not for every token).
        let cut = self.gw.drain.reached(Phase::Cut, cut_rx.as_mut());
        tokio::pin!(cut);
        let mut tail = UsageTail::default();
        let read_timeout = ex.settings.read_timeout;
        let mut end = End::Complete;
        // Something reached the client (after that, a failure can only cut the response).
        let mut sent_any = false;
        loop {
            // A stream whose data is always ready never waits: the deadline is checked here too.
            if cuttable && self.gw.drain.phase() >= Phase::Cut {
                end = End::Cut;
                break;
            }
            // Body bytes already buffered go out with what precedes them; otherwise send what
            // is pending (the head, at first) and wait for more.
            let n = match up.step() {
                Ok(Some(n)) => Ok(n),
                Ok(None) => {
                    if !ex.conn.out.is_empty() {
                        if ex.conn.send(&[]).await.is_err() {
                            end = End::ClientGone;
                            break;
                        }
                        sent_any = true;
                    }
                    tokio::select! {
                        biased;
                        r = up.fill(read_timeout) => r,
                        _ = ex.conn.gone() => {
                            end = End::ClientGone;
                            break;
                        }
                        _ = &mut cut => {
                            end = End::Cut;
                            break;
                        }
                    }
                }
                Err(e) => Err(e),
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(server = %backend.id, error = %e, "upstream failed mid-response");
                    backend.record_failure(policy, Source::Passive, "failed mid-response");
                    end = End::UpstreamFailed(e);
                    break;
                }
            };
            if n == 0 {
                break;
            }
            let data = up.data();
            match &mut scanner {
                Some(s) => {
                    if s.feed(data, Instant::now()) {
                        // Prefilled: no longer in the server's queue; and how long the queue
                        // it joined took, for the answers that are not streamed.
                        take_back(&backend.queued_prefill, &ctx.prefill);
                        let t = started.elapsed();
                        backend
                            .prefill_pace
                            .learn(t, ctx.prefill_ahead.swap(0, Relaxed));
                        member.metrics.ttft.observe(t.as_secs_f64());
                        ttft = Some(t);
                    }
                }
                None => tail.feed(data),
            }
            if head_only {
                continue;
            }
            let conn = &mut *ex.conn;
            let sent = match out {
                Out::Chunked => {
                    let o = &mut conn.out;
                    let mut hex = [0u8; 16];
                    o.extend_from_slice(hex_len(data.len(), &mut hex));
                    o.extend_from_slice(b"\r\n");
                    o.extend_from_slice(data);
                    o.extend_from_slice(b"\r\n");
                    conn.send(&[]).await
                }
                _ if data.len() <= COPY_BYTES => {
                    conn.out.extend_from_slice(data);
                    conn.send(&[]).await
                }
                _ => conn.send(data).await,
            };
            if sent.is_err() {
                end = End::ClientGone;
                break;
            }
            sent_any = true;
        }
        if matches!(end, End::Cut) {
            // An event the OpenAI SDKs raise as an error (the answer is not complete), then
            // the end of the body: the client sees a whole response, not a cut connection.
            tracing::warn!(server = %backend.id, model = %member.model, "stream ended by the shutdown's deadline");
            let o = &mut ex.conn.out;
            if out == Out::Chunked {
                let mut hex = [0u8; 16];
                o.extend_from_slice(hex_len(CUT_EVENT.len(), &mut hex));
                o.extend_from_slice(b"\r\n");
                o.extend_from_slice(CUT_EVENT);
                o.extend_from_slice(b"\r\n0\r\n\r\n");
            } else {
                // An HTTP/1.0 client: the event, then the close ends the body.
                o.extend_from_slice(CUT_EVENT);
            }
            // Briefly: a client that does not read must not hold the usage record past the
            // process's exit.
            let sent = tokio::time::timeout(CUT_SEND, ex.conn.send(&[])).await;
            if !matches!(sent, Ok(Ok(()))) {
                end = End::ClientGone;
            }
            ex.keepalive = false;
        }
        if matches!(end, End::Complete) {
            if out == Out::Chunked && !head_only {
                ex.conn.out.extend_from_slice(b"0\r\n\r\n");
            }
            if !ex.conn.out.is_empty() && ex.conn.send(&[]).await.is_err() {
                end = End::ClientGone;
            }
        }
        if !matches!(end, End::Complete | End::Cut) {
            ex.keepalive = false;
            ex.conn.out.clear();
        }
        if let (End::UpstreamFailed(e), false) = (&end, sent_any) {
            // Nothing reached the client yet: it gets a 502 (or 504) instead of a cut
            // connection.
            let err = ProxyError::upstream(e, &member.model);
            self.give_up(ex, ctx, &member.model, Some(&backend.id), err)
                .await;
            up.shutdown().await;
            return Attempt::Done;
        }

        let m = &member.metrics;
        m.duration.observe(started.elapsed().as_secs_f64());
        match (&end, status) {
            (End::ClientGone, _) => self
                .gw
                .metrics
                .count_request(&member.model, &backend.id, 499),
            (_, 200) => m.ok.inc(),
            (_, s) => self.gw.metrics.count_request(&member.model, &backend.id, s),
        }
        let usage = match &scanner {
            Some(s) => {
                if let Some(itl) = s.inter_token_latency() {
                    m.itl.observe(itl);
                }
                Some(Usage {
                    prompt_tokens: s.usage.map_or(0, |u| u.prompt_tokens),
                    completion_tokens: s.completion_tokens(),
                })
            }
            None if status < 300 => tail.finish(),
            None => None,
        };
        if let Some(u) = usage {
            m.prompt_tokens.inc_by(u.prompt_tokens);
            m.completion_tokens.inc_by(u.completion_tokens);
        }
        let sent = if matches!(end, End::ClientGone) {
            499
        } else {
            status
        };
        ctx.record(
            &self.gw,
            &member.model,
            Some(&backend.id),
            sent,
            ttft,
            usage,
        );

        if matches!(end, End::Complete) && up.reusable() {
            let s = ex.settings;
            pool::put(peer, up, s.pool_size, s.pool_idle_timeout);
        } else {
            // Closing the upstream connection makes the server abort the request.
            up.shutdown().await;
        }
        Attempt::Done
    }
}

/// `n` in lowercase hexadecimal.
fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_lengths() {
        let mut b = [0u8; 16];
        assert_eq!(super::hex_len(0, &mut b), b"0");
        assert_eq!(super::hex_len(255, &mut b), b"ff");
        assert_eq!(super::hex_len(4096, &mut b), b"1000");
    }
}
