//! The `infergate` binary: `serve`, `check-config`, `hash-secret`, `mock`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use infergate::config::{self, Config, Provider, ServerConfig};
use infergate::mock::{MockConfig, MockServer};
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
    },
    /// Validate a configuration file and exit (status 1 with the key and line at fault).
    CheckConfig { path: PathBuf },
    /// Print the SHA-256 of a secret read from stdin (one line), for
    /// `[[admin.credentials]] secret_sha256`.
    HashSecret,
    /// Run a mock vLLM server (for benchmarks and demos).
    Mock {
        #[arg(long, default_value = "127.0.0.1:8001")]
        listen: SocketAddr,
        /// Comma-separated model names.
        #[arg(long, default_value = "mock-model", value_delimiter = ',')]
        models: Vec<String>,
        #[arg(long, default_value = "mock")]
        name: String,
        #[arg(long, default_value_t = 0)]
        ttft_ms: u64,
        #[arg(long, default_value_t = 0)]
        itl_ms: u64,
        #[arg(long, default_value_t = 16)]
        tokens: usize,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
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
        Command::Serve { config, demo } => {
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
                return infergate::serve::run(cfg).context("infergate failed to start");
            }
            start_demo_backends(&mut cfg)?;
            infergate::serve::run_with(cfg, print_demo_key).context("infergate failed to start")
        }
        Command::Mock {
            listen,
            models,
            name,
            ttft_ms,
            itl_ms,
            tokens,
            threads,
        } => {
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
                    api_key: None,
                };
                let server = MockServer::start(listen, cfg)
                    .await
                    .context("mock cannot listen")?;
                tracing::info!(addr = %server.addr, "mock vLLM server listening");
                tokio::signal::ctrl_c().await?;
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

/// The demo's listeners: loopback only.
fn demo_defaults() -> Config {
    let mut c = Config::default();
    c.proxy.listen = "127.0.0.1:8080".into();
    c.admin.listen = "127.0.0.1:9090".into();
    c.health.interval_ms = 2_000;
    c
}

/// Start two mock servers on free loopback ports (on a thread of their own) and add them.
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
                    let mc = MockConfig {
                        name: name.into(),
                        models,
                        ttft: Duration::from_millis(150),
                        itl: Duration::from_millis(30),
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
