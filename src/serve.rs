//! Process assembly: one Pingora server holding the data-plane listener, the health checker
//! and the admin service, each on its own threads.

use crate::admin::AdminService;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::health::HealthChecker;
use crate::proxy::ProxyApp;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Gateway(#[from] crate::gateway::GatewayError),
    #[error(transparent)]
    Probe(#[from] crate::health::ProbeSetupError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminSetupError),
    #[error("cannot start the model lifecycle thread: {0}")]
    Lifecycle(std::io::Error),
    #[error("{key}: {source}")]
    Tls {
        key: &'static str,
        source: crate::tls::TlsError,
    },
    #[error(transparent)]
    Upgrade(#[from] crate::shutdown::upgrade::UpgradeError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen {
        addr: String,
        key: &'static str,
        source: std::io::Error,
    },
}

/// How the gateway starts.
#[derive(Debug, Clone, Default)]
pub struct Start {
    /// Take the listening sockets from the running gateway (binary upgrade,
    /// [`crate::shutdown::upgrade`]) instead of binding them.
    pub upgrade: bool,
    /// The file the configuration was read from (what a reload reads again); None: `--demo`.
    pub config_path: Option<std::path::PathBuf>,
}

/// Run the gateway until it is signalled to stop (SIGTERM: a drain, SIGQUIT: an upgrade,
/// SIGINT: at once; see [`crate::shutdown`]).
pub fn run(config: Config, start: Start) -> Result<(), ServeError> {
    run_with(config, start, |_| {})
}

/// [`run`], calling `before_serving` with the gateway's state once it is built (the demo
/// creates its key there).
pub fn run_with(
    config: Config,
    start: Start,
    before_serving: impl FnOnce(&std::sync::Arc<Gateway>),
) -> Result<(), ServeError> {
    let upgrade_sock = crate::shutdown::upgrade::socket_path(&config.proxy.upgrade_sock);
    let admin_listener = if start.upgrade {
        // The running gateway holds both ports: they come over the upgrade socket, whose
        // directory must be safe to receive them in.
        crate::shutdown::upgrade::prepare(&upgrade_sock)?;
        None
    } else {
        // Fail early and clearly when a port is taken (Pingora would abort later).
        let admin = bind(&config.admin.listen, "admin.listen")?;
        drop(bind(&config.proxy.listen, "proxy.listen")?);
        if let Err(e) = crate::shutdown::upgrade::prepare(&upgrade_sock) {
            tracing::warn!(error = %e, "binary upgrades will be refused");
        }
        Some(admin)
    };
    let gw = Gateway::new(config)?;
    gw.apply_config(crate::reload::started(
        gw.config.clone(),
        start.config_path.clone(),
    ));
    before_serving(&gw);
    load_keys(&gw);
    agree_prefix_seed(&gw);
    let cfg = &gw.config;
    let conf = ServerConf {
        threads: cfg.proxy.threads,
        // The drain is ours (`shutdown`): the grace period runs before Pingora's shutdown
        // starts, and the process exits as soon as what was in flight is done. Pingora's own
        // wait after its shutdown starts only bounds a drain that could not finish.
        grace_period_seconds: Some(
            cfg.proxy.graceful_shutdown_timeout_seconds
                + cfg.runner.stop_grace_secs
                + cfg.usage.exit_flush_secs
                + crate::shutdown::HARD_STOP_MARGIN_SECS,
        ),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: cfg.proxy.pool_size,
        ca_file: cfg.proxy.ca_file.clone(),
        upgrade_sock: upgrade_sock.to_string_lossy().into_owned(),
        // One current-thread runtime per worker: cheaper per request than work stealing.
        work_stealing: false,
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade: start.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);

    // TLS, when set, is the app's: it shakes hands once a connection is admitted, within the
    // header timeout (Pingora's listener would allow 60 s, before any limit applies).
    let proxy_tls = watched_cert(
        &cfg.proxy.tls_cert,
        &cfg.proxy.tls_key,
        "proxy",
        "proxy.tls_cert",
    )?
    .map(|cert| crate::tls::listener_settings(cert).build());
    let mut proxy = Service::new(
        "infergate proxy".into(),
        ProxyApp::new(gw.clone()).with_tls(proxy_tls),
    );
    // The data plane buffers reads and assembles writes itself (`proxy::h1`), so the
    // listener's streams are unbuffered.
    proxy.add_listener(
        ListenerConfig::tcp(cfg.proxy.listen.clone()).l4_buffer(L4BufferSettings::unbuffered()),
    );
    proxy.threads = Some(cfg.proxy.threads);

    let mut health = background_service("health", HealthChecker::new(gw.clone())?);
    health.threads = Some(1);
    let life = crate::lifecycle::Lifecycle::new(gw.clone()).map_err(ServeError::Lifecycle)?;
    let monitor = crate::monitoring::Monitor::new(
        gw.clone(),
        life.clone(),
        std::sync::Arc::new(crate::gpu::Nvml::load()),
        crate::health::server_client(&gw.config)?,
    );
    let admin_tls = watched_cert(
        &cfg.admin.tls_cert,
        &cfg.admin.tls_key,
        "admin",
        "admin.tls_cert",
    )?
    .map(crate::tls::acceptor);
    let admin = AdminService::new(gw.clone(), life.clone(), monitor.clone(), admin_listener)?
        .with_tls(admin_tls);
    // Managed engines are spawned and watched on this service's one thread.
    let tenancy = crate::shutdown::upgrade::Tenancy::new(&upgrade_sock);
    let after = match start.upgrade {
        true => {
            life.await_tenancy();
            Some(tenancy)
        }
        false => {
            if !tenancy.try_take() {
                tracing::warn!("another gateway holds this upgrade directory's lock; set [proxy] upgrade_sock per gateway");
            }
            None
        }
    };
    let mut lifecycle = background_service(
        "lifecycle",
        crate::lifecycle::LifecycleService { life, after },
    );
    lifecycle.threads = Some(1);

    tracing::info!(
        proxy = %cfg.proxy.listen,
        admin = %cfg.admin.listen,
        servers = cfg.servers.len(),
        upgrade = start.upgrade,
        "infergate starting"
    );
    server.add_service(proxy);
    server.add_service(health);
    server.add_service(admin);
    server.add_service(lifecycle);
    let mut demand = background_service(
        "demand",
        crate::telemetry::demand_flush::DemandService { gw: gw.clone() },
    );
    demand.threads = Some(1);
    server.add_service(demand);
    let mut registry = background_service(
        "registry",
        crate::routing::registry_sync::RegistrySync { gw: gw.clone() },
    );
    registry.threads = Some(1);
    server.add_service(registry);
    let mut identity = background_service(
        "identity",
        crate::identity::sync::IdentitySync { gw: gw.clone() },
    );
    identity.threads = Some(1);
    server.add_service(identity);
    let mut usage = background_service("usage", crate::usage::UsageService { gw: gw.clone() });
    usage.threads = Some(1);
    server.add_service(usage);
    let mut audit = background_service("audit", crate::audit::AuditService { gw: gw.clone() });
    audit.threads = Some(1);
    server.add_service(audit);
    let mut limits = background_service(
        "limits",
        crate::identity::limits::LimitSync { gw: gw.clone() },
    );
    limits.threads = Some(1);
    server.add_service(limits);
    let mut monitoring = background_service(
        "monitoring",
        crate::monitoring::MonitoringService { monitor },
    );
    monitoring.threads = Some(1);
    server.add_service(monitoring);
    let mut prefix = background_service(
        "prefix index",
        crate::routing::prefix::pools::PrefixMaintenance { gw: gw.clone() },
    );
    prefix.threads = Some(1);
    server.add_service(prefix);
    let mut drain = background_service("drain", crate::shutdown::DrainService { gw: gw.clone() });
    drain.threads = Some(1);
    server.add_service(drain);
    // In an upgrade, this takes the running gateway's sockets (or exits when none come): last,
    // after everything that could fail, so that a new process that takes them serves them.
    server.bootstrap();
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(crate::shutdown::Signals { gw }),
    });
    Ok(())
}

/// Bind `addr` (the setting `key`), or say which setting cannot be served.
fn bind(addr: &str, key: &'static str) -> Result<std::net::TcpListener, ServeError> {
    std::net::TcpListener::bind(addr).map_err(|source| ServeError::Listen {
        addr: addr.to_string(),
        key,
        source,
    })
}

/// A listener's certificate, loaded (or the start fails) and watched for changes; None when
/// the listener speaks plain HTTP.
fn watched_cert(
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
    listener: &'static str,
    setting: &'static str,
) -> Result<Option<std::sync::Arc<crate::tls::ReloadingCert>>, ServeError> {
    let Some(files) = crate::config::tls_files(cert, key) else {
        return Ok(None);
    };
    let cert = crate::tls::ReloadingCert::load(files).map_err(|source| ServeError::Tls {
        key: setting,
        source,
    })?;
    cert.watch(listener);
    Ok(Some(cert))
}

/// Take the prefix hashes' seed the other instances use before serving, so that the first
/// prompts routed by prefix hash as theirs do (with the store down, this instance's own until
/// the store answers: the sharing loop checks again).
fn agree_prefix_seed(gw: &std::sync::Arc<Gateway>) {
    if gw.routing_share.is_none() {
        return;
    }
    let agreed = before_serving_run(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(3),
            crate::routing::prefix::seed::agree(&*gw.store, &gw.prefix_seed, &gw.prefix),
        )
        .await
        .map_err(|_| "the store did not answer within 3 s".to_string())?
        .map_err(|e| e.to_string())
    });
    if let Err(e) = agreed {
        tracing::warn!(error = %e, "prefix hash seed not agreed yet: this instance's own until the store answers");
    }
}

/// Run `work` to its end on a runtime of its own, before the server's runtimes exist.
fn before_serving_run<T>(
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(work)
}

/// Load the API keys before serving, so that the first requests are checked against them.
fn load_keys(gw: &std::sync::Arc<Gateway>) {
    let loaded = before_serving_run(async {
        crate::identity::sync::reload(gw)
            .await
            .map_err(|e| e.to_string())
    });
    match loaded {
        Ok(n) => tracing::info!(keys = n, "API keys loaded"),
        Err(e) => tracing::error!(
            error = %e,
            "API keys not loaded yet (requests that need a key are refused until they are)"
        ),
    }
}
