//! Auditor endpoints. `GET /v1/audit/log` returns access-log entries with
//! their chain hashes and MACs; reading the log is itself logged.

use axum::extract::{MatchedPath, State};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::store_problem;
use crate::hex;
use crate::http::{FieldError, Problem};
use crate::server::identity::{Caller, Peer};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// One page of the access log.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    /// Pass as `after` for the next page; `null` when this page was not full.
    pub next_after: Option<u64>,
    /// The chain's head now (`null` for an empty log).
    pub head: Option<LogHead>,
}

/// One access-log entry with its chain hash and MAC. An entry that does not
/// verify (edited in the database) has any field shaped like a card number
/// or an email address withheld, as every database text under audit is.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LogEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub entry: crate::audit::access_log::Entry,
    /// Hex SHA-256 of the previous entry (zeros before the first).
    pub prev_hash: String,
    pub hash: String,
    pub mac: String,
    /// Present only when a stored field of this entry cannot be read as
    /// the service writes it (edited in the database): says which; the
    /// fields shown for it are placeholders and the chain breaks here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<&'static str>,
}

/// `entry` with every text field as the audit shows database text
/// ([`crate::audit::verify::shown_text`]).
fn withheld_where_secret(
    mut entry: crate::audit::access_log::Entry,
) -> crate::audit::access_log::Entry {
    let shown = |text: &mut String| {
        let withheld = match crate::audit::verify::shown_text(text) {
            std::borrow::Cow::Borrowed(shown) if shown == text.as_str() => None,
            shown => Some(shown.into_owned()),
        };
        if let Some(withheld) = withheld {
            *text = withheld;
        }
    };
    for field in [
        &mut entry.at,
        &mut entry.role,
        &mut entry.cert_fingerprint,
        &mut entry.origin_ip,
        &mut entry.action,
    ] {
        shown(field);
    }
    entry.objects.iter_mut().for_each(shown);
    entry
}

/// The last entry of the chain.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LogHead {
    pub seq: u64,
    pub hash: String,
}

/// Access-log entries in order, with their chain hashes.
#[utoipa::path(
    get,
    path = "/v1/audit/log",
    operation_id = "accessLog",
    params(
        ("after" = Option<u64>, Query, description = "Entries after this sequence number (default 0)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "One page; the read is itself logged", body = LogPage),
        (status = 400, description = "An unknown query parameter, a bad `after` or `limit` (named in `errors`), or a malformed query string"),
        (status = 500, description = "The server failed"),
        (status = 503, description = "The database or the access log is unavailable"),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn log(
    State(state): State<AppState>,
    _caller: Caller,
    peer: Option<axum::Extension<Peer>>,
    method: http::Method,
    route: MatchedPath,
    params: super::Params,
) -> Response {
    let bad = |field: &str, code: &'static str, message: &'static str| {
        Problem::bad_request("invalid-query", "The query parameters are invalid")
            .with_errors(vec![FieldError::new(field, code, message)])
            .into_response()
    };
    if let Some(name) = params.unknown(&["after", "limit"]) {
        return bad(
            &name,
            "unknown_parameter",
            "Only after and limit are accepted",
        );
    }
    let query = &params.0;
    // A sequence number: 0 to i64::MAX, as the OpenAPI says (the store
    // counts in i64).
    let after = match query.get("after").map(|v| v.parse::<i64>()) {
        None => 0,
        Some(Ok(n)) if n >= 0 => n,
        Some(_) => {
            return bad("after", "invalid", "after is a sequence number (0 or more)");
        }
    };
    let limit = match query.get("limit").map(|v| v.parse::<u32>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return bad("limit", "invalid", "limit is a whole number from 1 to 1000");
        }
    };
    let page = match state.store.access_log_page(after, limit).await {
        Ok(p) => p,
        Err(error) => return store_problem(&error),
    };
    let head = match state.store.access_log_head().await {
        Ok(h) => h,
        Err(error) => return store_problem(&error),
    };
    let range = match (page.first(), page.last()) {
        (Some(a), Some(b)) => vec![format!("access_log:{}..{}", a.seq, b.seq)],
        _ => Vec::new(),
    };
    let next_after = (page.len() == limit as usize)
        .then(|| page.last().map(|e| e.seq))
        .flatten();
    let keyring = state.keyring.current();
    let entries: Vec<_> = page
        .into_iter()
        .map(|e| {
            // An entry this service wrote holds only its own words; one
            // that does not verify is database text like any other under
            // audit, withheld where shaped like a card number or an email.
            let entry = if e.verifies(keyring.access_log_key()) {
                e.entry
            } else {
                withheld_where_secret(e.entry)
            };
            LogEntry {
                seq: e.seq,
                prev_hash: hex::encode(&e.prev_hash),
                hash: hex::encode(&e.hash),
                mac: hex::encode(&e.mac),
                entry,
                damaged: e.damaged,
            }
        })
        .collect();
    if let Err(withheld) =
        super::record_access(&state, peer.as_deref(), method.as_str(), &route, range, 200).await
    {
        return withheld;
    }
    axum::Json(LogPage {
        entries,
        next_after,
        head: head.map(|h| LogHead {
            seq: h.seq,
            hash: hex::encode(&h.hash),
        }),
    })
    .into_response()
}

/// The answer while the report is being produced.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Generating {
    /// `generating`.
    #[schema(value_type = String, example = "generating")]
    pub status: &'static str,
    #[schema(value_type = String)]
    pub detail: &'static str,
}

/// The signed verification report.
#[utoipa::path(
    get,
    path = "/v1/audit/report",
    operation_id = "auditReport",
    responses(
        (status = 200, description = "The latest signed report; the read is logged", body = crate::audit::report::SignedReport),
        (status = 202, description = "The report is being generated; ask again", body = Generating,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 500, description = "The report could not be produced"),
        (status = 503, description = "The access log is unavailable"),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn report(
    State(state): State<AppState>,
    _caller: Caller,
    peer: Option<axum::Extension<Peer>>,
    method: http::Method,
    route: MatchedPath,
) -> Response {
    // Wait for the run up to 2/3 of the request budget, then answer 202.
    let wait = state.request_timeout.mul_f32(2.0 / 3.0);
    let outcome = state
        .report_job
        .latest_or_start(state.store.clone(), state.keyring.clone(), wait)
        .await;
    let signed = match outcome {
        Some(Ok(signed)) => signed,
        Some(Err(what)) => {
            tracing::error!(what, "the audit report could not be produced");
            return Problem::internal().into_response();
        }
        None => {
            let mut r = (
                http::StatusCode::ACCEPTED,
                axum::Json(Generating {
                    status: "generating",
                    detail: "The report is being generated; ask again shortly",
                }),
            )
                .into_response();
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(5u32));
            return r;
        }
    };
    if let Err(r) = super::record_access(
        &state,
        peer.as_deref(),
        method.as_str(),
        &route,
        vec!["audit_report".into()],
        200,
    )
    .await
    {
        return r;
    }
    axum::Json(signed.as_ref()).into_response()
}

/// The report-signing public key.
#[utoipa::path(
    get,
    path = "/v1/audit/public-key",
    operation_id = "auditPublicKey",
    responses(
        (status = 200, description = "The public half of the report-signing key", body = crate::audit::report::PublicKeyInfo),
        (status = 500, description = "The keyring holds no signing key"),
    )
)]
pub async fn public_key(State(state): State<AppState>, _caller: Caller) -> Response {
    match crate::audit::report::public_key(&state.keyring.current()) {
        Ok(k) => axum::Json(k).into_response(),
        Err(_) => Problem::internal().into_response(),
    }
}

/// Encryption metadata, consent tags and verdicts for one order.
#[utoipa::path(
    get,
    path = "/v1/audit/orders/{id}",
    operation_id = "auditOrder",
    params(("id" = String, Path, description = "The order id (a UUID)")),
    responses(
        (status = 200, description = "Metadata and verdicts, never plaintext; the read is logged. `verified` covers this order's own rows; checks that need the whole database (an undone dispatch, a deleted idempotency row) are the full report's", body = crate::audit::verify::OrderAudit),
        (status = 404, description = "No such order (also for an id that is not a UUID)"),
        (status = 500, description = "The server failed"),
        (status = 503, description = "The database or the access log is unavailable"),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn order(
    State(state): State<AppState>,
    _caller: Caller,
    peer: Option<axum::Extension<Peer>>,
    method: http::Method,
    route: MatchedPath,
    super::IdSegment(id): super::IdSegment,
) -> Response {
    let Some(id) = id else {
        return Problem::not_found().into_response();
    };
    let id = id.to_string();
    match crate::audit::verify::order(state.store.as_ref(), &state.keyring.current(), &id).await {
        Ok(Some(audit)) => {
            if let Err(r) = super::record_access(
                &state,
                peer.as_deref(),
                method.as_str(),
                &route,
                vec![id],
                200,
            )
            .await
            {
                return r;
            }
            axum::Json(audit).into_response()
        }
        Ok(None) => Problem::not_found().into_response(),
        Err(error) => store_problem(&error),
    }
}
