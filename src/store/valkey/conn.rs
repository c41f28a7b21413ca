//! One connection handle for a single Valkey server or a Valkey Cluster, with reconnection
//! handled by the `redis` crate and an availability flag that lets the hot path skip a store
//! that is known to be down instead of waiting for a timeout.

use super::super::StoreError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// How long one command may take before the store counts as unavailable.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(Arc<ClusterHandle>),
}

/// The cluster client and its connection, made on first use.
struct ClusterHandle {
    client: redis::cluster::ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

/// A cloneable handle; clones share the connection.
#[derive(Clone)]
pub struct Valkey {
    inner: Inner,
    available: Arc<AtomicBool>,
}

/// A connection usable with `query_async`.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Valkey {
    /// Set up the client. Connects lazily: a Valkey that is down at start-up is not an error.
    pub fn open(url: &str, cluster: bool) -> Result<Self, StoreError> {
        let err = |e: redis::RedisError| StoreError::Valkey(e.to_string());
        let inner = if cluster {
            let client = redis::cluster::ClusterClient::builder(vec![url.to_string()])
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(1)
                .build()
                .map_err(err)?;
            Inner::Cluster(Arc::new(ClusterHandle {
                client,
                conn: OnceCell::new(),
            }))
        } else {
            let client = redis::Client::open(url).map_err(err)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            Inner::Single(ConnectionManager::new_lazy_with_config(client, config).map_err(err)?)
        };
        Ok(Self {
            inner,
            available: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Whether the last operation (or health check) reached Valkey.
    pub fn is_available(&self) -> bool {
        self.available.load(Relaxed)
    }

    pub fn mark(&self, available: bool) {
        if self.available.swap(available, Relaxed) != available {
            if available {
                tracing::info!("valkey reachable: sharing state");
            } else {
                tracing::warn!("valkey unreachable: serving on local state");
            }
        }
    }

    /// A connection, or `Unavailable`.
    pub async fn conn(&self) -> Result<Conn, StoreError> {
        match &self.inner {
            Inner::Single(m) => Ok(Conn::Single(m.clone())),
            Inner::Cluster(h) => h
                .conn
                .get_or_try_init(|| async { h.client.get_async_connection().await })
                .await
                .cloned()
                .map(Conn::Cluster)
                .map_err(|e| {
                    tracing::debug!(error = %e, "cluster connection failed");
                    StoreError::Unavailable
                }),
        }
    }

    /// Run `f` on a connection, recording availability from its outcome.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = match self.conn().await {
            Ok(c) => c,
            Err(e) => {
                self.mark(false);
                return Err(e);
            }
        };
        match tokio::time::timeout(RESPONSE_TIMEOUT * 2, f(conn)).await {
            Ok(Ok(v)) => {
                self.mark(true);
                Ok(v)
            }
            Ok(Err(e)) if is_connection_error(&e) => {
                tracing::debug!(error = %e, "valkey command failed");
                self.mark(false);
                Err(StoreError::Unavailable)
            }
            Ok(Err(e)) => Err(StoreError::Valkey(e.to_string())),
            Err(_) => {
                self.mark(false);
                Err(StoreError::Unavailable)
            }
        }
    }
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.is_cluster_error()
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
