//! One engine this instance runs, as the supervisor keeps it: its slot (port, key, the way to
//! stop it), how it is launched (a process or a container) and how it is asked to stop.

use super::command;
use super::docker;
use super::process::{self, EngineProcess};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The detail of a model an apply is restarting.
pub(super) const RESTARTING: &str = "restarting to apply its configuration";
/// How often a starting engine is probed.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Bytes of output kept per model, on top of the line bound.
pub(super) const LOG_BYTES: usize = 4 << 20;

/// One engine this instance runs.
pub(super) struct Engine {
    pub(super) port: u16,
    pub(super) key: String,
    pub(super) served: String,
    /// Taken by whoever asks it to stop (stop, apply, delete, shutdown, a lost claim).
    pub(super) stop: Option<oneshot::Sender<StopAsk>>,
    pub(super) task: Option<JoinHandle<()>>,
    /// This run of the engine (its processes are marked with it).
    pub(super) instance: String,
}

/// How an engine is to be run.
pub(super) enum Launch {
    Process(command::EngineCommand),
    Container {
        name: String,
        body: Box<bollard::models::ContainerCreateBody>,
    },
}

/// A running engine, whichever the runner.
pub(super) enum Running {
    Process(EngineProcess),
    Container(docker::EngineContainer),
}

impl Running {
    /// Wait for the engine to exit: how it ended (cancel-safe).
    pub(super) async fn wait(&mut self) -> String {
        match self {
            Running::Process(p) => p
                .wait()
                .await
                .map_or_else(|e| e.to_string(), process::describe),
            Running::Container(c) => c.wait().await,
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub(super) async fn stop(&mut self, grace: Duration) {
        match self {
            Running::Process(p) => {
                let _ = p.stop(grace).await;
            }
            Running::Container(c) => c.stop(grace).await,
        }
    }

    /// After the engine ended: nothing of it is left behind.
    pub(super) async fn cleanup(self) {
        match self {
            // Dropping it kills what is left of its process group.
            Running::Process(p) => drop(p),
            Running::Container(c) => c.remove().await,
        }
    }
}

/// What a stop asks of an engine's watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Halt,
    /// Stop, then start again with the saved configuration (apply).
    Restart,
    /// Stop without a word to the record: it is gone, or another node runs the model now.
    Disown,
}

/// A stop request, and the signal back once the watcher has recorded `stopping`.
pub(super) struct StopAsk {
    pub(super) how: Stop,
    pub(super) recorded: oneshot::Sender<()>,
}

/// How long a stop waits for the watcher to record `stopping`.
pub(super) const RECORDED_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for a container to be created and started (its image pulled first).
pub(super) const CONTAINER_START_LIMIT: Duration = Duration::from_secs(3600);
