//! HTTP plumbing shared by every route: problem documents, security headers,
//! the per-request access log line and the request timeout.

pub mod access_log;
pub mod guard;
pub mod headers;
pub mod problem;
pub mod rate_limit;

pub use problem::{FieldError, Problem};

use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// The outer layer of every route (only the panic catcher and the role
/// check sit between it and the handler), doing in one what five layers
/// did — each `from_fn` layer costs a boxed clone of the inner service and
/// a boxed future per request (docs/performance.md). From the inside out:
/// 1. the framing, header-size and overload guard ([`guard::guard`]);
/// 2. the request time limit (408 problem) around it and everything inside;
/// 3. the problem-document fallback for any other error answer
///    (invariant 10);
/// 4. the security headers on every answer (invariant 1);
/// 5. the access-log line and the request metrics, last, so they record
///    the status actually sent and the whole latency (invariant 7).
pub async fn envelope(limit: Duration, mut req: Request, next: Next) -> Response {
    let log = access_log::Started::of(&req);
    req.extensions_mut()
        .insert(headers::Deadline(tokio::time::Instant::now() + limit));
    let response = headers::within(limit, guard::guard(req, next)).await;
    let mut response = headers::problem_fallback(response);
    headers::secure(response.headers_mut());
    log.finish(&response);
    response
}
