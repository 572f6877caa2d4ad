//! Liveness and readiness; no certificate needed, no data returned.
//!
//! Readiness pings the database at most once a second, one ping at a time,
//! and shares the answer, so a flood of anonymous `/readyz` calls (which the
//! anonymous in-flight cap leaves out, as a load balancer's probes) cannot
//! crowd order commits out of the connection pool or pile up behind a slow
//! database.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::http::Problem;

/// How long one database ping answers readiness for.
const READINESS_TTL: Duration = Duration::from_secs(1);

/// The last readiness answer and when it was found.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, bool)>>,
    /// Held by the one request pinging the database.
    pinging: tokio::sync::Mutex<()>,
}

impl Readiness {
    /// The last answer, if `fresh` says it still counts.
    fn last(&self, fresh: impl Fn(Instant) -> bool) -> Option<bool> {
        self.last
            .lock()
            .ok()
            .and_then(|last| *last)
            .filter(|(at, _)| fresh(*at))
            .map(|(_, ready)| ready)
    }
}

/// A health answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (liveness) or `ready` (readiness).
    #[schema(value_type = String, example = "ok")]
    pub status: &'static str,
}

/// The process is up and serving TLS.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    responses((status = 200, description = "Alive", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The process can reach its database.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready: the database answered", body = Health),
        (status = 503, description = "The database is not reachable, or an order commit outlived its time limit and has not returned"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = &state.readiness;
    let fresh = |at: Instant| at.elapsed() < READINESS_TTL;
    let ready = match readiness.last(fresh) {
        Some(ready) => ready,
        None => 'ping: {
            // One ping at a time: while it runs, the others answer the last
            // result however old (or, before the first, wait for it).
            let _pinging = match readiness.pinging.try_lock() {
                Ok(guard) => guard,
                Err(_) => {
                    if let Some(ready) = readiness.last(|_| true) {
                        break 'ping ready;
                    }
                    let guard = readiness.pinging.lock().await;
                    if let Some(ready) = readiness.last(fresh) {
                        break 'ping ready;
                    }
                    guard
                }
            };
            let ready = match state.store.ping().await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(error = %error, "readiness check failed");
                    false
                }
            };
            if let Ok(mut last) = readiness.last.lock() {
                *last = Some((Instant::now(), ready));
            }
            ready
        }
    };
    if !ready {
        return Problem::unavailable("The database is not reachable").into_response();
    }
    // A commit that outlived its limit holds the order writer: orders
    // queue behind it and get 503s, whatever a ping says.
    if state.intake.commit_stalled() {
        return Problem::unavailable("An order commit has not returned").into_response();
    }
    Json(Health { status: "ready" }).into_response()
}
