//! Leak scans: after a run of orders (accepted and rejected), neither the
//! database file, its WAL, nor anything the server logged contains a card
//! number, CVC, email, name, phone number, street or gift message that was
//! submitted.

use checkoutd::server::identity::Role;
use serde_json::json;

use crate::helpers::{captured_logs, spawn_app};
use crate::orders::order_json;

/// Distinctive values, so a hit cannot be a coincidence.
const PANS: [&str; 3] = ["4012888888881881", "378282246310005", "6011111111111117"];
const AMEX_CVC: &str = "8642";
const NAMES: [&str; 3] = [
    "Zephyrine Quarterfield",
    "Bartholomew Oakenshaw",
    "Hortensia Pemberwick",
];
const EMAILS: [&str; 3] = [
    "zephyrine.q@leakcheck.example",
    "bart.oak@leakcheck.example",
    // A stranger's: only ever sent in an opt-out.
    "wilhelmina.stranger@leakcheck.example",
];
const PHONES: [&str; 2] = ["+1 212 555 0187", "+44 20 7946 0321"];
const STREETS: [&str; 3] = [
    "Quillmarsh Avenue",
    "Thistlewood Crescent",
    "Brambleford Row",
];
const MESSAGE: &str = "Many happy returns from the Quillmarsh crowd";
const COMPANY: &str = "Fennimore Widgetworks";

fn needles() -> Vec<Vec<u8>> {
    let mut n: Vec<String> = Vec::new();
    for pan in PANS {
        n.push(pan.to_owned());
        n.push(pan[pan.len() - 12..].to_owned());
        // As a person (or a form post's `+`) groups it: in fours.
        let groups: Vec<&str> = pan
            .as_bytes()
            .chunks(4)
            .map(|g| std::str::from_utf8(g).unwrap())
            .collect();
        n.push(groups.join(" "));
        n.push(groups.join("-"));
    }
    n.extend(NAMES.iter().map(|s| s.to_string()));
    n.extend(
        NAMES
            .iter()
            .map(|s| s.split(' ').nth(1).unwrap_or(s).to_string()),
    );
    n.extend(EMAILS.iter().map(|s| s.to_string()));
    n.extend(EMAILS.iter().map(|s| s.to_uppercase()));
    n.extend(PHONES.iter().map(|s| s.to_string()));
    n.extend(PHONES.iter().map(|s| s.replace(' ', "")));
    n.extend(STREETS.iter().map(|s| s.to_string()));
    n.push(MESSAGE.to_owned());
    n.push("Quillmarsh".to_owned());
    n.push(COMPANY.to_owned());
    n.into_iter().map(String::into_bytes).collect()
}

/// `needle` with no hex digit right before or after it, outside every
/// UUID (`8-4-4-4-12` hex digits): a UUIDv7's fourth group is `8xxx` to
/// `bxxx`, so one in 16 384 ids holds any given four digits starting
/// with 8 between its dashes — a dump of a few hundred ids did, one run in
/// a hundred or so.
fn find_token(hay: &[u8], needle: &[u8]) -> bool {
    let hay = blank_uuids(hay);
    hay.windows(needle.len()).enumerate().any(|(i, w)| {
        w == needle
            && (i == 0 || !hay[i - 1].is_ascii_hexdigit())
            && hay
                .get(i + needle.len())
                .is_none_or(|b| !b.is_ascii_hexdigit())
    })
}

/// `hay` with every UUID-shaped run overwritten with `x`.
fn blank_uuids(hay: &[u8]) -> Vec<u8> {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let mut out = hay.to_vec();
    let uuid_at = |at: usize| {
        let mut p = at;
        for (n, len) in GROUPS.iter().enumerate() {
            if !hay
                .get(p..p + len)
                .is_some_and(|g| g.iter().all(u8::is_ascii_hexdigit))
            {
                return false;
            }
            p += len;
            if n < 4 {
                if hay.get(p) != Some(&b'-') {
                    return false;
                }
                p += 1;
            }
        }
        true
    };
    let mut at = 0;
    while at + 36 <= hay.len() {
        if uuid_at(at) {
            out[at..at + 36].fill(b'x');
            at += 36;
        } else {
            at += 1;
        }
    }
    out
}

#[test]
fn a_token_inside_a_uuid_is_not_a_leak() {
    let id = b"0193a8f2-1c2d-7abc-8642-0123456789ab";
    assert!(!find_token(id, b"8642"));
    assert!(find_token(b"cvc 8642 ", b"8642"));
    assert!(find_token(
        b"0193a8f2-1c2d-7abc-8642-0123456789ab\t8642\t",
        b"8642"
    ));
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[tokio::test]
async fn no_submitted_secret_reaches_the_database_file_its_wal_or_the_logs() {
    let app = spawn_app().await;
    let client = app.client(Role::Storefront);

    // Accepted: a JSON order, an Amex order with a gift, a form order.
    let mut a = order_json();
    a["customer"] = json!({"name": NAMES[0], "company": COMPANY, "email": EMAILS[0].to_uppercase(), "phone": PHONES[0]});
    a["billing_address"]["line1"] = json!(format!("12 {}", STREETS[0]));
    a["card"]["number"] = json!(PANS[0]);
    a["card"]["holder_name"] = json!(NAMES[0]);
    assert_eq!(app.post_order("leak-a", &a).await.status(), 201);

    let mut b = order_json();
    b["customer"] = json!({"name": NAMES[1], "email": EMAILS[1], "phone": PHONES[1]});
    b["billing_address"]["line1"] = json!(format!("7 {}", STREETS[1]));
    b["card"] = json!({"number": PANS[1], "exp_month": 6, "exp_year": crate::orders::exp_year(), "cvc": AMEX_CVC});
    b["gift_recipient"] = json!({"name": NAMES[2], "phone": PHONES[0], "message": MESSAGE,
        "address": {"line1": format!("3 {}", STREETS[2]), "city": "Leeds", "postal_code": "LS1 1AA", "country": "GB"}});
    assert_eq!(
        app.post_order(&format!("order-for-{}-{}", EMAILS[1], PANS[1]), &b)
            .await
            .status(),
        201
    );

    let form = format!(
        "customer.name={}&customer.email={}&customer.phone={}&billing_address.line1={}&billing_address.city=Oslo\
&billing_address.postal_code=0150&billing_address.country=NO&items.0.sku=X&items.0.quantity=1\
&items.0.unit_price_minor=1&currency=NOK&card.number={}&card.exp_month=2&card.exp_year={}&card.cvc=739\
&consent.policy_version=2002-06-05",
        NAMES[2].replace(' ', "+"),
        EMAILS[1].replace('@', "%40"),
        PHONES[1].replace('+', "%2B").replace(' ', "+"),
        STREETS[2].replace(' ', "+"),
        PANS[2],
        crate::orders::exp_year()
    );
    let r = client
        .post(app.url("/v1/orders"))
        .header("idempotency-key", "leak-c")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Rejected: values in invalid fields, unknown fields and malformed bodies.
    let mut bad = a.clone();
    bad["card"]["number"] = json!(format!("{}0", PANS[0]));
    bad["customer"]["email"] = json!(format!("not-an-email {}", NAMES[0]));
    bad[NAMES[1]] = json!(EMAILS[0]);
    // Unknown members named with secrets: never echoed.
    bad["card"][PANS[2]] = json!(1);
    bad["customer"][NAMES[0].replace(' ', "")] = json!(1);
    bad["customer"][NAMES[1].split(' ').next().unwrap().to_lowercase()] = json!(1);
    bad["card"]["cvc"] = json!(AMEX_CVC);
    let r = app.post_order("leak-d", &bad).await;
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    for needle in needles() {
        assert!(
            !find(text.as_bytes(), &needle),
            "a 422 echoed {}",
            String::from_utf8_lossy(&needle)
        );
    }
    let r = client
        .post(app.url("/v1/orders"))
        .header("idempotency-key", "leak-e")
        .header("content-type", "application/json")
        .body(format!("{{\"card\": {{\"number\": \"{}\"", PANS[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let truncated = r.text().await.unwrap();
    let r = app.post_order("leak-a", &bad).await; // key reused: 422
    assert_eq!(r.status(), 422);
    let reused = r.text().await.unwrap();
    for (what, text) in [("the 400", &truncated), ("the reuse 422", &reused)] {
        for needle in needles() {
            assert!(
                !find(text.as_bytes(), &needle),
                "{what} echoed {}",
                String::from_utf8_lossy(&needle)
            );
        }
    }

    // Opt-outs, of a customer and of a stranger, through the API and the
    // public page: the ledger keeps a blind index, never the address.
    for (email, purposes) in [
        (EMAILS[0], json!("all")),
        (EMAILS[2], json!(["partnerships"])),
    ] {
        let r = client
            .post(app.url("/v1/consent/opt-out"))
            .json(&json!({"email": email, "purposes": purposes, "channel": "email"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let r = app
        .anonymous()
        .post(app.url("/unsubscribe"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-origin")
        .body(format!(
            "email={}&special_offers=on",
            EMAILS[2].replace('@', "%40")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Scan while the server is up (WAL not yet checkpointed) and after.
    let mut haystacks = app.database_bytes().await;
    assert!(haystacks.iter().all(|(_, bytes)| !bytes.is_empty()));
    let logs = captured_logs().into_bytes();
    assert!(find(&logs, b"/v1/orders"), "the access log was captured");
    haystacks.push(("logs", logs));
    for (what, hay) in &haystacks {
        for needle in needles() {
            assert!(
                !find(hay, &needle),
                "{what} contains {}",
                String::from_utf8_lossy(&needle)
            );
        }
        if *what == "logs" {
            // Numbers such as latencies are logged bare; a leaked CVC would be
            // a string value, or appear next to its field name.
            for cvc in [AMEX_CVC, "739"] {
                for quoted in [
                    format!("\"{cvc}\""),
                    format!("'{cvc}'"),
                    format!("\\\"{cvc}\\\""),
                ] {
                    assert!(!find(hay, quoted.as_bytes()), "logs contain a CVC");
                }
            }
            // The field's name as a word of its own: not inside a longer
            // run of letters and digits (a temporary directory's random
            // name, `/tmp/.tmp9JCvcJ`, holds one now and then).
            let word = |at: usize| {
                let alnum = |i: Option<&u8>| i.is_some_and(u8::is_ascii_alphanumeric);
                !alnum(at.checked_sub(1).and_then(|i| hay.get(i))) && !alnum(hay.get(at + 3))
            };
            if let Some(at) = (0..hay.len().saturating_sub(2))
                .find(|&at| hay[at..at + 3].eq_ignore_ascii_case(b"cvc") && word(at))
            {
                let from = at.saturating_sub(300);
                panic!(
                    "logs mention the CVC field: {}",
                    String::from_utf8_lossy(&hay[from..(at + 100).min(hay.len())])
                );
            }
        } else {
            // Not inside a longer hex run (UUIDs and digests are hex).
            assert!(
                !find_token(hay, AMEX_CVC.as_bytes()),
                "{what} contains the Amex CVC"
            );
        }
    }
}
