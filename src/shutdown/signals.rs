//! The signals that stop the gateway, as Pingora's run loop asks for them.

use super::Phase;
use crate::gateway::Gateway;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGTERM: drain for the grace period, then a graceful stop. SIGQUIT: the same (binary
/// upgrade is not offered yet). SIGINT: stop now. SIGHUP: logged, the gateway goes on.
pub struct Signals {
    pub gw: Arc<Gateway>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let kinds = [
            SignalKind::terminate(),
            SignalKind::quit(),
            SignalKind::interrupt(),
            SignalKind::hangup(),
        ];
        let mut streams = Vec::new();
        for kind in kinds {
            match signal(kind) {
                Ok(s) => streams.push(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch signals; stopping at once");
                    return ShutdownSignal::FastShutdown;
                }
            }
        }
        let [term, quit, int, hup] = &mut streams[..] else {
            unreachable!("four signal streams")
        };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: draining, still serving for the grace period");
                    return self.drain(term, quit, int).await;
                }
                _ = quit.recv() => {
                    // The listening sockets' hand-over to a new process (Pingora's upgrade)
                    // needs the new process to start in upgrade mode, which `serve` does not
                    // offer yet: a drain, as for SIGTERM, rather than a listener that closes
                    // under a load balancer that was not told.
                    tracing::warn!("SIGQUIT: binary upgrade is not supported yet; draining as for SIGTERM");
                    return self.drain(term, quit, int).await;
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: stopping now");
                    return ShutdownSignal::FastShutdown;
                }
                _ = hup.recv() => {
                    tracing::warn!("SIGHUP: configuration reload is not supported yet; the gateway goes on with the running configuration");
                }
            }
        }
    }
}

impl Signals {
    /// The grace period (still accepting and serving, `/health` at 503, every response closing
    /// its connection), then Pingora's graceful stop. SIGINT during it stops at once; so does
    /// SIGINT at any later point of the stop (a stuck drain can always be ended).
    async fn drain(
        &self,
        term: &mut Signal,
        quit: &mut Signal,
        int: &mut Signal,
    ) -> ShutdownSignal {
        let drain = &self.gw.drain;
        drain.enter(Phase::Draining);
        let grace = Duration::from_secs(self.gw.config.proxy.grace_period_seconds);
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = int.recv() => {
                tracing::info!("SIGINT during the drain: stopping now");
                return ShutdownSignal::FastShutdown;
            }
            // A second SIGTERM or SIGQUIT ends the grace period early.
            _ = term.recv() => tracing::info!("SIGTERM again: the grace period ends now"),
            _ = quit.recv() => tracing::info!("SIGQUIT: the grace period ends now"),
        }
        tokio::spawn(async {
            if let Ok(mut int) = signal(SignalKind::interrupt()) {
                int.recv().await;
                tracing::warn!("SIGINT during the drain: exiting now");
                std::process::exit(1);
            }
        });
        ShutdownSignal::GracefulTerminate
    }
}
