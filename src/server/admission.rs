//! Who gets a connection slot, and who loses one.
//!
//! Every accepted connection is registered here with its state: how many of
//! its requests are in flight, since when it has had none, and how many of
//! its requests the client abandoned (HTTP/2 RST_STREAM, a dropped socket).
//! The accept loop uses the register to:
//! - shed a connection when every slot is taken: the one that has been
//!   without a request in flight the longest (a slowloris connection still
//!   dribbling its first request head, a TLS handshake that is not being
//!   finished, an idle keep-alive connection), preferring connections
//!   without a client certificate. A connection whose handler is running
//!   is never shed, nor one idle for less than [`MIN_IDLE_MS`] since its
//!   handshake or last request (time to send a request). One still sending
//!   a response (its handler done) is shed gracefully: the response gets a
//!   grace period, so a client that never reads cannot pin its slot.
//!   Shedding and a request starting are decided by one atomic word, so a
//!   handler is never cut off half-way: it either starts before the shed
//!   (and the connection is not shed) or is answered 503 with
//!   `Connection: close`;
//! - close a connection whose client abandons requests faster than it lets
//!   them finish (HTTP/2 rapid reset): after [`ABANDON_ALLOWANCE`]
//!   abandoned requests, more abandoned than completed closes it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

/// Abandoned requests a connection may have before the abandon ratio is
/// checked at all (a browser-like client cancels now and then).
pub const ABANDON_ALLOWANCE: u64 = 100;

/// A connection is not shed before it has been without a request in flight
/// this long: a real client has time to finish its handshake and send its
/// request, however fast others connect.
pub const MIN_IDLE_MS: u64 = 200;

/// The high bit of [`Connection::flags`]: the connection is being shed.
const SHED: u64 = 1 << 63;

/// Why a connection was told to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its slot went to a newcomer (it had no request in flight).
    Shed,
    /// Its client abandons most of its requests.
    Abandoning,
}

/// One registered connection.
pub struct Connection {
    /// Requests in flight (low bits) and [`SHED`].
    flags: AtomicU64,
    /// Milliseconds since the register's epoch when the last request ended
    /// (or the connection was accepted).
    idle_since_ms: AtomicU64,
    completed: AtomicU64,
    abandoned: AtomicU64,
    /// 0 = open, 1 = shed, 2 = abandoning.
    close_reason: AtomicU64,
    close: Notify,
    epoch: Instant,
    /// Holds a slot of the anonymous (certificate-less) cap.
    anonymous: std::sync::atomic::AtomicBool,
    /// Finished its handshake with a client certificate: shed only when no
    /// connection without one is idle.
    certified: std::sync::atomic::AtomicBool,
    /// Responses produced but not yet fully sent (see [`Responding`]).
    responding: AtomicU64,
    /// When each of those was produced (ms since the epoch), by a
    /// sequence number: the first entry is the oldest still unsent.
    unsent: Mutex<(u64, std::collections::BTreeMap<u64, u64>)>,
    /// The client's address key (see [`client_key`]).
    client: IpAddr,
    /// Its client certificate no longer verifies (revoked, expired, its CA
    /// or CRL changed): while it drains, no request runs with its role.
    withdrawn: std::sync::atomic::AtomicBool,
}

/// Which connections a shed may pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Any,
    Anonymous,
    /// An anonymous connection, for a newcomer from this client key: one of
    /// the client holding the most anonymous connections, when that is more
    /// than the newcomer's own plus one — recently active or not (never
    /// one with a request in flight) — else as [`Pick::Anonymous`]. One
    /// address polling on all its connections faster than [`MIN_IDLE_MS`]
    /// cannot keep everybody else out.
    AnonymousFor(IpAddr),
    /// Those of one client address key.
    Client(IpAddr),
}

/// The key of a client for the per-address cap: the address, or for IPv6
/// its /64 (one subscriber line usually holds a whole /64).
pub fn client_key(ip: IpAddr) -> IpAddr {
    // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d;
    // its key is its IPv4 address, not the /64 every IPv4 client shares.
    match ip.to_canonical() {
        ip @ IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].fill(0);
            IpAddr::V6(s.into())
        }
    }
}

impl Connection {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Marks a request as started; `None` when the connection is being shed
    /// (the caller answers 503 and closes).
    pub fn begin(self: &Arc<Self>) -> Option<Active> {
        self.flags
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| {
                (f & SHED == 0).then_some(f + 1)
            })
            .ok()
            .map(|_| Active {
                connection: self.clone(),
            })
    }

    /// The handshake is done: the idle grace ([`MIN_IDLE_MS`]) counts from
    /// now, so a client far away still has time to send its request.
    /// Marks the connection's certificate as no longer trusted.
    pub fn withdraw(&self) {
        // SeqCst, with `is_withdrawn`, `begin` and `has_requests`: a request
        // that begins as the role is withdrawn either sees the withdrawal
        // or is seen in flight by it (never neither).
        self.withdrawn.store(true, Ordering::SeqCst);
    }

    /// Whether [`withdraw`](Self::withdraw) was called.
    pub fn is_withdrawn(&self) -> bool {
        self.withdrawn.load(Ordering::SeqCst)
    }

    pub fn handshake_done(&self, certified: bool) {
        self.certified.store(certified, Ordering::Release);
        self.idle_since_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Marks a response as being sent until the guard is dropped. Its
    /// handler has finished, so the connection may be shed, but gracefully:
    /// the response gets a grace period to finish.
    pub fn responding(self: &Arc<Self>) -> Responding {
        self.responding.fetch_add(1, Ordering::AcqRel);
        let now = self.now_ms();
        let id = self.unsent.lock().map_or(0, |mut unsent| {
            unsent.0 += 1;
            let id = unsent.0;
            unsent.1.insert(id, now);
            id
        });
        Responding {
            connection: self.clone(),
            id,
        }
    }

    /// True while a produced response is still being sent.
    pub fn is_responding(&self) -> bool {
        self.responding.load(Ordering::Acquire) > 0
    }

    /// How long the oldest response still unsent has waited to be sent
    /// (a client that opens no HTTP/2 window, or never reads, keeps it in
    /// memory); `None` when every response was sent.
    pub fn oldest_unsent(&self) -> Option<std::time::Duration> {
        let now = self.now_ms();
        let unsent = self.unsent.lock().ok()?;
        let (_, &since) = unsent.1.first_key_value()?;
        Some(std::time::Duration::from_millis(now.saturating_sub(since)))
    }

    /// Whether a request is in flight on the connection.
    pub fn has_requests(&self) -> bool {
        self.flags.load(Ordering::SeqCst) & !SHED != 0
    }

    /// How long the connection has had no request in flight (`None` while
    /// one is). Only requests move it: not HTTP/2 PINGs, SETTINGS or
    /// window updates, which keep the connection's I/O from being idle.
    pub fn without_requests_for(&self) -> Option<std::time::Duration> {
        (self.flags.load(Ordering::Acquire) & !SHED == 0).then(|| {
            let since = self.idle_since_ms.load(Ordering::Acquire);
            std::time::Duration::from_millis(self.now_ms().saturating_sub(since))
        })
    }

    /// Marks the connection as holding an anonymous slot.
    pub fn set_anonymous(&self) {
        self.anonymous.store(true, Ordering::Release);
    }

    /// Counts a request whose response was produced.
    pub fn completed(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request the client abandoned before its response; true when
    /// the connection has crossed the line and was told to close.
    pub fn abandoned(&self) -> bool {
        let abandoned = self.abandoned.fetch_add(1, Ordering::Relaxed) + 1;
        let completed = self.completed.load(Ordering::Relaxed);
        if abandoned > ABANDON_ALLOWANCE && abandoned > completed {
            self.tell_to_close(CloseReason::Abandoning);
            return true;
        }
        false
    }

    fn tell_to_close(&self, reason: CloseReason) {
        let code = match reason {
            CloseReason::Shed => 1,
            CloseReason::Abandoning => 2,
        };
        if self
            .close_reason
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.close.notify_one();
        }
    }

    /// Resolves once the connection should close, with the reason.
    pub async fn closing(&self) -> CloseReason {
        loop {
            match self.close_reason.load(Ordering::Acquire) {
                1 => return CloseReason::Shed,
                2 => return CloseReason::Abandoning,
                _ => self.close.notified().await,
            }
        }
    }
}

/// A request in flight on a connection; dropping it ends the request.
pub struct Active {
    connection: Arc<Connection>,
}

impl Drop for Active {
    fn drop(&mut self) {
        let c = &self.connection;
        c.idle_since_ms.store(c.now_ms(), Ordering::Release);
        c.flags.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response still being sent; see [`Connection::responding`].
pub struct Responding {
    connection: Arc<Connection>,
    id: u64,
}

impl Responding {
    /// The client took a piece of the response: its wait to be sent counts
    /// from now. A client reading a large response slowly, but reading, is
    /// not cut off after `--idle-timeout`; one that takes nothing is.
    pub fn progressed(&mut self) {
        let now = self.connection.now_ms();
        if let Ok(mut unsent) = self.connection.unsent.lock() {
            unsent.1.remove(&self.id);
            // A fresh id, the newest: the map stays ordered by wait.
            unsent.0 += 1;
            self.id = unsent.0;
            unsent.1.insert(self.id, now);
        }
    }
}

impl Drop for Responding {
    /// The response was handed over whole: the connection's time without a
    /// request counts from now too (a response read slowly for longer than
    /// the idle timeout is not then taken for idleness and cut off).
    fn drop(&mut self) {
        let c = &self.connection;
        c.idle_since_ms.store(c.now_ms(), Ordering::Release);
        self.connection.responding.fetch_sub(1, Ordering::AcqRel);
        if let Ok(mut unsent) = self.connection.unsent.lock() {
            unsent.1.remove(&self.id);
        }
    }
}

/// Every open connection.
pub struct Register {
    next_id: AtomicU64,
    open: Mutex<Open>,
    epoch: Instant,
}

#[derive(Default)]
struct Open {
    connections: HashMap<u64, Arc<Connection>>,
    per_client: HashMap<IpAddr, usize>,
}

/// A connection's place in the register; dropping it removes it.
pub struct Registration {
    id: u64,
    register: Arc<Register>,
    pub connection: Arc<Connection>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut open) = self.register.open.lock() {
            open.connections.remove(&self.id);
            let client = self.connection.client;
            if let Some(n) = open.per_client.get_mut(&client) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.per_client.remove(&client);
                }
            }
        }
    }
}

impl Register {
    pub fn new() -> Arc<Self> {
        Arc::new(Register {
            next_id: AtomicU64::new(0),
            open: Mutex::new(Open::default()),
            epoch: Instant::now(),
        })
    }

    /// Open connections of the client address key of `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.open
            .lock()
            .map(|open| open.per_client.get(&client_key(ip)).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn register(self: &Arc<Self>, ip: IpAddr) -> Registration {
        let connection = Arc::new(Connection {
            flags: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            close_reason: AtomicU64::new(0),
            close: Notify::new(),
            epoch: self.epoch,
            anonymous: std::sync::atomic::AtomicBool::new(false),
            certified: std::sync::atomic::AtomicBool::new(false),
            responding: AtomicU64::new(0),
            unsent: Mutex::new((0, std::collections::BTreeMap::new())),
            client: client_key(ip),
            withdrawn: std::sync::atomic::AtomicBool::new(false),
        });
        connection
            .idle_since_ms
            .store(connection.now_ms(), Ordering::Release);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut open) = self.open.lock() {
            open.connections.insert(id, connection.clone());
            *open.per_client.entry(connection.client).or_insert(0) += 1;
        }
        Registration {
            id,
            register: self.clone(),
            connection,
        }
    }

    /// Tells the connection that has been without a request in flight the
    /// longest (of those `pick` allows) to close; false when every such
    /// connection is busy or too recently active. Preferred, in order: a
    /// connection without a client certificate (or not yet through its
    /// handshake) over a certified one, and one with nothing left to send
    /// over one still sending a response.
    pub fn shed_one(&self, pick: Pick) -> bool {
        if let Pick::AnonymousFor(newcomer) = pick {
            return self.shed_from_anonymous_hog(newcomer) || self.shed_one(Pick::Anonymous);
        }
        let Ok(open) = self.open.lock() else {
            return false;
        };
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut idle: Vec<&Arc<Connection>> = open
            .connections
            .values()
            .filter(|c| c.flags.load(Ordering::Acquire) == 0)
            .filter(|c| match pick {
                Pick::Any => true,
                Pick::Anonymous | Pick::AnonymousFor(_) => c.anonymous.load(Ordering::Acquire),
                Pick::Client(ip) => c.client == ip,
            })
            .filter(|c| now.saturating_sub(c.idle_since_ms.load(Ordering::Acquire)) >= MIN_IDLE_MS)
            .collect();
        idle.sort_by_key(|c| {
            (
                c.certified.load(Ordering::Acquire),
                c.is_responding(),
                c.idle_since_ms.load(Ordering::Acquire),
            )
        });
        shed_first(idle)
    }

    /// [`Pick::AnonymousFor`]'s first choice: the longest-idle connection
    /// without a request in flight of the client holding the most
    /// anonymous connections, if it holds more than `newcomer`'s plus one;
    /// failing that, the same of the network (an IPv4 /24, an IPv6 /48)
    /// holding the most — one /48 holds 65 536 /64s, each a client of its
    /// own, and one connection from each of 512 of them filled the cap
    /// with no client a hog.
    fn shed_from_anonymous_hog(&self, newcomer: IpAddr) -> bool {
        self.shed_from_hog(newcomer, |client| client)
            || self.shed_from_hog(newcomer, crate::http::rate_limit::network)
    }

    /// [`Self::shed_from_anonymous_hog`] with clients grouped by `group`.
    fn shed_from_hog(&self, newcomer: IpAddr, group: impl Fn(IpAddr) -> IpAddr) -> bool {
        let Ok(open) = self.open.lock() else {
            return false;
        };
        let mut held: HashMap<IpAddr, usize> = HashMap::new();
        // Connections already told to close hold their slot a moment more;
        // they do not count, or one newcomer would shed several.
        for c in open.connections.values() {
            if c.anonymous.load(Ordering::Acquire) && c.flags.load(Ordering::Acquire) & SHED == 0 {
                *held.entry(group(c.client)).or_insert(0) += 1;
            }
        }
        let own = held.get(&group(client_key(newcomer))).copied().unwrap_or(0);
        let Some((hog, most)) = held.into_iter().max_by_key(|(_, n)| *n) else {
            return false;
        };
        if most <= own + 1 {
            return false;
        }
        let mut idle: Vec<&Arc<Connection>> = open
            .connections
            .values()
            .filter(|c| group(c.client) == hog && c.anonymous.load(Ordering::Acquire))
            // Nothing in flight and nothing being sent: behind one address
            // (a NAT) there may be many real people.
            .filter(|c| c.flags.load(Ordering::Acquire) == 0 && !c.is_responding())
            .collect();
        idle.sort_by_key(|c| c.idle_since_ms.load(Ordering::Acquire));
        shed_first(idle)
    }
}

/// Tells the first of `candidates` that has no request in flight at this
/// very moment (one atomic word decides against a request starting) to
/// close; false when none could be.
fn shed_first(candidates: Vec<&Arc<Connection>>) -> bool {
    for c in candidates {
        if c.flags
            .compare_exchange(0, SHED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            c.tell_to_close(CloseReason::Shed);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn counts_per_client_and_sheds_within_one_client() {
        let register = Register::new();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let a = register.register(LOCAL);
        let b = register.register(other);
        let v6a = register.register("2001:db8::1".parse().unwrap());
        let _v6b = register.register("2001:db8::ffff:2".parse().unwrap());
        assert_eq!(register.count(LOCAL), 1);
        assert_eq!(register.count("2001:db8::3".parse().unwrap()), 2, "one /64");
        tokio::time::sleep(std::time::Duration::from_millis(MIN_IDLE_MS + 10)).await;
        assert!(register.shed_one(Pick::Client(other)));
        assert_eq!(b.connection.closing().await, CloseReason::Shed);
        assert!(!register.shed_one(Pick::Client(other)), "none left there");
        drop(b);
        drop(v6a);
        assert_eq!(register.count(other), 0);
        assert_eq!(register.count("2001:db8::3".parse().unwrap()), 1);
        drop(a);
    }

    #[tokio::test]
    async fn sheds_the_longest_idle_and_never_a_busy_connection() {
        let register = Register::new();
        let old = register.register(LOCAL);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let busy = register.register(LOCAL);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let young = register.register(LOCAL);
        assert!(
            !register.shed_one(Pick::Any),
            "nobody is shed right after connecting"
        );
        tokio::time::sleep(std::time::Duration::from_millis(MIN_IDLE_MS)).await;
        let _request = busy.connection.begin().unwrap();
        // The oldest idle one goes first, then the younger; the busy one never.
        assert!(register.shed_one(Pick::Any));
        assert_eq!(old.connection.closing().await, CloseReason::Shed);
        assert!(
            old.connection.begin().is_none(),
            "a shed connection starts nothing"
        );
        assert!(register.shed_one(Pick::Any));
        assert_eq!(young.connection.closing().await, CloseReason::Shed);
        assert!(
            !register.shed_one(Pick::Any),
            "only a busy connection is left"
        );
        drop(old);
        drop(young);
        assert_eq!(register.open.lock().unwrap().connections.len(), 1);
    }

    #[test]
    fn an_ipv4_client_of_a_dual_stack_listener_is_keyed_by_its_own_address() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let other: IpAddr = "::ffff:198.51.100.9".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_ne!(client_key(mapped), client_key(other));
    }

    #[tokio::test]
    async fn sheds_uncertified_before_certified_and_silent_before_sending() {
        let register = Register::new();
        let certified = register.register(LOCAL);
        certified.connection.handshake_done(true);
        let sending = register.register(LOCAL);
        sending.connection.handshake_done(false);
        let _response = sending.connection.responding();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let silent = register.register(LOCAL);
        silent.connection.handshake_done(false);
        tokio::time::sleep(std::time::Duration::from_millis(MIN_IDLE_MS + 10)).await;
        // The youngest, but uncertified and with nothing to send: first.
        assert!(register.shed_one(Pick::Any));
        assert_eq!(silent.connection.closing().await, CloseReason::Shed);
        assert!(register.shed_one(Pick::Any));
        assert_eq!(sending.connection.closing().await, CloseReason::Shed);
        assert!(register.shed_one(Pick::Any));
        assert_eq!(certified.connection.closing().await, CloseReason::Shed);
    }

    /// One address holding the anonymous connections, each active a moment
    /// ago, gives one up to a newcomer from another address; an address
    /// holding no more than the newcomer's share does not.
    #[tokio::test]
    async fn an_address_holding_most_anonymous_connections_makes_room_for_another() {
        let register = Register::new();
        let hog: IpAddr = "192.0.2.1".parse().unwrap();
        let newcomer: IpAddr = "198.51.100.7".parse().unwrap();
        let held: Vec<Registration> = (0..3)
            .map(|_| {
                let r = register.register(hog);
                r.connection.handshake_done(false);
                r.connection.set_anonymous();
                r
            })
            .collect();
        let busy = held[0].connection.begin().unwrap();
        // Recently active: the ordinary anonymous pick sheds nobody …
        assert!(!register.shed_one(Pick::Anonymous));
        // … but the address with the most gives way, never its busy one.
        assert!(register.shed_one(Pick::AnonymousFor(newcomer)));
        let shed: Vec<bool> = held
            .iter()
            .map(|r| r.connection.close_reason.load(Ordering::Acquire) != 0)
            .collect();
        assert_eq!(shed.iter().filter(|s| **s).count(), 1);
        assert!(!shed[0], "the connection with a request in flight stays");
        drop(busy);
        // The same address asking for room from itself is not served so.
        assert!(!register.shed_one(Pick::AnonymousFor(hog)));
    }

    #[tokio::test]
    async fn a_connection_that_mostly_abandons_requests_is_told_to_close() {
        let register = Register::new();
        let r = register.register(LOCAL);
        for _ in 0..50 {
            r.connection.completed();
        }
        let mut closed_at = None;
        for n in 1..=1000u64 {
            if r.connection.abandoned() {
                closed_at = Some(n);
                break;
            }
        }
        assert_eq!(closed_at, Some(ABANDON_ALLOWANCE + 1));
        assert_eq!(r.connection.closing().await, CloseReason::Abandoning);
    }
}
