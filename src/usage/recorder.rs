//! The hot path hands records to a bounded channel (no lock, no store call); a background
//! service drains it once a second and appends the batch to the store. A batch the store
//! refuses (Valkey down) is kept and retried, so a fault loses nothing unless the backlog
//! outgrows its bound (then the loss is counted and logged).

use super::UsageRecord;
use crate::gateway::Gateway;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Records waiting for the next flush.
const CHANNEL: usize = 262_144;
/// Records kept for retry while the store refuses them.
const MAX_BACKLOG: usize = 1_000_000;
/// Records per store call.
const BATCH: usize = 5_000;

pub struct UsageRecorder {
    tx: mpsc::Sender<UsageRecord>,
    rx: Mutex<Option<mpsc::Receiver<UsageRecord>>>,
    /// Records lost to a full channel or backlog.
    pub dropped: AtomicU64,
    /// Records taken from the channel and not yet written (the flush's backlog).
    backlog: AtomicUsize,
    /// Names this process's batches (random per process): `<instance>-<n>`.
    instance: String,
    /// Batches written; the number of the next one.
    batches: AtomicU64,
    /// The size of the batch sent and not confirmed (0: none): it is sent again as it was.
    unconfirmed: AtomicUsize,
}

impl Default for UsageRecorder {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            backlog: AtomicUsize::new(0),
            instance: format!("{:016x}", rand::random::<u64>()),
            batches: AtomicU64::new(0),
            unconfirmed: AtomicUsize::new(0),
        }
    }
}

impl UsageRecorder {
    /// Hand a record off (never blocks).
    #[inline]
    pub fn record(&self, r: UsageRecord) {
        if self.tx.try_send(r).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Records handed off and not yet written to the store.
    pub fn pending(&self) -> usize {
        let queued = self.tx.max_capacity() - self.tx.capacity();
        queued + self.backlog.load(Relaxed)
    }

    fn take_receiver(&self) -> Option<mpsc::Receiver<UsageRecord>> {
        self.rx.lock().ok().and_then(|mut r| r.take())
    }
}

/// The once-a-second flush.
pub struct UsageService {
    pub gw: Arc<Gateway>,
}

impl UsageService {
    async fn flush(
        &self,
        rx: &mut mpsc::Receiver<UsageRecord>,
        backlog: &mut VecDeque<UsageRecord>,
    ) {
        let dropped = self.gw.usage.dropped.swap(0, Relaxed);
        if dropped > 0 {
            tracing::error!(
                dropped,
                "usage records lost: the recorder could not keep up"
            );
        }
        // A record is counted in the backlog before it leaves the channel (twice for a moment,
        // never in neither), so the drain never sees nothing pending while one is in between.
        let counted = &self.gw.usage.backlog;
        loop {
            counted.fetch_add(1, Relaxed);
            let Ok(r) = rx.try_recv() else {
                counted.fetch_sub(1, Relaxed);
                break;
            };
            // Past the bound the oldest records go, never those of the batch being sent.
            let sending = self.gw.usage.unconfirmed.load(Relaxed);
            if backlog.len() >= MAX_BACKLOG && backlog.len() > sending {
                backlog.remove(sending);
                self.gw.usage.dropped.fetch_add(1, Relaxed);
                counted.fetch_sub(1, Relaxed);
            }
            backlog.push_back(r);
        }
        while !backlog.is_empty() {
            // A batch keeps its id and its records until the store has them: a retry after
            // a reply that was lost sends the same batch, which the store adds only once.
            let u = &self.gw.usage;
            let n = match u.unconfirmed.load(Relaxed) {
                0 => backlog.len().min(BATCH),
                n => n,
            };
            u.unconfirmed.store(n, Relaxed);
            let batch = &backlog.make_contiguous()[..n];
            let id = format!("{}-{}", u.instance, u.batches.load(Relaxed));
            match self.gw.store.usage_append(&id, batch).await {
                Ok(()) => {
                    backlog.drain(..n);
                    u.unconfirmed.store(0, Relaxed);
                    u.batches.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, pending = backlog.len(), "usage not written yet; kept for the next flush");
                    break;
                }
            }
        }
        self.gw.usage.backlog.store(backlog.len(), Relaxed);
    }
}

#[async_trait]
impl BackgroundService for UsageService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut rx) = self.gw.usage.take_receiver() else {
            return;
        };
        let mut backlog = VecDeque::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut stopping = false;
        loop {
            if stopping {
                // Requests still draining keep recording until the process exits: flush often.
                tokio::time::sleep(Duration::from_millis(200)).await;
            } else {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => stopping = true,
                }
            }
            self.flush(&mut rx, &mut backlog).await;
        }
    }
}
