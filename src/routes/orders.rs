//! `POST /v1/orders` and `GET /v1/orders/{id}` (storefront).
//!
//! HTTP concerns only: media type (415), `Idempotency-Key` (400), body size
//! (413), then [`crate::intake`] does the work. Bodies are read into a
//! zeroizing buffer. Responses never hold a card number, CVC or personal
//! detail: brand, last4, totals and consent only.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::AppState;
use crate::http::Problem;
use crate::intake::{Accepted, IdempotencyKey, IntakeError, MediaType};
use crate::server::identity::Caller;
use crate::store::rows::StoredResponse;

/// Largest accepted order body.
pub const MAX_BODY: usize = 64 * 1024;

#[tracing::instrument(skip_all)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(MediaType::from_header);
    let Some(media) = media else {
        return Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Send application/json or application/x-www-form-urlencoded (UTF-8)",
        )
        .into_response();
    };
    let key = match headers.get("idempotency-key") {
        None => {
            return Problem::bad_request(
                "idempotency-key-missing",
                "The Idempotency-Key header is required",
            )
            .into_response();
        }
        Some(v) => match IdempotencyKey::parse(v.as_bytes()) {
            Some(k) => k,
            None => {
                return Problem::bad_request(
                    "idempotency-key-invalid",
                    "The Idempotency-Key header must be 1-255 visible ASCII characters",
                )
                .into_response();
            }
        },
    };
    let claim = match state.intake.claim(&caller, key) {
        Ok(c) => c,
        Err(e) => return intake_problem(e).into_response(),
    };
    let body = match read_body(&headers, body).await {
        Ok(b) => b,
        Err(p) => return p.into_response(),
    };
    match state.intake.submit(&claim, media, body).await {
        Ok(Accepted::Created(r)) => stored(r, false),
        Ok(Accepted::Replayed(r)) => stored(r, true),
        Err(e) => intake_problem(e).into_response(),
    }
}

/// Reads at most [`MAX_BODY`] bytes into a zeroizing buffer.
async fn read_body(headers: &HeaderMap, mut body: Body) -> Result<Zeroizing<Vec<u8>>, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "The body is larger than 64 KiB",
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(declared.unwrap_or(MAX_BODY)));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            Problem::bad_request("body-unreadable", "The request body could not be read")
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(too_large());
            }
            if buf.len() + data.len() > buf.capacity() {
                // Grow by moving into a bigger zeroizing buffer, so the old
                // allocation is wiped rather than abandoned.
                let mut bigger = Zeroizing::new(Vec::with_capacity(MAX_BODY));
                bigger.extend_from_slice(&buf);
                buf = bigger;
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

fn stored(r: StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::CREATED);
    let mut response = (status, r.body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/orders/{}", r.order_id)) {
        h.insert(header::LOCATION, location);
    }
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// The one mapping of intake errors to problem documents.
fn intake_problem(e: IntakeError) -> Problem {
    match e {
        IntakeError::MalformedJson(e) => {
            Problem::bad_request("malformed-body", "The body is not valid JSON")
                .with_detail(e.to_string())
        }
        IntakeError::MalformedForm(f) => {
            Problem::bad_request("malformed-body", "The form body is malformed")
                .with_detail(f.to_string())
        }
        IntakeError::Invalid(errors) => {
            Problem::unprocessable("invalid-order", "The order form has errors").with_errors(errors)
        }
        IntakeError::KeyReused => Problem::unprocessable(
            "idempotency-key-reused",
            "This Idempotency-Key was already used with a different body",
        ),
        IntakeError::InFlight => Problem::conflict(
            "idempotency-key-in-flight",
            "A request with this Idempotency-Key is still being processed; retry later",
        ),
        IntakeError::Store(error) => {
            tracing::error!(error = %error, cause = ?std::error::Error::source(&error).map(|s| s.to_string()), "storing an order failed");
            if error.is_unavailable() {
                Problem::unavailable(
                    "The order could not be confirmed as stored just now; retry with the same Idempotency-Key (a retry never creates a second order)",
                )
            } else {
                Problem::internal()
            }
        }
        IntakeError::Crypto(error) => {
            tracing::error!(error = %error, "sealing an order failed");
            Problem::internal()
        }
    }
}

/// The masked order summary.
pub async fn summary(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return Problem::not_found().into_response();
    };
    match state
        .store
        .order_summary(caller.fingerprint.as_bytes(), id)
        .await
    {
        Ok(Some(s)) => {
            let mut consent = s.consent.view();
            let verified = state.intake.tag_verifies(&s.consent);
            consent["verified"] = serde_json::Value::Bool(verified);
            if !verified {
                tracing::error!(order_id = %s.id, "a consent tag failed its MAC check");
            }
            let items: Vec<serde_json::Value> = s
                .items
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "sku": i.sku, "description": i.description, "quantity": i.quantity,
                        "unit_price_minor": i.unit_price_minor,
                        "line_total_minor": i.quantity.saturating_mul(i.unit_price_minor),
                    })
                })
                .collect();
            axum::Json(serde_json::json!({
                "order_id": s.id,
                "status": s.status,
                "created_at": s.created_at,
                "storefront_order_ref": s.storefront_ref,
                "currency": s.currency,
                "items": items,
                "total_minor": s.total_minor,
                "gift": s.gift,
                "card": match (&s.brand, &s.last4) {
                    (Some(brand), Some(last4)) => serde_json::json!({"brand": brand, "last4": last4}),
                    _ => serde_json::Value::Null,
                },
                "consent": consent,
            }))
            .into_response()
        }
        Ok(None) => Problem::not_found().into_response(),
        Err(error) => {
            tracing::error!(error = %error, "reading an order summary failed");
            Problem::internal().into_response()
        }
    }
}
