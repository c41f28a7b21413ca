//! The `prefix` policy's choice: the server that most likely still holds the longest prefix
//! of the prompt in its KV cache, unless it is loaded beyond the pool's [`Balance`] against
//! the least loaded server; then the next longest, and so on. The user's affinity server (read
//! from local state, never claimed) breaks ties. No match: the least loaded, preferring the
//! user's server within the balance.

use super::table::{Balance, Member, Pool};
use crate::routing::prefix::{PrefixIndex, NO_SLOT};

/// Holder sets looked at, deepest first, before giving up on the cache (each costs one
/// lookup; a pool whose three best holders are all overloaded is balanced by load instead).
const MAX_ROUNDS: usize = 3;

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
    chain: &[u64],
    pinned: Option<&str>,
    exclude: &[usize],
) -> PrefixChoice<'a> {
    let usable = |i: usize, m: &Member| m.backend.is_healthy() && !exclude.contains(&i);
    let mut candidates = 0u64;
    let mut least = i64::MAX;
    for (i, m) in pool.members.iter().enumerate() {
        if usable(i, m) {
            if m.slot != NO_SLOT {
                candidates |= 1 << m.slot;
            }
            least = least.min(load(m));
        }
    }
    if least == i64::MAX {
        // No healthy server: the least loaded of those held out while their probes pass.
        return PrefixChoice {
            member: super::select::least_in_flight(pool, exclude),
            matched_blocks: 0,
        };
    }
    let balance = pool.balance;
    for _ in 0..MAX_ROUNDS {
        let m = index.longest(chain, candidates);
        if m.blocks == 0 {
            break;
        }
        let pick = best_of(pool, pinned, balance, least, |i, member| {
            member.slot != NO_SLOT && m.servers & 1 << member.slot != 0 && usable(i, member)
        });
        if pick.is_some() {
            return PrefixChoice {
                member: pick,
                matched_blocks: m.blocks,
            };
        }
        candidates &= !m.servers;
    }
    PrefixChoice {
        member: best_of(pool, pinned, balance, least, usable),
        matched_blocks: 0,
    }
}

#[inline]
fn load(m: &Member) -> i64 {
    m.backend.inflight.get()
}

/// Among the members `eligible` says, within `balance` of `least`: the pinned one if it is
/// there, else the least loaded (ties at random).
fn best_of<'a>(
    pool: &'a Pool,
    pinned: Option<&str>,
    balance: Balance,
    least: i64,
    eligible: impl Fn(usize, &Member) -> bool,
) -> Option<(usize, &'a Member)> {
    let mut best: Option<(usize, &Member)> = None;
    let mut best_load = i64::MAX;
    let mut ties = 0u32;
    for (i, m) in pool.members.iter().enumerate() {
        if !eligible(i, m) {
            continue;
        }
        let l = load(m);
        if !balance.allows(l, least) {
            continue;
        }
        if pinned.is_some_and(|p| *m.backend.id == *p) {
            return Some((i, m));
        }
        if l < best_load {
            (best, best_load, ties) = (Some((i, m)), l, 1);
        } else if l == best_load {
            ties += 1;
            if rand::random_range(0..ties) == 0 {
                best = Some((i, m));
            }
        }
    }
    best
}
