//! The signals that stop the gateway, as Pingora's run loop asks for them.

use super::{Drain, Phase};
use crate::gateway::Gateway;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// SIGTERM: drain for the grace period, then a graceful stop. SIGQUIT: hand the listeners to
/// a new process, then a graceful stop. SIGINT: stop now. SIGHUP: logged, the gateway goes on.
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
                    let grace = Duration::from_secs(self.gw.config.proxy.grace_period_seconds);
                    tracing::info!(?grace, "SIGTERM: draining, still serving for the grace period");
                    drain_for(&self.gw.drain, grace).await;
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = quit.recv() => {
                    tracing::info!("SIGQUIT: handing the listening sockets to the new process");
                    return ShutdownSignal::GracefulUpgrade;
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

/// The grace period: still accepting and serving, `/health` answering 503, connections closed
/// after their response.
async fn drain_for(drain: &Drain, grace: Duration) {
    drain.enter(Phase::Draining);
    tokio::time::sleep(grace).await;
}
