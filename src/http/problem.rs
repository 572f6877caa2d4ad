//! RFC 9457 problem documents: the one place where an error becomes an HTTP
//! answer.
//!
//! Invariant: a problem never carries client input. `title` and `detail` are
//! static text chosen by us; field errors name a *path* and a *code*, never
//! the rejected value, so a card number or an email cannot be echoed into a
//! response or a log line by way of an error.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One rejected field of an input document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `card.number` or `items.0.sku`
    /// (empty for the document itself, `<unknown>` for a member whose name
    /// is not shown); a query parameter's name; or a request header's name
    /// (`Content-Type`, `Idempotency-Key`).
    #[schema(example = "card.number")]
    pub field: String,
    /// Stable machine-readable code, e.g. `required`, `luhn`, `too_long`.
    #[schema(value_type = String, example = "luhn")]
    pub code: &'static str,
    /// Human-readable explanation; static text, never the value.
    #[schema(value_type = String)]
    pub message: &'static str,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &'static str, message: &'static str) -> Self {
        Self {
            field: field.into(),
            code,
            message,
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    /// Short slug; the `type` member is `urn:checkoutd:problem:<slug>`.
    slug: &'static str,
    title: &'static str,
    detail: Option<Cow<'static, str>>,
    errors: Vec<FieldError>,
    retry_after_secs: Option<u32>,
}

// The type every problem is serialised as; the OpenAPI `Problem` schema is
// derived from it (its doc comment is the schema's description).
/// The body of every error answer (`application/problem+json`, RFC 9457).
/// `title` and `detail` are static text, never client input.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDocument<'a> {
    /// `urn:checkoutd:problem:<slug>`, a stable identifier of the problem.
    #[serde(rename = "type")]
    #[schema(
        pattern = "^urn:checkoutd:problem:[a-z0-9-]+$",
        example = "urn:checkoutd:problem:invalid-order"
    )]
    pub type_: String,
    /// A short, static summary of the problem type.
    #[schema(value_type = String)]
    pub title: &'a str,
    /// The HTTP status code of this answer.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// A static explanation of this occurrence; never client input.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub detail: Option<&'a str>,
    /// Extension member: every rejected field, by path and code (input
    /// documents and query parameters).
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    #[schema(value_type = Option<Vec<FieldError>>)]
    pub errors: &'a [FieldError],
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str) -> Self {
        Self {
            status,
            slug,
            title,
            detail: None,
            errors: Vec::new(),
            retry_after_secs: None,
        }
    }

    /// Adds a detail sentence. Only static text or text built from ids and
    /// numbers we generated — never from client input.
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn slug(&self) -> &'static str {
        self.slug
    }

    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    // The catalogue of problems used across the service.

    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "A client certificate issued by the checkoutd client CA is required",
        )
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "The client certificate's role may not call this endpoint",
        )
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "No such resource")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "This resource does not support that method",
        )
    }

    pub fn not_implemented() -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "not-implemented",
            "This endpoint is part of the contract but not built yet",
        )
    }

    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "The request was not completed in time",
        )
    }

    pub fn unavailable(title: &'static str) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", title).with_retry_after(1)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "The server failed to handle the request; nothing was stored",
        )
    }

    /// A handler panicked (a bug). The panic itself is logged without its
    /// message (see `telemetry::install_panic_hook`); the answer says as
    /// little.
    pub fn panicked() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "The server failed while handling the request",
        )
        .with_detail(
            "Retry with the same Idempotency-Key: an order that was stored is answered again, one that was not is taken.",
        )
    }

    pub fn bad_request(slug: &'static str, title: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, slug, title)
    }

    pub fn unprocessable(slug: &'static str, title: &'static str) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, slug, title)
    }

    pub fn conflict(slug: &'static str, title: &'static str) -> Self {
        Self::new(StatusCode::CONFLICT, slug, title)
    }

    /// The serialised body (used by idempotency to store a response).
    pub fn body_bytes(&self) -> Vec<u8> {
        let body = ProblemDocument {
            type_: format!("urn:checkoutd:problem:{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: self.detail.as_deref(),
            errors: &self.errors,
        };
        // Serialising plain strings and integers cannot fail; fall back to an
        // empty object rather than panicking if it ever did.
        serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body_bytes()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_rfc9457_members_and_field_errors() {
        let p =
            Problem::unprocessable("invalid-order", "The order form has errors").with_errors(vec![
                FieldError::new("card.number", "luhn", "fails the Luhn check"),
            ]);
        let v: serde_json::Value = serde_json::from_slice(&p.body_bytes()).unwrap();
        assert_eq!(v["type"], "urn:checkoutd:problem:invalid-order");
        assert_eq!(v["status"], 422);
        assert_eq!(v["errors"][0]["field"], "card.number");
        assert_eq!(v["errors"][0]["code"], "luhn");
    }

    #[test]
    fn response_has_problem_media_type_and_retry_after() {
        let r = Problem::unavailable("database unavailable").into_response();
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
