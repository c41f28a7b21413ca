//! The drain's state, shared by the data plane (which closes idle connections and ends
//! responses with `Connection: close` while draining) and the services that stop the process.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::Relaxed};
use tokio::sync::watch;

/// Where the process is in its stop (phases only move forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    Serving = 0,
    /// The grace period: still serving, every response closes its connection.
    Draining = 1,
    /// The listener is closed: idle connections close, busy ones finish.
    Closing = 2,
    /// The drain's deadline has passed: streams still running end now.
    Cut = 3,
    /// No client connection is left: managed engines may stop.
    Done = 4,
}

/// The drain's state, shared by the data plane, the health endpoints and [`DrainService`].
pub struct Drain {
    /// The phase for hot-path checks (one load).
    phase: AtomicU8,
    /// The phase for waiters (idle connections, running streams).
    tx: watch::Sender<Phase>,
    /// Client connections admitted and open.
    pub open: AtomicUsize,
    /// Set once this instance's managed engines are stopped (after [`Phase::Done`]).
    pub engines_stopped: AtomicBool,
    /// Set when the listening sockets went to a new process (binary upgrade): the ports stay
    /// served, so this process's health does not say draining.
    handed_over: AtomicBool,
    /// Kept so that the channel always has a receiver (the last one leaving would wake every
    /// waiter's mutex otherwise).
    _rx: watch::Receiver<Phase>,
}

impl Default for Drain {
    fn default() -> Self {
        let (tx, rx) = watch::channel(Phase::Serving);
        Self {
            phase: AtomicU8::new(Phase::Serving as u8),
            tx,
            open: AtomicUsize::new(0),
            engines_stopped: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            _rx: rx,
        }
    }
}

impl Drain {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::Serving,
            1 => Phase::Draining,
            2 => Phase::Closing,
            3 => Phase::Cut,
            _ => Phase::Done,
        }
    }

    /// Whether the gateway is stopping (responses then close their connection).
    #[inline]
    pub fn draining(&self) -> bool {
        self.phase.load(Relaxed) != Phase::Serving as u8
    }

    /// Whether `/health` says draining: the gateway is stopping and its ports were not
    /// handed over to a new process.
    pub fn health_draining(&self) -> bool {
        self.draining() && !self.handed_over()
    }

    /// Whether the listening sockets went to a new process.
    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Relaxed)
    }

    /// The listening sockets go to a new process: the stop that follows (a drain without
    /// the grace period) leaves `/health` at 200.
    pub fn hand_over(&self) {
        self.handed_over.store(true, Relaxed);
    }

    /// Move on to `phase` (never back).
    pub fn enter(&self, phase: Phase) {
        if self.phase.fetch_max(phase as u8, Relaxed) < phase as u8 {
            tracing::info!(?phase, open = self.open.load(Relaxed), "shutdown");
            self.tx.send_replace(phase);
        }
    }

    /// A receiver that sees each change of phase.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.tx.subscribe()
    }

    /// Resolves once the phase is `phase` or later (`rx` from [`Self::subscribe`]); never
    /// without a receiver.
    pub async fn reached(&self, phase: Phase, rx: Option<&mut watch::Receiver<Phase>>) {
        let Some(rx) = rx else {
            return std::future::pending().await;
        };
        loop {
            if self.phase() >= phase {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}
