//! The TLS accept loop, per-connection handling and graceful shutdown.
//!
//! `run` takes an already-bound listener, the TLS configuration, the HTTP
//! service and a shutdown future, so tests drive exactly the code that
//! production runs. Invariants:
//! - every byte goes through rustls; there is no plaintext path;
//! - a connection that does not finish its handshake within
//!   `handshake_timeout`, or an HTTP/1 client that does not send its headers
//!   within `header_read_timeout`, is dropped;
//! - at most `max_connections` connections are served at once, and the
//!   accept loop never waits (no queue in the kernel's backlog): when every
//!   slot is taken, a newcomer takes the slot of the connection that has had
//!   no request in flight the longest (see [`admission`]) — so connections
//!   dribbling their headers byte by byte (slowloris), stalled handshakes
//!   and idle keep-alives cannot keep a real client out. When every
//!   connection has a request in flight, the newcomer is answered at once
//!   `503 application/problem+json` with `Retry-After` by one of
//!   [`OVERFLOW_RESPONDERS`] short-lived responders (at most
//!   [`OVERFLOW_TIME`] each), and beyond those its TCP connection is closed
//!   unanswered;
//! - one client address (an IPv6 /64) holds at most
//!   `max_connections_per_ip` connections: at the cap, its own longest-idle
//!   connection makes room for its newcomer (or, all busy, the newcomer is
//!   answered 503), so a slowloris from a few addresses sheds itself and
//!   leaves the other slots to everyone else;
//! - one client address opens at most `max_handshakes_per_ip` connections a
//!   second, and its network (an IPv4 /24, an IPv6 /48)
//!   [`NETWORK_HANDSHAKES`] times that: a connection beyond is closed
//!   before its TLS handshake, the one step of a connection that costs the
//!   server real CPU before anything is known of the client (a
//!   connect-and-drop loop from one host could otherwise keep both cores
//!   signing and exchanging keys);
//! - at most `max_requests_in_flight` requests are processed at once, of
//!   them at most `max_anonymous_requests_in_flight` on connections without
//!   a client certificate; the others are answered `503` problem documents
//!   with `Retry-After` (see `http::guard`), never queued;
//! - HTTP/2: at most [`MAX_STREAMS`] concurrent streams per connection and a
//!   64 KiB header list; h2's own rapid-reset guards are set
//!   (`max_pending_accept_reset_streams`, `max_local_error_reset_streams`,
//!   answered GOAWAY `ENHANCE_YOUR_CALM`), and a connection whose client
//!   abandons more requests than it lets finish (after
//!   [`admission::ABANDON_ALLOWANCE`]) is sent GOAWAY and closed;
//! - on shutdown, accepting stops at once, in-flight requests are given
//!   `drain_timeout` to finish, then `run` returns.

mod admission;
pub mod crl_marks;
pub use admission::client_key;
pub mod identity;
mod idle;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use admission::{CloseReason, Connection, Pick, Register, Responding};
use identity::{ClientIdentity, Peer};

/// Connections that may be in the overload path at once: each either takes
/// a slot freed by shedding or is answered 503. Beyond these, a newcomer's
/// TCP connection is closed unanswered (the cheapest refusal there is).
pub const OVERFLOW_RESPONDERS: usize = 64;

/// The longest an overload answer may take, handshake included.
pub const OVERFLOW_TIME: Duration = Duration::from_secs(2);

/// How long a newcomer may wait for a slot to be freed (by shedding, or by
/// a connection ending) before it is answered 503.
const SHED_WAIT: Duration = Duration::from_millis(300);

/// Concurrent HTTP/2 streams per connection.
pub const MAX_STREAMS: u32 = 64;

/// How long a connection told to close for abandoning requests gets to
/// finish the ones in flight after its GOAWAY.
const ABANDON_GRACE: Duration = Duration::from_secs(1);

/// How long a shed connection still sending a response gets to finish it.
const SHED_GRACE: Duration = Duration::from_secs(1);

/// A network (IPv4 /24, IPv6 /48) may open this many times the new
/// connections a second of one of its addresses.
pub const NETWORK_HANDSHAKES: u32 = 5;

/// Bounds that keep a slow or hostile client from pinning the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections served at once (each holds a semaphore permit).
    pub max_connections: usize,
    /// Time allowed for the TLS handshake after accept.
    pub handshake_timeout: Duration,
    /// Time an HTTP/1 client has to send a complete request head.
    pub header_read_timeout: Duration,
    /// Time in-flight requests get to finish once shutdown begins.
    pub drain_timeout: Duration,
    /// The longest a request runs (the router's time limit,
    /// `--request-timeout`): what a connection whose role is withdrawn
    /// gives the requests it has in flight.
    pub request_timeout: Duration,
    /// A connection with no traffic either way for this long is closed
    /// (covers a silent client after the handshake, and idle HTTP/2).
    pub idle_timeout: Duration,
    /// Most connections without a client certificate (health checks, the
    /// public opt-out page) served at once, so anonymous clients cannot
    /// take every slot from the storefront and the warehouse.
    pub max_anonymous_connections: usize,
    /// Most requests processed at once over all connections; beyond it,
    /// requests are answered 503 with `Retry-After` at once.
    pub max_requests_in_flight: usize,
    /// Of those, the most on connections without a client certificate, so
    /// anonymous requests (slow bodies to the public opt-out page, say)
    /// cannot take the in-flight cap from the storefront.
    pub max_anonymous_requests_in_flight: usize,
    /// Most connections from one client address (IPv6: one /64) at once.
    pub max_connections_per_ip: usize,
    /// Most new connections (TLS handshakes) one client address (IPv6: one
    /// /64) may open a second; its network [`NETWORK_HANDSHAKES`] times as
    /// many.
    pub max_handshakes_per_ip: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_anonymous_connections: 512,
            max_requests_in_flight: 1024,
            max_anonymous_requests_in_flight: 64,
            max_connections_per_ip: 1024,
            max_handshakes_per_ip: 200,
        }
    }
}

/// What every connection task shares.
struct Shared {
    tls: Arc<tls::ReloadableTls>,
    app: Router,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    anonymous_slots: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
    /// Of `in_flight`, what requests on anonymous connections may hold.
    anonymous_in_flight: Arc<Semaphore>,
    /// Of `in_flight`, what the requests of one client certificate may
    /// hold (half), by certificate: kept while a connection uses it.
    per_certificate: Shares<[u8; 32]>,
    /// Of `anonymous_in_flight`, what the anonymous requests of one network
    /// (an IPv4 /24, an IPv6 /48) may hold (an eighth): a few addresses
    /// dribbling request bodies must not take every anonymous slot — the
    /// public opt-out page's among them.
    per_network: Shares<std::net::IpAddr>,
    register: Arc<Register>,
    /// New connections a second, per client address and per network.
    handshakes: Handshakes,
}

/// Counts new connections (each a TLS handshake to come) per client
/// address and per network, in one-second windows. An address that made a
/// connection with a valid client certificate in the last
/// [`CERTIFIED_MEMORY`] is held to its own budget only, not its network's:
/// a flood from its neighbours (other tenants of a cloud /24) must not
/// keep the storefront or the warehouse from reconnecting.
struct Handshakes {
    per_client: crate::http::rate_limit::RateLimiter,
    per_network: crate::http::rate_limit::RateLimiter,
    /// Certified addresses, each until when it is exempt.
    certified: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, std::time::Instant>>,
}

/// How long an address that presented a valid client certificate is
/// exempt from its network's connection budget.
const CERTIFIED_MEMORY: Duration = Duration::from_secs(600);

/// The most certified addresses remembered (a few hundred bytes each).
const CERTIFIED_MOST: usize = 4096;

impl Handshakes {
    fn new(per_client: u32) -> Self {
        let second = Duration::from_secs(1);
        Handshakes {
            per_client: crate::http::rate_limit::RateLimiter::new(per_client.max(1), second),
            per_network: crate::http::rate_limit::RateLimiter::new(
                per_client.max(1).saturating_mul(NETWORK_HANDSHAKES),
                second,
            ),
            certified: Default::default(),
        }
    }

    /// Counts one new connection from `ip`: whether it may go on to its
    /// handshake. One over its address's limit is not counted against its
    /// network's, so that it cannot use up its neighbours' budget.
    fn admit(&self, ip: std::net::IpAddr) -> bool {
        self.per_client.check(ip).is_ok()
            && (self.recently_certified(ip)
                || self
                    .per_network
                    .check(crate::http::rate_limit::network(ip))
                    .is_ok())
    }

    fn recently_certified(&self, ip: std::net::IpAddr) -> bool {
        let key = admission::client_key(ip);
        let now = std::time::Instant::now();
        self.certified
            .lock()
            .is_ok_and(|c| c.get(&key).is_some_and(|until| *until > now))
    }

    /// `ip` made a connection with a valid client certificate, good until
    /// `expires` (if known): exempt from its network's budget for
    /// [`CERTIFIED_MEMORY`], never past the certificate's end.
    fn certified(&self, ip: std::net::IpAddr, expires: Option<std::time::Instant>) {
        let key = admission::client_key(ip);
        let now = std::time::Instant::now();
        let until = expires.map_or(now + CERTIFIED_MEMORY, |e| e.min(now + CERTIFIED_MEMORY));
        let Ok(mut certified) = self.certified.lock() else {
            return;
        };
        if certified.len() >= CERTIFIED_MOST && !certified.contains_key(&key) {
            certified.retain(|_, until| *until > now);
            if certified.len() >= CERTIFIED_MOST {
                return;
            }
        }
        // Another certificate from the same address may be good for longer.
        let entry = certified.entry(key).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// `ip`'s certificate no longer verifies (revoked, expired): no longer
    /// exempt.
    fn forget(&self, ip: std::net::IpAddr) {
        if let Ok(mut certified) = self.certified.lock() {
            certified.remove(&admission::client_key(ip));
        }
    }
}

/// In-flight shares by client, each kept while a connection uses it.
type Shares<K> = std::sync::Mutex<std::collections::HashMap<K, std::sync::Weak<Semaphore>>>;

/// The share of `key` (`size` permits): one semaphore per key, shared by
/// all its connections; keys no longer connected go as new ones come.
fn share_of<K: std::hash::Hash + Eq + Copy>(
    shares: &Shares<K>,
    key: K,
    size: usize,
) -> Arc<Semaphore> {
    let Ok(mut shares) = shares.lock() else {
        return Arc::new(Semaphore::new(size));
    };
    if let Some(existing) = shares.get(&key).and_then(std::sync::Weak::upgrade) {
        return existing;
    }
    shares.retain(|_, s| s.strong_count() > 0);
    let fresh = Arc::new(Semaphore::new(size));
    shares.insert(key, Arc::downgrade(&fresh));
    fresh
}

impl Shared {
    /// The in-flight share of the client certificate `fingerprint`: one
    /// semaphore per certificate, shared by all its connections.
    fn certificate_share(&self, fingerprint: &[u8; 32]) -> Arc<Semaphore> {
        let share = (self.limits.max_requests_in_flight / 2).max(1);
        share_of(&self.per_certificate, *fingerprint, share)
    }

    /// The anonymous in-flight share of the network of `ip` (see
    /// [`crate::http::rate_limit::network`]).
    fn network_share(&self, ip: std::net::IpAddr) -> Arc<Semaphore> {
        let share = (self.limits.max_anonymous_requests_in_flight / ANONYMOUS_NETWORK_SHARE).max(1);
        share_of(
            &self.per_network,
            crate::http::rate_limit::network(ip),
            share,
        )
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then
/// drains in-flight requests (bounded by `limits.drain_timeout`).
pub async fn run(
    listener: TcpListener,
    tls: Arc<tls::ReloadableTls>,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared {
        tls,
        app,
        limits,
        // Bounds concurrent connections; a permit lives as long as its
        // connection.
        slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        // Of those, the ones a client without a certificate may keep.
        anonymous_slots: Arc::new(Semaphore::new(limits.max_anonymous_connections.max(1))),
        in_flight: Arc::new(Semaphore::new(limits.max_requests_in_flight.max(1))),
        anonymous_in_flight: Arc::new(Semaphore::new(
            limits.max_anonymous_requests_in_flight.max(1),
        )),
        per_certificate: Default::default(),
        per_network: Default::default(),
        register: Register::new(),
        handshakes: Handshakes::new(limits.max_handshakes_per_ip),
    });
    let overflow = Arc::new(Semaphore::new(OVERFLOW_RESPONDERS));
    // Tells every connection to finish; its receivers going away tells
    // `run` that every connection has.
    let (stop, stopped) = watch::channel(false);
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);

    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => { backoff = Duration::from_millis(5); pair }
                Err(error) => {
                    // Typically EMFILE: wait instead of spinning.
                    tracing::warn!(%error, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Refused before anything else, and the cheapest way: closed before
        // its handshake.
        if !shared.handshakes.admit(addr.ip()) {
            crate::telemetry::connection_refused("handshake_rate");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        // One client address may hold at most `max_connections_per_ip`: at
        // the cap, its own longest-idle connection makes room, or (all busy)
        // the newcomer is answered 503.
        let client = admission::client_key(addr.ip());
        let at_client_cap = shared.register.count(addr.ip()) >= limits.max_connections_per_ip;
        let shed_own = at_client_cap && shared.register.shed_one(Pick::Client(client));
        let over_client_cap = at_client_cap && !shed_own;
        // Admission never waits here: a slot, the overload path, or closed.
        let slot = if over_client_cap {
            None
        } else {
            shared.slots.clone().try_acquire_owned().ok()
        };
        let admission = match slot {
            // Registered here, not in the connection's task: the next
            // accept already counts it against its address's cap. (Counted
            // only once its task ran, a burst of reconnects from one address
            // all passed the cap check and could fill every slot.)
            Some(slot) => Admission::Slot(slot, shared.register.register(addr.ip())),
            None => match overflow.clone().try_acquire_owned() {
                Ok(permit) if over_client_cap => Admission::Refuse(permit),
                Ok(permit) => {
                    // Registered now for the same reason, and marked busy
                    // while it waits for a slot: nobody sheds a newcomer.
                    let registration = shared.register.register(addr.ip());
                    match registration.connection.begin() {
                        Some(waiting) => Admission::Overflow {
                            permit,
                            registration,
                            waiting,
                            // Its own address's connection was shed for it:
                            // it waits for that one, and sheds nobody else.
                            pick: if shed_own {
                                Some(Pick::Client(client))
                            } else {
                                None
                            },
                        },
                        None => Admission::Refuse(permit),
                    }
                }
                Err(_) => {
                    crate::telemetry::connection_refused("overflow");
                    drop(stream);
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let (slot, registration) = match admission {
                Admission::Slot(slot, registration) => (slot, registration),
                Admission::Refuse(permit) => {
                    crate::telemetry::connection_refused("per_ip");
                    answer_overloaded(&shared.tls.acceptor(), stream, addr).await;
                    drop(permit);
                    return;
                }
                Admission::Overflow {
                    permit,
                    registration,
                    waiting,
                    pick,
                } => {
                    let freed = match pick {
                        Some(own) => make_room(&shared.register, &shared.slots, own, true).await,
                        None => make_room(&shared.register, &shared.slots, Pick::Any, false).await,
                    };
                    match freed {
                        Some(slot) => {
                            crate::telemetry::connection_refused("shed");
                            drop(waiting);
                            drop(permit);
                            (slot, registration)
                        }
                        None => {
                            // Still registered while it is answered, and
                            // busy: shedding it would free no slot.
                            crate::telemetry::connection_refused("busy");
                            answer_overloaded(&shared.tls.acceptor(), stream, addr).await;
                            drop(waiting);
                            drop(registration);
                            drop(permit);
                            return;
                        }
                    }
                }
            };
            serve(&shared, stream, addr, registration, stopped).await;
            drop(slot);
        });
    }

    drop(listener);
    drop(stopped);
    tracing::info!(
        drain_timeout_ms = limits.drain_timeout.as_millis() as u64,
        "shutdown: no longer accepting; draining in-flight requests"
    );
    let _ = stop.send(true);
    if tokio::time::timeout(limits.drain_timeout, stop.closed())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: drain timeout reached; closing remaining connections");
    }
}

/// Waits up to [`SHED_WAIT`] for a permit of `slots`, having told one idle
/// connection (of those `pick` allows) to close — one per newcomer: a
/// connection told to close may take a moment to give its slot back (up
/// to 1 s to finish a response it is sending), and shedding another every
/// step evicted several connections for one newcomer, which could still be
/// answered 503. While none could be shed (all busy, or too recently
/// active) it tries again every 100 ms. `shed`: one was shed for this
/// newcomer already.
async fn make_room(
    register: &Register,
    slots: &Arc<Semaphore>,
    pick: Pick,
    mut shed: bool,
) -> Option<OwnedSemaphorePermit> {
    let deadline = tokio::time::Instant::now() + SHED_WAIT;
    loop {
        if !shed {
            shed = register.shed_one(pick);
        }
        let step = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
        if let Ok(Ok(permit)) = tokio::time::timeout_at(step, slots.clone().acquire_owned()).await {
            return Some(permit);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

enum Admission {
    /// A free slot, and the connection's place in the register.
    Slot(OwnedSemaphorePermit, admission::Registration),
    /// No free slot: shed one or answer 503 (holds an overflow permit). The
    /// connection is registered, and busy (`waiting`) until admitted;
    /// `pick`: a connection of its own address was shed for it already.
    Overflow {
        permit: OwnedSemaphorePermit,
        registration: admission::Registration,
        waiting: admission::Active,
        pick: Option<Pick>,
    },
    /// The client address is at its cap with every connection busy: 503.
    Refuse(OwnedSemaphorePermit),
}

/// One admitted connection, from handshake to close.
/// `registration` was made when the connection was admitted, before the
/// handshake: a handshake that is not being finished may be shed too.
async fn serve(
    shared: &Shared,
    stream: TcpStream,
    addr: SocketAddr,
    registration: admission::Registration,
    mut stop: watch::Receiver<bool>,
) {
    let limits = shared.limits;
    let connection = registration.connection.clone();
    // Reloads from here on: one during the handshake may have made it
    // under the files before.
    let mut reloads = shared.tls.reloads();
    // The idle limit watches the TCP stream under TLS: a flush of buffered
    // TLS records to a client reading slowly, but reading, is traffic.
    // (Above TLS such a flush showed no progress until it ended, and a
    // slow but steady reader was cut off at the limit.)
    let handshake = tokio::time::timeout(
        limits.handshake_timeout,
        shared
            .tls
            .acceptor()
            .accept(idle::IdleTimeout::new(stream, limits.idle_timeout)),
    );
    let tls_stream = tokio::select! {
        result = handshake => match result {
            Ok(Ok(s)) => s,
            Ok(Err(error)) => {
                tracing::debug!(client_ip = %addr.ip(), error = %crate::telemetry::escape(&error.to_string()), "TLS handshake failed");
                crate::telemetry::handshake_failed(handshake_failure(&error));
                return;
            }
            Err(_) => {
                tracing::debug!(client_ip = %addr.ip(), "TLS handshake timed out");
                crate::telemetry::handshake_failed("timeout");
                return;
            }
        },
        _ = connection.closing() => {
            tracing::debug!(client_ip = %addr.ip(), "connection shed during its handshake");
            return;
        }
        _ = stop.wait_for(|stop| *stop) => return,
    };
    crate::telemetry::connection_opened();
    let _open = OpenConnection;
    let (_, session) = tls_stream.get_ref();
    let peer = Peer {
        addr,
        tls_version: tls::version_name(session.protocol_version()),
        identity: ClientIdentity::from_peer_certificates(session.peer_certificates()),
    };
    let certified = matches!(peer.identity, ClientIdentity::Certified { .. });
    // Kept to check again after a TLS rebuild (a new CRL, its expiry).
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> = if certified {
        session
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    // A resumed session verified no certificate: rustls restores the chain
    // verified when the session was made, perhaps under an older CRL, and
    // before the certificate expired.
    let resumed = matches!(
        session.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    // When a certificate of the chain expires (the client's, or a CA's),
    // the chain is checked again: the client's expired, it loses its role.
    // (An expired CA certificate a client still sends beside the renewed
    // one is not in the path the verifier builds: checked, not assumed.)
    let not_afters: Vec<i64> = chain
        .iter()
        .filter_map(tls::ReloadableTls::not_after)
        .collect();
    connection.handshake_done(certified);
    // A rebuild (a new CRL, say) landed during the handshake, which ran
    // under the configuration before it, or the session was resumed:
    // checked now, before any request.
    if certified
        && (resumed || reloads.has_changed().unwrap_or(false) || expired_in_chain(&not_afters))
        && !shared.tls.trusts(&chain)
    {
        connection.withdraw();
    }
    if certified && !connection.is_withdrawn() {
        let leaf = chain
            .first()
            .and_then(tls::ReloadableTls::not_after)
            .map(|not_after| std::time::Instant::now() + seconds_until(not_after));
        shared.handshakes.certified(addr.ip(), leaf);
    }
    let _anonymous_permit = if peer.identity == ClientIdentity::Anonymous {
        // The anonymous cap sheds like the connection cap: the longest-idle
        // anonymous connection makes room; if all are busy, this one is
        // answered 503. Shed itself meanwhile, it goes at once (its slot is
        // what the shedding newcomer waits for).
        let permit = match shared.anonymous_slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let pick = Pick::AnonymousFor(admission::client_key(addr.ip()));
                tokio::select! {
                    permit = make_room(&shared.register, &shared.anonymous_slots, pick, false) => permit,
                    _ = connection.closing() => return,
                }
            }
        };
        if permit.is_none() {
            // Answered, not dropped: a load balancer's probe or a person on
            // the opt-out page is told to come back (503, Retry-After),
            // with the same bound on time as an overflow answer.
            tracing::debug!(client_ip = %addr.ip(), "anonymous connection cap reached; answering 503");
            crate::telemetry::connection_refused("anonymous");
            tokio::select! {
                answered = tokio::time::timeout(
                    OVERFLOW_TIME,
                    serve_overloaded(tls_stream, Some((shared.app.clone(), peer.clone()))),
                ) => {
                    if answered.is_err() {
                        tracing::debug!(client_ip = %addr.ip(), "overload answer timed out");
                    }
                }
                _ = connection.closing() => {}
            }
            return;
        }
        connection.set_anonymous();
        permit
    } else {
        None
    };
    let app = shared.app.clone();
    let in_flight = InFlight {
        all: shared.in_flight.clone(),
        anonymous: (peer.identity == ClientIdentity::Anonymous)
            .then(|| shared.anonymous_in_flight.clone()),
        network: (peer.identity == ClientIdentity::Anonymous)
            .then(|| shared.network_share(addr.ip())),
        certificate: match &peer.identity {
            ClientIdentity::Certified { fingerprint, .. } => {
                Some(shared.certificate_share(fingerprint.as_bytes()))
            }
            ClientIdentity::Anonymous => None,
        },
    };
    let on_connection = connection.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        // Made before the future is first polled: a stream reset before its
        // handler ran counts as abandoned too.
        let watch = AbandonWatch {
            connection: on_connection.clone(),
            finished: false,
        };
        handle(
            app.clone(),
            peer.clone(),
            on_connection.clone(),
            in_flight.clone(),
            watch,
            req,
        )
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(64 * 1024)
        // Streams the client reset before they were accepted, and streams
        // reset because of the client's protocol errors: beyond these,
        // GOAWAY ENHANCE_YOUR_CALM.
        .max_pending_accept_reset_streams(32)
        .max_local_error_reset_streams(128);
    // No keep-alive pings: they would count as traffic and keep an
    // idle connection open past `idle_timeout`.
    let io = TokioIo::new(tls_stream);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let closing = connection.closing();
    tokio::pin!(closing);
    let mut finishing = false;
    let mut grace: Option<tokio::time::Instant> = None;
    // A response left unsent for `idle_timeout` — its client opens no
    // HTTP/2 window, or does not read, and perhaps pings to look alive —
    // ends the connection: it would hold the response in memory for good.
    let mut unsent_check = tokio::time::interval(UNSENT_CHECK);
    unsent_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_check = next_expiry(&not_afters);
    let expiry = tokio::time::sleep_until(
        next_check.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400)),
    );
    tokio::pin!(expiry);
    let result = loop {
        // Set when the certificate is to be checked again: a TLS rebuild,
        // or its expiry.
        let mut recheck = false;
        tokio::select! {
            result = conn.as_mut() => break result,
            _ = unsent_check.tick(), if !finishing => {
                let reason = if connection.oldest_unsent().is_some_and(|age| age > limits.idle_timeout) {
                    tracing::info!(client_ip = %addr.ip(), "closing a connection whose client has not taken a response for the idle timeout");
                    Some("response_unread")
                } else if !connection.is_responding()
                    && connection.without_requests_for().is_some_and(|idle| idle > limits.idle_timeout)
                {
                    // No request for the idle timeout, yet traffic (HTTP/2
                    // PINGs) keeps the I/O from being idle — and perhaps
                    // HTTP/2 still holds the end of a response, handed
                    // over whole but not taken (a one-byte window).
                    tracing::info!(client_ip = %addr.ip(), "closing a connection that has had no request for the idle timeout");
                    Some("idle")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    crate::telemetry::connection_refused(reason);
                    // Its other streams get the grace period to finish.
                    finishing = true;
                    conn.as_mut().graceful_shutdown();
                    grace = Some(tokio::time::Instant::now() + SHED_GRACE);
                }
            },
            reason = &mut closing, if !finishing => {
                finishing = true;
                match reason {
                    // No handler is running (that is why it was chosen); a
                    // response still being sent gets a grace period.
                    CloseReason::Shed if connection.is_responding() => {
                        tracing::debug!(client_ip = %addr.ip(), "connection shed for a newcomer once its response is sent");
                        conn.as_mut().graceful_shutdown();
                        grace = Some(tokio::time::Instant::now() + SHED_GRACE);
                    }
                    CloseReason::Shed => {
                        tracing::debug!(client_ip = %addr.ip(), "connection shed for a newcomer");
                        break Ok(());
                    }
                    CloseReason::Abandoning => {
                        tracing::info!(client_ip = %addr.ip(), "closing a connection whose client abandons most requests (rapid reset)");
                        crate::telemetry::connection_refused("abandoning");
                        conn.as_mut().graceful_shutdown();
                        grace = Some(tokio::time::Instant::now() + ABANDON_GRACE);
                    }
                }
            },
            changed = stop.wait_for(|stop| *stop), if !finishing => {
                finishing = true;
                let _ = changed;
                conn.as_mut().graceful_shutdown();
            },
            // The client CA, its CRL or the time may have changed: the
            // connection's certificate is checked again, and a connection
            // whose certificate no longer verifies is closed (its requests
            // in flight get the drain time to finish). Checked while it
            // drains for another reason too (a shutdown's or a shed's
            // grace): a revocation then still takes the role away at once.
            _ = reloads.changed(), if certified && !(finishing && connection.is_withdrawn()) => recheck = true,
            // A certificate of its chain expired while the connection was
            // open: checked again, and the next expiry awaited.
            () = &mut expiry, if certified && next_check.is_some() => {
                recheck = true;
                next_check = next_expiry(&not_afters);
                if let Some(at) = next_check {
                    expiry.as_mut().reset(at);
                }
            },
            () = tokio::time::sleep_until(grace.unwrap_or_else(tokio::time::Instant::now)), if grace.is_some() => break Ok(()),
        }
        if recheck && (connection.is_withdrawn() || !shared.tls.trusts(&chain)) {
            // From now on its requests run without a role (HTTP/2
            // takes new streams until the client acknowledges the
            // GOAWAY's ping, for as long as the grace below; their
            // refusals are logged within the per-address limit).
            connection.withdraw();
            shared.handshakes.forget(addr.ip());
            if finishing {
                continue;
            }
            finishing = true;
            tracing::info!(client_ip = %addr.ip(), "closing a connection whose client certificate no longer verifies (revoked, expired, or its CA or CRL changed)");
            crate::telemetry::connection_refused("certificate_no_longer_valid");
            conn.as_mut().graceful_shutdown();
            // Requests in flight began while its role held: each is
            // answered by its own time limit, not cut off. An order cut
            // off while committing would leave the storefront unable to
            // tell, and its retry, under the renewed certificate, is
            // another client's key: a second order. (A response being sent
            // counts too.) With none in flight, the drain time.
            let wait = if connection.has_requests() || connection.is_responding() {
                limits.drain_timeout.max(limits.request_timeout)
            } else {
                limits.drain_timeout
            };
            grace = Some(tokio::time::Instant::now() + wait);
        }
    };
    if let Err(error) = result {
        tracing::debug!(client_ip = %addr.ip(), error = %crate::telemetry::escape(&error.to_string()), "connection ended with an error");
    }
    drop(stop);
    drop(registration);
}

/// How long until `not_after` (seconds since the Unix epoch), by the
/// system clock: zero if it has passed.
fn seconds_until(not_after: i64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    Duration::from_secs(u64::try_from(not_after.saturating_sub(now)).unwrap_or(0))
}

/// When to check a chain again: a second after the earliest `notAfter` of
/// its certificates still to come (a second late, so that the check agrees
/// it has passed), or never.
fn next_expiry(not_afters: &[i64]) -> Option<tokio::time::Instant> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    not_afters
        .iter()
        .filter(|at| **at >= now)
        .min()
        .map(|at| tokio::time::Instant::now() + seconds_until(*at) + Duration::from_secs(1))
}

/// Whether a certificate of the chain has already expired: a client may
/// send its certificate in the last moment of it and hold back the end of
/// its handshake (its expiry is then past, and never awaited), or send an
/// expired CA certificate beside a renewed one — checked at once.
fn expired_in_chain(not_afters: &[i64]) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    not_afters.iter().any(|at| *at < now)
}

/// One network's share of the anonymous in-flight cap is this fraction of
/// it: it takes eight networks, not a few addresses, to fill it.
const ANONYMOUS_NETWORK_SHARE: usize = 8;

/// How often a connection checks for a response left unsent too long.
const UNSENT_CHECK: Duration = Duration::from_secs(1);

/// The in-flight caps a connection's requests count against.
#[derive(Clone)]
struct InFlight {
    /// `max_requests_in_flight`.
    all: Arc<Semaphore>,
    /// `max_anonymous_requests_in_flight`, on a connection without a client
    /// certificate.
    anonymous: Option<Arc<Semaphore>>,
    /// Its network's share of that ([`ANONYMOUS_NETWORK_SHARE`]).
    network: Option<Arc<Semaphore>>,
    /// Half of `max_requests_in_flight`, for each client certificate: one
    /// client (a compromised warehouse certificate dribbling request
    /// bodies, say) cannot take every slot from the others.
    certificate: Option<Arc<Semaphore>>,
}

/// A load balancer's probes: they never read a body and answer at once, so
/// they are left out of the anonymous cap — slow anonymous requests
/// elsewhere must not turn them into 503s, which would have the instance
/// pulled. They still count against `max_requests_in_flight`.
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

impl InFlight {
    /// A permit of every cap a request for `path` counts against, or `None`
    /// when one of them is reached (then none is held).
    fn try_acquire(&self, path: &str) -> Option<[Option<OwnedSemaphorePermit>; 4]> {
        let anonymous = match &self.anonymous {
            Some(cap) if !PROBES.contains(&path) => Some(cap.clone().try_acquire_owned().ok()?),
            _ => None,
        };
        let network = match &self.network {
            Some(cap) if !PROBES.contains(&path) => Some(cap.clone().try_acquire_owned().ok()?),
            _ => None,
        };
        let certificate = match &self.certificate {
            Some(cap) => Some(cap.clone().try_acquire_owned().ok()?),
            None => None,
        };
        let all = self.all.clone().try_acquire_owned().ok()?;
        Some([Some(all), anonymous, network, certificate])
    }
}

/// One request on an admitted connection: counted in flight on the
/// connection (so it is never shed under it) and against the in-flight caps
/// (marked [`crate::http::guard::Overloaded`] when over one, for the router
/// to answer 503), and watched for being abandoned.
async fn handle(
    app: Router,
    peer: Peer,
    connection: Arc<Connection>,
    in_flight: InFlight,
    mut watch: AbandonWatch,
    req: Request<Incoming>,
) -> Result<axum::response::Response, Infallible> {
    let version = req.version();
    let Some(active) = connection.begin() else {
        // Lost the race with shedding: nothing was started.
        watch.finished = true;
        return Ok(crate::http::guard::overloaded(req.method(), version));
    };
    let permit = in_flight.try_acquire(req.uri().path());
    let mut req = req.map(Body::new);
    req.extensions_mut()
        .insert(as_trusted_now(peer, &connection));
    if permit.is_none() {
        req.extensions_mut().insert(crate::http::guard::Overloaded);
    }
    let response = app.oneshot(req).await?;
    // The handler is done: its in-flight permit goes back now, not when the
    // client has read the body (a client that never reads must not hold the
    // cap), and the connection becomes sheddable, gracefully, while the
    // response is sent.
    drop(permit);
    let responding = connection.responding();
    drop(active);
    watch.finished = true;
    connection.completed();
    Ok(response.map(|body| {
        Body::new(Held {
            inner: body,
            rest: bytes::Bytes::new(),
            pieces: 0,
            held: responding,
        })
    }))
}

/// The peer as a request on `connection` sees it: once the connection's
/// certificate no longer verifies, its requests carry no role — refused
/// 403 by the role guard and written to the access log with the
/// certificate's fingerprint — while the connection drains.
fn as_trusted_now(mut peer: Peer, connection: &Connection) -> Peer {
    if connection.is_withdrawn()
        && let ClientIdentity::Certified { role, .. } = &mut peer.identity
    {
        *role = None;
    }
    peer
}

/// Counts a request as abandoned when its future is dropped unfinished (an
/// HTTP/2 RST_STREAM, a client gone).
struct AbandonWatch {
    connection: Arc<Connection>,
    finished: bool,
}

impl Drop for AbandonWatch {
    fn drop(&mut self) {
        if !self.finished {
            self.connection.abandoned();
        }
    }
}

/// The largest piece of a response body handed to hyper at once.
///
/// HTTP/2 takes a whole data frame into its send buffer as soon as the
/// client's window has room for one byte of it; a response made of one
/// large frame (a page of shipments, the OpenAPI document) would then sit
/// in memory out of sight of the unsent-response limit, held by a client
/// that opens a one-byte window. In pieces, the rest waits in [`Held`]
/// until the client takes what it was given, and counts as unsent.
pub const RESPONSE_PIECE: usize = 16 * 1024;

/// A response body that marks its connection as still sending until it has
/// been sent (or dropped), handed over in pieces of at most
/// [`RESPONSE_PIECE`] bytes.
struct Held<T> {
    inner: Body,
    /// What is left of the data frame being handed over.
    rest: bytes::Bytes,
    /// Pieces handed over so far.
    pieces: u64,
    held: T,
}

/// What a [`Held`] body tells as it is sent.
trait Sending: Unpin + Send + 'static {
    /// hyper asked for another piece: the client took the last one.
    fn progressed(&mut self);
}

impl Sending for Responding {
    fn progressed(&mut self) {
        Responding::progressed(self);
    }
}

impl<T> Held<T> {
    /// The next piece of a frame larger than one, as a copy: HTTP/2 keeps a
    /// piece it was handed until the client's window takes it, and a slice
    /// would keep the whole frame's memory alive with it (a client opening
    /// all but one byte of window would pin a whole page of shipments).
    fn next_piece(&mut self) -> bytes::Bytes {
        let n = self.rest.len().min(RESPONSE_PIECE);
        let piece = bytes::Bytes::copy_from_slice(&self.rest[..n]);
        bytes::Buf::advance(&mut self.rest, n);
        piece
    }
}

impl<T: Sending> hyper::body::Body for Held<T> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let piece = if this.rest.is_empty() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    // A frame of one piece (every order's answer): as it is.
                    Ok(data) if data.len() <= RESPONSE_PIECE => data,
                    Ok(data) => {
                        this.rest = data;
                        this.next_piece()
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return other,
            }
        } else {
            this.next_piece()
        };
        if this.pieces > 0 {
            this.held.progressed();
        }
        this.pieces += 1;
        Poll::Ready(Some(Ok(hyper::body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = hyper::body::SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

/// The overload path: handshake, answer every request 503 with
/// `Retry-After` (HTTP/1: `Connection: close`; HTTP/2: GOAWAY after the
/// first answer), all within [`OVERFLOW_TIME`].
async fn answer_overloaded(acceptor: &TlsAcceptor, stream: TcpStream, addr: SocketAddr) {
    let work = async move {
        let Ok(tls_stream) = acceptor.accept(stream).await else {
            return;
        };
        serve_overloaded(tls_stream, None).await;
    };
    if tokio::time::timeout(OVERFLOW_TIME, work).await.is_err() {
        tracing::debug!(client_ip = %addr.ip(), "overload answer timed out");
    }
}

/// Answers the first request of an established TLS connection `503`
/// (`guard::overloaded`: problem, `Retry-After`, the security headers),
/// then closes it. The caller bounds the time.
///
/// With `probes` (a connection over the anonymous cap), a `GET` or `HEAD`
/// of `/healthz` or `/readyz` is answered by the application instead, as
/// it is on any connection: anonymous connections spread over many
/// addresses — none of them a hog to shed — must not get a load
/// balancer's probes answered 503 and the instance pulled.
async fn serve_overloaded<S>(tls_stream: S, probes: Option<(Router, Peer)>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let answered = Arc::new(tokio::sync::Notify::new());
    let on_answer = answered.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        on_answer.notify_one();
        let probe = probes.clone().filter(|_| {
            matches!(req.method(), &hyper::Method::GET | &hyper::Method::HEAD)
                && matches!(req.uri().path(), "/healthz" | "/readyz")
        });
        async move {
            match probe {
                Some((app, peer)) => {
                    let mut req = req.map(Body::new);
                    req.extensions_mut().insert(peer);
                    app.oneshot(req).await
                }
                None => {
                    Ok::<_, Infallible>(crate::http::guard::overloaded(req.method(), req.version()))
                }
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The serving connections' head limits: many of these may be open at
    // once, each buffering a request head for its short life.
    builder.http1().keep_alive(false).max_buf_size(64 * 1024);
    builder
        .http2()
        .max_concurrent_streams(8)
        .max_header_list_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = answered.notified() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

/// Counts an open (handshaken) connection down when it ends, however.
struct OpenConnection;

impl Drop for OpenConnection {
    fn drop(&mut self) {
        crate::telemetry::connection_closed();
    }
}

/// A fixed word for why a TLS handshake failed (a metric label).
fn handshake_failure(error: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    match error.get_ref().and_then(|e| e.downcast_ref::<E>()) {
        Some(E::InvalidCertificate(rustls::CertificateError::Other(other)))
            if other.0.downcast_ref::<tls::ChainTooLong>().is_some() =>
        {
            "client_chain_too_long"
        }
        Some(E::InvalidCertificate(_)) => "client_certificate",
        Some(E::NoCertificatesPresented) => "no_certificate",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(E::AlertReceived(_)) => "alert",
        Some(
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. },
        ) => "protocol",
        Some(_) => "other",
        None if error.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use hyper::body::Body as _;

    use super::*;

    #[test]
    fn a_certified_address_is_held_to_its_own_handshake_budget_only() {
        let handshakes = Handshakes::new(5);
        let ip = |last: u8| std::net::IpAddr::from([198, 51, 100, last]);
        handshakes.certified(ip(20), None);
        // Neighbours use up the /24's budget (5 × 5).
        for neighbour in 10..15 {
            for _ in 0..5 {
                assert!(handshakes.admit(ip(neighbour)));
            }
        }
        assert!(!handshakes.admit(ip(21)), "a newcomer of the /24 waits");
        for _ in 0..5 {
            assert!(handshakes.admit(ip(20)), "the storefront reconnects");
        }
        assert!(!handshakes.admit(ip(20)), "within its own budget");
        // IPv4-mapped is the same address.
        let mapped =
            std::net::IpAddr::V6(std::net::Ipv4Addr::new(198, 51, 100, 20).to_ipv6_mapped());
        assert!(handshakes.recently_certified(mapped));
        // Never past the certificate's end, and not once it stops verifying.
        handshakes.certified(ip(21), Some(std::time::Instant::now()));
        assert!(!handshakes.recently_certified(ip(21)));
        handshakes.forget(ip(20));
        assert!(!handshakes.recently_certified(ip(20)));
    }

    #[tokio::test]
    async fn a_chain_is_checked_again_at_each_expiry_to_come_and_never_in_a_loop() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        // An expired certificate beside the client's (a CA rollover's old
        // intermediate) is not awaited; the next one to come is.
        let at = next_expiry(&[now - 3600, now + 10, now + 100]).unwrap();
        let left = at - tokio::time::Instant::now();
        assert!(
            left > Duration::from_secs(9) && left <= Duration::from_secs(11),
            "{left:?}"
        );
        assert!(next_expiry(&[now - 1]).is_none());
        // Always at least a second ahead: a check never fires twice at the
        // same moment.
        let asked = tokio::time::Instant::now();
        assert!(next_expiry(&[now + 1]).unwrap() >= asked + Duration::from_secs(1));
        // One already past is checked at once instead.
        assert!(expired_in_chain(&[now + 100, now - 5]));
        assert!(!expired_in_chain(&[now + 100]));
    }

    impl Sending for u64 {
        fn progressed(&mut self) {
            *self += 1;
        }
    }

    /// Once its certificate is withdrawn, a connection's requests carry no
    /// role (the guard refuses them) while it drains; before, they carry
    /// the certificate's role; an anonymous peer is left as it is.
    #[test]
    fn a_withdrawn_certificate_s_requests_carry_no_role() {
        let register = Register::new();
        let local = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let registration = register.register(local);
        let connection = registration.connection.clone();
        let fingerprint =
            identity::CertFingerprint::of(&rustls_pki_types::CertificateDer::from(vec![1u8]));
        let peer = || Peer {
            addr: std::net::SocketAddr::new(local, 1),
            tls_version: "TLSv1.3",
            identity: ClientIdentity::Certified {
                fingerprint,
                role: Some(identity::Role::Storefront),
            },
        };
        let before = as_trusted_now(peer(), &connection);
        assert!(matches!(
            before.identity,
            ClientIdentity::Certified {
                role: Some(identity::Role::Storefront),
                ..
            }
        ));
        connection.withdraw();
        let after = as_trusted_now(peer(), &connection);
        assert_eq!(
            after.identity,
            ClientIdentity::Certified {
                fingerprint,
                role: None
            }
        );
        let anonymous = Peer {
            identity: ClientIdentity::Anonymous,
            ..peer()
        };
        assert_eq!(
            as_trusted_now(anonymous, &connection).identity,
            ClientIdentity::Anonymous
        );
    }

    /// A newcomer waiting for a slot sheds one idle connection, not one per
    /// step of its wait, and none at its deadline; one that had a
    /// connection of its own address shed for it sheds nobody else.
    #[tokio::test]
    async fn a_newcomer_sheds_one_connection_however_long_it_waits() {
        let register = Register::new();
        let local = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let open: Vec<_> = (0..4).map(|_| register.register(local)).collect();
        tokio::time::sleep(Duration::from_millis(admission::MIN_IDLE_MS + 20)).await;
        let shed = || async {
            let mut n = 0;
            for c in &open {
                let closing = c.connection.closing();
                if tokio::time::timeout(Duration::ZERO, closing).await.is_ok() {
                    n += 1;
                }
            }
            n
        };
        let slots = Arc::new(Semaphore::new(0));
        assert!(
            make_room(&register, &slots, Pick::Any, false)
                .await
                .is_none()
        );
        assert_eq!(shed().await, 1);
        assert!(
            make_room(&register, &slots, Pick::Any, true)
                .await
                .is_none()
        );
        assert_eq!(shed().await, 1);
        // A slot that comes free is taken.
        slots.add_permits(1);
        assert!(
            make_room(&register, &slots, Pick::Any, true)
                .await
                .is_some()
        );
    }

    /// A large response is handed over in pieces of at most
    /// `RESPONSE_PIECE` bytes, whole, in order, its length known up front.
    #[tokio::test]
    async fn a_response_is_handed_over_in_pieces() {
        let data: Vec<u8> = (0..(2 * RESPONSE_PIECE + 5)).map(|i| i as u8).collect();
        let mut held = Held {
            inner: Body::from(data.clone()),
            rest: bytes::Bytes::new(),
            pieces: 0,
            held: 0u64,
        };
        assert_eq!(held.size_hint().exact(), Some(data.len() as u64));
        let mut pieces = Vec::new();
        while let Some(frame) = held.frame().await {
            let piece = frame.unwrap().into_data().unwrap();
            assert!(held.size_hint().exact().is_some());
            pieces.push(piece);
        }
        let sizes: Vec<usize> = pieces.iter().map(bytes::Bytes::len).collect();
        assert_eq!(sizes, vec![RESPONSE_PIECE, RESPONSE_PIECE, 5]);
        assert_eq!(pieces.concat(), data);
        // Copies: no piece keeps the whole body's memory alive.
        let body = bytes::Bytes::from(data.clone());
        let span = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        let mut held = Held {
            inner: Body::from(body.clone()),
            rest: bytes::Bytes::new(),
            pieces: 0,
            held: 0u64,
        };
        while let Some(frame) = held.frame().await {
            let piece = frame.unwrap().into_data().unwrap();
            assert!(!span.contains(&(piece.as_ptr() as usize)));
        }
        assert!(held.is_end_stream());
        assert_eq!(held.held, 2, "each piece after the first tells progress");
        let mut empty = Held {
            inner: Body::empty(),
            rest: bytes::Bytes::new(),
            pieces: 0,
            held: 0u64,
        };
        assert!(empty.frame().await.is_none());
    }
}
