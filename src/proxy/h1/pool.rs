//! Idle server connections, kept per worker thread: each worker runs its own single-threaded
//! runtime, so a connection is only ever used on the thread (and reactor) that opened it, and
//! taking or returning one is a plain borrow of a thread-local map: no lock, no task per
//! connection. A sweeper task per thread closes connections past their idle timeout or closed
//! by the server.

use super::upstream::UpstreamConn;
use pingora::upstreams::peer::HttpPeer;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often idle connections are checked.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

struct PeerPool {
    /// Held so the pointer key cannot be reused by another peer while connections remain.
    _peer: Arc<HttpPeer>,
    idle: Vec<Idle>,
}

#[derive(Default)]
struct Pool {
    peers: HashMap<usize, PeerPool>,
    idle_timeout: Duration,
    sweeping: bool,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

fn key(peer: &Arc<HttpPeer>) -> usize {
    Arc::as_ptr(peer) as usize
}

/// A live idle connection to `peer`, most recently used first.
pub fn take(peer: &Arc<HttpPeer>) -> Option<UpstreamConn> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let timeout = p.idle_timeout;
        let pool = p.peers.get_mut(&key(peer))?;
        while let Some(mut idle) = pool.idle.pop() {
            if idle.since.elapsed() < timeout && !idle.conn.idle_broken() {
                idle.conn.reused = true;
                return Some(idle.conn);
            }
        }
        None
    })
}

/// Keep a connection whose exchange completed; at most `max` idle ones per server and thread.
pub fn put(peer: &Arc<HttpPeer>, mut conn: UpstreamConn, max: usize, idle_timeout: Duration) {
    conn.park();
    let start_sweeper = POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.idle_timeout = idle_timeout;
        let pool = p.peers.entry(key(peer)).or_insert_with(|| PeerPool {
            _peer: peer.clone(),
            idle: Vec::new(),
        });
        if pool.idle.len() >= max {
            return false; // dropped: closed
        }
        pool.idle.push(Idle {
            conn,
            since: Instant::now(),
        });
        !std::mem::replace(&mut p.sweeping, true)
    });
    if start_sweeper {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweeper());
        } else {
            POOL.with(|p| p.borrow_mut().sweeping = false);
        }
    }
}

/// Close expired and broken idle connections until none are left.
async fn sweeper() {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let more = POOL.with(|p| {
            let mut p = p.borrow_mut();
            let timeout = p.idle_timeout;
            p.peers.retain(|_, pool| {
                pool.idle
                    .retain_mut(|i| i.since.elapsed() < timeout && !i.conn.idle_broken());
                !pool.idle.is_empty()
            });
            if p.peers.is_empty() {
                p.sweeping = false;
            }
            p.sweeping
        });
        if !more {
            return;
        }
    }
}

/// Idle connections on this thread (for tests).
#[cfg(test)]
pub fn idle_count() -> usize {
    POOL.with(|p| p.borrow().peers.values().map(|pp| pp.idle.len()).sum())
}
