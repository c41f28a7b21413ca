//! The admin port's connections. A connection is accepted while fewer than `max_connections`
//! are open (the others wait in the accept backlog) and is served on a task of its own: its TLS
//! handshake, when the port speaks TLS, and every request head must finish within
//! `header_timeout_secs`, counted from the connection's start or from the previous response
//! (hyper's header read timeout), so a silent, slow or idle client holds its slot for a bounded
//! time and never holds up the others. HTTP/1.1 only. At shutdown no new connection is taken
//! and open ones finish the request they are serving.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use pingora::tls::TlsAcceptor;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;

/// The TCP peer of an admin connection (what failed authentications are counted by).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// How long and how many clients may hold the admin port.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header: Duration,
    pub max_connections: usize,
}

/// At shutdown, the longest wait for open connections to finish their request.
const DRAIN: Duration = Duration::from_secs(10);

/// Serve `app` on `tcp` until `stop` resolves.
pub async fn serve(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            c = tcp.accept() => match c {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, tls, watcher) = (app.clone(), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => http(stream, peer, app, limits, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => http(tls, peer, app, limits, watcher).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(tcp);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin connections still open after {DRAIN:?}, closed");
    }
}

/// Serve HTTP/1.1 on one connection; each request carries its peer as `ConnectInfo<Peer>`.
async fn http<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(Peer(peer)));
        app.clone().call(req.map(Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "admin connection ended");
    }
}
