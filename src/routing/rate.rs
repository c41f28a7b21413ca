//! Each pool member's recent request rate, for the `prefix` policy's share bound
//! ([`super::Balance::share`]): the requests sent to it, averaged with exponential decay over
//! [`RATE_WINDOW_S`]. Updated off the request path (the prefix maintenance tick reads the
//! member's request counter); the request path only loads it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// The time constant of the average, in seconds: long enough that a few servers' Poisson
/// noise at a few requests a second stays well inside a 1.2x bound (about 8% at 4 req/s), short
/// enough that a prompt turned popular spreads within seconds.
pub const RATE_WINDOW_S: f64 = 20.0;

/// Requests per second (f32 bits), and the counter as of the last update.
#[derive(Default)]
pub struct RequestRate {
    per_s: AtomicU32,
    seen: AtomicU64,
}

impl RequestRate {
    /// Requests per second, recently.
    #[inline]
    pub fn get(&self) -> f32 {
        f32::from_bits(self.per_s.load(Relaxed))
    }

    /// Fold in the requests counted since the last update (`total` is the counter now), over
    /// `dt_s` seconds. One updater at a time (the maintenance tick).
    pub fn update(&self, total: u64, dt_s: f64) {
        if dt_s <= 0.0 {
            return;
        }
        let new = total.saturating_sub(self.seen.swap(total, Relaxed)) as f64;
        let now = decayed(f64::from(self.get()), new, dt_s);
        self.per_s.store((now as f32).to_bits(), Relaxed);
    }
}

/// A rate of `was` per second, with `new` events in the last `dt_s` seconds folded in
/// (exponential decay over [`RATE_WINDOW_S`]).
#[inline]
pub fn decayed(was: f64, new: f64, dt_s: f64) -> f64 {
    let alpha = 1.0 - (-dt_s / RATE_WINDOW_S).exp();
    was + alpha * (new / dt_s - was)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_follows_the_requests_counted_and_decays_when_they_stop() {
        let r = RequestRate::default();
        let mut total = 0;
        // 10 req/s for three windows: 1 - 1/e^3 of it.
        for tick in 0..(3.0 * RATE_WINDOW_S / 0.05) as usize {
            total += (tick % 2 == 0) as u64;
            r.update(total, 0.05);
        }
        let before = r.get();
        assert!(
            (before - 10.0 * (1.0 - (-3f32).exp())).abs() < 0.2,
            "{before}"
        );
        // Nothing for one window: down to about 1/e of it.
        for _ in 0..(RATE_WINDOW_S / 0.05) as usize {
            r.update(total, 0.05);
        }
        assert!(
            (r.get() - 10.0 / std::f32::consts::E).abs() < 0.2,
            "{}",
            r.get()
        );
        r.update(total, 0.0);
        assert!(r.get() > 3.0, "no time passed: unchanged");
    }
}
