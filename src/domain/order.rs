//! The order form (DESIGN.md "The order form") and its validator.
//!
//! `parse` walks the input tree once, takes every known field out of it,
//! and reports *every* violation at once by dotted path; whatever is left is
//! an unknown field. No error carries a value: only a path, a code and a
//! static message. Values that are dropped (wrong type, unknown field) are
//! zeroized on the way out, as is every string taken from the tree.

use serde_json::{Map, Value};
use time::{Date, OffsetDateTime};
use zeroize::{Zeroize, Zeroizing};

use super::consent::Purposes;
use super::contact::{Country, Currency, Email, Phone};
use super::cvc::Cvc;
use super::expiry::{Expiry, ExpiryError};
use super::pan::{Pan, PanError};
use super::text::{MAX_MESSAGE, MAX_TEXT, Personal, Plain, TextError};
use crate::http::FieldError;

/// Most items in one order.
pub const MAX_ITEMS: usize = 100;
/// Largest quantity of one item.
pub const MAX_QUANTITY: i64 = 10_000;
/// Largest unit price, in minor units (a billion major units at 2 digits).
pub const MAX_UNIT_PRICE_MINOR: i64 = 100_000_000_000;
/// Largest order total, in minor units: 2^53 − 1, the largest integer every
/// JSON reader holds exactly (a JavaScript storefront reads numbers as
/// doubles, and would show and charge a rounded `total_minor`). The item
/// limits alone allow 10^17.
pub const MAX_TOTAL_MINOR: i64 = (1 << 53) - 1;

/// Where the tree came from: a form's leaves are all strings, so numbers and
/// checkboxes are read from text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Json,
    Form,
}

/// What validation needs to know besides the input.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// Policy versions the server knows (`consent.policy_version`).
    pub policy_versions: &'a [String],
    /// Now, for card expiry (see [`Rules::today`]) and the checkout time
    /// (`consent.captured_at`).
    pub now: OffsetDateTime,
}

impl Rules<'_> {
    /// Today for card expiry: the date at UTC−12, the last place on Earth
    /// a day ends. A card is good through the last day of its expiry month
    /// where its holder is; judged on the UTC date, a card expiring in
    /// November was refused from 4 pm on 30 November in California. (The
    /// issuer declines an expired card at authorisation in any case.)
    pub fn today(&self) -> Date {
        self.now.to_offset(EXPIRY_OFFSET).date()
    }
}

/// The offset whose date [`Rules::today`] is: UTC−12.
const EXPIRY_OFFSET: time::UtcOffset = match time::UtcOffset::from_hms(-12, 0, 0) {
    Ok(offset) => offset,
    Err(_) => time::UtcOffset::UTC,
};

/// How far ahead of this server's clock a storefront's checkout time may
/// be (clock skew between the hosts).
pub const CAPTURED_AT_SKEW: time::Duration = time::Duration::minutes(5);

/// How old a checkout time may be: a week, the default replay window of an
/// Idempotency-Key (README) — longer than any storefront retries one
/// order. The bound catches a wrong field, such as an account's creation
/// date. Within it the storefront is trusted as it is with the choices
/// themselves: the order ranks among the customer's checkouts by this
/// time, so a wrong one misplaces its choices (a "no" dated too early
/// ranks below a "yes" given since).
pub const CAPTURED_AT_MAX_AGE: time::Duration = time::Duration::days(7);

#[derive(Debug)]
pub struct Address {
    pub line1: Personal,
    pub line2: Option<Personal>,
    pub city: Personal,
    pub region: Option<Personal>,
    pub postal_code: Personal,
    pub country: Country,
}

#[derive(Debug)]
pub struct Customer {
    pub name: Personal,
    pub company: Option<Personal>,
    pub email: Email,
    pub phone: Phone,
}

#[derive(Debug)]
pub struct GiftRecipient {
    pub name: Personal,
    pub address: Address,
    pub phone: Option<Phone>,
    pub message: Option<Personal>,
}

/// Where the order goes.
#[derive(Debug)]
pub enum ShipTo {
    /// No shipping address given: the billing address.
    BillingAddress,
    /// The customer's own shipping address.
    Address(Address),
    /// A gift: the recipient's details (any shipping address sent alongside
    /// was validated and then dropped — data minimisation).
    Gift(GiftRecipient),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    pub sku: Plain,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Plain>,
    pub quantity: i64,
    pub unit_price_minor: i64,
}

/// Card data. The CVC was checked and dropped during parsing: it is not here.
#[derive(Debug)]
pub struct Card {
    pub pan: Pan,
    pub expiry: Expiry,
    pub holder_name: Option<Personal>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    pub purposes: Purposes,
    pub policy_version: String,
    /// When the customer made these choices (submitted the checkout), if
    /// the storefront says: an order retried later — after a 503, say —
    /// keeps its place before an opt-out the customer sent meanwhile.
    /// Absent, the choices count from when checkout took the order.
    pub captured_at: Option<OffsetDateTime>,
}

/// A validated order.
#[derive(Debug)]
pub struct OrderForm {
    pub storefront_order_ref: Option<Plain>,
    pub customer: Customer,
    pub billing_address: Address,
    pub ship_to: ShipTo,
    pub items: Vec<Item>,
    pub currency: Currency,
    pub card: Card,
    pub consent: Consent,
}

impl OrderForm {
    /// Sum of quantity × unit price (bounded, so it cannot overflow).
    pub fn total_minor(&self) -> i64 {
        self.items
            .iter()
            .map(|i| i.quantity.saturating_mul(i.unit_price_minor))
            .fold(0i64, i64::saturating_add)
    }
}

/// Validates a tree. `Err` holds every violation found.
pub fn parse(tree: Value, source: Source, rules: &Rules<'_>) -> Result<OrderForm, Vec<FieldError>> {
    let mut r = Reader {
        source,
        errors: Vec::new(),
    };
    let Value::Object(mut root) = tree else {
        scrub(tree);
        return Err(vec![FieldError::new(
            "",
            "invalid_type",
            "The order must be an object",
        )]);
    };
    let storefront_order_ref = r.plain(&mut root, "", "storefront_order_ref", false, MAX_TEXT);
    let customer = r
        .object(&mut root, "", "customer", Section::Required)
        .and_then(|(mut m, p)| {
            let name = r.personal(&mut m, &p, "name", true, MAX_TEXT);
            let company = r.personal(&mut m, &p, "company", false, MAX_TEXT);
            let email = r.with_string(&mut m, &p, "email", true, Email::parse_contact);
            let phone = r.with_string(&mut m, &p, "phone", true, phone);
            r.finish(m, &p);
            Some(Customer {
                name: name?,
                company,
                email: email?,
                phone: phone?,
            })
        });
    let billing_address = r.address(&mut root, "", "billing_address", true);
    let shipping_address = r.address(&mut root, "", "shipping_address", false);
    let gift = r
        .object(
            &mut root,
            "",
            "gift_recipient",
            Section::Optional(&GIFT_RECIPIENT),
        )
        .and_then(|(mut m, p)| {
            let name = r.personal(&mut m, &p, "name", true, MAX_TEXT);
            let address = r.address(&mut m, &p, "address", true);
            let phone = r.with_string(&mut m, &p, "phone", false, phone);
            let message = r.text(&mut m, &p, "message", false, MAX_MESSAGE, true);
            r.finish(m, &p);
            Some(GiftRecipient {
                name: name?,
                address: address?,
                phone,
                message,
            })
        });
    let items = r.items(&mut root);
    let currency = r.with_string(&mut root, "", "currency", true, |s| {
        Currency::parse(s).ok_or((
            "invalid_currency",
            "Not a current ISO 4217 currency with minor units",
        ))
    });
    let card = r.card(&mut root, rules);
    let consent = r.consent(&mut root, rules);
    r.finish(root, "");

    if !r.errors.is_empty() {
        return Err(r.errors);
    }
    let (
        Some(customer),
        Some(billing_address),
        Some(items),
        Some(currency),
        Some(card),
        Some(consent),
    ) = (customer, billing_address, items, currency, card, consent)
    else {
        // Every `None` above recorded an error; this is unreachable in
        // practice but must not panic.
        return Err(vec![FieldError::new(
            "",
            "invalid",
            "The order form is incomplete",
        )]);
    };
    let ship_to = match (gift, shipping_address) {
        (Some(gift), _) => ShipTo::Gift(gift),
        (None, Some(address)) => ShipTo::Address(address),
        (None, None) => ShipTo::BillingAddress,
    };
    Ok(OrderForm {
        storefront_order_ref,
        customer,
        billing_address,
        ship_to,
        items,
        currency,
        card,
        consent,
    })
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// How an unknown member is named in an error: as itself only when it is
/// shaped like one of our field names (lower-case letters and `_`, at most
/// 32, or `line1`/`line2`), so a client-chosen name carrying a card
/// number, an email or a person's name is never echoed; otherwise
/// `<unknown>`.
pub fn shown_field_name(key: &str) -> &str {
    let schema_like = (!key.is_empty()
        && key.len() <= 32
        && key.as_bytes()[0].is_ascii_lowercase()
        && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        || key == "line1"
        || key == "line2";
    if schema_like { key } else { "<unknown>" }
}

/// A dotted name as an error may show it: every segment through
/// [`shown_field_name`], except the index (up to 3 digits) right after the
/// top-level `items`, the order's one list (`items.0.sku`). Digits anywhere
/// else are not shown: a name made of digit groups (`4111.1111.1111.1111`),
/// or `items` nested in members of that name
/// (`items.411.items.111.items.111.items.111.items.111`), would otherwise
/// come back in the error as the card number it spells. (The fuzz targets
/// check every error field against this rule.)
pub fn shown_path(name: &str) -> String {
    name.split('.')
        .enumerate()
        .map(|(i, segment)| {
            let index = i == 1
                && name.starts_with("items.")
                && !segment.is_empty()
                && segment.len() <= 3
                && segment.bytes().all(|b| b.is_ascii_digit());
            if index {
                segment
            } else {
                shown_field_name(segment)
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Zeroizes every string (and key) of a tree being dropped.
/// A tree, or a part of one, that is wiped ([`scrub`]) when dropped unless
/// taken out with [`Wiped::take`]: a parse that fails part way (a
/// duplicate member, a syntax error, a form's gap in its indices) leaves
/// no unwiped card number or CVC behind.
pub struct Wiped<T: Into<Value> + Default>(pub T);

impl<T: Into<Value> + Default> Wiped<T> {
    /// The value, no longer wiped on drop.
    pub fn take(mut self) -> T {
        std::mem::take(&mut self.0)
    }
}

impl<T: Into<Value> + Default> Drop for Wiped<T> {
    fn drop(&mut self) {
        scrub(std::mem::take(&mut self.0).into());
    }
}

pub fn scrub(value: Value) {
    match value {
        Value::String(mut s) => s.zeroize(),
        Value::Array(items) => items.into_iter().for_each(scrub),
        Value::Object(map) => {
            for (mut k, v) in map {
                k.zeroize();
                scrub(v);
            }
        }
        _ => {}
    }
}

struct Reader {
    source: Source,
    errors: Vec<FieldError>,
}

type Reject = (&'static str, &'static str);

impl Reader {
    fn error(&mut self, path: String, code: &'static str, message: &'static str) {
        self.errors.push(FieldError::new(path, code, message));
    }

    /// Takes a field out; JSON `null` counts as absent.
    fn take(
        &mut self,
        map: &mut Map<String, Value>,
        prefix: &str,
        key: &str,
        required: bool,
    ) -> Option<Value> {
        match map.remove(key) {
            None | Some(Value::Null) => {
                if required {
                    self.error(join(prefix, key), "required", "This field is required");
                }
                None
            }
            Some(v) => Some(v),
        }
    }

    /// A string field, zeroized when dropped. An empty (or all-blank)
    /// optional string counts as absent.
    fn string(
        &mut self,
        map: &mut Map<String, Value>,
        prefix: &str,
        key: &str,
        required: bool,
    ) -> Option<Zeroizing<String>> {
        match self.take(map, prefix, key, required)? {
            Value::String(s) => {
                let s = Zeroizing::new(s);
                if s.trim().is_empty() {
                    if required {
                        self.error(join(prefix, key), "required", "This field is required");
                    }
                    return None;
                }
                Some(s)
            }
            other => {
                scrub(other);
                self.error(join(prefix, key), "invalid_type", "Expected a string");
                None
            }
        }
    }

    fn with_string<T>(
        &mut self,
        map: &mut Map<String, Value>,
        prefix: &str,
        key: &str,
        required: bool,
        parse: impl FnOnce(&str) -> Result<T, Reject>,
    ) -> Option<T> {
        let s = self.string(map, prefix, key, required)?;
        match parse(&s) {
            Ok(v) => Some(v),
            Err((code, message)) => {
                self.error(join(prefix, key), code, message);
                None
            }
        }
    }

    fn text(
        &mut self,
        map: &mut Map<String, Value>,
        prefix: &str,
        key: &str,
        required: bool,
        max: usize,
        newlines: bool,
    ) -> Option<Personal> {
        self.with_string(map, prefix, key, required, |s| {
            Personal::parse(s, max, newlines).map_err(|e| text_reject(e, max))
        })
    }

    fn personal(
        &mut self,
        map: &mut Map<String, Value>,
        prefix: &str,
        key: &str,
        required: bool,
        max: usize,
    ) -> Option<Personal> {
        self.text(map, prefix, key, required, max, false)
    }

    /// Text stored in clear: refused when it looks like a card number, an
    /// email address or a phone number written with `+` (those may only
    /// ever be stored encrypted).
    fn plain(
        &mut self,
        map: &mut Map<String, Value>,
        prefix: &str,
        key: &str,
        required: bool,
        max: usize,
    ) -> Option<Plain> {
        self.with_string(map, prefix, key, required, |s| {
            // The length first: the detectors below read a text more than
            // once, so they only ever see one of bounded length. (No copy
            // of a refused value is made: the `Plain` comes last.)
            super::text::check(s, max, false).map_err(|e| text_reject(e, max))?;
            if super::detect::contains_pan_clear(s) {
                return Err((
                    "looks_like_card_number",
                    "This field is stored in clear and must not hold a card number",
                ));
            }
            if super::detect::contains_email(s) {
                return Err((
                    "looks_like_email",
                    "This field is stored in clear and must not hold an email address",
                ));
            }
            if super::detect::contains_phone(s) {
                return Err((
                    "looks_like_phone",
                    "This field is stored in clear and must not hold a phone number",
                ));
            }
            Plain::parse(s, max).map_err(|e| text_reject(e, max))
        })
    }

    /// An integer: a JSON number, or decimal text in a form.
    fn integer(
        &mut self,
        map: &mut Map<String, Value>,
        prefix: &str,
        key: &str,
        required: bool,
    ) -> Option<i64> {
        let value = self.take(map, prefix, key, required)?;
        // A whole number too large for 64 bits is out of range, not of the
        // wrong type.
        const OUT_OF_RANGE: Reject = ("out_of_range", "The number is out of range");
        const NOT_WHOLE: Reject = ("invalid_type", "Expected a whole number");
        // A number must be written as a whole number: `2.0` or `1e2` is
        // refused (a float says nothing exact about what was meant —
        // `4999.9999999999999` reads as 5000 — and a retry writing the
        // same number otherwise would hash as another request).
        let parsed = match (&value, self.source) {
            (Value::Number(n), _) => n.as_i64().ok_or_else(|| {
                let huge = n.is_u64()
                    || n.as_f64()
                        .is_some_and(|f| f.fract() == 0.0 && f.abs() >= 9.2e18);
                if huge { OUT_OF_RANGE } else { NOT_WHOLE }
            }),
            (Value::String(s), Source::Form) => {
                let t = s.trim();
                if t.is_empty() && required {
                    scrub(value);
                    self.error(join(prefix, key), "required", "This field is required");
                    return None;
                }
                t.parse::<i64>().map_err(|e| match e.kind() {
                    std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                        OUT_OF_RANGE
                    }
                    _ => NOT_WHOLE,
                })
            }
            _ => Err(NOT_WHOLE),
        };
        scrub(value);
        match parsed {
            Ok(n) => Some(n),
            Err((code, message)) => {
                self.error(join(prefix, key), code, message);
                None
            }
        }
    }

    /// A checkbox: JSON `true`/`false`; in a form, the browser's default
    /// value of a ticked box (`on`) or a yes (`true`, `1`, `yes`, `y`) is
    /// true, and a no (`off`, `false`, `0`, `no`, `n`) or an empty value (a
    /// select's placeholder, an untouched input: as absent, not consented)
    /// is false. Any other value is refused rather than guessed: this is a
    /// customer's consent, and a Yes/No control may send a "no" in a word
    /// we do not know (`nein`, `non`).
    fn boolean(&mut self, map: &mut Map<String, Value>, prefix: &str, key: &str) -> bool {
        let Some(value) = self.take(map, prefix, key, false) else {
            return false;
        };
        let parsed = match (&value, self.source) {
            (Value::Bool(b), _) => Some(*b),
            (Value::String(s), Source::Form) => match s.trim().to_ascii_lowercase().as_str() {
                "on" | "true" | "1" | "yes" | "y" => Some(true),
                "" | "off" | "false" | "0" | "no" | "n" => Some(false),
                _ => None,
            },
            _ => None,
        };
        scrub(value);
        parsed.unwrap_or_else(|| {
            self.error(join(prefix, key), "invalid_type", "Expected true or false");
            false
        })
    }

    /// A group of fields. An optional group whose every field is blank
    /// counts as absent, as an optional string does: an HTML form sends
    /// every input of a section the customer left empty (a separate
    /// shipping address, a gift recipient) as empty strings — and its
    /// country drop-down, which always holds a choice (often the shop's
    /// own country pre-selected), as that choice: in a form, a section
    /// whose only filled-in field is a country is still untouched. (Not in
    /// JSON, where a client that sends a country alone has a bug to hear
    /// about rather than a shipping address silently dropped.) A field the
    /// section does not have, blank or not, makes it touched: it is then
    /// read as any section is, and the field reported as unknown.
    fn object(
        &mut self,
        map: &mut Map<String, Value>,
        prefix: &str,
        key: &str,
        section: Section,
    ) -> Option<(Map<String, Value>, String)> {
        let required = matches!(section, Section::Required);
        match self.take(map, prefix, key, required)? {
            Value::Object(m) if matches!(section, Section::Optional(members) if untouched(&m, self.source, members)) =>
            {
                scrub(Value::Object(m));
                None
            }
            Value::Object(m) => Some((m, join(prefix, key))),
            other => {
                scrub(other);
                self.error(join(prefix, key), "invalid_type", "Expected an object");
                None
            }
        }
    }

    /// Reports every field left in `map` as unknown.
    fn finish(&mut self, map: Map<String, Value>, prefix: &str) {
        for (mut key, value) in map {
            let shown = join(prefix, shown_field_name(&key));
            key.zeroize();
            scrub(value);
            self.error(
                shown,
                "unknown_field",
                "This field is not part of the order form",
            );
        }
    }

    fn address(
        &mut self,
        map: &mut Map<String, Value>,
        prefix: &str,
        key: &str,
        required: bool,
    ) -> Option<Address> {
        let section = if required {
            Section::Required
        } else {
            Section::Optional(&ADDRESS)
        };
        let (mut m, p) = self.object(map, prefix, key, section)?;
        let line1 = self.personal(&mut m, &p, "line1", true, MAX_TEXT);
        let line2 = self.personal(&mut m, &p, "line2", false, MAX_TEXT);
        let city = self.personal(&mut m, &p, "city", true, MAX_TEXT);
        let region = self.personal(&mut m, &p, "region", false, MAX_TEXT);
        let postal_code = self.personal(&mut m, &p, "postal_code", true, 32);
        let country = self.with_string(&mut m, &p, "country", true, |s| {
            Country::parse(s).ok_or(("invalid_country", "Not an ISO 3166-1 alpha-2 country code"))
        });
        self.finish(m, &p);
        Some(Address {
            line1: line1?,
            line2,
            city: city?,
            region,
            postal_code: postal_code?,
            country: country?,
        })
    }

    fn items(&mut self, root: &mut Map<String, Value>) -> Option<Vec<Item>> {
        let list = match self.take(root, "", "items", true)? {
            Value::Array(list) => list,
            other => {
                scrub(other);
                self.error("items".into(), "invalid_type", "Expected a list of items");
                return None;
            }
        };
        if list.is_empty() {
            self.error("items".into(), "required", "At least one item is required");
            return None;
        }
        if list.len() > MAX_ITEMS {
            list.into_iter().for_each(scrub);
            self.error("items".into(), "too_many", "At most 100 items per order");
            return None;
        }
        let mut items = Vec::with_capacity(list.len());
        let mut ok = true;
        for (i, value) in list.into_iter().enumerate() {
            let p = format!("items.{i}");
            let Value::Object(mut m) = value else {
                scrub(value);
                self.error(p, "invalid_type", "Expected an object");
                ok = false;
                continue;
            };
            let sku = self.plain(&mut m, &p, "sku", true, 64);
            let description = self.plain(&mut m, &p, "description", false, MAX_TEXT);
            let quantity = self.integer(&mut m, &p, "quantity", true).and_then(|q| {
                (1..=MAX_QUANTITY).contains(&q).then_some(q).or_else(|| {
                    self.error(
                        join(&p, "quantity"),
                        "out_of_range",
                        "Quantity must be 1 to 10000",
                    );
                    None
                })
            });
            let price = self
                .integer(&mut m, &p, "unit_price_minor", true)
                .and_then(|v| {
                    (0..=MAX_UNIT_PRICE_MINOR)
                        .contains(&v)
                        .then_some(v)
                        .or_else(|| {
                            self.error(
                                join(&p, "unit_price_minor"),
                                "out_of_range",
                                "Unit price must be 0 to 100000000000 minor units",
                            );
                            None
                        })
                });
            self.finish(m, &p);
            match (sku, quantity, price) {
                (Some(sku), Some(quantity), Some(unit_price_minor)) => items.push(Item {
                    sku,
                    description,
                    quantity,
                    unit_price_minor,
                }),
                _ => ok = false,
            }
        }
        if ok {
            let total = items
                .iter()
                .map(|i| i.quantity.saturating_mul(i.unit_price_minor))
                .fold(0i64, i64::saturating_add);
            if total > MAX_TOTAL_MINOR {
                self.error(
                    "items".into(),
                    "total_out_of_range",
                    "The order total must be at most 9007199254740991 minor units",
                );
                return None;
            }
        }
        ok.then_some(items)
    }

    fn card(&mut self, root: &mut Map<String, Value>, rules: &Rules<'_>) -> Option<Card> {
        let (mut m, p) = self.object(root, "", "card", Section::Required)?;
        let pan = self.with_string(&mut m, &p, "number", true, |s| {
            Pan::parse(s).map_err(|e| match e {
                PanError::Format => (
                    "invalid_format",
                    "A card number holds only digits, spaces and dashes",
                ),
                PanError::UnknownBrand => ("unknown_brand", "Not a card brand we accept"),
                PanError::Length => (
                    "invalid_length",
                    "Wrong number of digits for the card brand",
                ),
                PanError::Luhn => ("luhn", "The card number fails the Luhn check"),
            })
        });
        let month = self.integer(&mut m, &p, "exp_month", true);
        let year = self.integer(&mut m, &p, "exp_year", true);
        if let (Some(month), Some(year)) = (month, year)
            && let Err(e) = Expiry::parse(month, year, rules.today())
        {
            match e {
                ExpiryError::Invalid {
                    month: bad_month,
                    year: bad_year,
                } => {
                    if bad_month {
                        self.error(
                            join(&p, "exp_month"),
                            "out_of_range",
                            "Month must be 1 to 12",
                        );
                    }
                    if bad_year {
                        self.error(
                            join(&p, "exp_year"),
                            "out_of_range",
                            "Year must be four digits, at most 20 years ahead",
                        );
                    }
                }
                // This year's card is out of date by its month.
                ExpiryError::Expired if year == i64::from(rules.today().year()) => {
                    self.error(join(&p, "exp_month"), "expired", "The card has expired")
                }
                ExpiryError::Expired => {
                    self.error(join(&p, "exp_year"), "expired", "The card has expired")
                }
            }
        }
        // A year already past is reported even when the month is wrong or
        // missing (every violation at once): no month makes it valid.
        let month_unusable = month.is_none_or(|m| !(1..=12).contains(&m));
        if month_unusable
            && year.is_some_and(|y| (2000..i64::from(rules.today().year())).contains(&y))
        {
            self.error(join(&p, "exp_year"), "expired", "The card has expired");
        }
        let brand = pan.as_ref().map(Pan::brand);
        // Validated, then dropped here (zeroized): the CVC is never kept.
        let cvc = self.with_string(&mut m, &p, "cvc", true, |s| {
            Cvc::parse(s.trim(), brand)
                .map_err(|_| ("invalid_cvc", "3 digits, or 4 for American Express"))
        });
        drop(cvc);
        let holder_name = self.personal(&mut m, &p, "holder_name", false, MAX_TEXT);
        self.finish(m, &p);
        let expiry = Expiry::parse(month?, year?, rules.today()).ok()?;
        Some(Card {
            pan: pan?,
            expiry,
            holder_name,
        })
    }

    fn consent(&mut self, root: &mut Map<String, Value>, rules: &Rules<'_>) -> Option<Consent> {
        let (mut m, p) = self.object(root, "", "consent", Section::Required)?;
        let mut flags = [false; 5];
        for (flag, name) in flags.iter_mut().zip(Purposes::NAMES) {
            *flag = self.boolean(&mut m, &p, name);
        }
        let version = self.with_string(&mut m, &p, "policy_version", true, |s| {
            let s = s.trim();
            rules
                .policy_versions
                .iter()
                .find(|v| v.as_str() == s)
                .cloned()
                .ok_or((
                    "unknown_policy_version",
                    "Not a privacy-policy version this server knows",
                ))
        });
        // Trimmed, as every other value is (a form's trailing space).
        let captured_at = self.with_string(&mut m, &p, "captured_at", false, |s| {
            checkout_time(s.trim(), rules.now)
        });
        self.finish(m, &p);
        Some(Consent {
            purposes: Purposes::from_array(flags),
            policy_version: version?,
            captured_at,
        })
    }
}

/// A checkout time: RFC 3339 with its offset, no later than now (give or
/// take [`CAPTURED_AT_SKEW`]) and no older than [`CAPTURED_AT_MAX_AGE`].
/// Stored at the millisecond, in UTC, as every time checkoutd writes.
fn checkout_time(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, Reject> {
    let at =
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|_| {
            (
                "invalid_timestamp",
                "Not an RFC 3339 time with an offset (e.g. 2026-11-29T17:05:00Z)",
            )
        })?;
    if at > now + CAPTURED_AT_SKEW {
        return Err((
            "in_the_future",
            "The checkout time is in the future (more than 5 minutes ahead of this server's clock)",
        ));
    }
    if at < now - CAPTURED_AT_MAX_AGE {
        return Err(("too_old", "The checkout time is more than 7 days old"));
    }
    Ok(at)
}

/// A phone number: valid, and not a card number (it is sealed for the
/// warehouse).
fn phone(s: &str) -> Result<Phone, Reject> {
    let phone =
        Phone::parse(s).ok_or(("invalid_phone", "Not a valid phone number (7–20 digits)"))?;
    if phone.is_card_number() {
        return Err((
            "looks_like_card_number",
            "A phone number must not be a card number",
        ));
    }
    Ok(phone)
}

/// Whether a group of fields is required, or optional with these members.
#[derive(Clone, Copy)]
enum Section {
    Required,
    Optional(&'static Members),
}

/// The fields of a section: each name, and its own members when it is a
/// group itself.
struct Members(&'static [(&'static str, Option<&'static Members>)]);

const ADDRESS: Members = Members(&[
    ("line1", None),
    ("line2", None),
    ("city", None),
    ("region", None),
    ("postal_code", None),
    ("country", None),
]);

const GIFT_RECIPIENT: Members = Members(&[
    ("name", None),
    ("address", Some(&ADDRESS)),
    ("phone", None),
    ("message", None),
]);

/// An optional section the customer left alone: every field one it has,
/// and blank (an empty or all-blank string, `null`, a group of nothing
/// else) — but in a form a `country` (a drop-down always sends one) — at
/// any depth.
fn untouched(section: &Map<String, Value>, source: Source, members: &Members) -> bool {
    section.iter().all(|(key, value)| {
        let Some((_, inner)) = members.0.iter().find(|(name, _)| name == key) else {
            return false;
        };
        match (value, inner) {
            (Value::Object(group), Some(inner)) => untouched(group, source, inner),
            (Value::Object(_), None) => false,
            _ => blank(value) || (source == Source::Form && key == "country"),
        }
    })
}

fn blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Object(m) => m.values().all(blank),
        _ => false,
    }
}

fn text_reject(e: TextError, max: usize) -> Reject {
    match e {
        TextError::Empty => ("required", "This field is required"),
        // Not "required": an optional field may hold this too, and must
        // not be told it was required.
        TextError::Invisible => (
            "nothing_visible",
            "Nothing in it shows: only spaces, joiners or marks",
        ),
        TextError::TooLong if max == MAX_MESSAGE => ("too_long", "Longer than 1000 characters"),
        TextError::TooLong if max == MAX_TEXT => ("too_long", "Longer than 256 characters"),
        TextError::TooLong if max == 64 => ("too_long", "Longer than 64 characters"),
        TextError::TooLong => ("too_long", "Longer than allowed"),
        TextError::ControlCharacter => ("control_character", "Control characters are not allowed"),
        TextError::CardNumber => (
            "looks_like_card_number",
            "A personal detail must not hold a card number",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn rules() -> (Vec<String>, OffsetDateTime) {
        (
            vec!["2002-06-05".to_owned()],
            datetime!(2026-11-29 12:00 UTC),
        )
    }

    fn valid() -> Value {
        json!({
            "storefront_order_ref": "A-1001",
            "customer": {"name": "Ada Lovelace", "company": "Analytical Engines Ltd",
                         "email": "Ada@Example.com", "phone": "+1 949 555 0100"},
            "billing_address": {"line1": "51 Columbia", "line2": "Suite 200", "city": "Aliso Viejo",
                                "region": "CA", "postal_code": "92656", "country": "US"},
            "items": [{"sku": "FAXSTF-PRO", "description": "Fax stuff", "quantity": 2, "unit_price_minor": 4999}],
            "currency": "USD",
            "card": {"number": "4012 8888 8888 1881", "exp_month": 12, "exp_year": 2030,
                     "cvc": "123", "holder_name": "Ada Lovelace"},
            "consent": {"special_offers": true, "policy_version": "2002-06-05"}
        })
    }

    fn check(v: Value) -> Result<OrderForm, Vec<FieldError>> {
        let (versions, now) = rules();
        parse(
            v,
            Source::Json,
            &Rules {
                policy_versions: &versions,
                now,
            },
        )
    }

    fn codes(v: Value) -> Vec<(String, &'static str)> {
        check(v)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.field, e.code))
            .collect()
    }

    /// `consent.captured_at`: any offset, kept as the instant; the bounds
    /// are inclusive; absent is `None`.
    #[test]
    fn a_card_is_good_until_its_month_ends_everywhere_on_earth() {
        let versions: Vec<String> = Vec::new();
        let at = |iso: &str| Rules {
            policy_versions: &versions,
            now: OffsetDateTime::parse(iso, &time::format_description::well_known::Rfc3339)
                .unwrap(),
        };
        // 1 December 02:00 UTC is 30 November 18:00 in California: a card
        // expiring in November is still good there.
        assert_eq!(
            at("2026-12-01T02:00:00Z").today(),
            time::macros::date!(2026 - 11 - 30)
        );
        assert!(Expiry::parse(11, 2026, at("2026-12-01T02:00:00Z").today()).is_ok());
        // Once the day has ended at UTC−12, it is not.
        assert!(Expiry::parse(11, 2026, at("2026-12-01T12:00:00Z").today()).is_err());
    }

    #[test]
    fn an_error_path_shows_an_index_only_after_the_top_level_items() {
        assert_eq!(shown_path("items.0.sku"), "items.0.sku");
        assert_eq!(shown_path("items.12"), "items.12");
        // Nested members named `items` spell a card number with their
        // indices: 4111 1111 1111 1111.
        let nested = shown_path("items.411.items.111.items.111.items.111.items.111.items.1.a");
        assert_eq!(
            nested.bytes().filter(u8::is_ascii_digit).count(),
            3,
            "{nested}"
        );
        assert_eq!(shown_path("a.items.4"), "a.items.<unknown>");
        assert_eq!(shown_path("items.4111"), "items.<unknown>");
    }

    /// A value in which nothing shows is named so, required or not: an
    /// optional field is never told it was required.
    #[test]
    fn a_value_that_shows_nothing_is_named_so_not_required() {
        let mut v = valid();
        v["customer"]["company"] = json!("\u{200d}");
        v["customer"]["name"] = json!("\u{3164}");
        let mut got = codes(v);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("customer.company".to_owned(), "nothing_visible"),
                ("customer.name".to_owned(), "nothing_visible"),
            ]
        );
        // Truly empty: optional is absent, required is required.
        let mut v = valid();
        v["customer"]["company"] = json!("");
        v["customer"]["name"] = json!("  ");
        assert_eq!(codes(v), vec![("customer.name".to_owned(), "required")]);
    }

    #[test]
    fn the_checkout_time_is_read_and_bounded() {
        assert_eq!(check(valid()).unwrap().consent.captured_at, None);
        for (given, at) in [
            ("2026-11-29T13:30:00+02:00", datetime!(2026-11-29 11:30 UTC)),
            ("2026-11-29T12:05:00Z", datetime!(2026-11-29 12:05 UTC)),
            ("2026-11-22T12:00:00Z", datetime!(2026-11-22 12:00 UTC)),
            // Trimmed, as every other value (review).
            (" 2026-11-29T11:00:00Z ", datetime!(2026-11-29 11:00 UTC)),
        ] {
            let mut v = valid();
            v["consent"]["captured_at"] = json!(given);
            assert_eq!(check(v).unwrap().consent.captured_at, Some(at), "{given}");
        }
        for (given, code) in [
            ("2026-11-29T12:05:00.001Z", "in_the_future"),
            ("2026-11-22T11:59:59Z", "too_old"),
            ("yesterday", "invalid_timestamp"),
        ] {
            let mut v = valid();
            v["consent"]["captured_at"] = json!(given);
            assert_eq!(
                codes(v),
                vec![("consent.captured_at".to_owned(), code)],
                "{given}"
            );
        }
        // A form sends it as text, like every field.
        let form = b"customer.name=Ada&customer.email=ada%40example.com&customer.phone=%2B1+949+555+0100\
&billing_address.line1=51+Columbia&billing_address.city=Aliso+Viejo&billing_address.postal_code=92656\
&billing_address.country=US&items.0.sku=FAXSTF-PRO&items.0.quantity=1&items.0.unit_price_minor=4999\
&currency=USD&card.number=4012888888881881&card.exp_month=12&card.exp_year=2030&card.cvc=123\
&consent.policy_version=2002-06-05&consent.captured_at=2026-11-29T11%3A00%3A00Z";
        let (versions, now) = rules();
        let order = parse(
            crate::domain::form::parse(form).unwrap(),
            Source::Form,
            &Rules {
                policy_versions: &versions,
                now,
            },
        )
        .unwrap();
        assert_eq!(
            order.consent.captured_at,
            Some(datetime!(2026-11-29 11:00 UTC))
        );
    }

    #[test]
    fn a_valid_order_parses() {
        let order = check(valid()).unwrap();
        assert_eq!(order.customer.email.expose(), "ada@example.com");
        assert_eq!(order.total_minor(), 9998);
        assert!(matches!(order.ship_to, ShipTo::BillingAddress));
        assert!(order.consent.purposes.special_offers);
        assert!(!order.consent.purposes.product_updates);
        assert_eq!(order.card.pan.last4(), "1881");
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let mut v = valid();
        v["card"]["number"] = json!("4012 8888 8888 1882");
        v["customer"].as_object_mut().unwrap().remove("email");
        v["billing_address"]["country"] = json!("ZZ");
        v["items"][0]["quantity"] = json!(0);
        v["consent"]["policy_version"] = json!("1999-01-01");
        v["card"]["exp_year"] = json!(2020);
        v["surprise"] = json!(1);
        let got = codes(v);
        for expected in [
            ("card.number", "luhn"),
            ("customer.email", "required"),
            ("billing_address.country", "invalid_country"),
            ("items.0.quantity", "out_of_range"),
            ("consent.policy_version", "unknown_policy_version"),
            ("card.exp_year", "expired"),
            ("surprise", "unknown_field"),
        ] {
            assert!(
                got.contains(&(expected.0.to_owned(), expected.1)),
                "{expected:?} in {got:?}"
            );
        }
    }

    #[test]
    fn errors_never_echo_values() {
        let mut v = valid();
        v["card"]["number"] = json!("4012 8888 8888 1882");
        v["customer"]["email"] = json!("not-an-email-secretvalue");
        v["card"]["cvc"] = json!("12x");
        let text = format!("{:?}", check(v).unwrap_err());
        assert!(!text.contains("4012"));
        assert!(!text.contains("secretvalue"));
        assert!(!text.contains("12x"));
    }

    #[test]
    fn unknown_names_are_echoed_only_when_shaped_like_ours() {
        let mut v = valid();
        v["card"]["4012888888881881"] = json!(1);
        v["customer"]["AdaLovelace"] = json!(1);
        v["customer"]["x4012888888881881"] = json!(1);
        v["favourite_colour"] = json!(1);
        v["customer"]["line1"] = json!(1);
        v["customer"]["line12"] = json!(1);
        let got = codes(v);
        assert!(got.contains(&("favourite_colour".into(), "unknown_field")));
        assert!(
            got.contains(&("customer.line1".into(), "unknown_field")),
            "{got:?}"
        );
        assert!(got.contains(&("card.<unknown>".into(), "unknown_field")));
        assert_eq!(
            got.iter()
                .filter(|(f, _)| f == "customer.<unknown>")
                .count(),
            3
        );
        assert!(!format!("{got:?}").contains("4012"));
    }

    #[test]
    fn gift_orders_drop_the_shipping_address_and_need_name_and_address() {
        let mut v = valid();
        v["shipping_address"] = v["billing_address"].clone();
        v["gift_recipient"] = json!({"name": "Charles", "address": v["billing_address"].clone(),
                                     "message": "Happy birthday!\nAda"});
        let order = check(v.clone()).unwrap();
        assert!(matches!(order.ship_to, ShipTo::Gift(_)));
        v["gift_recipient"] = json!({"phone": "12"});
        let got = codes(v);
        assert!(got.contains(&("gift_recipient.name".into(), "required")));
        assert!(got.contains(&("gift_recipient.address".into(), "required")));
        assert!(got.contains(&("gift_recipient.phone".into(), "invalid_phone")));
    }

    #[test]
    fn limits_and_types() {
        let mut v = valid();
        v["customer"]["name"] = json!("x".repeat(257));
        v["items"] = json!(vec![
            json!({"sku": "A", "quantity": 1, "unit_price_minor": 1});
            101
        ]);
        v["card"]["exp_month"] = json!("12");
        v["consent"]["special_offers"] = json!("yes");
        let got = codes(v);
        assert!(got.contains(&("customer.name".into(), "too_long")));
        assert!(got.contains(&("items".into(), "too_many")));
        assert!(got.contains(&("card.exp_month".into(), "invalid_type")));
        assert!(got.contains(&("consent.special_offers".into(), "invalid_type")));
        let mut v = valid();
        v["gift_recipient"] = json!({"name": "C", "address": v["billing_address"].clone(),
                                     "message": "m".repeat(1001)});
        assert!(codes(v).contains(&("gift_recipient.message".into(), "too_long")));
        assert_eq!(codes(json!([1])), vec![(String::new(), "invalid_type")]);
    }

    #[test]
    fn clear_text_fields_refuse_card_numbers_emails_and_phones() {
        let mut v = valid();
        v["storefront_order_ref"] = json!("ada@example.com");
        v["items"][0]["description"] = json!("card 4012 8888 8888 1881");
        v["items"][0]["sku"] = json!("4012888888881881");
        let got = codes(v);
        assert!(got.contains(&("storefront_order_ref".into(), "looks_like_email")));
        assert!(got.contains(&("items.0.description".into(), "looks_like_card_number")));
        assert!(got.contains(&("items.0.sku".into(), "looks_like_card_number")));
        let mut v = valid();
        v["storefront_order_ref"] = json!("A-1001 call +1 949 555 0100");
        v["items"][0]["description"] = json!("Deliver to front desk, +44 (0)20 7946 0958");
        v["items"][0]["sku"] = json!("+4915112345678");
        let got = codes(v);
        for field in ["storefront_order_ref", "items.0.description", "items.0.sku"] {
            assert!(
                got.contains(&(field.into(), "looks_like_phone")),
                "{field}: {got:?}"
            );
        }
        // The customer's own phone is sealed, not clear: accepted.
        let mut v = valid();
        v["customer"]["phone"] = json!("+44 (0)20 7946 0958");
        assert!(check(v).is_ok());
        // A text longer than its field is refused for its length before
        // any detector reads it (they read a text more than once: a body
        // of `+1.+1.…` would otherwise cost time growing with its square).
        let mut v = valid();
        v["items"][0]["description"] = json!("+1.".repeat(20_000));
        v["storefront_order_ref"] = json!("+1.".repeat(20_000));
        let got = codes(v);
        assert!(
            got.contains(&("items.0.description".into(), "too_long")),
            "{got:?}"
        );
        assert!(
            got.contains(&("storefront_order_ref".into(), "too_long")),
            "{got:?}"
        );
    }

    #[test]
    fn a_run_of_more_digits_than_a_phone_number_is_none() {
        assert!(crate::domain::detect::contains_phone("call +49 30 1234567"));
        assert!(!crate::domain::detect::contains_phone(
            "+12 345 678 901 234 567"
        ));
        assert!(!crate::domain::detect::contains_phone("+1234567890123456"));
        assert!(crate::domain::detect::contains_phone("+123456789012345"));
    }

    #[test]
    fn card_numbers_however_typed_are_refused_in_every_field_that_is_not_the_card() {
        let mut v = valid();
        v["storefront_order_ref"] = json!("4012/8888/8888/1881");
        v["items"][0]["description"] = json!("4012.8888.8888.1881");
        v["items"][0]["sku"] = json!("4012 8888 8888 1881 123");
        v["customer"]["phone"] = json!("4012888888881881");
        v["customer"]["email"] = json!("4012888888881881@example.com");
        v["gift_recipient"] = json!({
            "name": "Grace Hopper",
            "address": v["billing_address"].clone(),
            "phone": "4012 8888 8888 1881",
            "message": "Happy birthday! 4012 8888 8888 1881 123",
        });
        let got = codes(v);
        for field in [
            "storefront_order_ref",
            "items.0.description",
            "items.0.sku",
            "customer.phone",
            "customer.email",
            "gift_recipient.phone",
            "gift_recipient.message",
        ] {
            assert!(
                got.contains(&(field.into(), "looks_like_card_number")),
                "{field}: {got:?}"
            );
        }
    }

    #[test]
    fn a_form_section_left_empty_is_absent() {
        let body = b"customer.name=Ada&customer.email=ada%40example.com&customer.phone=%2B1+949+555+0100\
&billing_address.line1=51+Columbia&billing_address.city=Aliso+Viejo&billing_address.postal_code=92656\
&billing_address.country=US&shipping_address.line1=&shipping_address.line2=&shipping_address.city=\
&shipping_address.region=&shipping_address.postal_code=&shipping_address.country=\
&gift_recipient.name=+&gift_recipient.phone=&gift_recipient.message=&gift_recipient.address.line1=\
&gift_recipient.address.city=&gift_recipient.address.postal_code=&gift_recipient.address.country=\
&items.0.sku=FAXSTF-PRO&items.0.quantity=1&items.0.unit_price_minor=4999\
&currency=USD&card.number=4012888888881881&card.exp_month=12&card.exp_year=2030&card.cvc=123\
&consent.policy_version=2002-06-05";
        let (versions, now) = rules();
        let rules = Rules {
            policy_versions: &versions,
            now,
        };
        let order = parse(
            crate::domain::form::parse(body).unwrap(),
            Source::Form,
            &rules,
        )
        .unwrap();
        assert!(matches!(order.ship_to, ShipTo::BillingAddress));
        // A section with something in it is read, and its gaps named.
        let half = String::from_utf8(body.to_vec()).unwrap().replace(
            "shipping_address.line2=&",
            "shipping_address.line2=Suite+100&",
        );
        let errors = parse(
            crate::domain::form::parse(half.as_bytes()).unwrap(),
            Source::Form,
            &rules,
        )
        .unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.field == "shipping_address.line1" && e.code == "required"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_total_beyond_what_json_readers_hold_exactly_is_refused() {
        // Each item in range (10^4 × 10^11 = 10^15), ten of them 10^16 > 2^53.
        let big = json!({"sku": "A", "quantity": 10000, "unit_price_minor": 100_000_000_000i64});
        let mut v = valid();
        v["items"] = Value::Array(vec![big; 10]);
        assert_eq!(codes(v), vec![("items".to_owned(), "total_out_of_range")]);
        // Exactly 2^53 − 1: accepted, and the total is exact.
        let per = MAX_TOTAL_MINOR / 10_000 / 10;
        let rest = MAX_TOTAL_MINOR - per * 10_000 * 10;
        assert!(per <= MAX_UNIT_PRICE_MINOR && rest <= MAX_UNIT_PRICE_MINOR);
        let mut items = vec![json!({"sku": "A", "quantity": 10000, "unit_price_minor": per}); 10];
        items.push(json!({"sku": "B", "quantity": 1, "unit_price_minor": rest}));
        let mut v = valid();
        v["items"] = Value::Array(items);
        assert_eq!(check(v).unwrap().total_minor(), MAX_TOTAL_MINOR);
    }

    #[test]
    fn numbers_too_large_for_64_bits_are_out_of_range() {
        let mut v = valid();
        v["items"][0]["quantity"] = serde_json::from_str("99999999999999999999").unwrap();
        v["items"][0]["unit_price_minor"] = json!(u64::MAX);
        v["card"]["exp_month"] = json!(1.5);
        let got = codes(v);
        assert!(
            got.contains(&("items.0.quantity".into(), "out_of_range")),
            "{got:?}"
        );
        assert!(
            got.contains(&("items.0.unit_price_minor".into(), "out_of_range")),
            "{got:?}"
        );
        assert!(
            got.contains(&("card.exp_month".into(), "invalid_type")),
            "{got:?}"
        );
        // The same from a form.
        let tree = crate::domain::form::parse(
            b"items.0.sku=A&items.0.quantity=99999999999999999999&items.0.unit_price_minor=1x",
        )
        .unwrap();
        let (versions, now) = rules();
        let rules = Rules {
            policy_versions: &versions,
            now,
        };
        let errors = parse(tree, Source::Form, &rules).unwrap_err();
        let got: Vec<(&str, &str)> = errors.iter().map(|e| (e.field.as_str(), e.code)).collect();
        assert!(
            got.contains(&("items.0.quantity", "out_of_range")),
            "{got:?}"
        );
        assert!(
            got.contains(&("items.0.unit_price_minor", "invalid_type")),
            "{got:?}"
        );
    }

    #[test]
    fn a_number_must_be_written_as_a_whole_number() {
        let mut v = valid();
        v["items"][0]["quantity"] = serde_json::from_str("2.0").unwrap();
        v["items"][0]["unit_price_minor"] = serde_json::from_str("4999.9999999999999").unwrap();
        v["card"]["exp_month"] = serde_json::from_str("1e1").unwrap();
        let got = codes(v);
        for field in [
            "items.0.quantity",
            "items.0.unit_price_minor",
            "card.exp_month",
        ] {
            assert!(
                got.contains(&(field.into(), "invalid_type")),
                "{field}: {got:?}"
            );
        }
    }

    #[test]
    fn an_expired_card_names_the_field_that_is_out_of_date() {
        // Today is 2026-11-29 (`rules`).
        let mut v = valid();
        v["card"]["exp_month"] = json!(10);
        v["card"]["exp_year"] = json!(2026);
        assert!(codes(v.clone()).contains(&("card.exp_month".into(), "expired")));
        v["card"]["exp_month"] = json!(12);
        v["card"]["exp_year"] = json!(2025);
        assert!(codes(v.clone()).contains(&("card.exp_year".into(), "expired")));
        // A past year with a wrong or missing month: both at once.
        v["card"]["exp_month"] = json!(13);
        v["card"]["exp_year"] = json!(2020);
        let got = codes(v.clone());
        assert!(
            got.contains(&("card.exp_month".into(), "out_of_range")),
            "{got:?}"
        );
        assert!(
            got.contains(&("card.exp_year".into(), "expired")),
            "{got:?}"
        );
        v["card"].as_object_mut().unwrap().remove("exp_month");
        let got = codes(v.clone());
        assert!(
            got.contains(&("card.exp_month".into(), "required")),
            "{got:?}"
        );
        assert!(
            got.contains(&("card.exp_year".into(), "expired")),
            "{got:?}"
        );
        v["card"]["exp_month"] = json!(11);
        v["card"]["exp_year"] = json!(2026);
        assert!(check(v).is_ok(), "valid to the end of its month");
    }

    #[test]
    fn amex_needs_a_four_digit_cvc_and_the_right_length() {
        let mut v = valid();
        v["card"]["number"] = json!("378282246310005");
        assert!(codes(v.clone()).contains(&("card.cvc".into(), "invalid_cvc")));
        v["card"]["cvc"] = json!("1234");
        assert!(check(v).is_ok());
    }

    #[test]
    fn forms_read_numbers_and_checkboxes_from_text() {
        let body = b"customer.name=Ada&customer.email=ada%40example.com&customer.phone=%2B1+949+555+0100\
&billing_address.line1=51+Columbia&billing_address.city=Aliso+Viejo&billing_address.postal_code=92656\
&billing_address.country=US&items.0.sku=FAXSTF-PRO&items.0.quantity=1&items.0.unit_price_minor=4999\
&currency=USD&card.number=4012888888881881&card.exp_month=12&card.exp_year=2030&card.cvc=123\
&consent.special_offers=on&consent.partnerships=&consent.product_updates=Y&consent.new_offerings=N\
&consent.policy_version=2002-06-05";
        let tree = crate::domain::form::parse(body).unwrap();
        let (versions, now) = rules();
        let order = parse(
            tree,
            Source::Form,
            &Rules {
                policy_versions: &versions,
                now,
            },
        )
        .unwrap();
        assert!(order.consent.purposes.special_offers);
        assert!(
            !order.consent.purposes.partnerships,
            "an empty value is no consent"
        );
        assert!(order.consent.purposes.product_updates, "a yes");
        assert!(!order.consent.purposes.new_offerings, "an explicit no");
        assert!(!order.consent.purposes.third_party_sharing, "absent");
        assert_eq!(order.items[0].quantity, 1);
        // A value we cannot read as yes or no is refused, never guessed.
        let unclear =
            String::from_utf8_lossy(body).replace("new_offerings=N", "new_offerings=nein");
        let errors = parse(
            crate::domain::form::parse(unclear.as_bytes()).unwrap(),
            Source::Form,
            &Rules {
                policy_versions: &versions,
                now,
            },
        )
        .unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.field == "consent.new_offerings" && e.code == "invalid_type"),
            "{errors:?}"
        );
    }
}
