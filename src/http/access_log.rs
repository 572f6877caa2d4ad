//! One structured log line per request (invariant 7).
//!
//! The line holds the client IP, role, method, matched route *template*
//! (`/v1/orders/{id}`, never the concrete path), status, latency and TLS
//! version — and nothing else: no body, no query string, no header values, so
//! no name, email or card number can reach it. Requests that match no route
//! are logged with the route `<unmatched>`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;

use crate::server::identity::{ClientIdentity, Peer};

/// tracing target of access-log lines, for filtering.
pub const TARGET: &str = "checkoutd::access";

/// What the line says of a request, taken when it arrives; [`finish`]
/// writes the line (and the request metrics) once the answer is final.
/// Used by the outermost layer, [`super::envelope`], so the status logged is
/// the one sent and the latency covers every other layer.
///
/// A request dropped before its answer was final — its HTTP/2 stream reset
/// by the client, its connection cut at the drain timeout or shed — writes
/// its line anyway, with [`ABANDONED`] as the status: an order may have
/// been stored for it, and a flood of resets leaves a trace.
///
/// [`finish`]: Started::finish
pub struct Started {
    at: Instant,
    method: &'static str,
    route: String,
    client_ip: String,
    tls: &'static str,
    role: &'static str,
    finished: bool,
}

/// The status logged (and counted) for a request abandoned before its
/// answer: 499, "client closed request", as proxies log it. Never sent.
pub const ABANDONED: u16 = 499;

impl Started {
    pub fn of(req: &Request) -> Started {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "<unmatched>".to_owned());
        let (client_ip, tls, role) = match req.extensions().get::<Peer>() {
            Some(peer) => (
                peer.addr.ip().to_string(),
                peer.tls_version,
                role_label(&peer.identity),
            ),
            None => (String::from("-"), "-", "-"),
        };
        Started {
            at: Instant::now(),
            method: method_label(req.method()),
            route,
            client_ip,
            tls,
            role,
            finished: false,
        }
    }

    pub fn finish(mut self, response: &Response) {
        self.finished = true;
        self.write(response.status().as_u16());
    }

    fn write(&self, status: u16) {
        let elapsed = self.at.elapsed();
        crate::telemetry::request(&self.route, self.method, status, elapsed);
        let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        tracing::info!(
            target: TARGET,
            client_ip = %self.client_ip,
            role = self.role,
            method = self.method,
            route = %self.route,
            status,
            latency_us,
            tls = self.tls,
            "request"
        );
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if !self.finished {
            self.write(ABANDONED);
        }
    }
}

/// Standard methods by name; any extension method (client-chosen text) as
/// `OTHER`, so that not even the method token can carry client data.
pub(crate) fn method_label(method: &http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "OTHER",
    }
}

fn role_label(identity: &ClientIdentity) -> &'static str {
    match identity {
        ClientIdentity::Anonymous => "none",
        ClientIdentity::Certified { role: Some(r), .. } => r.as_str(),
        ClientIdentity::Certified { role: None, .. } => "unknown",
    }
}
