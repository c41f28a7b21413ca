//! The life of one engine, watched by a task of its own from spawn to exit: it records
//! `starting`, spawns the engine, probes it until `loading` then `running` (routed at once
//! under its served name with the engine's own key), and on exit, stop or timeout unroutes it
//! and records how it ended. It alone writes the state of its live engine, and keeps the
//! record true. After an apply, the restart loop starts the model again.

use super::docker;
use super::engine::{
    Launch, Running, Stop, StopAsk, CONTAINER_START_LIMIT, PROBE_EVERY, RESTARTING,
};
use super::logs::LogRing;
use super::probe::{self, Probe};
use super::process;
use super::record::{EngineType, ModelRecord, ModelState};
use super::supervisor::Lifecycle;
use crate::gateway::ManagedRoute;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

impl Lifecycle {
    /// Run one engine: record `starting`, spawn its process (on the lifecycle thread, where
    /// this task runs), then watch it until it exits or is stopped.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run(
        self: Arc<Self>,
        model: ModelRecord,
        port: u16,
        key: String,
        launch: Launch,
        logs: Arc<LogRing>,
        mut stop: oneshot::Receiver<StopAsk>,
        spawned: oneshot::Sender<()>,
    ) {
        let id = model.id.clone();
        self.set(&id, ModelState::Starting, None).await;
        if let Ok(ask) = stop.try_recv() {
            // Stopped before it was spawned.
            let _ = spawned.send(());
            self.finish(&id, ModelState::Stopped, None, ask.how).await;
            let _ = ask.recorded.send(());
            return;
        }
        let mut spawned = Some(spawned);
        // A process engine's working directory, removed when the engine ends.
        let mut workdir = None;
        let launched = match (launch, &self.docker) {
            (Launch::Process(cmd), _) => process::fresh_workdir(&id)
                .and_then(|dir| {
                    let p = process::spawn(&cmd, &logs, &dir, &self.runner.pass_env);
                    workdir = Some(dir);
                    p
                })
                .map(Running::Process)
                .map_err(|e| format!("cannot run {}: {e}", cmd.argv[0])),
            (Launch::Container { name, body }, Some(d)) => {
                // Creating a container may first pull a large image: the start is answered
                // now (`starting`), and a stop meanwhile is obeyed.
                if let Some(tx) = spawned.take() {
                    let _ = tx.send(());
                }
                let made = tokio::time::timeout(
                    CONTAINER_START_LIMIT,
                    docker::start(d, &name, *body, &logs),
                );
                tokio::select! {
                    made = made => match made {
                        Ok(made) => made.map(Running::Container),
                        Err(_) => {
                            docker::remove(d, &name).await;
                            Err(format!(
                                "the container was not created and started within {} min (its image pull?)",
                                CONTAINER_START_LIMIT.as_secs() / 60
                            ))
                        }
                    },
                    ask = &mut stop => {
                        docker::remove(d, &name).await;
                        let (how, recorded) = match ask {
                            Ok(a) => (a.how, Some(a.recorded)),
                            Err(_) => (Stop::Halt, None),
                        };
                        self.finish(&id, ModelState::Stopped, None, how).await;
                        if let Some(r) = recorded {
                            let _ = r.send(());
                        }
                        return;
                    }
                }
            }
            (Launch::Container { .. }, None) => Err("no docker client".to_string()),
        };
        let proc = match launched {
            Ok(p) => p,
            Err(detail) => {
                logs.push(&format!("infergate: {detail}"));
                remove_workdir(workdir.as_deref());
                self.finish(&id, ModelState::Failed, Some(detail), Stop::Halt)
                    .await;
                if let Some(tx) = spawned.take() {
                    let _ = tx.send(());
                }
                return;
            }
        };
        if let Some(tx) = spawned.take() {
            let _ = tx.send(());
        }
        let (end, detail, how) = self.watch(&model, port, &key, proc, &mut stop).await;
        if how != Stop::Disown {
            // (Handed over in an upgrade, the engine runs on in it.)
            remove_workdir(workdir.as_deref());
        }
        if let Some(d) = &detail {
            tracing::warn!(model = %id, detail = %d, "managed model failed");
            logs.push(&format!("infergate: {d}"));
        }
        self.finish(&id, end, detail, how).await;
    }

    /// After an engine is gone: record its end state and free its slot; after an apply, hand
    /// it to the restart loop (which starts it again unless a stop or a start came since).
    async fn finish(&self, id: &str, end: ModelState, detail: Option<String>, how: Stop) {
        // The state is written before the slot is freed: a start that follows cannot have its
        // `starting` overwritten by this end.
        match how {
            Stop::Disown => {}
            Stop::Restart => {
                self.set(id, ModelState::Stopped, Some(RESTARTING.into()))
                    .await
            }
            Stop::Halt => self.set(id, end, detail).await,
        }
        self.release(id);
        if how == Stop::Restart {
            let _ = self.restarts.send(id.to_string());
        }
    }

    /// Start again the models an apply restarted, as their old engines finish (a loop of its
    /// own, so that an engine's watcher never awaits a start itself).
    pub(super) async fn restart_loop(
        me: std::sync::Weak<Self>,
        mut ids: mpsc::UnboundedReceiver<String>,
    ) {
        while let Some(id) = ids.recv().await {
            let Some(me) = me.upgrade() else { return };
            me.restart_here(&id).await;
        }
    }

    /// Start again a model an apply stopped: only if its record still says so (a start since
    /// has run it already), and not if a stop came since.
    async fn restart_here(self: &Arc<Self>, id: &str) {
        let lock = self.op_lock(id);
        let _serial = lock.lock().await;
        let Ok(model) = self.models.get(id).await else {
            return;
        };
        let halted = self.halted.lock().is_ok_and(|mut h| h.remove(id));
        let pending = model.state == ModelState::Stopped
            && model.state_detail.as_deref() == Some(RESTARTING)
            && model.node.as_deref() == Some(self.node.as_str());
        if !pending {
            return;
        }
        if halted {
            return self.set(id, ModelState::Stopped, None).await;
        }
        if let Err(e) = self.start_locked(id).await {
            self.set(id, ModelState::Failed, Some(format!("restart failed: {e}")))
                .await;
        }
    }

    /// Watch a spawned engine until it exits or is stopped: the end state, why, and how it
    /// was asked to stop.
    async fn watch(
        &self,
        model: &ModelRecord,
        port: u16,
        key: &str,
        mut proc: Running,
        stop: &mut oneshot::Receiver<StopAsk>,
    ) -> (ModelState, Option<String>, Stop) {
        let id = &model.id;
        let served = &model.spec.served_model_name;
        let timeout_secs = model
            .spec
            .startup_timeout_sec
            .unwrap_or(match model.spec.engine_type {
                EngineType::Vllm => self.runner.vllm.startup_timeout_secs,
                EngineType::Llamacpp => self.runner.llamacpp.startup_timeout_secs,
            });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
        let grace = Duration::from_secs(self.runner.stop_grace_secs);
        let url = format!("http://127.0.0.1:{port}/v1");
        let mut state = ModelState::Starting;
        let mut detail: Option<String> = None;
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval_at(
            tokio::time::Instant::now() + super::beat::BEAT_EVERY,
            super::beat::BEAT_EVERY,
        );
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            // The probe is one branch among the others: an exit or a stop is never kept waiting
            // behind it.
            let probe = async {
                tick.tick().await;
                probe::probe(&self.client, port, key, served).await
            };
            tokio::select! {
                how = proc.wait() => {
                    let when = if state == ModelState::Running { "while running" } else { "before it was ready" };
                    break (ModelState::Failed, Some(format!("the engine {how} {when} (see its logs)")), Stop::Halt);
                }
                ask = &mut *stop => {
                    self.unroute(&url).await;
                    let how = match ask {
                        Ok(StopAsk { how, recorded }) => {
                            if how != Stop::Disown {
                                let why = (how == Stop::Restart).then(|| RESTARTING.to_string());
                                self.set(id, ModelState::Stopping, why).await;
                            }
                            let _ = recorded.send(());
                            how
                        }
                        Err(_) => Stop::Halt,
                    };
                    let _ = proc.stop(grace).await;
                    break (ModelState::Stopped, None, how);
                }
                _ = check.tick() => {
                    // This watcher alone writes the state of its engine, so it also keeps the
                    // record true: put right (another instance marked the node lost while it
                    // was cut off), or let go (the record is gone, or another node runs the
                    // model now: two starts raced on two instances).
                    match self.models.get(id).await {
                        Err(super::service::ModelError::NotFound) => {
                            tracing::warn!(model = %id, "its record is gone: stopping its engine");
                            self.unroute(&url).await;
                            let _ = proc.stop(grace).await;
                            break (ModelState::Stopped, None, Stop::Disown);
                        }
                        Ok(m) if m.node.as_deref() != Some(self.node.as_str()) => {
                            tracing::warn!(model = %id, node = ?m.node, "another node runs the model: stopping this node's engine");
                            self.unroute(&url).await;
                            let _ = proc.stop(grace).await;
                            break (ModelState::Stopped, None, Stop::Disown);
                        }
                        Ok(m) if (m.state, &m.state_detail) != (state, &detail) => {
                            tracing::info!(model = %id, recorded = m.state.as_str(), state = state.as_str(), "putting the model's record right");
                            self.set(id, state, detail.clone()).await;
                        }
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until(deadline), if state != ModelState::Running => {
                    self.unroute(&url).await;
                    let _ = proc.stop(grace).await;
                    break (ModelState::Failed, Some(format!(
                        "not ready within {timeout_secs} s (startup_timeout_sec); it was {}",
                        state.as_str()
                    )), Stop::Halt);
                }
                found = probe, if state != ModelState::Running => match found {
                    Probe::Ready => {
                        state = ModelState::Running;
                        detail = None;
                        self.route(served, &url, key).await;
                        self.set(id, ModelState::Running, None).await;
                        tracing::info!(model = %id, served = %served, port, "managed model is running and routed");
                    }
                    Probe::Loading(why) => {
                        state = ModelState::Loading;
                        detail = Some(why);
                        self.set(id, ModelState::Loading, detail.clone()).await;
                    }
                    Probe::Down => {}
                },
            }
        };
        self.unroute(&url).await;
        // Whatever is left of it goes too (its process group; its container).
        proc.cleanup().await;
        outcome
    }

    /// Route `served` to the engine at `url` on this instance.
    async fn route(&self, served: &str, url: &str, key: &str) {
        if let Ok(mut managed) = self.gw.managed.lock() {
            managed.retain(|r| r.url != url);
            managed.push(ManagedRoute {
                model: served.to_string(),
                url: url.to_string(),
                key: key.to_string(),
            });
        }
        self.rebuild().await;
    }

    async fn unroute(&self, url: &str) {
        let removed = self.gw.managed.lock().is_ok_and(|mut managed| {
            let before = managed.len();
            managed.retain(|r| r.url != url);
            managed.len() != before
        });
        if removed {
            self.rebuild().await;
        }
    }

    /// Rebuild the routing table now, from the registry as last applied (no store round trip:
    /// an engine that stops is unrouted at once even with the store down).
    async fn rebuild(&self) {
        let routes = self.gw.last_registry();
        if let Err(e) = crate::routing::registry_sync::apply(&self.gw, routes).await {
            tracing::warn!(error = %e, "routing table rebuild failed");
        }
    }
}

/// Remove an ended engine's working directory (what it wrote there goes with it).
fn remove_workdir(dir: Option<&std::path::Path>) {
    let Some(dir) = dir else { return };
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "an ended engine's working directory was not removed");
        }
    }
}
