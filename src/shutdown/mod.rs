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

pub mod drain;
mod signals;
pub mod upgrade;

pub use drain::{Drain, Phase};
pub use signals::Signals;

use crate::gateway::Gateway;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

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
