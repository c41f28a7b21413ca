//! Reading and validating a configuration file. Every error names the key and, when the key is in
//! the file, the line it stands on.

use super::schema::Config;
use std::net::SocketAddr;
use std::path::Path;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Syntax(String),
    #[error("{key}{at}: {message}")]
    Invalid {
        key: String,
        at: String,
        message: String,
    },
}

/// Read and validate the file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_str(&text)
}

/// Parse and validate configuration text.
pub fn parse_str(text: &str) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
    Validator { text, errors: None }.check(&config)?;
    Ok(config)
}

fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| format!("line {}: ", line_of_offset(text, s.start)))
        .unwrap_or_default();
    ConfigError::Syntax(format!("{line}{}", e.message()))
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A key path such as `servers[1].url`, as segments.
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

struct Validator<'a> {
    text: &'a str,
    errors: Option<ConfigError>,
}

impl Validator<'_> {
    fn check(mut self, c: &Config) -> Result<(), ConfigError> {
        use Seg::*;
        self.addr(&[Key("proxy"), Key("listen")], &c.proxy.listen);
        self.addr(&[Key("admin"), Key("listen")], &c.admin.listen);
        let positive: [(&str, &str, u64); 29] = [
            ("admin", "header_timeout_secs", c.admin.header_timeout_secs),
            ("admin", "max_connections", c.admin.max_connections as u64),
            (
                "admin",
                "auth_failures_window_secs",
                c.admin.auth_failures_window_secs,
            ),
            ("admin", "auth_block_secs", c.admin.auth_block_secs),
            ("proxy", "header_timeout_secs", c.proxy.header_timeout_secs),
            ("proxy", "body_timeout_secs", c.proxy.body_timeout_secs),
            (
                "proxy",
                "keepalive_timeout_secs",
                c.proxy.keepalive_timeout_secs,
            ),
            ("proxy", "max_connections", c.proxy.max_connections as u64),
            (
                "monitoring",
                "sample_interval_secs",
                c.monitoring.sample_interval_secs,
            ),
            (
                "monitoring",
                "history_minutes",
                c.monitoring.history_minutes,
            ),
            (
                "monitoring",
                "scrape_timeout_ms",
                c.monitoring.scrape_timeout_ms,
            ),
            (
                "monitoring",
                "scrape_concurrency",
                c.monitoring.scrape_concurrency as u64,
            ),
            (
                "proxy",
                "client_read_buffer_bytes",
                c.proxy.client_read_buffer_bytes as u64,
            ),
            ("proxy", "threads", c.proxy.threads as u64),
            ("proxy", "max_body_bytes", c.proxy.max_body_bytes as u64),
            ("proxy", "connect_timeout_ms", c.proxy.connect_timeout_ms),
            ("proxy", "read_timeout_secs", c.proxy.read_timeout_secs),
            ("proxy", "write_timeout_secs", c.proxy.write_timeout_secs),
            ("admin", "threads", c.admin.threads as u64),
            ("usage", "retention_hours", c.usage.retention_hours),
            (
                "usage",
                "memory_max_records",
                c.usage.memory_max_records as u64,
            ),
            ("usage", "max_scan_records", c.usage.max_scan_records as u64),
            ("audit", "retention_hours", c.audit.retention_hours),
            (
                "audit",
                "memory_max_records",
                c.audit.memory_max_records as u64,
            ),
            ("audit", "max_scan_records", c.audit.max_scan_records as u64),
            ("affinity", "ttl_minutes", c.affinity.ttl_minutes),
            ("health", "timeout_ms", c.health.timeout_ms),
            (
                "health",
                "unhealthy_threshold",
                c.health.unhealthy_threshold as u64,
            ),
            (
                "health",
                "healthy_threshold",
                c.health.healthy_threshold as u64,
            ),
        ];
        for (table, key, value) in positive {
            if value == 0 {
                self.fail(&[Key(table), Key(key)], "must be at least 1".into());
            }
        }
        let r = &c.routing;
        if !(1..=crate::routing::prefix::MAX_BLOCK_BYTES).contains(&r.block_bytes) {
            self.fail(
                &[Key("routing"), Key("block_bytes")],
                format!(
                    "must be 1 to {} (bytes of prompt per block)",
                    crate::routing::prefix::MAX_BLOCK_BYTES
                ),
            );
        }
        if !(1..=crate::routing::prefix::MAX_CHAIN_BLOCKS).contains(&r.max_blocks) {
            self.fail(
                &[Key("routing"), Key("max_blocks")],
                format!(
                    "must be 1 to {} (blocks of a prompt indexed)",
                    crate::routing::prefix::MAX_CHAIN_BLOCKS
                ),
            );
        }
        if r.server_cache_tokens == 0 {
            self.fail(
                &[Key("routing"), Key("server_cache_tokens")],
                "must be at least 1 (tokens of a server's KV cache)".into(),
            );
        }
        if !(1024..=1 << 30).contains(&r.index_max_entries) {
            self.fail(
                &[Key("routing"), Key("index_max_entries")],
                "must be 1024 to 1073741824 (entries of 16 bytes per model)".into(),
            );
        }
        if !(r.balance_rel.is_finite() && r.balance_rel >= 1.0) {
            self.fail(
                &[Key("routing"), Key("balance_rel")],
                format!("must be a number of at least 1.0, got {}", r.balance_rel),
            );
        }
        if !(r.balance_share == 0.0 || (1.0..=100.0).contains(&r.balance_share)) {
            self.fail(
                &[Key("routing"), Key("balance_share")],
                format!(
                    "must be 0 (no bound) or 1.0 to 100.0, got {}",
                    r.balance_share
                ),
            );
        }
        if c.proxy.max_retries >= crate::proxy::MAX_ATTEMPTS {
            self.fail(
                &[Key("proxy"), Key("max_retries")],
                format!("must be at most {}", crate::proxy::MAX_ATTEMPTS - 1),
            );
        }
        if c.health.interval_ms < 100 {
            self.fail(
                &[Key("health"), Key("interval_ms")],
                "must be at least 100 (milliseconds)".into(),
            );
        }
        if !c.usage.spool_dir.is_empty() && !std::path::Path::new(&c.usage.spool_dir).is_absolute()
        {
            self.fail(
                &[Key("usage"), Key("spool_dir")],
                format!("must be an absolute path, got {:?}", c.usage.spool_dir),
            );
        }
        if c.usage.exit_flush_secs > 3_600 {
            self.fail(
                &[Key("usage"), Key("exit_flush_secs")],
                "must be at most 3600 (seconds)".into(),
            );
        }
        if c.health.passive_ejection_ms > 300_000 {
            self.fail(
                &[Key("health"), Key("passive_ejection_ms")],
                "must be at most 300000 (five minutes; doubled up to 8x)".into(),
            );
        }
        if !c.health.path.starts_with('/') {
            self.fail(
                &[Key("health"), Key("path")],
                format!("must start with '/', got {:?}", c.health.path),
            );
        }
        let scheme_ok = c.store.url == "memory://"
            || ["redis://", "rediss://", "valkey://", "valkeys://"]
                .iter()
                .any(|s| c.store.url.starts_with(s));
        if !scheme_ok {
            self.fail(
                &[Key("store"), Key("url")],
                format!(
                    "unsupported store {:?}: use \"memory://\" or a redis:// or rediss:// URL",
                    c.store.url
                ),
            );
        } else if c.store.cluster && !c.store.is_valkey() {
            self.fail(
                &[Key("store"), Key("cluster")],
                "needs a redis:// url (a seed node of the cluster)".into(),
            );
        }
        if c.store.prefix.is_empty() || c.store.prefix.contains(['{', '}']) {
            self.fail(
                &[Key("store"), Key("prefix")],
                "must be non-empty and contain no '{' or '}' (they are hash tags)".into(),
            );
        }
        for (table, cert, key) in [
            ("proxy", &c.proxy.tls_cert, &c.proxy.tls_key),
            ("admin", &c.admin.tls_cert, &c.admin.tls_key),
        ] {
            if cert.is_some() != key.is_some() {
                let missing = if cert.is_some() {
                    "tls_key"
                } else {
                    "tls_cert"
                };
                self.fail(
                    &[Key(table), Key(missing)],
                    "tls_cert and tls_key are set together".into(),
                );
            }
        }
        for (table, key, value, max) in [
            (
                "monitoring",
                "sample_interval_secs",
                c.monitoring.sample_interval_secs,
                3600,
            ),
            (
                "monitoring",
                "history_minutes",
                c.monitoring.history_minutes,
                1440,
            ),
            (
                "monitoring",
                "scrape_interval_secs",
                c.monitoring.scrape_interval_secs,
                3600,
            ),
            (
                "proxy",
                "header_timeout_secs",
                c.proxy.header_timeout_secs,
                86_400,
            ),
            (
                "proxy",
                "body_timeout_secs",
                c.proxy.body_timeout_secs,
                86_400,
            ),
            (
                "proxy",
                "keepalive_timeout_secs",
                c.proxy.keepalive_timeout_secs,
                86_400,
            ),
            (
                "admin",
                "auth_failures_window_secs",
                c.admin.auth_failures_window_secs,
                86_400,
            ),
            ("admin", "auth_block_secs", c.admin.auth_block_secs, 86_400),
            (
                "admin",
                "header_timeout_secs",
                c.admin.header_timeout_secs,
                86_400,
            ),
            (
                "admin",
                "max_connections",
                c.admin.max_connections as u64,
                1_000_000,
            ),
            (
                "proxy",
                "grace_period_seconds",
                c.proxy.grace_period_seconds,
                86_400,
            ),
            (
                "proxy",
                "graceful_shutdown_timeout_seconds",
                c.proxy.graceful_shutdown_timeout_seconds,
                86_400,
            ),
            ("auth", "max_stale_secs", c.auth.max_stale_secs, 86_400),
        ] {
            if value > max {
                self.fail(&[Key(table), Key(key)], format!("must be at most {max}"));
            }
        }
        let sock = &c.proxy.upgrade_sock;
        if !sock.is_empty() {
            if !sock.starts_with('/') {
                self.fail(
                    &[Key("proxy"), Key("upgrade_sock")],
                    "must be an absolute path".into(),
                );
            } else if sock.len() > crate::shutdown::upgrade::MAX_SOCKET_PATH {
                self.fail(
                    &[Key("proxy"), Key("upgrade_sock")],
                    format!(
                        "must be at most {} bytes long (a Unix socket's path)",
                        crate::shutdown::upgrade::MAX_SOCKET_PATH
                    ),
                );
            }
        }
        for (key, url) in [
            ("node_exporter_url", &c.monitoring.node_exporter_url),
            ("dcgm_url", &c.monitoring.dcgm_url),
        ] {
            if let Some(url) = url {
                if let Err(e) = crate::upstream::ServerUrl::parse(url) {
                    self.fail(&[Key("monitoring"), Key(key)], e.to_string());
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in c.servers.iter().enumerate() {
            match crate::upstream::ServerUrl::parse(&s.url) {
                Ok(u) => {
                    if !seen.insert(u.canonical()) {
                        self.fail(
                            &[Key("servers"), Index(i), Key("url")],
                            format!("{:?} is listed twice", s.url),
                        );
                    }
                }
                Err(e) => self.fail(&[Key("servers"), Index(i), Key("url")], e.to_string()),
            }
            if s.models.is_empty() {
                self.fail(
                    &[Key("servers"), Index(i), Key("models")],
                    "must name at least one model".into(),
                );
            }
            if let Some(m) = s
                .models
                .iter()
                .find(|m| m.trim().is_empty() || m.len() > 256)
            {
                self.fail(
                    &[Key("servers"), Index(i), Key("models")],
                    format!("model names must be 1 to 256 characters, got {m:?}"),
                );
            }
            if let Some(var) = &s.api_key_env {
                if var.is_empty() {
                    self.fail(
                        &[Key("servers"), Index(i), Key("api_key_env")],
                        "must name an environment variable".into(),
                    );
                }
            }
        }
        self.check_admin(c);
        self.check_pods(c);
        self.check_runner(c);
        match self.errors {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn check_admin(&mut self, c: &Config) {
        use Seg::*;
        for (i, cred) in c.admin.credentials.iter().enumerate() {
            if let Err(e) = crate::admin::auth::check_api_key(&cred.api_key) {
                self.fail(
                    &[Key("admin"), Key("credentials"), Index(i), Key("api_key")],
                    e,
                );
            }
            if crate::identity::parse_hex32(&cred.secret_sha256).is_none() {
                self.fail(
                    &[Key("admin"), Key("credentials"), Index(i), Key("secret_sha256")],
                    "must be 64 hex digits (the SHA-256 of the secret; see `infergate hash-secret`)"
                        .into(),
                );
            }
            if cred.roles.iter().any(|r| r.is_empty() || r.len() > 64) {
                self.fail(
                    &[Key("admin"), Key("credentials"), Index(i), Key("roles")],
                    "role names must be 1 to 64 characters".into(),
                );
            }
        }
    }

    fn check_runner(&mut self, c: &Config) {
        use Seg::*;
        let r = &c.runner;
        if r.port_min == 0 || r.port_min > r.port_max {
            self.fail(
                &[Key("runner"), Key("port_min")],
                "must be at least 1 and at most port_max".into(),
            );
        }
        if r.node_lost_secs < 5 {
            // Heartbeats come every 2 s: fewer than two missed must not lose a node.
            self.fail(
                &[Key("runner"), Key("node_lost_secs")],
                "must be at least 5 (heartbeats come every 2 s)".into(),
            );
        }
        if !r.node.is_empty() && !crate::lifecycle::validate::node_name(&r.node) {
            self.fail(
                &[Key("runner"), Key("node")],
                "1 to 255 letters, digits and . _ : -".into(),
            );
        }
        if r.hub_timeout_secs == 0 {
            self.fail(
                &[Key("runner"), Key("hub_timeout_secs")],
                "must be at least 1".into(),
            );
        }
        for (i, g) in r.gpus.iter().enumerate() {
            if !(g.memory_gib.is_finite() && g.memory_gib > 0.0 && g.memory_gib <= 4096.0) {
                self.fail(
                    &[Key("runner"), Key("gpus"), Index(i), Key("memory_gib")],
                    "must be a positive number of GiB".into(),
                );
            }
        }
        if r.log_lines == 0 {
            self.fail(
                &[Key("runner"), Key("log_lines")],
                "must be at least 1".into(),
            );
        }
        for (name, engine) in [("vllm", &r.vllm), ("llamacpp", &r.llamacpp)] {
            if engine.command.first().is_none_or(|p| p.is_empty()) {
                self.fail(
                    &[Key("runner"), Key(name), Key("command")],
                    "must name the engine's program".into(),
                );
            }
            if engine.startup_timeout_secs == 0 {
                self.fail(
                    &[Key("runner"), Key(name), Key("startup_timeout_secs")],
                    "must be at least 1".into(),
                );
            }
        }
    }

    fn check_pods(&mut self, c: &Config) {
        use Seg::*;
        let p = &c.pods;
        if p.provider == super::PodProviderKind::Runpod {
            if p.api_key_env.is_empty() {
                self.fail(
                    &[Key("pods"), Key("api_key_env")],
                    "must name an environment variable".into(),
                );
            }
            match url::Url::parse(&p.api_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => self.fail(
                    &[Key("pods"), Key("api_url")],
                    format!("{:?} is not an http(s) URL", p.api_url),
                ),
            }
        }
        if !p.url_template.contains("{id}") {
            self.fail(
                &[Key("pods"), Key("url_template")],
                "must contain {id} (and may contain {port})".into(),
            );
        }
        if p.port == 0 {
            self.fail(&[Key("pods"), Key("port")], "must be at least 1".into());
        }
        if p.timeout_ms == 0 {
            self.fail(
                &[Key("pods"), Key("timeout_ms")],
                "must be at least 1".into(),
            );
        }
        let mut ids = std::collections::HashSet::new();
        for (i, pod) in p.static_pods.iter().enumerate() {
            if !crate::pods::valid_pod_id(&pod.id) {
                self.fail(
                    &[Key("pods"), Key("static"), Index(i), Key("id")],
                    "must be 1 to 64 characters of A-Z a-z 0-9 _ -".into(),
                );
            } else if !ids.insert(pod.id.as_str()) {
                self.fail(
                    &[Key("pods"), Key("static"), Index(i), Key("id")],
                    format!("{:?} is listed twice", pod.id),
                );
            }
            if let Err(e) = crate::upstream::ServerUrl::parse(&pod.url) {
                self.fail(
                    &[Key("pods"), Key("static"), Index(i), Key("url")],
                    e.to_string(),
                );
            }
        }
        if p.provider != super::PodProviderKind::Static && !p.static_pods.is_empty() {
            self.fail(
                &[Key("pods"), Key("provider")],
                "[[pods.static]] entries need provider = \"static\"".into(),
            );
        }
    }

    fn addr(&mut self, path: &[Seg<'_>], value: &str) {
        if value.parse::<SocketAddr>().is_err() {
            self.fail(
                path,
                format!("{value:?} is not an address such as \"0.0.0.0:8080\""),
            );
        }
    }

    /// Keep the first error (the one nearest the top of the validation order).
    fn fail(&mut self, path: &[Seg<'_>], message: String) {
        if self.errors.is_some() {
            return;
        }
        let key = path
            .iter()
            .map(|s| match s {
                Seg::Key(k) => format!(".{k}"),
                Seg::Index(i) => format!("[{i}]"),
            })
            .collect::<String>();
        let at = self
            .line_of(path)
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default();
        self.errors = Some(ConfigError::Invalid {
            key: key.trim_start_matches('.').to_string(),
            at,
            message,
        });
    }

    fn line_of(&self, path: &[Seg<'_>]) -> Option<usize> {
        let doc = toml_edit::ImDocument::parse(self.text).ok()?;
        let mut item = doc.as_item();
        for seg in path {
            item = match seg {
                Seg::Key(k) => item.get(k)?,
                Seg::Index(i) => item.get(*i)?,
            };
        }
        let span = item.span()?;
        Some(line_of_offset(self.text, span.start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = parse_str("").unwrap();
        assert_eq!(c.proxy.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(c.affinity.ttl_minutes, 30);
        assert_eq!(c.health.path, "/health");
        assert_eq!(c.store.url, "memory://");
        assert!(c.servers.is_empty());
    }

    #[test]
    fn an_engine_table_keeps_the_defaults_it_leaves_out() {
        let c = parse_str("[runner.vllm]\ncommand = [\"/opt/vllm\", \"serve\"]\n[runner.llamacpp]\nimage = \"x:1\"\ndocker_entrypoint = []\n").unwrap();
        assert_eq!(c.runner.vllm.command, ["/opt/vllm", "serve"]);
        assert_eq!(c.runner.vllm.image, "vllm/vllm-openai:latest");
        assert_eq!(c.runner.vllm.startup_timeout_secs, 600);
        assert_eq!(c.runner.vllm.docker_entrypoint, None);
        assert_eq!(c.runner.llamacpp.command, ["llama-server"]);
        assert_eq!(c.runner.llamacpp.image, "x:1");
        assert_eq!(c.runner.llamacpp.docker_entrypoint, Some(vec![]));
        let err = parse_str("[runner.vllm]\nimg = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("img") && err.contains("line 2"), "{err}");
        let c = parse_str("[runner]\nnode = \"gpu 1\"\nnode_lost_secs = 2\n")
            .unwrap_err()
            .to_string();
        assert!(
            c.contains("runner.node") && c.contains("runner.node_lost_secs"),
            "{c}"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse_str("[proxy]\nlisten = \"0.0.0.0:1\"\nthreds = 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("threds"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_server_url_is_named_with_its_line() {
        let text = "[[servers]]\nurl = \"http://a:1/v1\"\nprovider = \"vllm\"\nmodels = [\"m\"]\n\n[[servers]]\nurl = \"ftp://b/v1\"\nprovider = \"vllm\"\nmodels = [\"m\"]\n";
        let err = parse_str(text).unwrap_err().to_string();
        assert!(err.starts_with("servers[1].url (line 7)"), "{err}");
        assert!(err.contains("http or https"), "{err}");
    }

    #[test]
    fn bad_provider_is_refused() {
        let err = parse_str(
            "[[servers]]\nurl = \"http://a:1/v1\"\nprovider = \"tgi\"\nmodels = [\"m\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 3") && err.contains("tgi"), "{err}");
    }

    #[test]
    fn zero_threshold_is_refused() {
        let err = parse_str("[health]\nunhealthy_threshold = 0\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "health.unhealthy_threshold (line 2): must be at least 1"
        );
    }

    #[test]
    fn duplicate_server_is_refused() {
        let one = "[[servers]]\nurl = \"http://a:1/v1\"\nprovider = \"vllm\"\nmodels = [\"m\"]\n";
        let err = parse_str(&format!("{one}{one}")).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn empty_models_are_refused() {
        let err =
            parse_str("[[servers]]\nurl = \"http://a:1/v1\"\nprovider = \"vllm\"\nmodels = []\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("servers[0].models") && err.contains("at least one"),
            "{err}"
        );
    }
}
