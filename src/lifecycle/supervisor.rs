//! The engines this gateway instance runs: start, stop and apply, each engine watched by a task
//! of its own from spawn to exit. The state advances `starting` (process spawned) → `loading`
//! (its port answers, not ready yet) → `running` (`GET /health` is 200 and `GET /v1/models`
//! lists the served name), or `failed` with the reason (early exit and its code, the startup
//! timeout). A running model is routed at once under its served name (with the engine's own
//! key as the upstream bearer) and unrouted the moment it stops or its process exits.

use super::command::{self, Listen};
use super::docker;
use super::error::{LifecycleError, Result};
use super::logs::LogRing;
use super::probe::{self, Probe, TestResult};
use super::process::{self, EngineProcess};
use super::record::{EngineType, ModelRecord, ModelState};
use super::remote::{self, Op};
use super::report::{Logs, Readiness, ReadinessStatus};
use super::service::ModelService;
use super::weights;
use crate::config::{RunnerConfig, RunnerKind};
use crate::gateway::{Gateway, ManagedRoute};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The detail of a model an apply is restarting.
const RESTARTING: &str = "restarting to apply its configuration";
/// How often a starting engine is probed.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Bytes of output kept per model, on top of the line bound.
const LOG_BYTES: usize = 4 << 20;

/// One engine this instance runs.
pub(super) struct Engine {
    port: u16,
    key: String,
    served: String,
    /// Taken by whoever asks it to stop (stop, apply, delete, shutdown, a lost claim).
    stop: Option<oneshot::Sender<StopAsk>>,
    task: Option<JoinHandle<()>>,
    /// This run of the engine (its processes are marked with it).
    pub(super) instance: String,
}

/// How an engine is to be run.
enum Launch {
    Process(command::EngineCommand),
    Container {
        name: String,
        body: Box<bollard::models::ContainerCreateBody>,
    },
}

/// A running engine, whichever the runner.
enum Running {
    Process(EngineProcess),
    Container(docker::EngineContainer),
}

impl Running {
    /// Wait for the engine to exit: how it ended (cancel-safe).
    async fn wait(&mut self) -> String {
        match self {
            Running::Process(p) => p
                .wait()
                .await
                .map_or_else(|e| e.to_string(), process::describe),
            Running::Container(c) => c.wait().await,
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    async fn stop(&mut self, grace: Duration) {
        match self {
            Running::Process(p) => {
                let _ = p.stop(grace).await;
            }
            Running::Container(c) => c.stop(grace).await,
        }
    }

    /// After the engine ended: nothing of it is left behind.
    async fn cleanup(self) {
        match self {
            // Dropping it kills what is left of its process group.
            Running::Process(p) => drop(p),
            Running::Container(c) => c.remove().await,
        }
    }
}

/// What a stop asks of an engine's watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Halt,
    /// Stop, then start again with the saved configuration (apply).
    Restart,
    /// Stop without a word to the record: it is gone, or another node runs the model now.
    Disown,
}

/// A stop request, and the signal back once the watcher has recorded `stopping`.
struct StopAsk {
    how: Stop,
    recorded: oneshot::Sender<()>,
}

/// How long a stop waits for the watcher to record `stopping`.
const RECORDED_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for a container to be created and started (its image pulled first).
const CONTAINER_START_LIMIT: Duration = Duration::from_secs(3600);

/// The managed engines of one gateway instance.
pub struct Lifecycle {
    pub(super) gw: Arc<Gateway>,
    pub models: ModelService,
    pub(super) runner: RunnerConfig,
    /// This instance's node name.
    pub node: String,
    pub(super) client: reqwest::Client,
    pub(super) engines: Mutex<HashMap<String, Engine>>,
    logs: Mutex<HashMap<String, Arc<LogRing>>>,
    /// One lock per model: start, stop, apply and delete of one model on this node run one at
    /// a time.
    ops: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// A runtime on a thread of its own that lives as long as the gateway: engines are forked
    /// and watched there (their parent-death signal is tied to the thread that forked them).
    runtime: tokio::runtime::Handle,
    next_port: AtomicU32,
    /// Models to start again once their old engine is gone (apply).
    restarts: mpsc::UnboundedSender<String>,
    /// Models stopped since they were last started here: a restart an apply left pending
    /// does not happen.
    halted: Mutex<std::collections::HashSet<String>>,
    /// The Docker Engine API client (docker runner).
    docker: Option<bollard::Docker>,
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
            me.beat(crate::telemetry::now_ms()).await;
            let _ = beaten.send(());
        });
        let _ = first_beat.recv_timeout(Duration::from_secs(2));
        Ok(life)
    }

    /// The Docker Engine API client, with the docker runner.
    pub(super) fn docker(&self) -> Option<&bollard::Docker> {
        self.docker.as_ref()
    }

    fn runner_ready(&self) -> Result<()> {
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
    async fn here(&self, id: &str, op: &Op) -> Result<ModelRecord> {
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
    async fn alive(&self, node: &str) -> Result<()> {
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
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        id: &str,
        op: Op,
    ) -> Result<T> {
        self.alive(node).await?;
        remote::call(self.gw.store.as_ref(), &self.node, node, id, op).await
    }

    /// The node other than this one that carries out `op` on model `id`, if one does.
    async fn route_call(&self, id: &str, op: &Op) -> Result<Option<String>> {
        let model = self.models.get(id).await?;
        Ok(self.owner(&model, op))
    }

    /// A model's configuration checked again (links may have changed since it was saved), with
    /// its weights and paths resolved.
    async fn startable(&self, model: &ModelRecord) -> Result<weights::Resolved> {
        Self::hf_token(model)?;
        self.models
            .recheck(&model.spec)
            .await
            .map_err(|e| LifecycleError::Unstartable(e.to_string()))?;
        let (spec, dir) = (model.spec.clone(), self.models.models_dir().to_path_buf());
        tokio::task::spawn_blocking(move || weights::resolve_all(&spec, &dir))
            .await
            .map_err(|e| LifecycleError::Unstartable(e.to_string()))?
            .map_err(LifecycleError::Unstartable)
    }

    /// The Hugging Face token a model names, read from the gateway's environment.
    fn hf_token(model: &ModelRecord) -> Result<Option<String>> {
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

    async fn start_here(self: &Arc<Self>, id: &str) -> Result<ModelRecord> {
        let lock = self.op_lock(id);
        let _serial = lock.lock().await;
        self.start_locked(id).await
    }

    async fn start_locked(self: &Arc<Self>, id: &str) -> Result<ModelRecord> {
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
                    models_dir: self.models.models_dir(),
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
    fn reserve(
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

    fn release(&self, id: &str) -> Option<Engine> {
        self.engines.lock().ok()?.remove(id)
    }

    /// Ask a model's engine to stop: `Some(Some(recorded))` when the request was sent now
    /// (`recorded` fires once its watcher has recorded `stopping`), `Some(None)` when a stop
    /// was already under way, `None` when no engine runs it here.
    fn ask_stop(&self, id: &str, how: Stop) -> Option<Option<oneshot::Receiver<()>>> {
        let mut engines = self.engines.lock().ok()?;
        let e = engines.get_mut(id)?;
        Some(e.stop.take().and_then(|tx| {
            let (recorded, seen) = oneshot::channel();
            tx.send(StopAsk { how, recorded }).ok().map(|()| seen)
        }))
    }

    /// Wait (briefly) until a watcher has recorded `stopping`.
    async fn recorded(seen: oneshot::Receiver<()>) {
        let _ = tokio::time::timeout(RECORDED_WAIT, seen).await;
    }

    /// A stop of `id` was asked for: an apply's pending restart of it does not happen.
    fn halt(&self, id: &str) {
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

    async fn stop_here(&self, id: &str) -> Result<ModelRecord> {
        let lock = self.op_lock(id);
        let _serial = lock.lock().await;
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
    async fn stop_and_wait(&self, id: &str) {
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

    async fn apply_here(self: &Arc<Self>, id: &str) -> Result<(bool, ModelRecord)> {
        let lock = self.op_lock(id);
        let _serial = lock.lock().await;
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

    async fn delete_here(&self, id: &str) -> Result<ModelRecord> {
        let lock = self.op_lock(id);
        let _serial = lock.lock().await;
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

    /// The last `n` lines of a model's engine output on this node (empty when it never ran here).
    pub fn log_tail(&self, id: &str, n: usize) -> Vec<String> {
        self.logs
            .lock()
            .ok()
            .and_then(|l| l.get(id).cloned())
            .map(|ring| ring.tail(n))
            .unwrap_or_default()
    }

    /// Probe the engine of a model running on this node, if it runs here.
    pub async fn probe_model(&self, id: &str) -> Option<Probe> {
        let (port, key, served) = {
            let engines = self.engines.lock().ok()?;
            let e = engines.get(id)?;
            (e.port, e.key.clone(), e.served.clone())
        };
        Some(probe::probe(&self.client, port, &key, &served).await)
    }

    /// The base URL and key of a model's engine on this node.
    pub fn endpoint(&self, id: &str) -> Option<(String, String)> {
        let engines = self.engines.lock().ok()?;
        let e = engines.get(id)?;
        Some((format!("http://127.0.0.1:{}", e.port), e.key.clone()))
    }

    /// Send one small request to a running model's own engine (not through the routing
    /// table), on the node that runs it: a chat completion, or an embedding for `embed` models.
    pub async fn test(&self, id: &str) -> Result<TestResult> {
        match self.route_call(id, &Op::Test).await? {
            Some(node) => self.send(&node, id, Op::Test).await,
            None => self.test_here(id).await,
        }
    }

    async fn test_here(&self, id: &str) -> Result<TestResult> {
        let model = self.here(id, &Op::Test).await?;
        let Some((base, key)) = self
            .endpoint(id)
            .filter(|_| model.state == ModelState::Running)
        else {
            return Err(LifecycleError::Conflict(format!(
                "the model is not running (state: {})",
                model.state.as_str()
            )));
        };
        Ok(probe::test(&self.client, &base, &key, &model).await)
    }

    /// Whether a model serves: its engine probed by the node that runs it, or its record.
    pub async fn readiness(&self, id: &str) -> Result<Readiness> {
        match self.route_call(id, &Op::Readiness).await? {
            Some(node) => self.send(&node, id, Op::Readiness).await,
            None => self.readiness_here(id).await,
        }
    }

    async fn readiness_here(&self, id: &str) -> Result<Readiness> {
        let model = self.models.get(id).await?;
        let (status, detail) = match model.state {
            ModelState::Stopped => (ReadinessStatus::Stopped, None),
            ModelState::Stopping => (ReadinessStatus::Stopped, Some("stopping".to_string())),
            ModelState::Failed => (ReadinessStatus::Failed, model.state_detail),
            ModelState::Starting | ModelState::Loading => (
                ReadinessStatus::Loading,
                Some(
                    model
                        .state_detail
                        .unwrap_or_else(|| model.state.as_str().into()),
                ),
            ),
            ModelState::Running => match self.probe_model(id).await {
                Some(Probe::Ready) => (ReadinessStatus::Ready, None),
                Some(Probe::Loading(why)) => (ReadinessStatus::Loading, Some(why)),
                Some(Probe::Down) => (
                    ReadinessStatus::Failed,
                    Some("the engine does not answer".into()),
                ),
                None => (
                    ReadinessStatus::Failed,
                    Some("no engine runs for it on its node (the gateway restarted?)".into()),
                ),
            },
        };
        Ok(Readiness { status, detail })
    }

    /// The last `tail` lines a model's engine wrote, from the node it runs (or last ran) on;
    /// with `diagnose`, what the whole kept log says about its startup.
    pub async fn logs(&self, id: &str, tail: usize, diagnose: bool) -> Result<Logs> {
        let op = Op::Logs { tail, diagnose };
        match self.route_call(id, &op).await? {
            Some(node) => self.send(&node, id, op).await,
            None => self.logs_here(id, tail, diagnose).await,
        }
    }

    async fn logs_here(&self, id: &str, tail: usize, diagnose: bool) -> Result<Logs> {
        let model = self.models.get(id).await?;
        let (diagnosis, summary) = if diagnose {
            let all = self.log_tail(id, usize::MAX);
            // Up to a few MiB through every pattern: off the async threads.
            let read = tokio::task::spawn_blocking(move || {
                (
                    super::diagnose::diagnose(&all),
                    super::diagnose::summarize(&all),
                )
            })
            .await
            .map_err(|e| LifecycleError::NodeUnavailable(e.to_string()))?;
            (Some(read.0), Some(read.1))
        } else {
            (None, None)
        };
        Ok(Logs {
            state: model.state,
            node: model.node,
            lines: self.log_tail(id, tail),
            diagnosis,
            summary,
        })
    }

    /// Carry out the commands other instances send to this node, each in a task of its own.
    async fn serve(
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
            if msg.node != me.node {
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

    /// Run one engine: record `starting`, spawn its process (on the lifecycle thread, where
    /// this task runs), then watch it until it exits or is stopped.
    #[allow(clippy::too_many_arguments)]
    async fn run(
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
        let launched = match (launch, &self.docker) {
            (Launch::Process(cmd), _) => process::fresh_workdir(&id)
                .and_then(|dir| process::spawn(&cmd, &logs, &dir, &self.runner.pass_env))
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
    async fn restart_loop(me: std::sync::Weak<Self>, mut ids: mpsc::UnboundedReceiver<String>) {
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
