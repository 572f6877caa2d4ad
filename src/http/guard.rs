//! Checks every request passes before routing: message framing, header
//! size, and the in-flight cap. Each refusal is a problem document.
//!
//! - **Request smuggling.** An HTTP/1 request that carries
//!   `Transfer-Encoding` is refused `400` (`ambiguous-framing`) with
//!   `Connection: close`, and its body is never read: request bodies over
//!   HTTP/1.1 must be framed by `Content-Length` alone. hyper resolves
//!   `Content-Length` + `Transfer-Encoding: chunked` by letting chunked win
//!   and dropping the length before we see the request, so refusing any
//!   `Transfer-Encoding` is the only way our code can refuse that pair (and
//!   a duplicated `Transfer-Encoding`). What hyper refuses itself before our
//!   code runs — two different `Content-Length`s, a `Transfer-Encoding` not
//!   ending in `chunked` (`chunked, identity`, `xchunked`), malformed header
//!   syntax (`Transfer-Encoding : chunked`) — gets hyper's bare `400` and the
//!   connection closed. Either way, nothing after the ambiguous request on
//!   that connection is parsed. HTTP/2 frames its own bodies (and h2 refuses
//!   `Transfer-Encoding` as a connection-specific header).
//! - **Oversized headers.** More than [`MAX_HEADER_BYTES`] of header names
//!   and values (plus 4 bytes a line of framing), or more than
//!   [`MAX_HEADERS`] fields: `431` (`headers-too-large`). Below the
//!   protocol-level limits: hyper's HTTP/1 read buffer (64 KiB for the
//!   request line and headers, or 100 fields; beyond, hyper answers a bare
//!   `431` and closes) and HTTP/2's 64 KiB `SETTINGS_MAX_HEADER_LIST_SIZE`
//!   (beyond, h2 answers the stream a bare `431`).
//! - **Overload.** A request the server marked [`Overloaded`] (more than
//!   `max_requests_in_flight` at once) is answered `503` with
//!   `Retry-After: 1` without running any handler.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Version, header};

use super::Problem;

/// Most bytes of request header names and values (with 4 bytes a field).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Most request header fields.
pub const MAX_HEADERS: usize = 64;

/// Put on a request by the server when it is over the in-flight cap.
#[derive(Debug, Clone, Copy)]
pub struct Overloaded;

pub async fn guard(req: Request, next: Next) -> Response {
    let http1 = matches!(
        req.version(),
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    );
    if http1 && req.headers().contains_key(header::TRANSFER_ENCODING) {
        let mut response = Problem::bad_request(
            "ambiguous-framing",
            "Transfer-Encoding is not accepted on a request; send the body with Content-Length",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let headers = req.headers();
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > MAX_HEADER_BYTES || headers.len() > MAX_HEADERS {
        let mut response = Problem::new(
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "The request headers are larger than 16 KiB or more than 64 fields",
        )
        .into_response();
        if http1 {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return response;
    }
    if req.extensions().get::<Overloaded>().is_some() {
        return overload_problem().into_response();
    }
    next.run(req).await
}

fn overload_problem() -> Problem {
    Problem::unavailable("The server is at capacity; retry shortly")
}

/// The route label of [`overloaded`]'s answers.
pub const OVERLOADED_ROUTE: &str = "<overloaded>";

/// The overload answer made outside the router (the connection cap): the
/// same problem document, with the headers every answer carries, and
/// `Connection: close` over HTTP/1. Counted in the request metrics under
/// the route `<overloaded>` (no router matched it), so that dashboards of
/// answers by status see these 503s too.
pub fn overloaded(method: &http::Method, version: Version) -> Response {
    crate::telemetry::request(
        OVERLOADED_ROUTE,
        super::access_log::method_label(method),
        http::StatusCode::SERVICE_UNAVAILABLE.as_u16(),
        std::time::Duration::ZERO,
    );
    let mut response = overload_problem().into_response();
    super::headers::secure(response.headers_mut());
    if matches!(
        version,
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    ) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
