//! What nodes do for each other: every node carries out the lifecycle calls other instances
//! send it (`remote`), keeps the records of its models true to what runs, and watches the
//! others: each node sends a heartbeat every [`BEAT_EVERY`]; a model whose node has sent
//! none for `[runner] node_lost_secs` is marked failed ("node lost"); a record of this node that
//! says its engine runs while none does is marked failed; and a node that comes back (its
//! engines still running) puts its records right again.

use super::beat::{last_seen, Beat, BEAT_EVERY};
use super::record::{ModelRecord, ModelState};
use super::remote::{self, Op};
use super::supervisor::Lifecycle;
use crate::telemetry::now_ms;
use std::sync::Arc;
use std::time::Duration;

/// How a lost node's models are marked (and recognised when it comes back).
const NODE_LOST: &str = "node lost";

impl Lifecycle {
    /// Say this node is alive.
    pub(super) async fn beat(&self, started_ms: u64) {
        let beat = Beat {
            at_ms: now_ms(),
            started_ms,
            runner: self.runner.kind.as_str().into(),
            engines: self.engines.lock().map(|e| e.len()).unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let body = serde_json::to_vec(&beat).unwrap_or_default();
        if let Err(e) = self.gw.store.node_beat(&self.node, &body).await {
            tracing::debug!(error = %e, "heartbeat not recorded");
        }
    }

    /// Check every record against what runs. `restarted`: this instance has just started, so
    /// none of its engines can be running. `false` when the store could not be read.
    pub async fn reconcile(&self, restarted: bool) -> bool {
        if let Err(e) = self.models.base_dir.load(self.gw.store.as_ref()).await {
            tracing::debug!(error = %e, "models directory setting not read");
        }
        let (Ok(models), Ok(beats)) = (
            self.models.list(&Default::default()).await,
            self.gw.store.node_beats().await,
        ) else {
            return false;
        };
        self.forget(
            &models
                .iter()
                .map(|m| (m.id.clone(), m.node.clone()))
                .collect(),
        );
        self.remove_orphans().await;
        self.kill_leftovers().await;
        let lost_after = Duration::from_secs(self.runner.node_lost_secs);
        for m in models {
            match m.node.as_deref() {
                Some(n) if n == self.node => self.check_own(&m, restarted).await,
                Some(n) if m.state.is_active() => {
                    let seen = last_seen(&beats, n);
                    let quiet = Duration::from_millis(now_ms().saturating_sub(m.updated_ms));
                    if seen.is_none_or(|ago| ago >= lost_after) && quiet >= lost_after {
                        self.mark_lost(&m, n, seen).await;
                    }
                }
                _ => {}
            }
        }
        true
    }

    /// A record of this node that says an engine runs while none does here is marked failed.
    /// (A record of an engine that does run is kept true by the engine's own watcher.)
    async fn check_own(&self, listed: &ModelRecord, restarted: bool) {
        let id = &listed.id;
        let running_here = || self.engines.lock().is_ok_and(|e| e.contains_key(id));
        if running_here() || !listed.state.is_active() {
            return;
        }
        // Under the model's lock, so that no start, stop or apply runs between the look at
        // the engines and the write (busy: next time); and read again: an engine that just
        // ended recorded its end before it left the table.
        let lock = self.op_lock(id);
        let Ok(_serial) = lock.try_lock() else {
            return;
        };
        if running_here() {
            return;
        }
        let Ok(now) = self.models.get(id).await else {
            return;
        };
        if now.state.is_active() && now.node.as_deref() == Some(self.node.as_str()) {
            let why = if restarted {
                "its engine is not running (the gateway restarted): start it again"
            } else {
                "its engine is no longer running on its node: start it again"
            };
            self.set(id, ModelState::Failed, Some(why.into())).await;
        }
    }

    /// Remove the containers labelled as this node's engines that no engine of this instance
    /// owns (left by a gateway that was killed, or by a record deleted meanwhile).
    async fn remove_orphans(&self) {
        let Some(docker) = self.docker() else { return };
        let listed = tokio::time::timeout(
            Duration::from_secs(10),
            super::docker::labelled(docker, &self.node),
        )
        .await;
        let labelled = match listed {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return tracing::debug!(error = %e, "orphan containers not checked"),
            Err(_) => {
                return tracing::debug!("orphan containers not checked: Docker did not answer")
            }
        };
        for (model, name) in labelled {
            let ours = self.engines.lock().is_ok_and(|e| e.contains_key(&model));
            if ours {
                continue;
            }
            // Under the model's lock: a start of it may be creating this very container.
            let lock = self.op_lock(&model);
            let Ok(_serial) = lock.try_lock() else {
                continue;
            };
            if self.engines.lock().is_ok_and(|e| e.contains_key(&model)) {
                continue;
            }
            tracing::warn!(model = %model, container = %name, "removing a container no engine of this node owns");
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                super::docker::remove(docker, &name),
            )
            .await;
        }
    }

    /// Kill the processes marked as this node's engines that no engine of this instance owns:
    /// workers that left their engine's process group, or what an engine forked before the
    /// gateway was killed outright (the engine itself dies with the gateway).
    async fn kill_leftovers(&self) {
        if self.runner.kind != crate::config::RunnerKind::Process {
            return;
        }
        // Reading /proc is blocking file I/O: off the async threads.
        let node = self.node.clone();
        let marked = tokio::task::spawn_blocking(move || super::process::marked(&node))
            .await
            .unwrap_or_default();
        for m in marked {
            // Of this very run: a worker of an earlier run of the same model is a leftover.
            let ours = self
                .engines
                .lock()
                .is_ok_and(|e| e.get(&m.model).is_some_and(|e| e.instance == m.run));
            if !ours {
                tracing::warn!(pid = m.pid, model = %m.model, "killing a process of an engine that no longer runs");
                super::process::kill(m.pid);
            }
        }
    }

    /// Mark a model of a node that stopped sending heartbeats as failed.
    async fn mark_lost(&self, listed: &ModelRecord, node: &str, seen: Option<Duration>) {
        // Read again: its node may have written since the list.
        let Ok(now) = self.models.get(&listed.id).await else {
            return;
        };
        if !now.state.is_active() || now.node.as_deref() != Some(node) {
            return;
        }
        let since = match seen {
            Some(ago) => format!("no heartbeat for {} s", ago.as_secs()),
            None => "no heartbeat".to_string(),
        };
        let detail = format!("{NODE_LOST}: {node} ({since}); its engine may still run there");
        tracing::warn!(model = %listed.id, node, "{detail}");
        if let Err(e) = self
            .models
            .set_state(&listed.id, ModelState::Failed, Some(detail), None)
            .await
        {
            tracing::warn!(model = %listed.id, error = %e, "lost model not marked");
        }
    }
}

impl Lifecycle {
    /// Carry out the commands other instances send to this node, each in a task of its own.
    pub(super) async fn serve(
        me: std::sync::Weak<Self>,
        mut inbox: tokio::sync::broadcast::Receiver<crate::store::NodeMessage>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let msg = match inbox.recv().await {
                Ok(m) => m,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "lifecycle commands missed (their senders time out)"
                    );
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let Some(me) = me.upgrade() else { return };
            // In a binary upgrade, the process being upgraded answers for the node (both
            // processes get its messages) until it has exited.
            if msg.node != me.node || !me.tenant.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            let cmd: remote::Command = match serde_json::from_slice(&msg.body) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable lifecycle command ignored");
                    continue;
                }
            };
            if crate::telemetry::now_ms() > cmd.deadline_ms {
                tracing::warn!(model = %cmd.model, from = %cmd.from, "a lifecycle command arrived after its sender stopped waiting: not carried out");
                continue;
            }
            tokio::spawn(me.execute(cmd));
        }
    }

    /// Carry out one command from another instance and leave the answer for it.
    async fn execute(self: Arc<Self>, cmd: remote::Command) {
        tracing::info!(model = %cmd.model, from = %cmd.from, op = ?cmd.op, "lifecycle command from another instance");
        let id = cmd.model.as_str();
        let reply = match cmd.op {
            Op::Start => remote::reply(self.start_here(id).await),
            Op::Stop => remote::reply(self.stop_here(id).await),
            Op::Apply => remote::reply(self.apply_here(id).await),
            Op::Delete => remote::reply(self.delete_here(id).await),
            Op::Readiness => remote::reply(self.readiness_here(id).await),
            Op::Test => remote::reply(self.test_here(id).await),
            Op::Logs { tail, diagnose } => remote::reply(self.logs_here(id, tail, diagnose).await),
        };
        if let Err(e) = self.gw.store.reply_put(&cmd.id, &reply).await {
            tracing::warn!(model = %cmd.model, error = %e, "the answer to a lifecycle command was not left");
        }
    }
}

/// Sends this node's heartbeats and reconciles records with engines (at start, until the
/// store answers, then every [`BEAT_EVERY`]), and stops every engine (gracefully, and unrouted
/// first) once the gateway's drain is done.
pub struct LifecycleService {
    pub life: Arc<Lifecycle>,
    /// In a binary upgrade: the engines of this node are the old process's until it has
    /// exited, so nothing is reconciled before.
    pub after: Option<crate::shutdown::upgrade::Tenancy>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for LifecycleService {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        let started_ms = now_ms();
        // Engines stop when the gateway's drain is done (no client connection left), not when
        // the listener closes: requests still in flight to them finish first.
        let drain = &self.life.gw.drain;
        let mut phases = drain.subscribe();
        // Heartbeats in a task of their own: a slow check (Docker, the store) never makes a
        // live node look lost.
        let life = self.life.clone();
        let beats = tokio::spawn(async move {
            let mut tick = tokio::time::interval(BEAT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                life.beat(started_ms).await;
            }
        });
        if let Some(old) = &self.after {
            // Stopped before the process being upgraded has exited: its own engines (started
            // by calls meanwhile) stop; the old process's are not touched.
            tokio::select! {
                _ = old.take() => self.life.take_tenancy(),
                _ = drain.reached(crate::shutdown::Phase::Done, Some(&mut phases)) => {
                    self.life.stop_all().await;
                    drain
                        .engines_stopped
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    beats.abort();
                    return;
                }
            }
        }
        let mut restarted = true;
        let mut tick = tokio::time::interval(BEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Once stopping, engines are left as they are until they stop with the
                // process (after an upgrade, the new process takes over the records).
                _ = tick.tick(), if !drain.draining() => {
                    // The first pass that reads the store is the one after the restart.
                    if self.life.reconcile(restarted).await {
                        restarted = false;
                    }
                }
                _ = drain.reached(crate::shutdown::Phase::Done, Some(&mut phases)) => break,
            }
        }
        self.life.stop_all().await;
        drain
            .engines_stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        beats.abort();
    }
}
