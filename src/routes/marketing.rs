//! `GET /v1/marketing/audience?purpose=P&after=CURSOR&limit=N` (marketing):
//! the emails that consent to `P` right now. Every export is written to the
//! access log with the purpose and the number of subjects returned.
//!
//! An export pages by customer, in an order of their own (the email's blind
//! index), not by order: each customer is on one page only, however often
//! they order while the export runs, and a page costs what its customers'
//! orders cost, not the whole table. A page may hold fewer than `limit`
//! emails (where few of the customers it scanned consent), even none:
//! follow `next_cursor` until it is `null`.

use axum::extract::{MatchedPath, State};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::store_problem;
use crate::domain::consent::Purposes;
use crate::http::{FieldError, Problem};
use crate::server::identity::{Caller, Peer};

pub const DEFAULT_LIMIT: u32 = 500;
pub const MAX_LIMIT: u32 = 5000;

/// One page of an audience.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AudiencePage<'a> {
    #[schema(value_type = String, example = "special_offers")]
    pub purpose: &'a str,
    /// Normalised addresses that consent to `purpose` now.
    pub emails: &'a [String],
    /// Pass as `after` for the next page; `null` on the last page. A page
    /// may hold fewer than `limit` emails, even none, and still have a next.
    pub next_cursor: Option<String>,
}

/// The emails that currently consent to one purpose.
#[utoipa::path(
    get,
    path = "/v1/marketing/audience",
    operation_id = "audience",
    params(
        ("purpose" = crate::consent::PurposeName, Query, description = "One of the five consent purposes"),
        ("after" = Option<String>, Query, pattern = "^[0-9a-fA-F]{120}$", description = "The `next_cursor` of the previous page (opaque; valid only for the same listing)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 5000, description = "Page size, 1 to 5000 (default 500)"),
    ),
    responses(
        (status = 200, description = "One page; the export is written to the access log", body = AudiencePage),
        (status = 400, description = "An unknown query parameter, purpose, limit or cursor (named in `errors`), or a malformed query string"),
        (status = 500, description = "The server failed"),
        (status = 503, description = "The database or the access log is unavailable"),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn audience(
    State(state): State<AppState>,
    _caller: Caller,
    peer: Option<axum::Extension<Peer>>,
    method: http::Method,
    route: MatchedPath,
    params: super::Params,
) -> Response {
    let bad = |field: String, code: &'static str, message: &'static str| {
        Problem::bad_request("invalid-query", "The query parameters are invalid")
            .with_errors(vec![FieldError::new(field, code, message)])
            .into_response()
    };
    if let Some(name) = params.unknown(&["purpose", "after", "limit"]) {
        return bad(
            name,
            "unknown_parameter",
            "Only purpose, after and limit are accepted",
        );
    }
    let query = &params.0;
    let Some(given) = query.get("purpose") else {
        return bad(
            "purpose".into(),
            "required",
            "purpose is required: one of the five consent purposes",
        );
    };
    let Some(purpose) = Purposes::NAMES
        .iter()
        .find(|n| **n == given.as_str())
        .copied()
    else {
        return bad(
            "purpose".into(),
            "unknown_purpose",
            "purpose is one of the five consent purposes",
        );
    };
    let listing = format!("audience:{purpose}");
    let keyring = state.keyring.current();
    let after = match query.get("after") {
        None => None,
        Some(c) => match super::cursor::decode_subject(&keyring, &listing, c) {
            Some(subject) => Some(subject),
            None => {
                return bad(
                    "after".into(),
                    "invalid",
                    "after must be a cursor returned by this endpoint",
                );
            }
        },
    };
    let limit = match query.get("limit").map(|v| v.parse::<u32>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return bad(
                "limit".into(),
                "out_of_range",
                "limit is a whole number from 1 to 5000",
            );
        }
    };
    let page = match state
        .marketing
        .audience(state.store.as_ref(), purpose, after, limit)
        .await
    {
        Ok(p) => p,
        Err(error) => return store_problem(&error),
    };
    // Before the access is logged as answered 200.
    let next_cursor = match page.next {
        None => None,
        Some(subject) => match super::cursor::encode_subject(&keyring, &listing, &subject) {
            Some(cursor) => Some(cursor),
            None => return Problem::internal().into_response(),
        },
    };
    if let Err(withheld) = super::record_access(
        &state,
        peer.as_deref(),
        method.as_str(),
        &route,
        [
            format!("audience:{purpose}"),
            format!("subjects:{}", page.emails.len()),
        ]
        .into_iter()
        .chain(page.order_ids.iter().cloned())
        .collect(),
        200,
    )
    .await
    {
        return withheld;
    }
    axum::Json(AudiencePage {
        purpose,
        emails: &page.emails,
        next_cursor,
    })
    .into_response()
}
