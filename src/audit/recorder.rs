//! Admin handlers hand records to a bounded channel (never waiting, never failing the change);
//! a background service writes each to the store as it comes. A record the store refuses
//! (Valkey down) is kept and retried every second; one that finds the channel or the backlog
//! full is lost, and written to the log at error level with its actor, action and target, so
//! that the change is still on record somewhere.

use super::AuditRecord;
use crate::gateway::Gateway;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Records waiting for the writer.
const CHANNEL: usize = 10_000;
/// Records kept for retry while the store refuses them.
const MAX_BACKLOG: usize = 100_000;
/// Records per store call.
const BATCH: usize = 1_000;

pub struct AuditRecorder {
    tx: mpsc::Sender<AuditRecord>,
    rx: Mutex<Option<mpsc::Receiver<AuditRecord>>>,
    /// Records handed off and neither written nor lost yet.
    pending: AtomicUsize,
    /// Records lost (a full channel or backlog), since the start.
    pub dropped: AtomicU64,
    /// Set at exit when the store did not take the last records: log them instead.
    give_up: std::sync::atomic::AtomicBool,
}

impl Default for AuditRecorder {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            pending: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            give_up: Default::default(),
        }
    }
}

/// Log a record that will never be stored (loudly: the audit log has a hole).
fn lost(r: &AuditRecord, why: &str) {
    tracing::error!(
        actor = %r.actor,
        action = %r.action,
        target = ?r.target,
        status = r.status,
        ts_ms = r.ts_ms,
        "audit record lost ({why}); this line is its only trace"
    );
}

impl AuditRecorder {
    /// Hand a record off (never blocks).
    pub fn record(&self, r: AuditRecord) {
        self.pending.fetch_add(1, Relaxed);
        if let Err(e) = self.tx.try_send(r) {
            self.pending.fetch_sub(1, Relaxed);
            self.dropped.fetch_add(1, Relaxed);
            let (mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r)) = e;
            lost(&r, "the audit queue is full: is the store reachable?");
        }
    }

    /// Records handed off and not yet written to the store.
    pub fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }

    /// At exit, with the store still not taking them: every record not written goes to the
    /// log at error level (its only trace), within a second; [`Self::pending`] reaches 0.
    pub fn give_up(&self) {
        self.give_up.store(true, Relaxed);
    }

    fn take_receiver(&self) -> Option<mpsc::Receiver<AuditRecord>> {
        self.rx.lock().ok().and_then(|mut r| r.take())
    }
}

/// Writes records to the store as they come.
pub struct AuditService {
    pub gw: Arc<Gateway>,
}

/// The writer's state between store calls.
struct Writer {
    backlog: VecDeque<AuditRecord>,
    /// Names this process's batches: `audit-<instance>-<n>`.
    instance: String,
    /// Batches written; the number of the next one.
    batches: u64,
    /// The size of the batch sent and not confirmed (0: none): it is sent again as it was,
    /// under the same name, so that a retry after a lost reply adds nothing twice.
    unconfirmed: usize,
}

impl AuditService {
    fn keep(&self, w: &mut Writer, r: AuditRecord) {
        // Past the bound the oldest records go, never those of the batch being sent.
        if w.backlog.len() >= MAX_BACKLOG && w.backlog.len() > w.unconfirmed {
            if let Some(old) = w.backlog.remove(w.unconfirmed) {
                let a = &self.gw.audit;
                a.pending.fetch_sub(1, Relaxed);
                a.dropped.fetch_add(1, Relaxed);
                lost(&old, "the store refused records for too long");
            }
        }
        w.backlog.push_back(r);
    }

    async fn flush(&self, w: &mut Writer) {
        while !w.backlog.is_empty() {
            let n = match w.unconfirmed {
                0 => w.backlog.len().min(BATCH),
                n => n,
            };
            w.unconfirmed = n;
            let id = format!("audit-{}-{}", w.instance, w.batches);
            let batch = &w.backlog.make_contiguous()[..n];
            match self.gw.store.audit_append(&id, batch).await {
                Ok(()) => {
                    w.backlog.drain(..n);
                    self.gw.audit.pending.fetch_sub(n, Relaxed);
                    w.unconfirmed = 0;
                    w.batches += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, pending = w.backlog.len(), "audit records not written yet; retried in a second");
                    return;
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for AuditService {
    // The process's stop waits for [`AuditRecorder::pending`] to reach 0, then exits: this
    // loop needs no stop of its own.
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut rx) = self.gw.audit.take_receiver() else {
            return;
        };
        let mut w = Writer {
            backlog: VecDeque::new(),
            instance: format!("{:016x}", rand::random::<u64>()),
            batches: 0,
            unconfirmed: 0,
        };
        loop {
            if self.gw.audit.give_up.load(Relaxed) {
                while let Ok(r) = rx.try_recv() {
                    w.backlog.push_back(r);
                }
                for r in w.backlog.drain(..) {
                    lost(&r, "the store did not take it before the process exited");
                    self.gw.audit.pending.fetch_sub(1, Relaxed);
                    self.gw.audit.dropped.fetch_add(1, Relaxed);
                }
                w.unconfirmed = 0;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let next = if w.backlog.is_empty() {
                rx.recv().await
            } else {
                // Retry in a second, or sooner with a new record.
                match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                    Ok(r) => r,
                    Err(_) => {
                        self.flush(&mut w).await;
                        continue;
                    }
                }
            };
            let Some(r) = next else { return };
            self.keep(&mut w, r);
            while let Ok(r) = rx.try_recv() {
                self.keep(&mut w, r);
            }
            self.flush(&mut w).await;
        }
    }
}
