//! Load shared between gateway instances: every 50 ms each instance publishes, through the
//! store, the requests it has in flight on each server and the prompt blocks it sent each and
//! that were not prefilled yet; each instance adds up what the others last published into each
//! server's [`OthersLoad`], which the policies add to their own figures.
//!
//! Without it, each of two instances behind one load balancer balances on the traffic it sees
//! only: a server busy with the other instance's prompts looks idle (the e2e test
//! `prefix::two_instances_on_valkey_balance_on_each_others_load`), and on the fleet
//! benchmark's multi-turn chats at 65% load two instances' TTFT p50 was 661 ms against one's
//! 478 (554 ms with the sharing; BENCHMARKS.md).
//!
//! A server is named by a 64-bit hash of its id (its URL), so that a snapshot of a thousand
//! busy servers is 16 KiB, not 60. A snapshot replaces the same instance's last one whole (a
//! server missing from it has nothing of that instance on it); one older than [`STALE`]
//! counts no more (an instance that stopped or lost the store). An instance with nothing in
//! flight sends one empty snapshot, then nothing until it has load again.
//!
//! [`OthersLoad`]: crate::upstream::others_load::OthersLoad

use crate::upstream::Backend;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long another instance's snapshot counts after it arrived.
pub const STALE: Duration = Duration::from_millis(500);
/// Format tag of a snapshot.
const MAGIC: &[u8; 4] = b"IGL2";
/// Bytes per server in a snapshot.
const RECORD: usize = 16;
/// Instances remembered at most (snapshots from more are ignored until some go stale).
const MAX_INSTANCES: usize = 1024;

/// Why a snapshot was not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("malformed load snapshot: {0}")]
    Malformed(&'static str),
    #[error("load snapshots from more than {MAX_INSTANCES} instances")]
    TooManyInstances,
}

/// One server's figures in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLoad {
    /// [`server_key`] of its id.
    pub server: u64,
    pub inflight: i64,
    pub queued_prefill: i64,
}

struct Heard {
    at: Instant,
    servers: Vec<ServerLoad>,
}

/// The other instances' last snapshots, and whether this one's last was empty.
#[derive(Default)]
pub struct LoadShare {
    others: Mutex<HashMap<Box<str>, Heard>>,
    idle_sent: AtomicBool,
    warned: Mutex<Option<Instant>>,
}

impl LoadShare {
    /// This instance's snapshot of `backends`, or `None` when it has nothing on any server and
    /// said so already.
    pub fn snapshot(&self, backends: &[Arc<Backend>]) -> Option<Vec<u8>> {
        let loads: Vec<ServerLoad> = backends
            .iter()
            .filter_map(|b| {
                let inflight = b.inflight.get().max(0);
                let queued_prefill = b.own_prefill_queue();
                (inflight > 0 || queued_prefill > 0).then(|| ServerLoad {
                    server: server_key(&b.id),
                    inflight,
                    queued_prefill,
                })
            })
            .collect();
        let idle = loads.is_empty();
        if idle && self.idle_sent.swap(true, Relaxed) {
            return None;
        }
        self.idle_sent.store(idle, Relaxed);
        Some(encode(&loads))
    }

    /// Take in the snapshot instance `from` shared, received at `now`.
    pub fn heard(&self, from: &str, snapshot: &[u8], now: Instant) -> Result<(), SnapshotError> {
        let servers = decode(snapshot)?;
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        if !others.contains_key(from) && others.len() >= MAX_INSTANCES {
            others.retain(|_, h| now.duration_since(h.at) < STALE);
            if others.len() >= MAX_INSTANCES {
                return Err(SnapshotError::TooManyInstances);
            }
        }
        others.insert(from.into(), Heard { at: now, servers });
        Ok(())
    }

    /// Forget the snapshots gone stale at `now`, and set each of `backends`' [`OthersLoad`] to
    /// the sums of the rest. Returns how many instances were counted.
    ///
    /// [`OthersLoad`]: crate::upstream::others_load::OthersLoad
    pub fn apply(&self, backends: &[Arc<Backend>], now: Instant) -> usize {
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        others.retain(|_, h| now.duration_since(h.at) < STALE);
        let mut sums: HashMap<u64, (i64, i64)> = HashMap::new();
        for s in others.values().flat_map(|h| &h.servers) {
            let e = sums.entry(s.server).or_default();
            e.0 = e.0.saturating_add(s.inflight);
            e.1 = e.1.saturating_add(s.queued_prefill);
        }
        for b in backends {
            let (inflight, queued) = sums.get(&server_key(&b.id)).copied().unwrap_or_default();
            b.others.set(inflight, queued);
        }
        others.len()
    }

    /// Whether a snapshot ignored at `now` is worth a warning: the first, then one a minute.
    pub fn warn_due(&self, now: Instant) -> bool {
        let mut last = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
        if due {
            *last = Some(now);
        }
        due
    }

    /// Instances whose snapshot counts (as of the last [`LoadShare::apply`]).
    pub fn instances(&self) -> usize {
        self.others.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// How a snapshot names a server: XXH3 of its id (a collision among one fleet's servers has
/// odds of about n² / 2^65).
pub fn server_key(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// A snapshot: `IGL2`, a u32 count, then per server its [`server_key`] (u64), its requests
/// in flight and its queued prefill blocks (u32 each, figures above u32::MAX sent as that);
/// little-endian.
pub fn encode(loads: &[ServerLoad]) -> Vec<u8> {
    let loads = &loads[..loads.len().min(u32::MAX as usize)];
    let mut out = Vec::with_capacity(8 + RECORD * loads.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(loads.len() as u32).to_le_bytes());
    for l in loads {
        out.extend_from_slice(&l.server.to_le_bytes());
        for v in [l.inflight, l.queued_prefill] {
            out.extend_from_slice(&(v.clamp(0, i64::from(u32::MAX)) as u32).to_le_bytes());
        }
    }
    out
}

/// Read a snapshot whole, or refuse it.
pub fn decode(b: &[u8]) -> Result<Vec<ServerLoad>, SnapshotError> {
    let (head, body) = b
        .split_at_checked(8)
        .ok_or(SnapshotError::Malformed("truncated"))?;
    if &head[..4] != MAGIC {
        return Err(SnapshotError::Malformed("unknown format"));
    }
    let n = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if body.len() != n.saturating_mul(RECORD) {
        return Err(SnapshotError::Malformed(
            if body.len() < n.saturating_mul(RECORD) {
                "truncated"
            } else {
                "bytes after the last server"
            },
        ));
    }
    let u32_at = |s: &[u8]| i64::from(u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
    Ok(body
        .chunks_exact(RECORD)
        .map(|r| ServerLoad {
            server: u64::from_le_bytes(r[..8].try_into().unwrap_or_default()),
            inflight: u32_at(&r[8..12]),
            queued_prefill: u32_at(&r[12..16]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(port: u16) -> Arc<Backend> {
        Backend::for_test(port)
    }

    fn load(server: &str, inflight: i64, queued_prefill: i64) -> ServerLoad {
        ServerLoad {
            server: server_key(server),
            inflight,
            queued_prefill,
        }
    }

    #[test]
    fn a_snapshot_reads_back_and_a_damaged_one_is_refused() {
        let loads = [load("http://a:1/v1", 3, 120), load("http://b:2/v1", 0, 7)];
        let bytes = encode(&loads);
        assert_eq!(decode(&bytes).unwrap(), loads);
        assert_eq!(decode(&encode(&[])).unwrap(), []);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        let mut other = bytes.clone();
        other[3] = b'1';
        assert_eq!(
            decode(&other),
            Err(SnapshotError::Malformed("unknown format"))
        );
        // Out-of-range figures are clamped, not wrapped.
        let big = decode(&encode(&[load("x", -5, i64::MAX)])).unwrap();
        assert_eq!(big, [load("x", 0, i64::from(u32::MAX))]);
    }

    #[test]
    fn the_other_instances_figures_add_up_and_go_when_stale() {
        let (a, b) = (backend(1), backend(2));
        let backends = [a.clone(), b.clone()];
        let share = LoadShare::default();
        let t0 = Instant::now();
        let snap = |l: &[ServerLoad]| encode(l);
        share
            .heard("i1", &snap(&[load(&a.id, 2, 40), load(&b.id, 1, 0)]), t0)
            .unwrap();
        share.heard("i2", &snap(&[load(&a.id, 3, 10)]), t0).unwrap();
        assert_eq!(share.apply(&backends, t0), 2);
        assert_eq!((a.others.inflight(), a.others.queued_prefill()), (5, 50));
        assert_eq!((b.others.inflight(), b.others.queued_prefill()), (1, 0));
        // The policies read them beside this instance's own.
        a.inflight.set(1);
        a.queued_prefill.store(4, Relaxed);
        assert_eq!((a.load(), a.prefill_queue()), (6, 54));
        // A newer snapshot replaces its instance's last one whole: b has nothing of i1 now.
        let t1 = t0 + Duration::from_millis(300);
        share.heard("i1", &snap(&[load(&a.id, 1, 0)]), t1).unwrap();
        share.apply(&backends, t1);
        assert_eq!((a.others.inflight(), a.others.queued_prefill()), (4, 10));
        assert_eq!((b.others.inflight(), b.others.queued_prefill()), (0, 0));
        // i2 said nothing for STALE: it counts no more.
        assert_eq!(share.apply(&backends, t0 + STALE), 1);
        assert_eq!((a.others.inflight(), a.others.queued_prefill()), (1, 0));
        assert_eq!(share.instances(), 1);
        // A damaged snapshot changes nothing (and is warned of once a minute).
        assert!(share.heard("i1", b"IGL2\x05\0\0\0", t1).is_err());
        assert!(share.warn_due(t1));
        assert!(!share.warn_due(t1 + Duration::from_secs(59)));
        assert!(share.warn_due(t1 + Duration::from_secs(60)));
        share.apply(&backends, t1);
        assert_eq!(a.others.inflight(), 1);
    }

    #[test]
    fn an_idle_instance_says_so_once() {
        let a = backend(1);
        let backends = [a.clone()];
        let share = LoadShare::default();
        let first = share
            .snapshot(&backends)
            .expect("the first snapshot is sent");
        assert_eq!(decode(&first).unwrap(), []);
        assert!(share.snapshot(&backends).is_none());
        a.inflight.set(2);
        for _ in 0..3 {
            let busy = share.snapshot(&backends).expect("sent while busy");
            assert_eq!(decode(&busy).unwrap(), [load(&a.id, 2, 0)]);
        }
        a.inflight.set(0);
        assert_eq!(decode(&share.snapshot(&backends).unwrap()).unwrap(), []);
        assert!(share.snapshot(&backends).is_none());
    }
}
