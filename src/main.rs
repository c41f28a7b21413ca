//! The `infergate` binary: `serve`, `upgrade`, `check-config`, `hash-secret`, `mock`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use infergate::config::{self, Config, Provider, ServerConfig};
use infergate::mock::{MockConfig, MockServer, SimConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// mimalloc: the data plane allocates small, short-lived buffers per request from several
/// threads; it measured faster than glibc malloc here (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "infergate",
    version,
    about = "An OpenAI-compatible gateway for vLLM, SGLang and speaches fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, env = "INFERGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Start two simulated backends on loopback and route the demo models to them.
        #[arg(long)]
        demo: bool,
        /// Take the listening sockets from the running gateway instead of binding them (a
        /// binary upgrade; `infergate upgrade` starts the new process with it).
        #[arg(long, conflicts_with = "demo")]
        upgrade: bool,
    },
    /// Upgrade a running gateway to this binary without dropping a request: start
    /// `infergate serve --upgrade` with the same configuration, hand the listening sockets
    /// over from the running one, which then drains and exits. Prints the new process's pid.
    Upgrade {
        /// The running gateway's process id (systemd: $MAINPID).
        #[arg(long)]
        pid: i32,
        /// Configuration file (TOML) for the new process; checked before anything starts.
        #[arg(long, env = "INFERGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (status 1 with the key and line at fault).
    CheckConfig { path: PathBuf },
    /// Print the SHA-256 of a secret read from stdin (one line), for
    /// `[[admin.credentials]] secret_sha256`.
    HashSecret,
    /// Run a mock vLLM server (for benchmarks and demos); with --sim, a simulated GPU running
    /// vLLM: a KV cache with prefix caching, continuous batching, prefill and decode times
    /// (docs/fleet-simulator.md).
    Mock {
        #[arg(long, default_value = "127.0.0.1:8001")]
        listen: SocketAddr,
        /// Comma-separated model names.
        #[arg(long, default_value = "mock-model", value_delimiter = ',')]
        models: Vec<String>,
        #[arg(long, default_value = "mock")]
        name: String,
        /// Delay before the first token (without --sim).
        #[arg(long, default_value_t = 0)]
        ttft_ms: u64,
        /// Delay between tokens (without --sim).
        #[arg(long, default_value_t = 0)]
        itl_ms: u64,
        /// Tokens generated when a request has no max_tokens.
        #[arg(long, default_value_t = 16)]
        tokens: usize,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Require this bearer (like vLLM's --api-key), read from the environment only.
        #[arg(
            long = "api-key-from-env",
            env = "INFERGATE_MOCK_API_KEY",
            hide_env_values = true
        )]
        api_key: Option<String>,
        /// `/health` answers 503 for this long after start (a model loading).
        #[arg(long, default_value_t = 0)]
        load_ms: u64,
        /// Exit with status 1 this long after start (an engine crashing); 0: never.
        #[arg(long, default_value_t = 0)]
        exit_after_ms: u64,
        /// KV-cache capacity in tokens (its use and the prefix cache's hits on /metrics; with
        /// --sim, the simulated GPU's KV cache).
        #[arg(long, default_value_t = 65_536)]
        kv_cache_tokens: u64,
        /// Simulate a GPU running vLLM V1 (the fleet simulator): the times come from the
        /// model below, not from --ttft-ms and --itl-ms.
        #[arg(long)]
        sim: bool,
        /// Tokens per KV-cache block, the prefix cache's unit (vLLM's --block-size).
        #[arg(long, default_value_t = SimConfig::default().block_tokens, requires = "sim")]
        sim_block_tokens: usize,
        /// Prefill time per uncached prompt token, in microseconds.
        #[arg(long, default_value_t = SimConfig::default().prefill_per_token.as_micros() as u64, requires = "sim")]
        sim_prefill_us_per_token: u64,
        /// Duration of a step that decodes (one token for every running request), in
        /// milliseconds (fractions allowed).
        #[arg(long, default_value_t = SimConfig::default().decode_per_step.as_secs_f64() * 1e3, requires = "sim")]
        sim_decode_ms_per_step: f64,
        /// Requests running at once at most; more wait (vLLM's --max-num-seqs).
        #[arg(long, default_value_t = SimConfig::default().max_num_seqs, requires = "sim")]
        sim_max_num_seqs: usize,
        /// Tokens computed in one step at most, the chunked prefill's budget (vLLM's
        /// --max-num-batched-tokens).
        #[arg(long, default_value_t = SimConfig::default().max_batched_tokens, requires = "sim")]
        sim_max_batched_tokens: usize,
        /// Take a request's `sim_assume_cached_tokens` prompt tokens as found in the prefix
        /// cache (the fleet benchmark's ideal-placement run).
        #[arg(long, requires = "sim")]
        sim_assume_cached_field: bool,
    },
    /// A stand-in for `vllm serve` (the demo's managed model): takes vLLM's command line,
    /// serves the mock under the served name, with the key in VLLM_API_KEY.
    #[command(hide = true)]
    MockEngine {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,pingora_core=warn,pingora=warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::CheckConfig { path } => {
            let c =
                config::load_file(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            tracing::info!(
                servers = c.servers.len(),
                "{}: configuration is valid",
                path.display()
            );
            Ok(())
        }
        Command::HashSecret => {
            use std::io::{BufRead, Write};
            let mut secret = String::new();
            std::io::stdin().lock().read_line(&mut secret)?;
            let secret = secret.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!secret.is_empty(), "no secret on stdin");
            writeln!(
                std::io::stdout(),
                "{}",
                infergate::identity::hash_secret_hex(secret)
            )?;
            Ok(())
        }
        Command::Upgrade { pid, config } => {
            let c = config::load_file(&config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            let socket = infergate::shutdown::upgrade::socket_path(&c.proxy.upgrade_sock);
            let exe = std::env::current_exe().context("where is this binary")?;
            let args = ["--config".into(), config.into_os_string()];
            let new = infergate::shutdown::upgrade::hand_over(&exe, &args, &socket, pid)
                .context("upgrade failed")?;
            tracing::info!(
                old = pid,
                new,
                "the new gateway holds the sockets; the old one drains"
            );
            use std::io::Write;
            writeln!(std::io::stdout(), "{new}")?;
            Ok(())
        }
        Command::Serve {
            config,
            demo,
            upgrade,
        } => {
            let start = infergate::serve::Start {
                upgrade,
                // The demo changes what it read (its servers, its runner): nothing to reload.
                config_path: config.clone().filter(|_| !demo),
            };
            let mut cfg = match &config {
                Some(p) => {
                    config::load_file(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                }
                None if demo => demo_defaults(),
                None => anyhow::bail!(
                    "no configuration: pass --config PATH (or INFERGATE_CONFIG), or --demo"
                ),
            };
            if !demo {
                return infergate::serve::run(cfg, start).context("infergate failed to start");
            }
            start_demo_backends(&mut cfg)?;
            demo_runner(&mut cfg)?;
            infergate::serve::run_with(cfg, start, |gw| {
                print_demo_key(gw);
                create_demo_model(gw);
            })
            .context("infergate failed to start")
        }
        Command::MockEngine { argv } => mock_engine(&argv),
        Command::Mock {
            listen,
            models,
            name,
            ttft_ms,
            itl_ms,
            tokens,
            threads,
            api_key,
            load_ms,
            exit_after_ms,
            kv_cache_tokens,
            sim,
            sim_block_tokens,
            sim_prefill_us_per_token,
            sim_decode_ms_per_step,
            sim_max_num_seqs,
            sim_max_batched_tokens,
            sim_assume_cached_field,
        } => {
            let sim = sim
                .then(|| -> anyhow::Result<SimConfig> {
                    anyhow::ensure!(
                        sim_block_tokens > 0 && sim_max_num_seqs > 0 && sim_max_batched_tokens > 0,
                        "--sim-block-tokens, --sim-max-num-seqs and --sim-max-batched-tokens must be positive"
                    );
                    anyhow::ensure!(
                        sim_decode_ms_per_step.is_finite() && sim_decode_ms_per_step >= 0.0,
                        "--sim-decode-ms-per-step must be a non-negative number"
                    );
                    Ok(SimConfig {
                        block_tokens: sim_block_tokens,
                        prefill_per_token: Duration::from_micros(sim_prefill_us_per_token),
                        decode_per_step: Duration::from_secs_f64(sim_decode_ms_per_step / 1e3),
                        max_num_seqs: sim_max_num_seqs,
                        max_batched_tokens: sim_max_batched_tokens,
                        assume_cached_field: sim_assume_cached_field,
                    })
                })
                .transpose()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()?;
            rt.block_on(async {
                let cfg = MockConfig {
                    name,
                    models,
                    ttft: Duration::from_millis(ttft_ms),
                    itl: Duration::from_millis(itl_ms),
                    default_tokens: tokens,
                    api_key,
                    kv_cache_tokens,
                    sim,
                };
                let server = MockServer::start(listen, cfg)
                    .await
                    .context("mock cannot listen")?;
                tracing::info!(addr = %server.addr, sim = ?server.state.config.sim, "mock vLLM server listening");
                if load_ms > 0 {
                    server.state.set_healthy(false);
                    let state = server.state.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(load_ms)).await;
                        state.set_healthy(true);
                        tracing::info!("mock model loaded");
                    });
                }
                let crash = async {
                    if exit_after_ms == 0 {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(Duration::from_millis(exit_after_ms)).await;
                };
                tokio::select! {
                    r = tokio::signal::ctrl_c() => r?,
                    _ = crash => {
                        tracing::error!("mock engine crashing as asked (--exit-after-ms)");
                        std::process::exit(1);
                    }
                }
                Ok(())
            })
        }
    }
}

/// The demo creates one key (every scope, and the ai_admin role) and prints its token on
/// standard output (not in the log): a ready credential for the data plane and the admin API.
fn print_demo_key(gw: &std::sync::Arc<infergate::gateway::Gateway>) {
    use std::io::Write;
    let created = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(gw.identity.create_key(infergate::identity::CreateKey {
                name: Some("demo".into()),
                roles: vec![infergate::admin::auth::AI_ADMIN.into()],
                ..Default::default()
            }))
            .map_err(|e| e.to_string())
        });
    match created {
        Ok(k) => {
            let _ = writeln!(
                std::io::stdout(),
                "demo API key (data plane and admin API):\n  export OPENAI_API_KEY={}\n  curl -H \"Authorization: Bearer $OPENAI_API_KEY\" ...",
                k.token
            );
        }
        Err(e) => tracing::error!(error = %e, "the demo key could not be created"),
    }
}

/// Serve the mock as vLLM would serve `argv` (`[serve] <model> --host H --port P
/// --served-model-name S ...`; other flags are accepted and ignored). `INFERGATE_MOCK_LOAD_MS`
/// in its environment makes it load that long (`/health` 503) before it is ready.
fn mock_engine(argv: &[String]) -> anyhow::Result<()> {
    let mut args = argv.iter().skip_while(|a| *a == "serve");
    let model = args.next().context("no model argument")?.clone();
    let (mut host, mut port, mut served) = ("127.0.0.1".to_string(), 8000u16, model.clone());
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--host" => host = args.next().context("--host needs a value")?.clone(),
            "--port" => port = args.next().context("--port needs a value")?.parse()?,
            "--served-model-name" => {
                served = args
                    .next()
                    .context("--served-model-name needs a value")?
                    .clone()
            }
            _ => {}
        }
    }
    tracing::info!("vLLM API server version 0.0.0-infergate-mock");
    tracing::info!("args: model='{model}' served_model_name=['{served}']");
    let listen: SocketAddr = format!("{host}:{port}").parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cfg = MockConfig {
            name: "mock-engine".into(),
            models: vec![served],
            api_key: std::env::var("VLLM_API_KEY").ok(),
            ..MockConfig::default()
        };
        let server = MockServer::start(listen, cfg)
            .await
            .context("mock engine cannot listen")?;
        // A model that takes this long to load: `/health` answers 503 until then.
        let load_ms: u64 = std::env::var("INFERGATE_MOCK_LOAD_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if load_ms > 0 {
            server.state.set_healthy(false);
            tokio::time::sleep(Duration::from_millis(load_ms)).await;
            server.state.set_healthy(true);
        }
        tracing::info!(addr = %server.addr, "Model loading took 0.00 GiB and {:.2} seconds", load_ms as f64 / 1000.0);
        tokio::signal::ctrl_c().await?;
        Ok(())
    })
}

/// The demo's managed model: the process runner with this binary's mock engine as `vllm`, and
/// a models directory under the temporary directory (unless the config has its own runner).
fn demo_runner(cfg: &mut Config) -> anyhow::Result<()> {
    if cfg.runner.kind != infergate::config::RunnerKind::None {
        return Ok(());
    }
    let dir = std::env::temp_dir().join("infergate-demo-models");
    std::fs::create_dir_all(dir.join("demo-managed"))?;
    std::fs::write(
        dir.join("demo-managed/README.txt"),
        "The demo's managed model: its engine is infergate's mock, which needs no weights.\n",
    )?;
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    cfg.runner.kind = infergate::config::RunnerKind::Process;
    cfg.runner.models_dir = dir;
    cfg.runner.vllm.command = vec![exe, "mock-engine".into()];
    cfg.runner.vllm.startup_timeout_secs = 30;
    Ok(())
}

/// The demo's managed model record (stopped: start it through the admin API).
fn create_demo_model(gw: &std::sync::Arc<infergate::gateway::Gateway>) {
    let models = infergate::lifecycle::ModelService::new(
        gw.store.clone(),
        gw.config.runner.models_dir.clone(),
    );
    let spec = infergate::lifecycle::ModelSpec {
        name: "Demo managed model".into(),
        served_model_name: "demo-managed".into(),
        local_path: Some("demo-managed".into()),
        ..Default::default()
    };
    let created = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(models.create(spec)).map_err(|e| e.to_string()));
    match created {
        Ok(m) => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stdout(),
                "demo managed model {} (stopped): curl -X POST -H \"Authorization: Bearer $OPENAI_API_KEY\" localhost:9090/admin/models/{}/start",
                m.id, m.id
            );
        }
        Err(e) => tracing::warn!(error = %e, "the demo's managed model was not created"),
    }
}

/// The demo's listeners: loopback only.
fn demo_defaults() -> Config {
    let mut c = Config::default();
    c.proxy.listen = "127.0.0.1:8080".into();
    c.admin.listen = "127.0.0.1:9090".into();
    c.health.interval_ms = 2_000;
    c
}

/// Start two simulated vLLM servers on free loopback ports (on a thread of their own) and add
/// them.
fn start_demo_backends(cfg: &mut Config) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("demo-backends".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut servers = Vec::new();
                for (name, models) in [
                    (
                        "demo-a",
                        vec!["demo-chat".to_string(), "demo-embed".to_string()],
                    ),
                    ("demo-b", vec!["demo-chat".to_string()]),
                ] {
                    // Simulated GPUs (docs/fleet-simulator.md): a repeated prefix is
                    // served sooner, and /metrics shows the prefix cache, the batch and the
                    // queue as vLLM's would.
                    let mc = MockConfig {
                        name: name.into(),
                        models,
                        sim: Some(SimConfig::default()),
                        ..MockConfig::default()
                    };
                    let s = MockServer::start("127.0.0.1:0".parse().expect("addr"), mc)
                        .await
                        .expect("bind demo backend");
                    servers.push(s);
                }
                let _ = tx.send(
                    servers
                        .iter()
                        .map(|s| (s.url(), s.state.config.models.clone()))
                        .collect::<Vec<_>>(),
                );
                std::future::pending::<()>().await;
            });
        })?;
    let backends = rx
        .recv_timeout(Duration::from_secs(10))
        .context("demo backends did not start")?;
    for (url, models) in backends {
        tracing::info!(%url, ?models, "demo backend");
        cfg.servers.push(ServerConfig {
            url,
            provider: Provider::Vllm,
            models,
            api_key_env: None,
        });
    }
    Ok(())
}
