//! Lock-free health state of one server, with consecutive-failure/success thresholds.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

/// Thresholds from `[health]`.
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// How long passing probes cannot readmit a server that failing requests ejected; doubled
    /// for each further such ejection without a served request between (up to 8×).
    pub passive_ejection_ms: u64,
}

/// The longest passive ejection, as a multiple of `passive_ejection_ms`.
const MAX_EJECTION_SHIFT: u32 = 3;

impl From<&crate::config::HealthConfig> for HealthPolicy {
    fn from(h: &crate::config::HealthConfig) -> Self {
        Self {
            unhealthy_threshold: h.unhealthy_threshold,
            healthy_threshold: h.healthy_threshold,
            passive_ejection_ms: h.passive_ejection_ms,
        }
    }
}

/// Where an outcome was observed. Probes and proxied requests keep separate failure streaks, so
/// that requests that succeed do not mask a failing health endpoint (and vice versa); only
/// probes readmit an ejected server, since it receives no requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Probe,
    Passive,
}

/// What a recorded outcome did to the server's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    BecameHealthy,
    BecameUnhealthy,
}

/// A copy of a server's health for the admin API and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HealthSnapshot {
    pub healthy: bool,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    /// Unix milliseconds of the last active probe, 0 when none ran yet.
    pub last_check_ms: u64,
    /// Unix milliseconds of the last failure (probe or passive), 0 when none.
    pub last_failure_ms: u64,
}

/// Health of one server. New servers start healthy: the first probe round runs at start-up and
/// connect failures are retried elsewhere, so an unreachable server is ejected within
/// `unhealthy_threshold` probes or requests.
#[derive(Debug)]
pub struct HealthState {
    healthy: AtomicBool,
    failures: AtomicU32,
    passive_failures: AtomicU32,
    successes: AtomicU32,
    last_check_ms: AtomicU64,
    last_failure_ms: AtomicU64,
    /// Passive ejections since the server last served a request well.
    passive_ejections: AtomicU32,
    /// Until when (unix ms) probes cannot readmit it after a passive ejection.
    held_until_ms: AtomicU64,
}

impl Default for HealthState {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            passive_failures: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            last_check_ms: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
            passive_ejections: AtomicU32::new(0),
            held_until_ms: AtomicU64::new(0),
        }
    }
}

impl HealthState {
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// A probe ran (whatever its outcome) at `now_ms`.
    pub fn mark_checked(&self, now_ms: u64) {
        self.last_check_ms.store(now_ms, Relaxed);
    }

    pub fn record_success(&self, policy: HealthPolicy, source: Source, now_ms: u64) -> Transition {
        if source == Source::Passive {
            // Every served request comes here: write only what changes (routing reads
            // `healthy`, beside these, on every request).
            if self.passive_failures.load(Relaxed) != 0 {
                self.passive_failures.store(0, Relaxed);
            }
            if self.passive_ejections.load(Relaxed) != 0 {
                self.passive_ejections.store(0, Relaxed);
            }
            return Transition::None;
        }
        self.failures.store(0, Relaxed);
        self.passive_failures.store(0, Relaxed);
        let successes = self.successes.fetch_add(1, Relaxed).saturating_add(1);
        if !self.is_healthy()
            && successes >= policy.healthy_threshold
            && now_ms >= self.held_until_ms.load(Relaxed)
            && self
                .healthy
                .compare_exchange(false, true, Relaxed, Relaxed)
                .is_ok()
        {
            self.held_until_ms.store(0, Relaxed);
            return Transition::BecameHealthy;
        }
        Transition::None
    }

    pub fn record_failure(&self, policy: HealthPolicy, source: Source, now_ms: u64) -> Transition {
        self.successes.store(0, Relaxed);
        self.last_failure_ms.store(now_ms, Relaxed);
        let streak = match source {
            Source::Probe => &self.failures,
            Source::Passive => &self.passive_failures,
        };
        let failures = streak.fetch_add(1, Relaxed).saturating_add(1);
        if self.is_healthy() && failures >= policy.unhealthy_threshold {
            if source == Source::Passive {
                // Its health endpoint may pass while its answers fail: probes wait, longer
                // each time, so that it does not flap back in to fail more requests. Set
                // before the server leaves, so that no probe readmits it in between.
                let n = self.passive_ejections.load(Relaxed);
                let hold = policy.passive_ejection_ms << n.min(MAX_EJECTION_SHIFT);
                self.held_until_ms.store((now_ms + hold).max(1), Relaxed);
            }
            if self
                .healthy
                .compare_exchange(true, false, Relaxed, Relaxed)
                .is_ok()
            {
                if source == Source::Passive {
                    self.passive_ejections.fetch_add(1, Relaxed);
                }
                return Transition::BecameUnhealthy;
            }
        }
        Transition::None
    }

    /// Until when (unix ms) probes cannot readmit the server (0 or past: no hold).
    pub fn held_until_ms(&self) -> u64 {
        self.held_until_ms.load(Relaxed)
    }

    /// Ejected by failing requests while its probes pass: the server routing falls back to
    /// when a pool has no healthy one (its answers may fail, but a pool answering 503 for the
    /// whole hold would be worse).
    pub fn is_held_passing(&self) -> bool {
        !self.is_healthy()
            && self.held_until_ms.load(Relaxed) != 0
            && self.successes.load(Relaxed) > 0
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        HealthSnapshot {
            healthy: self.is_healthy(),
            consecutive_failures: self
                .failures
                .load(Relaxed)
                .max(self.passive_failures.load(Relaxed)),
            consecutive_successes: self.successes.load(Relaxed),
            last_check_ms: self.last_check_ms.load(Relaxed),
            last_failure_ms: self.last_failure_ms.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: HealthPolicy = HealthPolicy {
        unhealthy_threshold: 3,
        healthy_threshold: 2,
        passive_ejection_ms: 1000,
    };

    use Source::*;

    #[test]
    fn ejects_after_threshold_and_readmits_after_successes() {
        let h = HealthState::default();
        assert!(h.is_healthy());
        assert_eq!(h.record_failure(P, Probe, 1), Transition::None);
        assert_eq!(h.record_failure(P, Probe, 2), Transition::None);
        assert_eq!(h.record_failure(P, Probe, 3), Transition::BecameUnhealthy);
        assert!(!h.is_healthy());
        assert_eq!(h.record_failure(P, Probe, 4), Transition::None);
        assert_eq!(h.record_success(P, Probe, 10), Transition::None);
        assert_eq!(h.record_success(P, Probe, 10), Transition::BecameHealthy);
        let s = h.snapshot();
        assert!(s.healthy);
        assert_eq!((s.consecutive_failures, s.consecutive_successes), (0, 2));
        assert_eq!(s.last_failure_ms, 4);
    }

    #[test]
    fn a_success_resets_the_failure_run() {
        let h = HealthState::default();
        h.record_failure(P, Passive, 1);
        h.record_failure(P, Passive, 2);
        h.record_success(P, Passive, 10);
        h.record_failure(P, Passive, 3);
        h.record_failure(P, Passive, 4);
        assert!(h.is_healthy());
    }

    #[test]
    fn passing_requests_do_not_mask_failing_probes() {
        let h = HealthState::default();
        h.record_failure(P, Probe, 1);
        h.record_success(P, Passive, 10);
        h.record_failure(P, Probe, 2);
        h.record_success(P, Passive, 10);
        assert_eq!(h.record_failure(P, Probe, 3), Transition::BecameUnhealthy);
        // Passive successes cannot readmit; probes do.
        h.record_success(P, Passive, 10);
        h.record_success(P, Passive, 10);
        assert!(!h.is_healthy());
    }

    #[test]
    fn a_passive_ejection_holds_probes_off_longer_each_time_until_a_request_succeeds() {
        let h = HealthState::default();
        let eject = |at: u64| {
            for i in 0..3 {
                h.record_failure(P, Passive, at + i);
            }
            assert!(!h.is_healthy());
        };
        eject(1000);
        // Held for 1 s from the ejection (at 1002): passing probes wait.
        h.record_success(P, Probe, 1500);
        assert_eq!(h.record_success(P, Probe, 1600), Transition::None);
        assert_eq!(h.record_success(P, Probe, 2002), Transition::BecameHealthy);
        // Ejected again without a served request between: 2 s, then 4, 8, and 8 at most.
        for (k, hold) in [2000, 4000, 8000, 8000].into_iter().enumerate() {
            let at = 10_000 * (k as u64 + 1);
            eject(at);
            assert_eq!(h.held_until_ms(), at + 2 + hold);
            h.record_success(P, Probe, at + hold);
            assert!(!h.is_healthy());
            h.record_success(P, Probe, at + 2 + hold);
            assert!(h.is_healthy());
        }
        // A served request resets the count: the next hold is 1 s again.
        h.record_success(P, Passive, 60_000);
        eject(70_000);
        assert_eq!(h.held_until_ms(), 71_002);
        // Probe failures eject without a hold: probes readmit as soon as they pass.
        let p = HealthState::default();
        for i in 0..3 {
            p.record_failure(P, Probe, i);
        }
        p.record_success(P, Probe, 3);
        assert_eq!(p.record_success(P, Probe, 4), Transition::BecameHealthy);
    }
}
