//! Stopping without losing a request: the drain.
//!
//! On SIGTERM the gateway first *drains* for `[proxy] grace_period_seconds`: it keeps
//! accepting and serving (a load balancer may still send requests), answers `/health` with
//! 503 `draining` so the balancer takes it out, closes idle keep-alive connections and ends
//! every response with `Connection: close`. Then Pingora's shutdown starts: the listener
//! closes, and [`DrainService`] waits for the connections still open to finish, at most
//! `graceful_shutdown_timeout_seconds`. A stream still running then is ended cleanly (an
//! error event, then the end of the chunked body) and its usage recorded; the usage records
//! still queued are written; managed engines are stopped; and the process exits.
//!
//! SIGQUIT is a binary upgrade ([`upgrade`]): the listening sockets go to a new process, and
//! this one drains the same way without the grace period (its `/health` stays 200: the port
//! is served). SIGINT stops at once, during a drain too. SIGHUP reloads the configuration
//! ([`crate::reload`]).

mod signals;
pub mod upgrade;

pub use signals::Signals;

use crate::gateway::Gateway;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
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

/// Once Pingora's shutdown starts (after the drain's grace period, or after an upgrade's
/// hand-over), waits for open connections to finish, cuts streams at the deadline, writes the
/// queued usage records and ends the process.
pub struct DrainService {
    pub gw: Arc<Gateway>,
}

/// Pingora's own wait after its shutdown starts, beyond the drain's timeout, the engines' stop
/// and the usage flush: bounds a drain that could not finish (the cut, the spool file).
pub const HARD_STOP_MARGIN_SECS: u64 = 10;

/// After the cut, how long streams get to send their end.
const AFTER_CUT: Duration = Duration::from_secs(2);
/// How long writing the spool file may take (after `[usage] exit_flush_secs`).
const SPOOL_WRITE: Duration = Duration::from_secs(5);
/// How often the drain looks at what is left.
const POLL: Duration = Duration::from_millis(20);

#[async_trait]
impl BackgroundService for DrainService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Started with the other services: tell systemd this process serves (and, after an
        // upgrade, that it is now the service's main process).
        upgrade::notify_ready();
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let drain = &self.gw.drain;
        // The listener is closed (after the grace period, or at once for an upgrade or
        // SIGINT): idle connections close now.
        drain.enter(Phase::Closing);
        let timeout = Duration::from_secs(self.gw.config.proxy.graceful_shutdown_timeout_seconds);
        if !until_closed(drain, timeout).await {
            drain.enter(Phase::Cut);
            if !until_closed(drain, AFTER_CUT).await {
                tracing::warn!(
                    open = drain.open.load(Relaxed),
                    "connections still open after the drain; closed with the process"
                );
            }
        }
        // Managed engines stop once nothing is sent to them any more.
        drain.enter(Phase::Done);
        // The last usage and audit records get `[usage] exit_flush_secs` together.
        let (usage, audit) = (&self.gw.usage, &self.gw.audit);
        let pending = usage.pending();
        let flush = Duration::from_secs(self.gw.config.usage.exit_flush_secs);
        let written = wait_until(flush, || usage.pending() == 0 && audit.pending() == 0).await;
        if usage.pending() == 0 {
            tracing::info!(written = pending, "usage records written");
        } else {
            tracing::warn!(
                left = usage.pending(),
                "usage records not written before exit (is the store reachable?): spooling them"
            );
            usage.spool();
            if !wait_until(SPOOL_WRITE, || usage.spooled()).await {
                tracing::error!("usage records not spooled in time: lost");
            }
        }
        if !written && audit.pending() > 0 {
            tracing::error!(
                left = audit.pending(),
                "audit records not written before exit (is the store reachable?): each is logged below"
            );
            audit.give_up();
            wait_until(Duration::from_secs(2), || audit.pending() == 0).await;
        }
        let engines = Duration::from_secs(self.gw.config.runner.stop_grace_secs) + AFTER_CUT;
        if !wait_until(engines, || drain.engines_stopped.load(Relaxed)).await {
            tracing::warn!("managed engines not all stopped before exit");
        }
        std::process::exit(0);
    }
}

/// Waits until no client connection is open, at most `limit`; whether none is.
async fn until_closed(drain: &Drain, limit: Duration) -> bool {
    wait_until(limit, || drain.open.load(Relaxed) == 0).await
}

/// Looks at `done` every [`POLL`] for at most `limit`; whether it came true.
pub(super) async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    tokio::time::timeout(limit, async {
        while !done() {
            tokio::time::sleep(POLL).await;
        }
    })
    .await
    .is_ok()
}
