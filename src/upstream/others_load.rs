//! A server's load as the other gateway instances last shared it (through Valkey, every 50 ms;
//! see `routing::load_share`): the requests they have in flight on it and the prompt blocks
//! they sent it that it has not prefilled yet. Zero without a shared store, or once no other
//! instance has shared for a while. The routing policies add it to this instance's own figures,
//! so that instances behind one load balancer balance on the whole fleet's load, not on the
//! share of it each one sent.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct OthersLoad {
    inflight: AtomicI64,
    queued_prefill: AtomicI64,
}

impl OthersLoad {
    /// Requests the other instances have in flight on the server.
    #[inline]
    pub fn inflight(&self) -> i64 {
        self.inflight.load(Relaxed)
    }

    /// Prompt blocks the other instances sent the server and it has not prefilled yet.
    #[inline]
    pub fn queued_prefill(&self) -> i64 {
        self.queued_prefill.load(Relaxed)
    }

    /// The sums of what the other instances last shared (negative figures read as 0).
    pub fn set(&self, inflight: i64, queued_prefill: i64) {
        self.inflight.store(inflight.max(0), Relaxed);
        self.queued_prefill.store(queued_prefill.max(0), Relaxed);
    }
}
