//! A per-client-IP rate limit (fixed one-minute windows), for the public
//! pages that need no certificate. In memory, per process; entries of past
//! windows are pruned as the table grows.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimiter {
    limit: u32,
    window: Duration,
    seen: Mutex<Table>,
}

/// A request over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Over {
    /// Seconds until the client's window ends (at least 1).
    pub wait_secs: u64,
    /// The first request of the window over the limit.
    pub first: bool,
}

/// Counts per client, and when stale entries were last pruned.
struct Table {
    counts: HashMap<IpAddr, (Instant, u32)>,
    pruned: Instant,
}

impl RateLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimiter {
            limit,
            window,
            seen: Mutex::new(Table {
                counts: HashMap::new(),
                pruned: Instant::now(),
            }),
        }
    }

    /// Counts one request from `ip`; `Err(seconds)` to wait when over.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        match self.count(ip) {
            None => Ok(()),
            Some(over) => Err(over.wait_secs),
        }
    }

    /// Counts one request from `ip`; `Some` when it is over the limit,
    /// saying whether it is the window's first request over it.
    pub fn count(&self, ip: IpAddr) -> Option<Over> {
        let now = Instant::now();
        let Ok(mut table) = self.seen.lock() else {
            return None;
        };
        // Prune stale windows at most once per window, not per request.
        if now.duration_since(table.pruned) >= self.window {
            let window = self.window;
            table
                .counts
                .retain(|_, (start, _)| now.duration_since(*start) < window);
            table.pruned = now;
        }
        let entry = table
            .counts
            .entry(crate::server::client_key(ip))
            .or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        if entry.1 > self.limit {
            let wait = self.window.saturating_sub(now.duration_since(entry.0));
            return Some(Over {
                wait_secs: wait.as_secs().max(1),
                first: entry.1 == self.limit.saturating_add(1),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_ip_and_window() {
        let limiter = RateLimiter::new(3, Duration::from_millis(200));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
        }
        assert_eq!(limiter.count(a).map(|o| o.first), Some(true));
        assert_eq!(limiter.count(a).map(|o| o.first), Some(false));
        assert!(limiter.check(a).is_err());
        assert!(limiter.check(b).is_ok(), "another client is unaffected");
        std::thread::sleep(Duration::from_millis(250));
        assert!(limiter.check(a).is_ok(), "a new window");
        // One IPv6 /64 is one client.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(v6a).is_ok());
        }
        assert!(limiter.check(v6b).is_err());
        // An IPv4 client of a dual-stack listener is its IPv4 address, not
        // the /64 that every such client shares.
        let mapped_a: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let mapped_b: IpAddr = "::ffff:198.51.100.9".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(mapped_a).is_ok());
        }
        assert!(limiter.check(mapped_a).is_err());
        assert!(limiter.check(mapped_b).is_ok(), "another IPv4 client");
    }
}
