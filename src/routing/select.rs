//! Choosing a server: the user's affinity entry first, otherwise the healthy server with the
//! fewest requests in flight (ties broken at random).

use super::table::{Member, Pool};
use crate::store::Store;
use crate::telemetry::AffinityOutcome;

/// The chosen server and, when the request carried a user, the affinity outcome.
pub struct Choice<'a> {
    /// Index in the pool and the member.
    pub member: Option<(usize, &'a Member)>,
    pub affinity: Option<AffinityOutcome>,
}

/// Pick a server of `pool` for `user` (if any), skipping the members at the `exclude` indices
/// (already tried).
pub fn choose<'a>(
    pool: &'a Pool,
    user: Option<&str>,
    store: &dyn Store,
    now_ms: u64,
    exclude: &[usize],
) -> Choice<'a> {
    let Some(user) = user else {
        return Choice {
            member: least_in_flight(pool, exclude),
            affinity: None,
        };
    };
    let pinned = store.affinity_get(user, &pool.model, now_ms);
    let outcome = match pinned.as_deref().and_then(|id| pool.member(id)) {
        Some((i, m)) if m.backend.is_healthy() && !exclude.contains(&i) => {
            return Choice {
                member: Some((i, m)),
                affinity: Some(AffinityOutcome::Hit),
            };
        }
        _ if pinned.is_some() => AffinityOutcome::Fallback,
        _ => AffinityOutcome::Miss,
    };
    let member = least_in_flight(pool, exclude);
    if let Some((_, m)) = member {
        store.affinity_set(user, &pool.model, &m.backend.id, now_ms);
    }
    Choice {
        member,
        affinity: Some(outcome),
    }
}

/// The healthy member with the fewest in-flight requests; ties at random (reservoir sampling).
pub fn least_in_flight<'a>(pool: &'a Pool, exclude: &[usize]) -> Option<(usize, &'a Member)> {
    let mut best: Option<(usize, &Member)> = None;
    let mut best_load = i64::MAX;
    let mut ties = 0u32;
    for (i, m) in pool.members.iter().enumerate() {
        if !m.backend.is_healthy() || exclude.contains(&i) {
            continue;
        }
        let load = m.backend.inflight.get();
        if load < best_load {
            best = Some((i, m));
            best_load = load;
            ties = 1;
        } else if load == best_load {
            ties += 1;
            if rand::random_range(0..ties) == 0 {
                best = Some((i, m));
            }
        }
    }
    best
}
