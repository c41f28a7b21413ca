//! How fast a server works through the prefill queued on it, as the `prefix` policy sees it:
//! learnt from streamed answers (their time to first token over the blocks that were queued
//! on the server when they were sent, theirs included), so that an answer that is not streamed
//! (whose first token the gateway cannot see: the whole body comes at the end) can be taken
//! off the server's queue when its prefill is likely done, instead of when its last token is.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

/// Weight of a new sample in the running average (1/8).
const SHIFT: u32 = 3;
/// A sample above this (µs per block) is taken as this: a server stalled for a minute on one
/// block teaches nothing about its pace.
const MAX_US_PER_BLOCK: u64 = 10_000_000;

/// Microseconds per queued block, a running average (0: nothing learnt yet).
#[derive(Debug, Default)]
pub struct PrefillPace(AtomicU32);

impl PrefillPace {
    /// A streamed answer's first token came `ttft` after it was sent with `ahead` blocks
    /// queued on the server (its own included).
    pub fn learn(&self, ttft: Duration, ahead: i64) {
        if ahead <= 0 {
            return;
        }
        let sample = (ttft.as_micros() as u64 / ahead as u64).clamp(1, MAX_US_PER_BLOCK) as u32;
        let _ = self.0.fetch_update(Relaxed, Relaxed, |old| {
            Some(match old {
                0 => sample,
                _ => old - (old >> SHIFT) + (sample >> SHIFT),
            })
        });
    }

    /// When a request sent with `ahead` blocks queued (its own included) is likely prefilled;
    /// `None` until a streamed answer was seen.
    pub fn estimate(&self, ahead: i64) -> Option<Duration> {
        let pace = self.0.load(Relaxed);
        (pace > 0 && ahead > 0).then(|| Duration::from_micros(u64::from(pace) * ahead as u64))
    }

    /// The mean of the paces learnt among `paces` (nothing learnt when none was): for a server
    /// that learnt none, its pool's (the servers of one model, usually on like GPUs).
    pub fn mean<'a>(paces: impl IntoIterator<Item = &'a PrefillPace>) -> PrefillPace {
        let (sum, n) = paces
            .into_iter()
            .map(|p| u64::from(p.0.load(Relaxed)))
            .filter(|&us| us > 0)
            .fold((0u64, 0u64), |(s, n), us| (s + us, n + 1));
        PrefillPace(AtomicU32::new(sum.checked_div(n).unwrap_or(0) as u32))
    }

    /// Milliseconds per queued block, once learnt.
    pub fn ms_per_block(&self) -> Option<f64> {
        let pace = self.0.load(Relaxed);
        (pace > 0).then(|| f64::from(pace) / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_is_learnt_from_streams_and_estimates_the_prefill() {
        let p = PrefillPace::default();
        assert_eq!(p.estimate(10), None, "nothing learnt yet");
        p.learn(Duration::from_millis(400), 0);
        assert_eq!(
            p.ms_per_block(),
            None,
            "a request with nothing queued teaches nothing"
        );
        // 400 ms for 40 blocks: 10 ms a block.
        p.learn(Duration::from_millis(400), 40);
        assert_eq!(p.ms_per_block(), Some(10.0));
        assert_eq!(p.estimate(5), Some(Duration::from_millis(50)));
        assert_eq!(p.estimate(0), None);
        // A running average: one sample of 18 ms moves it by an eighth of the difference.
        p.learn(Duration::from_millis(180), 10);
        assert_eq!(p.ms_per_block(), Some(11.0));
        // A stall is bounded.
        for _ in 0..100 {
            p.learn(Duration::from_secs(3600), 1);
        }
        assert!(p.ms_per_block().unwrap() <= 10_000.0);
    }

    #[test]
    fn a_server_that_learnt_nothing_can_take_its_pools_mean() {
        let (a, b, none) = (
            PrefillPace::default(),
            PrefillPace::default(),
            PrefillPace::default(),
        );
        a.learn(Duration::from_millis(100), 10);
        b.learn(Duration::from_millis(300), 10);
        let mean = PrefillPace::mean([&a, &none, &b]);
        assert_eq!(
            mean.ms_per_block(),
            Some(20.0),
            "those that learnt nothing do not count"
        );
        assert_eq!(mean.estimate(3), Some(Duration::from_millis(60)));
        assert_eq!(PrefillPace::mean([&none]).estimate(3), None);
        assert_eq!(PrefillPace::mean([]).ms_per_block(), None);
    }
}
