//! The HTTP surface: every route, who may call it, and the layers around it.
//!
//! `router` is the one place that says which roles may call which route
//! (DESIGN.md "HTTP"). A route behind `allow(&[..], ..)` is reached only by a
//! caller whose verified client certificate names one of those roles: no
//! certificate → 401, a certificate with another or no role → 403, both as
//! problem documents. Handlers take a [`Caller`] and never read certificates.

mod health;
mod orders;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use http::request::Parts;

use crate::http::{Problem, access_log, headers};
use crate::server::identity::{Caller, ClientIdentity, Peer, Role};
use crate::store::Store;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The database; the only way handlers reach storage.
    pub store: Arc<dyn Store>,
    /// Order intake (validation, sealing, idempotency).
    pub intake: Arc<crate::intake::Intake>,
}

/// Builds the service: routes, role guards, fallbacks and the layers every
/// response passes through (access log, security headers, time limit).
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    use Role::*;
    Router::new()
        // Public: no certificate needed.
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/unsubscribe", get(not_built).post(not_built))
        .route("/openapi.json", get(not_built))
        // Storefront.
        .route("/v1/orders", allow(&[Storefront], post(orders::create)))
        .route(
            "/v1/orders/{id}",
            allow(&[Storefront], get(orders::summary)),
        )
        .route("/v1/consent/opt-out", allow(&[Storefront], post(not_built)))
        // Fulfillment.
        .route("/v1/shipments", allow(&[Fulfillment], get(not_built)))
        .route(
            "/v1/shipments/{order_id}/dispatch",
            allow(&[Fulfillment], post(not_built)),
        )
        // Marketing.
        .route(
            "/v1/marketing/audience",
            allow(&[Marketing], get(not_built)),
        )
        // Auditor.
        .route("/v1/audit/report", allow(&[Auditor], get(not_built)))
        .route("/v1/audit/orders/{id}", allow(&[Auditor], get(not_built)))
        .route("/v1/audit/log", allow(&[Auditor], get(not_built)))
        .route("/metrics", allow(&[Auditor], get(not_built)))
        .fallback(|| async { Problem::not_found() })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            headers::request_timeout(request_timeout, req, next)
        }))
        .layer(middleware::from_fn(headers::security_headers))
        .layer(middleware::from_fn(access_log::log_request))
        .with_state(state)
}

/// Puts a role guard in front of a route.
fn allow(roles: &'static [Role], route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.route_layer(middleware::from_fn(move |req: Request, next: Next| {
        require_role(roles, req, next)
    }))
}

/// The role guard: admits a caller whose certificate names one of `roles`
/// and hands the handler a [`Caller`].
async fn require_role(roles: &'static [Role], mut req: Request, next: Next) -> Response {
    let identity = req.extensions().get::<Peer>().map(|p| p.identity.clone());
    let caller = match identity {
        None | Some(ClientIdentity::Anonymous) => {
            return Problem::unauthenticated().into_response();
        }
        Some(ClientIdentity::Certified {
            role: Some(role),
            fingerprint,
        }) if roles.contains(&role) => Caller { role, fingerprint },
        Some(ClientIdentity::Certified { .. }) => return Problem::forbidden().into_response(),
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    /// Only the role guard inserts a `Caller`; a handler mounted without a
    /// guard therefore rejects every request rather than trusting anyone.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .copied()
            .ok_or_else(Problem::unauthenticated)
    }
}

/// Endpoints of the contract that later issues build: correct role checks,
/// then 501.
async fn not_built() -> Problem {
    Problem::not_implemented()
}
