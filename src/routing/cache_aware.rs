//! The `prefix` policy's choice: the server holding the longest prefix of the prompt in its KV
//! cache (as the prefix index knows it), unless it is loaded beyond the pool's [`Balance`]
//! against the least loaded server in requests in flight, or took more than its share of the
//! pool's recent requests while busier than the least loaded and the prefix is asked for
//! often; then the next longest holder, and so on. Among servers that hold as much of the
//! prompt (all of them, when none holds any), the one with the least prefill queued first
//! ([`Backend::queued_prefill`]: the blocks of prompts it was sent and has not begun
//! answering, or, for answers that are not streamed, has not had the time to prefill at its
//! learnt pace; plus this prompt's own uncached blocks), then the user's affinity server
//! (read from local state, never claimed), then the fewer requests in flight, then at random.
//! With a shared store the queues and in-flight counts are the whole fleet's: the other
//! instances' as they last shared them are added to this one's ([`Backend::load`],
//! [`Backend::prefill_queue`]).
//!
//! The cache comes first, the queue second, on purpose: moving a prompt off the server that
//! holds it prefills it again, which is work the whole fleet pays for. A policy that moved
//! whenever the holder's queue cost this request more than the cache saves it (tried on the
//! fleet benchmark) did more prefill than the fleet had room for at 65% load and its queues
//! never drained (TTFT p50 12.6 s against 0.4 s). So only a real imbalance moves a prompt,
//! and the queued prefill decides where among equals, which is where the in-flight count
//! misleads (a request in its decode costs the next one little, one in its prefill a lot).
//!
//! The share bound is what spreads a popular prompt: when the prefix a request matched is
//! asked for often ([`PrefixDemand`]: more than the bound's margin of a server's requests), its
//! holder is skipped as soon as it took more than its share of the pool's requests while busier
//! than the least loaded, so the overflow finds a second holder, and so on, where the in-flight
//! bound alone moved it only once the holder's queue was `balance_abs` requests deep. It counts
//! requests, not queues, so moving a prompt does not feed it (the prefill a move costs raises
//! the queues, never the request rate). A conversation's history is asked for once a turn:
//! never moved by it (on the fleet benchmark, a bound on every request moved 6% of the
//! multi-turn chats' requests, each prefilling its whole history again, and TTFT p50 went
//! from 0.4 s to 2.2 s).
//!
//! [`Backend::queued_prefill`]: crate::upstream::Backend::queued_prefill
//! [`Backend::load`]: crate::upstream::Backend::load
//! [`Backend::prefill_queue`]: crate::upstream::Backend::prefill_queue
//! [`Balance`]: super::table::Balance

use super::table::{Member, Pool};
use crate::routing::prefix::{Match, PrefixDemand, PrefixIndex, NO_SLOT};

/// Holder sets looked up, deepest first (each costs one lookup); servers past them count as
/// holding nothing of the prompt.
const MAX_ROUNDS: usize = 4;

/// The chosen member and the blocks of the prompt it holds.
pub struct PrefixChoice<'a> {
    pub member: Option<(usize, &'a Member)>,
    pub matched_blocks: usize,
}

/// Choose a member of `pool` for the prompt `chain` (its block hashes), skipping the members
/// at `exclude`; `pinned` is the user's affinity server, if any.
pub fn choose_by_prefix<'a>(
    pool: &'a Pool,
    index: &PrefixIndex,
    demand: &PrefixDemand,
    chain: &[u64],
    pinned: Option<&str>,
    exclude: &[usize],
) -> PrefixChoice<'a> {
    let usable = |i: usize, m: &Member| m.backend.is_healthy() && !exclude.contains(&i);
    let mut candidates = 0u64;
    let mut least = i64::MAX;
    let (mut rates, mut usable_n) = (0f32, 0u32);
    for (i, m) in pool.members.iter().enumerate() {
        if usable(i, m) {
            if m.slot != NO_SLOT {
                candidates |= 1 << m.slot;
            }
            least = least.min(load(m));
            rates += m.rate.get();
            usable_n += 1;
        }
    }
    if least == i64::MAX {
        // No healthy server: the least loaded of those held out while their probes pass.
        return PrefixChoice {
            member: super::least_loaded::least_in_flight(pool, exclude),
            matched_blocks: 0,
        };
    }
    let mut rounds = [Match::default(); MAX_ROUNDS];
    let found = index.holders_by_depth(chain, candidates, &mut rounds);
    let rounds = &rounds[..found];
    let balance = pool.balance;
    let mean_rate = rates / usable_n.max(1) as f32;
    // A prefix asked for often (at least the share bound's margin of a server's requests):
    // the share bound spreads it. One asked for rarely (a conversation's history) stays on
    // its holder unless the in-flight bound moves it.
    let shared = match rounds.first() {
        Some(m) if balance.share > 0.0 => {
            demand.note(chain[m.blocks - 1]) > (balance.share - 1.0) * mean_rate
        }
        _ => false,
    };
    let held = |m: &Member| {
        if m.slot == NO_SLOT {
            return 0;
        }
        let bit = 1u64 << m.slot;
        rounds
            .iter()
            .find(|r| r.servers & bit != 0)
            .map_or(0, |r| r.blocks)
    };
    let total = chain.len() as i64;
    let mut best: Option<(usize, &Member)> = None;
    let mut best_key = Key::WORST;
    let mut ties = 0u32;
    for (i, m) in pool.members.iter().enumerate() {
        if !usable(i, m) {
            continue;
        }
        let inflight = load(m);
        if !balance.allows(inflight, least)
            || (shared && !balance.within_share(m.rate.get(), mean_rate, inflight, least))
        {
            continue;
        }
        let blocks = held(m);
        let key = Key {
            blocks,
            cost: m.backend.prefill_queue() + total - blocks as i64,
            pinned: pinned.is_some_and(|p| *m.backend.id == *p),
            inflight,
        };
        match key.cmp_better(&best_key) {
            std::cmp::Ordering::Less => (best, best_key, ties) = (Some((i, m)), key, 1),
            std::cmp::Ordering::Equal => {
                ties += 1;
                if rand::random_range(0..ties) == 0 {
                    best = Some((i, m));
                }
            }
            std::cmp::Ordering::Greater => {}
        }
    }
    PrefixChoice {
        member: best,
        matched_blocks: best_key.blocks,
    }
}

/// A candidate's standing; better is compared field by field, in this order.
#[derive(Clone, Copy)]
struct Key {
    /// Blocks of the prompt it holds (more is better).
    blocks: usize,
    /// Blocks of prefill before this request's first token: queued, then its own uncached
    /// (fewer is better).
    cost: i64,
    /// The user's affinity server (better).
    pinned: bool,
    inflight: i64,
}

impl Key {
    const WORST: Key = Key {
        blocks: 0,
        cost: i64::MAX,
        pinned: false,
        inflight: i64::MAX,
    };

    fn cmp_better(&self, other: &Key) -> std::cmp::Ordering {
        other
            .blocks
            .cmp(&self.blocks)
            .then(self.cost.cmp(&other.cost))
            .then(other.pinned.cmp(&self.pinned))
            .then(self.inflight.cmp(&other.inflight))
    }
}

/// Requests in flight on the member's server, the other instances' included.
#[inline]
fn load(m: &Member) -> i64 {
    m.backend.load()
}
