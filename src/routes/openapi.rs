//! `GET /openapi.json`: the OpenAPI 3.1 description, generated from the code.
//!
//! Each handler carries its own `#[utoipa::path]` (parameters, bodies, every
//! status it answers); bodies are the schemas of the very types the handlers
//! serialise. What is common is filled in here, from the same sources the
//! server uses, so it cannot drift:
//! - each operation's roles, tags, `security` (the `mutualTLS` scheme) and
//!   `x-checkoutd-roles` come from the route table ([`super::routes`]); the
//!   guarded ones get their 401/403 answers;
//! - every error answer without its own body is an `application/problem+json`
//!   [`Problem`](crate::http::problem::ProblemDocument) document; every 503
//!   carries `Retry-After`; every operation may answer what the layers in
//!   front of every handler answer: 400 (ambiguous framing), 408 (the time
//!   limit), 431 (headers too large), 500 (a panic caught), 503 (overload);
//! - the form-encoded order body is derived from the JSON one
//!   ([`crate::domain::order_schema::form_schema`]).
//!
//! Tests prove the document lists exactly the routes the router serves.

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::Response as OaResponse;
use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use super::{Route, Verb, routes};
use crate::http::problem::PROBLEM_JSON;

/// The name of the security scheme in `components.securitySchemes`.
pub const MUTUAL_TLS: &str = "mutualTLS";

/// The tag of operations that need no certificate.
pub const PUBLIC_TAG: &str = "public";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "checkoutd",
        description = "Secure checkout payment-capture service. Every client is identified by a TLS \
client certificate issued by checkoutd's client CA (mutual TLS); the certificate carries the \
caller's role as a URI subject alternative name `urn:checkoutd:role:<role>`. Each operation is \
tagged with the one role that may call it (or `public`), and lists it in `x-checkoutd-roles`. \
No certificate: 401; a certificate of another role: 403. Every error is an RFC 9457 \
`application/problem+json` document, except those of the public HTML opt-out page \
(`POST /unsubscribe`), which are HTML for the customer's browser. Every response carries HSTS, `nosniff` and (except this \
description) `Cache-Control: no-store`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::health::healthz,
        super::health::readyz,
        super::consent::unsubscribe_page,
        super::consent::unsubscribe,
        serve,
        super::orders::create,
        super::orders::summary,
        super::consent::opt_out,
        super::shipments::list,
        super::shipments::dispatch,
        super::marketing::audience,
        super::audit::report,
        super::audit::public_key,
        super::audit::order,
        super::audit::log,
        super::consent::proof_by_body,
        super::consent::proof,
        super::metrics,
    ),
    components(schemas(
        crate::http::problem::ProblemDocument,
        crate::http::problem::FieldError,
        crate::domain::order_schema::OrderRequest,
        super::shipments::StatusFilter,
        crate::consent::PurposeName,
    )),
    tags(
        (name = "public", description = "No client certificate needed"),
        (name = "storefront", description = "The shop's web back end (role `storefront`)"),
        (name = "fulfillment", description = "The warehouse system (role `fulfillment`)"),
        (name = "marketing", description = "The mailing system (role `marketing`)"),
        (name = "auditor", description = "Internal or external auditors (role `auditor`)"),
    ),
    modifiers(&FromRouteTable, &ProblemAnswers, &FormOrder),
)]
pub struct ApiDoc;

/// The description as JSON, built once.
pub fn document() -> &'static [u8] {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    JSON.get_or_init(|| serde_json::to_vec(&ApiDoc::openapi()).unwrap_or_default())
}

/// The OpenAPI 3.1 description of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    responses(
        (status = 200, description = "This document", content_type = "application/json",
            body = Object,
            headers(("Cache-Control" = String, description = "`public, max-age=3600`: the document changes only with the server"))),
        (status = 500, description = "The description could not be built"),
    )
)]
pub async fn serve() -> Response {
    let body = document();
    if body.is_empty() {
        return crate::http::Problem::internal().into_response();
    }
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    response
}

fn operations(doc: &mut Document) -> impl Iterator<Item = (Verb, &str, &mut Operation)> {
    doc.paths.paths.iter_mut().flat_map(|(path, item)| {
        [(Verb::Get, &mut item.get), (Verb::Post, &mut item.post)]
            .into_iter()
            .filter_map(move |(verb, op)| op.as_mut().map(|op| (verb, path.as_str(), op)))
    })
}

fn problem_content() -> Content {
    Content::new(Some(Ref::from_schema_name("Problem")))
}

/// Roles, tags, security and the guard's answers, from the route table.
struct FromRouteTable;

impl Modify for FromRouteTable {
    fn modify(&self, doc: &mut Document) {
        let table: Vec<Route> = routes();
        let components = doc.components.get_or_insert_with(Default::default);
        components.security_schemes.insert(
            MUTUAL_TLS.to_owned(),
            SecurityScheme::MutualTls {
                description: Some(
                    "A client certificate issued by checkoutd's client CA whose URI SAN \
`urn:checkoutd:role:<role>` names the operation's role (see `x-checkoutd-roles`)."
                        .to_owned(),
                ),
                extensions: None,
            },
        );
        for (verb, path, op) in operations(doc) {
            let roles = table
                .iter()
                .find(|r| r.verb == verb && r.path == path)
                .map(|r| r.roles)
                .unwrap_or_default();
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            op.extensions = Some(
                ExtensionsBuilder::new()
                    .add("x-checkoutd-roles", serde_json::json!(names))
                    .build(),
            );
            if roles.is_empty() {
                op.tags = Some(vec![PUBLIC_TAG.to_owned()]);
                op.security = Some(Vec::new());
                continue;
            }
            op.tags = Some(names.iter().map(|n| (*n).to_owned()).collect());
            op.security = Some(vec![SecurityRequirement::new(
                MUTUAL_TLS,
                Vec::<String>::new(),
            )]);
            let answers = &mut op.responses.responses;
            answers.insert(
                "401".into(),
                RefOr::T(OaResponse::new(
                    "No client certificate was presented (problem `unauthenticated`)",
                )),
            );
            answers.insert(
                "403".into(),
                RefOr::T(OaResponse::new(
                    "The certificate's role may not call this operation (problem `forbidden`)",
                )),
            );
        }
    }
}

/// Error answers are problem documents; 503 carries `Retry-After`; every
/// operation may answer what the layers in front of it answer (400 framing,
/// 408, 431, 500, 503).
struct ProblemAnswers;

impl Modify for ProblemAnswers {
    fn modify(&self, doc: &mut Document) {
        for (_, _, op) in operations(doc) {
            // What the layers in front of every handler may answer
            // (`http::guard`, the time limit, the panic catcher).
            for (status, what) in [
                (
                    "400",
                    "The request is malformed; among others, an HTTP/1.1 request framed by Transfer-Encoding (problem `ambiguous-framing`: send Content-Length). An HTTP/1.1 request that is not parseable HTTP at all (a malformed request line or header, conflicting Content-Length) is answered by the HTTP layer with an empty body (on HTTP/2, such a stream is reset)",
                ),
                ("408", "The request was not completed within the time limit"),
                (
                    "431",
                    "The request headers are larger than 16 KiB or more than 64 fields (problem `headers-too-large`); beyond the protocol limits (an HTTP/1 head over 64 KiB or 100 fields, an HTTP/2 header list over 64 KiB) the HTTP layer answers with an empty body",
                ),
                (
                    "500",
                    "The server failed while handling the request (a bug; retry with the same Idempotency-Key)",
                ),
                (
                    "503",
                    "The server is overloaded or its database unavailable; retry after `Retry-After` seconds",
                ),
            ] {
                op.responses
                    .responses
                    .entry(status.into())
                    .or_insert_with(|| RefOr::T(OaResponse::new(what)));
            }
            // Email parameters take exactly what `Email::parse` accepts.
            for param in op.parameters.iter_mut().flatten() {
                if param.name == "email" {
                    param.schema = Some(crate::domain::contact::email_schema().into());
                }
            }
            for (status, answer) in op.responses.responses.iter_mut() {
                let RefOr::T(answer) = answer else { continue };
                let error = status.starts_with('4') || status.starts_with('5');
                // The layers in front answer these as problem documents on
                // every route, also where the handler answers in HTML
                // (`/unsubscribe`): both media types are described.
                let from_layers = ["400", "408", "431", "500", "503"].contains(&status.as_str());
                if error
                    && (answer.content.is_empty() || from_layers)
                    && !answer.content.contains_key(PROBLEM_JSON)
                {
                    answer
                        .content
                        .insert(PROBLEM_JSON.to_owned(), problem_content());
                }
                if status == "503" || status == "429" {
                    answer
                        .headers
                        .entry("Retry-After".into())
                        .or_insert_with(|| {
                            let mut h = utoipa::openapi::header::Header::new(
                                utoipa::openapi::schema::ObjectBuilder::new()
                                    .schema_type(utoipa::openapi::schema::Type::Integer)
                                    .minimum(Some(0)),
                            );
                            h.description = Some("Seconds to wait before retrying".into());
                            h
                        });
                }
            }
        }
    }
}

/// `POST /v1/orders` also takes the form-encoded order, derived from the
/// JSON schema.
struct FormOrder;

impl Modify for FormOrder {
    fn modify(&self, doc: &mut Document) {
        let Ok(value) = serde_json::to_value(&doc.components) else {
            return;
        };
        let Some(schemas) = value.get("schemas").and_then(|s| s.as_object()) else {
            return;
        };
        let Some(order) = schemas.get("OrderRequest") else {
            return;
        };
        let form = crate::domain::order_schema::form_schema(order, schemas);
        let Ok(form) = serde_json::from_value::<utoipa::openapi::schema::Schema>(form) else {
            return;
        };
        if let Some(components) = doc.components.as_mut() {
            components
                .schemas
                .insert("OrderFormFields".into(), RefOr::T(form));
        }
        let Some(op) = doc
            .paths
            .paths
            .get_mut("/v1/orders")
            .and_then(|p| p.post.as_mut())
        else {
            return;
        };
        if let Some(body) = op.request_body.as_mut() {
            body.content.insert(
                "application/x-www-form-urlencoded".into(),
                Content::new(Some(Ref::from_schema_name("OrderFormFields"))),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn doc() -> Value {
        serde_json::from_slice(document()).unwrap()
    }

    #[test]
    fn is_openapi_3_1() {
        let d = doc();
        assert!(d["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(
            d["components"]["securitySchemes"][MUTUAL_TLS]["type"],
            "mutualTLS"
        );
    }

    /// Adding a route without documenting it (or documenting one that is not
    /// served, or with other roles) fails here.
    #[test]
    fn documents_exactly_the_routes_the_router_serves_with_their_roles() {
        let d = doc();
        let mut documented = BTreeSet::new();
        for (path, item) in d["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let roles: Vec<String> = op["x-checkoutd-roles"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_owned())
                    .collect();
                let tags: Vec<String> = op["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_owned())
                    .collect();
                if roles.is_empty() {
                    assert_eq!(tags, vec![PUBLIC_TAG], "{method} {path}");
                    assert_eq!(op["security"], serde_json::json!([]), "{method} {path}");
                } else {
                    assert_eq!(tags, roles, "{method} {path}");
                    assert_eq!(op["security"][0][MUTUAL_TLS], serde_json::json!([]));
                    assert!(op["responses"]["401"].is_object());
                    assert!(op["responses"]["403"].is_object());
                }
                documented.insert((method.to_uppercase(), path.clone(), roles));
            }
        }
        let served: BTreeSet<_> = routes()
            .iter()
            .map(|r| {
                (
                    r.verb.as_str().to_owned(),
                    r.path.to_owned(),
                    r.roles.iter().map(|r| r.as_str().to_owned()).collect(),
                )
            })
            .collect();
        assert_eq!(documented, served);
    }

    #[test]
    fn every_error_answer_has_a_body_and_every_operation_an_id() {
        let d = doc();
        let mut ids = BTreeSet::new();
        for (path, item) in d["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(ids.insert(op["operationId"].as_str().unwrap().to_owned()));
                for (status, answer) in op["responses"].as_object().unwrap() {
                    let content = answer["content"].as_object();
                    if status.starts_with('4') || status.starts_with('5') {
                        assert!(
                            content.is_some_and(|c| !c.is_empty()),
                            "{method} {path} {status}"
                        );
                    }
                    if status == "503" {
                        assert!(answer["headers"]["Retry-After"].is_object());
                    }
                }
            }
        }
    }

    #[test]
    fn problem_schema_matches_what_problems_serialise_to() {
        let d = doc();
        let schema = &d["components"]["schemas"]["Problem"];
        let props: BTreeSet<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let p = crate::http::Problem::unprocessable("invalid-order", "t")
            .with_detail("d")
            .with_errors(vec![crate::http::FieldError::new(
                "card.number",
                "luhn",
                "m",
            )]);
        let body: Value = serde_json::from_slice(&p.body_bytes()).unwrap();
        let emitted: BTreeSet<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(props, emitted);
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let minimal: Value =
            serde_json::from_slice(&crate::http::Problem::not_found().body_bytes()).unwrap();
        let minimal: BTreeSet<&str> = minimal
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(required, minimal);
    }

    #[test]
    fn orders_take_json_and_form_bodies() {
        let d = doc();
        let content = &d["paths"]["/v1/orders"]["post"]["requestBody"]["content"];
        assert_eq!(
            content["application/json"]["schema"]["$ref"],
            "#/components/schemas/OrderRequest"
        );
        assert_eq!(
            content["application/x-www-form-urlencoded"]["schema"]["$ref"],
            "#/components/schemas/OrderFormFields"
        );
        assert!(
            d["components"]["schemas"]["OrderFormFields"]["properties"]["card.number"].is_object()
        );
    }
}
