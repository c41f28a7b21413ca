//! Load shared between gateway instances: every 50 ms each instance publishes, through the
//! store, the requests it has in flight on each server and the prompt blocks it sent each and
//! that were not prefilled yet; each instance adds up what the others last published into each
//! server's [`OthersLoad`], which the policies add to their own figures.
//!
//! Without it, two instances behind one load balancer each balance on the half of the traffic
//! they see: on the fleet benchmark (workload b at 65% load) their TTFT p50 was 2.5 times one
//! instance's, with the same cache hit rate.
//!
//! A snapshot replaces the same instance's last one whole (a server missing from it has
//! nothing of that instance on it); one older than [`STALE`] counts no more (an instance that
//! stopped or lost the store). An instance with nothing in flight sends one empty snapshot,
//! then nothing until it has load again.
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
const MAGIC: &[u8; 4] = b"IGL1";
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
    pub server: Box<str>,
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
}

impl LoadShare {
    /// This instance's snapshot of `backends`, or `None` when it has nothing on any server and
    /// said so already.
    pub fn snapshot(&self, backends: &[Arc<Backend>]) -> Option<Vec<u8>> {
        let loads: Vec<ServerLoad> = backends
            .iter()
            .filter_map(|b| {
                let inflight = b.inflight.get().max(0);
                let queued_prefill = b.queued_prefill.load(Relaxed).max(0);
                (inflight > 0 || queued_prefill > 0).then(|| ServerLoad {
                    server: b.id.as_ref().into(),
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
        let mut sums: HashMap<&str, (i64, i64)> = HashMap::new();
        for s in others.values().flat_map(|h| &h.servers) {
            let e = sums.entry(&s.server).or_default();
            e.0 = e.0.saturating_add(s.inflight);
            e.1 = e.1.saturating_add(s.queued_prefill);
        }
        for b in backends {
            let (inflight, queued) = sums.get(b.id.as_ref()).copied().unwrap_or_default();
            b.others.set(inflight, queued);
        }
        others.len()
    }

    /// Instances whose snapshot counts (as of the last [`LoadShare::apply`]).
    pub fn instances(&self) -> usize {
        self.others.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A snapshot: `IGL1`, a u16 count, then per server a u16 length and its id's bytes, its
/// requests in flight and its queued prefill blocks as u32 each; little-endian. (Figures above
/// u32::MAX are sent as that; servers past u16::MAX are left out.)
pub fn encode(loads: &[ServerLoad]) -> Vec<u8> {
    let loads = &loads[..loads.len().min(usize::from(u16::MAX))];
    let mut out = Vec::with_capacity(6 + loads.iter().map(|l| 10 + l.server.len()).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(loads.len() as u16).to_le_bytes());
    for l in loads {
        let id = &l.server.as_bytes()[..l.server.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id);
        for v in [l.inflight, l.queued_prefill] {
            out.extend_from_slice(&(v.clamp(0, i64::from(u32::MAX)) as u32).to_le_bytes());
        }
    }
    out
}

/// Read a snapshot whole, or refuse it.
pub fn decode(mut b: &[u8]) -> Result<Vec<ServerLoad>, SnapshotError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], SnapshotError> {
        if b.len() < n {
            return Err(SnapshotError::Malformed("truncated"));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    let u16_at = |s: &[u8]| usize::from(u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |s: &[u8]| i64::from(u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
    if take(&mut b, 4)? != MAGIC {
        return Err(SnapshotError::Malformed("unknown format"));
    }
    let n = u16_at(take(&mut b, 2)?);
    let mut out = Vec::with_capacity(n.min(b.len() / 10));
    for _ in 0..n {
        let len = u16_at(take(&mut b, 2)?);
        let id = std::str::from_utf8(take(&mut b, len)?)
            .map_err(|_| SnapshotError::Malformed("a server id is not UTF-8"))?;
        let figures = take(&mut b, 8)?;
        out.push(ServerLoad {
            server: id.into(),
            inflight: u32_at(&figures[..4]),
            queued_prefill: u32_at(&figures[4..]),
        });
    }
    if !b.is_empty() {
        return Err(SnapshotError::Malformed("bytes after the last server"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(port: u16) -> Arc<Backend> {
        Backend::for_test(port)
    }

    fn load(server: &str, inflight: i64, queued_prefill: i64) -> ServerLoad {
        ServerLoad {
            server: server.into(),
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
        other[3] = b'9';
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
        // A damaged snapshot changes nothing.
        assert!(share.heard("i1", b"IGL1\x05", t1).is_err());
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
