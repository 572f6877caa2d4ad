//! `GET /v1/shipments` and `POST /v1/shipments/{order_id}/dispatch`
//! (fulfillment). Every list of personal data is written to the access log,
//! naming each order returned, before the response leaves.

use super::store_problem;
use axum::body::Bytes;
use axum::extract::{MatchedPath, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use uuid::Uuid;

use super::AppState;
use crate::domain::text::Plain;
use crate::fulfillment::CustomerConsent;
use crate::http::{FieldError, Problem};
use crate::server::identity::{Caller, Peer};
use crate::store::rows::{
    ConsentHistory, Dispatch, DispatchOutcome, OrderCheck, ShipToRow, ShipmentEntry, ShipmentStatus,
};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

fn bad_query(field: &str, code: &'static str, message: &'static str) -> Response {
    Problem::bad_request("invalid-query", "The query parameters are invalid")
        .with_errors(vec![FieldError::new(field, code, message)])
        .into_response()
}

/// Which shipments `GET /v1/shipments` lists (its `status` parameter).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // Describes the parameter `list` reads.
pub enum StatusFilter {
    Pending,
    Dispatched,
}

/// One page of shipping records.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ShipmentPage {
    pub shipments: Vec<crate::fulfillment::Shipment>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Shipping records, oldest first, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/shipments",
    operation_id = "listShipments",
    params(
        ("status" = Option<StatusFilter>, Query, description = "`pending` (default: accepted, not yet dispatched) or `dispatched`. Both are in the order the orders were taken. The pending listing is a feed: a new order always comes after every cursor. The dispatched listing is not: an older order dispatched while you page through it lands behind your cursor, so re-read it from the start to reconcile."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size, 1 to 500 (default 50)"),
        ("after" = Option<String>, Query, pattern = "^[0-9a-fA-F]{72}$", description = "The `next_cursor` of the previous page (opaque; valid only for the same listing)"),
    ),
    responses(
        (status = 200, description = "One page; every order returned is written to the access log", body = ShipmentPage),
        (status = 400, description = "An unknown query parameter, a bad status, limit or cursor (named in `errors`), or a malformed query string"),
        (status = 500, description = "The server failed"),
        (status = 503, description = "The database or the access log is unavailable; nothing was disclosed"),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    peer: Option<axum::Extension<Peer>>,
    method: http::Method,
    route: MatchedPath,
    params: super::Params,
) -> Response {
    if let Some(name) = params.unknown(&["status", "limit", "after"]) {
        return bad_query(
            &name,
            "unknown_parameter",
            "Only status, limit and after are accepted",
        );
    }
    let query = &params.0;
    let status = match query.get("status").map(String::as_str) {
        None | Some("pending") => ShipmentStatus::Pending,
        Some("dispatched") => ShipmentStatus::Dispatched,
        Some(_) => return bad_query("status", "invalid", "status is pending or dispatched"),
    };
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return bad_query(
                    "limit",
                    "out_of_range",
                    "limit is a whole number from 1 to 500",
                );
            }
        },
    };
    let listing = match status {
        ShipmentStatus::Pending => "shipments:pending",
        ShipmentStatus::Dispatched => "shipments:dispatched",
    };
    let keyring = state.keyring.current();
    let after = match query.get("after") {
        None => 0,
        Some(c) => match super::cursor::decode(&keyring, listing, c) {
            Some(seq) => seq,
            None => {
                return bad_query(
                    "after",
                    "invalid",
                    "after must be a cursor returned by this endpoint",
                );
            }
        },
    };
    // One extra row tells whether there is a next page.
    let mut rows = match state.store.shipments(status, after, limit + 1).await {
        Ok(rows) => rows,
        Err(error) => return store_problem(&error),
    };
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = match rows.last() {
        Some(last) if more => match super::cursor::encode(&keyring, listing, last.seq()) {
            Some(cursor) => Some(cursor),
            None => return Problem::internal().into_response(),
        },
        _ => None,
    };
    // Only an order whose ship-to record or billing record (which finds
    // the customer's consent) is gone needs its purges (were they purged,
    // or deleted?): read for the whole page at once.
    let missing: Vec<String> = rows
        .iter()
        .filter_map(|entry| match entry {
            ShipmentEntry::Whole(row)
                if matches!(row.ship_to, ShipToRow::Missing { .. })
                    || row.email_blind_index.is_none() =>
            {
                Some(row.order_id.to_string())
            }
            _ => None,
        })
        .collect();
    let purges = if missing.is_empty() {
        Vec::new()
    } else {
        match state.store.purges_of(&missing).await {
            Ok(p) => p,
            Err(error) => return store_problem(&error),
        }
    };
    // Each customer's consent history read and verified once per page,
    // however many of the page's orders are theirs.
    let mut customers: std::collections::HashMap<Vec<u8>, CustomerConsent> =
        std::collections::HashMap::new();
    let no_history = state
        .fulfillment
        .customer_consent(&ConsentHistory::default());
    let mut shipments = Vec::with_capacity(rows.len());
    for entry in rows {
        match entry {
            ShipmentEntry::Whole(row) => {
                if let Some(subject) = &row.email_blind_index
                    && !customers.contains_key(subject)
                {
                    match state.store.consent_history(subject).await {
                        Ok(h) => customers
                            .insert(subject.clone(), state.fulfillment.customer_consent(&h)),
                        Err(error) => return store_problem(&error),
                    };
                }
                let consent = row
                    .email_blind_index
                    .as_ref()
                    .and_then(|subject| customers.get(subject))
                    .unwrap_or(&no_history);
                shipments.push(state.fulfillment.view(*row, consent, &purges));
            }
            ShipmentEntry::Damaged {
                order_id: Some(order_id),
                created_at,
                status,
                what,
                ..
            } => {
                tracing::error!(%order_id, what, "an order's shipment row does not read; shown as an integrity error");
                shipments.push(state.fulfillment.damaged(order_id, created_at, &status));
            }
            ShipmentEntry::Damaged {
                order_id: None,
                seq,
                what,
                ..
            } => {
                tracing::error!(
                    seq,
                    what,
                    "a shipment row without a readable order id was left out"
                );
            }
        }
    }
    let objects = shipments.iter().map(|s| s.order_id.to_string()).collect();
    if let Err(withheld) = super::record_access(
        &state,
        peer.as_deref(),
        method.as_str(),
        &route,
        objects,
        200,
    )
    .await
    {
        return withheld;
    }
    axum::Json(ShipmentPage {
        shipments,
        next_cursor: next,
    })
    .into_response()
}

/// The body of a dispatch: both members required, nothing else
/// (checked by [`parse_dispatch`]; a test proves they agree).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Describes the body; `parse_dispatch` reads it.
pub struct DispatchRequest {
    /// 1 to 64 characters, no control characters; stored in clear, so
    /// never a card number (`looks_like_card_number`) or an email address
    /// (`looks_like_email`).
    #[schema(min_length = 1, max_length = 64, example = "UPS")]
    carrier: String,
    /// 1 to 64 characters, no control characters; stored in clear, so
    /// never a card number (`looks_like_card_number`) or an email address
    /// (`looks_like_email`).
    #[schema(min_length = 1, max_length = 64, example = "1Z999AA10123456784")]
    tracking: String,
}

/// The answer to a dispatch.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Dispatched<'a> {
    pub order_id: Uuid,
    /// Always `dispatched`.
    #[schema(value_type = String, example = "dispatched")]
    pub status: &'a str,
    #[schema(value_type = String)]
    pub carrier: &'a str,
    #[schema(value_type = String)]
    pub tracking: &'a str,
    /// RFC 3339; the first dispatch's time when repeated.
    #[schema(value_type = String)]
    pub dispatched_at: &'a str,
}

/// Marks an order dispatched. Repeating it with the same carrier and
/// tracking number answers the same again; with others, 409.
#[utoipa::path(
    post,
    path = "/v1/shipments/{order_id}/dispatch",
    operation_id = "dispatchShipment",
    params(("order_id" = String, Path, description = "The order id (a UUID)")),
    request_body(content((DispatchRequest = "application/json")), description = "At most 4 KiB"),
    responses(
        (status = 200, description = "Dispatched (now or before, with the same carrier and tracking)", body = Dispatched),
        (status = 400, description = "The body is not valid JSON (or repeats a member), or `Content-Type` was sent more than once (named in `errors`)"),
        (status = 404, description = "No such order (also for an id that is not a UUID)"),
        (status = 409, description = "Already dispatched with another carrier or tracking number (`already-dispatched`), the order's shipping details were purged (`ship-to-purged`), or its stored row fails its integrity check (`order-integrity`: edited in the database; tell the operator)"),
        (status = 413, description = "The body is larger than 4 KiB"),
        (status = 415, description = "Not `application/json` (`Content-Type` named in `errors`)"),
        (status = 422, description = "The dispatch has errors (listed in `errors`)"),
        (status = 500, description = "The server failed"),
        (status = 503, description = "The database or the access log is unavailable"),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn dispatch(
    State(state): State<AppState>,
    _caller: Caller,
    peer: Option<axum::Extension<Peer>>,
    route: MatchedPath,
    super::IdSegment(order_id): super::IdSegment,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let value = match super::small_json(&headers, &body) {
        Ok(v) => v,
        Err(problem) => return problem.into_response(),
    };
    let Some(order_id) = order_id else {
        return Problem::not_found().into_response();
    };
    let (carrier, tracking) = match parse_dispatch(value) {
        Ok(pair) => pair,
        Err(problem) => return problem.into_response(),
    };
    // A dispatch refused (no such order, or 409) is written to the access
    // log like every denied request (invariant 8), naming the order: a
    // second tracking number for a shipped order is worth an auditor's
    // look.
    let refused = |problem: Problem| {
        let state = state.clone();
        let peer = peer.clone();
        let action = format!("POST {}", route.as_str());
        async move {
            super::record_refusal(
                &state,
                peer.as_deref(),
                action,
                super::loggable_id(order_id).into_iter().collect(),
                problem.status(),
            )
            .await;
            problem.into_response()
        }
    };
    // An order whose row was edited in the database (items, gift flag, a
    // dispatch undone) is not shipped on the strength of that row.
    let check = match state.store.order_check(order_id).await {
        Ok(Some(check)) => Some(check),
        Ok(None) => return refused(Problem::not_found()).await,
        // A column that no longer reads (edited in the database): the row
        // fails its check like one whose MAC does not verify.
        Err(error) if error.is_unreadable_row() => {
            tracing::error!(order_id = %order_id, error = %error, "an order row does not read");
            None
        }
        Err(error) => return store_problem(&error),
    };
    let Some(check) = check.filter(|check| row_verifies(&state, order_id, check)) else {
        return refused(integrity_conflict(order_id)).await;
    };
    let wanted = Dispatch {
        carrier,
        tracking,
        dispatched_at: crate::ids::now(),
    };
    let mac = state.keyring.current().consent_tag_key().sign(&[
        &crate::intake::seal::dispatch_canonical_bytes(
            &order_id.to_string(),
            &wanted.carrier,
            &wanted.tracking,
            &wanted.dispatched_at,
        ),
    ]);
    let new = crate::store::rows::NewDispatch {
        dispatch: wanted.clone(),
        mac,
    };
    // The dispatch and its access-log entry run in a task of their own:
    // a request dropped meanwhile (its time limit, a stream reset, the
    // drain) must not leave a committed dispatch without its entry — the
    // audit names every dispatched order that has none.
    let committed = {
        let state = state.clone();
        let peer = peer.clone();
        let route = route.clone();
        tokio::spawn(async move {
            let outcome = state
                .store
                .dispatch(order_id, &check, &new)
                .await
                .map(|outcome| believed_dispatch(&state, order_id, outcome));
            let shipped = match &outcome {
                Ok(DispatchOutcome::Dispatched(_)) => true,
                Ok(DispatchOutcome::AlreadyDispatched(now)) => {
                    now.dispatch.as_ref().is_some_and(|d| {
                        d.carrier == new.dispatch.carrier && d.tracking == new.dispatch.tracking
                    })
                }
                _ => false,
            };
            let logged = if shipped {
                // Never older than the dispatch it records (what the
                // database holds: a repeat answers with the first's time).
                let dispatched_at = match &outcome {
                    Ok(DispatchOutcome::Dispatched(d)) => Some(d.dispatched_at.clone()),
                    Ok(DispatchOutcome::AlreadyDispatched(now)) => {
                        now.dispatch.as_ref().map(|d| d.dispatched_at.clone())
                    }
                    _ => None,
                };
                Some(
                    super::record_access_after(
                        &state,
                        peer.as_deref(),
                        "POST",
                        &route,
                        vec![order_id.to_string()],
                        StatusCode::OK.as_u16(),
                        dispatched_at.as_deref(),
                    )
                    .await,
                )
            } else {
                None
            };
            (outcome, logged)
        })
        .await
    };
    let (outcome, logged) = match committed {
        Ok(done) => done,
        Err(_) => return Problem::internal().into_response(),
    };
    if let Some(Err(withheld)) = logged {
        return withheld;
    }
    let (status, body) = match outcome {
        Err(error) => return store_problem(&error),
        Ok(DispatchOutcome::NotFound) => return refused(Problem::not_found()).await,
        Ok(DispatchOutcome::Changed) => return refused(integrity_conflict(order_id)).await,
        Ok(DispatchOutcome::Dispatched(d)) => (StatusCode::OK, d),
        Ok(DispatchOutcome::AlreadyDispatched(now)) => match now.dispatch {
            Some(d) if d.carrier == wanted.carrier && d.tracking == wanted.tracking => {
                (StatusCode::OK, d)
            }
            _ => {
                return refused(Problem::conflict(
                    "already-dispatched",
                    "The order was already dispatched with another carrier or tracking number",
                ))
                .await;
            }
        },
        Ok(DispatchOutcome::NoShipTo) => {
            return refused(Problem::conflict(
                "ship-to-purged",
                "The order's shipping details were purged (or are missing): it cannot be dispatched",
            ))
            .await;
        }
    };
    (
        status,
        axum::Json(Dispatched {
            order_id,
            status: "dispatched",
            carrier: &body.carrier,
            tracking: &body.tracking,
            dispatched_at: &body.dispatched_at,
        }),
    )
        .into_response()
}

/// Whether an order's row as read passes its integrity check: its MAC
/// over the columns as stored, and dispatch facts that agree with its
/// status (`intake::seal::order_row_verifies`).
fn row_verifies(state: &AppState, order_id: Uuid, check: &OrderCheck) -> bool {
    crate::intake::seal::order_row_verifies(
        state.keyring.current().consent_tag_key(),
        &order_id.to_string(),
        &check.created_at,
        &check.status,
        &check.seal,
        check.dispatch.as_ref(),
    )
}

/// A dispatch's outcome as the route believes it: the facts of an earlier
/// dispatch (read from the row after the update wrote nothing) only from a
/// row that passes its integrity check; any other such row changed.
pub fn believed_dispatch(
    state: &AppState,
    order_id: Uuid,
    outcome: DispatchOutcome,
) -> DispatchOutcome {
    match outcome {
        DispatchOutcome::AlreadyDispatched(now) if !row_verifies(state, order_id, &now) => {
            DispatchOutcome::Changed
        }
        other => other,
    }
}

/// 409 `order-integrity`: the order's row was edited in the database; it is
/// neither shipped nor described from that row.
fn integrity_conflict(order_id: Uuid) -> Problem {
    tracing::error!(order_id = %order_id, "an order row failed its integrity check: not dispatched");
    Problem::conflict(
        "order-integrity",
        "The order's stored row failed its integrity check: it cannot be dispatched",
    )
}

/// `{carrier, tracking}`: both required, 1–64 characters, neither a card
/// number nor an email address, nothing else.
fn parse_dispatch(value: Value) -> Result<(String, String), Problem> {
    let Value::Object(mut map) = value else {
        return Err(
            Problem::unprocessable("invalid-dispatch", "The dispatch must be an object")
                .with_errors(vec![FieldError::new(
                    "",
                    "invalid_type",
                    "Expected an object",
                )]),
        );
    };
    let mut errors = Vec::new();
    let mut take = |name: &'static str| match map.remove(name) {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(name, "required", "This field is required"));
            None
        }
        // The length first: the detectors below read a text more than once.
        Some(Value::String(s)) if s.trim().chars().count() > 64 => {
            errors.push(FieldError::new(
                name,
                "invalid",
                "1 to 64 characters, no control characters",
            ));
            None
        }
        // Stored in clear: never a card number or an email address (the
        // audit scans these columns with the same rules).
        Some(Value::String(s)) if crate::domain::detect::dispatch_fact_holds_card(&s) => {
            errors.push(FieldError::new(
                name,
                "looks_like_card_number",
                "This field is stored in clear and must not hold a card number",
            ));
            None
        }
        Some(Value::String(s)) if crate::domain::detect::contains_email(&s) => {
            errors.push(FieldError::new(
                name,
                "looks_like_email",
                "This field is stored in clear and must not hold an email address",
            ));
            None
        }
        Some(Value::String(s)) => match Plain::parse(&s, 64) {
            Ok(p) => Some(p.as_str().to_owned()),
            Err(_) => {
                errors.push(FieldError::new(
                    name,
                    "invalid",
                    "1 to 64 characters, no control characters",
                ));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new(name, "invalid_type", "Expected a string"));
            None
        }
    };
    let carrier = take("carrier");
    let tracking = take("tracking");
    for key in map.keys() {
        errors.push(FieldError::new(
            crate::domain::order::shown_field_name(key),
            "unknown_field",
            "This field is not part of a dispatch",
        ));
    }
    match (carrier, tracking) {
        (Some(c), Some(t)) if errors.is_empty() => Ok((c, t)),
        _ => Err(
            Problem::unprocessable("invalid-dispatch", "The dispatch has errors")
                .with_errors(errors),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema's members are exactly what `parse_dispatch` reads, all
    /// required, and its example is accepted.
    #[test]
    fn dispatch_schema_agrees_with_the_parser() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(DispatchRequest::schema()).unwrap();
        let mut sample = serde_json::Map::new();
        for (name, member) in schema["properties"].as_object().unwrap() {
            sample.insert(name.clone(), member["example"].clone());
        }
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(required.len(), sample.len());
        assert!(parse_dispatch(Value::Object(sample.clone())).is_ok());
        for name in required {
            let mut partial = sample.clone();
            partial.remove(name);
            let p = parse_dispatch(Value::Object(partial)).unwrap_err();
            assert!(
                p.errors()
                    .iter()
                    .any(|e| e.field == name && e.code == "required")
            );
        }
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    }

    #[test]
    fn dispatch_bodies() {
        assert!(parse_dispatch(serde_json::json!({"carrier": "UPS", "tracking": "1Z999"})).is_ok());
        let p = parse_dispatch(serde_json::json!({"carrier": "UPS", "extra": 1})).unwrap_err();
        assert_eq!(p.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let fields: Vec<_> = p.errors().iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"tracking") && fields.contains(&"extra"));
        // Padded by a fixed-width export: trimmed, then counted.
        let padded = format!("1Z999AA10123456784{}", " ".repeat(70));
        let (_, tracking) =
            parse_dispatch(serde_json::json!({"carrier": "UPS", "tracking": padded})).unwrap();
        assert_eq!(tracking, "1Z999AA10123456784");
        let long = "1".repeat(65);
        assert!(parse_dispatch(serde_json::json!({"carrier": "UPS", "tracking": long})).is_err());
    }

    /// Carrier and tracking are stored in clear: a card number of a known
    /// brand or an email address in either is refused, naming the field; a
    /// long tracking number that merely passes Luhn is not.
    #[test]
    fn dispatch_facts_refuse_card_numbers_and_emails() {
        let codes = |v| match parse_dispatch(v) {
            Ok(_) => Vec::new(),
            Err(p) => p
                .errors()
                .iter()
                .map(|e| (e.field.clone(), e.code))
                .collect::<Vec<_>>(),
        };
        let got = codes(
            serde_json::json!({"carrier": "ada@example.com", "tracking": "4012 8888 8888 1881"}),
        );
        assert!(
            got.contains(&("carrier".into(), "looks_like_email")),
            "{got:?}"
        );
        assert!(
            got.contains(&("tracking".into(), "looks_like_card_number")),
            "{got:?}"
        );
        let got = codes(serde_json::json!({"carrier": "FedEx", "tracking": "961234567890126"}));
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(
            parse_dispatch(serde_json::json!([1])).unwrap_err().status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
