//! Lock-free health state of one server, with consecutive-failure/success thresholds.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

/// Thresholds from `[health]`.
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
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

    pub fn record_success(&self, policy: HealthPolicy, source: Source) -> Transition {
        if source == Source::Passive {
            self.passive_failures.store(0, Relaxed);
            return Transition::None;
        }
        self.failures.store(0, Relaxed);
        self.passive_failures.store(0, Relaxed);
        let successes = self.successes.fetch_add(1, Relaxed).saturating_add(1);
        if !self.is_healthy()
            && successes >= policy.healthy_threshold
            && self
                .healthy
                .compare_exchange(false, true, Relaxed, Relaxed)
                .is_ok()
        {
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
        if self.is_healthy()
            && failures >= policy.unhealthy_threshold
            && self
                .healthy
                .compare_exchange(true, false, Relaxed, Relaxed)
                .is_ok()
        {
            return Transition::BecameUnhealthy;
        }
        Transition::None
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
        assert_eq!(h.record_success(P, Probe), Transition::None);
        assert_eq!(h.record_success(P, Probe), Transition::BecameHealthy);
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
        h.record_success(P, Passive);
        h.record_failure(P, Passive, 3);
        h.record_failure(P, Passive, 4);
        assert!(h.is_healthy());
    }

    #[test]
    fn passing_requests_do_not_mask_failing_probes() {
        let h = HealthState::default();
        h.record_failure(P, Probe, 1);
        h.record_success(P, Passive);
        h.record_failure(P, Probe, 2);
        h.record_success(P, Passive);
        assert_eq!(h.record_failure(P, Probe, 3), Transition::BecameUnhealthy);
        // Passive successes cannot readmit; probes do.
        h.record_success(P, Passive);
        h.record_success(P, Passive);
        assert!(!h.is_healthy());
    }
}
