//! A per-client-IP rate limit (fixed windows), for what a client without a
//! certificate can make the service do: the public opt-out page, and
//! refusals written to the access log. In memory, per process; entries of
//! past windows are pruned once a window.
//!
//! Addresses are cheap (one IPv6 /48 holds 65 536 of the /64s counted as
//! clients), so a flood from many of them must not grow memory, nor what
//! the limit guards, without bound: the table follows at most
//! [`MAX_CLIENTS`] clients per window (a new one beyond is over the limit),
//! and a limiter may have a budget for all clients together.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimiter {
    limit: u32,
    /// Requests of all clients together per window, if bounded.
    total: Option<u32>,
    window: Duration,
    seen: Mutex<Table>,
}

/// The most clients one window follows.
pub const MAX_CLIENTS: usize = 100_000;

/// A request over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Over {
    /// Seconds until the client's window ends (at least 1).
    pub wait_secs: u64,
    /// The first request of the window over the limit.
    pub first: bool,
}

/// Counts per client, all clients' count, and when stale entries were last
/// pruned.
struct Table {
    counts: HashMap<IpAddr, (Instant, u32)>,
    total: (Instant, u32),
    pruned: Instant,
}

impl RateLimiter {
    /// `limit` requests per client and `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimiter {
            limit,
            total: None,
            window,
            seen: Mutex::new(Table {
                counts: HashMap::new(),
                total: (Instant::now(), 0),
                pruned: Instant::now(),
            }),
        }
    }

    /// As [`new`](Self::new), and at most `total` requests of all clients
    /// together per window.
    pub fn with_total(limit: u32, total: u32, window: Duration) -> Self {
        RateLimiter {
            total: Some(total),
            ..Self::new(limit, window)
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
        let wait = |since: Instant| {
            self.window
                .saturating_sub(now.duration_since(since))
                .as_secs()
                .max(1)
        };
        let key = crate::server::client_key(ip);
        if table.counts.len() >= MAX_CLIENTS && !table.counts.contains_key(&key) {
            return Some(Over {
                wait_secs: wait(table.pruned),
                first: false,
            });
        }
        let entry = table.counts.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        if entry.1 > self.limit {
            return Some(Over {
                wait_secs: wait(entry.0),
                first: entry.1 == self.limit.saturating_add(1),
            });
        }
        let total = self.total?;
        if now.duration_since(table.total.0) >= self.window {
            table.total = (now, 0);
        }
        table.total.1 = table.total.1.saturating_add(1);
        (table.total.1 > total).then(|| Over {
            wait_secs: wait(table.total.0),
            first: table.total.1 == total.saturating_add(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_for_all_clients_and_a_bounded_table() {
        let limiter = RateLimiter::with_total(2, 3, Duration::from_secs(60));
        let ip = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        // Three clients, one request each, fill the budget of all.
        for n in 0..3 {
            assert_eq!(limiter.count(ip(n)), None);
        }
        assert_eq!(limiter.count(ip(3)).map(|o| o.first), Some(true));
        assert_eq!(limiter.count(ip(4)).map(|o| o.first), Some(false));

        // More clients than the table follows: a new one is over the limit.
        let limiter = RateLimiter::new(5, Duration::from_secs(60));
        for n in 0..MAX_CLIENTS as u32 {
            assert_eq!(limiter.count(ip(n)), None);
        }
        assert_eq!(
            limiter.count(ip(MAX_CLIENTS as u32)).map(|o| o.first),
            Some(false)
        );
        assert_eq!(limiter.count(ip(7)), None, "a client followed already");
    }

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
