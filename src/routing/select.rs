//! Choosing a server by the pool's policy. `affinity`: the user's affinity entry first,
//! otherwise the healthy server with the fewest requests in flight (ties broken at random).
//! `least_inflight`: that server always. `prefix`: see [`super::cache_aware`].

use super::least_loaded::least_in_flight;
use super::table::{Member, Pool};
use crate::config::Policy;
use crate::store::{Claim, Store};
use crate::telemetry::AffinityOutcome;

/// The chosen server and, when the request carried a user, the affinity outcome.
pub struct Choice<'a> {
    /// Index in the pool and the member.
    pub member: Option<(usize, &'a Member)>,
    pub affinity: Option<AffinityOutcome>,
    /// Under the `prefix` policy: the blocks of the prompt the chosen server holds.
    pub matched_blocks: Option<usize>,
}

impl<'a> Choice<'a> {
    fn by_load(member: Option<(usize, &'a Member)>) -> Self {
        Self {
            member,
            affinity: None,
            matched_blocks: None,
        }
    }
}

/// Pick a server of `pool` for `user` (if any) and the prompt `chain` (its block hashes, empty
/// unless the pool routes by prefix), skipping the members at the `exclude` indices (already
/// tried). An affinity hit is answered from local state; only a miss or a fallback asks the
/// store to agree with the other instances.
pub async fn choose<'a>(
    pool: &'a Pool,
    user: Option<&str>,
    chain: &[u64],
    store: &dyn Store,
    now_ms: u64,
    exclude: &[usize],
) -> Choice<'a> {
    match (pool.policy, &pool.prefix) {
        (Policy::Prefix, Some(ix)) => {
            // The user's server, as this instance knows it: a tie-breaker, never claimed.
            let pinned = user.and_then(|u| store.affinity_get(u, &pool.model, now_ms));
            let c = super::cache_aware::choose_by_prefix(
                pool,
                &ix.index,
                &ix.demand,
                chain,
                pinned.as_deref(),
                exclude,
            );
            return Choice {
                member: c.member,
                affinity: None,
                matched_blocks: Some(c.matched_blocks),
            };
        }
        (Policy::LeastInflight, _) => return Choice::by_load(least_in_flight(pool, exclude)),
        _ => {}
    }
    let Some(user) = user else {
        return Choice::by_load(least_in_flight(pool, exclude));
    };
    let usable = |id: &str| {
        pool.member(id)
            .filter(|(i, m)| m.backend.is_healthy() && !exclude.contains(i))
    };
    let pinned = store.affinity_get(user, &pool.model, now_ms);
    if let Some(hit) = pinned.as_deref().and_then(usable) {
        return Choice {
            member: Some(hit),
            affinity: Some(AffinityOutcome::Hit),
            matched_blocks: None,
        };
    }
    let Some(candidate) = least_in_flight(pool, exclude) else {
        return Choice::by_load(None);
    };
    let mut stale = pinned;
    // At most twice: the shared entry may name a server this instance cannot use.
    for _ in 0..2 {
        let claim = store
            .affinity_claim(
                user,
                &pool.model,
                &candidate.1.backend.id,
                stale.as_deref(),
                now_ms,
            )
            .await;
        let (agreed, existed) = match claim {
            Claim::LocalOnly => break,
            Claim::Agreed { server, existed } => (server, existed),
        };
        if !existed && *agreed == *candidate.1.backend.id {
            let outcome = if stale.is_some() {
                AffinityOutcome::Fallback
            } else {
                AffinityOutcome::Miss
            };
            return Choice {
                member: Some(candidate),
                affinity: Some(outcome),
                matched_blocks: None,
            };
        }
        match usable(&agreed) {
            // The user was pinned (through another instance) to a server this one can use.
            Some(other) => {
                return Choice {
                    member: Some(other),
                    affinity: Some(AffinityOutcome::Hit),
                    matched_blocks: None,
                }
            }
            None => stale = Some(agreed),
        }
    }
    // The shared store was unreachable (or disagreed twice): served on local knowledge.
    Choice {
        member: Some(candidate),
        affinity: Some(AffinityOutcome::Fallback),
        matched_blocks: None,
    }
}
