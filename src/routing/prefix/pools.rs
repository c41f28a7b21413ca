//! The prefix index of each model routed by prefix, with its servers' slots: kept across
//! routing-table rebuilds (a server keeps its slot, and its blocks, while it stays in the
//! pool), and kept in bounds off the request path ([`PrefixIndexes::maintain`]).

use super::demand::PrefixDemand;
use super::index::{PrefixIndex, MAX_SERVERS};
use crate::config::RoutingConfig;
use crate::upstream::Backend;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// A slot number for a member without one (a pool of more than [`MAX_SERVERS`]): routed by
/// load only.
pub const NO_SLOT: u8 = u8::MAX;

/// Every index is scanned at least this often, to drop blocks past their maximum age.
const AGE_SCAN_MS: u64 = 60_000;

/// One model's index and who holds each slot.
pub struct PoolIndex {
    pub index: PrefixIndex,
    /// How often each prefix is asked for (kept by a table enlarged for the same block size).
    pub demand: Arc<PrefixDemand>,
    /// The block size its hashes were made with.
    block_bytes: usize,
    slots: Mutex<[Option<Arc<Backend>>; MAX_SERVERS]>,
    /// Slots whose blocks were dropped because their server is unhealthy (until it is back).
    ejected: AtomicU64,
    last_scan_ms: AtomicU64,
    /// The larger table that took this one's place when the pool outgrew it: requests routed
    /// by the routing table of before (until it is swapped, or a retry of one routed by it)
    /// still record here, and their blocks go there too.
    successor: std::sync::OnceLock<std::sync::Weak<PoolIndex>>,
}

impl PoolIndex {
    /// An empty table of `entries` for prompts hashed in blocks of `block_bytes`, with the pool's
    /// `demand` table.
    fn new(entries: usize, capacity: usize, block_bytes: usize, demand: Arc<PrefixDemand>) -> Self {
        Self {
            index: PrefixIndex::new(entries, capacity),
            demand,
            block_bytes,
            slots: Mutex::new(std::array::from_fn(|_| None)),
            ejected: AtomicU64::new(0),
            last_scan_ms: AtomicU64::new(0),
            successor: Default::default(),
        }
    }

    /// Record that the server of `slot` was sent the prompt `chain` ([`PrefixIndex::record`]),
    /// in the table that took this one's place too, if one did. Blocks new to the server here.
    pub fn record(&self, chain: &[u64], slot: usize, now_ms: u64) -> usize {
        let added = self.index.record(chain, slot, now_ms);
        if let Some(next) = self.successor.get().and_then(std::sync::Weak::upgrade) {
            next.record(chain, slot, now_ms);
        }
        added
    }

    /// The slot of server `id`.
    pub fn slot_of(&self, id: &str) -> Option<usize> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .position(|b| b.as_ref().is_some_and(|b| &*b.id == id))
    }

    /// The server of each slot held, for reports.
    pub fn servers(&self) -> Vec<(usize, Arc<str>)> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().map(|b| (i, b.id.clone())))
            .collect()
    }

    /// Fold the last `dt_s` seconds into the prefixes' request rates; drop the blocks of
    /// servers that became unhealthy; evict when a server is over its capacity or an age scan
    /// is due. Blocks dropped.
    fn maintain(&self, now_ms: u64, dt_s: f64) -> usize {
        self.demand.update(dt_s);
        let unhealthy = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .iter()
                .enumerate()
                .filter(|(_, b)| b.as_ref().is_some_and(|b| !b.is_healthy()))
                .fold(0u64, |m, (i, _)| m | 1 << i)
        };
        let newly = unhealthy & !self.ejected.load(Relaxed);
        self.ejected.store(unhealthy, Relaxed);
        let mut dropped = 0;
        if newly != 0 {
            dropped += (0..MAX_SERVERS)
                .filter(|s| newly & 1 << s != 0)
                .map(|s| self.index.held(s))
                .sum::<usize>();
            self.index.forget(newly);
        }
        let due = now_ms.saturating_sub(self.last_scan_ms.load(Relaxed)) >= AGE_SCAN_MS;
        if due || self.index.over_capacity() {
            self.last_scan_ms.store(now_ms, Relaxed);
            dropped += self.index.evict(now_ms);
        }
        dropped
    }
}

/// The indexes of the models routed by prefix.
#[derive(Default)]
pub struct PrefixIndexes {
    pools: Mutex<HashMap<Box<str>, Arc<PoolIndex>>>,
}

impl PrefixIndexes {
    /// The index of `model`'s pool, whose members are `backends` (in the pool's order), and
    /// each member's slot ([`NO_SLOT`] past [`MAX_SERVERS`]). A server keeps its slot while it
    /// stays; the blocks of one that left are dropped before its slot is given again.
    /// Allocates the table the first time (or a larger one when the pool outgrew it): call off
    /// the request path.
    pub fn attach(
        &self,
        model: &str,
        backends: &[&Arc<Backend>],
        cfg: &RoutingConfig,
    ) -> (Arc<PoolIndex>, Vec<u8>) {
        let capacity = cfg.server_cache_blocks().max(1);
        // Twice the blocks the servers hold (a four-way table loses little there), for at
        // least four servers, within the configured bound.
        let wanted = backends
            .len()
            .clamp(4, MAX_SERVERS)
            .saturating_mul(capacity)
            .saturating_mul(2)
            .min(cfg.index_max_entries);
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pools.entry(model.into()).or_insert_with(|| {
            Arc::new(PoolIndex::new(
                wanted,
                capacity,
                cfg.block_bytes,
                Arc::default(),
            ))
        });
        if pool.block_bytes != cfg.block_bytes {
            // Hashed with another block size: the old hashes mean nothing, a new table learns
            // from the next requests.
            tracing::info!(
                model,
                entries = wanted,
                block_bytes = cfg.block_bytes,
                "prefix index made anew for another block size"
            );
            *pool = Arc::new(PoolIndex::new(
                wanted,
                capacity,
                cfg.block_bytes,
                Arc::default(),
            ));
        } else if pool.index.entries() < wanted / 2 {
            // Outgrown (servers added, or a larger cache configured): a larger table, with
            // what the old one held (the servers keep their slots), so that routing does not
            // forget every server's cache when the fleet grows.
            let larger = PoolIndex::new(wanted, capacity, cfg.block_bytes, pool.demand.clone());
            *larger.slots.lock().unwrap_or_else(|e| e.into_inner()) =
                pool.slots.lock().unwrap_or_else(|e| e.into_inner()).clone();
            larger.ejected.store(pool.ejected.load(Relaxed), Relaxed);
            let larger = Arc::new(larger);
            // From here on what is recorded in the old table goes to the new one too, so
            // nothing recorded during the copy or before the routing table is swapped is lost.
            let _ = pool.successor.set(Arc::downgrade(&larger));
            let carried = pool.index.carry_into(&larger.index);
            tracing::info!(
                model,
                entries = wanted,
                was = pool.index.entries(),
                carried,
                "prefix index enlarged for the pool's servers"
            );
            *pool = larger;
        }
        let pool = pool.clone();
        drop(pools);
        pool.index.set_capacity(capacity);
        let mut slots = pool.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut left = 0u64;
        for (i, slot) in slots.iter_mut().enumerate() {
            let stays = slot
                .as_ref()
                .is_some_and(|held| backends.iter().any(|b| b.id == held.id));
            if slot.is_some() && !stays {
                *slot = None;
                left |= 1 << i;
            }
        }
        if left != 0 {
            pool.index.forget(left);
        }
        let mut assigned = Vec::with_capacity(backends.len());
        for b in backends {
            let at = match slots
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.id == b.id))
            {
                Some(i) => Some(i),
                None => slots.iter().position(Option::is_none),
            };
            match at {
                Some(i) => {
                    // (The same server may come as a new backend: its key changed.)
                    slots[i] = Some((*b).clone());
                    assigned.push(i as u8);
                }
                None => assigned.push(NO_SLOT),
            }
        }
        drop(slots);
        (pool, assigned)
    }

    /// The index of `model`, when it routes by prefix.
    pub fn get(&self, model: &str) -> Option<Arc<PoolIndex>> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.get(model).cloned()
    }

    /// Keep only the indexes of `models` (the ones routed by prefix now).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|m, _| keep(m));
    }

    /// Every index, with its model.
    pub fn all(&self) -> Vec<(Box<str>, Arc<PoolIndex>)> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.iter().map(|(m, p)| (m.clone(), p.clone())).collect()
    }

    /// One maintenance round over every index (see [`PoolIndex::maintain`]), `dt_s` seconds
    /// after the last: each model with its index and the blocks dropped.
    pub fn maintain(&self, now_ms: u64, dt_s: f64) -> Vec<(Box<str>, Arc<PoolIndex>, usize)> {
        self.all()
            .into_iter()
            .map(|(m, p)| {
                let dropped = p.maintain(now_ms, dt_s);
                (m, p, dropped)
            })
            .collect()
    }
}

/// Keeps every prefix index within its bounds and its figures on `/metrics` (a scan only when
/// a server is over its capacity, became unhealthy, or once a minute), and shares routed
/// prompts and each server's load with the other instances: every 50 ms, so a batch waits at
/// most that long, and another instance's arrive within about 100 ms.
pub struct PrefixMaintenance {
    pub gw: Arc<crate::gateway::Gateway>,
}

const TICK: std::time::Duration = std::time::Duration::from_millis(50);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for PrefixMaintenance {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cursor: Option<String> = None;
        let mut last = std::time::Instant::now();
        // The hash seed (agreed before serving, unless the store was down): checked at once,
        // then every CHECK_EVERY, or every second while the store does not answer.
        let mut seed_due = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            // One clock for the servers' and the prefixes' request rates.
            let dt_s = std::mem::replace(&mut last, std::time::Instant::now())
                .elapsed()
                .as_secs_f64();
            self.update_rates(dt_s);
            self.share(&mut cursor, &mut seed_due).await;
            let now = crate::telemetry::now_ms();
            for (model, p, dropped) in self.gw.prefix.maintain(now, dt_s) {
                self.gw.metrics.prefix_index(
                    &model,
                    p.index.held_total(),
                    p.index.bytes(),
                    dropped,
                );
            }
        }
    }
}

impl PrefixMaintenance {
    /// With a shared store: check the hash seed when `seed_due`, publish what this instance
    /// routed since the last tick and its load on each server, read what the others shared
    /// after `cursor`, and count it.
    async fn share(&self, cursor: &mut Option<String>, seed_due: &mut std::time::Instant) {
        let Some(crate::routing::RoutingShare { prefixes, loads }) = &self.gw.routing_share else {
            return;
        };
        let store = &self.gw.store;
        if std::time::Instant::now() >= *seed_due {
            *seed_due = std::time::Instant::now()
                + match super::seed::agree(&**store, &self.gw.prefix_seed, &self.gw.prefix).await {
                    Ok(_) => super::seed::CHECK_EVERY,
                    Err(e) => {
                        tracing::debug!(error = %e, "prefix hash seed not checked");
                        std::time::Duration::from_secs(1)
                    }
                };
        }
        for batch in prefixes.take_batches() {
            if let Err(e) = store.prefix_publish(batch).await {
                tracing::debug!(error = %e, "routed prefixes not shared");
            }
        }
        let table = self.gw.table.load_full();
        if let Some(snapshot) = loads.snapshot(table.backends()) {
            if let Err(e) = store.load_publish(snapshot).await {
                tracing::debug!(error = %e, "load not shared");
            }
        }
        match store.routing_read(cursor.as_deref()).await {
            Ok(read) => {
                *cursor = read.cursor;
                self.learn(&read.prefixes);
                let now = std::time::Instant::now();
                for (from, snapshot) in &read.loads {
                    if let Err(e) = loads.heard(from, snapshot, now) {
                        // (20 a second from an instance of another format: warned once a minute.)
                        if loads.warn_due(now) {
                            tracing::warn!(error = %e, instance = %from, "a shared load snapshot was ignored");
                        } else {
                            tracing::debug!(error = %e, instance = %from, "a shared load snapshot was ignored");
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "shared routing state not read"),
        }
        // (Also when the read failed: what went stale goes.)
        let heard = loads.apply(table.backends(), std::time::Instant::now());
        self.gw
            .metrics
            .load_sharing_instances
            .set(heard.min(i64::MAX as usize) as i64);
    }

    /// Each prefix-routed member's recent request rate (for the share bound), from its request
    /// counter.
    fn update_rates(&self, dt_s: f64) {
        let table = self.gw.table.load();
        for pool in table.pools().filter(|p| p.prefix.is_some()) {
            for m in &pool.members {
                m.rate.update(m.requests.load(Relaxed), dt_s);
            }
        }
    }

    /// Record what other instances routed (to servers this one routes too).
    fn learn(&self, batches: &[Vec<u8>]) {
        let now = crate::telemetry::now_ms();
        for b in batches {
            let read = super::share::decode(b, |model, server, chain| {
                if let Some(p) = self.gw.prefix.get(model) {
                    if let Some(slot) = p.slot_of(server) {
                        p.record(chain, slot, now);
                    }
                }
            });
            if let Err(e) = read {
                tracing::warn!(error = %e, "a shared prefix batch was ignored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(port: u16) -> Arc<Backend> {
        Backend::for_test(port)
    }

    #[test]
    fn servers_keep_their_slots_and_a_leaving_ones_blocks_go_before_its_slot_is_reused() {
        let ixs = PrefixIndexes::default();
        let cfg = RoutingConfig::default();
        let (a, b, c) = (backend(1), backend(2), backend(3));
        let (pool, slots) = ixs.attach("m", &[&a, &b], &cfg);
        assert_eq!(slots, [0, 1]);
        pool.index.record(&[11, 12, 13], 1, 1);
        // b leaves, c comes: c takes the free slot only after b's blocks are gone.
        let (same, slots) = ixs.attach("m", &[&a, &c], &cfg);
        assert!(Arc::ptr_eq(&pool, &same), "the index outlives the rebuild");
        assert_eq!(slots, [0, 1]);
        assert_eq!(same.index.held(1), 0);
        assert_eq!(same.index.longest(&[11, 12, 13], u64::MAX).blocks, 0);
        assert_eq!(same.slot_of(&c.id), Some(1));
        assert_eq!(same.slot_of(&b.id), None);
        // Kept order-independent: a server that stays keeps its slot wherever it is listed.
        same.index.record(&[21], 0, 2);
        let (_, slots) = ixs.attach("m", &[&c, &b, &a], &cfg);
        assert_eq!(slots, [1, 2, 0]);
        assert_eq!(ixs.get("m").unwrap().index.held(0), 1);
        // Another block size: a new table.
        let other = RoutingConfig {
            block_bytes: 64,
            ..RoutingConfig::default()
        };
        let (fresh, _) = ixs.attach("m", &[&a], &other);
        assert!(!Arc::ptr_eq(&fresh, &pool));
        ixs.retain(|_| false);
        assert!(ixs.get("m").is_none());
    }

    #[test]
    fn a_pool_that_outgrows_its_table_keeps_what_it_learnt() {
        let ixs = PrefixIndexes::default();
        let small = RoutingConfig {
            server_cache_tokens: 4096,
            ..RoutingConfig::default()
        };
        let (a, b) = (backend(1), backend(2));
        let (pool, _) = ixs.attach("m", &[&a, &b], &small);
        let chain: Vec<u64> = (1..=20u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        pool.index.record(&chain, 1, 1);
        pool.index.record(&chain[..5], 0, 2);
        pool.demand.note(chain[19]);
        // A larger cache configured (or many more servers): a larger table, with the blocks,
        // the slots and the demand of the old one.
        let large = RoutingConfig {
            server_cache_tokens: 4096 * 8,
            ..small.clone()
        };
        let (larger, slots) = ixs.attach("m", &[&b, &a], &large);
        assert!(!Arc::ptr_eq(&larger, &pool));
        assert_eq!(larger.index.entries(), pool.index.entries() * 8);
        assert_eq!(slots, [1, 0], "each server keeps its slot");
        let m = larger.index.longest(&chain, u64::MAX);
        assert_eq!((m.blocks, m.servers), (20, 0b10));
        assert_eq!(larger.index.longest(&chain, 0b01).blocks, 5);
        assert_eq!((larger.index.held(0), larger.index.held(1)), (5, 20));
        assert!(Arc::ptr_eq(&larger.demand, &pool.demand));
        // A request still routed by the old routing table records in the old index: its
        // blocks reach the new one too.
        let late: Vec<u64> = (100..110u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        assert_eq!(pool.record(&late, 0, 3), 10);
        assert_eq!(larger.index.longest(&late, 0b01).blocks, 10);
        assert_eq!((larger.index.held(0), larger.index.held(1)), (15, 20));
        // As large again: the same table.
        let (same, _) = ixs.attach("m", &[&b, &a], &large);
        assert!(Arc::ptr_eq(&same, &larger));
    }
}
