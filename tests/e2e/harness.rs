//! Test harness: the real `infergate` binary as a child process, real mock vLLM servers on
//! loopback, ports from binding port 0.
#![allow(dead_code)]

use infergate::mock::{MockConfig, MockServer};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound to port 0, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("addr")
        .port()
}

/// An address where nothing listens.
pub fn dead_url() -> String {
    format!("http://127.0.0.1:{}/v1", free_port())
}

pub async fn mock(name: &str, models: &[&str]) -> MockServer {
    mock_with(MockConfig {
        name: name.into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        ..MockConfig::default()
    })
    .await
}

pub async fn mock_with(config: MockConfig) -> MockServer {
    MockServer::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("start mock")
}

/// A `[[servers]]` block.
pub fn server(url: &str, models: &[&str]) -> String {
    let models = models
        .iter()
        .map(|m| format!("{m:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[[servers]]\nurl = {url:?}\nprovider = \"vllm\"\nmodels = [{models}]\n\n")
}

/// The admin credential every test gateway gets from its environment.
pub const ADMIN_KEY: &str = "test-admin";
pub const ADMIN_SECRET: &str = "test-admin-secret";

/// A running gateway process; killed on drop.
pub struct Gateway {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
    /// The CA of the listeners' certificate (for `localhost`) when they speak TLS.
    tls_ca: Option<String>,
}

impl Gateway {
    /// Start the gateway with `extra` TOML (servers, overrides) after the test defaults.
    pub async fn start(extra: &str) -> Gateway {
        Self::start_with_env(extra, &[]).await
    }

    pub async fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Gateway {
        Self::launch(extra, env, false, &[]).await
    }

    /// Both listeners over TLS with a certificate for `localhost` signed by `ca_pem` (`extra`
    /// sets the tls_cert and tls_key keys).
    pub async fn start_tls(extra: &str, ca_pem: &str) -> Gateway {
        for _ in 0..3 {
            if let Some(gw) = Self::try_launch(extra, &[], false, &[], Some(ca_pem)).await {
                return gw;
            }
        }
        panic!("the gateway did not start on three sets of free ports");
    }

    /// A client for this gateway: trusting its CA and reaching `localhost` on loopback.
    pub fn client(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .resolve("localhost", self.proxy)
            .resolve("localhost", self.admin);
        if let Some(ca) = &self.tls_ca {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap());
        }
        b.build().unwrap()
    }

    /// `http(s)://localhost:<port>` of a listener.
    pub fn base(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://localhost:{}", addr.port())
    }

    /// Like [`Self::start_with_env`], logging at info level into a file that [`Self::log`]
    /// reads.
    pub async fn start_logged(extra: &str, env: &[(&str, &str)]) -> Gateway {
        Self::launch(extra, env, true, &[]).await
    }

    /// What the gateway has logged so far (after [`Self::start_logged`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// `serve --demo` with the test configuration (its ports) and `extra`.
    pub async fn start_demo(extra: &str) -> Gateway {
        Self::launch(extra, &[], false, &["--demo"]).await
    }

    async fn launch(extra: &str, env: &[(&str, &str)], capture: bool, args: &[&str]) -> Gateway {
        // A port free when chosen can be taken (by another test's server) before the gateway
        // binds it: the gateway then exits, or something else answers. Try fresh ports.
        for _ in 0..3 {
            if let Some(gw) = Self::try_launch(extra, env, capture, args, None).await {
                return gw;
            }
        }
        panic!("the gateway did not start on three sets of free ports");
    }

    async fn try_launch(
        extra: &str,
        env: &[(&str, &str)],
        capture: bool,
        args: &[&str],
        tls_ca: Option<&str>,
    ) -> Option<Gateway> {
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(
            proxy,
            admin,
            &dir.path().join("upgrade").join("upgrade.sock"),
            extra,
        );
        let path = dir.path().join("infergate.toml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(config.as_bytes())
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_infergate"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if capture {
            let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
            cmd.env("RUST_LOG", "info").stderr(log);
        }
        cmd.env("INFERGATE_ADMIN_API_KEY", ADMIN_KEY)
            .env("INFERGATE_ADMIN_API_SECRET", ADMIN_SECRET);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn infergate");
        let mut gw = Gateway {
            child,
            proxy,
            admin,
            _dir: dir,
            tls_ca: tls_ca.map(str::to_string),
        };
        gw.wait_ready().await.then_some(gw)
    }

    /// Whether this gateway (not another server that took one of its ports) answers on both.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = self.client();
        let ours = |r: Result<reqwest::Response, reqwest::Error>| async move {
            match r {
                Ok(r) => r.text().await.is_ok_and(|t| t == r#"{"status":"ok"}"#),
                Err(_) => false,
            }
        };
        loop {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            let admin_ok = ours(
                client
                    .get(format!("{}/health", self.base(self.admin)))
                    .send()
                    .await,
            )
            .await;
            let proxy_ok = ours(
                client
                    .get(format!("{}/health", self.base(self.proxy)))
                    .send()
                    .await,
            )
            .await;
            if admin_ok && proxy_ok {
                return true;
            }
            assert!(Instant::now() < deadline, "gateway did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An admin API request (`path` under the admin port) with the admin bearer.
    pub fn admin(
        &self,
        c: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        c.request(method, format!("http://{}{path}", self.admin))
            .bearer_auth(format!("{ADMIN_KEY}:{ADMIN_SECRET}"))
    }

    /// GET an admin path with the admin bearer; (status, JSON body).
    pub async fn admin_get(&self, c: &reqwest::Client, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .admin(c, reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }

    /// Ask for a configuration reload (`POST /admin/config/reload`); (status, JSON body).
    pub async fn reload(&self, c: &reqwest::Client) -> (u16, serde_json::Value) {
        let r = self
            .admin(c, reqwest::Method::POST, "/admin/config/reload")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }

    /// POST a chat completion through the gateway.
    pub async fn chat(&self, c: &reqwest::Client, body: &serde_json::Value) -> reqwest::Response {
        c.post(self.url("/v1/chat/completions"))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub async fn metrics(&self) -> String {
        self.client()
            .get(format!("{}/metrics", self.base(self.admin)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one metric sample, by its name and labels as printed (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }
}

impl Gateway {
    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration file it was started with.
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("infergate.toml")
    }

    /// Send the gateway process a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the gateway");
    }

    /// The gateway's exit status, if it exits within `within`.
    pub async fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL the gateway (no graceful shutdown), and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The test defaults, with `proxy.key = value` and `health.key = value` lines of `extra`
/// overriding them; the other lines of `extra` (servers) follow.
fn test_config(
    proxy: SocketAddr,
    admin: SocketAddr,
    upgrade_sock: &std::path::Path,
    extra: &str,
) -> String {
    let mut tables: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "proxy",
            vec![
                ("listen".into(), format!("\"{proxy}\"")),
                // Each gateway its own (the default is one per user).
                (
                    "upgrade_sock".into(),
                    format!("{:?}", upgrade_sock.display().to_string()),
                ),
                ("threads".into(), "1".into()),
                ("grace_period_seconds".into(), "0".into()),
                ("graceful_shutdown_timeout_seconds".into(), "1".into()),
            ],
        ),
        ("admin", vec![("listen".into(), format!("\"{admin}\""))]),
        // Each gateway its own spool (the default is one per user, shared).
        (
            "usage",
            vec![(
                "spool_dir".into(),
                format!(
                    "{:?}",
                    upgrade_sock
                        .parent()
                        .and_then(|d| d.parent())
                        .unwrap_or(upgrade_sock)
                        .join("spool")
                        .display()
                        .to_string()
                ),
            )],
        ),
        // Data-plane keys are tested on their own (tests/e2e/identity.rs).
        ("auth", vec![("proxy".into(), "\"off\"".into())]),
        // (Tests set routing.* lines; the default policy is the config's own.)
        ("routing", vec![]),
        (
            "health",
            vec![
                ("interval_ms".into(), "200".into()),
                ("timeout_ms".into(), "500".into()),
                ("unhealthy_threshold".into(), "2".into()),
                ("healthy_threshold".into(), "2".into()),
                // Tests of passive ejection set their own wait (chaos.rs).
                ("passive_ejection_ms".into(), "0".into()),
            ],
        ),
    ];
    let mut rest = String::new();
    for line in extra.lines() {
        let table = tables
            .iter_mut()
            .find(|(t, _)| line.strip_prefix(t).is_some_and(|r| r.starts_with('.')));
        match (table, line.split_once('=')) {
            (Some((t, keys)), Some((k, v))) => {
                let k = k.trim()[t.len() + 1..].to_string();
                keys.retain(|(key, _)| *key != k);
                keys.push((k, v.trim().to_string()));
            }
            _ => {
                rest.push_str(line);
                rest.push('\n');
            }
        }
    }
    let mut out = String::new();
    for (t, keys) in tables {
        out.push_str(&format!("[{t}]\n"));
        for (k, v) in keys {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out.push('\n');
    }
    out + &rest
}

/// Poll `f` until it is true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn chat_body(model: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
}

/// A mock vLLM server as a separate process (`infergate mock`), for kill-and-restart tests.
pub struct MockProcess {
    child: Child,
}

impl MockProcess {
    pub async fn start(port: u16, name: &str, models: &str) -> MockProcess {
        Self::start_with(port, name, models, &[]).await
    }

    /// With more `infergate mock` arguments (`--ttft-ms`, `--itl-ms`, ...).
    pub async fn start_with(port: u16, name: &str, models: &str, args: &[&str]) -> MockProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_infergate"))
            .args([
                "mock",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--name",
                name,
                "--models",
                models,
            ])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn mock");
        let ready = eventually(Duration::from_secs(10), || async move {
            reqwest::get(format!("http://127.0.0.1:{port}/health"))
                .await
                .is_ok()
        })
        .await;
        assert!(ready, "mock process did not start");
        MockProcess { child }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real `redis-server` (Valkey's protocol) on a free loopback port, killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    cluster: bool,
    /// Every write on disk before its reply (appendfsync always): a restart keeps the data.
    durable: bool,
}

impl Redis {
    pub async fn start() -> Redis {
        Self::start_on(free_port(), false).await
    }

    pub async fn start_on(port: u16, cluster: bool) -> Redis {
        let mut r = Redis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            cluster,
            durable: false,
        };
        r.restart().await;
        r
    }

    /// A redis-server whose data survives [`Self::restart`] (an append-only file).
    pub async fn start_durable() -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            cluster: false,
            durable: true,
        };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Start (again) on the same port, with no data (unless durable).
    pub async fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            if self.durable { "yes" } else { "no" },
            "--appendfsync",
            "always",
        ])
        .arg("--dir")
        .arg(self.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{}.conf", self.port),
            ]);
        }
        self.child = Some(
            cmd.spawn()
                .expect("redis-server must be installed (apt-get install redis-server)"),
        );
        let port = self.port;
        let up = eventually(Duration::from_secs(10), || async move {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(up, "redis-server did not start");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c).await.unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sleep into a minute with at least `need` seconds left of it.
pub async fn fresh_minute(need: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let left = 60_000 - now % 60_000;
    if left < need * 1000 {
        tokio::time::sleep(Duration::from_millis(left + 100)).await;
    }
}

/// The two prefixes the admin API is served under.
pub const PREFIXES: [&str; 2] = ["/api/ai/v1/admin", "/admin"];

/// Every error answer has the body and the x-error / x-error-id headers; returns the id.
pub async fn assert_error(
    r: reqwest::Response,
    status: u16,
    error: &str,
) -> (String, serde_json::Value) {
    assert_eq!(r.status().as_u16(), status, "status of {}", r.url());
    let x_error = r.headers()["x-error"].to_str().unwrap().to_string();
    let id = r.headers()["x-error-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "x-error-id is 32 hex digits");
    let body: serde_json::Value = r.json().await.unwrap();
    if let Some(e) = body.get("error") {
        assert_eq!(e, error, "body error");
    }
    assert_eq!(x_error, error, "x-error names the error");
    (id, body)
}

/// An admin API call with the admin bearer: (status, JSON body); every error carries an
/// x-error-id.
pub async fn admin_call(
    gw: &Gateway,
    c: &reqwest::Client,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = gw.admin(c, method, path);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    if status >= 400 {
        assert!(
            r.headers().get("x-error-id").is_some(),
            "errors carry x-error-id"
        );
    }
    (status, r.json().await.unwrap_or_default())
}
