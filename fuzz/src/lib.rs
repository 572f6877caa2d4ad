//! The bodies of checkoutd's fuzz targets — the one copy of their logic.
//!
//! Each `fuzz_targets/<name>.rs` is a one-line call into this file, and the
//! root test `tests/fuzz_corpus.rs` includes this very file (`#[path]`) to
//! replay every committed corpus input as an ordinary `cargo test` on the
//! stable toolchain. A target does not merely survive its input: it checks
//! the property that the parser promises (round trips to a canonical form,
//! an accepted card number is Luhn-valid, an envelope opens only when it is
//! byte for byte the one sealed, the audit flags an edited row, …) and
//! panics when the property breaks, which libFuzzer reports as a crash.
//!
//! Only crates the root package also depends on are used here, so that the
//! root test can compile this file unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use checkoutd::crypto::aead;
use checkoutd::crypto::envelope::{self, Binding, Envelope};
use checkoutd::crypto::keyring::{KekState, Keyring, KeyringHandle};
use checkoutd::crypto::master::MasterKey;
use checkoutd::crypto::{CryptoError, DataClass};
use checkoutd::domain::contact::{Country, Currency, Email, Phone};
use checkoutd::domain::cvc::Cvc;
use checkoutd::domain::expiry::{Expiry, ExpiryError};
use checkoutd::domain::order::{self, Address, OrderForm, Rules, ShipTo, Source};
use checkoutd::domain::pan::{CardBrand, Pan, PanError, luhn_valid};
use checkoutd::domain::{detect, form, json};
use checkoutd::http::FieldError;
use checkoutd::intake::{IdempotencyKey, MediaType};
use serde_json::{Map, Value, json};
use time::Date;

/// A target's body: one input, a panic when a property breaks.
pub type Target = fn(&[u8]);

/// Every target: its name (= `fuzz_targets/<name>.rs` = `corpus/<name>/`)
/// and its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("json_order", json_order),
    ("form_order", form_order),
    ("card_contact", card_contact),
    ("envelope_open", envelope_open),
    ("keyring_file", keyring_file),
    ("master_shares", master_shares),
    ("idempotency_key", idempotency_key),
    ("audit_verify", audit_verify),
];

// ---------------------------------------------------------------------------
// Order forms (JSON and urlencoded)
// ---------------------------------------------------------------------------

/// The policy versions the order targets accept.
const POLICY_VERSIONS: [&str; 2] = ["2002-06-05", "2024-01-01"];

/// A fixed "today", so that a corpus input means the same thing every day.
fn today() -> Date {
    Date::from_calendar_date(2026, time::Month::November, 29).unwrap()
}

fn with_rules<T>(f: impl FnOnce(&Rules<'_>) -> T) -> T {
    let versions: Vec<String> = POLICY_VERSIONS.iter().map(|s| (*s).to_owned()).collect();
    f(&Rules {
        policy_versions: &versions,
        now: today().midnight().assume_utc(),
    })
}

/// JSON body → strict tree → order form.
///
/// Properties: the strict parser accepts exactly what serde_json accepts
/// minus duplicate member names, with the same tree; its tree round-trips
/// through serialisation; the validator then holds to [`check_order`].
pub fn json_order(data: &[u8]) {
    let strict = json::parse_strict(data);
    let lenient = serde_json::from_slice::<Value>(data);
    let tree = match (strict, lenient) {
        (Ok(tree), Ok(lenient)) => {
            assert_eq!(tree, lenient, "strict and serde_json trees differ");
            tree
        }
        (Ok(_), Err(_)) => panic!("the strict parser accepted what serde_json refuses"),
        (Err(e), lenient) => {
            // Any error's path is named, never by content.
            if let Some(field) = e.field() {
                check_field_path(field);
            }
            match (e, lenient) {
                (json::JsonError::Duplicate { .. }, Ok(_)) | (_, Err(_)) => return,
                (e, Ok(_)) => panic!("strict refused valid JSON without a duplicate: {e:?}"),
            }
        }
    };
    assert!(std::str::from_utf8(data).is_ok(), "accepted non-UTF-8");
    let again = json::parse_strict(&serde_json::to_vec(&tree).unwrap())
        .expect("a serialised tree parses again");
    // serde_json reads floats fast, not exactly (no `float_roundtrip`):
    // an order has no floats, so only float-free trees must round-trip.
    if !has_float(&tree) {
        assert_eq!(again, tree, "tree does not round-trip");
    }
    check_order(tree, Source::Json);
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}

/// Urlencoded body → tree → order form.
///
/// Properties: every leaf is a string, every array dense; encoding the tree
/// again yields a body that parses to the same tree; the validator then
/// holds to [`check_order`].
pub fn form_order(data: &[u8]) {
    let Ok(tree) = form::parse(data) else {
        return;
    };
    assert_leaves_are_strings(&tree);
    let body = encode_form(&tree);
    let again = form::parse(body.as_bytes())
        .unwrap_or_else(|e| panic!("re-encoded form does not parse: {e:?}"));
    assert_eq!(again, tree, "form tree does not round-trip");
    check_order(tree, Source::Form);
}

fn assert_leaves_are_strings(v: &Value) {
    match v {
        Value::Object(m) => m.values().for_each(assert_leaves_are_strings),
        Value::Array(a) => {
            assert!(!a.is_empty(), "empty array from a form");
            a.iter().for_each(assert_leaves_are_strings)
        }
        Value::String(_) => {}
        other => panic!("a form leaf that is not a string: {other}"),
    }
}

/// Encodes a tree as `application/x-www-form-urlencoded` with dotted names
/// (numbers and booleans as their JSON text, `null` left out).
pub fn encode_form(tree: &Value) -> String {
    fn walk(v: &Value, name: &str, out: &mut Vec<String>) {
        let child = |k: &str| {
            if name.is_empty() {
                k.to_owned()
            } else {
                format!("{name}.{k}")
            }
        };
        let leaf = |out: &mut Vec<String>, text: &str| {
            out.push(format!("{}={}", encode_name(name), encode_value(text)))
        };
        match v {
            Value::Object(m) => m.iter().for_each(|(k, c)| walk(c, &child(k), out)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, c)| walk(c, &child(&i.to_string()), out)),
            Value::String(s) => leaf(out, s),
            Value::Number(n) => leaf(out, &n.to_string()),
            Value::Bool(b) => leaf(out, if *b { "true" } else { "false" }),
            Value::Null => {}
        }
    }
    let mut out = Vec::new();
    walk(tree, "", &mut out);
    out.join("&")
}

fn encode_name(name: &str) -> String {
    name.split('.')
        .map(encode_value)
        .collect::<Vec<_>>()
        .join(".")
}

fn encode_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else if b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The validator's properties, for a tree from either source:
/// - it is deterministic;
/// - an accepted order has a Luhn-valid card number of 13–19 digits whose
///   length fits its brand, a future expiry, 1–100 items within bounds and a
///   known policy version, and its canonical form (see [`canonical`]) is a
///   fixed point — as JSON and as a form, both parse back to the same order;
/// - a refused order names at least one field, and every error's field is a
///   path of schema-shaped names and list indices: no value is ever echoed.
fn check_order(tree: Value, source: Source) {
    let first = with_rules(|r| order::parse(tree.clone(), source, r));
    let second = with_rules(|r| order::parse(tree, source, r));
    match (first, second) {
        (Ok(a), Ok(b)) => {
            let ca = canonical(&a);
            assert_eq!(ca, canonical(&b), "validator is not deterministic");
            check_accepted(&a);
            // The canonical form is a fixed point, as JSON and as a form.
            let back = with_rules(|r| order::parse(ca.clone(), Source::Json, r))
                .unwrap_or_else(|e| panic!("canonical JSON refused: {e:?}"));
            assert_eq!(canonical(&back), ca, "canonical JSON is not a fixed point");
            let body = encode_form(&ca);
            let tree = form::parse(body.as_bytes())
                .unwrap_or_else(|e| panic!("canonical form body malformed: {e:?}"));
            let back = with_rules(|r| order::parse(tree, Source::Form, r))
                .unwrap_or_else(|e| panic!("canonical form refused: {e:?}"));
            assert_eq!(
                canonical(&back),
                ca,
                "the form and JSON canonical orders differ"
            );
        }
        (Err(a), Err(b)) => {
            assert!(!a.is_empty(), "refused without naming a field");
            assert_eq!(
                errors_key(&a),
                errors_key(&b),
                "errors are not deterministic"
            );
            a.iter().for_each(check_error_field);
        }
        _ => panic!("validator is not deterministic"),
    }
}

fn errors_key(errors: &[FieldError]) -> Vec<(String, &'static str)> {
    errors.iter().map(|e| (e.field.clone(), e.code)).collect()
}

fn check_error_field(e: &FieldError) {
    if !e.field.is_empty() {
        check_field_path(&e.field);
    }
}

/// An error's field path echoes no input: each segment is shaped like one
/// of our names, an index right after the top-level `items`, or
/// `<unknown>`.
fn check_field_path(field: &str) {
    let segments: Vec<&str> = field.split('.').collect();
    for (i, s) in segments.iter().enumerate() {
        // Lower-case letters and `_` (how unknown names are shown when
        // shown at all), or one of the two schema names with a digit.
        let schema = (!s.is_empty()
            && s.len() <= 32
            && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            || ["line1", "line2"].contains(s);
        let index = i == 1
            && segments[0] == "items"
            && !s.is_empty()
            && s.len() <= 3
            && s.bytes().all(|b| b.is_ascii_digit());
        assert!(
            schema || index || *s == "<unknown>",
            "an error field echoes input: {field:?}"
        );
    }
}

fn check_accepted(o: &OrderForm) {
    let digits = o.card.pan.expose_digits();
    assert!((13..=19).contains(&digits.len()), "PAN length");
    assert!(digits.iter().all(u8::is_ascii_digit), "PAN digits");
    assert!(luhn_valid(digits), "accepted PAN fails Luhn");
    assert!(
        brand_lengths(o.card.pan.brand()).contains(&digits.len()),
        "PAN length does not fit its brand"
    );
    let exp = o.card.expiry;
    assert!((1..=12).contains(&exp.month()) && (2000..=2099).contains(&exp.year()));
    assert!(exp.ends().is_some_and(|end| end > today()), "expired card");
    assert!(
        (1..=order::MAX_ITEMS).contains(&o.items.len()),
        "item count"
    );
    for item in &o.items {
        assert!((1..=order::MAX_QUANTITY).contains(&item.quantity));
        assert!((0..=order::MAX_UNIT_PRICE_MINOR).contains(&item.unit_price_minor));
        for text in
            std::iter::once(item.sku.as_str()).chain(item.description.as_ref().map(|d| d.as_str()))
        {
            assert!(
                !detect::contains_pan_clear(text),
                "a card number in a clear field"
            );
            assert!(!detect::contains_email(text), "an email in a clear field");
        }
    }
    let total: i128 = o
        .items
        .iter()
        .map(|i| i128::from(i.quantity) * i128::from(i.unit_price_minor))
        .sum();
    assert_eq!(i128::from(o.total_minor()), total, "total overflowed");
    assert!(POLICY_VERSIONS.contains(&o.consent.policy_version.as_str()));
    let email = o.customer.email.expose();
    assert_eq!(
        email,
        email.trim().to_ascii_lowercase(),
        "email not normalised"
    );
}

fn brand_lengths(brand: CardBrand) -> std::ops::RangeInclusive<usize> {
    // Independent of `Pan`'s private table: the lengths each network issues.
    match brand {
        CardBrand::Visa => 13..=19,
        CardBrand::Mastercard => 16..=16,
        CardBrand::Amex => 15..=15,
        CardBrand::Discover | CardBrand::Jcb | CardBrand::Unionpay => 16..=19,
        CardBrand::Diners => 14..=19,
    }
}

/// The canonical JSON of an accepted order: every field normalised as the
/// validator keeps it, optional ones only when present, all five purposes
/// spelt out, and a CVC of the brand's length (the validator drops the
/// CVC, so any valid one stands for it).
pub fn canonical(o: &OrderForm) -> Value {
    fn address(a: &Address) -> Value {
        let mut m = Map::new();
        m.insert("line1".into(), json!(a.line1.expose()));
        if let Some(l) = &a.line2 {
            m.insert("line2".into(), json!(l.expose()));
        }
        m.insert("city".into(), json!(a.city.expose()));
        if let Some(r) = &a.region {
            m.insert("region".into(), json!(r.expose()));
        }
        m.insert("postal_code".into(), json!(a.postal_code.expose()));
        m.insert("country".into(), json!(a.country.as_str()));
        Value::Object(m)
    }
    let mut root = Map::new();
    if let Some(r) = &o.storefront_order_ref {
        root.insert("storefront_order_ref".into(), json!(r.as_str()));
    }
    let c = &o.customer;
    let mut customer = Map::new();
    customer.insert("name".into(), json!(c.name.expose()));
    if let Some(company) = &c.company {
        customer.insert("company".into(), json!(company.expose()));
    }
    customer.insert("email".into(), json!(c.email.expose()));
    customer.insert("phone".into(), json!(c.phone.expose()));
    root.insert("customer".into(), Value::Object(customer));
    root.insert("billing_address".into(), address(&o.billing_address));
    match &o.ship_to {
        ShipTo::BillingAddress => {}
        ShipTo::Address(a) => {
            root.insert("shipping_address".into(), address(a));
        }
        ShipTo::Gift(g) => {
            let mut m = Map::new();
            m.insert("name".into(), json!(g.name.expose()));
            m.insert("address".into(), address(&g.address));
            if let Some(p) = &g.phone {
                m.insert("phone".into(), json!(p.expose()));
            }
            if let Some(msg) = &g.message {
                m.insert("message".into(), json!(msg.expose()));
            }
            root.insert("gift_recipient".into(), Value::Object(m));
        }
    }
    let items: Vec<Value> = o
        .items
        .iter()
        .map(|i| serde_json::to_value(i).unwrap())
        .collect();
    root.insert("items".into(), Value::Array(items));
    root.insert("currency".into(), json!(o.currency.code()));
    let pan = &o.card.pan;
    let mut card = Map::new();
    card.insert(
        "number".into(),
        json!(std::str::from_utf8(pan.expose_digits()).unwrap()),
    );
    card.insert("exp_month".into(), json!(o.card.expiry.month()));
    card.insert("exp_year".into(), json!(o.card.expiry.year()));
    card.insert("cvc".into(), json!("7".repeat(pan.brand().cvc_len())));
    if let Some(h) = &o.card.holder_name {
        card.insert("holder_name".into(), json!(h.expose()));
    }
    root.insert("card".into(), Value::Object(card));
    let mut consent = Map::new();
    for (name, on) in checkoutd::domain::consent::Purposes::NAMES
        .iter()
        .zip(o.consent.purposes.as_array())
    {
        consent.insert((*name).into(), json!(on));
    }
    consent.insert("policy_version".into(), json!(o.consent.policy_version));
    if let Some(at) = o.consent.captured_at {
        consent.insert(
            "captured_at".into(),
            json!(
                at.format(&time::format_description::well_known::Rfc3339)
                    .unwrap()
            ),
        );
    }
    root.insert("consent".into(), Value::Object(consent));
    Value::Object(root)
}

// ---------------------------------------------------------------------------
// Card number, expiry, CVC, email, phone, country, currency
// ---------------------------------------------------------------------------

/// The input as text goes through every field parser; its first bytes also
/// make an expiry month and year.
///
/// Properties: an accepted PAN is 13–19 digits, Luhn-valid, of a length its
/// brand issues, equal to the input's digits, masked in `Debug`, and — when
/// written plainly (digit groups split by single spaces or dashes) — found
/// by the clear-text card-number detector; a refused one is refused for the
/// right reason. An accepted email is trimmed, lower-case, at most 254
/// bytes, one `@`, and parses to itself. An accepted expiry is a real,
/// unexpired month of 2000–2099.
pub fn card_contact(data: &[u8]) {
    let month = i64::from(data.first().copied().unwrap_or(0) as i8);
    let year = 1990 + i64::from(data.get(1).copied().unwrap_or(0));
    check_expiry(month, year);
    if data.len() >= 16 {
        let wide = |b: &[u8]| i64::from_le_bytes(b.try_into().unwrap());
        check_expiry(wide(&data[..8]), wide(&data[8..16]));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_pan(text);
    check_email(text);
    if let Some(p) = Phone::parse(text) {
        let kept = p.expose();
        assert_eq!(kept, kept.trim());
        let digits = kept.bytes().filter(u8::is_ascii_digit).count();
        assert!((7..=20).contains(&digits), "phone digits");
    }
    if let Some(c) = Country::parse(text) {
        assert!(c.as_str().len() == 2 && c.as_str().bytes().all(|b| b.is_ascii_uppercase()));
        assert_eq!(Country::parse(c.as_str()), Some(c));
    }
    if let Some(c) = Currency::parse(text) {
        assert!(c.code().len() == 3 && c.code().bytes().all(|b| b.is_ascii_uppercase()));
        assert_eq!(Currency::parse(c.code()), Some(c));
    }
    for brand in [None, Some(CardBrand::Visa), Some(CardBrand::Amex)] {
        if Cvc::parse(text, brand).is_ok() {
            assert!(text.bytes().all(|b| b.is_ascii_digit()));
            let n = text.len();
            assert!(brand.map_or(n == 3 || n == 4, |b| n == b.cvc_len()));
        }
    }
}

fn check_pan(text: &str) {
    let bad_char = text
        .bytes()
        .any(|b| !(b.is_ascii_digit() || b == b' ' || b == b'-'));
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_digit).collect();
    match Pan::parse(text) {
        Ok(pan) => {
            assert!(!bad_char);
            assert_eq!(pan.expose_digits(), digits.as_slice(), "PAN digits differ");
            assert!((13..=19).contains(&digits.len()), "PAN length");
            assert!(luhn_valid(&digits), "accepted PAN fails Luhn");
            assert!(brand_lengths(pan.brand()).contains(&digits.len()));
            let last4 = std::str::from_utf8(&digits[digits.len() - 4..]).unwrap();
            assert_eq!(pan.last4(), last4);
            let shown = format!("{pan:?}");
            assert_eq!(shown, format!("Pan(****{last4})"));
            let plainly_written = !text.is_empty()
                && text
                    .split([' ', '-'])
                    .all(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()));
            if plainly_written {
                assert!(
                    detect::contains_pan(text),
                    "the clear-text detector misses an accepted card number"
                );
            }
        }
        Err(PanError::Format) => assert!(bad_char, "Format error without a bad character"),
        Err(e) => {
            assert!(!bad_char, "{e:?} for input with a bad character");
            if !(12..=19).contains(&digits.len()) {
                assert_eq!(e, PanError::Length);
            }
            if e == PanError::Luhn {
                assert!(!luhn_valid(&digits), "Luhn error for a Luhn-valid number");
            }
        }
    }
}

fn check_email(text: &str) {
    let Some(e) = Email::parse(text) else {
        return;
    };
    let s = e.expose();
    assert_eq!(s, s.trim());
    assert_eq!(s, s.to_ascii_lowercase());
    assert!(!s.is_empty() && s.len() <= 254);
    assert_eq!(s.bytes().filter(|b| *b == b'@').count(), 1);
    let (local, domain) = s.split_once('@').unwrap();
    assert!(!local.is_empty() && !domain.is_empty());
    assert!(s.is_ascii());
    assert_eq!(Email::parse(s).as_ref().map(Email::expose), Some(s));
}

fn check_expiry(month: i64, year: i64) {
    let t = today();
    let last_year = i64::from(t.year()) + checkoutd::domain::expiry::MAX_YEARS_AHEAD;
    match Expiry::parse(month, year, t) {
        Ok(e) => {
            assert_eq!((i64::from(e.month()), i64::from(e.year())), (month, year));
            assert!((1..=12).contains(&month) && (2000..=last_year).contains(&year));
            assert!(
                e.ends().is_some_and(|end| end > t),
                "accepted an expired card"
            );
        }
        Err(ExpiryError::Invalid {
            month: bad_month,
            year: bad_year,
        }) => {
            // Each judged on its own, and at least one is wrong.
            assert_eq!(bad_month, !(1..=12).contains(&month));
            assert_eq!(bad_year, !(2000..=last_year).contains(&year));
            assert!(bad_month || bad_year);
        }
        Err(ExpiryError::Expired) => {
            assert!((year, month) < (i64::from(t.year()), i64::from(u8::from(t.month()))))
        }
    }
}

// ---------------------------------------------------------------------------
// Idempotency-Key header and Content-Type
// ---------------------------------------------------------------------------

/// Properties: the parser agrees with an independent reading of the
/// contract (1–255 visible ASCII characters, or an RFC 8941 sf-string of
/// 1–255 printable ASCII characters with `\"` and `\\` escapes), and an
/// accepted sf-string serialises back to the very header value.
pub fn idempotency_key(data: &[u8]) {
    let got = IdempotencyKey::parse(data);
    let expected = reference_key(data);
    assert_eq!(
        got.as_ref().map(|k| k.as_str().as_bytes().to_vec()),
        expected,
        "Idempotency-Key parser disagrees with the contract"
    );
    if let Some(key) = got {
        let k = key.as_str();
        assert!((1..=255).contains(&k.len()));
        if data.first() == Some(&b'"') {
            let mut quoted = String::from("\"");
            for c in k.chars() {
                if c == '"' || c == '\\' {
                    quoted.push('\\');
                }
                quoted.push(c);
            }
            quoted.push('"');
            assert_eq!(quoted.as_bytes(), data, "sf-string does not round-trip");
        } else {
            assert_eq!(k.as_bytes(), data);
        }
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(media) = MediaType::from_header(text)
    {
        let essence = text.split(';').next().unwrap().trim().to_ascii_lowercase();
        let want = match media {
            MediaType::Json => "application/json",
            MediaType::Form => "application/x-www-form-urlencoded",
        };
        assert_eq!(essence, want, "media type");
    }
}

fn reference_key(raw: &[u8]) -> Option<Vec<u8>> {
    let key = match raw {
        [b'"', inner @ .., b'"'] => {
            let mut out = Vec::new();
            let mut i = 0;
            while i < inner.len() {
                match inner[i] {
                    b'\\' if matches!(inner.get(i + 1), Some(b'"' | b'\\')) => {
                        out.push(inner[i + 1]);
                        i += 2;
                    }
                    b'\\' | b'"' => return None,
                    c @ 0x20..=0x7e => {
                        out.push(c);
                        i += 1;
                    }
                    _ => return None,
                }
            }
            out
        }
        [b'"', ..] => return None,
        _ if raw.iter().all(|b| (0x21..=0x7e).contains(b)) => raw.to_vec(),
        _ => return None,
    };
    (1..=255).contains(&key.len()).then_some(key)
}

// ---------------------------------------------------------------------------
// Fixed keys: a keyring and a master key the corpus inputs were made with
// ---------------------------------------------------------------------------

fn key_hex(seed: u8) -> String {
    checkoutd::hex::encode(&[seed; 32])
}

/// A fixed keyring: card KEK v1 retired and v2 active, every other class
/// v1 active; MAC and signing keys fixed too.
pub fn fixed_keyring_json() -> Vec<u8> {
    let kek = |version: u32, state: &str, seed: u8| json!({"version": version, "state": state, "created_at": "2026-01-01T00:00:00Z", "key": key_hex(seed)});
    let mut keks = Map::new();
    for class in DataClass::ALL {
        let base = class.code() * 0x10;
        let versions = if class == DataClass::Card {
            json!([kek(1, "retired", base + 1), kek(2, "active", base + 2)])
        } else {
            json!([kek(1, "active", base + 1)])
        };
        keks.insert(class.as_str().to_owned(), versions);
    }
    let mac = |seed: u8| json!({"version": 1, "key": key_hex(seed)});
    serde_json::to_vec(&json!({
        "format": "checkoutd-keyring/1",
        "created_at": "2026-01-01T00:00:00Z",
        "generation": 3,
        "keks": keks,
        "mac_keys": {"fingerprint": mac(0xa1), "blind_index": mac(0xa2), "consent_tag": mac(0xa3),
                     "request_hash": mac(0xa4), "access_log": mac(0xa5)},
        "signing": {"version": 1, "algorithm": "ed25519", "seed": key_hex(0xa6)}
    }))
    .unwrap()
}

pub fn fixed_keyring() -> Keyring {
    Keyring::from_json(&fixed_keyring_json()).unwrap()
}

/// The development master-key file of the fixed master key.
pub fn fixed_master_file() -> Vec<u8> {
    serde_json::to_vec(&json!({"format": "checkoutd-dev-master-key/1", "key": key_hex(0x5a)}))
        .unwrap()
}

pub fn fixed_master() -> MasterKey {
    MasterKey::from_dev_contents(Path::new("master.key"), &fixed_master_file()).unwrap()
}

// ---------------------------------------------------------------------------
// Envelope open
// ---------------------------------------------------------------------------

/// The sealed records the envelope target knows: real envelopes of the
/// fixed keyring with fixed data keys and nonces (so the corpus seeds are
/// the same bytes on every run): card under retired v1 and active v2, and
/// a billing record.
pub fn envelope_originals() -> &'static [(Vec<u8>, Vec<u8>)] {
    static ORIGINALS: OnceLock<Vec<(Vec<u8>, Vec<u8>)>> = OnceLock::new();
    ORIGINALS.get_or_init(|| {
        let cases = [
            (
                DataClass::Card,
                1u32,
                1u8,
                &br#"{"pan":"4012888888881881","exp_month":12,"exp_year":2030}"#[..],
            ),
            (
                DataClass::Card,
                2,
                2,
                &br#"{"pan":"378282246310005","exp_month":1,"exp_year":2031}"#[..],
            ),
            (
                DataClass::Billing,
                1,
                3,
                &br#"{"name":"Ada Lovelace","email":"ada@example.com"}"#[..],
            ),
        ];
        cases
            .iter()
            .map(|(class, kek_version, n, plaintext)| {
                let binding = Binding {
                    class: *class,
                    order_id: uuid::Uuid::from_u128(0x0192f8a0_0000_4000_8000_000000000001),
                    record_id: uuid::Uuid::from_u128(
                        0x0192f8a0_0000_4000_8000_000000000100 + u128::from(*n),
                    ),
                };
                let kek = [class.code() * 0x10 + *kek_version as u8; 32];
                let dek = [0x20 + n; 32];
                let env = Envelope {
                    format_version: envelope::FORMAT_VERSION,
                    kek_version: *kek_version,
                    wrapped_dek: aead::seal_with_nonce(
                        &kek,
                        [0x40 + n; 12],
                        &binding.dek_aad(envelope::FORMAT_VERSION, *kek_version),
                        &dek,
                    )
                    .unwrap(),
                    ciphertext: aead::seal_with_nonce(
                        &dek,
                        [0x30 + n; 12],
                        &binding.data_aad(envelope::FORMAT_VERSION),
                        plaintext,
                    )
                    .unwrap(),
                };
                (encode_envelope(&binding, &env), plaintext.to_vec())
            })
            .collect()
    })
}

/// `class (1) ‖ order_id (16) ‖ record_id (16) ‖ format (1) ‖ kek_version
/// (u32 BE) ‖ wrapped_dek length (u16 BE) ‖ wrapped_dek ‖ ciphertext`.
pub fn encode_envelope(b: &Binding, e: &Envelope) -> Vec<u8> {
    let mut out = vec![b.class.code()];
    out.extend_from_slice(b.order_id.as_bytes());
    out.extend_from_slice(b.record_id.as_bytes());
    out.push(e.format_version);
    out.extend_from_slice(&e.kek_version.to_be_bytes());
    out.extend_from_slice(&u16::try_from(e.wrapped_dek.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&e.wrapped_dek);
    out.extend_from_slice(&e.ciphertext);
    out
}

fn decode_envelope(data: &[u8]) -> Option<(Binding, Envelope)> {
    let class = DataClass::ALL
        .into_iter()
        .find(|c| Some(&c.code()) == data.first())?;
    let uuid =
        |r: std::ops::Range<usize>| Some(uuid::Uuid::from_bytes(data.get(r)?.try_into().ok()?));
    let order_id = uuid(1..17)?;
    let record_id = uuid(17..33)?;
    let format_version = *data.get(33)?;
    let kek_version = u32::from_be_bytes(data.get(34..38)?.try_into().ok()?);
    let len = usize::from(u16::from_be_bytes(data.get(38..40)?.try_into().ok()?));
    let wrapped_dek = data.get(40..40 + len)?.to_vec();
    let ciphertext = data.get(40 + len..)?.to_vec();
    Some((
        Binding {
            class,
            order_id,
            record_id,
        },
        Envelope {
            format_version,
            kek_version,
            wrapped_dek,
            ciphertext,
        },
    ))
}

/// Properties: an envelope opens if and only if its bytes (binding
/// included) are exactly those of a sealed original, and then to that
/// original's plaintext; a reader holding only the class's keys gets the
/// same answer as the whole keyring.
pub fn envelope_open(data: &[u8]) {
    static RING: OnceLock<Keyring> = OnceLock::new();
    let ring = RING.get_or_init(fixed_keyring);
    let Some((binding, env)) = decode_envelope(data) else {
        return;
    };
    let canonical = encode_envelope(&binding, &env);
    let opened = envelope::open(ring, &binding, &env);
    let original = envelope_originals()
        .iter()
        .find(|(bytes, _)| *bytes == canonical);
    match (&opened, original) {
        (Ok(plain), Some((_, want))) => assert_eq!(plain.as_slice(), want.as_slice()),
        (Ok(_), None) => panic!("a mutated envelope opened"),
        (Err(e), Some(_)) => panic!("an original envelope did not open: {e:?}"),
        (Err(_), None) => {}
    }
    let class_keys = ring.class_keys(&[binding.class]);
    let by_class = envelope::open(&class_keys, &binding, &env);
    assert_eq!(
        by_class.as_ref().map(|p| p.to_vec()).map_err(|e| *e),
        opened.as_ref().map(|p| p.to_vec()).map_err(|e| *e),
        "class keys and keyring disagree"
    );
    if let Err(e) = opened {
        assert!(matches!(
            e,
            CryptoError::Malformed
                | CryptoError::Unauthentic
                | CryptoError::UnknownKey
                | CryptoError::Format
        ));
    }
}

// ---------------------------------------------------------------------------
// Keyring file
// ---------------------------------------------------------------------------

/// The input as a keyring JSON document and as a sealed keyring file (under
/// the fixed master key).
///
/// Properties: an accepted keyring serialises to a canonical document that
/// parses back to itself; every class has exactly one active KEK, which
/// seals and opens; destroyed versions hold no key; only the fixed keyring
/// unseals (nothing else authenticates under the master key), and sealing
/// it again unseals to the same keyring.
pub fn keyring_file(data: &[u8]) {
    static KNOWN: OnceLock<(Vec<u8>, MasterKey)> = OnceLock::new();
    let (known, master) =
        KNOWN.get_or_init(|| (fixed_keyring().to_json().unwrap().to_vec(), fixed_master()));
    if let Ok(ring) = Keyring::from_json(data) {
        let json = check_keyring(&ring);
        // Nothing in the file is silently dropped: a rewrite (`keys
        // rotate`) would otherwise lose it — keys of a class or MAC this
        // build does not know.
        let doc: Value = serde_json::from_slice(data).unwrap();
        let mine: Value = serde_json::from_slice(&json).unwrap();
        for section in ["keks", "mac_keys"] {
            let names = |v: &Value| -> Vec<String> {
                let mut n: Vec<String> = v[section]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                n.sort();
                n
            };
            assert_eq!(names(&doc), names(&mine), "{section} entries dropped");
        }
        assert_eq!(
            doc["signing"]["algorithm"], "ed25519",
            "unknown signing algorithm accepted"
        );
    }
    match Keyring::unseal(data, master) {
        Ok(ring) => {
            let json = check_keyring(&ring);
            assert_eq!(&json, known, "a keyring other than the sealed one unsealed");
            let again = Keyring::unseal(&ring.seal(master).unwrap(), master).unwrap();
            assert_eq!(again.to_json().unwrap().to_vec(), json);
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(
                !shown.contains(&key_hex(0x5a)),
                "an error shows the master key"
            );
        }
    }
}

fn check_keyring(ring: &Keyring) -> Vec<u8> {
    let json = ring.to_json().unwrap().to_vec();
    let back = Keyring::from_json(&json).expect("a keyring's own JSON parses");
    assert_eq!(
        back.to_json().unwrap().to_vec(),
        json,
        "keyring does not round-trip"
    );
    let info = ring.kek_info();
    for class in DataClass::ALL {
        let of_class: Vec<_> = info.iter().filter(|k| k.class == class).collect();
        let active: Vec<_> = of_class
            .iter()
            .filter(|k| k.state == KekState::Active)
            .collect();
        assert_eq!(
            active.len(),
            1,
            "{class:?} has {} active KEKs",
            active.len()
        );
        let sealing = ring.sealing_kek(class).expect("an active KEK seals");
        assert_eq!(sealing.version, active[0].version);
        for k in &of_class {
            let held = ring.opening_kek(class, k.version).is_ok();
            assert_eq!(
                held,
                k.state != KekState::Destroyed,
                "{class:?} v{}",
                k.version
            );
        }
        let mut versions: Vec<u32> = of_class.iter().map(|k| k.version).collect();
        versions.dedup();
        assert_eq!(versions.len(), of_class.len(), "a version appears twice");
    }
    let rng = ring::rand::SystemRandom::new();
    let b = Binding {
        class: DataClass::Contact,
        order_id: uuid::Uuid::nil(),
        record_id: uuid::Uuid::from_u128(7),
    };
    let env = envelope::seal(&rng, ring, &b, b"x").unwrap();
    assert_eq!(envelope::open(ring, &b, &env).unwrap().as_slice(), b"x");
    assert!(ring.signing_key().is_ok());
    let shown = format!("{ring:?}");
    let doc: Value = serde_json::from_slice(&json).unwrap();
    let mut keys = Vec::new();
    collect_keys(&doc, &mut keys);
    assert!(!keys.is_empty());
    for k in keys {
        assert!(!shown.contains(&k), "Debug shows key material");
    }
    json
}

/// Every `key` and `seed` string of a keyring document.
fn collect_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                match (k.as_str(), c) {
                    ("key" | "seed", Value::String(s)) => out.push(s.clone()),
                    _ => collect_keys(c, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_keys(c, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Custodian share files (and the development master-key file)
// ---------------------------------------------------------------------------

/// The input is up to eight share files separated by NUL bytes (JSON never
/// holds a raw NUL).
///
/// Properties: shares reconstruct a key only when they are every share of
/// one split of the fixed master key (the corpus holds such splits), and
/// then exactly that key; errors never show a component; the whole input as
/// a development key file yields a key whose id is 16 hex digits.
pub fn master_shares(data: &[u8]) {
    static ID: OnceLock<String> = OnceLock::new();
    let want = ID.get_or_init(|| fixed_master().id());
    let parts: Vec<&[u8]> = data.split(|b| *b == 0).take(8).collect();
    let names: Vec<String> = (1..=parts.len())
        .map(|i| format!("share-{i}.json"))
        .collect();
    let shares: Vec<(&Path, &[u8])> = names
        .iter()
        .zip(&parts)
        .map(|(n, p)| (Path::new(n.as_str()), *p))
        .collect();
    match MasterKey::from_share_contents(&shares) {
        Ok(key) => assert_eq!(&key.id(), want, "shares reconstructed a foreign key"),
        Err(e) => {
            let shown = e.to_string();
            for part in &parts {
                if let Ok(text) = std::str::from_utf8(part)
                    && let Ok(v) = serde_json::from_str::<Value>(text)
                    && let Some(c) = v.get("component").and_then(Value::as_str)
                    && c.len() >= 8
                {
                    assert!(!shown.contains(c), "an error shows a share component");
                }
            }
        }
    }
    if let Ok(key) = MasterKey::from_dev_contents(Path::new("master.key"), data) {
        let id = key.id();
        assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!format!("{key:?}").contains(&key_hex(0x5a)));
    }
}

// ---------------------------------------------------------------------------
// Audit verifier on a corrupted database row
// ---------------------------------------------------------------------------

/// Tables whose every column the audit must protect: an edit anywhere in
/// them is a failure in the report (or makes the verification refuse to
/// finish). Left out, on purpose: `idempotency_keys` (a replay cache the
/// audit does not cover), `kek_retirements` (an operational guard, not a
/// record) and the migrations table.
const PROTECTED: [&str; 12] = [
    "orders",
    "consent_tags",
    "billing_details",
    "shipping_details",
    "gift_recipients",
    "payment_cards",
    "contact_emails",
    "purges",
    "access_log",
    "access_log_head",
    "consent_events",
    "consent_events_head",
];

/// Columns an edit of which the audit cannot see, and why.
const UNCOVERED: [(&str, &str); 1] = [
    // Assigned by the database at insert, after the order's MAC was
    // computed; it only orders the orders (the access log's and the consent
    // ledger's own sequence numbers are covered by their chains).
    ("orders", "seq"),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ColumnType {
    Text,
    Integer,
    Blob,
}

struct Column {
    table: String,
    name: String,
    ty: ColumnType,
    /// An `INTEGER PRIMARY KEY`: the column is the rowid itself.
    is_rowid: bool,
    rowids: Vec<i64>,
}

/// The append-only triggers the fixture drops, as an attacker with the
/// file would (`(table, trigger)`): the audit names each as missing.
const DROPPED_GUARDS: [(&str, &str); 2] = [
    ("access_log", "access_log_no_update"),
    ("consent_events", "consent_events_no_update"),
];

/// Whether the report finds nothing but the guards the fixture dropped
/// ([`DROPPED_GUARDS`], each named missing): what "verified" is for a
/// database edited with them off.
fn verified_but_for_the_dropped_guards(r: &checkoutd::audit::verify::Report) -> bool {
    let dropped = |f: &checkoutd::audit::verify::Failure| {
        DROPPED_GUARDS.iter().any(|(table, trigger)| {
            f.table == *table
                && f.what
                    .starts_with(&format!("database guard {trigger} is missing"))
        })
    };
    r.failures.len() as u64 == r.failure_count
        && r.failures.iter().filter(|f| dropped(f)).count() == DROPPED_GUARDS.len()
        && r.failures.iter().all(dropped)
}

/// A small SQLite database with real orders (a plain one dispatched, a
/// gift, an Amex one whose card was purged), access-log entries and a
/// consent withdrawal with a sealed reference, all written through the
/// library; the append-only triggers are dropped, as an attacker with the
/// file would.
pub struct AuditFixture {
    runtime: tokio::runtime::Runtime,
    store: checkoutd::store::sql::SqlStore,
    keyring: Keyring,
    columns: Vec<Column>,
    _dir: tempfile::TempDir,
}

impl AuditFixture {
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = scratch_dir();
        let (store, keyring, columns) = runtime.block_on(build_database(dir.path()));
        AuditFixture {
            runtime,
            store,
            keyring,
            columns,
            _dir: dir,
        }
    }

    /// `data[0]` picks a column, `data[1]` a row, `data[2]` how to change
    /// the cell, the rest is the payload:
    /// - 0: replace with the payload (text: lossy UTF-8; integer: decimal
    ///   text, else up to 8 little-endian bytes; blob: the bytes);
    /// - 1: XOR the payload into the old value from byte `payload[0]` on;
    /// - 2: the old value in upper case (integers: negated);
    /// - 3: the old value cut to `payload[0]` bytes (integers: `>> n`);
    /// - 4: the payload appended to the old value (integers: `+ i8`);
    /// - 5: NULL.
    ///
    /// The row is restored afterwards. Says what happened.
    pub fn run(&self, data: &[u8]) -> Mutation {
        let [pick, row, mode, payload @ ..] = data else {
            return Mutation::Skipped;
        };
        let column = &self.columns[usize::from(*pick) % self.columns.len()];
        let rowid = column.rowids[usize::from(*row) % column.rowids.len()];
        let first = usize::from(payload.first().copied().unwrap_or(0));
        self.runtime.block_on(async {
            let pool = self.store.pool();
            let old = read_cell(pool, column, rowid).await;
            let bytes = |c: &Cell| match c {
                Cell::Text(t) => t.as_bytes().to_vec(),
                Cell::Blob(b) => b.clone(),
                Cell::Int(i) => i.to_string().into_bytes(),
                Cell::Null => Vec::new(),
            };
            let edited: Vec<u8> = match mode % 6 {
                0 => payload.to_vec(),
                1 => {
                    let mut b = bytes(&old);
                    for (i, x) in payload.iter().skip(1).enumerate() {
                        if let Some(v) = b.get_mut(first + i) {
                            *v ^= x;
                        }
                    }
                    b
                }
                2 => bytes(&old).to_ascii_uppercase(),
                3 => bytes(&old).into_iter().take(first).collect(),
                _ => [bytes(&old), payload.to_vec()].concat(),
            };
            let new = match (mode % 6, column.ty, &old) {
                (5, _, _) => Cell::Null,
                (2, ColumnType::Integer, Cell::Int(i)) => Cell::Int(i.wrapping_neg()),
                (3, ColumnType::Integer, Cell::Int(i)) => Cell::Int(i >> (first % 64)),
                (4, ColumnType::Integer, Cell::Int(i)) => {
                    Cell::Int(i.wrapping_add(i64::from(payload.first().copied().unwrap_or(1) as i8)))
                }
                (_, ColumnType::Text, _) => Cell::Text(String::from_utf8_lossy(&edited).into_owned()),
                (_, ColumnType::Blob, _) => Cell::Blob(edited),
                (_, ColumnType::Integer, _) => Cell::Int(
                    std::str::from_utf8(&edited)
                        .ok()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or_else(|| {
                            let mut b = [0u8; 8];
                            let n = edited.len().min(8);
                            b[..n].copy_from_slice(&edited[..n]);
                            i64::from_le_bytes(b)
                        }),
                ),
            };
            if old == new || !write_cell(pool, column, rowid, &new).await {
                return Mutation::Skipped; // Same value, or the database refused it.
            }
            let report = checkoutd::audit::verify::verify(&self.store, &self.keyring, &|_, _| {}).await;
            let now_at = match (&new, column.is_rowid) {
                (Cell::Int(moved), true) => *moved,
                _ => rowid,
            };
            let restored = write_cell(pool, column, now_at, &old).await;
            assert!(restored, "could not restore {}.{}", column.table, column.name);
            let uncovered = UNCOVERED
                .iter()
                .any(|(t, c)| *t == column.table && *c == column.name);
            match report {
                Ok(r) if verified_but_for_the_dropped_guards(&r) && !uncovered => panic!(
                    "the audit passed a database whose {}.{} (rowid {rowid}) was changed from {old:?} to {new:?}",
                    column.table, column.name
                ),
                Ok(r) => {
                    let text = serde_json::to_string(&r).unwrap();
                    for secret in ["4012888888881881", "378282246310005", "ada@example.com", "Lovelace"] {
                        assert!(!text.contains(secret), "the report shows {secret}");
                    }
                    if verified_but_for_the_dropped_guards(&r) {
                        Mutation::Uncovered
                    } else {
                        Mutation::Flagged
                    }
                }
                // Refusing to finish on a malformed row also flags it.
                Err(_) => Mutation::Refused,
            }
        })
    }
}

/// What [`AuditFixture::run`] did with an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Too short, the same value, or a value the database refused.
    Skipped,
    /// The report lists a failure.
    Flagged,
    /// The verification stopped with an error (a row it cannot read).
    Refused,
    /// A change in a column listed in `UNCOVERED`, unflagged.
    Uncovered,
}

impl Default for AuditFixture {
    fn default() -> Self {
        Self::new()
    }
}

/// The audit target for libFuzzer: one fixture per process.
pub fn audit_verify(data: &[u8]) {
    static FIXTURE: OnceLock<Mutex<AuditFixture>> = OnceLock::new();
    let fixture = FIXTURE.get_or_init(|| Mutex::new(AuditFixture::new()));
    let guard = fixture.lock().unwrap_or_else(|p| p.into_inner());
    guard.run(data);
}

/// A scratch directory (in /dev/shm when there is one: the store syncs
/// every commit). A long-lived fuzzing process never drops its fixture, so
/// directories of processes that are gone are removed first.
fn scratch_dir() -> tempfile::TempDir {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    if let Ok(entries) = std::fs::read_dir(&base) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("checkoutd-fuzz-audit-")
                && let Some(pid) = rest.split('-').next()
                && !Path::new(&format!("/proc/{pid}")).exists()
                && Path::new("/proc/self").exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    tempfile::Builder::new()
        .prefix(&format!("checkoutd-fuzz-audit-{}-", std::process::id()))
        .tempdir_in(base)
        .unwrap()
}

#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Text(String),
    Int(i64),
    Blob(Vec<u8>),
}

async fn read_cell(pool: &sqlx::AnyPool, c: &Column, rowid: i64) -> Cell {
    let sql = format!("SELECT \"{}\" FROM \"{}\" WHERE rowid = ?", c.name, c.table);
    match c.ty {
        ColumnType::Text => sqlx::query_scalar::<_, Option<String>>(&sql)
            .bind(rowid)
            .fetch_one(pool)
            .await
            .unwrap()
            .map_or(Cell::Null, Cell::Text),
        ColumnType::Integer => sqlx::query_scalar::<_, Option<i64>>(&sql)
            .bind(rowid)
            .fetch_one(pool)
            .await
            .unwrap()
            .map_or(Cell::Null, Cell::Int),
        ColumnType::Blob => sqlx::query_scalar::<_, Option<Vec<u8>>>(&sql)
            .bind(rowid)
            .fetch_one(pool)
            .await
            .unwrap()
            .map_or(Cell::Null, Cell::Blob),
    }
}

/// Whether the database took the new value (constraints may refuse it).
async fn write_cell(pool: &sqlx::AnyPool, c: &Column, rowid: i64, v: &Cell) -> bool {
    let sql = format!(
        "UPDATE \"{}\" SET \"{}\" = ? WHERE rowid = ?",
        c.table, c.name
    );
    let q = sqlx::query(&sql);
    let q = match v {
        Cell::Null => q.bind(Option::<String>::None),
        Cell::Text(s) => q.bind(s.clone()),
        Cell::Int(i) => q.bind(*i),
        Cell::Blob(b) => q.bind(b.clone()),
    };
    q.bind(rowid).execute(pool).await.is_ok()
}

async fn build_database(dir: &Path) -> (checkoutd::store::sql::SqlStore, Keyring, Vec<Column>) {
    use checkoutd::store::Store;
    let rng = ring::rand::SystemRandom::new();
    let keyring = Keyring::generate(&rng, "2026-01-01T00:00:00Z").unwrap();
    let store =
        checkoutd::store::sqlite::open(&dir.join("audit.db"), checkoutd::store::Schema::Migrate)
            .await
            .unwrap();

    let base = json!({
        "storefront_order_ref": "A-1001",
        "customer": {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+1 949 555 0100"},
        "billing_address": {"line1": "51 Columbia", "city": "Aliso Viejo", "postal_code": "92656", "country": "US"},
        "items": [{"sku": "FAXSTF-PRO", "description": "Fax stuff", "quantity": 2, "unit_price_minor": 4999}],
        "currency": "USD",
        "card": {"number": "4012888888881881", "exp_month": 12, "exp_year": 2040, "cvc": "123"},
        "consent": {"special_offers": true, "policy_version": "2002-06-05"}
    });
    let mut gift = base.clone();
    gift["gift_recipient"] = json!({"name": "Charles Babbage", "address": {"line1": "1 Dorset Street",
        "city": "London", "postal_code": "W1U 4EG", "country": "GB"}, "message": "Happy birthday!"});
    let mut amex = base.clone();
    amex["card"] =
        json!({"number": "378282246310005", "exp_month": 1, "exp_year": 2040, "cvc": "4321"});
    amex["shipping_address"] = json!({"line1": "9 Harbour Road", "city": "Portsmouth",
        "postal_code": "PO1 3AX", "country": "GB"});
    let mut ids = Vec::new();
    for (i, tree) in [base, gift, amex].into_iter().enumerate() {
        let form = with_rules(|r| order::parse(tree, Source::Json, r)).unwrap();
        let key = IdempotencyKey::parse(format!("fuzz-{i}").as_bytes()).unwrap();
        let sealed =
            checkoutd::intake::seal::seal_order(&rng, &keyring, form, [7; 32], &key, [0; 32])
                .unwrap();
        ids.push(sealed.id);
        store.commit_orders([sealed].into()).await.unwrap();
    }
    // Dispatch the first order.
    let id = ids[0].to_string();
    let dispatch = checkoutd::store::rows::Dispatch {
        carrier: "DHL".into(),
        tracking: "JD0002".into(),
        dispatched_at: checkoutd::ids::now(),
    };
    let mac =
        keyring
            .consent_tag_key()
            .sign(&[&checkoutd::intake::seal::dispatch_canonical_bytes(
                &id,
                &dispatch.carrier,
                &dispatch.tracking,
                &dispatch.dispatched_at,
            )]);
    let checked = store.order_check(ids[0]).await.unwrap().unwrap();
    let outcome = store
        .dispatch(
            ids[0],
            &checked,
            &checkoutd::store::rows::NewDispatch { dispatch, mac },
        )
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            checkoutd::store::rows::DispatchOutcome::Dispatched(_)
        ),
        "the seed's first order was not dispatched: {outcome:?}"
    );
    // Purge the Amex order's card (crypto-shredding).
    checkoutd::retention::purge_order(
        &store,
        &keyring,
        &ids[2].to_string(),
        &[DataClass::Card],
        "operator",
        ("operator", ""),
    )
    .await
    .unwrap();
    // Access-log entries: the first order's dispatch (every dispatched
    // order has its entry), then two reads.
    let entries: Vec<checkoutd::audit::access_log::Entry> = (0..3)
        .map(|i| checkoutd::audit::access_log::Entry {
            at: checkoutd::ids::now(),
            role: "fulfillment".into(),
            cert_fingerprint: "ab".repeat(32),
            origin_ip: "127.0.0.1".into(),
            action: if i == 0 {
                checkoutd::fulfillment::DISPATCH_ACTION.into()
            } else {
                "GET /v1/shipments".into()
            },
            objects: vec![ids[i].to_string()],
            outcome: checkoutd::audit::access_log::Outcome::Allowed,
            status: 200,
        })
        .collect();
    store
        .append_access_log(
            &entries,
            &checkoutd::audit::access_log::Chainer::new(keyring.access_log_key()),
        )
        .await
        .unwrap();
    // A withdrawal with a sealed reference.
    let handle = std::sync::Arc::new(KeyringHandle::new(
        Keyring::from_json(&keyring.to_json().unwrap()).unwrap(),
        None,
    ));
    let withdrawal = checkoutd::consent::parse_opt_out(json!({"email": "ada@example.com",
        "purposes": ["special_offers"], "channel": "email", "reference": "<msg-1@example.com>"}))
    .unwrap();
    checkoutd::consent::Ledger::new(handle)
        .withdraw(&store, &withdrawal)
        .await
        .unwrap();

    let pool = store.pool().clone();
    for (_, trigger) in DROPPED_GUARDS {
        sqlx::query(&format!("DROP TRIGGER IF EXISTS {trigger}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let report = checkoutd::audit::verify::verify(&store, &keyring, &|_, _| {})
        .await
        .unwrap();
    assert!(
        verified_but_for_the_dropped_guards(&report),
        "the fixture database must verify: {:?}",
        report.failures
    );
    // … and the guards dropped are named, each once.
    assert_eq!(report.failure_count, DROPPED_GUARDS.len() as u64);

    let mut columns = Vec::new();
    for table in PROTECTED {
        let rowids: Vec<i64> = sqlx::query_scalar(&format!("SELECT rowid FROM \"{table}\""))
            .fetch_all(&pool)
            .await
            .unwrap();
        assert!(!rowids.is_empty(), "the fixture has no {table} row");
        let info: Vec<(String, String, i64)> = sqlx::query_as(&format!(
            "SELECT name, type, pk FROM pragma_table_info('{table}')"
        ))
        .fetch_all(&pool)
        .await
        .unwrap();
        let keys = info.iter().filter(|(_, _, pk)| *pk > 0).count();
        for (name, ty, pk) in info {
            let ty = match ty.to_ascii_uppercase().as_str() {
                "TEXT" => ColumnType::Text,
                "INTEGER" => ColumnType::Integer,
                "BLOB" => ColumnType::Blob,
                other => panic!("unexpected column type {other}"),
            };
            columns.push(Column {
                table: table.to_owned(),
                name,
                is_rowid: ty == ColumnType::Integer && pk == 1 && keys == 1,
                ty,
                rowids: rowids.clone(),
            });
        }
    }
    (store, keyring, columns)
}

/// The column list, for the seed writer and the README: `(index, table,
/// column)` in the order `data[0]` picks them.
pub fn audit_columns(f: &AuditFixture) -> Vec<(usize, String, String)> {
    f.columns
        .iter()
        .enumerate()
        .map(|(i, c)| (i, c.table.clone(), c.name.clone()))
        .collect()
}
