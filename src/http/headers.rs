//! Response headers every answer carries, and the request time limit.
//!
//! HSTS goes on *every* response (invariant 1); `nosniff` and `no-store` too,
//! since every API answer may concern an order and nothing should be cached
//! (the OpenAPI description, which holds no data, sets its own).

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

use super::Problem;

pub const HSTS: &str = "max-age=63072000; includeSubDomains";

/// Sets the headers every answer carries (for answers made outside the
/// router, e.g. the connection-level overload answer).
pub fn secure(headers: &mut http::HeaderMap) {
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static(HSTS),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `no-store` unless a handler chose otherwise (only the public OpenAPI
    // description, which holds no data, does).
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

/// When the request's time limit ([`within`]) answers 408 — a request
/// extension, so that a handler whose work may outlive the answer (an
/// order's commit) can stop waiting in time and answer for itself.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub tokio::time::Instant);

/// Bounds the whole request (including reading a slowly sent body).
pub async fn within(limit: Duration, work: impl Future<Output = Response>) -> Response {
    match tokio::time::timeout(limit, work).await {
        Ok(response) => response,
        Err(_) => Problem::request_timeout().into_response(),
    }
}

/// Invariant 10, everywhere: an error answer that is not already a problem
/// document (an extractor's plain-text rejection, a framework default)
/// becomes one, with the same status and a generic title. The original body
/// is dropped unread, so nothing of the request can be echoed.
pub fn problem_fallback(response: Response) -> Response {
    let status = response.status();
    // Only framework defaults (no body type, or plain text) are replaced;
    // problem documents and our own HTML pages pass through.
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let mut problem = match status {
        // A body limit enforced while reading (`DefaultBodyLimit`): the
        // same answer as the limits our handlers check themselves.
        http::StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(status, "body-too-large", "The body is too large")
        }
        _ => Problem::new(
            status,
            "http-error",
            status.canonical_reason().unwrap_or("Error"),
        ),
    }
    .into_response();
    // Keep informative headers (Allow, Retry-After); the body and its
    // framing headers are replaced.
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    for (name, value) in parts.headers.iter() {
        problem
            .headers_mut()
            .entry(name.clone())
            .or_insert_with(|| value.clone());
    }
    problem
}
