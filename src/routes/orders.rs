//! `POST /v1/orders` and `GET /v1/orders/{id}` (storefront).
//!
//! HTTP concerns only: media type (415), `Idempotency-Key` (400), body size
//! (413), then [`crate::intake`] does the work. Bodies are read into a
//! zeroizing buffer. Responses never hold a card number, CVC or personal
//! detail: brand, last4, totals and consent only.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::AppState;
use crate::http::{FieldError, Problem};
use crate::intake::{Accepted, IdempotencyKey, IntakeError, MediaType};
use crate::server::identity::Caller;
use crate::store::rows::StoredResponse;

/// Largest accepted order body.
pub const MAX_BODY: usize = 64 * 1024;

/// Submits an order form (JSON or form-encoded). Validated, encrypted and
/// durably stored before the answer; replayed for the same key and body.
#[utoipa::path(
    post,
    path = "/v1/orders",
    operation_id = "createOrder",
    params(
        ("Idempotency-Key" = String, Header, pattern = r#"^(?:[!#-~][!-~]{0,254}|"(?:[ !#-\[\]-~]|\\["\\]){1,255}")$"#,
            description = "1-255 visible ASCII characters (or an RFC 8941 quoted string). Scoped to the client certificate and single-use for good. Within the replay window (`--replay-window-hours`, default a week; a purge of the order ends it): the same key with the same body replays the first answer, with another body 422 `idempotency-key-reused`; while the first is in flight: 409. After it: 422 `idempotency-window-passed`, naming the order the key made."),
    ),
    request_body(
        description = "The order form. `application/x-www-form-urlencoded` takes the same names flattened with dots (`OrderFormFields`). At most 64 KiB, UTF-8.",
        content((crate::domain::order_schema::OrderRequest = "application/json")),
    ),
    responses(
        (status = 201, description = "Accepted and durably stored (or the replay of the first answer for this key)",
            body = crate::intake::seal::OrderAccepted,
            headers(
                ("Location" = String, description = "`/v1/orders/{order_id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this is the stored answer to an earlier request with the same key"),
            )),
        (status = 400, description = "Missing, repeated or invalid `Idempotency-Key`, or a repeated `Content-Type` (the header named in `errors`), malformed JSON or form body (for a form, the offending field in `errors` when it can be named), unreadable body"),
        (status = 409, description = "A request with this `Idempotency-Key` is still being processed"),
        (status = 413, description = "The body is larger than 64 KiB"),
        (status = 415, description = "Not `application/json` or `application/x-www-form-urlencoded` (UTF-8); `Content-Type` named in `errors`"),
        (status = 422, description = "The order has errors (every one listed in `errors`, by field path), or the key was used with another body (`idempotency-key-reused`), or it is retried after its replay window (`idempotency-window-passed`, naming its order)"),
        (status = 500, description = "The server failed; nothing was stored. Type `stored-response-unverifiable`: the stored answer for this retried key failed its integrity check and is not replayed (no second order was made)"),
        (status = 503, description = "The order could not be confirmed as stored; retry with the same key"),
    )
)]
#[tracing::instrument(level = "debug", skip_all)] // hot path: see Intake::submit
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    deadline: Option<axum::Extension<crate::http::headers::Deadline>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let claimed = request_headers(&headers).and_then(|(media, key)| {
        let claim = state.intake.claim(&caller, key).map_err(intake_problem)?;
        Ok((media, claim))
    });
    let (media, claim) = match claimed {
        Ok(claimed) => claimed,
        Err(problem) => {
            // Read the body (bounded, into a wiped buffer) before answering:
            // answered first, an HTTP/2 stream is reset with NO_ERROR, which
            // some clients (curl 7.88, Debian 12's) report as an error
            // instead of showing the answer.
            let _ = read_body(&headers, body).await;
            return problem.into_response();
        }
    };
    let body = match read_body(&headers, body).await {
        Ok(b) => b,
        Err(p) => return p.into_response(),
    };
    let answer_by = deadline.map(|axum::Extension(d)| d.0);
    match state.intake.submit(&claim, media, body, answer_by).await {
        Ok(Accepted::Created(r)) => stored(r, false),
        Ok(Accepted::Replayed(r)) => stored(r, true),
        Err(e) => intake_problem(e).into_response(),
    }
}

/// The media type and the one `Idempotency-Key` of an order post, or the
/// problem with them (415, 400), the header named in `errors`.
fn request_headers(headers: &HeaderMap) -> Result<(MediaType, IdempotencyKey), Problem> {
    let media = super::media_type(
        headers,
        &[MediaType::Json, MediaType::Form],
        "Send application/json or application/x-www-form-urlencoded (UTF-8)",
    )?;
    let problem = |slug, title, code| {
        Problem::bad_request(slug, title).with_errors(vec![FieldError::new(
            "Idempotency-Key",
            code,
            title,
        )])
    };
    let mut keys = headers.get_all("idempotency-key").iter();
    let (first, second) = (keys.next(), keys.next());
    if second.is_some() {
        // Which one the client meant is not ours to guess.
        return Err(problem(
            "idempotency-key-invalid",
            "Send exactly one Idempotency-Key header",
            "repeated",
        ));
    }
    let Some(first) = first else {
        return Err(problem(
            "idempotency-key-missing",
            "The Idempotency-Key header is required",
            "required",
        ));
    };
    let key = IdempotencyKey::parse(first.as_bytes()).ok_or_else(|| {
        problem(
            "idempotency-key-invalid",
            "The Idempotency-Key header must be 1-255 visible ASCII characters",
            "invalid",
        )
    })?;
    Ok((media, key))
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
        IntakeError::MalformedJson(e) => super::json_problem(e),
        IntakeError::MalformedForm(m) => {
            let problem = Problem::bad_request("malformed-body", "The form body is malformed")
                .with_detail(m.error.to_string());
            match m.field {
                Some(field) => problem.with_errors(vec![FieldError::new(
                    field,
                    m.error.code(),
                    m.error.message(),
                )]),
                None => problem,
            }
        }
        IntakeError::Invalid(errors) => {
            Problem::unprocessable("invalid-order", "The order form has errors").with_errors(errors)
        }
        IntakeError::KeyReused => Problem::unprocessable(
            "idempotency-key-reused",
            "This Idempotency-Key was already used with a different body",
        ),
        IntakeError::ReplayWindowPassed {
            order_id,
            created_at,
        } => Problem::unprocessable(
            "idempotency-window-passed",
            "This Idempotency-Key can no longer be replayed: its replay window has passed, or its order was purged, so a retry can no longer be compared with the first request",
        )
        .with_detail(format!(
            "The key made order {order_id} at {created_at}. If this request is a retry, that order stands (GET /v1/orders/{order_id}); a new order needs a new Idempotency-Key"
        )),
        IntakeError::InFlight => Problem::conflict(
            "idempotency-key-in-flight",
            "A request with this Idempotency-Key is still being processed; retry later",
        ),
        IntakeError::StoredResponseUnverifiable { order_id } => {
            match order_id {
                Some(order_id) => {
                    tracing::error!(%order_id, "the stored response for an Idempotency-Key failed its MAC check (edited in the database?); not replayed")
                }
                None => tracing::error!(
                    "the stored response for an Idempotency-Key cannot be read: a column holds what checkoutd never writes (edited in the database?); not replayed"
                ),
            }
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "stored-response-unverifiable",
                "The stored answer for this Idempotency-Key failed its integrity check, so it is not replayed; no second order was created. The failure is logged for the operator",
            )
        }
        IntakeError::Store(error) => {
            if matches!(error, crate::store::StoreError::Busy) {
                // Overload, counted and answered 503; one line per refused
                // order would flood the log exactly when it matters.
                tracing::debug!("commit queue full; order refused with 503");
            } else {
                tracing::error!(error = %error, cause = ?std::error::Error::source(&error).map(|s| s.to_string()), "storing an order failed");
            }
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

/// The masked order summary: no personal details, the card as brand and
/// last four digits.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OrderSummary<'a> {
    pub order_id: Uuid,
    /// `accepted` or `dispatched`.
    #[schema(value_type = String, example = "accepted")]
    pub status: &'a str,
    /// RFC 3339.
    #[schema(value_type = String)]
    pub created_at: &'a str,
    #[schema(value_type = Option<String>)]
    pub storefront_order_ref: Option<&'a str>,
    #[schema(value_type = String, example = "USD")]
    pub currency: &'a str,
    pub items: Vec<SummaryItem<'a>>,
    pub total_minor: i64,
    pub gift: bool,
    /// `null` once the card data was purged.
    pub card: Option<crate::intake::seal::CardSummary<'a>>,
    pub consent: SummaryConsent<'a>,
}

/// One line of an order summary.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SummaryItem<'a> {
    #[schema(value_type = String)]
    pub sku: &'a str,
    #[schema(value_type = Option<String>)]
    pub description: Option<&'a str>,
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub line_total_minor: i64,
}

/// The order's consent tag and whether it verified.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SummaryConsent<'a> {
    #[serde(flatten)]
    pub tag: crate::domain::consent::TagView<'a>,
    /// The tag's MAC verifies, and it is this order's customer tag.
    pub verified: bool,
}

/// The masked order summary.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    operation_id = "getOrder",
    params(("id" = String, Path, description = "The order id (a UUID) returned when the order was accepted")),
    responses(
        (status = 200, description = "The masked summary", body = OrderSummary),
        (status = 404, description = "No such order for this client (also for an id that is not a UUID)"),
        (status = 500, description = "The server failed, or the order's stored row fails its integrity check (edited in the database: withheld; tell the operator)"),
        (status = 503, description = "The database is unavailable; retry"),
    )
)]
pub async fn summary(
    State(state): State<AppState>,
    caller: Caller,
    super::IdSegment(id): super::IdSegment,
) -> Response {
    let Some(id) = id else {
        return Problem::not_found().into_response();
    };
    match state
        .store
        .order_summary(caller.fingerprint.as_bytes(), id)
        .await
    {
        Ok(Some(s)) => {
            // Items, totals and status edited in the database are not
            // served as the order's.
            if !crate::intake::seal::order_row_verifies(
                state.keyring.current().consent_tag_key(),
                &s.id.to_string(),
                &s.created_at,
                &s.status,
                &s.seal,
                s.dispatch.as_ref(),
            ) {
                tracing::error!(order_id = %s.id, "an order row failed its MAC check: its summary is withheld");
                return Problem::internal().into_response();
            }
            // Genuine (its MAC), and the customer's tag *of this order*: a
            // genuine tag of another order, or the gift recipient's, put in
            // `orders.consent_tag_id` by a database writer is not shown as
            // this order's consent.
            let verified = state.intake.tag_verifies(&s.consent)
                && s.consent.order_id == s.id
                && s.consent.subject == crate::domain::consent::Subject::Customer;
            if !verified {
                tracing::error!(order_id = %s.id, "the order's consent tag failed its MAC check or is not its customer's tag");
            }
            let items = s
                .items
                .iter()
                .map(|i| SummaryItem {
                    sku: i.sku.as_str(),
                    description: i.description.as_ref().map(|d| d.as_str()),
                    quantity: i.quantity,
                    unit_price_minor: i.unit_price_minor,
                    line_total_minor: i.quantity.saturating_mul(i.unit_price_minor),
                })
                .collect();
            axum::Json(OrderSummary {
                order_id: s.id,
                status: &s.status,
                created_at: &s.created_at,
                storefront_order_ref: s.storefront_ref.as_deref(),
                currency: &s.currency,
                items,
                total_minor: s.total_minor,
                gift: s.gift,
                card: match (&s.brand, &s.last4) {
                    (Some(brand), Some(last4)) => {
                        Some(crate::intake::seal::CardSummary { brand, last4 })
                    }
                    _ => None,
                },
                consent: SummaryConsent {
                    tag: s.consent.tag_view(),
                    verified,
                },
            })
            .into_response()
        }
        Ok(None) => Problem::not_found().into_response(),
        Err(error) => super::store_problem(&error),
    }
}
