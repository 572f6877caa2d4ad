//! Consent endpoints: the storefront's `POST /v1/consent/opt-out`, the
//! public `/unsubscribe` page, and the auditor's proof of consent.
//!
//! Both opt-out paths answer the same way whether or not the address belongs
//! to a customer, and do the same work (a ledger entry is written either
//! way), so neither answers nor timing tell who is a customer.

use axum::body::Bytes;
use axum::extract::{MatchedPath, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::Value;

use super::AppState;
use super::store_problem;
use crate::consent::{Channel, LedgerError, Withdrawal, parse_opt_out};
use crate::domain::consent::Purposes;
use crate::domain::contact::Email;
use crate::http::{FieldError, Problem};
use crate::server::identity::{Caller, Peer};

fn ledger_problem(error: LedgerError) -> Response {
    match error {
        LedgerError::Store(e) => store_problem(&e),
        LedgerError::Crypto(e) => {
            tracing::error!(error = %e, "sealing a consent event failed");
            Problem::internal().into_response()
        }
    }
}

/// The answer to an opt-out.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OptOutAccepted {
    /// Always `accepted`.
    #[schema(value_type = String, example = "accepted")]
    pub status: &'static str,
    /// RFC 3339: when the withdrawal was recorded, by this server's clock; it
    /// takes effect at once, against every order placed before it (the
    /// ledger's `effective_at` may be later, when another process's clock
    /// stamped the customer's last checkout ahead of this one's).
    pub effective_at: String,
}

/// `POST /v1/consent/opt-out` (storefront): the shop forwards a request it
/// received by email, by post or on its own site. 202, effective at once.
#[utoipa::path(
    post,
    path = "/v1/consent/opt-out",
    operation_id = "optOut",
    request_body(content((crate::consent::OptOutRequest = "application/json")), description = "At most 4 KiB"),
    responses(
        (status = 202, description = "Recorded and effective at once; the same answer whether or not the address is known", body = OptOutAccepted),
        (status = 400, description = "The body is not valid JSON (or repeats a member), or `Content-Type` was sent more than once (named in `errors`)"),
        (status = 413, description = "The body is larger than 4 KiB"),
        (status = 415, description = "Not `application/json` (`Content-Type` named in `errors`)"),
        (status = 422, description = "The opt-out has errors (listed in `errors`)"),
        (status = 500, description = "The server failed"),
        (status = 503, description = "The database is unavailable; nothing was recorded"),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn opt_out(
    State(state): State<AppState>,
    _caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let value = match super::small_json(&headers, &body) {
        Ok(v) => v,
        Err(problem) => return problem.into_response(),
    };
    let withdrawal = match parse_opt_out(value) {
        Ok(w) => w,
        Err(errors) => {
            return Problem::unprocessable("invalid-opt-out", "The opt-out has errors")
                .with_errors(errors)
                .into_response();
        }
    };
    match state
        .ledger
        .withdraw(state.store.as_ref(), &withdrawal)
        .await
    {
        Ok(effective_at) => (
            StatusCode::ACCEPTED,
            axum::Json(OptOutAccepted {
                status: "accepted",
                effective_at,
            }),
        )
            .into_response(),
        Err(e) => ledger_problem(e),
    }
}

// ---- the public page ----

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const LABELS: [(&str, &str); 5] = [
    ("product_updates", "Product updates"),
    ("new_offerings", "News about new products and services"),
    ("partnerships", "Partnership news"),
    ("special_offers", "Special offers"),
    ("third_party_sharing", "Sharing my details with partners"),
];

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{t}</title></head>\
<body><main><h1>{t}</h1>{body}</main></body></html>\n",
        t = esc(title)
    );
    let mut response = (status, html).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: nothing leaves for other sites
    // either way, and under `no-referrer` the page's own form post carries
    // `Origin: null` — which an attacker's page can send too (see
    // `from_another_site`).
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn form(error: Option<&str>) -> String {
    let mut boxes = String::new();
    for (name, label) in LABELS {
        boxes.push_str(&format!(
            "<div><input type=\"checkbox\" id=\"{name}\" name=\"{name}\" value=\"on\"> <label for=\"{name}\">{label}</label></div>"
        ));
    }
    let error = error
        .map(|e| {
            format!(
                "<p role=\"alert\" id=\"error\"><strong>{}</strong></p>",
                esc(e)
            )
        })
        .unwrap_or_default();
    format!(
        "<p>Enter the email address you gave at checkout. We stop using it for what you choose below \
— or for everything if you choose nothing — immediately.</p>{error}\
<form method=\"post\" action=\"/unsubscribe\">\
<p><label for=\"email\">Email address</label><br><input id=\"email\" name=\"email\" type=\"email\" required \
autocomplete=\"email\" maxlength=\"254\"{describedby}></p>\
<fieldset><legend>Stop using my email for (leave all unticked to stop everything)</legend>{boxes}</fieldset>\
<p><button type=\"submit\">Unsubscribe</button></p></form>",
        describedby = if error.is_empty() {
            ""
        } else {
            " aria-describedby=\"error\""
        }
    )
}

/// The public opt-out form's fields (`application/x-www-form-urlencoded`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes the form `unsubscribe` reads.
pub struct UnsubscribeForm {
    /// The address given at checkout.
    #[schema(schema_with = crate::domain::contact::email_schema)]
    email: String,
    /// A ticked box (any value) stops this purpose; no box ticked stops all.
    #[schema(example = "on")]
    product_updates: Option<String>,
    #[schema(example = "on")]
    new_offerings: Option<String>,
    #[schema(example = "on")]
    partnerships: Option<String>,
    #[schema(example = "on")]
    special_offers: Option<String>,
    #[schema(example = "on")]
    third_party_sharing: Option<String>,
}

/// `GET /unsubscribe`: the form.
#[utoipa::path(
    get,
    path = "/unsubscribe",
    operation_id = "unsubscribePage",
    responses((status = 200, description = "The opt-out form", content_type = "text/html; charset=utf-8", body = String))
)]
pub async fn unsubscribe_page() -> Response {
    page(StatusCode::OK, "Unsubscribe", &form(None))
}

/// Whether a browser says this post was sent by another site's page — which
/// could otherwise opt its visitors' addresses out in bulk, past the
/// per-address limit, from their browsers. `Sec-Fetch-Site` (every current
/// browser) decides when present: `cross-site` is refused (`same-site`, a
/// sibling subdomain such as the shop's own, is not). Else an `Origin`
/// other than this host is refused — `null` too, which a page under
/// `Referrer-Policy: no-referrer` sends (ours is `same-origin`, so its own
/// posts name it). Clients that send neither header (curl, scripts) are not
/// browsers being misused.
fn from_another_site(headers: &HeaderMap, uri: &http::Uri) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"cross-site";
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return true;
    };
    let ours = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()));
    // The page is served over TLS only: its origin is https://<authority>.
    !ours.is_some_and(|ours| {
        origin
            .strip_prefix("https://")
            .is_some_and(|theirs| theirs.eq_ignore_ascii_case(ours))
    })
}

/// Whether reading a body failed because it was over the limit given, not
/// because the client stopped sending it.
fn is_over_limit(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A post refused 429 because a budget of the opt-out page is used up: the
/// first refusal of each budget's window is written to the access log
/// (invariant 8: it shows when the limit began), the others are counted in
/// `checkoutd_denials_unlogged_total` — writing each would be the database
/// work the budget is there to bound.
async fn refused_over_budget(state: &AppState, peer: &Peer, action: String, first: bool) {
    if first {
        super::record_refusal(
            state,
            Some(peer),
            action,
            Vec::new(),
            StatusCode::TOO_MANY_REQUESTS,
        )
        .await;
    } else {
        crate::telemetry::denial_unlogged();
    }
}

/// The page's 429: too many requests `whence` ("from your network",
/// "just now"), with `Retry-After` for the rest of the window.
fn too_many(over: crate::http::rate_limit::Over, whence: &str) -> Response {
    let mut r = page(
        StatusCode::TOO_MANY_REQUESTS,
        "Please wait a moment",
        &format!("<p>Too many requests {whence}. Please try again in a minute.</p>"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(over.wait_secs));
    r
}

/// The longest the public opt-out page waits for a posted form's body.
const UNSUBSCRIBE_BODY_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// `POST /unsubscribe`: records an `online` withdrawal; the same answer for
/// every valid address. The rate limit is counted before the body is read,
/// and the body is read only up to [`super::SMALL_BODY`]: a client over its
/// limit, or sending a large or endless body, holds nothing for long.
#[utoipa::path(
    post,
    path = "/unsubscribe",
    operation_id = "unsubscribe",
    request_body(content((UnsubscribeForm = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "Recorded (the same page whether or not the address is known)", content_type = "text/html; charset=utf-8", body = String),
        (status = 400, description = "The body could not be read (the client stopped sending it)", content_type = "text/html; charset=utf-8", body = String),
        (status = 403, description = "Sent by another site's page (`Sec-Fetch-Site: cross-site`, or an `Origin` of another host)", content_type = "text/html; charset=utf-8", body = String),
        (status = 408, description = "The body took longer than 5 s to arrive", content_type = "text/html; charset=utf-8", body = String),
        (status = 413, description = "The body is larger than 4 KiB", content_type = "text/html; charset=utf-8", body = String),
        (status = 422, description = "The form again, with the problem explained", content_type = "text/html; charset=utf-8", body = String),
        (status = 429, description = "Too many requests from this address", content_type = "text/html; charset=utf-8", body = String),
        (status = 503, description = "Nothing was recorded; try again shortly", content_type = "text/html; charset=utf-8", body = String),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn unsubscribe(
    State(state): State<AppState>,
    peer: Option<axum::Extension<Peer>>,
    uri: http::Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // Both refusals are written to the access log as the role guard's are
    // (`record_refusal`, throttled when anonymous): a cross-site post, and
    // of the rate limit's 429s the first of each window (it marks where
    // the limit began; logging every one would undo the limit).
    let action = || String::from("POST /unsubscribe");
    if from_another_site(&headers, &uri) {
        super::record_refusal(
            &state,
            peer.as_deref(),
            action(),
            Vec::new(),
            StatusCode::FORBIDDEN,
        )
        .await;
        return page(
            StatusCode::FORBIDDEN,
            "Unsubscribe",
            "<p>This form can only be sent from this page. Please open it directly.</p>",
        );
    }
    if let Some(peer) = peer.as_deref()
        && let Some(over) = state.unsubscribe_limit.count(peer.addr.ip())
    {
        refused_over_budget(&state, peer, action(), over.first).await;
        return too_many(over, "from your network");
    }
    let invalid = |msg: &str| {
        page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unsubscribe",
            &form(Some(msg)),
        )
    };
    // A form of at most 4 KiB comes in well under this; a body dribbled
    // slower holds an anonymous slot for that long at most, not for the
    // whole request time limit.
    let read = tokio::time::timeout(
        UNSUBSCRIBE_BODY_TIME,
        axum::body::to_bytes(body, super::SMALL_BODY),
    );
    let Ok(read) = read.await else {
        return page(
            StatusCode::REQUEST_TIMEOUT,
            "Unsubscribe",
            &form(Some(
                "That request took too long to arrive. Please try again.",
            )),
        );
    };
    let body = match read {
        Ok(body) => body,
        Err(error) if is_over_limit(&error) => {
            return page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Unsubscribe",
                &form(Some("That request was too large.")),
            );
        }
        Err(_) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Unsubscribe",
                &form(Some("That request could not be read. Please use the form.")),
            );
        }
    };
    let Ok(Value::Object(mut fields)) = crate::domain::form::parse(&body) else {
        return invalid("That request could not be read. Please use the form.");
    };
    // An address holding a card number is refused like any invalid one
    // (`Email::parse_contact`): this page shows the address back, and
    // must never show a card number (DESIGN.md invariant 2).
    let email = fields
        .remove("email")
        .and_then(|v| v.as_str().and_then(|s| Email::parse_contact(s).ok()));
    let Some(email) = email else {
        return invalid("Please enter a valid email address.");
    };
    let mut purposes = [false; 5];
    for (slot, name) in purposes.iter_mut().zip(Purposes::NAMES) {
        *slot = fields.remove(name).is_some();
    }
    if !purposes.iter().any(|p| *p) {
        purposes = [true; 5];
    }
    let chosen: Vec<&str> = LABELS
        .iter()
        .zip(purposes)
        .filter(|(_, p)| *p)
        .map(|((_, label), _)| *label)
        .collect();
    // The budgets of the client's network and of all addresses together,
    // counted only now: a post that writes nothing does not use them up for
    // everybody else.
    if let Some(peer) = peer.as_deref()
        && let Some(over) = state
            .unsubscribe_network_writes
            .count(crate::http::rate_limit::network(peer.addr.ip()))
    {
        if over.first {
            tracing::warn!(
                network = %crate::http::rate_limit::network(peer.addr.ip()),
                "the public opt-out page's budget of one network is used up this minute; answering it 429 until the window ends"
            );
        }
        refused_over_budget(&state, peer, action(), over.first).await;
        return too_many(over, "from your network");
    }
    if let Some(over) = state
        .unsubscribe_writes
        .count(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    {
        if over.first {
            tracing::warn!(
                "the public opt-out page's budget of all addresses is used up this minute; answering 429 until the window ends"
            );
        }
        if let Some(peer) = peer.as_deref() {
            refused_over_budget(&state, peer, action(), over.first).await;
        }
        return too_many(over, "just now");
    }
    let shown = esc(email.expose());
    let withdrawal = Withdrawal {
        email,
        purposes,
        channel: Channel::Online,
        received_at: None,
        reference: None,
    };
    if let Err(e) = state
        .ledger
        .withdraw(state.store.as_ref(), &withdrawal)
        .await
    {
        tracing::error!(error = %e, "recording an online opt-out failed");
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again",
            "<p>We could not record your request just now. Nothing was changed; please try again shortly.</p>",
        );
    }
    let list: String = chosen.iter().map(|c| format!("<li>{c}</li>")).collect();
    page(
        StatusCode::OK,
        "You are unsubscribed",
        &format!(
            "<p id=\"confirmation\">If <strong>{shown}</strong> is on our lists, we no longer use it for:</p>\
<ul>{list}</ul><p>This took effect immediately. A later purchase where you tick a box again would \
count as new consent.</p>"
        ),
    )
}

/// `POST /v1/audit/consent` (auditor): proof of consent for the subject
/// whose email is in the body (`{"email": "…"}`), so that the address is in
/// no URL — not in the auditor's shell history, not in a proxy's log.
#[utoipa::path(
    post,
    path = "/v1/audit/consent",
    operation_id = "consentProofByBody",
    request_body(content((ConsentProofRequest = "application/json")), description = "At most 4 KiB"),
    responses(
        (status = 200, description = "The proof; written to the access log", body = crate::consent::ConsentProof),
        (status = 400, description = "The body is not valid JSON (or repeats a member), or `Content-Type` was sent more than once (named in `errors`)"),
        (status = 413, description = "The body is larger than 4 KiB"),
        (status = 415, description = "Not `application/json` (`Content-Type` named in `errors`)"),
        (status = 422, description = "No valid `email`, or a member other than `email` (named in `errors`)"),
        (status = 500, description = "The server failed"),
        (status = 503, description = "The database or the access log is unavailable"),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn proof_by_body(
    State(state): State<AppState>,
    _caller: Caller,
    peer: Option<axum::Extension<Peer>>,
    method: http::Method,
    route: MatchedPath,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let value = match super::small_json(&headers, &body) {
        Ok(v) => v,
        Err(problem) => return problem.into_response(),
    };
    let email = match parse_proof_request(value) {
        Ok(email) => email,
        Err(errors) => {
            return Problem::unprocessable("invalid-consent-query", "The request has errors")
                .with_errors(errors)
                .into_response();
        }
    };
    prove(&state, peer.as_deref(), &method, &route, &email).await
}

/// The body of `POST /v1/audit/consent`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes the body `parse_proof_request` reads.
pub struct ConsentProofRequest {
    /// The subject's email address (looked up by blind index, never stored).
    #[schema(schema_with = crate::domain::contact::email_schema)]
    email: String,
}

/// `{"email": "…"}` and nothing else; every fault named by its member.
fn parse_proof_request(value: Value) -> Result<Email, Vec<FieldError>> {
    let Value::Object(mut map) = value else {
        return Err(vec![FieldError::new(
            "",
            "invalid_type",
            "Expected an object",
        )]);
    };
    let mut errors = Vec::new();
    let email = crate::consent::take_email(
        &mut map,
        |s| Email::parse(s).ok_or(("invalid_email", "A valid email address is required")),
        &mut errors,
    );
    // A member name is the client's text (it could hold a card number or an
    // address): shown only when it looks like one of ours.
    for name in map.keys() {
        errors.push(FieldError::new(
            crate::domain::order::shown_field_name(name),
            "unknown_field",
            "Unknown field",
        ));
    }
    match email {
        Some(email) if errors.is_empty() => Ok(email),
        _ => Err(errors),
    }
}

/// `GET /v1/audit/consent?email=E` (auditor): proof of consent. Kept for
/// existing clients; `POST` keeps the address out of the URL.
#[utoipa::path(
    get,
    path = "/v1/audit/consent",
    operation_id = "consentProof",
    params(("email" = String, Query, description = "The subject's email address (looked up by blind index). Prefer `POST`, which carries it in the body")),
    responses(
        (status = 200, description = "The proof; written to the access log", body = crate::consent::ConsentProof),
        (status = 400, description = "No valid `email`, an unknown query parameter (named in `errors`), or a malformed query string"),
        (status = 500, description = "The server failed"),
        (status = 503, description = "The database or the access log is unavailable"),
    )
)]
#[deprecated = "the address travels in the URL; use `proof_by_body`"]
#[tracing::instrument(skip_all)]
pub async fn proof(
    State(state): State<AppState>,
    _caller: Caller,
    peer: Option<axum::Extension<Peer>>,
    method: http::Method,
    route: MatchedPath,
    params: super::Params,
) -> Response {
    if let Some(name) = params.unknown(&["email"]) {
        return Problem::bad_request("invalid-query", "The query parameters are invalid")
            .with_errors(vec![FieldError::new(
                name,
                "unknown_parameter",
                "Only email is accepted",
            )])
            .into_response();
    }
    let email = params.0.get("email").and_then(|e| Email::parse(e));
    let Some(email) = email else {
        return Problem::bad_request("invalid-query", "The query parameters are invalid")
            .with_errors(vec![FieldError::new(
                "email",
                "invalid_email",
                "A valid email address is required",
            )])
            .into_response();
    };
    prove(&state, peer.as_deref(), &method, &route, &email).await
}

/// The proof for `email`, written to the access log (naming each order it
/// reaches and the subject's reference) before it is sent.
async fn prove(
    state: &AppState,
    peer: Option<&Peer>,
    method: &http::Method,
    route: &MatchedPath,
    email: &Email,
) -> Response {
    let proof = match state.ledger.proof(state.store.as_ref(), email).await {
        Ok(p) => p,
        Err(e) => return ledger_problem(e),
    };
    let mut objects: Vec<String> = proof["records"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|t| t["order_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    objects.push(format!(
        "consent_subject:{}",
        proof["subject"]["reference"].as_str().unwrap_or("")
    ));
    if let Err(withheld) =
        super::record_access(state, peer, method.as_str(), route, objects, 200).await
    {
        return withheld;
    }
    axum::Json(proof).into_response()
}
