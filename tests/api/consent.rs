//! The consent life cycle: audiences honour each choice, opt-outs (API and
//! public page) take effect at once across all orders, later checkouts
//! re-grant, gift recipients never appear, and the auditor's proof.

use std::time::Duration;

use checkoutd::server::identity::Role;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, expect_problem, spawn_app, spawn_app_with};
use crate::orders::order_json;

pub(crate) fn order_for(email: &str, special_offers: bool, partners: bool) -> Value {
    let mut o = order_json();
    o["customer"]["email"] = json!(email);
    o["consent"] = json!({"special_offers": special_offers, "third_party_sharing": partners,
                          "policy_version": "2002-06-05"});
    o
}

fn gift_for(email: &str) -> Value {
    let mut o = order_for(email, true, false);
    o["gift_recipient"] = json!({
        "name": "Charles Babbage",
        "address": {"line1": "1 Dorset Street", "city": "London", "postal_code": "W1U 4EG", "country": "GB"},
        "phone": "+44 20 7946 0000", "message": "Enjoy"
    });
    o
}

static KEY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) async fn place(app: &TestApp, order: &Value) -> String {
    let n = KEY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let r = app.post_order(&format!("consent-{n}"), order).await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    body["order_id"].as_str().unwrap().to_owned()
}

pub(crate) async fn audience(app: &TestApp, purpose: &str) -> Vec<String> {
    let r = app
        .client(Role::Marketing)
        .get(app.url(&format!("/v1/marketing/audience?purpose={purpose}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for secret in [
        "Charles",
        "Babbage",
        "Dorset",
        "Columbia",
        "Lovelace",
        "4111111111111111",
        "4111 1111",
        "+1 949",
        "visa",
    ] {
        assert!(
            !text.contains(secret),
            "an audience leaked {secret}: {text}"
        );
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut emails: Vec<String> = v["emails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    emails.sort();
    emails
}

async fn opt_out(app: &TestApp, body: Value) -> reqwest::Response {
    app.client(Role::Storefront)
        .post(app.url("/v1/consent/opt-out"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn audiences_honour_each_choice_and_never_hold_gift_recipients() {
    let app = spawn_app().await;
    place(&app, &order_for("a@example.com", true, false)).await;
    place(&app, &order_for("b@example.com", false, false)).await;
    place(&app, &gift_for("c@example.com")).await;
    assert_eq!(
        audience(&app, "special_offers").await,
        vec!["a@example.com", "c@example.com"]
    );
    assert!(
        audience(&app, "third_party_sharing").await.is_empty(),
        "the partner list is empty"
    );
    assert!(audience(&app, "product_updates").await.is_empty());
    for bad in ["spam", "", "SPECIAL_OFFERS"] {
        let r = app
            .client(Role::Marketing)
            .get(app.url(&format!("/v1/marketing/audience?purpose={bad}")))
            .send()
            .await
            .unwrap();
        expect_problem(r, 400).await;
    }
    let r = app
        .client(Role::Marketing)
        .get(app.url("/v1/marketing/audience"))
        .send()
        .await
        .unwrap();
    expect_problem(r, 400).await;
    // Every export is logged with its size.
    let log: Value = app.get_json(Role::Auditor, "/v1/audit/log").await;
    let exports: Vec<&Value> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "GET /v1/marketing/audience")
        .collect();
    let special = exports
        .iter()
        .find(|e| e["objects"][0] == "audience:special_offers")
        .unwrap();
    assert_eq!(special["objects"][1], "subjects:2");
    assert_eq!(
        special["objects"].as_array().unwrap().len(),
        4,
        "and the two orders whose contacts were opened"
    );
    assert!(
        exports
            .iter()
            .any(|e| e["objects"] == json!(["audience:third_party_sharing", "subjects:0"]))
    );
}

/// An export pages by customer: every consenting customer exactly once,
/// however often customers order while it runs (a new order must not put
/// anyone on a second page), and pages of customers who do not consent
/// come back short rather than missing anyone.
#[tokio::test]
async fn audiences_paginate_without_loss_or_repetition() {
    let app = spawn_app().await;
    for i in 0..5 {
        place(&app, &order_for(&format!("p{i}@example.com"), true, false)).await;
        place(&app, &order_for(&format!("n{i}@example.com"), false, false)).await;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut query = "purpose=special_offers&limit=2".to_owned();
    let mut pages = 0;
    loop {
        let v: Value = app
            .get_json(Role::Marketing, &format!("/v1/marketing/audience?{query}"))
            .await;
        let emails: Vec<String> = v["emails"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_owned())
            .collect();
        assert!(emails.len() <= 2);
        // Everyone so far orders again, still consenting, and so does one
        // customer not yet exported: a new latest order each.
        for who in seen.iter().chain(&emails) {
            place(&app, &order_for(who, true, false)).await;
        }
        if pages == 0 {
            place(&app, &order_for("p4@example.com", true, false)).await;
        }
        seen.extend(emails);
        pages += 1;
        assert!(pages < 20, "the export ends");
        match v["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(c.len(), 120, "an opaque cursor");
                query = format!("purpose=special_offers&limit=2&after={c}");
            }
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "nobody twice: {seen:?}");
    assert_eq!(
        sorted,
        (0..5)
            .map(|i| format!("p{i}@example.com"))
            .collect::<Vec<_>>()
    );
}

/// A contact record whose blind index was edited to another length is no
/// subject: the export leaves it out and carries on, wherever it falls.
#[tokio::test]
async fn an_edited_blind_index_does_not_end_the_export() {
    let app = spawn_app().await;
    for i in 0..3 {
        place(&app, &order_for(&format!("q{i}@example.com"), true, false)).await;
    }
    // Sorts after every genuine one: the last subject of the last chunk.
    sqlx::query(
        "UPDATE contact_emails SET email_blind_index = $1
          WHERE id = (SELECT id FROM contact_emails ORDER BY email_blind_index LIMIT 1)",
    )
    .bind(vec![0xffu8, 0xff])
    .execute(&app.db().await)
    .await
    .unwrap();
    let mut seen = 0;
    let mut ended = false;
    let mut query = "purpose=special_offers&limit=1".to_owned();
    for _ in 0..10 {
        let v: Value = app
            .get_json(Role::Marketing, &format!("/v1/marketing/audience?{query}"))
            .await;
        seen += v["emails"].as_array().unwrap().len();
        match v["next_cursor"].as_str() {
            Some(c) => query = format!("purpose=special_offers&limit=1&after={c}"),
            None => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "the export ended");
    assert_eq!(seen, 2, "the two untouched customers");
}

#[tokio::test]
async fn an_api_opt_out_removes_the_customer_everywhere_at_once_in_any_case() {
    let app = spawn_app().await;
    place(&app, &order_for("ada@example.com", true, true)).await;
    place(&app, &order_for("ada@example.com", true, true)).await;
    place(&app, &order_for("grace@example.com", true, true)).await;
    assert_eq!(
        audience(&app, "special_offers").await,
        vec!["ada@example.com", "grace@example.com"]
    );

    let known = opt_out(
        &app,
        json!({"email": "ADA@Example.COM", "purposes": ["special_offers"], "channel": "email",
                                      "reference": "<CAF+123@mail.example>"}),
    )
    .await;
    assert_eq!(known.status(), 202);
    let known: Value = known.json().await.unwrap();
    let unknown = opt_out(
        &app,
        json!({"email": "nobody@example.com", "purposes": "all", "channel": "postal"}),
    )
    .await;
    assert_eq!(unknown.status(), 202);
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(
        known.as_object().unwrap().keys().collect::<Vec<_>>(),
        unknown.as_object().unwrap().keys().collect::<Vec<_>>()
    );

    assert_eq!(
        audience(&app, "special_offers").await,
        vec!["grace@example.com"],
        "at once, all orders"
    );
    assert_eq!(
        audience(&app, "third_party_sharing").await,
        vec!["ada@example.com", "grace@example.com"],
        "only the withdrawn purpose"
    );
    // The warehouse sees it too (no promotional insert for Ada).
    let shipments = app.shipments("").await;
    let ada_offers: Vec<bool> = shipments["shipments"].as_array().unwrap()[..2]
        .iter()
        .map(|s| s["consent"]["special_offers"].as_bool().unwrap())
        .collect();
    assert_eq!(ada_offers, vec![false, false], "both of Ada's orders");
    assert_eq!(
        shipments["shipments"][2]["consent"]["special_offers"], true,
        "Grace's untouched"
    );

    // A checkout captured within five minutes of the withdrawal does not
    // undo it: a storefront whose clock runs four minutes ahead, retrying
    // a checkout the customer made before opting out (its capture time is
    // lowered only to when the retry is taken), or one without a capture
    // time stamped at the retry. (A later one re-grants: see
    // `an_opt_out_from_a_host_whose_clock_is_behind_still_counts`.)
    tokio::time::sleep(Duration::from_millis(5)).await;
    let ahead =
        checkoutd::ids::timestamp(time::OffsetDateTime::now_utc() + time::Duration::minutes(4));
    let mut retried = order_for("ada@example.com", true, false);
    retried["consent"]["captured_at"] = json!(ahead);
    place(&app, &retried).await;
    place(&app, &order_for("ada@example.com", true, false)).await;
    assert_eq!(
        audience(&app, "special_offers").await,
        vec!["grace@example.com"]
    );
    // ... and their own choices rule: no partner sharing for Ada any more.
    assert_eq!(
        audience(&app, "third_party_sharing").await,
        vec!["grace@example.com"]
    );
    // The warehouse and the counts say the same.
    let shipments = app.shipments("").await;
    let latest = shipments["shipments"].as_array().unwrap().last().unwrap();
    assert_eq!(latest["consent"]["special_offers"], false, "{latest}");
    let report: Value = app.get_json(Role::Auditor, "/v1/audit/report").await;
    assert_eq!(
        report["report"]["consent"]["consenting"]["special_offers"], 1,
        "{report:#}"
    );

    for bad in [
        json!({"email": "ada@example.com", "purposes": ["spam"], "channel": "email"}),
        json!({"email": "ada@example.com", "purposes": "all", "channel": "pigeon"}),
        json!({"email": "not-an-email", "purposes": "all", "channel": "email"}),
        json!({"purposes": "all", "channel": "email"}),
    ] {
        expect_problem(opt_out(&app, bad).await, 422).await;
    }
    let r = app
        .client(Role::Marketing)
        .post(app.url("/v1/consent/opt-out"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_problem(r, 403).await;
}

#[tokio::test]
async fn the_auditor_sees_proof_of_consent() {
    let app = spawn_app().await;
    let order = place(&app, &order_for("ada@example.com", true, false)).await;
    assert_eq!(
        opt_out(
            &app,
            json!({"email": "ada@example.com", "purposes": "all", "channel": "postal",
                              "received_at": "2026-01-05T09:00:00Z", "reference": "scan-2026-0042"})
        )
        .await
        .status(),
        202
    );
    let r = app
        .client(Role::Auditor)
        .get(app.url("/v1/audit/consent?email=Ada%40Example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("ada@example.com")
            && !text.contains("scan-2026-0042")
            && !text.contains("Lovelace")
    );
    let proof: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(proof["subject"]["known"], true);
    let record = &proof["records"][0];
    assert_eq!(record["order_id"], order.as_str());
    assert_eq!(record["policy_version"], "2002-06-05");
    assert_eq!(record["collection_method"], "checkout");
    assert_eq!(record["purposes"]["special_offers"], true);
    assert_eq!(record["mac_verified"], true);
    let event = &proof["events"][0];
    assert_eq!(event["event_type"], "withdrawal");
    assert_eq!(event["channel"], "postal");
    assert_eq!(event["received_at"], "2026-01-05T09:00:00.000Z");
    assert_eq!(event["has_reference"], true);
    assert_eq!(event["mac_verified"], true);
    assert_eq!(event["purposes_withdrawn"].as_array().unwrap().len(), 5);
    assert_eq!(proof["effective"]["special_offers"], false);
    assert_eq!(proof["verified"], true);
    // Logged, naming the order.
    let log: Value = app.get_json(Role::Auditor, "/v1/audit/log").await;
    let entry = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "GET /v1/audit/consent")
        .unwrap();
    assert_eq!(entry["objects"][0], order.as_str());
    let r = app
        .client(Role::Auditor)
        .get(app.url("/v1/audit/consent?email=nope"))
        .send()
        .await
        .unwrap();
    expect_problem(r, 400).await;
    // An unknown parameter is named, not ignored.
    let r = app
        .client(Role::Auditor)
        .get(app.url("/v1/audit/consent?email=a%40example.com&emial=b"))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(r, 400).await;
    assert_eq!(problem["errors"][0]["field"], "emial");
    assert_eq!(problem["errors"][0]["code"], "unknown_parameter");
    // The report counts the opt-out.
    let report: Value = app.get_json(Role::Auditor, "/v1/audit/report").await;
    assert_eq!(report["report"]["verified"], true, "{report:#}");
    assert_eq!(
        report["report"]["consent"]["opted_out"]["special_offers"],
        1
    );
    assert_eq!(
        report["report"]["consent"]["consenting"]["special_offers"],
        0
    );
}

/// `POST /v1/audit/consent`: the same proof as the GET, with the address in
/// the body and so in no URL; its faults are named; only auditors.
#[tokio::test]
async fn the_auditor_asks_for_proof_of_consent_with_the_address_in_the_body() {
    let app = spawn_app().await;
    let order = place(&app, &order_for("ada@example.com", true, false)).await;
    let ask = |role: Role, body: String, content_type: &'static str| {
        app.client(role)
            .post(app.url("/v1/audit/consent"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let json_type = "application/json";
    let r = ask(
        Role::Auditor,
        json!({"email": "Ada@Example.com"}).to_string(),
        json_type,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains("ada@example.com") && !text.contains("Lovelace"));
    let by_body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(by_body["subject"]["known"], true);
    assert_eq!(by_body["records"][0]["order_id"], order.as_str());
    assert_eq!(by_body["effective"]["special_offers"], true);
    assert_eq!(by_body["verified"], true);
    // The same proof as the GET's (the report time apart).
    let mut by_query: Value = app
        .get_json(Role::Auditor, "/v1/audit/consent?email=ada%40example.com")
        .await;
    let mut by_body = by_body;
    for proof in [&mut by_body, &mut by_query] {
        proof.as_object_mut().unwrap().remove("generated_at");
    }
    assert_eq!(by_body, by_query);
    // Logged, naming the order and the subject, before the answer.
    let entry = app
        .access_log_entries()
        .await
        .into_iter()
        .find(|e| e["action"] == "POST /v1/audit/consent")
        .expect("the POST is in the access log");
    assert_eq!(entry["objects"][0], order.as_str());
    assert!(
        entry["objects"][1]
            .as_str()
            .unwrap()
            .starts_with("consent_subject:")
    );
    assert!(!entry.to_string().contains("example.com"), "{entry}");
    // Each fault is named by its member, all at once.
    for (body, field, code) in [
        (json!({}).to_string(), "email", "required"),
        (
            json!({"email": "nope"}).to_string(),
            "email",
            "invalid_email",
        ),
        (json!({"email": 7}).to_string(), "email", "invalid_type"),
        (
            json!({"email": "ada@example.com", "emial": "b"}).to_string(),
            "emial",
            "unknown_field",
        ),
        (json!(["ada@example.com"]).to_string(), "", "invalid_type"),
        // A member's name is the client's text: not shown back.
        (
            json!({"email": "ada@example.com", "4111111111111111": 1}).to_string(),
            "<unknown>",
            "unknown_field",
        ),
        (
            json!({"email": "ada@example.com", "bob@example.com": 1}).to_string(),
            "<unknown>",
            "unknown_field",
        ),
    ] {
        let r = ask(Role::Auditor, body.clone(), json_type).await.unwrap();
        let problem = expect_problem(r, 422).await;
        assert!(
            !problem.to_string().contains("4111111111111111")
                && !problem.to_string().contains("bob@"),
            "{problem}"
        );
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
        assert_eq!(problem["errors"][0]["code"], code, "{body}");
    }
    let r = ask(Role::Auditor, "{\"email\": ".to_owned(), json_type)
        .await
        .unwrap();
    expect_problem(r, 400).await;
    let r = ask(
        Role::Auditor,
        "email=ada%40example.com".to_owned(),
        "application/x-www-form-urlencoded",
    )
    .await
    .unwrap();
    expect_problem(r, 415).await;
    let r = ask(
        Role::Auditor,
        json!({"email": format!("{}@example.com", "a".repeat(5000))}).to_string(),
        json_type,
    )
    .await
    .unwrap();
    expect_problem(r, 413).await;
    // Other roles are refused.
    for role in [Role::Storefront, Role::Fulfillment, Role::Marketing] {
        let r = ask(
            role,
            json!({"email": "ada@example.com"}).to_string(),
            json_type,
        )
        .await
        .unwrap();
        expect_problem(r, 403).await;
    }
}

async fn post_page(app: &TestApp, body: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = app
        .anonymous()
        .post(app.url("/unsubscribe"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// Another site's page cannot post the form from its visitors' browsers
/// (bulk opt-outs past the per-address limit); the page itself, and clients
/// that are not browsers, can.
#[tokio::test]
async fn the_public_page_refuses_posts_from_other_sites() {
    let app = spawn_app().await;
    place(&app, &order_for("ada@example.com", true, false)).await;
    let post = |headers: Vec<(&'static str, String)>| {
        let mut request = app
            .anonymous()
            .post(app.url("/unsubscribe"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("email=ada%40example.com");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let ours = app.url("").trim_end_matches('/').to_owned();
    for refused in [
        vec![("sec-fetch-site", "cross-site".to_owned())],
        vec![("origin", "https://evil.example".to_owned())],
        vec![
            ("sec-fetch-site", "cross-site".to_owned()),
            ("origin", ours.clone()),
        ],
        // A browser without Sec-Fetch-Site, on a page under no-referrer.
        vec![("origin", "null".to_owned())],
        // Our host and port, but a plaintext page.
        vec![("origin", ours.replacen("https://", "http://", 1))],
    ] {
        assert_eq!(post(refused.clone()).await, 403, "{refused:?}");
    }
    assert_eq!(
        unsubscribe_refusals_logged(&app, 403).await,
        5,
        "every refusal is in the access log"
    );
    assert_eq!(
        audience(&app, "special_offers").await,
        vec!["ada@example.com"],
        "nothing was recorded"
    );
    // Our own page, as a current browser and as an older one posts it.
    assert_eq!(
        post(vec![
            ("sec-fetch-site", "same-origin".to_owned()),
            ("origin", ours.clone())
        ])
        .await,
        200
    );
    assert_eq!(post(vec![("origin", ours)]).await, 200);
    assert_eq!(post(vec![]).await, 200, "not a browser");
    assert!(audience(&app, "special_offers").await.is_empty());
}

#[tokio::test]
async fn the_public_page_answers_alike_for_customers_and_strangers() {
    let app = spawn_app().await;
    place(&app, &order_for("ada@example.com", true, true)).await;
    let get = app
        .anonymous()
        .get(app.url("/unsubscribe"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let csp = get.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(get.headers()["x-frame-options"], "DENY");
    assert_eq!(get.headers()["referrer-policy"], "same-origin");
    assert!(
        get.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = get.text().await.unwrap();
    assert!(
        html.contains("name=\"email\"")
            && html.contains("<label for=\"email\">")
            && html.contains("lang=\"en\"")
    );
    assert!(!html.contains("<script"));

    let (s1, _, known) = post_page(&app, "email=ADA%40example.com&special_offers=on").await;
    let (s2, _, stranger) = post_page(&app, "email=zed%40example.com&special_offers=on").await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(
        known.replace("ada@example.com", "X"),
        stranger.replace("zed@example.com", "X"),
        "same page apart from the address"
    );
    assert!(known.contains("Special offers") && !known.contains("Product updates"));
    assert_eq!(
        audience(&app, "special_offers").await,
        Vec::<String>::new(),
        "effective at once"
    );
    assert_eq!(
        audience(&app, "third_party_sharing").await,
        vec!["ada@example.com"],
        "only what was chosen"
    );
    // Nothing chosen means everything.
    let (_, _, all) = post_page(&app, "email=ada%40example.com").await;
    assert!(all.contains("Product updates") && all.contains("Sharing my details with partners"));
    assert!(audience(&app, "third_party_sharing").await.is_empty());
    // An invalid address gets the form back with a message, escaped.
    let (s, _, page) = post_page(&app, "email=%3Cscript%3E").await;
    assert_eq!(s, 422);
    assert!(page.contains("valid email") && !page.contains("<script>"));
    // An address holding a card number is refused the same way, and the
    // page never shows it back (nor its digits).
    for card in ["4111111111111111", "4111-1111-1111-1111"] {
        let (s, _, page) = post_page(&app, &format!("email={card}%40example.com")).await;
        assert_eq!(s, 422, "{card}");
        assert!(page.contains("valid email"), "{page}");
        assert!(
            !page.contains(card) && !page.contains("1111111111"),
            "{page}"
        );
    }
    // The storefront's form of the request too: a field error, no echo.
    let refused = opt_out(&app, json!({"email": "4111111111111111@example.com"})).await;
    assert_eq!(refused.status(), 422);
    let problem = refused.text().await.unwrap();
    assert!(
        problem.contains("looks_like_card_number") && !problem.contains("4111111111111111"),
        "{problem}"
    );
}

#[tokio::test]
async fn the_public_page_is_rate_limited_per_client() {
    let app = spawn_app_with(Options {
        serve: checkoutd::cli::ServeArgs {
            unsubscribe_rate_limit: Some(3),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(post_page(&app, "email=a%40example.com").await.0, 200);
    }
    let (status, headers, _) = post_page(&app, "email=a%40example.com").await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(post_page(&app, "email=a%40example.com").await.0, 429);
    assert_eq!(
        unsubscribe_refusals_logged(&app, 429).await,
        1,
        "the first 429 of the window is logged, where the limit began; not each"
    );
}

/// Access-log entries of refused `POST /unsubscribe`s with `status`.
async fn unsubscribe_refusals_logged(app: &TestApp, status: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM access_log
          WHERE action = 'POST /unsubscribe' AND outcome = 'denied' AND status = $1",
    )
    .bind(status)
    .fetch_one(&app.db().await)
    .await
    .unwrap()
}

/// Drives the real page in headless Chromium over the DevTools protocol:
/// open it, fill the email field, tick a box, click the button, read the
/// confirmation.
#[tokio::test]
async fn a_person_can_unsubscribe_in_a_browser() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncBufReadExt;
    use tokio_tungstenite::tungstenite::Message;

    let app = spawn_app().await;
    place(&app, &order_for("ada@example.com", true, false)).await;
    assert_eq!(
        audience(&app, "special_offers").await,
        vec!["ada@example.com"]
    );
    let profile = tempfile::tempdir().unwrap();
    let mut chromium = tokio::process::Command::new(crate::audit::chromium_binary())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(chromium.stderr.take().unwrap()).lines();
    // Generous deadlines throughout: a browser starting and rendering on a
    // loaded machine may be slow, and only a broken page waits them out.
    let patience = crate::helpers::PATIENCE;
    let ws_browser = tokio::time::timeout(patience, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("chromium exited without a DevTools URL")
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let port = ws_browser
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    // The browser lists its page (about:blank) once it has opened it.
    let devtools = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + patience;
    let page_ws = loop {
        let targets: Option<Value> = match devtools
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let page = targets.as_ref().and_then(|t| {
            t.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                .as_str()
                .map(str::to_owned)
        });
        if let Some(page) = page {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromium listed no page: {targets:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (mut ws, _) = tokio::time::timeout(patience, tokio_tungstenite::connect_async(page_ws))
        .await
        .expect("the DevTools WebSocket connects")
        .unwrap();
    let mut next_id = 0u64;
    let mut call = async |ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
                          method: &str,
                          params: Value|
           -> Value {
        next_id += 1;
        let id = next_id;
        ws.send(Message::text(
            json!({"id": id, "method": method, "params": params}).to_string(),
        ))
        .await
        .unwrap();
        loop {
            let msg = tokio::time::timeout(patience, ws.next())
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"))
                .unwrap()
                .unwrap();
            if let Ok(text) = msg.to_text() {
                let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                if v["id"] == id {
                    return v;
                }
            }
        }
    };
    let eval = |expr: &str| json!({"expression": expr, "returnByValue": true});
    call(&mut ws, "Page.enable", json!({})).await;
    call(
        &mut ws,
        "Page.navigate",
        json!({"url": app.url("/unsubscribe")}),
    )
    .await;
    let mut ready = false;
    let deadline = tokio::time::Instant::now() + patience;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = call(
            &mut ws,
            "Runtime.evaluate",
            eval("!!document.getElementById('email')"),
        )
        .await;
        if r["result"]["result"]["value"] == true {
            ready = true;
            break;
        }
    }
    assert!(ready, "the form loaded");
    call(
        &mut ws,
        "Runtime.evaluate",
        eval("document.getElementById('email').value = 'Ada@Example.com'; document.getElementById('special_offers').click(); document.querySelector('button[type=submit]').click(); true"),
    )
    .await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + patience;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = call(
            &mut ws,
            "Runtime.evaluate",
            eval("document.body ? document.body.innerText : ''"),
        )
        .await;
        text = r["result"]["result"]["value"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if text.contains("You are unsubscribed") {
            break;
        }
    }
    assert!(text.contains("You are unsubscribed"), "{text}");
    assert!(
        text.contains("ada@example.com") && text.contains("Special offers"),
        "{text}"
    );
    assert!(
        audience(&app, "special_offers").await.is_empty(),
        "the browser's opt-out took effect"
    );
    let _ = chromium.kill().await;
}

#[tokio::test]
async fn an_edited_withdrawal_never_re_enables_marketing_and_is_reported() {
    let app = spawn_app().await;
    place(&app, &order_for("ada@example.com", true, false)).await;
    place(&app, &order_for("grace@example.com", true, false)).await;
    assert_eq!(
        opt_out(
            &app,
            json!({"email": "ada@example.com", "purposes": ["special_offers"], "channel": "email"})
        )
        .await
        .status(),
        202
    );
    assert_eq!(
        audience(&app, "special_offers").await,
        vec!["grace@example.com"]
    );
    // Someone with write access to the file drops the append-only trigger
    // and un-withdraws the purpose.
    app.unguard("consent_events").await;
    let db = app.db().await;
    sqlx::query("UPDATE consent_events SET special_offers = 0")
        .execute(&db)
        .await
        .unwrap();
    // Fail closed: the export walks the whole ledger first, finds the edit,
    // and exports nobody until an auditor has looked (it used to skip only
    // the subject whose withdrawal failed its MAC).
    let r = app
        .client(Role::Marketing)
        .get(app.url("/v1/marketing/audience?purpose=special_offers"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body = r.text().await.unwrap();
    assert!(
        !body.contains("ada@example.com") && !body.contains("grace@"),
        "{body}"
    );
    let report: Value = app.get_json(Role::Auditor, "/v1/audit/report").await;
    let failures = report["report"]["failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f["table"] == "consent_events" && f["what"].as_str().unwrap().contains("MAC")),
        "{failures:?}"
    );
}

#[tokio::test]
async fn small_json_endpoints_refuse_large_other_and_malformed_bodies() {
    let app = spawn_app().await;
    let client = app.client(Role::Storefront);
    let big = format!("{{\"email\":\"{}@example.com\"}}", "a".repeat(5000));
    let r = client
        .post(app.url("/v1/consent/opt-out"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    expect_problem(r, 413).await;
    let r = client
        .post(app.url("/v1/consent/opt-out"))
        .body("email=a@b.co")
        .send()
        .await
        .unwrap();
    expect_problem(r, 415).await;
    let r = client
        .post(app.url("/v1/consent/opt-out"))
        .header("content-type", "application/json")
        .body(r#"{"email":"a@b.co","email":"c@d.co","purposes":"all","channel":"email"}"#)
        .send()
        .await
        .unwrap();
    expect_problem(r, 400).await;
}

#[tokio::test]
async fn relinked_tags_or_relabelled_subjects_never_re_enable_marketing() {
    // Ada consented, then declined at a later checkout.
    let app = spawn_app().await;
    let first = place(&app, &order_for("ada@example.com", true, false)).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = place(&app, &order_for("ada@example.com", false, false)).await;
    place(&app, &order_for("grace@example.com", true, false)).await;
    assert_eq!(
        audience(&app, "special_offers").await,
        vec!["grace@example.com"]
    );
    let db = app.db().await;
    // Point the later order at the earlier (granting) tag.
    sqlx::query("UPDATE orders SET consent_tag_id = (SELECT consent_tag_id FROM orders WHERE id = $1) WHERE id = $2")
        .bind(&first)
        .bind(&second)
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(
        audience(&app, "special_offers").await,
        vec!["grace@example.com"],
        "a relinked tag fails closed"
    );
    // Or move Ada's later contact record to a fresh subject with no history.
    let app = spawn_app().await;
    place(&app, &order_for("ada@example.com", true, false)).await;
    place(&app, &order_for("grace@example.com", true, false)).await;
    assert_eq!(
        opt_out(
            &app,
            json!({"email": "ada@example.com", "purposes": "all", "channel": "email"})
        )
        .await
        .status(),
        202
    );
    let db = app.db().await;
    sqlx::query("UPDATE contact_emails SET email_blind_index = $1 WHERE order_id = (SELECT id FROM orders WHERE seq = 1)")
        .bind(vec![0u8; 32])
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(
        audience(&app, "special_offers").await,
        vec!["grace@example.com"],
        "a relabelled subject is refused"
    );
}

#[tokio::test]
async fn verification_of_a_live_log_is_not_confused_by_concurrent_appends() {
    let app = spawn_app().await;
    place(&app, &order_for("ada@example.com", true, false)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let client = app.client(Role::Fulfillment);
        let url = app.url("/v1/shipments");
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 400 {
                assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
                n += 1;
            }
            n
        }));
    }
    let store = app.store().await;
    for _ in 0..10 {
        let status =
            checkoutd::audit::access_log::verify_chain(&store, app.keyring().access_log_key())
                .await;
        assert!(status.is_ok(), "{status:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total: i32 = futures_util::future::join_all(readers)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    assert!(total > 0);
    let status = checkoutd::audit::access_log::verify_chain(&store, app.keyring().access_log_key())
        .await
        .unwrap();
    assert!(status.entries >= total as u64);
}

/// The export itself fails closed on a ledger that lost an entry or had one
/// moved to another subject: before verified (the walk finds it) and after
/// (before the position the export already verified: the count, or the
/// whole walk every first page makes).
#[tokio::test]
async fn a_deleted_or_moved_withdrawal_stops_the_marketing_export_instead_of_re_adding_its_subject()
{
    const DELETE: &str = "DELETE FROM consent_events WHERE seq = $1";
    const MOVE: &str = "UPDATE consent_events SET email_blind_index = $2 WHERE seq = $1";
    for (already_verified, seq, edit) in [
        (false, 1, DELETE),
        (true, 1, DELETE),
        (true, 2, DELETE),
        (true, 1, MOVE),
    ] {
        let app = spawn_app().await;
        place(&app, &order_for("ada@example.com", true, false)).await;
        place(&app, &order_for("bob@example.com", true, false)).await;
        for who in ["ada@example.com", "cat@example.com"] {
            let r = opt_out(
                &app,
                json!({"email": who, "purposes": "all", "channel": "email"}),
            )
            .await;
            assert_eq!(r.status(), 202);
        }
        if already_verified {
            assert_eq!(
                audience(&app, "special_offers").await,
                vec!["bob@example.com"]
            );
        }
        app.unguard("consent_events").await;
        let db = app.db().await;
        let query = sqlx::query(edit).bind(seq);
        let query = if edit == MOVE {
            query.bind(vec![7u8; 32])
        } else {
            query
        };
        query.execute(&db).await.unwrap();
        let r = app
            .client(Role::Marketing)
            .get(app.url("/v1/marketing/audience?purpose=special_offers"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(
            status, 500,
            "verified before: {already_verified}, seq {seq}, {edit}: {body}"
        );
        assert!(!body.contains("ada@example.com"), "{body}");
    }
}

/// The same on an export's later pages, which check only what was appended
/// since the first (and count the rest): a deletion, a withdrawal moved to
/// seq 0, and the ledger rolled back to an older state and appended to
/// again are each caught there, and by the next first page.
#[tokio::test]
async fn a_ledger_edited_between_two_pages_of_an_export_stops_it() {
    const DELETE: &str = "DELETE FROM consent_events WHERE seq = 1";
    const TO_ZERO: &str = "UPDATE consent_events SET seq = 0 WHERE seq = 1";
    const ROLL_BACK: &str = "DELETE FROM consent_events WHERE seq = 2";
    for edit in [DELETE, TO_ZERO, ROLL_BACK] {
        let app = spawn_app().await;
        for who in ["bob@example.com", "dan@example.com"] {
            place(&app, &order_for(who, true, false)).await;
        }
        let db = app.db().await;
        // A backup of the head after the first withdrawal: genuine, older.
        let mut older_head: Option<(i64, Vec<u8>, Vec<u8>)> = None;
        for who in ["ada@example.com", "cat@example.com"] {
            let r = opt_out(
                &app,
                json!({"email": who, "purposes": "all", "channel": "email"}),
            )
            .await;
            assert_eq!(r.status(), 202);
            if older_head.is_none() {
                older_head = Some(
                    sqlx::query_as("SELECT seq, mac, head_mac FROM consent_events_head")
                        .fetch_one(&db)
                        .await
                        .unwrap(),
                );
            }
        }
        let page = |after: Option<String>| {
            let url = match after {
                None => app.url("/v1/marketing/audience?purpose=special_offers&limit=1"),
                Some(c) => app.url(&format!(
                    "/v1/marketing/audience?purpose=special_offers&limit=1&after={c}"
                )),
            };
            let client = app.client(Role::Marketing);
            async move {
                let r = client.get(url).send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        // Page 1 verifies the whole ledger (two withdrawals).
        let (status, first) = page(None).await;
        assert_eq!(status, 200, "{first}");
        let cursor = first["next_cursor"].as_str().unwrap().to_owned();
        app.unguard("consent_events").await;
        sqlx::query(edit).execute(&db).await.unwrap();
        if edit == ROLL_BACK {
            // Back to the state after the first withdrawal (its backed-up
            // head restored), then a new withdrawal on top.
            app.unguard("consent_events_head").await;
            let (seq, mac, head_mac) = older_head.clone().unwrap();
            sqlx::query("UPDATE consent_events_head SET seq = $1, mac = $2, head_mac = $3")
                .bind(seq)
                .bind(mac)
                .bind(head_mac)
                .execute(&db)
                .await
                .unwrap();
            let store = app.store().await;
            let key = app.keyring();
            assert_eq!(
                checkoutd::consent::verify_ledger(&store, key.consent_tag_key()).await,
                Ok(1),
                "a genuine older state"
            );
            let r = opt_out(
                &app,
                json!({"email": "eve@example.com", "purposes": "all", "channel": "email"}),
            )
            .await;
            assert_eq!(r.status(), 202);
        }
        let (status, second) = page(Some(cursor)).await;
        assert_eq!(status, 500, "{edit}: page 2 {second}");
        let (status, again) = page(None).await;
        assert_eq!(status, 500, "{edit}: a new first page {again}");
    }
}

/// A process that has not walked the whole ledger yet (just started, its
/// position taken from the anchors of an earlier report) walks it whole on
/// its first export page, even one with a cursor: a marketing client that
/// resumes a stored cursor would otherwise never meet a withdrawal moved
/// to another subject before that position.
#[tokio::test]
async fn a_new_process_walks_the_whole_ledger_before_a_page_with_a_cursor() {
    let app = spawn_app().await;
    for who in ["bob@example.com", "dan@example.com"] {
        place(&app, &order_for(who, true, false)).await;
    }
    place(&app, &order_for("ada@example.com", true, false)).await;
    for who in ["ada@example.com", "cat@example.com"] {
        let r = opt_out(
            &app,
            json!({"email": who, "purposes": "all", "channel": "email"}),
        )
        .await;
        assert_eq!(r.status(), 202);
    }
    let url = |after: Option<&str>| match after {
        None => app.url("/v1/marketing/audience?purpose=special_offers&limit=1"),
        Some(c) => app.url(&format!(
            "/v1/marketing/audience?purpose=special_offers&limit=1&after={c}"
        )),
    };
    let first: Value = app
        .client(Role::Marketing)
        .get(url(None))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    // An intact report keeps the ledger's head in the anchors file.
    let report: Value = app.get_json(Role::Auditor, "/v1/audit/report").await;
    assert_eq!(report["report"]["verified"], true, "{report:#}");
    app.unguard("consent_events").await;
    sqlx::query("UPDATE consent_events SET email_blind_index = $1 WHERE seq = 1")
        .bind(vec![7u8; 32])
        .execute(&app.db().await)
        .await
        .unwrap();
    let next = app.another_process().await;
    let r = next
        .client(Role::Marketing)
        .get(next.url(&format!(
            "/v1/marketing/audience?purpose=special_offers&limit=1&after={cursor}"
        )))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(!body.contains("ada@example.com"), "{body}");
}

#[tokio::test]
async fn a_deleted_or_reordered_withdrawal_is_reported() {
    for (sql, expect) in [
        ("DELETE FROM consent_events WHERE seq = 2", "missing"),
        (
            "DELETE FROM consent_events WHERE seq = 3",
            "deleted or truncated",
        ),
        (
            "UPDATE consent_events SET seq = 100 WHERE seq = 1; UPDATE consent_events SET seq = 1 WHERE seq = 2; \
             UPDATE consent_events SET seq = 2 WHERE seq = 100",
            "link",
        ),
        // A copy of a withdrawal numbered 0, outside the chain's 1, 2, 3.
        (
            "INSERT INTO consent_events (seq, id, email_blind_index, blind_index_version, kind, product_updates, new_offerings, partnerships, special_offers, third_party_sharing, channel, received_at, effective_at, recorded_at, reference_format_version, reference_kek_version, reference_wrapped_dek, reference_ciphertext, mac_key_version, prev_mac, mac) \
             SELECT 0, 'planted', email_blind_index, blind_index_version, kind, product_updates, \
             new_offerings, partnerships, special_offers, third_party_sharing, channel, \
             received_at, effective_at, recorded_at, reference_format_version, \
             reference_kek_version, reference_wrapped_dek, reference_ciphertext, \
             mac_key_version, prev_mac, mac FROM consent_events WHERE seq = 2",
            "below 1",
        ),
        // … or at the lowest number there is, which `seq > n` never reaches.
        (
            "INSERT INTO consent_events (seq, id, email_blind_index, blind_index_version, kind, product_updates, new_offerings, partnerships, special_offers, third_party_sharing, channel, received_at, effective_at, recorded_at, reference_format_version, reference_kek_version, reference_wrapped_dek, reference_ciphertext, mac_key_version, prev_mac, mac) \
             SELECT -9223372036854775808, 'planted', email_blind_index, blind_index_version, kind, \
             product_updates, new_offerings, partnerships, special_offers, third_party_sharing, \
             channel, received_at, effective_at, recorded_at, reference_format_version, \
             reference_kek_version, reference_wrapped_dek, reference_ciphertext, \
             mac_key_version, prev_mac, mac FROM consent_events WHERE seq = 2",
            "below 1",
        ),
    ] {
        let app = spawn_app().await;
        place(&app, &order_for("ada@example.com", true, false)).await;
        for who in ["ada@example.com", "bob@example.com", "cat@example.com"] {
            assert_eq!(
                opt_out(
                    &app,
                    json!({"email": who, "purposes": "all", "channel": "email"})
                )
                .await
                .status(),
                202
            );
        }
        let store = app.store().await;
        let key = app.keyring();
        assert_eq!(
            checkoutd::consent::verify_ledger(&store, key.consent_tag_key()).await,
            Ok(3)
        );
        let proof = app
            .get_json(Role::Auditor, "/v1/audit/consent?email=bob%40example.com")
            .await;
        assert_eq!(proof["verified"], true, "{proof:#}");
        assert_eq!(proof["ledger_verified"], true, "{proof:#}");
        app.unguard("consent_events").await;
        let db = app.db().await;
        let mut conn = db.acquire().await.unwrap();
        for statement in sql.split(';') {
            sqlx::query(statement).execute(&mut *conn).await.unwrap();
        }
        drop(conn);
        // Back on: what the audit names is the edit, not a guard left off.
        app.reguard().await;
        let err = checkoutd::consent::verify_ledger(&store, key.consent_tag_key())
            .await
            .unwrap_err();
        assert!(err.1.contains(expect), "{sql}: {err:?}");
        let report = checkoutd::audit::verify::verify(&store, &key, &|_, _| {})
            .await
            .unwrap();
        assert!(
            report.failures.iter().any(|f| f.table == "consent_events"),
            "{sql}: {:?}",
            report.failures
        );
        // The proof of the subject whose withdrawal is gone (or moved)
        // does not call itself verified: its own records all still verify.
        let proof = app
            .get_json(Role::Auditor, "/v1/audit/consent?email=bob%40example.com")
            .await;
        assert_eq!(proof["ledger_verified"], false, "{sql}: {proof:#}");
        assert_eq!(proof["verified"], false, "{sql}: {proof:#}");
    }
}

/// The withdrawal ledger's head row now (seq, MAC, head MAC), to be put
/// back later.
async fn ledger_head(db: &sqlx::AnyPool) -> (i64, Vec<u8>, Vec<u8>) {
    sqlx::query_as("SELECT seq, mac, head_mac FROM consent_events_head")
        .fetch_one(db)
        .await
        .unwrap()
}

/// The attack an earlier verified head catches: the ledger's withdrawals
/// after `seq` deleted and that older — genuine, MACed — head row put back.
async fn cut_ledger_back(app: &TestApp, db: &sqlx::AnyPool, seq: i64, mac: &[u8], head_mac: &[u8]) {
    app.unguard("consent_events").await;
    app.unguard("consent_events_head").await;
    sqlx::query("DELETE FROM consent_events WHERE seq > $1")
        .bind(seq)
        .execute(db)
        .await
        .unwrap();
    sqlx::query("UPDATE consent_events_head SET seq = $1, mac = $2, head_mac = $3")
        .bind(seq)
        .bind(mac)
        .bind(head_mac)
        .execute(db)
        .await
        .unwrap();
    app.reguard().await;
}

/// The withdrawal ledger's head row put back to a genuine older one over a
/// ledger that went on: refused by the database (a head names the last
/// withdrawal, and is never removed); with that guard off, the proof, the
/// export and the report find the withdrawals past the head.
#[tokio::test]
async fn an_older_ledger_head_written_back_is_refused_and_caught() {
    let app = spawn_app().await;
    let db = app.db().await;
    let (seq, mac, head_mac) = two_withdrawals(&app, &db).await;
    let put_back = || {
        sqlx::query("UPDATE consent_events_head SET seq = $1, mac = $2, head_mac = $3")
            .bind(seq)
            .bind(mac.clone())
            .bind(head_mac.clone())
            .execute(&db)
    };
    let refused = put_back().await.unwrap_err().to_string();
    assert!(
        refused.contains("must move forward to an entry"),
        "{refused}"
    );
    let refused = sqlx::query("DELETE FROM consent_events_head")
        .execute(&db)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("never removed"), "{refused}");
    let store = app.store().await;
    let key = app.keyring();
    assert_eq!(
        checkoutd::consent::verify_ledger(&store, key.consent_tag_key()).await,
        Ok(2)
    );

    app.unguard("consent_events_head").await;
    put_back().await.unwrap();
    let err = checkoutd::consent::verify_ledger(&store, key.consent_tag_key())
        .await
        .unwrap_err();
    assert!(err.1.contains("past the head"), "{err:?}");
    let proof = app
        .get_json(Role::Auditor, "/v1/audit/consent?email=bob%40example.com")
        .await;
    assert_eq!(proof["ledger_verified"], false, "{proof:#}");
    let r = app
        .client(Role::Marketing)
        .get(app.url("/v1/marketing/audience?purpose=special_offers"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    let report = checkoutd::audit::verify::verify(&store, &key, &|_, _| {})
        .await
        .unwrap();
    assert!(!report.consent_ledger.intact);
}

/// A capture time edited in the database into something that is not one —
/// or into PostgreSQL's `infinity`, which a bare cast takes — sorts as the
/// customer's latest choice. The window rule counts the withdrawal against
/// it (fail closed): the audit's report is still made and does not count
/// the customer as consenting, and an export goes on past them.
#[tokio::test]
async fn an_edited_capture_time_stops_neither_the_report_nor_an_export() {
    let app = spawn_app().await;
    let ada = place(&app, &order_for("ada@example.com", true, false)).await;
    place(&app, &order_for("grace@example.com", true, false)).await;
    let r = opt_out(
        &app,
        json!({"email": "ada@example.com", "purposes": ["special_offers"], "channel": "email"}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let db = app.db().await;
    let store = app.store().await;
    let key = app.keyring();
    for edited in [
        "x",
        "infinity",
        "2026-13-01T10:00:00.000Z",
        "2099-02-31T10:00:00.000Z",
        "2099-12-01T24:00:00.000Z",
    ] {
        app.unguard("consent_tags").await;
        sqlx::query(
            "UPDATE consent_tags SET captured_at = $1
              WHERE id = (SELECT consent_tag_id FROM orders WHERE id = $2)",
        )
        .bind(edited)
        .bind(&ada)
        .execute(&db)
        .await
        .unwrap();
        app.reguard().await;
        let report = checkoutd::audit::verify::verify(&store, &key, &|_, _| {})
            .await
            .unwrap_or_else(|e| panic!("{edited}: no report: {e}"));
        assert!(!report.verified, "{edited}");
        assert_eq!(
            report.consent.consenting.get("special_offers"),
            Some(&1),
            "{edited}: only Grace"
        );
        assert_eq!(
            audience(&app, "special_offers").await,
            ["grace@example.com"],
            "{edited}"
        );
    }
}

/// Ada (who consented to special offers) ordered; Bob, then Ada withdrew
/// everything. The ledger's head row between the two, to be put back.
async fn two_withdrawals(app: &TestApp, db: &sqlx::AnyPool) -> (i64, Vec<u8>, Vec<u8>) {
    place(app, &order_for("ada@example.com", true, false)).await;
    let out = |who: &str| json!({"email": who, "purposes": "all", "channel": "email"});
    assert_eq!(opt_out(app, out("bob@example.com")).await.status(), 202);
    let head = ledger_head(db).await;
    assert_eq!(opt_out(app, out("ada@example.com")).await.status(), 202);
    head
}

/// The ledger's head the last intact report saw outlives a restart (the
/// anchors file): the ledger cut back while the server was down fails the
/// next process's first consent proof, audience export and report.
#[tokio::test]
async fn a_ledger_cut_back_while_the_server_was_down_fails_the_next_proof() {
    let app = spawn_app().await;
    let db = app.db().await;
    let (seq, mac, head_mac) = two_withdrawals(&app, &db).await;
    let report: Value = app.get_json(Role::Auditor, "/v1/audit/report").await;
    assert_eq!(report["report"]["verified"], true);
    assert_eq!(report["report"]["consent_ledger"]["head_seq"], 2);

    cut_ledger_back(&app, &db, seq, &mac, &head_mac).await;
    let next = app.another_process().await;
    let proof: Value = next
        .get_json(Role::Auditor, "/v1/audit/consent?email=bob%40example.com")
        .await;
    assert_eq!(proof["ledger_verified"], false, "{proof:#}");
    // Ada's withdrawal is gone: the export fails closed, not exports her.
    let r = next
        .client(Role::Marketing)
        .get(next.url("/v1/marketing/audience?purpose=special_offers"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert!(!r.text().await.unwrap().contains("ada@example.com"));
    let report: Value = next.get_json(Role::Auditor, "/v1/audit/report").await;
    assert_eq!(report["report"]["verified"], false);
    assert_eq!(report["report"]["consent_ledger"]["anchored_at"], 2);
}

/// The ledger's last withdrawal deleted and its earlier — genuinely MACed —
/// head row put back verifies on its own; against the head an earlier
/// report saw (the next report of the server, `audit --since`) it does not.
#[tokio::test]
async fn a_cut_ledger_tail_with_an_older_head_fails_against_an_earlier_report() {
    let app = spawn_app().await;
    let db = app.db().await;
    let (seq, mac, head_mac) = two_withdrawals(&app, &db).await;
    let store = app.store().await;
    let key = app.keyring();
    let earlier = checkoutd::audit::verify::verify(&store, &key, &|_, _| {})
        .await
        .unwrap();
    assert!(earlier.verified, "{:#?}", earlier.failures);
    assert_eq!(earlier.consent_ledger.head_seq, Some(2));
    let job = std::sync::Arc::new(checkoutd::audit::job::ReportJob::with_freshness(
        std::time::Duration::ZERO,
    ));
    let shared: std::sync::Arc<dyn checkoutd::store::Store> =
        std::sync::Arc::new(app.store().await);
    let keyring = std::sync::Arc::new(app.keyring());
    let job_run = || async {
        job.latest_or_start(
            shared.clone(),
            keyring.clone(),
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap()
        .unwrap()
    };
    assert_eq!(job_run().await["report"]["verified"], true);
    // Ada's withdrawal goes, and the head from before it comes back.
    cut_ledger_back(&app, &db, seq, &mac, &head_mac).await;
    let alone = checkoutd::audit::verify::verify(&store, &key, &|_, _| {})
        .await
        .unwrap();
    assert!(alone.verified, "on its own it verifies: that is the attack");
    // The server's report job, anchored at its run before the cut.
    let report = job_run().await;
    assert_eq!(report["report"]["verified"], false);
    assert_eq!(report["report"]["consent_ledger"]["intact"], false);
    assert_eq!(report["report"]["consent_ledger"]["anchored_at"], 2);
    let since = checkoutd::audit::verify::Since::of(&earlier);
    let anchored = checkoutd::audit::verify::verify_since(&store, &key, &|_, _| {}, &since)
        .await
        .unwrap();
    assert!(!anchored.verified);
    assert!(!anchored.consent_ledger.intact);
    assert_eq!(anchored.consent_ledger.anchored_at, Some(2));
    assert!(
        anchored
            .failures
            .iter()
            .any(|f| f.table == "consent_events" && f.what.contains("rolled back")),
        "{:#?}",
        anchored.failures
    );
}

/// Two processes, two clocks: an opt-out recorded by a host whose clock is
/// behind the one that captured the customer's checkout still counts
/// against that checkout (its effective time is raised to the capture
/// time), and the ledger stays a verifiable chain.
#[tokio::test]
async fn an_opt_out_from_a_host_whose_clock_is_behind_still_counts() {
    let app = spawn_app().await;
    // The checkout was made ten minutes ago (the storefront says so).
    let mut order = order_for("skew@example.com", true, true);
    order["consent"]["captured_at"] = json!(checkoutd::ids::timestamp(
        time::OffsetDateTime::now_utc() - time::Duration::minutes(10)
    ));
    place(&app, &order).await;
    assert_eq!(audience(&app, "special_offers").await, ["skew@example.com"]);

    let withdrawal = checkoutd::consent::parse_opt_out(json!({
        "email": "Skew@Example.com", "purposes": ["special_offers"], "channel": "email"
    }))
    .unwrap_or_else(|_| panic!("a valid opt-out"));
    let ledger = checkoutd::consent::Ledger::new(std::sync::Arc::new(
        checkoutd::crypto::keyring::KeyringHandle::new(app.keyring(), None),
    ));
    let behind = "2000-01-01T00:00:00.000Z".to_owned();
    let store = app.store().await;
    let answered = ledger
        .withdraw_at(&store, &withdrawal, behind.clone())
        .await
        .unwrap();
    assert_eq!(answered, behind, "the answer is the recording clock's");

    assert!(audience(&app, "special_offers").await.is_empty());
    assert_eq!(
        audience(&app, "third_party_sharing").await,
        ["skew@example.com"],
        "only the purpose withdrawn"
    );
    let (effective_at, recorded_at): (String, String) =
        sqlx::query_as("SELECT effective_at, recorded_at FROM consent_events")
            .fetch_one(&app.db().await)
            .await
            .unwrap();
    assert_eq!(recorded_at, behind);
    assert!(effective_at > behind, "{effective_at}");
    let report = checkoutd::audit::verify::verify(&store, &app.keyring(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.verified, "{:#?}", report.failures);

    // A checkout that ticks the box again more than five minutes after
    // the withdrawal took effect (at the first checkout's capture) re-grants.
    place(&app, &order_for("skew@example.com", true, false)).await;
    assert_eq!(audience(&app, "special_offers").await, ["skew@example.com"]);
    let report: Value = app.get_json(Role::Auditor, "/v1/audit/report").await;
    assert_eq!(
        report["report"]["consent"]["consenting"]["special_offers"], 1,
        "{report:#}"
    );
}

/// The small-body routes stop reading at 4 KiB: an opt-out or a dispatch
/// far over it (here over axum's own 2 MiB default, which a missing limit
/// would fall back to) is the same `body-too-large` problem as an order's.
#[tokio::test]
async fn small_body_routes_refuse_a_large_body_as_body_too_large() {
    let app = spawn_app().await;
    let big = {
        let mut text = String::from("{\"email\": \"ada@example.com\", \"pad\": \"");
        text.push_str(&"a".repeat(3 * 1024 * 1024));
        text.push_str("\"}");
        text
    };
    let order_id = "0190f6a0-0000-7000-8000-000000000001";
    for (role, path) in [
        (Role::Storefront, "/v1/consent/opt-out".to_owned()),
        (
            Role::Fulfillment,
            format!("/v1/shipments/{order_id}/dispatch"),
        ),
    ] {
        let r = app
            .client(role)
            .post(app.url(&path))
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        let problem = expect_problem(r, 413).await;
        assert_eq!(
            problem["type"], "urn:checkoutd:problem:body-too-large",
            "{path}"
        );
        assert!(!problem.to_string().contains("ada@example.com"));
    }
}

/// An order the storefront retries after an opt-out the customer sent
/// meanwhile (its first attempt got a 503; nothing of it was kept) keeps
/// its place before the opt-out when it names its checkout time: the "yes"
/// ticked at checkout does not come back. Without a checkout time the
/// choices count from when checkoutd took the order — after the opt-out,
/// but within the five minutes in which the opt-out still wins.
/// A checkout time in the future, too old, or not RFC 3339 is a 422 naming
/// the field.
#[tokio::test]
async fn an_order_retried_after_an_opt_out_keeps_its_checkout_time() {
    let app = spawn_app().await;
    let checked_out = time::OffsetDateTime::now_utc() - time::Duration::minutes(2);
    let stamp = |at: time::OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let opt_out_of_everything = |email: &'static str| {
        let app = &app;
        async move {
            let r = opt_out(
                app,
                json!({"email": email, "purposes": "all", "channel": "email"}),
            )
            .await;
            assert_eq!(r.status(), 202);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // The customer checked out two minutes ago (the storefront's first
    // attempt failed), then opted out of everything by email.
    opt_out_of_everything("ada@example.com").await;
    // The retry, with the checkout time (given in another offset: stored
    // in UTC).
    let mut retried = order_for("ada@example.com", true, true);
    retried["consent"]["captured_at"] =
        json!(stamp(checked_out.to_offset(time::macros::offset!(+02:00))));
    let order = place(&app, &retried).await;
    assert!(
        audience(&app, "special_offers").await.is_empty(),
        "the opt-out sent after the checkout stands"
    );
    assert!(audience(&app, "third_party_sharing").await.is_empty());
    let audit = app
        .get_json(Role::Auditor, &format!("/v1/audit/orders/{order}"))
        .await;
    let tag = &audit["consent_tags"][0];
    assert_eq!(
        tag["captured_at"].as_str().unwrap(),
        checkoutd::ids::timestamp(checked_out),
        "{audit:#}"
    );
    assert_eq!(audit["verified"], true, "the tag's MAC covers the time");

    // Without a checkout time: counted from now, after the opt-out — yet
    // within five minutes of it, where a retry of a checkout made before
    // it looks the same, so the opt-out still stands.
    place(&app, &order_for("grace@example.com", true, false)).await;
    opt_out_of_everything("grace@example.com").await;
    place(&app, &order_for("grace@example.com", true, false)).await;
    assert!(audience(&app, "special_offers").await.is_empty());

    // A storefront clock running ahead (within the skew allowed): the
    // choices date from when checkoutd took the order, never later.
    let mut ahead = order_for("grace@example.com", true, false);
    ahead["consent"]["captured_at"] = json!(stamp(
        time::OffsetDateTime::now_utc() + time::Duration::minutes(3)
    ));
    let r = app.post_order("checkout-time-ahead", &ahead).await;
    assert_eq!(r.status(), 201);
    let placed: Value = r.json().await.unwrap();
    let audit = app
        .get_json(
            Role::Auditor,
            &format!("/v1/audit/orders/{}", placed["order_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(
        audit["consent_tags"][0]["captured_at"], placed["created_at"],
        "{audit:#}"
    );

    let now = time::OffsetDateTime::now_utc();
    for (n, (value, code)) in [
        (
            json!(stamp(now + time::Duration::minutes(10))),
            "in_the_future",
        ),
        (json!(stamp(now - time::Duration::days(8))), "too_old"),
        (json!("2026-11-29 17:05:00"), "invalid_timestamp"),
        (json!("2026-11-29T17:05:00"), "invalid_timestamp"),
        (json!(1_764_435_900), "invalid_type"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut o = order_for("ada@example.com", true, false);
        o["consent"]["captured_at"] = value.clone();
        let r = app.post_order(&format!("bad-checkout-time-{n}"), &o).await;
        let problem = expect_problem(r, 422).await;
        let errors = problem["errors"].as_array().unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e["field"] == "consent.captured_at" && e["code"] == code),
            "{value}: {problem:#}"
        );
    }
}
