//! Failed admin authentications, counted per client address: after `max` failures within a
//! window, the address is refused with 429 and `Retry-After` for a while, whatever it sends
//! (right credentials included, or guessing would go on). The address is the TCP peer's, not a
//! forwarded header a client could write itself; an IPv6 client counts by its /64 (one host
//! holds a whole /64 to rotate through).

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

/// What failures are counted by: an IPv4 address, or an IPv6 /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
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
        let addresses = self
            .addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let until = addresses.get(&key(ip))?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Count a failure of `ip`; how long it is now blocked, when this one blocks it.
    pub fn failed(&self, ip: IpAddr) -> Option<Duration> {
        if self.max == 0 {
            return None;
        }
        let now = Instant::now();
        let ip = key(ip);
        let mut addresses = self
            .addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
            f.blocked_until = Some(now.checked_add(self.block).unwrap_or(now));
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
    fn an_ipv6_client_counts_by_its_64() {
        let l = Lockout::new(2, Duration::from_secs(60), Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        assert!(l.failed(a).is_none());
        assert!(l.failed(b).is_some(), "another address of the same /64");
        assert!(l.blocked("2001:db8::ffff".parse().unwrap()).is_some());
        assert!(l.blocked("2001:db8:0:1::1".parse().unwrap()).is_none());
        // An IPv4-mapped address is its IPv4 address.
        let v4 = Lockout::new(1, Duration::from_secs(60), Duration::from_secs(60));
        assert!(v4.failed("::ffff:10.0.0.9".parse().unwrap()).is_some());
        assert!(v4.blocked("10.0.0.9".parse().unwrap()).is_some());
    }

    #[test]
    fn failures_older_than_the_window_start_over() {
        let l = Lockout::new(2, Duration::from_millis(300), Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(l.failed(a).is_none());
        std::thread::sleep(Duration::from_millis(350));
        assert!(
            l.failed(a).is_none(),
            "the first failure is out of the window"
        );
        assert!(l.failed(a).is_some());
    }
}
