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
/// reload the configuration file ([`crate::reload`]).
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
                    if let Some(signal) = self.upgrade(term, quit, int).await {
                        return signal;
                    }
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: stopping now");
                    return ShutdownSignal::FastShutdown;
                }
                _ = hup.recv() => {
                    let gw = self.gw.clone();
                    tokio::spawn(async move {
                        let (status, error) = match crate::reload::reload(&gw).await {
                            Ok(o) => {
                                tracing::info!(version = o.version, applied = ?o.applied, pending_restart = ?o.pending_restart, warnings = ?o.warnings, "SIGHUP: configuration reloaded");
                                (200, None)
                            }
                            Err(e) => {
                                let why = crate::reload::scrubbed(&e.to_string());
                                tracing::error!(error = %why, "SIGHUP: configuration not reloaded; the running one stays");
                                (422, Some(why))
                            }
                        };
                        // The audit log has it too, as the API's reload would be.
                        gw.audit.record(crate::audit::AuditRecord {
                            ts_ms: crate::telemetry::now_ms(),
                            actor: "signal:SIGHUP".into(),
                            action: "config.reload".into(),
                            target: None,
                            outcome: crate::audit::Outcome::of(status),
                            status,
                            error,
                            error_id: None,
                            method: "SIGHUP".into(),
                            path: String::new(),
                            address: None,
                        });
                    });
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
    /// [`super::upgrade::WAIT_FOR_NEW`]), this process sends it the listening sockets with
    /// Pingora's hand-over, serves on beside it for [`OVERLAP`], then stops as after SIGTERM
    /// without the grace period. Without a new process, when the sockets could not be sent,
    /// or when this process is not the one its configuration's upgrades are for, the upgrade
    /// is refused and it goes on serving (None). SIGTERM while it waits: a drain instead.
    async fn upgrade(
        &self,
        term: &mut Signal,
        quit: &mut Signal,
        int: &mut Signal,
    ) -> Option<ShutdownSignal> {
        use super::upgrade;
        let socket = upgrade::socket_path(&self.gw.config.proxy.upgrade_sock);
        if let Err(e) = upgrade::prepare(&socket) {
            tracing::error!(error = %e, "SIGQUIT: upgrade refused; still serving");
            return None;
        }
        if !upgrade::holds_lock() {
            tracing::error!(
                lock = %upgrade::Tenancy::new(&socket).path().display(),
                "SIGQUIT: upgrade refused: another gateway holds this configuration's upgrade lock \
                 (give each gateway its own [proxy] upgrade_sock); still serving"
            );
            return None;
        }
        tracing::info!(socket = %socket.display(), "SIGQUIT: waiting for the new process");
        let waiting = super::wait_until(upgrade::WAIT_FOR_NEW, || {
            upgrade::new_process_waiting(&socket)
        });
        tokio::select! {
            w = waiting => if !w {
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
            _ = term.recv() => {
                tracing::info!("SIGTERM during the upgrade: no upgrade; draining");
                return Some(self.drain(term, quit, int).await);
            }
        }
        tracing::info!("SIGQUIT: handing the listening sockets over");
        let to = socket.clone();
        match tokio::task::spawn_blocking(move || upgrade::send(&to)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "SIGQUIT: the listening sockets could not be sent; still serving");
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGQUIT: the hand-over failed; still serving");
                return None;
            }
        }
        self.gw.drain.hand_over();
        stop_on_sigint();
        // The sockets are sent (the new process may still sleep in Pingora's accept retry,
        // up to a second). Once it has taken them (it removes the upgrade socket then) and
        // its listeners have started, clients are told to reconnect (every response closes
        // its connection): before, each reconnection would land on this process again.
        super::wait_until(upgrade::WAIT_FOR_NEW, || {
            !upgrade::new_process_waiting(&socket)
        })
        .await;
        tokio::time::sleep(upgrade::NEW_LISTENS).await;
        self.gw.drain.enter(Phase::Draining);
        tracing::info!("sockets handed over; serving beside the new process, then draining");
        tokio::time::sleep(OVERLAP).await;
        // Pingora's own upgrade would send the sockets again: a graceful stop instead.
        Some(ShutdownSignal::GracefulTerminate)
    }
}

/// After an upgrade's hand-over, how long the old process keeps accepting beside the new one,
/// its responses closing their connections (Pingora's upgrade waits as long).
const OVERLAP: Duration = Duration::from_secs(5);

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
