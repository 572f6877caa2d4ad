//! The HTTP surface: every route, who may call it, and the layers around it.
//!
//! `router` is the one place that says which roles may call which route
//! (DESIGN.md "HTTP"). A route behind `allow(&[..], ..)` is reached only by a
//! caller whose verified client certificate names one of those roles: no
//! certificate → 401, a certificate with another or no role → 403, both as
//! problem documents. Handlers take a [`Caller`] and never read certificates.

mod audit;
mod consent;
mod cursor;
pub mod health;
mod marketing;
pub mod openapi;
mod orders;
mod shipments;
pub use shipments::believed_dispatch;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::handler::Handler;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use http::request::Parts;

use crate::audit::access_log::{Entry, Outcome};
use crate::http::{FieldError, Problem};
use crate::server::identity::{Caller, ClientIdentity, Peer, Role};
use crate::store::Store;

/// Shared state of every handler: one `Arc`, because every layer and
/// extractor clones it for every request (one reference count instead of
/// one per service).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services behind [`AppState`].
pub struct Services {
    /// The database; the only way handlers reach storage.
    pub store: Arc<dyn Store>,
    /// Order intake (validation, sealing, idempotency).
    pub intake: Arc<crate::intake::Intake>,
    /// Fulfillment's view: holds the shipping and recipient keys only.
    pub fulfillment: Arc<crate::fulfillment::Fulfillment>,
    /// The hash-chained access log's writer.
    pub access_log: crate::audit::access_log::AccessLog,
    /// The whole keyring, for the audit endpoints only (they open envelopes
    /// to verify them and return verdicts, never plaintext).
    pub keyring: Arc<crate::crypto::keyring::KeyringHandle>,
    /// The consent ledger (opt-outs, effective consent, proof).
    pub ledger: Arc<crate::consent::Ledger>,
    /// Marketing's view: holds the contact key only.
    pub marketing: Arc<crate::consent::audience::Marketing>,
    /// Per-IP limit on the public opt-out page (every post counts, before
    /// its body is read).
    pub unsubscribe_limit: Arc<crate::http::rate_limit::RateLimiter>,
    /// The opt-outs the public page records from all addresses together
    /// (only posts that write a ledger row count: an empty or invalid one
    /// does not use up everybody's budget).
    pub unsubscribe_writes: Arc<crate::http::rate_limit::RateLimiter>,
    /// The opt-outs recorded from one network (an IPv4 /24, an IPv6 /48;
    /// see [`crate::http::rate_limit::network`]): one network's flood of
    /// cheap addresses must not use up the budget of all of them, and
    /// keep every other customer from opting out while it lasts.
    pub unsubscribe_network_writes: Arc<crate::http::rate_limit::RateLimiter>,
    /// Per-IP limit on refusals of the role guard that are written to the
    /// access log one by one (see [`require_role`]).
    pub denial_limit: Arc<crate::http::rate_limit::RateLimiter>,
    /// The background run behind `GET /v1/audit/report`.
    pub report_job: Arc<crate::audit::job::ReportJob>,
    /// The request time limit (long jobs answer 202 before it).
    pub request_timeout: Duration,
    /// Shared readiness answer (see `health`).
    pub readiness: Arc<health::Readiness>,
}

/// An HTTP method a route answers (the API uses two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    Get,
    Post,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
        }
    }
}

/// One row of the route table: method, path template, who may call it, and
/// the handler. The router is built from this table alone, and the OpenAPI
/// description takes each operation's roles from it (a test proves the two
/// list the same operations), so a route cannot be served undocumented.
pub struct Route {
    pub verb: Verb,
    pub path: &'static str,
    /// The roles admitted; empty means public (no certificate needed).
    pub roles: &'static [Role],
    handler: MethodRouter<AppState>,
}

impl Route {
    fn new<H, T>(verb: Verb, path: &'static str, roles: &'static [Role], handler: H) -> Route
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        Route {
            verb,
            path,
            roles,
            handler: on(verb.filter(), handler),
        }
    }

    /// Caps the body this route reads while reading it (413 beyond).
    fn body_limit(mut self, bytes: usize) -> Route {
        self.handler = self.handler.layer(DefaultBodyLimit::max(bytes));
        self
    }
}

/// Every route the service answers (DESIGN.md "HTTP").
pub fn routes() -> Vec<Route> {
    use Role::*;
    use Verb::*;
    const PUBLIC: &[Role] = &[];
    vec![
        // Public: no certificate needed.
        Route::new(Get, "/healthz", PUBLIC, health::healthz),
        Route::new(Get, "/readyz", PUBLIC, health::readyz),
        Route::new(Get, "/unsubscribe", PUBLIC, consent::unsubscribe_page),
        Route::new(Post, "/unsubscribe", PUBLIC, consent::unsubscribe),
        Route::new(Get, "/openapi.json", PUBLIC, openapi::serve),
        // Storefront.
        Route::new(Post, "/v1/orders", &[Storefront], orders::create),
        Route::new(Get, "/v1/orders/{id}", &[Storefront], orders::summary),
        Route::new(Post, "/v1/consent/opt-out", &[Storefront], consent::opt_out)
            .body_limit(SMALL_BODY),
        // Fulfillment.
        Route::new(Get, "/v1/shipments", &[Fulfillment], shipments::list),
        Route::new(
            Post,
            crate::fulfillment::DISPATCH_PATH,
            &[Fulfillment],
            shipments::dispatch,
        )
        .body_limit(SMALL_BODY),
        // Marketing.
        Route::new(
            Get,
            "/v1/marketing/audience",
            &[Marketing],
            marketing::audience,
        ),
        // Auditor.
        Route::new(Get, "/v1/audit/report", &[Auditor], audit::report),
        Route::new(Get, "/v1/audit/public-key", &[Auditor], audit::public_key),
        Route::new(Get, "/v1/audit/orders/{id}", &[Auditor], audit::order),
        Route::new(Get, "/v1/audit/log", &[Auditor], audit::log),
        Route::new(
            Post,
            "/v1/audit/consent",
            &[Auditor],
            consent::proof_by_body,
        )
        .body_limit(SMALL_BODY),
        #[allow(deprecated)] // Kept for existing clients (see the handler).
        Route::new(Get, "/v1/audit/consent", &[Auditor], consent::proof),
        Route::new(Get, "/metrics", &[Auditor], metrics),
    ]
}

/// Builds the service: routes, role guards, fallbacks and the layers every
/// response passes through (access log, security headers, time limit).
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    router_with(state, request_timeout, Router::new())
}

/// [`router`] with `extra` routes behind the same fallbacks and layers
/// (tests add slow or panicking routes this way).
#[doc(hidden)]
pub fn router_with(state: AppState, request_timeout: Duration, extra: Router<AppState>) -> Router {
    let mut router = Router::new();
    for route in routes() {
        let roles = route.roles;
        let handler = if roles.is_empty() {
            route.handler
        } else {
            route.handler.route_layer(middleware::from_fn_with_state(
                state.clone(),
                move |State(s): State<AppState>, req: Request, next: Next| {
                    require_role(s, roles, req, next)
                },
            ))
        };
        // Two rows with one path (GET and POST /unsubscribe) merge.
        router = router.route(route.path, handler);
    }
    router
        .merge(extra)
        .fallback(|| async { Problem::not_found() })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        // A panicking handler (a bug) answers a 500 problem and the
        // connection lives on; the panic hook logged it without its message.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_payload: Box<dyn std::any::Any + Send>| Problem::panicked().into_response(),
        ))
        // Framing, header size and the in-flight cap, before any handler;
        // time limit, problem fallback, security headers, access log.
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            crate::http::envelope(request_timeout, req, next)
        }))
        .with_state(state)
}

/// The role guard: admits a caller whose certificate names one of `roles`
/// and hands the handler a [`Caller`]. A refusal (401/403) is written to the
/// access log before it is answered.
async fn require_role(
    state: AppState,
    roles: &'static [Role],
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req.extensions().get::<Peer>().cloned();
    let refusal = match peer.as_ref().map(|p| &p.identity) {
        None | Some(ClientIdentity::Anonymous) => Problem::unauthenticated(),
        Some(ClientIdentity::Certified {
            role: Some(role),
            fingerprint,
        }) if roles.contains(role) => {
            let caller = Caller {
                role: *role,
                fingerprint: *fingerprint,
            };
            req.extensions_mut().insert(caller);
            return next.run(req).await;
        }
        Some(ClientIdentity::Certified { .. }) => Problem::forbidden(),
    };
    let (mut parts, _) = req.into_parts();
    let objects = path_ids(&mut parts).await;
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or("<unmatched>", MatchedPath::as_str);
    record_refusal(
        &state,
        peer.as_ref(),
        format!("{} {route}", parts.method.as_str()),
        objects,
        refusal.status(),
    )
    .await;
    refusal.into_response()
}

/// The ids a request names in its path (the order of `/v1/orders/{id}`),
/// so that a refusal's log entry says which object was asked for
/// (invariant 8). Only a well-formed UUID, written in its canonical form:
/// anything else in that place is the client's input, never logged. And not
/// even one of those when its hex digits, read as groups a person types,
/// hold a card number: a refused client chooses the id it sends, and
/// `40128888-8888-4000-8000-000000000000` is a well-formed UUID holding
/// Visa's 4012 8888 8888 4000 — the access log is never trimmed. (The ids
/// checkoutd makes are UUIDv7, whose first group is a timestamp starting
/// with `0`: no card number starts a real one.)
async fn path_ids(parts: &mut http::request::Parts) -> Vec<String> {
    use axum::extract::FromRequestParts;
    match axum::extract::RawPathParams::from_request_parts(parts, &()).await {
        Ok(params) => params
            .iter()
            .filter_map(|(_, value)| uuid::Uuid::try_parse(value).ok())
            .filter_map(loggable_id)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A client-named id as the access log may hold it (see [`path_ids`]): in
/// canonical form, unless its hex digits, read as groups a person types,
/// hold a card number.
pub(crate) fn loggable_id(id: uuid::Uuid) -> Option<String> {
    let id = id.to_string();
    (!crate::domain::detect::contains_pan_typed(&id.replace('-', " "))).then_some(id)
}

/// Writes a refusal (outcome `denied`) to the access log before it is
/// answered; a failure is logged and the refusal still answered.
///
/// Each refusal is a synced row of a log that is never trimmed, and a
/// client needs no certificate to be refused: past
/// [`DENIALS_LOGGED_PER_MINUTE`] refusals from one address (or
/// [`DENIALS_LOGGED_PER_MINUTE_IN_ALL`] from all) of callers without a
/// role — no certificate, a certificate naming no role, or one withdrawn
/// (revoked or expired) while its connection drains — they are still
/// answered as they are (401, 403, 429, …) but no longer written one by
/// one: they are counted in `checkoutd_denials_unlogged_total`, and the
/// first of them is a warning in the process log naming the address. A
/// refusal of a role calling outside its row is always written, with the
/// certificate's fingerprint (invariant 8): it names who to revoke, and
/// such a client is one we issued, already bounded by its share of the
/// in-flight cap.
pub(crate) async fn record_refusal(
    state: &AppState,
    peer: Option<&Peer>,
    action: String,
    objects: Vec<String>,
    status: http::StatusCode,
) {
    // Held to the per-address limit: no certificate, or one that names no
    // role we grant (one without a role, or withdrawn — revoked or expired
    // — while its connection drains).
    let limited = peer.is_none_or(|p| {
        matches!(
            p.identity,
            ClientIdentity::Anonymous | ClientIdentity::Certified { role: None, .. }
        )
    });
    if let Some(over) = peer
        .filter(|_| limited)
        .and_then(|p| state.denial_limit.count(p.addr.ip()))
    {
        if over.first {
            tracing::warn!(
                client_ip = %peer.map(|p| p.addr.ip().to_string()).unwrap_or_default(),
                "refusals past the access log's limit this minute: counted in checkoutd_denials_unlogged_total, not written one by one"
            );
        }
        crate::telemetry::denial_unlogged();
        return;
    }
    let entry = Entry::for_request(peer, action, objects, Outcome::Denied, status.as_u16());
    if let Err(error) = state.access_log.append(entry).await {
        tracing::error!(error = %error, "access log append failed for a denied request");
    }
}

/// `POST /unsubscribe` from all addresses together, per minute, is this
/// many times the per-address limit (`--unsubscribe-rate-limit`, 10 by
/// default: 1 000 a minute in all).
pub const UNSUBSCRIBES_IN_ALL_PER_CLIENT_LIMIT: u32 = 100;

/// `POST /unsubscribe` recorded from one network (an IPv4 /24, an IPv6
/// /48), per minute, is this many times the per-address limit (100 a
/// minute by default): it takes ten networks, not one, to use up the
/// budget of all addresses.
pub const UNSUBSCRIBES_PER_NETWORK_PER_CLIENT_LIMIT: u32 = 10;

/// Refusals of requests without a role (no client certificate, or one
/// naming no role we grant, or withdrawn) written to the access log one by
/// one, per client address and minute (see [`record_refusal`]). A misconfigured
/// client retrying once a second stays well inside it.
pub const DENIALS_LOGGED_PER_MINUTE: u32 = 120;

/// The same, for every address together: addresses are cheap (an IPv6
/// /48 holds 65 536 /64s), so a flood from many must not reopen what the
/// per-address limit closed. 100 a second.
pub const DENIALS_LOGGED_PER_MINUTE_IN_ALL: u32 = 6_000;

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

impl Params {
    /// The first parameter (by name) not in `known`, as an error may name
    /// it: the name if it is shaped like one of ours, else `<unknown>`
    /// (a client-chosen name could hold anything).
    pub fn unknown(&self, known: &[&str]) -> Option<String> {
        let mut names: Vec<&String> = self
            .0
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .collect();
        names.sort();
        names
            .first()
            .map(|k| crate::domain::order::shown_field_name(k).to_owned())
    }
}

/// A request's query parameters, each name at most once. A repeated name
/// (`?limit=1&limit=500`) is refused, 400 naming `query`, rather than
/// resolved silently to one of its values (axum's `Query<HashMap>` keeps
/// the last). A malformed query string is refused as axum refuses it (made
/// a problem document by the outer layer).
pub struct Params(pub std::collections::HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(pairs) =
            axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
                .await
                .map_err(IntoResponse::into_response)?;
        let mut params = std::collections::HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            if params.contains_key(&name) {
                return Err(Problem::bad_request(
                    "invalid-query",
                    "The query parameters are invalid",
                )
                .with_errors(vec![crate::http::FieldError::new(
                    crate::domain::order::shown_field_name(&name),
                    "repeated",
                    "Each query parameter may be given once",
                )])
                .into_response());
            }
            params.insert(name, value);
        }
        Ok(Params(params))
    }
}

/// The `{id}` segment of a path, as an order id: `None` when it is not a
/// UUID — including a segment that is not UTF-8 once percent-decoded, which
/// axum's `Path<String>` would refuse with an undocumented 400 — so every
/// such path answers 404 like any unknown order.
pub struct IdSegment(pub Option<uuid::Uuid>);

impl<S: Send + Sync> FromRequestParts<S> for IdSegment {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let id = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .ok()
            .and_then(|axum::extract::Path(s)| uuid::Uuid::parse_str(&s).ok());
        Ok(IdSegment(id))
    }
}

/// Writes an allowed access to the hash-chained access log *before* the
/// answer leaves. `Err` carries the answer to send instead (503): when the
/// access cannot be recorded, nothing is disclosed.
async fn record_access(
    state: &AppState,
    peer: Option<&Peer>,
    method: &str,
    route: &MatchedPath,
    objects: Vec<String>,
    status: u16,
) -> Result<(), Response> {
    record_access_after(state, peer, method, route, objects, status, None).await
}

/// [`record_access`] of an access that wrote a time of its own first (a
/// dispatch's `dispatched_at`): the entry's time is never before it, even
/// should the clock step back in between — the audit takes a dispatch
/// entry older than its dispatch for one undone and made again.
async fn record_access_after(
    state: &AppState,
    peer: Option<&Peer>,
    method: &str,
    route: &MatchedPath,
    objects: Vec<String>,
    status: u16,
    not_before: Option<&str>,
) -> Result<(), Response> {
    let mut entry = Entry::for_request(
        peer,
        format!("{method} {}", route.as_str()),
        objects,
        Outcome::Allowed,
        status,
    );
    if let Some(at) = not_before
        && entry.at.as_str() < at
    {
        at.clone_into(&mut entry.at);
    }
    state.access_log.append(entry).await.map(|_| ()).map_err(|error| {
        tracing::error!(error = %error, route = route.as_str(), "access log append failed; withholding the answer");
        Problem::unavailable("The access log is unavailable; nothing was disclosed").into_response()
    })
}

/// Most bytes of a small JSON body (dispatch, opt-out); enforced while
/// reading by a `DefaultBodyLimit` on those routes.
pub const SMALL_BODY: usize = 4 * 1024;

/// A failed database operation as the client hears it: "retry" (503 with
/// `Retry-After`) when the database is away or busy, a 500 otherwise —
/// every read and write route answers a store error here, the same way.
fn store_problem(error: &crate::store::StoreError) -> Response {
    tracing::error!(error = %error, "a database operation failed");
    if error.is_unavailable() {
        Problem::unavailable("The database is unavailable").into_response()
    } else {
        Problem::internal().into_response()
    }
}

/// The request's media type, or the problem with its `Content-Type`,
/// named in `errors`: sent more than once (400, `content-type-repeated` —
/// which one the client meant is not ours to guess), or missing or not one
/// of `accepted` (415, `unsupported-media-type`, titled `title`).
fn media_type(
    headers: &http::HeaderMap,
    accepted: &[crate::intake::MediaType],
    title: &'static str,
) -> Result<crate::intake::MediaType, Problem> {
    let named = |code, message| vec![FieldError::new("Content-Type", code, message)];
    if headers
        .get_all(http::header::CONTENT_TYPE)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(Problem::bad_request(
            "content-type-repeated",
            "Send exactly one Content-Type header",
        )
        .with_errors(named("repeated", "Content-Type was sent more than once")));
    }
    match crate::intake::MediaType::of(headers) {
        Some(media) if accepted.contains(&media) => Ok(media),
        _ => Err(Problem::new(
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            title,
        )
        .with_errors(named("unsupported", title))),
    }
}

/// A small JSON body: `application/json` only (415; 400 for a repeated
/// `Content-Type`), at most [`SMALL_BODY`] bytes (413), strict JSON — no
/// repeated members (400).
fn small_json(headers: &http::HeaderMap, body: &[u8]) -> Result<serde_json::Value, Problem> {
    use http::StatusCode;
    media_type(
        headers,
        &[crate::intake::MediaType::Json],
        "Send application/json",
    )?;
    if body.len() > SMALL_BODY {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "The body is larger than 4 KiB",
        ));
    }
    crate::domain::json::parse_strict(body).map_err(json_problem)
}

/// The one answer to a body that is not strict JSON: 400, where it went
/// wrong, and the member it went wrong in named in `errors` by its path.
fn json_problem(e: crate::domain::json::JsonError) -> Problem {
    let problem = Problem::bad_request("malformed-body", "The body is not valid JSON")
        .with_detail(e.to_string());
    match e.field() {
        Some(field) => problem.with_errors(vec![crate::http::FieldError::new(
            field,
            e.code(),
            e.message(),
        )]),
        None => problem,
    }
}

/// Prometheus text format (auditor role): request counts and latencies by
/// route and status, orders accepted, commit batch sizes and latency, TLS
/// handshake failures by reason, open connections, database waits.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String))
)]
async fn metrics() -> axum::response::Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render_metrics(),
    )
        .into_response()
}
