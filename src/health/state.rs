//! Lock-free health state of one server, with consecutive-failure/success thresholds.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

/// Thresholds from `[health]`.
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
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
    successes: AtomicU32,
    last_check_ms: AtomicU64,
    last_failure_ms: AtomicU64,
}

impl Default for HealthState {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
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

    pub fn record_success(&self, policy: HealthPolicy) -> Transition {
        self.failures.store(0, Relaxed);
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

    pub fn record_failure(&self, policy: HealthPolicy, now_ms: u64) -> Transition {
        self.successes.store(0, Relaxed);
        self.last_failure_ms.store(now_ms, Relaxed);
        let failures = self.failures.fetch_add(1, Relaxed).saturating_add(1);
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
            consecutive_failures: self.failures.load(Relaxed),
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

    #[test]
    fn ejects_after_threshold_and_readmits_after_successes() {
        let h = HealthState::default();
        assert!(h.is_healthy());
        assert_eq!(h.record_failure(P, 1), Transition::None);
        assert_eq!(h.record_failure(P, 2), Transition::None);
        assert_eq!(h.record_failure(P, 3), Transition::BecameUnhealthy);
        assert!(!h.is_healthy());
        assert_eq!(h.record_failure(P, 4), Transition::None);
        assert_eq!(h.record_success(P), Transition::None);
        assert_eq!(h.record_success(P), Transition::BecameHealthy);
        let s = h.snapshot();
        assert!(s.healthy);
        assert_eq!((s.consecutive_failures, s.consecutive_successes), (0, 2));
        assert_eq!(s.last_failure_ms, 4);
    }

    #[test]
    fn a_success_resets_the_failure_run() {
        let h = HealthState::default();
        h.record_failure(P, 1);
        h.record_failure(P, 2);
        h.record_success(P);
        h.record_failure(P, 3);
        h.record_failure(P, 4);
        assert!(h.is_healthy());
    }
}
