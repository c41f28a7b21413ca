//! Relaying a server's response to the client as it arrives: event streams chunk by chunk with
//! TTFT, inter-token latency and usage measured in passing; client disconnects abort the
//! upstream request.

use super::app::ProxyApp;
use crate::health::Source;
use crate::routing::Member;
use crate::telemetry::sse::SseScanner;
use crate::telemetry::usage::{Usage, UsageTail};
use pingora::http::ResponseHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::ServerSession;
use pingora::upstreams::peer::HttpPeer;
use std::time::Instant;

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// How the body relay ended.
#[derive(PartialEq, Eq)]
enum End {
    Complete,
    ClientGone,
    UpstreamFailed,
}

impl ProxyApp {
    pub(super) async fn relay(
        &self,
        session: &mut ServerSession,
        mut up: HttpSession,
        member: &Member,
        peer: &HttpPeer,
        ctx: &super::forward::RequestCtx<'_>,
    ) -> super::forward::Attempt {
        let started = ctx.started;
        let mut ttft = None;
        use super::forward::Attempt;
        let backend = &member.backend;
        let policy = self.gw.policy;
        let Some(upstream_header) = up.response_header() else {
            return Attempt::Done(false);
        };
        let header = downstream_header(upstream_header, session.is_http2());
        let status = header.status.as_u16();
        let sse = header
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if status >= 500 {
            backend.record_failure(policy, Source::Passive, "5xx response");
        } else {
            backend.record_success(policy, Source::Passive);
        }

        let mut scanner = sse.then(SseScanner::default);
        let mut tail = UsageTail::default();
        let mut end = if session.write_response_header(header).await.is_ok() {
            End::Complete
        } else {
            End::ClientGone
        };
        while end == End::Complete && !up.response_done() {
            let read = tokio::select! {
                biased;
                r = up.read_response_body() => r,
                _ = session.read_body_or_idle(true) => {
                    end = End::ClientGone;
                    break;
                }
            };
            match read {
                Ok(Some(chunk)) => {
                    match &mut scanner {
                        Some(s) => {
                            if s.feed(&chunk, Instant::now()) {
                                let t = started.elapsed();
                                member.metrics.ttft.observe(t.as_secs_f64());
                                ttft = Some(t);
                            }
                        }
                        None => tail.feed(&chunk),
                    }
                    if session.write_response_body(chunk, false).await.is_err() {
                        end = End::ClientGone;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(server = %backend.id, error = %e, "upstream failed mid-response");
                    backend.record_failure(policy, Source::Passive, "failed mid-response");
                    end = End::UpstreamFailed;
                }
            }
        }
        if end == End::Complete && session.finish_body().await.is_err() {
            end = End::ClientGone;
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
        let sent = if end == End::ClientGone { 499 } else { status };
        ctx.record(
            &self.gw,
            &member.model,
            Some(&backend.id),
            sent,
            ttft,
            usage,
        );

        if end == End::Complete {
            self.connector
                .release_http_session(up, peer, Some(self.settings.pool_idle_timeout))
                .await;
            Attempt::Done(true)
        } else {
            // Dropping the upstream connection closes it: the server aborts the request.
            up.shutdown().await;
            Attempt::Done(false)
        }
    }
}

/// The server's response header minus hop-by-hop fields, with framing the client can use.
fn downstream_header(upstream: &ResponseHeader, http2: bool) -> Box<ResponseHeader> {
    let mut h = Box::new(upstream.clone());
    for name in HOP_BY_HOP {
        h.remove_header(name);
    }
    if http2 {
        h.remove_header(&http::header::TRANSFER_ENCODING);
    } else if !h.headers.contains_key(http::header::CONTENT_LENGTH)
        && !h.headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        let _ = h.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
    h
}
