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
/// [`finish`]: Started::finish
pub struct Started {
    at: Instant,
    method: &'static str,
    route: String,
    client_ip: String,
    tls: &'static str,
    role: &'static str,
}

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
        }
    }

    pub fn finish(self, response: &Response) {
        let elapsed = self.at.elapsed();
        let status = response.status().as_u16();
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

/// Standard methods by name; any extension method (client-chosen text) as
/// `OTHER`, so that not even the method token can carry client data.
fn method_label(method: &http::Method) -> &'static str {
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
