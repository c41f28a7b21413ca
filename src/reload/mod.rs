//! Configuration reload without a restart (`SIGHUP`, `POST /admin/config/reload`): the file
//! is read and validated again; an invalid one is refused with its error and the running
//! configuration stays. Of a valid one, the settings that can change live ([`LIVE`]) are
//! applied at once, without dropping a connection; the others keep their running values
//! and are reported as waiting for a restart.

mod derived;
mod redact;
mod servers;

pub use derived::Derived;

pub use redact::{redacted, scrubbed};

use crate::config::{Config, Running};
use crate::gateway::Gateway;
use serde_json::Value;
use std::sync::Arc;

/// Settings a reload applies (`table.key`, or a whole table with `table.*`).
pub const LIVE: &[&str] = &[
    "servers",
    "health.*",
    "pods.*",
    "affinity.*",
    "routing.*",
    "admin.credentials",
    "auth.proxy",
    "auth.max_stale_secs",
    "proxy.max_body_bytes",
    "proxy.read_timeout_secs",
    "proxy.write_timeout_secs",
    "proxy.max_retries",
    "proxy.retry_after_secs",
    "proxy.header_timeout_secs",
    "proxy.body_timeout_secs",
    "proxy.body_min_rate_bytes_per_sec",
    "proxy.keepalive_timeout_secs",
    "proxy.max_connections",
];

/// Why a reload applied nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the gateway runs without a configuration file (--demo): there is nothing to reload")]
    NoFile,
    #[error("{0}")]
    Invalid(crate::config::ConfigError),
}

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Outcome {
    /// The running configuration's version after the reload (the same when nothing changed).
    pub version: u64,
    /// Settings whose new values now apply.
    pub applied: Vec<String>,
    /// Settings whose new values wait for a restart (their running values stay).
    pub pending_restart: Vec<String>,
    /// What the reload applied only in part, with why: a server left out of the routing table
    /// (its host does not resolve), a registry change the store did not take.
    pub warnings: Vec<String>,
}

/// Serializes reloads (SIGHUP and the API at once would each read the running version).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Read the file again and apply what can change live.
pub async fn reload(gw: &Arc<Gateway>) -> Result<Outcome, ReloadError> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let current = gw.running.load_full();
    let path = current.path.clone().ok_or(ReloadError::NoFile)?;
    let text = tokio::fs::read_to_string(&path).await.map_err(|source| {
        ReloadError::Invalid(crate::config::ConfigError::Read {
            path: path.display().to_string(),
            source,
        })
    })?;
    let new = crate::config::parse_str(&text).map_err(ReloadError::Invalid)?;
    check_server_keys(&new)?;
    check_sections(&new)?;
    let (running, started, file) = (
        to_value(&current.config),
        to_value(&gw.config),
        to_value(&new),
    );
    let applied: Vec<String> = changed(&running, &file)
        .into_iter()
        .filter(|k| is_live(k))
        .collect();
    let pending_restart: Vec<String> = changed(&started, &file)
        .into_iter()
        .filter(|k| !is_live(k))
        .collect();
    let sha256 = sha256_hex(text.as_bytes());
    if applied.is_empty() && pending_restart == current.pending_restart {
        if sha256 != current.sha256 {
            // Comments or layout changed: the same settings, from a file read now.
            gw.apply_config(Running {
                sha256,
                loaded_ms: crate::telemetry::now_ms(),
                ..(*current).clone()
            });
        }
        tracing::info!(
            version = current.version,
            "configuration reloaded: nothing changed"
        );
        return Ok(Outcome {
            version: current.version,
            applied,
            pending_restart,
            warnings: Vec::new(),
        });
    }
    let config = merge(&file, &started)?;
    let version = current.version + 1;
    let old_routes = gw.config_routes();
    if applied.iter().any(|k| k == "auth.max_stale_secs") {
        // Confirm the key cache now: under a lower bound it may already be too old.
        if let Err(e) = crate::identity::sync::reload(gw).await {
            tracing::warn!(error = %e, "API keys not confirmed at the reload");
        }
    }
    gw.keys
        .set_max_stale(config.auth.max_stale_secs.saturating_mul(1000));
    gw.store.set_affinity_limits(
        config.affinity.ttl_minutes.saturating_mul(60_000),
        config.affinity.max_entries,
    );
    gw.apply_config(Running {
        config: Arc::new(config),
        version,
        sha256,
        loaded_ms: crate::telemetry::now_ms(),
        path: Some(path),
        pending_restart: pending_restart.clone(),
    });
    let warnings = if applied.iter().any(|k| k == "servers") {
        servers::apply(gw, &old_routes).await
    } else if applied.iter().any(|k| k.starts_with("routing.")) {
        // The same servers, routed by other policies: the table is built again.
        match crate::routing::registry_sync::apply(gw, gw.last_registry()).await {
            Ok(left_out) => left_out
                .into_iter()
                .map(|e| scrubbed(&format!("server left out of the routing table: {e}")))
                .collect(),
            Err(e) => vec![format!("routing table not rebuilt: {e}")],
        }
    } else {
        Vec::new()
    };
    tracing::info!(
        version,
        ?applied,
        ?pending_restart,
        ?warnings,
        "configuration reloaded"
    );
    Ok(Outcome {
        version,
        applied,
        pending_restart,
        warnings,
    })
}

/// Every `api_key_env` of the new file must name a variable this process has (a valid header
/// value): the server would otherwise be left out, or its requests go without their key.
fn check_server_keys(new: &Config) -> Result<(), ReloadError> {
    for (i, s) in new.servers.iter().enumerate() {
        if let Err(e) = crate::upstream::Backend::config_key(s) {
            return Err(ReloadError::Invalid(crate::config::ConfigError::Invalid {
                key: format!("servers[{i}].api_key_env"),
                at: String::new(),
                message: format!("{e} in the gateway's environment (a reload cannot add one: restart with it set)"),
            }));
        }
    }
    Ok(())
}

/// The pod provider of the new file must build (its key is in the environment, which a
/// reload cannot change). (The admin credentials always build: the file's are checked as it
/// is read, and only the environment's pair can fail, which a reload does not change.)
fn check_sections(new: &Config) -> Result<(), ReloadError> {
    let invalid = |key: &str, message: String| {
        ReloadError::Invalid(crate::config::ConfigError::Invalid {
            key: key.into(),
            at: String::new(),
            message,
        })
    };
    if let Err(e) = crate::pods::Pods::from_config(&new.pods) {
        return Err(invalid("pods", e.to_string()));
    }
    Ok(())
}

/// The running configuration at start: its file and the file's digest.
pub fn started(config: Config, path: Option<std::path::PathBuf>) -> Running {
    let sha256 = path
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .map(|b| sha256_hex(&b))
        .unwrap_or_default();
    Running {
        sha256,
        path,
        ..Running::new(config)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn to_value(c: &Config) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

fn is_live(key: &str) -> bool {
    LIVE.iter().any(|l| match l.strip_suffix(".*") {
        Some(table) => key.split('.').next() == Some(table),
        None => *l == key,
    })
}

/// The settings (`table.key`, or a top-level key such as `servers`) whose values differ.
fn changed(a: &Value, b: &Value) -> Vec<String> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (table, new) in b {
        let old = a.get(table).unwrap_or(&Value::Null);
        match (old.as_object(), new.as_object()) {
            (Some(o), Some(n)) => {
                for (key, v) in n {
                    if o.get(key) != Some(v) {
                        out.push(format!("{table}.{key}"));
                    }
                }
            }
            _ if old != new => out.push(table.clone()),
            _ => {}
        }
    }
    out
}

/// The file's values for the live settings, the process's start values for the others.
fn merge(file: &Value, started: &Value) -> Result<Config, ReloadError> {
    let mut merged = started.clone();
    for key in changed(started, file).into_iter().filter(|k| is_live(k)) {
        let mut parts = key.splitn(2, '.');
        let table = parts.next().unwrap_or_default();
        match parts.next() {
            Some(k) => merged[table][k] = file[table][k].clone(),
            None => merged[table] = file[table].clone(),
        }
    }
    serde_json::from_value(merged).map_err(|e| {
        ReloadError::Invalid(crate::config::ConfigError::Syntax(format!(
            "the merged configuration does not read back: {e}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_settings_are_taken_from_the_file_and_the_others_kept() {
        let started = crate::config::parse_str(
            "[proxy]\nlisten = \"127.0.0.1:1\"\nmax_body_bytes = 10\n[health]\ninterval_ms = 100\n",
        )
        .unwrap();
        let file = crate::config::parse_str(
            "[proxy]\nlisten = \"127.0.0.1:2\"\nmax_body_bytes = 20\n[health]\ninterval_ms = 300\n\
             [[servers]]\nurl = \"http://127.0.0.1:9/v1\"\nprovider = \"vllm\"\nmodels = [\"m\"]\n",
        )
        .unwrap();
        let (s, f) = (to_value(&started), to_value(&file));
        let mut keys = changed(&s, &f);
        keys.sort();
        assert_eq!(
            keys,
            [
                "health.interval_ms",
                "proxy.listen",
                "proxy.max_body_bytes",
                "servers"
            ]
        );
        let merged = merge(&f, &s).unwrap();
        assert_eq!(merged.proxy.listen, "127.0.0.1:1", "waits for a restart");
        assert_eq!(merged.proxy.max_body_bytes, 20);
        assert_eq!(merged.health.interval_ms, 300);
        assert_eq!(merged.servers.len(), 1, "servers change live");
        assert!(is_live("health.path") && !is_live("proxy.listen") && !is_live("store.url"));
    }
}
