//! A per-client-IP rate limit (fixed windows), for what a client without a
//! certificate can make the service do: the public opt-out page, and
//! refusals written to the access log. In memory, per process; entries of
//! past windows are pruned once a window.
//!
//! Addresses are cheap (one IPv6 /48 holds 65 536 of the /64s counted as
//! clients), so a flood from many of them must not grow memory, nor what
//! the limit guards, without bound: the table follows at most
//! [`MAX_CLIENTS`] clients per window (a new one beyond is over the limit),
//! and a limiter may have a budget for all clients together. One IPv6 /48
//! adds at most [`NETWORK_MOST`] clients a window, and once the table is
//! half full at most [`NETWORK_SHARE`]: without that, the holder of a /47
//! could fill the table every window, and every newcomer — a customer
//! opting out — would be refused while it lasted.

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

/// While the table is half full or more, one IPv6 /48 adds at most this
/// many new clients (/64s) per window: a flood from it then fills 16
/// entries, not 65 536. Its clients already followed go on to their own
/// limit, and below that pressure a /48 is held back only past
/// [`NETWORK_MOST`] (one subscriber's /56 must not lock its neighbours out
/// of the opt-out page).
pub const NETWORK_SHARE: u32 = 16;

/// The most clients one IPv6 /48 adds in a window at any time: 1/64 of the
/// table, so that it takes 33 networks to bring [`NETWORK_SHARE`]'s
/// pressure about.
pub const NETWORK_MOST: u32 = (MAX_CLIENTS / 64) as u32;

/// The network an address is counted in where one holder may have many
/// addresses: its IPv4 /24, or its IPv6 /48 (an IPv4 client of a
/// dual-stack listener by its IPv4 address).
pub fn network(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[3..].fill(0);
            IpAddr::V6(s.into())
        }
    }
}

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
    /// IPv6 clients' /48s (the top 48 bits): when the window started and
    /// how many new clients each added in it (then refused).
    networks: HashMap<u64, Network>,
    total: (Instant, u32),
    pruned: Instant,
}

/// One IPv6 /48's newcomers in its window: added to the table, refused.
struct Network {
    since: Instant,
    added: u32,
    refused: u32,
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
                networks: HashMap::new(),
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
    /// saying whether it is the window's first request over it (the one a
    /// caller may record: with a budget for all clients, only while that
    /// budget has room).
    pub fn count(&self, ip: IpAddr) -> Option<Over> {
        let now = Instant::now();
        let Ok(mut table) = self.seen.lock() else {
            return None;
        };
        let table = &mut *table;
        // Prune stale windows once per window, and sooner (at most once a
        // second) when the table is full: a burst from many addresses then
        // keeps newcomers out for no longer than its own window.
        let key = crate::server::client_key(ip);
        let full = table.counts.len() >= MAX_CLIENTS && !table.counts.contains_key(&key);
        let since_pruned = now.saturating_duration_since(table.pruned);
        if since_pruned >= self.window || (full && since_pruned >= Duration::from_secs(1)) {
            let window = self.window;
            table
                .counts
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
            table
                .networks
                .retain(|_, n| now.saturating_duration_since(n.since) < window);
            table.pruned = now;
        }
        let wait = |since: Instant| {
            self.window
                .saturating_sub(now.saturating_duration_since(since))
                .as_secs()
                .max(1)
        };
        if table.counts.len() >= MAX_CLIENTS && !table.counts.contains_key(&key) {
            return Some(Over {
                wait_secs: 1,
                first: false,
            });
        }
        // Under pressure (the table half full) one IPv6 /48 adds at most
        // NETWORK_SHARE new clients a window; clients it already has go on
        // to their own limit, and without pressure nobody is held back by
        // a neighbour.
        // At all times one /48 adds at most NETWORK_MOST entries a window,
        // so that no single network can bring the pressure about by itself.
        let mut over_network = None;
        if !table.counts.contains_key(&key)
            && let Some(net) = network_of(ip)
        {
            let pressure = table.counts.len() >= MAX_CLIENTS / 2;
            let network = table.networks.entry(net).or_insert(Network {
                since: now,
                added: 0,
                refused: 0,
            });
            if now.saturating_duration_since(network.since) >= self.window {
                *network = Network {
                    since: now,
                    added: 0,
                    refused: 0,
                };
            }
            let cap = if pressure {
                NETWORK_SHARE
            } else {
                NETWORK_MOST
            };
            if network.added >= cap {
                // The network's first refusal of the window is the one a
                // caller may record (within all clients' budget, below).
                over_network = Some(Over {
                    wait_secs: wait(network.since),
                    first: network.refused == 0,
                });
                network.refused = network.refused.saturating_add(1);
            } else {
                network.added += 1;
            }
        }
        let over_own = match over_network {
            Some(over) => Some(over),
            None => {
                let entry = table.counts.entry(key).or_insert((now, 0));
                if now.saturating_duration_since(entry.0) >= self.window {
                    *entry = (now, 0);
                }
                entry.1 = entry.1.saturating_add(1);
                (entry.1 > self.limit).then(|| Over {
                    wait_secs: wait(entry.0),
                    first: entry.1 == self.limit.saturating_add(1),
                })
            }
        };
        // A request over its own limit counts against all clients' budget
        // only when it would be recorded (its first), so that the budget
        // bounds the records, not the refusals.
        if over_own.is_some_and(|o| !o.first) {
            return over_own;
        }
        let Some(total) = self.total else {
            return over_own;
        };
        if now.saturating_duration_since(table.total.0) >= self.window {
            table.total = (now, 0);
        }
        table.total.1 = table.total.1.saturating_add(1);
        let budget_left = table.total.1 <= total;
        match over_own {
            Some(own) => Some(Over {
                first: budget_left,
                ..own
            }),
            None if budget_left => None,
            None => Some(Over {
                wait_secs: wait(table.total.0),
                first: table.total.1 == total.saturating_add(1),
            }),
        }
    }
}

/// The /48 of an IPv6 client (not of an IPv4 one, mapped or not): the top
/// 48 bits.
fn network_of(ip: IpAddr) -> Option<u64> {
    match ip.to_canonical() {
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) => Some((v6.to_bits() >> 80) as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_is_an_ipv4_slash_24_or_an_ipv6_slash_48() {
        let net = |s: &str| network(s.parse().unwrap()).to_string();
        assert_eq!(net("203.0.113.77"), "203.0.113.0");
        assert_eq!(net("::ffff:203.0.113.77"), "203.0.113.0");
        assert_eq!(net("2001:db8:aa:bb:cc::1"), "2001:db8:aa::");
        assert_eq!(net("2001:db8:aa:ffff::"), "2001:db8:aa::");
    }

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
        // A client's first request over its own limit is not recorded
        // either once the budget of all is spent.
        assert!(limiter.count(ip(0)).is_some());
        assert_eq!(limiter.count(ip(0)).map(|o| o.first), Some(false));
        assert_eq!(limiter.count(ip(0)).map(|o| o.first), Some(false));

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

        // A full table of clients whose window has passed makes room (at
        // most once a second), so a burst keeps newcomers out for no longer
        // than its own window.
        let limiter = RateLimiter::new(5, Duration::from_millis(1100));
        for n in 0..MAX_CLIENTS as u32 {
            assert_eq!(limiter.count(ip(n)), None);
        }
        assert!(limiter.count(ip(MAX_CLIENTS as u32)).is_some());
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(limiter.count(ip(MAX_CLIENTS as u32 + 1)), None);
    }

    /// Under pressure one /48 adds at most 16 new /64s a window; its /64s
    /// already followed, other /48s and IPv4 clients are unaffected, and
    /// without pressure nobody is held back by a neighbour.
    #[test]
    fn under_pressure_an_ipv6_48_adds_a_bounded_number_of_clients() {
        let in_48 = |net: u16, n: u16| -> IpAddr {
            std::net::Ipv6Addr::new(0x2001, 0xdb8, net, n, 0, 0, 0, 1).into()
        };
        let limiter = RateLimiter::new(2, Duration::from_secs(60));
        for n in 0..100 {
            assert_eq!(limiter.count(in_48(1, n)), None, "no pressure: /64 {n}");
        }
        // Without pressure too, one /48 holds at most 1/64 of the table
        // (it cannot bring the pressure about alone); its first refusal
        // of the window is the one to record.
        let most = NETWORK_MOST as u16;
        for n in 100..most {
            assert_eq!(limiter.count(in_48(1, n)), None, "/64 {n}");
        }
        assert_eq!(limiter.count(in_48(1, most)).map(|o| o.first), Some(true));
        assert_eq!(
            limiter.count(in_48(1, most + 1)).map(|o| o.first),
            Some(false)
        );
        assert_eq!(limiter.count(in_48(2, 0)), None, "another /48");
        // That first refusal is recorded only within all clients' budget.
        let budgeted = RateLimiter::with_total(2, NETWORK_MOST, Duration::from_secs(60));
        for n in 0..most {
            assert_eq!(budgeted.count(in_48(1, n)), None, "/64 {n}");
        }
        assert_eq!(budgeted.count(in_48(1, most)).map(|o| o.first), Some(false));
        // One /64 past its own limit holds nobody else back either.
        for _ in 0..100 {
            let _ = limiter.count(in_48(4, 0));
        }
        assert_eq!(limiter.count(in_48(4, 1)), None);

        let limiter = RateLimiter::new(2, Duration::from_secs(60));
        let v4 = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        for n in 0..(MAX_CLIENTS / 2) as u32 {
            assert_eq!(limiter.count(v4(n)), None);
        }
        let share = NETWORK_SHARE as u16;
        for n in 0..share {
            assert_eq!(limiter.count(in_48(1, n)), None, "/64 {n}");
        }
        assert_eq!(limiter.count(in_48(1, share)).map(|o| o.first), Some(true));
        for n in share + 1..1000 {
            assert_eq!(
                limiter.count(in_48(1, n)).map(|o| o.first),
                Some(false),
                "/64 {n}"
            );
        }
        let table = limiter.seen.lock().unwrap();
        assert_eq!(table.counts.len(), MAX_CLIENTS / 2 + usize::from(share));
        drop(table);
        assert_eq!(limiter.count(in_48(1, 0)), None, "a /64 already followed");
        assert_eq!(limiter.count(in_48(2, 0)), None, "another /48");
        assert_eq!(limiter.count(v4(MAX_CLIENTS as u32)), None, "IPv4");
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
