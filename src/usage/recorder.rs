//! The hot path hands records to a bounded channel (no lock, no store call); a background
//! service drains it once a second and appends the batch to the store. A batch the store
//! refuses (Valkey down) is kept and retried, so a fault loses nothing unless the backlog
//! outgrows its bound (then the loss is counted and logged). What is still unwritten at exit
//! goes to a spool file that a later process sends ([`super::spool`]).

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
/// How often the spool directory is looked at.
const LOOK_FOR_SPOOL: Duration = Duration::from_secs(5);

pub struct UsageRecorder {
    tx: mpsc::Sender<UsageRecord>,
    rx: Mutex<Option<mpsc::Receiver<UsageRecord>>>,
    /// Records lost to a full channel or backlog, since the last flush looked.
    pub dropped: AtomicU64,
    /// Records lost since the start (the metric).
    pub lost_total: AtomicU64,
    /// Records taken from the channel and not yet written (the flush's backlog).
    backlog: AtomicUsize,
    /// Names this process's batches (random per process): `<instance>-<n>`.
    instance: String,
    /// Batches written; the number of the next one.
    batches: AtomicU64,
    /// The size of the batch sent and not confirmed (0: none): it is sent again as it was.
    unconfirmed: AtomicUsize,
    /// Set by the drain when the store did not take the last records in time: spool them.
    spool_now: std::sync::atomic::AtomicBool,
    /// Wakes a store call under way when the spool is asked for.
    spool_asked: tokio::sync::Notify,
    /// Set once they are spooled (or could not be).
    spooled: std::sync::atomic::AtomicBool,
}

impl Default for UsageRecorder {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            lost_total: AtomicU64::new(0),
            backlog: AtomicUsize::new(0),
            instance: format!("{:016x}", rand::random::<u64>()),
            batches: AtomicU64::new(0),
            unconfirmed: AtomicUsize::new(0),
            spool_now: Default::default(),
            spool_asked: Default::default(),
            spooled: Default::default(),
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

    /// Spool what is not written yet (the process is about to exit): a store call under way
    /// is given up. [`Self::spooled`] says when it is done.
    pub fn spool(&self) {
        self.spool_now.store(true, Relaxed);
        self.spool_asked.notify_waiters();
    }

    /// Whether the spool asked for is written (or could not be).
    pub fn spooled(&self) -> bool {
        self.spooled.load(Relaxed)
    }

    /// Batch `n` of this process: `<instance>-<n>` (the store adds a batch id once).
    fn batch_id(&self, n: u64) -> String {
        format!("{}-{n}", self.instance)
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
    /// Move what the channel holds into the backlog (bounded: past the bound the oldest
    /// records go, never those of the batch being sent).
    fn take_queued(
        &self,
        rx: &mut mpsc::Receiver<UsageRecord>,
        backlog: &mut VecDeque<UsageRecord>,
    ) {
        let dropped = self.gw.usage.dropped.swap(0, Relaxed);
        self.gw.usage.lost_total.fetch_add(dropped, Relaxed);
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
    }

    /// Write the backlog and the channel to a spool file: the batch sent and not confirmed
    /// under its id (the store may have applied it), the rest in new batches.
    async fn spool(
        &self,
        rx: &mut mpsc::Receiver<UsageRecord>,
        backlog: &mut VecDeque<UsageRecord>,
        file: u32,
    ) {
        self.take_queued(rx, backlog);
        let u = &self.gw.usage;
        let records = backlog.make_contiguous();
        if records.is_empty() {
            return;
        }
        let mut batches: Vec<(String, Vec<UsageRecord>)> = Vec::new();
        let mut rest = &records[..];
        let first = match u.unconfirmed.load(Relaxed) {
            0 => rest.len().min(BATCH),
            n => n,
        };
        let mut n = u.batches.load(Relaxed);
        let mut take = first;
        while !rest.is_empty() {
            let (batch, more) = rest.split_at(take.min(rest.len()));
            batches.push((u.batch_id(n), batch.to_vec()));
            n += 1;
            rest = more;
            take = BATCH;
        }
        let (dir, name) = (
            super::spool::dir(&self.gw.config),
            format!("{}-{file}", u.instance),
        );
        let count = records.len();
        let written = tokio::task::spawn_blocking(move || {
            let refs: Vec<(String, &[UsageRecord])> =
                batches.iter().map(|(id, r)| (id.clone(), &r[..])).collect();
            super::spool::write(&dir, &name, &refs)
        })
        .await;
        match written
            .map_err(|e| e.to_string())
            .and_then(|w| w.map_err(|e| e.to_string()))
        {
            Ok(path) => {
                tracing::warn!(records = count, path = %path.display(), "usage records the store did not take are spooled: the next gateway sharing this spool directory writes them");
                backlog.clear();
                u.backlog.store(0, Relaxed);
                u.unconfirmed.store(0, Relaxed);
                u.batches.store(n, Relaxed);
            }
            Err(e) => {
                u.lost_total.fetch_add(count as u64, Relaxed);
                tracing::error!(records = count, error = %e, "usage records lost: neither the store nor the spool file took them")
            }
        }
    }

    /// `f`, unless the drain asks for the spool first (then `None`: a store call given up is
    /// safe, as the batch keeps its id).
    async fn unless_spooling<T>(&self, f: impl std::future::Future<Output = T>) -> Option<T> {
        // Registered before the flag is read: a spool asked for in between still wakes it.
        let asked = self.gw.usage.spool_asked.notified();
        if self.gw.usage.spool_now.load(Relaxed) {
            return None;
        }
        tokio::select! {
            out = f => Some(out),
            _ = asked => None,
        }
    }

    /// Send the batches of spool files this process holds, each under its own id; a file
    /// goes once all of its batches are stored.
    async fn send_spooled(&self, claimed: &mut Vec<super::spool::Claimed>) {
        while let Some(file) = claimed.first_mut() {
            while let Some((id, records)) = file.batches.first() {
                match self
                    .unless_spooling(self.gw.store.usage_append(id, records))
                    .await
                {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, path = %file.path().display(), "spooled usage not written yet; kept for the next flush");
                        return;
                    }
                    // Exiting: the file stays for the next process.
                    None => return,
                }
                file.batches.remove(0);
            }
            let file = claimed.remove(0);
            tracing::info!(path = %file.path().display(), "spooled usage records written");
            file.done();
        }
    }

    async fn flush(
        &self,
        rx: &mut mpsc::Receiver<UsageRecord>,
        backlog: &mut VecDeque<UsageRecord>,
    ) {
        self.take_queued(rx, backlog);
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
            let id = u.batch_id(u.batches.load(Relaxed));
            let Some(appended) = self
                .unless_spooling(self.gw.store.usage_append(&id, batch))
                .await
            else {
                // Exiting: the batch keeps its id in the spool (the store may have it).
                break;
            };
            match appended {
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
        let dir = super::spool::dir(&self.gw.config);
        if let Err(e) = super::spool::check(&dir) {
            tracing::error!(error = %e, "usage records the store has not taken at exit would be lost: fix the spool directory ([usage] spool_dir)");
        }
        let mut claimed = Vec::new();
        let mut last_look: Option<tokio::time::Instant> = None;
        let mut files = 0u32;
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
            if self.gw.usage.spool_now.load(Relaxed) {
                // Records of requests still open keep coming until the process exits: each
                // round's go to a file of their own.
                self.spool(&mut rx, &mut backlog, files).await;
                files += 1;
                self.gw.usage.spooled.store(true, Relaxed);
                continue;
            }
            // Spool files of processes gone (before this one started, or since: the old
            // process of an upgrade exits after this one starts).
            if !stopping && last_look.is_none_or(|t| t.elapsed() >= LOOK_FOR_SPOOL) {
                last_look = Some(tokio::time::Instant::now());
                let dir = dir.clone();
                if let Ok(found) =
                    tokio::task::spawn_blocking(move || super::spool::claim(&dir)).await
                {
                    claimed.extend(found);
                }
            }
            self.send_spooled(&mut claimed).await;
            self.flush(&mut rx, &mut backlog).await;
        }
    }
}
