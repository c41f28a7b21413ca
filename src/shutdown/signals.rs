//! The signals that stop the gateway, as Pingora's run loop asks for them.

use super::Phase;
use crate::gateway::Gateway;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGTERM: drain for the grace period, then a graceful stop. SIGQUIT: hand the listening
/// sockets to a new process ([`super::upgrade`]), then drain. SIGINT: stop now. SIGHUP:
/// logged, the gateway goes on.
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
                    if let Some(signal) = self.upgrade(int).await {
                        return signal;
                    }
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
        stop_on_sigint();
        ShutdownSignal::GracefulTerminate
    }

    /// SIGQUIT: once a new process waits on the upgrade socket (at most
    /// [`super::upgrade::WAIT_FOR_NEW`]), Pingora's upgrade sends it the listening sockets
    /// and this process drains; without one, or with an upgrade directory others could
    /// write, the upgrade is refused and this process goes on serving (None).
    async fn upgrade(&self, int: &mut Signal) -> Option<ShutdownSignal> {
        let socket = super::upgrade::socket_path(&self.gw.config.proxy.upgrade_sock);
        if let Err(e) = super::upgrade::prepare(&socket) {
            tracing::error!(error = %e, "SIGQUIT: upgrade refused; still serving");
            return None;
        }
        tracing::info!(socket = %socket.display(), "SIGQUIT: waiting for the new process");
        let waiting = tokio::time::timeout(super::upgrade::WAIT_FOR_NEW, async {
            while !super::upgrade::new_process_waiting(&socket) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        tokio::select! {
            w = waiting => if w.is_err() {
                tracing::error!(
                    socket = %socket.display(),
                    "SIGQUIT: no new process waits on the upgrade socket (start it with \
                     `infergate upgrade --pid <this pid>`); still serving"
                );
                return None;
            },
            _ = int.recv() => {
                tracing::info!("SIGINT during the upgrade: stopping now");
                return Some(ShutdownSignal::FastShutdown);
            }
        }
        tracing::info!("SIGQUIT: handing the listening sockets over, then draining");
        self.gw.drain.hand_over();
        // Connections are told to close (and reconnect, to the new process) only once the
        // new process holds the sockets (it removes the upgrade socket then) and has started
        // its listeners: before, every reconnection would land on this process again.
        let gw = self.gw.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(super::upgrade::WAIT_FOR_NEW, async {
                while super::upgrade::new_process_waiting(&socket) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            tokio::time::sleep(super::upgrade::NEW_LISTENS).await;
            gw.drain.enter(Phase::Draining);
        });
        stop_on_sigint();
        Some(ShutdownSignal::GracefulUpgrade)
    }
}

/// From now on (the stop has begun), SIGINT ends the process at once.
fn stop_on_sigint() {
    tokio::spawn(async {
        if let Ok(mut int) = signal(SignalKind::interrupt()) {
            int.recv().await;
            tracing::warn!("SIGINT during the drain: exiting now");
            std::process::exit(1);
        }
    });
}
