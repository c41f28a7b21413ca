//! The engines this gateway instance runs: start, stop and apply, each engine watched by a task
//! of its own from spawn to exit. The state advances `starting` (process spawned) → `loading`
//! (its port answers, not ready yet) → `running` (`GET /health` is 200 and `GET /v1/models`
//! lists the served name), or `failed` with the reason (early exit and its code, the startup
//! timeout). A running model is routed at once under its served name (with the engine's own
//! key as the upstream bearer) and unrouted the moment it stops or its process exits.

use super::command::{self, Listen};
use super::docker;
use super::logs::LogRing;
use super::process::{self, EngineProcess};
use super::record::{EngineType, ModelRecord, ModelState};
use super::service::{ModelError, ModelService};
use super::weights;
use crate::config::{RunnerConfig, RunnerKind};
use crate::gateway::{Gateway, ManagedRoute};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The detail of a model an apply is restarting.
const RESTARTING: &str = "restarting to apply its configuration";
/// How often a starting engine is probed.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// Bytes of output kept per model, on top of the line bound.
const LOG_BYTES: usize = 4 << 20;

/// Why a lifecycle call was refused.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// No runner is configured (409).
    #[error("{0}")]
    NoRunner(String),
    /// The model's state does not allow it (409).
    #[error("{0}")]
    Conflict(String),
    /// The model cannot be started as configured (400).
    #[error("{0}")]
    Unstartable(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

type Result<T> = std::result::Result<T, LifecycleError>;

/// One engine this instance runs.
struct Engine {
    port: u16,
    key: String,
    served: String,
    /// Taken by whoever asks it to stop (stop, apply, delete, shutdown).
    stop: Option<oneshot::Sender<Stop>>,
    task: Option<JoinHandle<()>>,
    /// A stop was asked for: a restart pending from an apply does not happen.
    halt: bool,
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
}

/// The outcome of a model test.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TestResult {
    pub success: bool,
    /// `chat` or `embeddings`.
    pub test_type: &'static str,
    /// The request sent.
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    /// The engine's answer, when it succeeded.
    #[schema(value_type = Option<Object>)]
    pub response: Option<serde_json::Value>,
    /// What went wrong (status and the start of the answer, or the connection error).
    pub error: Option<String>,
    pub latency_ms: u64,
}

/// What a readiness probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Nothing answers on the port yet.
    Down,
    /// The server answers but is not ready; why.
    Loading(String),
    Ready,
}

/// The managed engines of one gateway instance.
pub struct Lifecycle {
    gw: Arc<Gateway>,
    pub models: ModelService,
    runner: RunnerConfig,
    /// This instance's node name.
    pub node: String,
    client: reqwest::Client,
    engines: Mutex<HashMap<String, Engine>>,
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
        Ok(life)
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
    fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.ops
            .lock()
            .map(|mut ops| ops.entry(id.to_string()).or_default().clone())
            .unwrap_or_default()
    }

    /// The other node a model is active on, if it is (its engine is theirs to start or stop).
    fn elsewhere(&self, m: &ModelRecord) -> Option<String> {
        let active = matches!(
            m.state,
            ModelState::Starting | ModelState::Loading | ModelState::Running | ModelState::Stopping
        );
        m.node
            .as_ref()
            .filter(|n| active && **n != self.node)
            .cloned()
    }

    /// A model this node may act on: a runner is configured, and no other node runs it.
    async fn here(&self, id: &str) -> Result<ModelRecord> {
        self.runner_ready()?;
        let model = self.models.get(id).await?;
        match self.elsewhere(&model) {
            Some(node) => Err(Self::not_here(node)),
            None => Ok(model),
        }
    }

    /// A model's configuration checked again (links may have changed since it was saved), with
    /// its weights and paths resolved.
    async fn startable(&self, model: &ModelRecord) -> Result<weights::Resolved> {
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

    fn not_here(node: String) -> LifecycleError {
        LifecycleError::Conflict(format!(
            "the model runs on node {node}: send this to that instance"
        ))
    }

    /// Start a stopped (or failed) model: answers once its engine process is spawned, in
    /// `starting` (or `failed`, when the engine could not be run at all).
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<ModelRecord> {
        let lock = self.op_lock(id);
        let _serial = lock.lock().await;
        self.start_locked(id).await
    }

    async fn start_locked(self: &Arc<Self>, id: &str) -> Result<ModelRecord> {
        let model = self.here(id).await?;
        if self.engines.lock().is_ok_and(|e| e.contains_key(id)) {
            return Err(LifecycleError::Conflict(format!(
                "the model is already {} on this node: stop it first, or apply to restart it",
                model.state.as_str()
            )));
        }
        let resolved = self.startable(&model).await?;
        let hf_token = match &model.spec.hf_token_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                LifecycleError::Unstartable(format!(
                    "hf_token_env: the variable {var} is not set in the gateway's environment"
                ))
            })?),
            None => None,
        };
        let key = crate::identity::generate_secret(40);
        let engine = match model.spec.engine_type {
            EngineType::Vllm => &self.runner.vllm,
            EngineType::Llamacpp => &self.runner.llamacpp,
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let port = self.reserve(&model, &key, stop_tx)?;
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
                let cmd = command::build(
                    &resolved.spec,
                    &engine.command,
                    &resolved.weights,
                    &listen,
                    hf_token.as_deref(),
                );
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
    fn reserve(&self, model: &ModelRecord, key: &str, stop: oneshot::Sender<Stop>) -> Result<u16> {
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
                        halt: false,
                    },
                );
                return Ok(port);
            }
        }
        Err(LifecycleError::Conflict(format!(
            "no free port between [runner] port_min {} and port_max {}",
            self.runner.port_min, self.runner.port_max
        )))
    }

    fn release(&self, id: &str) -> Option<Engine> {
        self.engines.lock().ok()?.remove(id)
    }

    /// Ask a model's engine to stop: `Some(true)` when the request was sent now, `Some(false)`
    /// when a stop was already under way, `None` when no engine runs it here. `halt` also
    /// cancels a restart an apply left pending.
    fn ask_stop(&self, id: &str, how: Stop) -> Option<bool> {
        let mut engines = self.engines.lock().ok()?;
        let e = engines.get_mut(id)?;
        if how == Stop::Halt {
            e.halt = true;
        }
        Some(match e.stop.take() {
            Some(tx) => tx.send(how).is_ok(),
            None => false,
        })
    }

    /// Stop a model: answers at once in `stopping` when its engine runs here (it is unrouted
    /// first, then SIGTERM, SIGKILL after the grace period), or `stopped`.
    pub async fn stop(&self, id: &str) -> Result<ModelRecord> {
        let lock = self.op_lock(id);
        let _serial = lock.lock().await;
        let model = self.here(id).await?;
        match self.ask_stop(id, Stop::Halt) {
            Some(_) => self.set(id, ModelState::Stopping, None).await,
            None if model.state != ModelState::Stopped => {
                self.set(id, ModelState::Stopped, None).await
            }
            None => {}
        }
        Ok(self.models.get(id).await?)
    }

    /// Stop a model's engine and wait until it is gone (delete, shutdown).
    async fn stop_and_wait(&self, id: &str) {
        if self.ask_stop(id, Stop::Halt).is_some() {
            self.set(id, ModelState::Stopping, None).await;
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
        let lock = self.op_lock(id);
        let _serial = lock.lock().await;
        let model = self.here(id).await?;
        self.startable(&model).await?;
        match self.ask_stop(id, Stop::Restart) {
            None => Ok((false, model)),
            Some(false) => Err(LifecycleError::Conflict(
                "the model is stopping: start it once it has stopped".into(),
            )),
            Some(true) => {
                self.set(id, ModelState::Stopping, Some(RESTARTING.into()))
                    .await;
                Ok((true, self.models.get(id).await?))
            }
        }
    }

    /// Delete a model: its engine is stopped (and unrouted) first, then its record.
    pub async fn delete(&self, id: &str) -> Result<ModelRecord> {
        let lock = self.op_lock(id);
        let _serial = lock.lock().await;
        let model = self.models.get(id).await?;
        if let Some(node) = self.elsewhere(&model) {
            return Err(Self::not_here(node));
        }
        self.stop_and_wait(id).await;
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
        Some(self.probe(port, &key, &served).await)
    }

    /// The base URL and key of a model's engine on this node.
    pub fn endpoint(&self, id: &str) -> Option<(String, String)> {
        let engines = self.engines.lock().ok()?;
        let e = engines.get(id)?;
        Some((format!("http://127.0.0.1:{}", e.port), e.key.clone()))
    }

    /// Send one small request to a running model's own engine (not through the routing table):
    /// a chat completion, or an embedding for `embed` models.
    pub async fn test(&self, id: &str) -> Result<TestResult> {
        self.runner_ready()?;
        let model = self.models.get(id).await?;
        let Some((base, key)) = self
            .endpoint(id)
            .filter(|_| model.state == ModelState::Running)
        else {
            let place = match &model.node {
                Some(n) if *n != self.node && model.state == ModelState::Running => {
                    format!(" on this node (it runs on {n})")
                }
                _ => String::new(),
            };
            return Err(LifecycleError::Conflict(format!(
                "the model is not running{place} (state: {})",
                model.state.as_str()
            )));
        };
        let served = &model.spec.served_model_name;
        let (test_type, path, request) = match model.spec.task {
            super::record::Task::Embed => (
                "embeddings",
                "/v1/embeddings",
                serde_json::json!({"model": served, "input": "test"}),
            ),
            super::record::Task::Generate => (
                "chat",
                "/v1/chat/completions",
                serde_json::json!({"model": served, "max_tokens": 16,
                    "messages": [{"role": "user", "content": "Hello"}]}),
            ),
        };
        let started = Instant::now();
        let sent = self
            .client
            .post(format!("{base}{path}"))
            .bearer_auth(&key)
            .timeout(Duration::from_secs(120))
            .json(&request)
            .send()
            .await;
        let outcome = match sent {
            Err(e) => Err(format!("{path}: {e}")),
            Ok(r) => {
                let status = r.status();
                let body = r.bytes().await.unwrap_or_default();
                let json = serde_json::from_slice::<serde_json::Value>(&body).ok();
                let answered = json.as_ref().is_some_and(|v| match test_type {
                    "embeddings" => v["data"][0]["embedding"].is_array(),
                    _ => v["choices"].as_array().is_some_and(|c| !c.is_empty()),
                });
                match (status.is_success() && answered, json) {
                    (true, Some(v)) => Ok(v),
                    (_, json) => {
                        let text = json.map_or_else(
                            || String::from_utf8_lossy(&body).into_owned(),
                            |v| v.to_string(),
                        );
                        Err(format!(
                            "{path} answered {}: {}",
                            status.as_u16(),
                            text.chars().take(500).collect::<String>()
                        ))
                    }
                }
            }
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        Ok(match outcome {
            Ok(response) => TestResult {
                success: true,
                test_type,
                request,
                response: Some(response),
                error: None,
                latency_ms,
            },
            Err(error) => TestResult {
                success: false,
                test_type,
                request,
                response: None,
                error: Some(error),
                latency_ms,
            },
        })
    }

    /// `GET /health` answers 200 and `GET /v1/models` lists the served name (so embedding
    /// models are judged as well as chat models; no inference is run).
    async fn probe(&self, port: u16, key: &str, served: &str) -> Probe {
        let base = format!("http://127.0.0.1:{port}");
        let health = self
            .client
            .get(format!("{base}/health"))
            .bearer_auth(key)
            .send()
            .await;
        match health {
            Err(e) if e.is_connect() => return Probe::Down,
            Err(e) => return Probe::Loading(format!("GET /health: {e}")),
            Ok(r) if !r.status().is_success() => {
                return Probe::Loading(format!("GET /health answers {}", r.status().as_u16()))
            }
            Ok(_) => {}
        }
        let listed = match self
            .client
            .get(format!("{base}/v1/models"))
            .bearer_auth(key)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
            Ok(r) => {
                return Probe::Loading(format!("GET /v1/models answers {}", r.status().as_u16()))
            }
            Err(e) => return Probe::Loading(format!("GET /v1/models: {e}")),
        };
        let serves = listed
            .as_ref()
            .and_then(|v| v["data"].as_array())
            .is_some_and(|d| d.iter().any(|m| m["id"] == served));
        if serves {
            Probe::Ready
        } else {
            Probe::Loading(format!("GET /v1/models does not list {served:?} yet"))
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
        mut stop: oneshot::Receiver<Stop>,
        spawned: oneshot::Sender<()>,
    ) {
        let id = model.id.clone();
        self.set(&id, ModelState::Starting, None).await;
        if let Ok(how) = stop.try_recv() {
            // Stopped before it was spawned.
            let _ = spawned.send(());
            return self.finish(&id, ModelState::Stopped, None, how).await;
        }
        let launched = match (launch, &self.docker) {
            (Launch::Process(cmd), _) => {
                process::spawn(&cmd, &logs, self.models.models_dir(), &self.runner.pass_env)
                    .map(Running::Process)
                    .map_err(|e| format!("cannot run {}: {e}", cmd.argv[0]))
            }
            (Launch::Container { name, body }, Some(d)) => docker::start(d, &name, *body, &logs)
                .await
                .map(Running::Container),
            (Launch::Container { .. }, None) => Err("no docker client".to_string()),
        };
        let proc = match launched {
            Ok(p) => p,
            Err(detail) => {
                logs.push(&format!("infergate: {detail}"));
                self.finish(&id, ModelState::Failed, Some(detail), Stop::Halt)
                    .await;
                let _ = spawned.send(());
                return;
            }
        };
        let _ = spawned.send(());
        let (end, detail, how) = self.watch(&model, port, &key, proc, &mut stop).await;
        if let Some(d) = &detail {
            tracing::warn!(model = %id, detail = %d, "managed model failed");
            logs.push(&format!("infergate: {d}"));
        }
        self.finish(&id, end, detail, how).await;
    }

    /// After an engine is gone: record its end state, free its slot, and start it again when
    /// an apply asked for that (and no stop came since).
    async fn finish(
        self: &Arc<Self>,
        id: &str,
        end: ModelState,
        detail: Option<String>,
        how: Stop,
    ) {
        let restart = how == Stop::Restart
            && self
                .engines
                .lock()
                .is_ok_and(|e| e.get(id).is_some_and(|e| !e.halt));
        let detail = if restart {
            Some(RESTARTING.to_string())
        } else {
            detail
        };
        // The state is written before the slot is freed: a start that follows cannot have its
        // `starting` overwritten by this end.
        self.set(id, end, detail).await;
        self.release(id);
        if restart {
            let _ = self.restarts.send(id.to_string());
        }
    }

    /// Start again the models an apply restarted, as their old engines finish (a loop of its
    /// own, so that an engine's watcher never awaits a start itself).
    async fn restart_loop(me: std::sync::Weak<Self>, mut ids: mpsc::UnboundedReceiver<String>) {
        while let Some(id) = ids.recv().await {
            let Some(me) = me.upgrade() else { return };
            if let Err(e) = me.start(&id).await {
                me.set(
                    &id,
                    ModelState::Failed,
                    Some(format!("restart failed: {e}")),
                )
                .await;
            }
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
        stop: &mut oneshot::Receiver<Stop>,
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
        let mut tick = tokio::time::interval(PROBE_EVERY);
        let outcome = loop {
            // The probe is one branch among the others: an exit or a stop is never kept waiting
            // behind it.
            let probe = async {
                tick.tick().await;
                self.probe(port, key, served).await
            };
            tokio::select! {
                how = proc.wait() => {
                    let when = if state == ModelState::Running { "while running" } else { "before it was ready" };
                    break (ModelState::Failed, Some(format!("the engine {how} {when} (see its logs)")), Stop::Halt);
                }
                how = &mut *stop => {
                    let how = how.unwrap_or(Stop::Halt);
                    self.unroute(&url).await;
                    let _ = proc.stop(grace).await;
                    break (ModelState::Stopped, None, how);
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
                        self.route(served, &url, key).await;
                        self.set(id, ModelState::Running, None).await;
                        tracing::info!(model = %id, served = %served, port, "managed model is running and routed");
                    }
                    Probe::Loading(why) => {
                        state = ModelState::Loading;
                        self.set(id, ModelState::Loading, Some(why)).await;
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
    async fn set(&self, id: &str, state: ModelState, detail: Option<String>) {
        if let Err(e) = self
            .models
            .set_state(id, state, detail, Some(&self.node))
            .await
        {
            tracing::warn!(model = %id, state = state.as_str(), error = %e, "model state not recorded");
        }
    }

    /// At start-up: a record of this node that says its engine runs, while none does (the
    /// gateway restarted), is marked failed.
    /// `false` when the store could not be read (try again later).
    pub async fn reconcile(&self) -> bool {
        let Ok(models) = self.models.list(&Default::default()).await else {
            return false;
        };
        for m in models {
            let active = matches!(
                m.state,
                ModelState::Starting
                    | ModelState::Loading
                    | ModelState::Running
                    | ModelState::Stopping
            );
            let ours = m.node.as_deref() == Some(self.node.as_str());
            let runs = self.engines.lock().is_ok_and(|e| e.contains_key(&m.id));
            if active && ours && !runs {
                self.set(
                    &m.id,
                    ModelState::Failed,
                    Some(
                        "its engine is not running (the gateway restarted): start it again".into(),
                    ),
                )
                .await;
            }
        }
        true
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

/// Reconciles records with this node's engines at start, and stops every engine (gracefully,
/// and unrouted first) when the gateway shuts down.
pub struct LifecycleService {
    pub life: Arc<Lifecycle>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for LifecycleService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        // Until the store answers (it may be down when the gateway starts).
        while !self.life.reconcile().await {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return self.life.stop_all().await,
            }
        }
        let _ = shutdown.changed().await;
        self.life.stop_all().await;
    }
}
