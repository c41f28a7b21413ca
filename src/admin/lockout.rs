//! Failed admin authentications, counted per client address: after `max` failures within a
//! window, the address is refused with 429 and `Retry-After` for a while, whatever it sends
//! (right credentials included, or guessing would go on). The address is the TCP peer's, not a
//! forwarded header a client could write itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at most (beyond, the ones neither counting nor blocked are forgotten).
const MAX_TRACKED: usize = 100_000;

struct Failures {
    since: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

/// The failures of every address.
pub struct Lockout {
    max: u32,
    window: Duration,
    block: Duration,
    addresses: Mutex<HashMap<IpAddr, Failures>>,
}

impl Lockout {
    /// `max` failures within `window` block for `block`; `max` 0: never.
    pub fn new(max: u32, window: Duration, block: Duration) -> Self {
        Self {
            max,
            window,
            block,
            addresses: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` is still blocked (None: it is not).
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        if self.max == 0 {
            return None;
        }
        let now = Instant::now();
        let addresses = self.addresses.lock().ok()?;
        let until = addresses.get(&ip)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Count a failure of `ip`; how long it is now blocked, when this one blocks it.
    pub fn failed(&self, ip: IpAddr) -> Option<Duration> {
        if self.max == 0 {
            return None;
        }
        let now = Instant::now();
        let mut addresses = self.addresses.lock().ok()?;
        if addresses.len() >= MAX_TRACKED && !addresses.contains_key(&ip) {
            let (window, max) = (self.window, self.max);
            addresses.retain(|_, f| {
                f.blocked_until.is_some_and(|u| u > now)
                    || (now.duration_since(f.since) < window && f.count + 1 >= max)
            });
        }
        let f = addresses.entry(ip).or_insert(Failures {
            since: now,
            count: 0,
            blocked_until: None,
        });
        if now.duration_since(f.since) >= self.window {
            *f = Failures {
                since: now,
                count: 0,
                blocked_until: f.blocked_until.filter(|u| *u > now),
            };
        }
        f.count += 1;
        if f.count >= self.max {
            f.blocked_until = Some(now + self.block);
            f.count = 0;
            f.since = now;
            return Some(self.block);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_within_the_window_block_and_the_block_ends() {
        let l = Lockout::new(3, Duration::from_secs(60), Duration::from_millis(50));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!((l.failed(a), l.failed(a)), (None, None));
        assert!(l.blocked(a).is_none());
        assert_eq!(l.failed(a), Some(Duration::from_millis(50)));
        assert!(l.blocked(a).is_some());
        assert!(l.blocked(b).is_none(), "another address is not blocked");
        std::thread::sleep(Duration::from_millis(60));
        assert!(l.blocked(a).is_none());
        let off = Lockout::new(0, Duration::from_secs(60), Duration::from_secs(60));
        for _ in 0..10 {
            assert!(off.failed(a).is_none());
        }
    }

    #[test]
    fn failures_older_than_the_window_start_over() {
        let l = Lockout::new(2, Duration::from_millis(30), Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(l.failed(a).is_none());
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            l.failed(a).is_none(),
            "the first failure is out of the window"
        );
        assert!(l.failed(a).is_some());
    }
}
