//! Auditor endpoints. `GET /v1/audit/log` returns access-log entries with
//! their chain hashes and MACs; reading the log is itself logged.

use std::collections::HashMap;

use axum::extract::{MatchedPath, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::shipments::store_problem;
use crate::hex;
use crate::http::{FieldError, Problem};
use crate::server::identity::{Caller, Peer};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

#[tracing::instrument(skip_all)]
pub async fn log(
    State(state): State<AppState>,
    _caller: Caller,
    peer: Option<axum::Extension<Peer>>,
    route: MatchedPath,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let bad = |field: &'static str, message: &'static str| {
        Problem::bad_request("invalid-query", "The query parameters are invalid")
            .with_errors(vec![FieldError::new(field, "invalid", message)])
            .into_response()
    };
    if query.keys().any(|k| k != "after" && k != "limit") {
        return bad("query", "Only after and limit are accepted");
    }
    let after = match query.get("after").map(|v| v.parse::<u64>()) {
        None => 0,
        Some(Ok(n)) if n <= i64::MAX as u64 => n,
        Some(_) => return bad("after", "after is a sequence number (0 or more)"),
    };
    let limit = match query.get("limit").map(|v| v.parse::<u32>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => return bad("limit", "limit is a whole number from 1 to 1000"),
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
    let entries: Vec<_> = page
        .into_iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "at": e.entry.at,
                "role": e.entry.role,
                "cert_fingerprint": e.entry.cert_fingerprint,
                "origin_ip": e.entry.origin_ip,
                "action": e.entry.action,
                "objects": e.entry.objects,
                "outcome": e.entry.outcome,
                "status": e.entry.status,
                "prev_hash": hex::encode(&e.prev_hash),
                "hash": hex::encode(&e.hash),
                "mac": hex::encode(&e.mac),
            })
        })
        .collect();
    if let Err(withheld) =
        super::record_access(&state, peer.as_deref(), "GET", &route, range, 200).await
    {
        return withheld;
    }
    axum::Json(json!({
        "entries": entries,
        "next_after": next_after,
        "head": head.map(|h| json!({"seq": h.seq, "hash": hex::encode(&h.hash)})),
    }))
    .into_response()
}

/// The signed verification report.
#[tracing::instrument(skip_all)]
pub async fn report(
    State(state): State<AppState>,
    _caller: Caller,
    peer: Option<axum::Extension<Peer>>,
    route: MatchedPath,
) -> Response {
    // Wait for the run up to 2/3 of the request budget, then answer 202.
    let wait = state.request_timeout.mul_f32(2.0 / 3.0);
    let outcome = state
        .report_job
        .latest_or_start(state.store.clone(), state.keyring.current(), wait)
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
                axum::Json(json!({"status": "generating", "detail": "The report is being generated; ask again shortly"})),
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
        "GET",
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
pub async fn public_key(State(state): State<AppState>, _caller: Caller) -> Response {
    match crate::audit::report::public_key(&state.keyring.current()) {
        Ok(k) => axum::Json(k).into_response(),
        Err(_) => Problem::internal().into_response(),
    }
}

/// Encryption metadata, consent tags and verdicts for one order.
#[tracing::instrument(skip_all)]
pub async fn order(
    State(state): State<AppState>,
    _caller: Caller,
    peer: Option<axum::Extension<Peer>>,
    route: MatchedPath,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        return Problem::not_found().into_response();
    };
    let id = id.to_string();
    match crate::audit::verify::order(state.store.as_ref(), &state.keyring.current(), &id).await {
        Ok(Some(audit)) => {
            if let Err(r) =
                super::record_access(&state, peer.as_deref(), "GET", &route, vec![id], 200).await
            {
                return r;
            }
            axum::Json(audit).into_response()
        }
        Ok(None) => Problem::not_found().into_response(),
        Err(error) => store_problem(&error),
    }
}
