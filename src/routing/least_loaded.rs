//! The least loaded server of a pool: the `least_inflight` policy, and every other policy's
//! fallback.

use super::table::{Member, Pool};
#[cfg(doc)]
use crate::upstream::Backend;

/// The healthy member with the fewest in-flight requests (with a shared store, the other
/// instances' included: [`Backend::load`]); ties at random (reservoir sampling).
/// With no healthy member, one held out by its failing answers while its probes pass (a pool
/// whose only server answered a few 5xx is not refused whole for the hold).
pub fn least_in_flight<'a>(pool: &'a Pool, exclude: &[usize]) -> Option<(usize, &'a Member)> {
    least_loaded(pool, exclude, |m| m.backend.is_healthy())
        .or_else(|| least_loaded(pool, exclude, |m| m.backend.health.is_held_passing()))
}

fn least_loaded<'a>(
    pool: &'a Pool,
    exclude: &[usize],
    usable: impl Fn(&Member) -> bool,
) -> Option<(usize, &'a Member)> {
    let mut best: Option<(usize, &Member)> = None;
    let mut best_load = i64::MAX;
    let mut ties = 0u32;
    for (i, m) in pool.members.iter().enumerate() {
        if !usable(m) || exclude.contains(&i) {
            continue;
        }
        let load = m.backend.load();
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
