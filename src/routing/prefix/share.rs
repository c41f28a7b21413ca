//! Cache-aware routing across instances: each instance shares the prompts it routed (model,
//! server, block hashes) through the store in batches, at most every 100 ms, and records the
//! other instances' in its own indexes. Two instances behind one load balancer thus know where
//! each other's prefixes went.
//!
//! The request path only hands its record to a bounded queue (no lock, no store call); when
//! the queue is full, records are dropped and counted: the index is a hint.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Records waiting for the next batch at most.
const QUEUE: usize = 2048;
/// Blocks of a prompt shared at most (a record is then 8 KiB at most, the queue 16 MiB).
pub const MAX_SHARED_BLOCKS: usize = 1024;
/// A batch's bytes at most (a larger one is sent in parts).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Format tag of a batch.
const MAGIC: &[u8; 4] = b"IGP1";

/// One routed prompt: as much of its chain as the server can hold.
pub struct Routed {
    pub model: Arc<str>,
    pub server: Arc<str>,
    pub chain: Box<[u64]>,
}

/// Why a shared batch was not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed prefix batch: {0}")]
pub struct BatchError(&'static str);

/// The queue between the request path and the sharing loop.
pub struct PrefixShare {
    tx: tokio::sync::mpsc::Sender<Routed>,
    rx: Mutex<tokio::sync::mpsc::Receiver<Routed>>,
    dropped: AtomicU64,
}

impl Default for PrefixShare {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        Self {
            tx,
            rx: Mutex::new(rx),
            dropped: AtomicU64::new(0),
        }
    }
}

impl PrefixShare {
    /// Offer a routed prompt for the next batch (never waits).
    pub fn offer(&self, model: &Arc<str>, server: &Arc<str>, chain: &[u64]) {
        let r = Routed {
            model: model.clone(),
            server: server.clone(),
            chain: chain[..chain.len().min(MAX_SHARED_BLOCKS)].into(),
        };
        if self.tx.try_send(r).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Records dropped because the queue was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// What waits, as batches of at most [`MAX_BATCH_BYTES`].
    pub fn take_batches(&self) -> Vec<Vec<u8>> {
        let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending = Vec::new();
        while let Ok(r) = rx.try_recv() {
            pending.push(r);
        }
        drop(rx);
        let mut out = Vec::new();
        let mut start = 0;
        let mut bytes = 0;
        for (i, r) in pending.iter().enumerate() {
            let size = 64 + r.model.len() + r.server.len() + 8 * r.chain.len();
            if bytes + size > MAX_BATCH_BYTES && i > start {
                out.push(encode(&pending[start..i]));
                (start, bytes) = (i, 0);
            }
            bytes += size;
        }
        if start < pending.len() {
            out.push(encode(&pending[start..]));
        }
        out
    }
}

/// A batch: `IGP1`, the strings (models and servers, each once: u16 count, then u16 length and
/// bytes each), then the records (u32 count; each: model and server as u16 string indexes, a
/// u16 block count and the u64 hashes), little-endian.
pub fn encode(records: &[Routed]) -> Vec<u8> {
    fn index<'s>(strings: &mut Vec<&'s str>, s: &'s str) -> Option<u16> {
        match strings.iter().position(|t| *t == s) {
            Some(i) => Some(i as u16),
            None if strings.len() < usize::from(u16::MAX) => {
                strings.push(s);
                Some((strings.len() - 1) as u16)
            }
            None => None,
        }
    }
    let mut strings: Vec<&str> = Vec::new();
    let mut body = Vec::new();
    let mut count = 0u32;
    for r in records {
        let (Some(m), Some(s)) = (
            index(&mut strings, &r.model),
            index(&mut strings, &r.server),
        ) else {
            break;
        };
        let n = r.chain.len().min(usize::from(u16::MAX));
        body.extend_from_slice(&m.to_le_bytes());
        body.extend_from_slice(&s.to_le_bytes());
        body.extend_from_slice(&(n as u16).to_le_bytes());
        for h in &r.chain[..n] {
            body.extend_from_slice(&h.to_le_bytes());
        }
        count += 1;
    }
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(strings.len() as u16).to_le_bytes());
    for s in &strings {
        let b = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(b.len() as u16).to_le_bytes());
        out.extend_from_slice(b);
    }
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Read a batch: `f(model, server, hashes)` for each record. Nothing is called for a batch that
/// does not read whole.
pub fn decode(batch: &[u8], mut f: impl FnMut(&str, &str, &[u64])) -> Result<usize, BatchError> {
    let mut r = Reader(batch);
    if r.take(4)? != MAGIC {
        return Err(BatchError("unknown format"));
    }
    let n = usize::from(r.u16()?);
    let mut strings = Vec::with_capacity(n);
    for _ in 0..n {
        let len = usize::from(r.u16()?);
        let s = std::str::from_utf8(r.take(len)?).map_err(|_| BatchError("a name is not UTF-8"))?;
        strings.push(s);
    }
    let count = r.u32()? as usize;
    // Checked whole before any record is applied.
    let mut records = Vec::with_capacity(count.min(batch.len() / 6));
    let mut hashes: Vec<u64> = Vec::new();
    for _ in 0..count {
        let m = strings
            .get(usize::from(r.u16()?))
            .ok_or(BatchError("a model index is out of range"))?;
        let s = strings
            .get(usize::from(r.u16()?))
            .ok_or(BatchError("a server index is out of range"))?;
        let len = usize::from(r.u16()?);
        let bytes = r.take(len * 8)?;
        let at = hashes.len();
        hashes.extend(
            bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())),
        );
        records.push((*m, *s, at, len));
    }
    if !r.0.is_empty() {
        return Err(BatchError("bytes after the last record"));
    }
    for (m, s, at, len) in &records {
        f(m, s, &hashes[*at..*at + *len]);
    }
    Ok(records.len())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BatchError> {
        if self.0.len() < n {
            return Err(BatchError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, BatchError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, BatchError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(model: &str, server: &str, chain: &[u64]) -> Routed {
        Routed {
            model: model.into(),
            server: server.into(),
            chain: chain.into(),
        }
    }

    #[test]
    fn a_batch_reads_back_as_it_was_written() {
        let records = [
            routed("m", "http://a/v1", &[1, 2, 3]),
            routed("m", "http://b/v1", &[1, 2]),
            routed("n", "http://a/v1", &[u64::MAX]),
        ];
        let batch = encode(&records);
        let mut seen = Vec::new();
        let n = decode(&batch, |m, s, h| {
            seen.push((m.to_string(), s.to_string(), h.to_vec()))
        })
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(seen[0], ("m".into(), "http://a/v1".into(), vec![1, 2, 3]));
        assert_eq!(seen[1], ("m".into(), "http://b/v1".into(), vec![1, 2]));
        assert_eq!(seen[2], ("n".into(), "http://a/v1".into(), vec![u64::MAX]));
        // Each name once.
        assert_eq!(
            batch.windows(11).filter(|w| *w == b"http://a/v1").count(),
            1
        );
    }

    #[test]
    fn a_malformed_batch_applies_nothing() {
        let batch = encode(&[routed("m", "s", &[1, 2, 3]), routed("m", "s", &[4])]);
        for cut in 0..batch.len() {
            let mut called = false;
            assert!(
                decode(&batch[..cut], |_, _, _| called = true).is_err(),
                "cut {cut}"
            );
            assert!(!called);
        }
        let mut longer = batch.clone();
        longer.push(0);
        assert!(decode(&longer, |_, _, _| {}).is_err());
        let mut bad = batch.clone();
        bad[0] = b'X';
        assert_eq!(
            decode(&bad, |_, _, _| {}),
            Err(BatchError("unknown format"))
        );
    }

    #[test]
    fn the_queue_is_bounded_and_batches_are_split() {
        let share = PrefixShare::default();
        let (m, s): (Arc<str>, Arc<str>) = ("m".into(), "s".into());
        let chain = vec![7u64; 1000];
        for _ in 0..QUEUE + 10 {
            share.offer(&m, &s, &chain);
        }
        assert_eq!(share.dropped(), 10);
        let batches = share.take_batches();
        assert!(
            batches.len() > 1,
            "8 KiB records make several 1 MiB batches"
        );
        let total: usize = batches
            .iter()
            .map(|b| {
                assert!(b.len() <= MAX_BATCH_BYTES + 16);
                decode(b, |_, _, h| assert_eq!(h.len(), 1000)).unwrap()
            })
            .sum();
        assert_eq!(total, QUEUE);
        assert!(share.take_batches().is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn any_bytes_are_read_or_refused_without_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&bytes);
            let _ = decode(&b, |_, _, _| {});
            let _ = decode(&bytes, |_, _, _| {});
        }
    }
}
