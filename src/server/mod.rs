//! The TLS accept loop, per-connection handling and graceful shutdown.
//!
//! `run` takes an already-bound listener, the TLS configuration, the HTTP
//! service and a shutdown future, so tests drive exactly the code that
//! production runs. Invariants:
//! - every byte goes through rustls; there is no plaintext path;
//! - a connection that does not finish its handshake within
//!   `handshake_timeout`, or an HTTP/1 client that does not send its headers
//!   within `header_read_timeout`, is dropped;
//! - at most `max_connections` connections are served at once; the accept
//!   loop waits for a free slot rather than accepting without bound;
//! - on shutdown, accepting stops at once, in-flight requests are given
//!   `drain_timeout` to finish, then `run` returns.

pub mod identity;
mod idle;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use identity::{ClientIdentity, Peer};

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
    /// A connection with no traffic either way for this long is closed
    /// (covers a silent client after the handshake, and idle HTTP/2).
    pub idle_timeout: Duration,
    /// Most connections without a client certificate (health checks, the
    /// public opt-out page) served at once, so anonymous clients cannot
    /// take every slot from the storefront and the warehouse.
    pub max_anonymous_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_anonymous_connections: 512,
        }
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then
/// drains in-flight requests (bounded by `limits.drain_timeout`).
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    // Tracks every connection so shutdown can wait for them to finish.
    let graceful = GracefulShutdown::new();
    // Bounds concurrent connections; a permit lives as long as its connection.
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Of those, the ones a client without a certificate may keep.
    let anonymous_slots = Arc::new(Semaphore::new(limits.max_anonymous_connections.max(1)));
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed
            },
            () = &mut shutdown => break,
        };
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
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        let anonymous_slots = anonymous_slots.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls_stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(error)) => {
                        tracing::debug!(client_ip = %addr.ip(), %error, "TLS handshake failed");
                        crate::telemetry::handshake_failed(handshake_failure(&error));
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(client_ip = %addr.ip(), "TLS handshake timed out");
                        crate::telemetry::handshake_failed("timeout");
                        return;
                    }
                };
            crate::telemetry::connection_opened();
            let _open = OpenConnection;
            let (_, session) = tls_stream.get_ref();
            let peer = Peer {
                addr,
                tls_version: tls::version_name(session.protocol_version()),
                identity: ClientIdentity::from_peer_certificates(session.peer_certificates()),
            };
            let _anonymous_permit = if peer.identity == ClientIdentity::Anonymous {
                match anonymous_slots.try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        tracing::debug!(client_ip = %addr.ip(), "anonymous connection cap reached; closing");
                        return;
                    }
                }
            } else {
                None
            };
            let service = app.map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(peer.clone());
                req.map(Body::new)
            });
            let service = TowerToHyperService::new(service);
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(64 * 1024);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(64)
                .max_header_list_size(32 * 1024);
            // No keep-alive pings: they would count as traffic and keep an
            // idle connection open past `idle_timeout`.
            let io = TokioIo::new(idle::IdleTimeout::new(tls_stream, limits.idle_timeout));
            let connection = builder.serve_connection(io, service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(client_ip = %addr.ip(), %error, "connection ended with an error");
            }
        });
    }

    drop(listener);
    tracing::info!(
        drain_timeout_ms = limits.drain_timeout.as_millis() as u64,
        "shutdown: no longer accepting; draining in-flight requests"
    );
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: drain timeout reached; closing remaining connections");
    }
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
