//! What one accepted order writes: its tables, their columns, and the
//! values bound to them — in one place for both engines' order writers
//! (`store/sqlite_orders.rs` binds the rows to cached single-row
//! statements, `store/postgres_orders.rs` binds each column of a batch as
//! one array).

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};

use crate::crypto::envelope::Envelope;
use crate::store::rows::{NewOrder, ShippingRecord};

/// One bound value.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Bytes(&'a [u8]),
    OptBytes(Option<&'a [u8]>),
}

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let value = match *self {
            Param::Int(v) | Param::OptInt(Some(v)) => ValueRef::Integer(v),
            Param::Text(v) | Param::OptText(Some(v)) => ValueRef::Text(v.as_bytes()),
            Param::Bytes(v) | Param::OptBytes(Some(v)) => ValueRef::Blob(v),
            Param::OptInt(None) | Param::OptText(None) | Param::OptBytes(None) => ValueRef::Null,
        };
        Ok(ToSqlOutput::Borrowed(value))
    }
}

/// A table an order writes to, with its columns in bind order.
#[derive(Debug, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [&'static str],
}

/// Claimed first: a key already taken makes the order write nothing.
pub const IDEMPOTENCY_KEYS: Table = Table {
    name: "idempotency_keys",
    columns: &[
        "client",
        "key_hash",
        "request_hash",
        "order_id",
        "response_status",
        "response_body",
        "created_at",
        "response_mac",
    ],
};

/// What follows the idempotency row's VALUES: a taken key inserts nothing.
pub const CLAIM_CONFLICT: &str = "ON CONFLICT (client, key_hash) DO NOTHING";

pub const ORDERS: Table = Table {
    name: "orders",
    columns: &[
        "id",
        "created_at",
        "status",
        "storefront_ref",
        "currency",
        "items",
        "total_minor",
        "gift",
        "consent_tag_id",
        "client_fingerprint",
        "mac",
    ],
};

pub const CONSENT_TAGS: Table = Table {
    name: "consent_tags",
    columns: &[
        "id",
        "order_id",
        "subject",
        "basis",
        "product_updates",
        "new_offerings",
        "partnerships",
        "special_offers",
        "third_party_sharing",
        "policy_version",
        "captured_at",
        "channel",
        "mac_key_version",
        "mac",
    ],
};

/// The columns of the two records keyed by the customer's email blind index
/// (`billing_details`, `contact_emails`).
const EMAIL_RECORD_COLUMNS: &[&str] = &[
    "id",
    "order_id",
    "consent_tag_id",
    "email_blind_index",
    "blind_index_version",
    "format_version",
    "kek_version",
    "wrapped_dek",
    "ciphertext",
];

pub const BILLING_DETAILS: Table = Table {
    name: "billing_details",
    columns: EMAIL_RECORD_COLUMNS,
};

pub const SHIPPING_DETAILS: Table = Table {
    name: "shipping_details",
    columns: &[
        "id",
        "order_id",
        "consent_tag_id",
        "ship_to",
        "format_version",
        "kek_version",
        "wrapped_dek",
        "ciphertext",
    ],
};

pub const GIFT_RECIPIENTS: Table = Table {
    name: "gift_recipients",
    columns: &[
        "id",
        "order_id",
        "consent_tag_id",
        "format_version",
        "kek_version",
        "wrapped_dek",
        "ciphertext",
    ],
};

pub const CONTACT_EMAILS: Table = Table {
    name: "contact_emails",
    columns: EMAIL_RECORD_COLUMNS,
};

pub const PAYMENT_CARDS: Table = Table {
    name: "payment_cards",
    columns: &[
        "id",
        "order_id",
        "consent_tag_id",
        "brand",
        "last4",
        "fingerprint",
        "fingerprint_key_version",
        "format_version",
        "kek_version",
        "wrapped_dek",
        "ciphertext",
    ],
};

/// The tables of an accepted order, in insert order (every reference
/// points to a table before it: SQLite checks its foreign keys row by
/// row). [`rows`] answers in this order.
pub const ORDER_TABLES: [&Table; 7] = [
    &ORDERS,
    &CONSENT_TAGS,
    &BILLING_DETAILS,
    &SHIPPING_DETAILS,
    &GIFT_RECIPIENTS,
    &CONTACT_EMAILS,
    &PAYMENT_CARDS,
];

/// `INSERT INTO table (columns) VALUES (?, …)` for one row, with `suffix`
/// after it: SQLite's single-row statements.
pub fn single_row_insert(table: &Table, suffix: &str) -> String {
    let marks = vec!["?"; table.columns.len()].join(", ");
    format!(
        "INSERT INTO {} ({}) VALUES ({marks}) {suffix}",
        table.name,
        table.columns.join(", ")
    )
}

/// The text forms of one order's ids, which its bound values borrow.
pub struct OrderText {
    pub id: String,
    customer_tag: String,
    /// The order id each tag names (its MAC covers it); the order's own.
    customer_tag_order: String,
    recipient_tag: Option<String>,
    recipient_tag_order: String,
    billing: String,
    billing_tag: String,
    shipping: String,
    shipping_tag: String,
    recipient: Option<(String, String)>,
    contact: String,
    contact_tag: String,
    card: String,
    card_tag: String,
}

impl OrderText {
    pub fn of(o: &NewOrder) -> Self {
        let shipping_tag = match &o.shipping {
            ShippingRecord::Customer(r) => r.consent_tag_id,
            ShippingRecord::GiftRecipient { consent_tag_id, .. } => *consent_tag_id,
        };
        OrderText {
            id: o.id.to_string(),
            customer_tag: o.customer_tag.id.to_string(),
            customer_tag_order: o.customer_tag.order_id.to_string(),
            recipient_tag: o.recipient_tag.as_ref().map(|t| t.id.to_string()),
            recipient_tag_order: o
                .recipient_tag
                .as_ref()
                .map(|t| t.order_id.to_string())
                .unwrap_or_default(),
            billing: o.billing.sealed.id.to_string(),
            billing_tag: o.billing.sealed.consent_tag_id.to_string(),
            shipping: o.shipping.id().to_string(),
            shipping_tag: shipping_tag.to_string(),
            recipient: o
                .recipient
                .as_ref()
                .map(|r| (r.id.to_string(), r.consent_tag_id.to_string())),
            contact: o.contact.id.to_string(),
            contact_tag: o.contact.consent_tag_id.to_string(),
            card: o.card.sealed.id.to_string(),
            card_tag: o.card.sealed.consent_tag_id.to_string(),
        }
    }
}

/// The order's idempotency row ([`IDEMPOTENCY_KEYS`]).
pub fn idempotency_row<'a>(o: &'a NewOrder, t: &'a OrderText) -> Vec<Param<'a>> {
    let idem = &o.idempotency;
    vec![
        Param::Bytes(idem.client.as_slice()),
        Param::Bytes(idem.key_hash.as_slice()),
        Param::Bytes(idem.request_hash.as_slice()),
        Param::Text(&t.id),
        Param::Int(i64::from(idem.response.status)),
        Param::Bytes(&idem.response.body),
        Param::Text(&idem.created_at),
        Param::Bytes(idem.mac.as_slice()),
    ]
}

/// The order's rows, per table of [`ORDER_TABLES`] (same index): one row
/// each, two consent tags for a gift, no recipient row otherwise.
pub fn rows<'a>(o: &'a NewOrder, t: &'a OrderText) -> [Vec<Vec<Param<'a>>>; 7] {
    let order = vec![
        Param::Text(&t.id),
        Param::Text(&o.created_at),
        Param::Text("accepted"),
        Param::OptText(o.storefront_ref.as_deref()),
        Param::Text(o.currency),
        Param::Text(&o.items_json),
        Param::Int(o.total_minor),
        Param::Int(i64::from(o.recipient.is_some())),
        Param::Text(&t.customer_tag),
        Param::Bytes(o.client_fingerprint.as_slice()),
        Param::Bytes(o.mac.as_slice()),
    ];

    let customer_tag = (&o.customer_tag, t.customer_tag.as_str());
    let recipient_tag = o.recipient_tag.as_ref().zip(t.recipient_tag.as_deref());
    let tags = std::iter::once(customer_tag)
        .chain(recipient_tag)
        .zip([&t.customer_tag_order, &t.recipient_tag_order])
        .map(|((tag, id), order_id)| {
            let p = tag.purposes;
            vec![
                Param::Text(id),
                Param::Text(order_id),
                Param::Text(tag.subject.as_str()),
                Param::Text(tag.basis.as_str()),
                Param::Int(i64::from(p.product_updates)),
                Param::Int(i64::from(p.new_offerings)),
                Param::Int(i64::from(p.partnerships)),
                Param::Int(i64::from(p.special_offers)),
                Param::Int(i64::from(p.third_party_sharing)),
                Param::Text(&tag.policy_version),
                Param::Text(&tag.captured_at),
                Param::Text(&tag.channel),
                Param::Int(i64::from(tag.mac_key_version)),
                Param::Bytes(tag.mac.as_slice()),
            ]
        })
        .collect();

    let email_record = |id: &'a str, tag: &'a str, envelope: &'a Envelope| {
        let mut row = vec![
            Param::Text(id),
            Param::Text(&t.id),
            Param::Text(tag),
            Param::Bytes(o.billing.email_blind_index.as_slice()),
            Param::Int(i64::from(o.billing.blind_index_version)),
        ];
        row.extend(envelope_params(envelope));
        row
    };
    let billing = email_record(&t.billing, &t.billing_tag, &o.billing.sealed.envelope);
    let contact = email_record(&t.contact, &t.contact_tag, &o.contact.envelope);

    let (ship_to, envelope) = match &o.shipping {
        ShippingRecord::Customer(r) => ("customer", Some(&r.envelope)),
        ShippingRecord::GiftRecipient { .. } => ("gift_recipient", None),
    };
    let shipping = vec![
        Param::Text(&t.shipping),
        Param::Text(&t.id),
        Param::Text(&t.shipping_tag),
        Param::Text(ship_to),
        Param::OptInt(envelope.map(|e| i64::from(e.format_version))),
        Param::OptInt(envelope.map(|e| i64::from(e.kek_version))),
        Param::OptBytes(envelope.map(|e| e.wrapped_dek.as_slice())),
        Param::OptBytes(envelope.map(|e| e.ciphertext.as_slice())),
    ];

    let recipient = o
        .recipient
        .as_ref()
        .zip(t.recipient.as_ref())
        .map(|(r, (id, tag))| {
            let mut row = vec![Param::Text(id), Param::Text(&t.id), Param::Text(tag)];
            row.extend(envelope_params(&r.envelope));
            row
        });

    let c = &o.card;
    let mut card = vec![
        Param::Text(&t.card),
        Param::Text(&t.id),
        Param::Text(&t.card_tag),
        Param::Text(c.brand),
        Param::Text(&c.last4),
        Param::Bytes(c.fingerprint.as_slice()),
        Param::Int(i64::from(c.fingerprint_key_version)),
    ];
    card.extend(envelope_params(&c.sealed.envelope));

    [
        vec![order],
        tags,
        vec![billing],
        vec![shipping],
        recipient.into_iter().collect(),
        vec![contact],
        vec![card],
    ]
}

fn envelope_params(e: &Envelope) -> [Param<'_>; 4] {
    [
        Param::Int(i64::from(e.format_version)),
        Param::Int(i64::from(e.kek_version)),
        Param::Bytes(&e.wrapped_dek),
        Param::Bytes(&e.ciphertext),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_row_statements_bind_every_column_once() {
        let sql = single_row_insert(&PAYMENT_CARDS, "");
        assert_eq!(sql.matches('?').count(), PAYMENT_CARDS.columns.len());
        assert!(sql.starts_with("INSERT INTO payment_cards (id, order_id, "));
        let claim = single_row_insert(&IDEMPOTENCY_KEYS, CLAIM_CONFLICT);
        assert!(claim.ends_with(") ON CONFLICT (client, key_hash) DO NOTHING"));
    }
}
