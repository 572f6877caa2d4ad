//! Order intake over real TLS with the storefront certificate.

use checkoutd::crypto::DataClass;
use checkoutd::crypto::envelope::{self, Binding, Envelope};
use checkoutd::crypto::keyring::Keyring;
use checkoutd::server::identity::Role;
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

use crate::helpers::{TestApp, Versions, client_with, expect_problem, spawn_app};

/// A card expiry year a few years ahead of today, so that the suite's
/// cards never expire.
pub fn exp_year() -> i32 {
    time::OffsetDateTime::now_utc().year() + 4
}

pub fn order_json() -> Value {
    json!({
        "storefront_order_ref": "A-1001",
        "customer": {"name": "Ada Lovelace", "company": "Analytical Engines Ltd",
                     "email": "Ada@Example.com", "phone": "+1 949 555 0100"},
        "billing_address": {"line1": "51 Columbia", "line2": "Suite 200", "city": "Aliso Viejo",
                            "region": "CA", "postal_code": "92656", "country": "US"},
        "items": [{"sku": "FAXSTF-PRO", "description": "Fax stuff", "quantity": 2, "unit_price_minor": 4999}],
        "currency": "USD",
        "card": {"number": "4111 1111 1111 1111", "exp_month": 12, "exp_year": exp_year(),
                 "cvc": "123", "holder_name": "Ada Lovelace"},
        "consent": {"product_updates": false, "new_offerings": false, "partnerships": false,
                    "special_offers": true, "third_party_sharing": false,
                    "policy_version": "2002-06-05"}
    })
}

impl TestApp {
    pub async fn post_order(&self, key: &str, body: &Value) -> reqwest::Response {
        self.client(Role::Storefront)
            .post(self.url("/v1/orders"))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// The SQLite file (SQLite runs only; see `TestDatabase`).
    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("data").join("checkoutd.db")
    }

    pub fn keyring(&self) -> Keyring {
        let data = self.dir.path().join("data");
        let master =
            checkoutd::crypto::master::MasterKey::load_dev(&data.join("master.key")).unwrap();
        Keyring::load(&data.join("keyring.json"), &master).unwrap()
    }
}

async fn created(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body
}

/// Reads one record's envelope and binding from the database.
async fn envelope_of(
    db: &sqlx::AnyPool,
    table: &str,
    class: DataClass,
    order_id: &str,
) -> (Binding, Envelope) {
    let row = sqlx::query(&format!(
        "SELECT id, order_id, format_version, kek_version, wrapped_dek, ciphertext FROM {table} WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_one(db)
    .await
    .unwrap();
    let binding = Binding {
        class,
        order_id: Uuid::parse_str(row.get::<String, _>("order_id").as_str()).unwrap(),
        record_id: Uuid::parse_str(row.get::<String, _>("id").as_str()).unwrap(),
    };
    let env = Envelope {
        format_version: u8::try_from(row.get::<i64, _>("format_version")).unwrap(),
        kek_version: u32::try_from(row.get::<i64, _>("kek_version")).unwrap(),
        wrapped_dek: row.get("wrapped_dek"),
        ciphertext: row.get("ciphertext"),
    };
    (binding, env)
}

fn open_json(ring: &Keyring, binding: &Binding, env: &Envelope) -> Value {
    serde_json::from_slice(&envelope::open(ring, binding, env).unwrap()).unwrap()
}

#[tokio::test]
async fn json_order_is_accepted_encrypted_and_summarised_without_card_data() {
    let app = spawn_app().await;
    let response = app.post_order("json-1", &order_json()).await;
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let text = response.text().await.unwrap();
    assert!(
        !text.contains("4111111111111111") && !text.contains("4111 1111"),
        "no PAN in the response"
    );
    assert!(!text.contains("Ada"), "no personal data in the response");
    let body: Value = serde_json::from_str(&text).unwrap();
    let id = body["order_id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/orders/{id}"));
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["card"], json!({"brand": "visa", "last4": "1111"}));
    assert_eq!(body["total_minor"], 9998);
    assert_eq!(body["consent"]["subject"], "customer");
    assert_eq!(body["consent"]["purposes"]["special_offers"], true);
    assert_eq!(body["consent"]["purposes"]["product_updates"], false);
    assert_eq!(body["consent"]["policy_version"], "2002-06-05");

    let summary = app
        .client(Role::Storefront)
        .get(app.url(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(summary.status(), 200);
    let text = summary.text().await.unwrap();
    for secret in [
        "4111111111111111",
        "4111 1111",
        "Ada",
        "ada@",
        "Columbia",
        "+1 949 555 0100",
    ] {
        assert!(!text.contains(secret), "{secret} in summary {text}");
    }
    let s: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(s["items"][0]["sku"], "FAXSTF-PRO");
    assert_eq!(s["items"][0]["line_total_minor"], 9998);
    assert_eq!(s["card"]["last4"], "1111");
    assert_eq!(s["consent"]["verified"], true, "the tag's MAC was checked");
    let mut summary_consent = s["consent"].clone();
    summary_consent.as_object_mut().unwrap().remove("verified");
    assert_eq!(summary_consent, body["consent"]);
    assert_eq!(s["gift"], false);

    // Every record opens with the keyring; the CVC is nowhere.
    let db = app.db().await;
    let ring = app.keyring();
    let (b, e) = envelope_of(&db, "payment_cards", DataClass::Card, id).await;
    let card = open_json(&ring, &b, &e);
    assert_eq!(
        card,
        json!({"pan": "4111111111111111", "exp_month": 12, "exp_year": exp_year(), "holder_name": "Ada Lovelace"})
    );
    let (b, e) = envelope_of(&db, "billing_details", DataClass::Billing, id).await;
    let billing = open_json(&ring, &b, &e);
    assert_eq!(billing["email"], "ada@example.com");
    assert_eq!(billing["address"]["line1"], "51 Columbia");
    // No shipping address given: the ship-to is the billing address.
    let (b, e) = envelope_of(&db, "shipping_details", DataClass::Shipping, id).await;
    let shipping = open_json(&ring, &b, &e);
    assert_eq!(shipping["address"], billing["address"]);
    assert_eq!(shipping["name"], "Ada Lovelace");
    assert!(
        shipping.get("email").is_none(),
        "shipping records carry no email"
    );
    let (b, e) = envelope_of(&db, "contact_emails", DataClass::Contact, id).await;
    let contact = open_json(&ring, &b, &e);
    assert_eq!(contact, json!({"email": "ada@example.com"}));
    // Invariant 3, "not even encrypted": no envelope holds the CVC (`123`)
    // or a member for it.
    for plaintext in [&card, &billing, &shipping, &contact] {
        let text = plaintext.to_string();
        assert!(
            !text.contains("123") && !text.contains("cvc") && !text.contains("cvv"),
            "{text}"
        );
    }
}

/// Posts `body` as an HTML form's order under `key`.
async fn post_form(app: &TestApp, key: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.client(Role::Storefront)
        .post(app.url("/v1/orders"))
        .header("idempotency-key", key)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn form_posts_become_the_same_order() {
    let app = spawn_app().await;
    let body = "customer.name=Ada+Lovelace&customer.email=ada%40example.com&customer.phone=%2B1+949+555+0100\
&billing_address.line1=51+Columbia&billing_address.city=Aliso+Viejo&billing_address.postal_code=92656\
&billing_address.country=US&items.0.sku=FAXSTF-PRO&items.0.quantity=3&items.0.unit_price_minor=100\
&items.1.sku=GIFTWRAP&items.1.quantity=1&items.1.unit_price_minor=50\
&currency=EUR&card.number=5555+5555+5555+4444&card.exp_month=1&card.exp_year={YEAR}&card.cvc=321\
&consent.product_updates=on&consent.policy_version=2002-06-05"
        .replace("{YEAR}", &exp_year().to_string());
    let response = post_form(&app, "form-1", body).await;
    let body = created(response).await;
    assert_eq!(
        body["card"],
        json!({"brand": "mastercard", "last4": "4444"})
    );
    assert_eq!(body["total_minor"], 350);
    assert_eq!(body["currency"], "EUR");
    assert_eq!(body["consent"]["purposes"]["product_updates"], true);
    assert_eq!(body["consent"]["purposes"]["special_offers"], false);
}

/// A checkout page sends every input of the sections the customer left
/// alone — empty, except their country drop-downs, which hold the shop's
/// pre-selected country. Such a section is absent in a form; in JSON a
/// country alone is a client's bug and is refused.
#[tokio::test]
async fn form_sections_left_alone_with_a_preselected_country_are_absent() {
    let app = spawn_app().await;
    let body = "customer.name=Ada+Lovelace&customer.email=ada%40example.com&customer.phone=%2B1+949+555+0100\
&billing_address.line1=51+Columbia&billing_address.city=Aliso+Viejo&billing_address.postal_code=92656\
&billing_address.country=US&items.0.sku=FAXSTF-PRO&items.0.quantity=1&items.0.unit_price_minor=100\
&currency=USD&card.number=5555+5555+5555+4444&card.exp_month=1&card.exp_year={YEAR}&card.cvc=321\
&consent.policy_version=2002-06-05\
&shipping_address.line1=&shipping_address.line2=&shipping_address.city=&shipping_address.postal_code=\
&shipping_address.country=US\
&gift_recipient.name=&gift_recipient.message=&gift_recipient.address.line1=&gift_recipient.address.city=\
&gift_recipient.address.postal_code=&gift_recipient.address.country=GB"
        .replace("{YEAR}", &exp_year().to_string());
    let response = post_form(&app, "form-untouched", body.clone()).await;
    let created = created(response).await;
    let list = app.shipments("").await;
    let shipment = &list["shipments"][0];
    assert_eq!(shipment["order_id"], created["order_id"]);
    assert_eq!(shipment["gift"], false, "no gift recipient");
    assert_eq!(
        shipment["ship_to"]["address"]["line1"], "51 Columbia",
        "shipped to the billing address"
    );

    // A section with a field filled in besides the country is validated.
    let partly = body.replace("shipping_address.city=&", "shipping_address.city=Paris&");
    let r = post_form(&app, "form-partly", partly).await;
    let problem = expect_problem(r, 422).await;
    assert!(
        problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["field"] == "shipping_address.line1" && e["code"] == "required"),
        "{problem}"
    );
    // JSON: a country alone is not a shipping address.
    let mut order = order_json();
    order["shipping_address"] = json!({"country": "US"});
    let errors = errors_of(&app, &order).await;
    assert!(
        errors.contains(&("shipping_address.line1".to_owned(), "required".to_owned())),
        "{errors:?}"
    );
}

#[tokio::test]
async fn gift_orders_keep_the_recipient_apart_and_drop_the_shipping_address() {
    let app = spawn_app().await;
    let mut order = order_json();
    order["shipping_address"] = json!({"line1": "1 Dropped Lane", "city": "Nowhere", "postal_code": "1",
                                        "country": "GB"});
    order["gift_recipient"] = json!({
        "name": "Charles Babbage",
        "address": {"line1": "1 Dorset Street", "city": "London", "postal_code": "W1U 4EG", "country": "GB"},
        "phone": "+44 20 7946 0000",
        "message": "Happy birthday!\nAda"
    });
    let body = created(app.post_order("gift-1", &order).await).await;
    let id = body["order_id"].as_str().unwrap();
    let db = app.db().await;
    let ring = app.keyring();

    let marker = sqlx::query("SELECT ship_to, CASE WHEN ciphertext IS NULL THEN 1 ELSE 0 END AS empty, consent_tag_id FROM shipping_details WHERE order_id = $1")
        .bind(id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(marker.get::<String, _>("ship_to"), "gift_recipient");
    assert!(
        marker.get::<i64, _>("empty") == 1,
        "a gift's shipping row is only a marker"
    );

    let (b, e) = envelope_of(&db, "gift_recipients", DataClass::Recipient, id).await;
    let recipient = open_json(&ring, &b, &e);
    assert_eq!(recipient["name"], "Charles Babbage");
    assert_eq!(recipient["message"], "Happy birthday!\nAda");
    assert_eq!(recipient["address"]["line1"], "1 Dorset Street");

    // The recipient's tag consents to nothing, on a fulfillment-only basis,
    // and the shipping marker points at it.
    let tag = sqlx::query(
        "SELECT t.id, subject, basis, product_updates + new_offerings + partnerships + special_offers
                + third_party_sharing AS any_purpose
           FROM gift_recipients g JOIN consent_tags t ON t.id = g.consent_tag_id WHERE g.order_id = $1",
    )
    .bind(id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(tag.get::<String, _>("subject"), "gift_recipient");
    assert_eq!(tag.get::<String, _>("basis"), "fulfillment_only");
    assert_eq!(tag.get::<i64, _>("any_purpose"), 0);
    assert_eq!(
        tag.get::<String, _>("id"),
        marker.get::<String, _>("consent_tag_id")
    );

    // The shipping address sent alongside was not stored anywhere.
    drop(db);
    for (what, bytes) in app.database_bytes().await {
        assert!(!contains(&bytes, b"Dropped Lane"), "{what}");
    }
    let summary: Value = app
        .get_json(Role::Storefront, &format!("/v1/orders/{id}"))
        .await;
    assert_eq!(summary["gift"], true);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn errors_of(app: &TestApp, order: &Value) -> Vec<(String, String)> {
    let response = app.post_order(&format!("k-{}", rand_suffix()), order).await;
    let body = expect_problem(response, 422).await;
    assert_eq!(body["type"], "urn:checkoutd:problem:invalid-order");
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["message"].is_string());
            (
                e["field"].as_str().unwrap().to_owned(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

#[tokio::test]
async fn bad_luhn_and_missing_email_are_reported_together_without_echoing() {
    let app = spawn_app().await;
    let mut order = order_json();
    order["card"]["number"] = json!("4111 1111 1111 1112");
    order["customer"].as_object_mut().unwrap().remove("email");
    let response = app.post_order("bad-1", &order).await;
    let text = response.text().await.unwrap();
    assert!(!text.contains("4111 1111"), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let fields: Vec<(&str, &str)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["field"].as_str().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(fields.len(), 2, "{fields:?}");
    assert!(fields.contains(&("card.number", "luhn")));
    assert!(fields.contains(&("customer.email", "required")));
    // Nothing was stored.
    let db = app.db().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn every_validation_rule_names_its_field() {
    let app = spawn_app().await;
    type Mutation = fn(&mut Value);
    let cases: Vec<(Mutation, &str, &str)> = vec![
        (
            |o| {
                o["customer"].as_object_mut().unwrap().remove("name");
            },
            "customer.name",
            "required",
        ),
        (
            |o| o["customer"]["email"] = json!("ada-at-example"),
            "customer.email",
            "invalid_email",
        ),
        (
            |o| o["customer"]["phone"] = json!("12345"),
            "customer.phone",
            "invalid_phone",
        ),
        (
            |o| {
                o["customer"].as_object_mut().unwrap().remove("phone");
            },
            "customer.phone",
            "required",
        ),
        (
            |o| o["customer"]["company"] = json!("x".repeat(257)),
            "customer.company",
            "too_long",
        ),
        (
            |o| {
                o.as_object_mut().unwrap().remove("billing_address");
            },
            "billing_address",
            "required",
        ),
        (
            |o| {
                o["billing_address"]
                    .as_object_mut()
                    .unwrap()
                    .remove("line1");
            },
            "billing_address.line1",
            "required",
        ),
        (
            |o| {
                o["billing_address"].as_object_mut().unwrap().remove("city");
            },
            "billing_address.city",
            "required",
        ),
        (
            |o| {
                o["billing_address"]
                    .as_object_mut()
                    .unwrap()
                    .remove("postal_code");
            },
            "billing_address.postal_code",
            "required",
        ),
        (
            |o| o["billing_address"]["country"] = json!("USA"),
            "billing_address.country",
            "invalid_country",
        ),
        (
            |o| o["shipping_address"] = json!({"line1": "x", "city": "y", "postal_code": "z"}),
            "shipping_address.country",
            "required",
        ),
        (
            |o| o["gift_recipient"] = json!({"address": {"line1": "x", "city": "y", "postal_code": "z", "country": "GB"}}),
            "gift_recipient.name",
            "required",
        ),
        (
            |o| o["gift_recipient"] = json!({"name": "C"}),
            "gift_recipient.address",
            "required",
        ),
        (
            |o| o["gift_recipient"] = json!({"name": "C", "address": {"line1": "x", "city": "y", "postal_code": "z", "country": "GB"}, "message": "m".repeat(1001)}),
            "gift_recipient.message",
            "too_long",
        ),
        (|o| o["items"] = json!([]), "items", "required"),
        (
            |o| {
                o.as_object_mut().unwrap().remove("items");
            },
            "items",
            "required",
        ),
        (
            |o| {
                o["items"] = json!(vec![
                    json!({"sku": "A", "quantity": 1, "unit_price_minor": 1});
                    101
                ])
            },
            "items",
            "too_many",
        ),
        (
            |o| o["items"][0]["quantity"] = json!(0),
            "items.0.quantity",
            "out_of_range",
        ),
        (
            |o| o["items"][0]["quantity"] = json!(1.5),
            "items.0.quantity",
            "invalid_type",
        ),
        (
            |o| o["items"][0]["unit_price_minor"] = json!(-1),
            "items.0.unit_price_minor",
            "out_of_range",
        ),
        (
            |o| {
                o["items"][0].as_object_mut().unwrap().remove("sku");
            },
            "items.0.sku",
            "required",
        ),
        (
            |o| o["currency"] = json!("XYZ"),
            "currency",
            "invalid_currency",
        ),
        (
            |o| {
                o.as_object_mut().unwrap().remove("currency");
            },
            "currency",
            "required",
        ),
        (
            |o| o["card"]["number"] = json!("4111-1111-1111-111a"),
            "card.number",
            "invalid_format",
        ),
        (
            |o| o["card"]["number"] = json!("378282246310005 0"),
            "card.number",
            "invalid_length",
        ),
        (
            |o| o["card"]["number"] = json!("9999999999999995"),
            "card.number",
            "unknown_brand",
        ),
        (
            |o| o["card"]["number"] = json!(4111111111111111u64),
            "card.number",
            "invalid_type",
        ),
        (
            |o| o["card"]["exp_month"] = json!(13),
            "card.exp_month",
            "out_of_range",
        ),
        (
            |o| o["card"]["exp_year"] = json!(2020),
            "card.exp_year",
            "expired",
        ),
        (
            |o| {
                o["card"].as_object_mut().unwrap().remove("cvc");
            },
            "card.cvc",
            "required",
        ),
        (
            |o| o["card"]["cvc"] = json!("1234"),
            "card.cvc",
            "invalid_cvc",
        ),
        (
            |o| {
                o.as_object_mut().unwrap().remove("consent");
            },
            "consent",
            "required",
        ),
        (
            |o| {
                o["consent"]
                    .as_object_mut()
                    .unwrap()
                    .remove("policy_version");
            },
            "consent.policy_version",
            "required",
        ),
        (
            |o| o["consent"]["policy_version"] = json!("2024-01-01"),
            "consent.policy_version",
            "unknown_policy_version",
        ),
        (
            |o| o["consent"]["special_offers"] = json!("yes"),
            "consent.special_offers",
            "invalid_type",
        ),
        (
            |o| o["favourite_colour"] = json!("blue"),
            "favourite_colour",
            "unknown_field",
        ),
        (
            |o| o["card"]["pin"] = json!("0000"),
            "card.pin",
            "unknown_field",
        ),
        (
            |o| o["customer"]["name"] = json!("Ada\u{0}"),
            "customer.name",
            "control_character",
        ),
    ];
    for (mutate, field, code) in cases {
        let mut order = order_json();
        mutate(&mut order);
        let errors = errors_of(&app, &order).await;
        assert!(
            errors.contains(&(field.to_owned(), code.to_owned())),
            "expected {field}/{code}, got {errors:?}"
        );
    }
    // A wrong month and a wrong year are both reported; a year more than
    // 20 years ahead is a typing mistake.
    let this_year = i64::from(time::OffsetDateTime::now_utc().year());
    for (month, year, expected) in [
        (
            13,
            1999,
            vec![
                ("card.exp_month", "out_of_range"),
                ("card.exp_year", "out_of_range"),
            ],
        ),
        (12, this_year + 21, vec![("card.exp_year", "out_of_range")]),
    ] {
        let mut order = order_json();
        order["card"]["exp_month"] = json!(month);
        order["card"]["exp_year"] = json!(year);
        let errors = errors_of(&app, &order).await;
        let expected: Vec<(String, String)> = expected
            .into_iter()
            .map(|(f, c)| (f.to_owned(), c.to_owned()))
            .collect();
        assert_eq!(errors, expected, "{month}/{year}");
    }
    let mut order = order_json();
    order["card"]["exp_year"] = json!(this_year + 20);
    assert_eq!(app.post_order("twenty-years", &order).await.status(), 201);
}

#[tokio::test]
async fn idempotency_replays_rejects_reuse_and_requires_the_header() {
    let app = spawn_app().await;
    let original = app.post_order("same-key", &order_json()).await;
    assert_eq!(original.status(), 201);
    assert!(!original.headers().contains_key("idempotent-replayed"));
    let original_bytes = original.bytes().await.unwrap();
    let first: Value = serde_json::from_slice(&original_bytes).unwrap();
    let replay = app.post_order("same-key", &order_json()).await;
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(
        replay.bytes().await.unwrap(),
        original_bytes,
        "the first response, byte for byte"
    );
    // The same order with another CVC is the same request (the stored hash
    // ignores the CVC); with members in another order too.
    let mut other_cvc = order_json();
    other_cvc["card"]["cvc"] = json!("999");
    let r = app.post_order("same-key", &other_cvc).await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");

    let mut other = order_json();
    other["items"][0]["quantity"] = json!(3);
    let reuse = app.post_order("same-key", &other).await;
    let body = expect_problem(reuse, 422).await;
    assert_eq!(body["type"], "urn:checkoutd:problem:idempotency-key-reused");

    let missing = app
        .client(Role::Storefront)
        .post(app.url("/v1/orders"))
        .json(&order_json())
        .send()
        .await
        .unwrap();
    let body = expect_problem(missing, 400).await;
    assert_eq!(
        body["type"],
        "urn:checkoutd:problem:idempotency-key-missing"
    );
    assert_eq!(body["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(body["errors"][0]["code"], "required");
    for bad in ["", "has space", &"k".repeat(256)] {
        let r = app.post_order(bad, &order_json()).await;
        let body = expect_problem(r, 400).await;
        assert_eq!(body["errors"][0]["field"], "Idempotency-Key");
        assert_eq!(body["errors"][0]["code"], "invalid");
    }
    // Two keys: which one the client meant is not guessed.
    let two = app
        .client(Role::Storefront)
        .post(app.url("/v1/orders"))
        .header("idempotency-key", "two-a")
        .header("idempotency-key", "two-b")
        .json(&order_json())
        .send()
        .await
        .unwrap();
    let body = expect_problem(two, 400).await;
    assert_eq!(
        body["type"],
        "urn:checkoutd:problem:idempotency-key-invalid"
    );
    assert_eq!(body["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(body["errors"][0]["code"], "repeated");
    // Two Content-Types, even two equal ones: 400 naming the header, not a
    // 415 telling the client to send what it sent.
    let two_types = app
        .client(Role::Storefront)
        .post(app.url("/v1/orders"))
        .header("idempotency-key", "two-types")
        .header("content-type", "application/json")
        .header("content-type", "application/json")
        .body(order_json().to_string())
        .send()
        .await
        .unwrap();
    let body = expect_problem(two_types, 400).await;
    assert_eq!(body["type"], "urn:checkoutd:problem:content-type-repeated");
    assert_eq!(body["errors"][0]["field"], "Content-Type");
    assert_eq!(body["errors"][0]["code"], "repeated");
    // A media type not taken: 415 naming the header.
    let plain = app
        .client(Role::Storefront)
        .post(app.url("/v1/orders"))
        .header("idempotency-key", "plain-text")
        .header("content-type", "text/plain")
        .body(order_json().to_string())
        .send()
        .await
        .unwrap();
    let body = expect_problem(plain, 415).await;
    assert_eq!(body["type"], "urn:checkoutd:problem:unsupported-media-type");
    assert_eq!(body["errors"][0]["field"], "Content-Type");
    assert_eq!(body["errors"][0]["code"], "unsupported");
    // Neither stored anything under its key.
    let retry = app.post_order("two-types", &order_json()).await;
    assert_eq!(retry.status(), 201);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    // A quoted structured-field string is the same key as its content.
    let quoted = app.post_order("\"same-key\"", &order_json()).await;
    assert_eq!(quoted.headers()["idempotent-replayed"], "true");

    // Keys are scoped to the client certificate: another storefront's
    // certificate with the same key makes its own order.
    let shop2 = app
        .pki
        .issue_client("second shop", &[Role::Storefront.uri()])
        .unwrap();
    let client = client_with(
        &app.pki,
        Some((&shop2.cert_pem, &shop2.key_pem)),
        Versions::Both,
    );
    let response = client
        .post(app.url("/v1/orders"))
        .header("idempotency-key", "same-key")
        .json(&order_json())
        .send()
        .await
        .unwrap();
    let second = created(response).await;
    assert_ne!(second["order_id"], first["order_id"]);
    // ... and cannot read the first shop's order.
    let peek = client
        .get(app.url(&format!(
            "/v1/orders/{}",
            first["order_id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    expect_problem(peek, 404).await;

    let db = app.db().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db)
        .await
        .unwrap();
    // Two before, and two-types once its headers were right.
    assert_eq!(n, 3);
}

/// Someone with write access to the database edits the stored answer of a
/// key, copies another key's answer onto it, or strips its MAC: a retry is
/// refused with a clear 500 (never the forged answer, never a second
/// order), an untouched key still replays, and the audit names each row —
/// and the order whose row was deleted outright.
#[tokio::test]
async fn an_edited_swapped_or_unmaced_stored_response_is_never_replayed() {
    let app = spawn_app().await;
    let mut bodies = Vec::new();
    let mut ids = Vec::new();
    for (i, key) in [
        "swap-a",
        "swap-b",
        "edit",
        "no-mac",
        "untouched",
        "pan-id",
        "deleted",
    ]
    .iter()
    .enumerate()
    {
        let mut order = order_json();
        order["items"][0]["quantity"] = json!(i + 1);
        let r = created(app.post_order(key, &order).await).await;
        ids.push(r["order_id"].as_str().unwrap().to_owned());
        bodies.push(order);
    }
    let db = app.db().await;
    let column = |id: &str, name: &str| {
        let db = db.clone();
        let sql = format!("SELECT {name} FROM idempotency_keys WHERE order_id = $1");
        let id = id.to_owned();
        async move {
            sqlx::query_scalar::<_, Vec<u8>>(&sql)
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    // Edits the database refuses (migration sqlite/0018, postgres/0023),
    // made with its guards switched off: the MAC still finds them.
    app.unguard("idempotency_keys").await;
    // swap-a gets swap-b's whole answer: order id, body, created_at, MAC.
    let b_body = column(&ids[1], "response_body").await;
    let b_mac = column(&ids[1], "response_mac").await;
    let b_created: String =
        sqlx::query_scalar("SELECT created_at FROM idempotency_keys WHERE order_id = $1")
            .bind(&ids[1])
            .fetch_one(&db)
            .await
            .unwrap();
    sqlx::query(
        "UPDATE idempotency_keys SET order_id = $1, response_body = $2, response_mac = $3,
                created_at = $4 WHERE order_id = $5",
    )
    .bind(&ids[1])
    .bind(&b_body)
    .bind(&b_mac)
    .bind(&b_created)
    .bind(&ids[0])
    .execute(&db)
    .await
    .unwrap();
    // edit: one word of the stored body changed.
    let body = String::from_utf8(column(&ids[2], "response_body").await).unwrap();
    let forged = body.replace("\"accepted\"", "\"declined\"");
    assert_ne!(forged, body);
    sqlx::query("UPDATE idempotency_keys SET response_body = $1 WHERE order_id = $2")
        .bind(forged.into_bytes())
        .bind(&ids[2])
        .execute(&db)
        .await
        .unwrap();
    // no-mac: as a row from before the MAC existed.
    sqlx::query("UPDATE idempotency_keys SET response_mac = NULL WHERE order_id = $1")
        .bind(&ids[3])
        .execute(&db)
        .await
        .unwrap();
    // pan-id: an order id column that holds a card number (the audit must
    // name the row without quoting it).
    sqlx::query("UPDATE idempotency_keys SET order_id = $1 WHERE order_id = $2")
        .bind("card 4111 1111 1111 1111")
        .bind(&ids[5])
        .execute(&db)
        .await
        .unwrap();
    // deleted: the row is gone, and a decoy names its order under the
    // smallest possible key (two empty byte strings), which a scan that
    // starts "after" that key would never read (the guards are off since
    // the first edit above).
    sqlx::query("DELETE FROM idempotency_keys WHERE order_id = $1")
        .bind(&ids[6])
        .execute(&db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (client, key_hash, request_hash, order_id,
                response_status, response_body, created_at, response_mac)
         VALUES ($1, $2, $3, $4, 201, $5, '2026-01-01T00:00:00.000Z', $6)",
    )
    .bind(Vec::<u8>::new())
    .bind(Vec::<u8>::new())
    .bind(vec![0u8; 32])
    .bind(&ids[6])
    .bind(b"{}".to_vec())
    .bind(vec![0u8; 32])
    .execute(&db)
    .await
    .unwrap();

    for (key, body) in [
        ("swap-a", &bodies[0]),
        ("edit", &bodies[2]),
        ("no-mac", &bodies[3]),
    ] {
        let r = app.post_order(key, body).await;
        assert!(!r.headers().contains_key("idempotent-replayed"), "{key}");
        let problem = expect_problem(r, 500).await;
        assert_eq!(
            problem["type"], "urn:checkoutd:problem:stored-response-unverifiable",
            "{key}: {problem}"
        );
        let text = problem.to_string();
        assert!(
            !text.contains(&ids[1]) && !text.contains("declined"),
            "{key}: {text}"
        );
    }
    // A different body under a tampered key is refused the same way: a
    // forged request hash decides nothing.
    let r = app.post_order("edit", &bodies[4]).await;
    expect_problem(r, 500).await;
    let r = app.post_order("untouched", &bodies[4]).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    // A row that cannot even be read is refused the same way, not as a
    // failure of the database.
    let r = app.post_order("pan-id", &bodies[5]).await;
    let problem = expect_problem(r, 500).await;
    assert_eq!(
        problem["type"], "urn:checkoutd:problem:stored-response-unverifiable",
        "pan-id: {problem}"
    );
    assert!(!problem.to_string().contains("4111"), "{problem}");
    let logs = crate::helpers::captured_logs();
    assert!(
        logs.contains("the stored response for an Idempotency-Key cannot be read"),
        "the operator is told the row cannot be read"
    );
    assert!(
        !logs.contains("4111 1111"),
        "the log does not quote the row"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 7, "no retry made a second order");
    // The known limit: with its row deleted, a key is new again (the audit
    // below names the order that lost its row).
    let r = app.post_order("deleted", &bodies[6]).await;
    assert_eq!(r.status(), 201);
    assert!(!r.headers().contains_key("idempotent-replayed"));
    assert!(
        crate::helpers::captured_logs()
            .contains("the stored response for an Idempotency-Key failed its MAC check"),
        "the refusal is logged for the operator"
    );

    // SQLite's STRICT TEXT takes bytes that are not UTF-8: such a row is a
    // finding, not the end of the audit.
    let not_utf8 = !app.database.is_postgres();
    if not_utf8 {
        sqlx::query(
            "UPDATE idempotency_keys SET created_at = CAST(X'FF' AS TEXT) WHERE order_id = $1",
        )
        .bind(&ids[4])
        .execute(&db)
        .await
        .unwrap();
        // A retry of its key is refused as unverifiable too (the driver's
        // decode error, not a failure of the database).
        let r = app.post_order("untouched", &bodies[4]).await;
        let problem = expect_problem(r, 500).await;
        assert_eq!(
            problem["type"], "urn:checkoutd:problem:stored-response-unverifiable",
            "not-utf8: {problem}"
        );
    }

    app.reguard().await;
    let report = crate::audit::run_verify(&app).await;
    let named: Vec<(&str, &str)> = report
        .failures
        .iter()
        .map(|f| (f.record_id.as_str(), f.what.as_str()))
        .collect();
    // Five rows (the decoy's MAC does not verify either), the card number
    // in a clear column once more (the plaintext scan), and two orders no
    // row points to any more: swap-a's (its row now names swap-b's order)
    // and pan-id's. The deleted one's is named through its decoy.
    assert_eq!(report.failure_count, 8 + u64::from(not_utf8), "{named:#?}");
    let finding = |table: &str, what: &[&str]| {
        report
            .failures
            .iter()
            .any(|f| f.table == table && what.iter().all(|w| f.what.contains(w)))
    };
    assert!(
        !not_utf8 || finding("idempotency_keys", &["created_at is not UTF-8"]),
        "{named:#?}"
    );
    for id in [&ids[0], &ids[5]] {
        assert!(
            report.failures.iter().any(|f| f.table == "orders"
                && f.record_id == *id
                && f.what.contains("idempotency row is missing")),
            "{id}: {named:#?}"
        );
    }
    assert!(
        finding(
            "idempotency_keys",
            &["clear column order_id holds a card number"]
        ),
        "{named:#?}"
    );
    assert!(
        finding("idempotency_keys", &["unreadable", "not a UUID"]),
        "{named:#?}"
    );
    let json = serde_json::to_string(&report).unwrap();
    assert!(!json.contains("4111 1111 1111 1111"), "{json}");
    // Rows are named by their key hash (the decoy's is empty, so not
    // shaped like a name and withheld); the order id they claim is quoted.
    for (id, what, named_by) in [
        (&ids[1], "does not verify", "key:"),
        (&ids[2], "does not verify", "key:"),
        (&ids[3], "no MAC", "key:"),
        (&ids[6], "does not verify", "(withheld"),
    ] {
        assert!(
            report.failures.iter().any(|f| f.table == "idempotency_keys"
                && f.record_id.starts_with(named_by)
                && f.what.contains(what)
                && f.what.contains(id.as_str())),
            "{id} {what}: {named:#?}"
        );
    }
}

#[tokio::test]
async fn a_duplicate_sent_while_the_first_is_in_flight_gets_409() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let body = serde_json::to_vec(&order_json()).unwrap();
    // The first request, over raw HTTP/1.1, asks to be told before it sends
    // its body (Expect: 100-continue). The server says so when the handler
    // starts reading the body — after it has claimed the key.
    let mut first =
        crate::helpers::tls_connect_offering(&app, Some(Role::Storefront), Some(&[b"http/1.1"]))
            .await;
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: localhost\r\nIdempotency-Key: slow-key\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    first.write_all(head.as_bytes()).await.unwrap();
    let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
    let mut interim = Vec::new();
    let mut buf = [0u8; 1024];
    while !interim.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout_at(deadline, first.read(&mut buf))
            .await
            .expect("the server asks for the body")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&interim));
        interim.extend_from_slice(&buf[..n]);
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    // The first request is now in its handler, its body not yet sent: it
    // holds its claim on the key.
    let duplicate = app.post_order("slow-key", &order_json()).await;
    let problem = expect_problem(duplicate, 409).await;
    assert_eq!(
        problem["type"],
        "urn:checkoutd:problem:idempotency-key-in-flight"
    );
    first.write_all(&body).await.unwrap();
    let mut answer = Vec::new();
    // (Until the server closes; how the TLS stream ends does not matter.)
    let _ = tokio::time::timeout(crate::helpers::PATIENCE, first.read_to_end(&mut answer))
        .await
        .expect("the first request is answered");
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 201 "), "{answer}");
    assert!(!answer.contains("idempotent-replayed"), "{answer}");
    // Once the first has finished, the same request replays it.
    let again = app.post_order("slow-key", &order_json()).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let db = app.db().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1, "exactly one order for one key");
}

#[tokio::test]
async fn concurrent_duplicates_make_exactly_one_order() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = app.client(Role::Storefront);
        let url = app.url("/v1/orders");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("idempotency-key", "burst")
                .json(&order_json())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let replayed = r.headers().contains_key("idempotent-replayed");
            let body: Value = r.json().await.unwrap();
            (status, replayed, body)
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut originals = 0;
    for t in tasks {
        let (status, replayed, body) = t.await.unwrap();
        match status {
            201 => {
                ids.insert(body["order_id"].as_str().unwrap().to_owned());
                if !replayed {
                    originals += 1;
                }
            }
            409 => assert_eq!(
                body["type"],
                "urn:checkoutd:problem:idempotency-key-in-flight"
            ),
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(originals, 1);
    assert_eq!(ids.len(), 1);
    let db = app.db().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn size_media_type_and_syntax_errors() {
    let app = spawn_app().await;
    let client = app.client(Role::Storefront);
    let post = |content_type: &'static str, body: Vec<u8>, key: &'static str| {
        client
            .post(app.url("/v1/orders"))
            .header("idempotency-key", key)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let big = vec![b'a'; 100 * 1024];
    let r = post("application/json", big, "big").await.unwrap();
    assert_eq!(
        expect_problem(r, 413).await["type"],
        "urn:checkoutd:problem:body-too-large"
    );
    let r = post("text/plain", b"{}".to_vec(), "text").await.unwrap();
    expect_problem(r, 415).await;
    let r = post("application/json; charset=latin1", b"{}".to_vec(), "latin")
        .await
        .unwrap();
    expect_problem(r, 415).await;
    let truncated = serde_json::to_vec(&order_json()).unwrap();
    let r = post(
        "application/json",
        truncated[..truncated.len() / 2].to_vec(),
        "trunc",
    )
    .await
    .unwrap();
    let body = expect_problem(r, 400).await;
    assert_eq!(body["type"], "urn:checkoutd:problem:malformed-body");
    let mut non_utf8 = serde_json::to_vec(&order_json()).unwrap();
    let at = non_utf8.windows(3).position(|w| w == b"Ada").unwrap();
    non_utf8[at] = 0xff;
    let r = post("application/json", non_utf8, "utf8").await.unwrap();
    expect_problem(r, 400).await;
    let r = post(
        "application/x-www-form-urlencoded",
        b"a=1&a=2".to_vec(),
        "dup",
    )
    .await
    .unwrap();
    expect_problem(r, 400).await;
    // The field is named (as far as it is one of ours).
    let r = post(
        "application/x-www-form-urlencoded",
        b"consent.special_offers=on&consent.special_offers=off".to_vec(),
        "dup-named",
    )
    .await
    .unwrap();
    let body = expect_problem(r, 400).await;
    assert_eq!(
        body["errors"][0]["field"], "consent.special_offers",
        "{body}"
    );
    assert_eq!(body["errors"][0]["code"], "duplicate_field", "{body}");
    // The same for JSON, by path; a name not shaped like ours is not echoed.
    let r = post(
        "application/json",
        br#"{"items":[{"sku":"A","sku":"B"}]}"#.to_vec(),
        "dup-json",
    )
    .await
    .unwrap();
    let body = expect_problem(r, 400).await;
    assert_eq!(body["errors"][0]["field"], "items.0.sku", "{body}");
    assert_eq!(body["errors"][0]["code"], "duplicate_field", "{body}");
    // A number no 64-bit float holds, and a syntax error inside a member:
    // named by path too.
    let mut huge = serde_json::to_string(&order_json()).unwrap();
    let at = huge.find(r#""quantity":"#).unwrap() + r#""quantity":"#.len();
    let end = at + huge[at..].find(|c: char| !c.is_ascii_digit()).unwrap();
    huge.replace_range(at..end, "1e400");
    let r = post("application/json", huge.into_bytes(), "huge-number")
        .await
        .unwrap();
    let body = expect_problem(r, 400).await;
    assert_eq!(body["errors"][0]["field"], "items.0.quantity", "{body}");
    assert_eq!(body["errors"][0]["code"], "out_of_range", "{body}");
    let r = post(
        "application/json",
        br#"{"consent":{"special_offers":tru}}"#.to_vec(),
        "syntax-in-member",
    )
    .await
    .unwrap();
    let body = expect_problem(r, 400).await;
    assert_eq!(
        body["errors"][0]["field"], "consent.special_offers",
        "{body}"
    );
    assert_eq!(body["errors"][0]["code"], "invalid_json", "{body}");
    let r = post(
        "application/json",
        br#"{"Ada Lovelace":1,"Ada Lovelace":2}"#.to_vec(),
        "dup-json-named",
    )
    .await
    .unwrap();
    let text = r.text().await.unwrap();
    assert!(!text.contains("Ada"), "{text}");
    assert!(text.contains("<unknown>"), "{text}");
    let r = post(
        "application/x-www-form-urlencoded",
        b"customer.name=%FF".to_vec(),
        "pct",
    )
    .await
    .unwrap();
    let body = expect_problem(r, 400).await;
    assert_eq!(body["errors"][0]["field"], "customer.name", "{body}");
    assert_eq!(body["errors"][0]["code"], "invalid_encoding", "{body}");
    let r = post("application/json", b"[1,2]".to_vec(), "array")
        .await
        .unwrap();
    expect_problem(r, 422).await;
    // Streaming past the limit without a Content-Length is 413 too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..80).map(|_| Ok(vec![b' '; 1024])).collect();
    let r = client
        .post(app.url("/v1/orders"))
        .header("idempotency-key", "stream")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    expect_problem(r, 413).await;
}

#[tokio::test]
async fn summaries_are_404_for_unknown_or_malformed_ids() {
    let app = spawn_app().await;
    for id in ["00000000-0000-4000-8000-000000000000", "not-a-uuid"] {
        let r = app
            .client(Role::Storefront)
            .get(app.url(&format!("/v1/orders/{id}")))
            .send()
            .await
            .unwrap();
        expect_problem(r, 404).await;
    }
}

#[tokio::test]
async fn ciphertexts_swapped_or_tampered_in_the_database_do_not_open() {
    let app = spawn_app().await;
    let a = created(app.post_order("swap-a", &order_json()).await).await;
    let mut other = order_json();
    other["customer"]["name"] = json!("Grace Hopper");
    let b = created(app.post_order("swap-b", &other).await).await;
    let (a, b) = (
        a["order_id"].as_str().unwrap(),
        b["order_id"].as_str().unwrap(),
    );
    let db = app.db().await;
    let ring = app.keyring();
    for (table, class) in [
        ("billing_details", DataClass::Billing),
        ("payment_cards", DataClass::Card),
        ("shipping_details", DataClass::Shipping),
    ] {
        let (ba, ea) = envelope_of(&db, table, class, a).await;
        let (bb, eb) = envelope_of(&db, table, class, b).await;
        assert!(envelope::open(&ring, &ba, &ea).is_ok());
        // Row swap: a's envelope read as b's record (ids moved with it or not).
        assert!(envelope::open(&ring, &bb, &ea).is_err(), "{table}");
        let moved_with_id = Binding {
            order_id: bb.order_id,
            ..ba
        };
        assert!(
            envelope::open(&ring, &moved_with_id, &ea).is_err(),
            "{table}"
        );
        // Only the ciphertext swapped, wrapped DEK kept.
        let mixed = Envelope {
            ciphertext: eb.ciphertext.clone(),
            ..ea.clone()
        };
        assert!(envelope::open(&ring, &ba, &mixed).is_err(), "{table}");
        // Moved into another table (class).
        let other_class = Binding {
            class: DataClass::Recipient,
            ..ba
        };
        assert!(envelope::open(&ring, &other_class, &ea).is_err(), "{table}");
        // One flipped bit.
        let mut flipped = ea.clone();
        flipped.ciphertext[15] ^= 0x80;
        assert!(envelope::open(&ring, &ba, &flipped).is_err(), "{table}");
    }
    // A keyring from another installation opens nothing.
    let stranger = Keyring::generate(&ring::rand::SystemRandom::new(), "t").unwrap();
    let (ba, ea) = envelope_of(&db, "payment_cards", DataClass::Card, a).await;
    assert!(envelope::open(&stranger, &ba, &ea).is_err());
}

#[tokio::test]
async fn consent_tags_are_authenticated() {
    let app = spawn_app().await;
    let body = created(app.post_order("tag-1", &order_json()).await).await;
    let db = app.db().await;
    let ring = app.keyring();
    let tag_id = body["consent"]["id"].as_str().unwrap();
    let load = || async {
        let row = sqlx::query("SELECT * FROM consent_tags WHERE id = $1")
            .bind(tag_id)
            .fetch_one(&db)
            .await
            .unwrap();
        checkoutd::domain::consent::ConsentTag {
            id: Uuid::parse_str(tag_id).unwrap(),
            order_id: Uuid::parse_str(row.get::<String, _>("order_id").as_str()).unwrap(),
            subject: checkoutd::domain::consent::Subject::parse(
                row.get::<String, _>("subject").as_str(),
            )
            .unwrap(),
            basis: checkoutd::domain::consent::Basis::parse(row.get::<String, _>("basis").as_str())
                .unwrap(),
            purposes: checkoutd::domain::consent::Purposes::from_array([
                row.get::<i64, _>("product_updates") != 0,
                row.get::<i64, _>("new_offerings") != 0,
                row.get::<i64, _>("partnerships") != 0,
                row.get::<i64, _>("special_offers") != 0,
                row.get::<i64, _>("third_party_sharing") != 0,
            ]),
            policy_version: row.get("policy_version"),
            captured_at: row.get("captured_at"),
            channel: row.get("channel"),
            mac_key_version: u32::try_from(row.get::<i64, _>("mac_key_version")).unwrap(),
            mac: row.get::<Vec<u8>, _>("mac").try_into().unwrap(),
        }
    };
    let tag = load().await;
    assert!(
        ring.consent_tag_key()
            .verify(&[&tag.canonical_bytes()], &tag.mac)
    );
    // An edit in the database (grant a purpose) is detected.
    sqlx::query("UPDATE consent_tags SET third_party_sharing = 1 WHERE id = $1")
        .bind(tag_id)
        .execute(&db)
        .await
        .unwrap();
    let edited = load().await;
    assert!(
        !ring
            .consent_tag_key()
            .verify(&[&edited.canonical_bytes()], &edited.mac)
    );
}

#[tokio::test]
async fn schema_has_the_seven_tables_and_no_cvv_column() {
    let app = spawn_app().await;
    let schema = checkoutd::store::Store::schema(&app.store().await)
        .await
        .unwrap();
    let tables: Vec<String> = schema.iter().map(|(t, _)| t.clone()).collect();
    for t in [
        "billing_details",
        "consent_tags",
        "gift_recipients",
        "idempotency_keys",
        "orders",
        "payment_cards",
        "shipping_details",
    ] {
        assert!(
            tables.contains(&t.to_owned()),
            "{t} missing from {tables:?}"
        );
    }
    for (t, columns) in &schema {
        for (c, _) in columns {
            let c = c.to_lowercase();
            assert!(
                !c.contains("cvv") && !c.contains("cvc") && !c.contains("csc"),
                "{t}.{c}"
            );
        }
    }
}

#[tokio::test]
async fn a_missing_keyring_beside_stored_orders_refuses_to_start() {
    let app = spawn_app().await;
    created(app.post_order("km-1", &order_json()).await).await;
    refuses_to_start_without_its_keyring(&app).await;
}

/// No order yet, but the access log's chain is MACed under the keyring: a
/// new keyring would leave it unverifiable (and the audience export,
/// which fails closed, refused for good).
#[tokio::test]
async fn a_missing_keyring_beside_an_access_log_refuses_to_start() {
    let app = spawn_app().await;
    let _ = app.shipments("").await;
    let db = app.db().await;
    let count = |sql: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("SELECT count(*) FROM orders").await, 0);
    assert!(count("SELECT count(*) FROM access_log").await > 0);
    refuses_to_start_without_its_keyring(&app).await;
}

async fn refuses_to_start_without_its_keyring(app: &crate::helpers::TestApp) {
    let data = app.dir.path().join("data");
    let certs = app.dir.path().join("certs");
    std::fs::remove_file(data.join("keyring.json")).unwrap();
    let args = checkoutd::cli::ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        certs_dir: Some(certs),
        store: checkoutd::cli::StoreArgs {
            data_dir: Some(data.clone()),
            database_url: Some(app.database.url.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let settings = checkoutd::config::Settings::from_args(&args).unwrap();
    let error = checkoutd::app::Application::build(&settings)
        .await
        .err()
        .expect("must refuse");
    assert!(error.to_string().contains("missing"), "{error}");
    assert!(
        !data.join("keyring.json").exists(),
        "no replacement keyring was made"
    );
}

/// An app whose requests have one second.
async fn spawn_app_with_a_one_second_limit() -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(crate::helpers::Options {
        serve: checkoutd::cli::ServeArgs {
            request_timeout: Some("1s".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
}

/// Another writer holding the tables an order needs (SQLite: the write
/// lock; PostgreSQL: `idempotency_keys`, which reads wait for too) until
/// `COMMIT` on the returned connection.
pub(crate) async fn hold_the_order_tables(
    app: &crate::helpers::TestApp,
    db: &sqlx::AnyPool,
) -> sqlx::pool::PoolConnection<sqlx::Any> {
    let mut conn = db.acquire().await.unwrap();
    let (begin, lock) = if app.database.is_postgres() {
        (
            "BEGIN",
            "LOCK TABLE idempotency_keys IN ACCESS EXCLUSIVE MODE",
        )
    } else {
        ("BEGIN IMMEDIATE", "SELECT 1")
    };
    sqlx::query(begin).execute(&mut *conn).await.unwrap();
    sqlx::query(lock).execute(&mut *conn).await.unwrap();
    conn
}

#[tokio::test]
async fn an_order_whose_commit_stalls_is_answered_retry_before_the_time_limit() {
    let app = spawn_app_with_a_one_second_limit().await;
    // Another writer holds the tables the order needs for 2.5 s.
    let db = app.db().await;
    let mut conn = hold_the_order_tables(&app, &db).await;
    // The connection made beforehand: what is timed is the server's answer,
    // not a handshake on a slow machine.
    let client = app.client(Role::Storefront);
    let warm = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(warm.status(), 200);
    let started = std::time::Instant::now();
    let r = client
        .post(app.url("/v1/orders"))
        .header("idempotency-key", "stalled-1")
        .json(&order_json())
        .send()
        .await
        .unwrap();
    // Not the time limit's 408 ("nothing was kept"): the order may still
    // commit, so the answer is "retry with the same key".
    let problem = expect_problem(r, 503).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_ne!(problem["type"], "urn:checkoutd:problem:request-timeout");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
    drop(conn);
    // The retry gets the order exactly once: a replay of the stalled
    // order if it committed after all, or a first commit.
    let mut first = None;
    for _ in 0..50 {
        let r = app.post_order("stalled-1", &order_json()).await;
        if r.status() == 503 || r.status() == 409 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        first = Some(body["order_id"].as_str().unwrap().to_owned());
        break;
    }
    let first = first.expect("the retry was answered");
    let r = app.post_order("stalled-1", &order_json()).await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["order_id"], first.as_str());
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// A graceful stop whose drain deadline comes before an order's commit
/// returns answers that order 503 "retry with the same key" before the
/// deadline — not a reset of its connection, which would say nothing
/// about whether it was kept.
#[tokio::test]
async fn an_order_still_committing_when_the_drain_ends_is_answered_retry() {
    let mut app = crate::helpers::spawn_app_with(crate::helpers::Options {
        serve: checkoutd::cli::ServeArgs {
            drain_timeout: Some("1s".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let db = app.db().await;
    let mut conn = hold_the_order_tables(&app, &db).await;
    let client = app.client(Role::Storefront);
    // The connection made beforehand, so that the order is in flight well
    // within the wait below, however slow a handshake is here.
    let warm = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(warm.status(), 200);
    let url = app.url("/v1/orders");
    let order = order_json();
    let pending = tokio::spawn(async move {
        client
            .post(url)
            .header("idempotency-key", "draining-1")
            .json(&order)
            .send()
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    app.shutdown();
    let r = pending.await.unwrap().expect("answered, not reset");
    assert!(r.headers().contains_key("retry-after"));
    expect_problem(r, 503).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    sqlx::query("ROLLBACK").execute(&mut *conn).await.ok();
}

/// A retry that no longer validates (the card expired at midnight, say),
/// sent while its first attempt — answered 503 "retry" at the time limit
/// — is still with the writer and may yet commit, gets 409 (retryable),
/// never a final 422 that would make the storefront re-order under a new
/// key while the first order lands.
#[tokio::test]
async fn a_retry_that_no_longer_validates_waits_while_its_first_attempt_may_commit() {
    let app = spawn_app_with_a_one_second_limit().await;
    let db = app.db().await;
    let mut conn = hold_the_order_tables(&app, &db).await;
    expect_problem(app.post_order("unsure-1", &order_json()).await, 503).await;
    let mut no_longer_valid = order_json();
    no_longer_valid["card"]["number"] = "4111 1111 1111 1112".into();
    let problem = expect_problem(app.post_order("unsure-1", &no_longer_valid).await, 409).await;
    assert_eq!(
        problem["type"], "urn:checkoutd:problem:idempotency-key-in-flight",
        "{problem:#}"
    );
    if app.database.is_postgres() {
        // The lookup of a stored answer — made when a body no longer
        // validates, exactly when the key's order may exist — held up by
        // the lock: "retry" before the time limit, not its 408 ("nothing
        // was kept"). (SQLite's readers do not wait for a writer.)
        let problem = expect_problem(app.post_order("unsure-2", &no_longer_valid).await, 503).await;
        assert_ne!(problem["type"], "urn:checkoutd:problem:request-timeout");
    }
    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
    drop(conn);
    // Once the first attempt is resolved, the retry gets its answer: the
    // first order replayed (201) or, had it not landed, a first commit.
    let mut answered = false;
    for _ in 0..100 {
        let r = app.post_order("unsure-1", &order_json()).await;
        if r.status() == 503 || r.status() == 409 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(r.status(), 201);
        answered = true;
        break;
    }
    assert!(answered, "the retry was never answered");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn malformed_paths_and_slow_bodies_get_problem_documents() {
    let app = spawn_app_with_a_one_second_limit().await;
    let r = app
        .client(Role::Storefront)
        .get(app.url("/v1/orders/%FF"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // A body that trickles in slower than the request time limit: 408.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(b"{".to_vec())).await.unwrap();
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
    let r = app
        .client(Role::Storefront)
        .post(app.url("/v1/orders"))
        .header("idempotency-key", "slow")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let body = expect_problem(r, 408).await;
    assert_eq!(body["type"], "urn:checkoutd:problem:request-timeout");
    drop(tx);
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_and_keyring_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    created(app.post_order("perm-1", &order_json()).await).await;
    let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    if !app.database.is_postgres() {
        // The WAL holds every committed page until a checkpoint; the
        // shared-memory index too is nobody else's business.
        for file in [
            app.db_path(),
            app.db_path().with_extension("db-wal"),
            app.db_path().with_extension("db-shm"),
        ] {
            assert_eq!(mode(file.clone()), 0o600, "{}", file.display());
        }
    }
    assert_eq!(mode(app.dir.path().join("data/keyring.json")), 0o600);
    assert_eq!(mode(app.dir.path().join("data")), 0o700);
}

#[tokio::test]
async fn a_summary_whose_order_points_at_another_tag_is_withheld() {
    // Genuine tags put on the wrong order by a database writer: another
    // order's customer tag, and this order's gift-recipient tag. Each has a
    // valid MAC; neither is this order's consent.
    let app = spawn_app().await;
    let other = created(app.post_order("own-tag-other", &order_json()).await).await;
    let mut gift = order_json();
    gift["gift_recipient"] = json!({
        "name": "Grace Hopper",
        "address": gift["billing_address"].clone(),
    });
    let this = created(app.post_order("own-tag-this", &gift).await).await;
    let (other_id, this_id) = (
        other["order_id"].as_str().unwrap().to_owned(),
        this["order_id"].as_str().unwrap().to_owned(),
    );
    let db = app.db().await;
    let tag = |order: String, subject: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT id FROM consent_tags WHERE order_id = $1 AND subject = $2",
            )
            .bind(order)
            .bind(subject)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let summary = |id: String| {
        let app = &app;
        async move {
            app.get_json(Role::Storefront, &format!("/v1/orders/{id}"))
                .await
        }
    };
    assert_eq!(summary(this_id.clone()).await["consent"]["verified"], true);
    for wrong in [
        tag(other_id.clone(), "customer").await,
        tag(this_id.clone(), "gift_recipient").await,
    ] {
        // The tags' own references stay as they were (0011 forbids moving
        // them); only the order's pointer to its customer tag changes.
        sqlx::query("UPDATE orders SET consent_tag_id = $1 WHERE id = $2")
            .bind(&wrong)
            .bind(&this_id)
            .execute(&db)
            .await
            .unwrap();
        // The order's link to its tag is covered by the order's MAC: the
        // edited row is withheld whole, not served with another's consent.
        let r = app
            .client(Role::Storefront)
            .get(app.url(&format!("/v1/orders/{this_id}")))
            .send()
            .await
            .unwrap();
        let problem = expect_problem(r, 500).await;
        assert!(
            !problem.to_string().contains(&wrong),
            "tag {wrong}: {problem:#}"
        );
    }
}
