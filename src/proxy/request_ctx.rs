//! What the gateway knows of a request besides its body, carried through its forwarding and
//! relay: who sent it, when, its prompt's blocks, and its usage record at the end.

use crate::identity::KeyEntry;
use crate::usage::UsageRecord;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Instant;

/// What the gateway knows of a request besides its body: who sent it and when.
pub(super) struct RequestCtx<'a> {
    pub key: Option<&'a KeyEntry>,
    /// The affinity identity.
    pub user: Option<&'a str>,
    /// The prompt's block hashes (empty unless the model routes by prefix).
    pub chain: &'a [u64],
    pub started: Instant,
    /// Unix ms when the request arrived.
    pub started_ms: u64,
    /// The blocks of prefill this request still has charged to its server (`prefix` pools):
    /// taken back at its first token.
    pub prefill: AtomicI64,
    /// The blocks queued on its server when it was sent, its own included (what its time to
    /// first token teaches the server's prefill pace).
    pub prefill_ahead: AtomicI64,
    /// It asked for a stream (whose first token takes its prefill back).
    pub stream: bool,
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
