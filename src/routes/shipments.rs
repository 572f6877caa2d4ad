//! `GET /v1/shipments` and `POST /v1/shipments/{order_id}/dispatch`
//! (fulfillment). Every list of personal data is written to the access log,
//! naming each order returned, before the response leaves.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use crate::domain::text::Plain;
use crate::http::{FieldError, Problem};
use crate::server::identity::{Caller, Peer};
use crate::store::rows::{Dispatch, DispatchOutcome, ShipmentStatus};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// Opaque page cursor: the last order's sequence number, hex.
pub(super) fn encode_cursor(seq: i64) -> String {
    crate::hex::encode(&seq.to_be_bytes())
}

pub(super) fn decode_cursor(s: &str) -> Option<i64> {
    let bytes: [u8; 8] = crate::hex::decode(s)?.try_into().ok()?;
    let seq = i64::from_be_bytes(bytes);
    (seq >= 0).then_some(seq)
}

fn bad_query(field: &'static str, code: &'static str, message: &'static str) -> Response {
    Problem::bad_request("invalid-query", "The query parameters are invalid")
        .with_errors(vec![FieldError::new(field, code, message)])
        .into_response()
}

#[tracing::instrument(skip_all)]
pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    peer: Option<axum::Extension<Peer>>,
    route: MatchedPath,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    for key in query.keys() {
        if !matches!(key.as_str(), "status" | "limit" | "after") {
            return bad_query(
                "query",
                "unknown_parameter",
                "Only status, limit and after are accepted",
            );
        }
    }
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
    let after = match query.get("after") {
        None => 0,
        Some(c) => match decode_cursor(c) {
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
    let next = if more {
        rows.last().map(|r| encode_cursor(r.seq))
    } else {
        None
    };
    let mut shipments = Vec::with_capacity(rows.len());
    for row in rows {
        let history = match state.store.consent_history(&row.email_blind_index).await {
            Ok(h) => h,
            Err(error) => return store_problem(&error),
        };
        shipments.push(state.fulfillment.view(row, &history));
    }
    let objects = shipments.iter().map(|s| s.order_id.to_string()).collect();
    if let Err(withheld) =
        super::record_access(&state, peer.as_deref(), "GET", &route, objects, 200).await
    {
        return withheld;
    }
    axum::Json(json!({"shipments": shipments, "next_cursor": next})).into_response()
}

#[tracing::instrument(skip_all)]
pub async fn dispatch(
    State(state): State<AppState>,
    _caller: Caller,
    peer: Option<axum::Extension<Peer>>,
    route: MatchedPath,
    Path(order_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let value = match super::small_json(&headers, &body) {
        Ok(v) => v,
        Err(problem) => return problem.into_response(),
    };
    let Ok(order_id) = Uuid::parse_str(&order_id) else {
        return Problem::not_found().into_response();
    };
    let (carrier, tracking) = match parse_dispatch(value) {
        Ok(pair) => pair,
        Err(problem) => return problem.into_response(),
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
    let (status, body) = match state.store.dispatch(order_id, &new).await {
        Err(error) => return store_problem(&error),
        Ok(DispatchOutcome::NotFound) => return Problem::not_found().into_response(),
        Ok(DispatchOutcome::Dispatched(d)) => (StatusCode::OK, d),
        Ok(DispatchOutcome::AlreadyDispatched(d))
            if d.carrier == wanted.carrier && d.tracking == wanted.tracking =>
        {
            (StatusCode::OK, d)
        }
        Ok(DispatchOutcome::AlreadyDispatched(_)) => {
            return Problem::conflict(
                "already-dispatched",
                "The order was already dispatched with another carrier or tracking number",
            )
            .into_response();
        }
    };
    if let Err(withheld) = super::record_access(
        &state,
        peer.as_deref(),
        "POST",
        &route,
        vec![order_id.to_string()],
        status.as_u16(),
    )
    .await
    {
        return withheld;
    }
    (
        status,
        axum::Json(json!({
            "order_id": order_id,
            "status": "dispatched",
            "carrier": body.carrier,
            "tracking": body.tracking,
            "dispatched_at": body.dispatched_at,
        })),
    )
        .into_response()
}

/// `{carrier, tracking}`: both required, 1–64 characters, nothing else.
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

pub(super) fn store_problem(error: &crate::store::StoreError) -> Response {
    tracing::error!(error = %error, "a database operation failed");
    if error.is_unavailable() {
        Problem::unavailable("The database is unavailable").into_response()
    } else {
        Problem::internal().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("zz"), None);
        assert_eq!(decode_cursor("00"), None);
        assert_eq!(decode_cursor(&encode_cursor(-1)), None);
    }

    #[test]
    fn dispatch_bodies() {
        assert!(parse_dispatch(serde_json::json!({"carrier": "UPS", "tracking": "1Z999"})).is_ok());
        let p = parse_dispatch(serde_json::json!({"carrier": "UPS", "extra": 1})).unwrap_err();
        assert_eq!(p.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let fields: Vec<_> = p.errors().iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"tracking") && fields.contains(&"extra"));
        assert_eq!(
            parse_dispatch(serde_json::json!([1])).unwrap_err().status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
