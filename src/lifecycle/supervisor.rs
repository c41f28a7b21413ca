//! The engines this gateway instance runs: start, stop, apply and delete, carried out here when
//! this node owns the model and sent to its node otherwise (`remote`). Each engine is watched
//! by a task of its own (`watcher`): the state advances `starting` (process spawned) →
//! `loading` (its port answers, not ready yet) → `running` (`GET /health` is 200 and
//! `GET /v1/models` lists the served name), or `failed` with the reason (early exit and its
//! code, the startup timeout). A running model is routed at once under its served name (with
//! the engine's own key as the upstream bearer) and unrouted the moment it stops or exits.

use super::command::{self, Listen};
use super::docker;
use super::engine::{Engine, Launch, Stop, StopAsk, LOG_BYTES, RECORDED_WAIT};
use super::error::{LifecycleError, Result};
use super::logs::LogRing;
use super::process;
use super::record::{EngineType, ModelRecord, ModelState};
use super::remote::{self, Op};
use super::service::ModelService;
use super::weights;
use crate::config::{RunnerConfig, RunnerKind};
use crate::gateway::Gateway;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The managed engines of one gateway instance.
pub struct Lifecycle {
    pub(super) gw: Arc<Gateway>,
    pub models: ModelService,
    pub(super) runner: RunnerConfig,
    /// This instance's node name.
    pub node: String,
    pub(super) client: reqwest::Client,
    pub(super) engines: Mutex<HashMap<String, Engine>>,
    pub(super) logs: Mutex<HashMap<String, Arc<LogRing>>>,
    /// One lock per model: start, stop, apply and delete of one model on this node run one at
    /// a time.
    pub(super) ops: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// A runtime on a thread of its own that lives as long as the gateway: engines are forked
    /// and watched there (their parent-death signal is tied to the thread that forked them).
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) next_port: AtomicU32,
    /// Models to start again once their old engine is gone (apply).
    pub(super) restarts: mpsc::UnboundedSender<String>,
    /// Models stopped since they were last started here: a restart an apply left pending
    /// does not happen.
    pub(super) halted: Mutex<std::collections::HashSet<String>>,
    /// The Docker Engine API client (docker runner).
    pub(super) docker: Option<bollard::Docker>,
    /// Whether this process runs the node's engines: false in a binary upgrade's new process
    /// until the old one has exited (both share the node name).
    pub(super) tenant: std::sync::atomic::AtomicBool,
}

impl Lifecycle {
    pub fn new(gw: Arc<Gateway>) -> std::io::Result<Arc<Self>> {
        let runner = gw.config.runner.clone();
        // The host name and proxy port: stable across restarts (so a restarted instance knows
        // its own records), distinct for two instances on one host.
        let node = if runner.node.is_empty() {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into());
            let port = gw
                .config
                .proxy
                .listen
                .rsplit(':')
                .next()
                .unwrap_or_default();
            format!("{host}:{port}")
        } else {
            runner.node.clone()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("infergate-lifecycle".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = tx.send(Ok(rt.handle().clone()));
                        rt.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        let runtime = rx
            .recv()
            .map_err(|_| std::io::Error::other("the lifecycle thread did not start"))??;
        let (restarts, restart_ids) = mpsc::unbounded_channel();
        let docker = match runner.kind {
            RunnerKind::Docker => match docker::connect(&runner.docker_socket) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::error!(error = %e, "docker runner unavailable");
                    None
                }
            },
            _ => None,
        };
        let life = Arc::new(Self {
            restarts,
            halted: Mutex::default(),
            docker,
            tenant: std::sync::atomic::AtomicBool::new(true),
            models: ModelService::new(gw.store.clone(), runner.models_dir.clone()),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .no_proxy()
                .build()
                .unwrap_or_default(),
            engines: Mutex::default(),
            logs: Mutex::default(),
            ops: Mutex::default(),
            runtime,
            next_port: AtomicU32::new(0),
            node,
            runner,
            gw,
        });
        life.runtime
            .spawn(Self::restart_loop(Arc::downgrade(&life), restart_ids));
        life.runtime.spawn(Self::serve(
            Arc::downgrade(&life),
            life.gw.store.node_inbox(),
        ));
        // The first heartbeat before the admin API serves: a call another instance sends to
        // this node as soon as it is up finds it alive. (Waited for briefly: a store that is
        // down does not hold up the start.)
        let (beaten, first_beat) = std::sync::mpsc::channel();
        let me = life.clone();
        life.runtime.spawn(async move {
            let _ = me.models.base_dir.load(me.gw.store.as_ref()).await;
            me.beat(crate::telemetry::now_ms()).await;
            let _ = beaten.send(());
        });
        let _ = first_beat.recv_timeout(Duration::from_secs(2));
        Ok(life)
    }

    /// The runner's configuration.
    pub fn runner(&self) -> &RunnerConfig {
        &self.runner
    }

    /// The Docker Engine API client, with the docker runner.
    pub(super) fn docker(&self) -> Option<&bollard::Docker> {
        self.docker.as_ref()
    }

    pub(super) fn runner_ready(&self) -> Result<()> {
        match self.runner.kind {
            RunnerKind::Process => Ok(()),
            RunnerKind::None => Err(LifecycleError::NoRunner(
                "no runner is configured: set [runner] kind = \"process\" (or \"docker\") to run models"
                    .into(),
            )),
            RunnerKind::Docker if self.docker.is_some() => Ok(()),
            RunnerKind::Docker => Err(LifecycleError::NoRunner(format!(
                "the Docker Engine API at {} cannot be used",
                self.runner.docker_socket.display()
            ))),
        }
    }

    /// The lock that serializes lifecycle calls on one model.
    pub(super) fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.ops
            .lock()
            .map(|mut ops| ops.entry(id.to_string()).or_default().clone())
            .unwrap_or_default()
    }

    /// The other node that carries out `op` on `m`, if another does: the node its engine runs
    /// on while it is active (its logs: the node it last ran on), else the node it is pinned to
    /// (`node`) for a start or an apply, else this one.
    pub fn owner(&self, m: &ModelRecord, op: &Op) -> Option<String> {
        let other = |n: &String| (*n != self.node).then(|| n.clone());
        match op {
            Op::Logs { .. } => m.node.as_ref().and_then(other),
            _ if m.state.is_active() => m.node.as_ref().and_then(other),
            Op::Start | Op::Apply => m.spec.node.as_ref().and_then(other),
            _ => None,
        }
    }

    /// A model this node may carry out `op` on: a runner is configured, and no other node owns
    /// it (a command that arrives after its model moved is refused, never sent on).
    pub(super) async fn here(&self, id: &str, op: &Op) -> Result<ModelRecord> {
        self.runner_ready()?;
        let model = self.models.get(id).await?;
        match self.owner(&model, op) {
            Some(node) => Err(LifecycleError::Conflict(format!(
                "the model belongs to node {node} now: send this again"
            ))),
            None => Ok(model),
        }
    }

    /// Whether `node` sent a heartbeat recently enough to be asked.
    pub(super) async fn alive(&self, node: &str) -> Result<()> {
        let beats = self.gw.store.node_beats().await.map_err(|e| {
            LifecycleError::NodeUnavailable(format!(
                "the model belongs to node {node}, and the store cannot be read: {e}"
            ))
        })?;
        let lost = Duration::from_secs(self.runner.node_lost_secs);
        match super::beat::last_seen(&beats, node) {
            Some(ago) if ago < lost => Ok(()),
            Some(ago) => Err(LifecycleError::NodeUnavailable(format!(
                "the model belongs to node {node}, which has sent no heartbeat for {} s",
                ago.as_secs()
            ))),
            None => Err(LifecycleError::NodeUnavailable(format!(
                "the model belongs to node {node}, which is not running (no heartbeat)"
            ))),
        }
    }

    /// Carry out `op` on `node` and return its answer.
    pub(super) async fn send<T: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        id: &str,
        op: Op,
    ) -> Result<T> {
        self.alive(node).await?;
        remote::call(self.gw.store.as_ref(), &self.node, node, id, op).await
    }

    /// The node other than this one that carries out `op` on model `id`, if one does.
    pub(super) async fn route_call(&self, id: &str, op: &Op) -> Result<Option<String>> {
        let model = self.models.get(id).await?;
        Ok(self.owner(&model, op))
    }

    /// A model's configuration checked again (links may have changed since it was saved), with
    /// its weights and paths resolved.
    pub(super) async fn startable(&self, model: &ModelRecord) -> Result<weights::Resolved> {
        Self::hf_token(model)?;
        self.models
            .recheck(&model.spec)
            .await
            .map_err(|e| LifecycleError::Unstartable(e.to_string()))?;
        let (spec, dir) = (model.spec.clone(), self.models.models_dir());
        tokio::task::spawn_blocking(move || weights::resolve_all(&spec, &dir))
            .await
            .map_err(|e| LifecycleError::Unstartable(e.to_string()))?
            .map_err(LifecycleError::Unstartable)
    }

    /// The Hugging Face token a model names, read from the gateway's environment.
    pub(super) fn hf_token(model: &ModelRecord) -> Result<Option<String>> {
        match &model.spec.hf_token_env {
            Some(var) => std::env::var(var).map(Some).map_err(|_| {
                LifecycleError::Unstartable(format!(
                    "hf_token_env: the variable {var} is not set in the gateway's environment"
                ))
            }),
            None => Ok(None),
        }
    }

    /// Start a stopped (or failed) model, on the node it is pinned to or else this one:
    /// answers once its engine process is spawned, in `starting` (or `failed`, when the
    /// engine could not be run at all).
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<ModelRecord> {
        match self.route_call(id, &Op::Start).await? {
            Some(node) => self.send(&node, id, Op::Start).await,
            None => self.start_here(id).await,
        }
    }

    /// This process may change the node's engines: it holds the node (not a binary upgrade's
    /// new process waiting for the old one) and is not stopping.
    pub(super) fn may_change_engines(&self) -> Result<()> {
        if !self.tenant.load(std::sync::atomic::Ordering::Acquire) {
            return Err(LifecycleError::HandingOver(format!(
                "node {} is in a binary upgrade: this process takes its engines over once the old one has exited; send this again in a few seconds",
                self.node
            )));
        }
        if self.gw.drain.draining() || self.gw.drain.handed_over() {
            return Err(LifecycleError::HandingOver(format!(
                "node {} is stopping (drain or upgrade): engines change on the process that serves next; send this again in a few seconds",
                self.node
            )));
        }
        Ok(())
    }

    /// In a binary upgrade's new process: the node's engines are the old process's until
    /// [`Self::take_tenancy`].
    pub fn await_tenancy(&self) {
        self.tenant
            .store(false, std::sync::atomic::Ordering::Release);
    }

    pub fn take_tenancy(&self) {
        self.tenant
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub(super) async fn start_here(self: &Arc<Self>, id: &str) -> Result<ModelRecord> {
        self.may_change_engines()?;
        let lock = self.op_lock(id);
        let _serial = lock.lock().await;
        self.start_locked(id).await
    }

    /// (Also an apply's pending restart.) Checked again under the model's lock: a drain or an
    /// upgrade may have begun while the call waited for it.
    pub(super) async fn start_locked(self: &Arc<Self>, id: &str) -> Result<ModelRecord> {
        self.may_change_engines()?;
        let model = self.here(id, &Op::Start).await?;
        if self.engines.lock().is_ok_and(|e| e.contains_key(id)) {
            return Err(LifecycleError::Conflict(format!(
                "the model is already {} on this node: stop it first, or apply to restart it",
                model.state.as_str()
            )));
        }
        let resolved = self.startable(&model).await?;
        let hf_token = Self::hf_token(&model)?;
        let instance = format!("{:08x}", rand::random::<u32>());
        let key = crate::identity::generate_secret(40);
        let engine = match model.spec.engine_type {
            EngineType::Vllm => &self.runner.vllm,
            EngineType::Llamacpp => &self.runner.llamacpp,
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let port = self.reserve(&model, &key, &instance, stop_tx)?;
        // A start supersedes the stops before it.
        if let Ok(mut halted) = self.halted.lock() {
            halted.remove(id);
        }
        // From here on, nothing awaits before the watcher owns the engine: a request dropped
        // midway cannot leave a half-started engine behind.
        let (launch, shown) = match &self.docker {
            Some(_) => {
                let image = model.spec.engine_image.as_deref().unwrap_or(&engine.image);
                let entrypoint = engine.docker_entrypoint.clone().unwrap_or_else(|| {
                    match model.spec.engine_type {
                        EngineType::Vllm => vec!["vllm".into(), "serve".into()],
                        EngineType::Llamacpp => Vec::new(),
                    }
                });
                let (cmd, body) = docker::create_body(&docker::ContainerSpec {
                    model: &model,
                    resolved: &resolved,
                    image,
                    entrypoint: &entrypoint,
                    key: &key,
                    host_port: port,
                    models_dir: &self.models.models_dir(),
                    node: &self.node,
                    hf_token: hf_token.as_deref(),
                });
                let name = docker::container_name(id);
                let shown = format!(
                    "container {name} from {image}: {}",
                    command::shell_line(&cmd.argv)
                );
                (
                    Launch::Container {
                        name,
                        body: Box::new(body),
                    },
                    shown,
                )
            }
            None => {
                let listen = Listen {
                    host: "127.0.0.1",
                    port,
                    api_key: &key,
                };
                let mut cmd = command::build(
                    &resolved.spec,
                    &engine.command,
                    &resolved.weights,
                    &listen,
                    hf_token.as_deref(),
                );
                cmd.env.push((
                    process::MARKER.into(),
                    process::mark(id, &instance, &self.node),
                ));
                let shown = command::shell_line(&cmd.argv);
                (Launch::Process(cmd), shown)
            }
        };
        let logs = Arc::new(LogRing::new(self.runner.log_lines, LOG_BYTES));
        logs.push(&format!("infergate: starting on {}: {shown}", self.node));
        if let Ok(mut all) = self.logs.lock() {
            all.insert(id.to_string(), logs.clone());
        }
        let (spawned_tx, spawned_rx) = oneshot::channel();
        let run = self
            .clone()
            .run(model.clone(), port, key, launch, logs, stop_rx, spawned_tx);
        let task = self.runtime.spawn(run);
        if let Ok(mut engines) = self.engines.lock() {
            if let Some(e) = engines.get_mut(id) {
                e.task = Some(task);
            }
        }
        // The watcher has recorded `starting` (or `failed`).
        let _ = spawned_rx.await;
        Ok(self.models.get(id).await.unwrap_or(model))
    }

    /// Claim a port for a model, and its slot (so two starts cannot both run it).
    pub(super) fn reserve(
        &self,
        model: &ModelRecord,
        key: &str,
        instance: &str,
        stop: oneshot::Sender<StopAsk>,
    ) -> Result<u16> {
        let mut engines = self
            .engines
            .lock()
            .map_err(|_| LifecycleError::Conflict("engine table poisoned".into()))?;
        if engines.contains_key(&model.id) {
            return Err(LifecycleError::Conflict(
                "the model is already starting".into(),
            ));
        }
        let (min, max) = (
            u32::from(self.runner.port_min),
            u32::from(self.runner.port_max),
        );
        let span = max - min + 1;
        for _ in 0..span {
            let port = (min + self.next_port.fetch_add(1, Relaxed) % span) as u16;
            let taken = engines.values().any(|e| e.port == port);
            if !taken && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                engines.insert(
                    model.id.clone(),
                    Engine {
                        port,
                        key: key.to_string(),
                        served: model.spec.served_model_name.clone(),
                        stop: Some(stop),
                        task: None,
                        instance: instance.to_string(),
                    },
                );
                return Ok(port);
            }
        }
        Err(LifecycleError::Capacity(format!(
            "no free port between [runner] port_min {} and port_max {}",
            self.runner.port_min, self.runner.port_max
        )))
    }

    pub(super) fn release(&self, id: &str) -> Option<Engine> {
        self.engines.lock().ok()?.remove(id)
    }

    /// Ask a model's engine to stop: `Some(Some(recorded))` when the request was sent now
    /// (`recorded` fires once its watcher has recorded `stopping`), `Some(None)` when a stop
    /// was already under way, `None` when no engine runs it here.
    pub(super) fn ask_stop(&self, id: &str, how: Stop) -> Option<Option<oneshot::Receiver<()>>> {
        let mut engines = self.engines.lock().ok()?;
        let e = engines.get_mut(id)?;
        Some(e.stop.take().and_then(|tx| {
            let (recorded, seen) = oneshot::channel();
            tx.send(StopAsk { how, recorded }).ok().map(|()| seen)
        }))
    }

    /// Wait (briefly) until a watcher has recorded `stopping`.
    pub(super) async fn recorded(seen: oneshot::Receiver<()>) {
        let _ = tokio::time::timeout(RECORDED_WAIT, seen).await;
    }

    /// A stop of `id` was asked for: an apply's pending restart of it does not happen.
    pub(super) fn halt(&self, id: &str) {
        if let Ok(mut halted) = self.halted.lock() {
            halted.insert(id.to_string());
        }
    }

    /// Stop a model: answers at once in `stopping` when its engine runs here (it is unrouted
    /// first, then SIGTERM, SIGKILL after the grace period), or `stopped`.
    pub async fn stop(&self, id: &str) -> Result<ModelRecord> {
        match self.route_call(id, &Op::Stop).await? {
            Some(node) => self.send(&node, id, Op::Stop).await,
            None => self.stop_here(id).await,
        }
    }

    pub(super) async fn stop_here(&self, id: &str) -> Result<ModelRecord> {
        self.may_change_engines()?;
        let lock = self.op_lock(id);
        let _serial = lock.lock().await;
        self.may_change_engines()?;
        let model = self.here(id, &Op::Stop).await?;
        self.halt(id);
        match self.ask_stop(id, Stop::Halt) {
            // Its watcher records `stopping` (it alone writes the state of a live engine).
            Some(Some(seen)) => Self::recorded(seen).await,
            Some(None) => {}
            // No engine here: a failed or stale record, or a restart pending from an apply.
            None if model.state != ModelState::Stopped || model.state_detail.is_some() => {
                self.set(id, ModelState::Stopped, None).await
            }
            None => {}
        }
        Ok(self.models.get(id).await?)
    }

    /// Stop a model's engine and wait until it is gone (delete, shutdown).
    pub(super) async fn stop_and_wait(&self, id: &str) {
        self.halt(id);
        if let Some(Some(seen)) = self.ask_stop(id, Stop::Halt) {
            Self::recorded(seen).await;
        }
        let task = self
            .engines
            .lock()
            .ok()
            .and_then(|mut e| e.get_mut(id).and_then(|e| e.task.take()));
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Apply a model's saved configuration: a running model is restarted with it (answers in
    /// `stopping`; it then starts again), a stopped one is only checked. `true` when a restart
    /// was begun.
    pub async fn apply(self: &Arc<Self>, id: &str) -> Result<(bool, ModelRecord)> {
        match self.route_call(id, &Op::Apply).await? {
            Some(node) => self.send(&node, id, Op::Apply).await,
            None => self.apply_here(id).await,
        }
    }

    pub(super) async fn apply_here(self: &Arc<Self>, id: &str) -> Result<(bool, ModelRecord)> {
        self.may_change_engines()?;
        let lock = self.op_lock(id);
        let _serial = lock.lock().await;
        self.may_change_engines()?;
        let model = self.here(id, &Op::Apply).await?;
        self.startable(&model).await?;
        match self.ask_stop(id, Stop::Restart) {
            None => Ok((false, model)),
            Some(None) => Err(LifecycleError::Conflict(
                "the model is stopping: start it once it has stopped".into(),
            )),
            Some(Some(seen)) => {
                Self::recorded(seen).await;
                Ok((true, self.models.get(id).await?))
            }
        }
    }

    /// Delete a model: its engine is stopped (and unrouted) first, then its record.
    pub async fn delete(&self, id: &str) -> Result<ModelRecord> {
        match self.route_call(id, &Op::Delete).await? {
            Some(node) => self.send(&node, id, Op::Delete).await,
            None => self.delete_here(id).await,
        }
    }

    pub(super) async fn delete_here(&self, id: &str) -> Result<ModelRecord> {
        self.may_change_engines()?;
        let lock = self.op_lock(id);
        let _serial = lock.lock().await;
        self.may_change_engines()?;
        let model = self.models.get(id).await?;
        if let Some(node) = self.owner(&model, &Op::Delete) {
            return Err(LifecycleError::Conflict(format!(
                "the model belongs to node {node} now: send this again"
            )));
        }
        self.stop_and_wait(id).await;
        if let Ok(mut halted) = self.halted.lock() {
            halted.remove(id);
        }
        if let Ok(mut logs) = self.logs.lock() {
            logs.remove(id);
        }
        let deleted = self.models.delete(id).await?;
        if let Ok(mut ops) = self.ops.lock() {
            ops.remove(id);
        }
        Ok(deleted)
    }

    /// Record a state (failures to write are logged: the engine's fate does not depend on it).
    pub(super) async fn set(&self, id: &str, state: ModelState, detail: Option<String>) {
        if let Err(e) = self
            .models
            .set_state(id, state, detail, Some(&self.node))
            .await
        {
            tracing::warn!(model = %id, state = state.as_str(), error = %e, "model state not recorded");
        }
    }

    /// Drop what this node keeps for models it has no business with any more: the logs of a
    /// model deleted, or run by another node since; the locks and stop marks of ids without a
    /// record (`models`: every record, as (id, node it runs or ran on)).
    pub(super) fn forget(&self, models: &HashMap<String, Option<String>>) {
        let here = |id: &String| {
            models
                .get(id)
                .is_some_and(|node| node.as_deref().is_none_or(|n| n == self.node))
        };
        let running = |id: &String| self.engines.lock().is_ok_and(|e| e.contains_key(id));
        if let Ok(mut logs) = self.logs.lock() {
            logs.retain(|id, _| here(id) || running(id));
        }
        if let Ok(mut ops) = self.ops.lock() {
            ops.retain(|id, lock| models.contains_key(id) || Arc::strong_count(lock) > 1);
        }
        if let Ok(mut halted) = self.halted.lock() {
            halted.retain(|id| models.contains_key(id));
        }
    }

    /// Stop every engine of this instance, all at once (gateway shutdown).
    pub async fn stop_all(self: &Arc<Self>) {
        let ids: Vec<String> = self
            .engines
            .lock()
            .map(|e| e.keys().cloned().collect())
            .unwrap_or_default();
        let mut stops = tokio::task::JoinSet::new();
        for id in ids {
            let me = self.clone();
            stops.spawn(async move { me.stop_and_wait(&id).await });
        }
        while stops.join_next().await.is_some() {}
    }
}
