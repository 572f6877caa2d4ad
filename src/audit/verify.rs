//! The verification engine: one code path for `GET /v1/audit/report`,
//! `GET /v1/audit/orders/{id}` and `checkoutd audit`.
//!
//! For every order, every record's envelope must open under its recorded
//! KEK version and the associated data of its own table, order and record
//! (the plaintext lands in a zeroizing buffer, is checked, and is dropped —
//! never returned); the card row's brand, last4 and fingerprint must match
//! the sealed number; the billing row's blind index must match the sealed
//! email; every consent tag's MAC must verify and its subject and basis must
//! fit the records that carry it. Then: no column anywhere is named like a
//! card verification code; no clear column holds a Luhn-valid card number
//! (the dispatch columns: one of a known brand, as a dispatch is checked,
//! `detect::clear_column_holds_card`) or an email address; the access-log
//! chain verifies end to end.
//!
//! A failure names the table, the record id and what failed — nothing else.
//! Orders are read in pages, so memory stays bounded for any database size.

use std::collections::HashMap;

use serde::Serialize;

use super::access_log::{ChainError, verify_chain_since};
use crate::crypto::DataClass;
use crate::crypto::envelope::{self, Binding, Envelope};
use crate::crypto::keyring::Keyring;
use crate::domain::consent::{Basis, ConsentTag, Purposes, Subject};
use crate::domain::detect::{clear_column_holds_card, contains_email, contains_pan};
use crate::domain::pan::Pan;
use crate::store::rows::{
    AuditBatch, AuditExtra, AuditKeyRow, AuditRecord, ConsentStats, RawTag, Totals,
};
use crate::store::{Store, StoreError};

/// Orders per page.
const PAGE: u32 = 500;
/// Rows per page of the plaintext scan.
const SCAN_PAGE: u32 = 1000;
/// Most failures listed in a report (all are counted).
pub const MAX_LISTED_FAILURES: usize = 10_000;

/// Columns that hold ciphertexts, MACs or keyed digests: binary by design,
/// not scanned for plaintext.
const OPAQUE_COLUMNS: [&str; 19] = [
    "dispatch_mac",
    "prev_mac",
    "head_mac",
    "reference_wrapped_dek",
    "reference_ciphertext",
    "key_hash",
    "checksum",
    "cert_fingerprint",
    "ciphertext",
    "wrapped_dek",
    "mac",
    "hash",
    "prev_hash",
    "fingerprint",
    "email_blind_index",
    "request_hash",
    "client",
    "client_fingerprint",
    "response_mac",
];

/// One thing that did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Failure {
    pub table: String,
    pub record_id: String,
    pub what: String,
}

impl Failure {
    /// Record ids and table names come from the database under audit: an
    /// edited id could itself hold a card number, an email or a name, which
    /// the report must not carry to the auditor. So only what has the shape
    /// of an id is quoted (a canonical UUID, a sequence number, `rowid:N`,
    /// `key:` and 16 hex digits, `head`); anything else is withheld, and so
    /// is a description that would quote a card number or an email.
    fn new(table: &str, record_id: &str, what: impl Into<String>) -> Self {
        let what = what.into();
        let table_ok = !table.is_empty()
            && table.len() <= 64
            && table
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !would_quote_a_secret(table);
        Failure {
            table: if table_ok {
                table.to_owned()
            } else {
                "(withheld: not a table name)".to_owned()
            },
            record_id: shown_id(record_id),
            what: if !would_quote_a_secret(&what) {
                what
            } else {
                "(withheld: the finding would quote a card number or an email address)".to_owned()
            },
        }
    }
}

/// An id read from the database under audit, as an auditor may see it:
/// quoted only when it has the shape of an id ([`is_quotable_id`]), since
/// an edited id could hold a card number, an email or a name.
pub(crate) fn shown_id(id: &str) -> String {
    if is_quotable_id(id) {
        id.to_owned()
    } else {
        "(withheld: not shaped like an id)".to_owned()
    }
}

/// A short text column read from the database under audit (a policy
/// version, a channel, a time), as an auditor may see it: withheld when it
/// holds something shaped like a card number or an email address, which
/// no value this service writes there does.
pub(crate) fn shown_text(text: &str) -> std::borrow::Cow<'_, str> {
    if would_quote_a_secret(text) {
        std::borrow::Cow::Borrowed("(withheld: shaped like a card number or an email address)")
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Whether `text` holds something shaped like a card number or an email:
/// the base rule (every run, barcode-shaped ones included), the detector
/// for text a person could have typed (any grouping, and a card number
/// with more digits after it: `4012 8888 8888 1881 123`), and emails.
fn would_quote_a_secret(text: &str) -> bool {
    contains_pan(text) || crate::domain::detect::contains_pan_typed(text) || contains_email(text)
}

/// Whether a record id has one of the shapes the audit names rows by.
fn is_quotable_id(id: &str) -> bool {
    // A number (sequence, SQLite rowid, PostgreSQL's block × 65536 + slot)
    // — unless it is shaped like a card number.
    let digits = |s: &str| {
        !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()) && !contains_pan(s)
    };
    id.is_empty()
        || id == "head"
        || canonical_uuid(id).is_some()
        || digits(id)
        || id.strip_prefix("rowid:").is_some_and(digits)
        || id.strip_prefix("key:").is_some_and(|h| {
            h.len() == 16
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// The access log's state in a report.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ChainReport {
    pub intact: bool,
    pub entries: u64,
    /// The head verified (seq and hash): compare with earlier signed reports
    /// to see a rollback of the whole database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The entry an earlier verification saw (`audit --since`, or the
    /// server's previous report) that the chain was required to pass
    /// through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchored_at: Option<u64>,
}

impl ChainReport {
    /// The verified head, as a point later verifications must pass
    /// through; `None` unless the chain was intact.
    pub fn anchor(&self) -> Option<super::access_log::Anchor> {
        if !self.intact {
            return None;
        }
        let hash = crate::hex::decode(self.head_hash.as_deref()?)?;
        Some(super::access_log::Anchor {
            seq: self.head_seq?,
            hash: hash.try_into().ok()?,
        })
    }
}

/// The full verification result (unsigned).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    #[schema(value_type = String)]
    pub format: &'static str,
    pub generated_at: String,
    pub verified: bool,
    pub totals: Totals,
    pub orders_checked: u64,
    pub records_checked: u64,
    pub failure_count: u64,
    pub failures: Vec<Failure>,
    /// Records destroyed by purge or retention, per data class (not failures).
    pub purged: std::collections::BTreeMap<String, u64>,
    /// Orders under a legal hold (kept past their retention periods until
    /// released; not failures). A hold whose MAC fails is a failure.
    pub legal_holds: u64,
    pub consent: ConsentStats,
    pub access_log: ChainReport,
    /// The withdrawal ledger's chain: its head, for later reports to be
    /// anchored at (as the access log's).
    pub consent_ledger: LedgerReport,
}

/// What a report saw of the withdrawal ledger.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LedgerReport {
    pub intact: bool,
    /// The head verified: the last withdrawal's `seq` and MAC (hex); 0 and
    /// zeros for an empty ledger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The position an earlier verification saw that the ledger was
    /// required to pass through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchored_at: Option<i64>,
}

impl LedgerReport {
    /// The verified head, as a point later verifications must pass
    /// through; `None` unless the ledger was intact.
    pub fn anchor(&self) -> Option<crate::consent::LedgerPosition> {
        if !self.intact {
            return None;
        }
        Some(crate::consent::LedgerPosition {
            seq: self.head_seq?,
            mac: crate::hex::decode(self.head_mac.as_deref()?)?,
        })
    }
}

/// Heads an earlier verification saw, which this one's chains must still
/// pass through (`audit --since`, or the server's previous report).
#[derive(Debug, Clone, Default)]
pub struct Since {
    pub access_log: Option<super::access_log::Anchor>,
    pub consent_ledger: Option<crate::consent::LedgerPosition>,
}

impl Since {
    /// The heads `report` verified.
    pub fn of(report: &Report) -> Self {
        Since {
            access_log: report.access_log.anchor(),
            consent_ledger: report.consent_ledger.anchor(),
        }
    }
}

/// What [`RecordMeta::ciphertext_len_rounded`] rounds up to.
pub const CIPHERTEXT_LEN_STEP: usize = 64;

/// Metadata of one record (the per-order view). No plaintext.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecordMeta {
    #[schema(value_type = String)]
    pub table: &'static str,
    pub record_id: String,
    #[schema(value_type = String)]
    pub data_class: &'static str,
    #[schema(value_type = String)]
    pub algorithm: &'static str,
    pub format_version: Option<u8>,
    pub kek_version: Option<u32>,
    pub nonce_len: Option<usize>,
    /// The ciphertext's length (tag included) rounded up to a multiple of
    /// [`CIPHERTEXT_LEN_STEP`] bytes: the exact length would tell the
    /// length of what it encrypts — an email address, a card number plus
    /// its holder's name — to a role that never reads personal data.
    pub ciphertext_len_rounded: Option<usize>,
    pub wrapped_dek_len: Option<usize>,
    pub consent_tag_id: String,
    pub verifies: bool,
}

/// A consent tag in the per-order view.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TagMeta {
    pub id: String,
    pub subject: String,
    pub basis: String,
    #[schema(value_type = crate::domain::consent::Purposes)]
    pub purposes: serde_json::Value,
    pub policy_version: String,
    pub captured_at: String,
    pub channel: String,
    pub mac_key_version: i64,
    pub verifies: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrderAudit {
    pub order_id: String,
    /// Data classes of this order destroyed by purge or retention.
    pub purged: Vec<String>,
    /// This order's own rows verify: every envelope opens under its own
    /// associated data, every MAC (order, tags, purges) holds, nothing is
    /// missing or restored. What only the whole database can show — a
    /// dispatch undone (found through the access log), the order's
    /// idempotency row deleted, rows planted under no order — is checked
    /// by the full report (`GET /v1/audit/report`), not here.
    pub verified: bool,
    pub records: Vec<RecordMeta>,
    pub consent_tags: Vec<TagMeta>,
    pub failures: Vec<Failure>,
    /// The legal hold in force on this order, if any (its records are
    /// kept past their retention periods until it is released).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legal_hold: Option<HoldMeta>,
}

/// A legal hold as the audit shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HoldMeta {
    pub placed_at: String,
    /// The case (withheld when it is not a reference `orders hold`
    /// accepts: written around the service).
    pub reference: String,
    pub verifies: bool,
}

fn class_of(table: &str) -> DataClass {
    match table {
        "payment_cards" => DataClass::Card,
        "billing_details" => DataClass::Billing,
        "shipping_details" => DataClass::Shipping,
        "contact_emails" => DataClass::Contact,
        _ => DataClass::Recipient,
    }
}

/// Collects failures, listing at most [`MAX_LISTED_FAILURES`].
#[derive(Default)]
struct Failures {
    listed: Vec<Failure>,
    count: u64,
}

impl Failures {
    fn push(&mut self, f: Failure) {
        self.count += 1;
        if self.listed.len() < MAX_LISTED_FAILURES {
            self.listed.push(f);
        }
    }
}

/// Checks one batch of orders; returns per-record and per-tag verdicts.
fn check_batch(
    keyring: &Keyring,
    batch: &AuditBatch,
    out: &mut Failures,
) -> (Vec<bool>, Vec<bool>) {
    let tags: HashMap<&str, (usize, &RawTag)> = batch
        .tags
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), (i, t)))
        .collect();
    let mut tag_ok = vec![true; batch.tags.len()];
    // Tags: MAC and internal consistency.
    for (i, raw) in batch.tags.iter().enumerate() {
        if let Some(what) = check_tag(keyring, raw) {
            out.push(Failure::new("consent_tags", &raw.id, what));
            tag_ok[i] = false;
        }
    }
    // Orders: their fixed columns and dispatch facts are authentic.
    let key = keyring.consent_tag_key();
    for order in &batch.orders {
        let canonical = crate::intake::seal::order_canonical_bytes(
            &order.id,
            &order.created_at,
            order.storefront_ref.as_deref(),
            &order.currency,
            &order.items,
            order.total_minor,
            order.gift,
            &order.consent_tag_id,
            &order.client_fingerprint,
        );
        if !key.verify(&[&canonical], &order.mac) {
            out.push(Failure::new(
                "orders",
                &order.id,
                "MAC does not verify (items, total, gift flag or links edited)",
            ));
        }
        let dispatch = (
            &order.carrier,
            &order.tracking,
            &order.dispatched_at,
            &order.dispatch_mac,
        );
        match (order.status.as_str(), dispatch) {
            ("dispatched", (Some(c), Some(t), Some(at), Some(mac))) => {
                let bytes = crate::intake::seal::dispatch_canonical_bytes(&order.id, c, t, at);
                if !key.verify(&[&bytes], mac) {
                    out.push(Failure::new(
                        "orders",
                        &order.id,
                        "dispatch MAC does not verify (edited)",
                    ));
                }
            }
            ("accepted", (None, None, None, None)) => {}
            ("accepted", _) => {
                out.push(Failure::new(
                    "orders",
                    &order.id,
                    "dispatch facts on an undispatched order (status rolled back)",
                ));
            }
            _ => out.push(Failure::new(
                "orders",
                &order.id,
                "status and dispatch facts disagree",
            )),
        }
    }
    // Orders: their own tag is the customer's.
    for order in &batch.orders {
        match tags.get(order.consent_tag_id.as_str()) {
            Some((_, t)) if t.order_id == order.id && t.subject == "customer" => {}
            Some(_) => out.push(Failure::new(
                "orders",
                &order.id,
                "consent tag is not this order's customer tag",
            )),
            None => out.push(Failure::new("orders", &order.id, "consent tag is missing")),
        }
    }
    let mut record_ok = Vec::with_capacity(batch.records.len());
    for r in &batch.records {
        let mut ok = true;
        let mut fail = |what: String| {
            ok = false;
            out.push(Failure::new(r.table, &r.id, what));
        };
        // Which subject must the record's tag be about?
        let expected_subject = match (&r.extra, r.table) {
            (AuditExtra::Shipping { ship_to }, _) if ship_to == "gift_recipient" => {
                "gift_recipient"
            }
            (_, "gift_recipients") => "gift_recipient",
            _ => "customer",
        };
        match tags.get(r.consent_tag_id.as_str()) {
            None => fail("consent tag is missing".into()),
            Some((_, t)) if t.order_id != r.order_id => {
                fail("consent tag belongs to another order".into())
            }
            Some((_, t)) if t.subject != expected_subject => fail(format!(
                "consent tag is about the wrong subject (expected {expected_subject})"
            )),
            Some(_) => {}
        }
        if let Some(what) = check_record(keyring, r) {
            fail(what);
        }
        record_ok.push(ok);
    }
    (record_ok, tag_ok)
}

/// Checks a tag's MAC and that its subject, basis and purposes fit.
fn check_tag(keyring: &Keyring, raw: &RawTag) -> Option<String> {
    let (Some(subject), Some(basis)) = (Subject::parse(&raw.subject), Basis::parse(&raw.basis))
    else {
        return Some("subject or basis is not a known value".into());
    };
    let (Some(id), Some(order_id)) = (canonical_uuid(&raw.id), canonical_uuid(&raw.order_id))
    else {
        return Some("id or order_id is not a UUID in canonical form".into());
    };
    if raw.purposes.iter().any(|p| *p != 0 && *p != 1) {
        return Some("a purpose is neither 0 nor 1".into());
    }
    let Ok(mac) = <[u8; 32]>::try_from(raw.mac.as_slice()) else {
        return Some("MAC is not 32 bytes".into());
    };
    let key = keyring.consent_tag_key();
    if i64::from(key.version()) != raw.mac_key_version {
        return Some("MAC key version is not in the keyring".into());
    }
    let tag = ConsentTag {
        id,
        order_id,
        subject,
        basis,
        purposes: Purposes::from_array(raw.purposes.map(|p| p == 1)),
        policy_version: raw.policy_version.clone(),
        captured_at: raw.captured_at.clone(),
        channel: raw.channel.clone(),
        mac_key_version: key.version(),
        mac,
    };
    if !key.verify(&[&tag.canonical_bytes()], &tag.mac) {
        return Some("MAC does not verify (edited)".into());
    }
    match (subject, basis) {
        (Subject::Customer, Basis::Consent) => None,
        (Subject::GiftRecipient, Basis::FulfillmentOnly) if tag.purposes == Purposes::default() => {
            None
        }
        (Subject::GiftRecipient, Basis::FulfillmentOnly) => {
            Some("a gift recipient's tag consents to something".into())
        }
        _ => Some("basis does not fit the subject".into()),
    }
}

/// A UUID written exactly as checkoutd writes them (lower-case, hyphenated).
/// `Uuid::parse_str` alone also takes upper case, braces, `urn:uuid:` and
/// the bare 32 digits: an id rewritten that way still binds the same
/// envelope, but is no longer the id every lookup uses.
fn canonical_uuid(text: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::parse_str(text)
        .ok()
        .filter(|u| u.hyphenated().to_string() == text)
}

/// Opens a record's envelope (if it must have one) and checks its clear
/// companions against the plaintext. `None` when everything verifies.
fn check_record(keyring: &Keyring, r: &AuditRecord) -> Option<String> {
    // Every row, a gift's envelope-less shipping marker included.
    let (Some(order_id), Some(record_id)) = (canonical_uuid(&r.order_id), canonical_uuid(&r.id))
    else {
        return Some("id or order_id is not a UUID in canonical form".into());
    };
    let envelope = match (&r.envelope, &r.extra) {
        (Err(what), _) => return Some((*what).into()),
        (Ok(None), AuditExtra::Shipping { ship_to }) if ship_to == "gift_recipient" => return None,
        (Ok(Some(_)), AuditExtra::Shipping { ship_to }) if ship_to == "gift_recipient" => {
            return Some("a gift's shipping marker carries an envelope".into());
        }
        (Ok(None), _) => return Some("envelope is missing".into()),
        (Ok(Some(e)), _) => e,
    };
    let binding = Binding {
        class: class_of(r.table),
        order_id,
        record_id,
    };
    if keyring
        .opening_kek(binding.class, envelope.kek_version)
        .is_err()
    {
        return Some(format!(
            "KEK version {} is not in the keyring",
            envelope.kek_version
        ));
    }
    let plain = match envelope::open(keyring, &binding, envelope) {
        Ok(p) => p,
        Err(_) => return Some("envelope does not open (tampered, moved or relabelled)".into()),
    };
    // The plaintext is read in place (`plain` is wiped when dropped): the
    // card number and the email are borrowed from it, never copied into a
    // `serde_json::Value` or a `String` that would be freed unwiped — this
    // runs over every card of the database on every report.
    match &r.extra {
        AuditExtra::Card {
            brand,
            last4,
            fingerprint,
            fingerprint_key_version,
        } => {
            #[derive(serde::Deserialize)]
            struct CardPlain<'a> {
                #[serde(borrow)]
                pan: Option<std::borrow::Cow<'a, str>>,
            }
            let Ok(doc) = serde_json::from_slice::<CardPlain<'_>>(&plain) else {
                return Some("plaintext is not the documented JSON".into());
            };
            let Some(digits) = doc.pan.map(wiped) else {
                return Some("plaintext has no card number".into());
            };
            let Ok(pan) = Pan::parse(&digits) else {
                return Some("sealed card number is not valid".into());
            };
            if pan.last4() != *last4 {
                return Some("last4 does not match the sealed card number".into());
            }
            if pan.brand().as_str() != brand {
                return Some("brand does not match the sealed card number".into());
            }
            let key = keyring.fingerprint_key();
            if i64::from(key.version()) != *fingerprint_key_version
                || !key.verify(&[pan.expose_digits()], fingerprint)
            {
                return Some("fingerprint does not match the sealed card number".into());
            }
            None
        }
        AuditExtra::Email {
            email_blind_index,
            blind_index_version,
        } => {
            #[derive(serde::Deserialize)]
            struct EmailPlain<'a> {
                #[serde(borrow)]
                email: Option<std::borrow::Cow<'a, str>>,
            }
            let Ok(doc) = serde_json::from_slice::<EmailPlain<'_>>(&plain) else {
                return Some("plaintext is not the documented JSON".into());
            };
            let Some(email) = doc.email.map(wiped) else {
                return Some("plaintext has no email".into());
            };
            let key = keyring.blind_index_key();
            if i64::from(key.version()) != *blind_index_version
                || !key.verify(&[email.as_bytes()], email_blind_index)
            {
                return Some("email blind index does not match the sealed email".into());
            }
            None
        }
        // Only that it is JSON: skipped, not built.
        AuditExtra::Shipping { .. } | AuditExtra::Recipient => {
            serde_json::from_slice::<serde::de::IgnoredAny>(&plain)
                .err()
                .map(|_| "plaintext is not the documented JSON".into())
        }
    }
}

/// A string read from a plaintext (borrowed from the wiped buffer, or
/// copied by serde where JSON escapes made it): as a string wiped on drop.
fn wiped(text: std::borrow::Cow<'_, str>) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(text.into_owned())
}

/// Runs the whole verification. `progress(done, total)` is called after
/// each page of orders.
pub async fn verify(
    store: &dyn Store,
    keyring: &Keyring,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Report, StoreError> {
    verify_since(store, keyring, progress, &Since::default()).await
}

/// [`verify`], with the access log and the withdrawal ledger required to
/// pass through the heads an earlier report saw (see
/// [`super::access_log::verify_chain_since`]).
pub async fn verify_since(
    store: &dyn Store,
    keyring: &Keyring,
    progress: &(dyn Fn(u64, u64) + Sync),
    since: &Since,
) -> Result<Report, StoreError> {
    let totals = store.totals().await?;
    let mut failures = Failures::default();
    let mut purged: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let (mut orders_checked, mut records_checked) = (0u64, 0u64);
    // From the first order whatever its `seq` (under no MAC: an order
    // edited to 0 or below must not fall outside the walk).
    let mut after = None;
    loop {
        let batch = store.audit_batch(after, PAGE).await?;
        let Some(last) = batch.orders.last() else {
            break;
        };
        after = Some(last.seq);
        orders_checked += batch.orders.len() as u64;
        records_checked += batch.records.len() as u64;
        check_batch(keyring, &batch, &mut failures);
        // Every order has billing, shipping and card records (and a gift
        // order a recipient record).
        let ids: Vec<String> = batch.orders.iter().map(|o| o.id.clone()).collect();
        let purges = store.purges_of(&ids).await?;
        let (counts, restored) = check_completeness(keyring, &batch, &purges, &mut failures);
        for (class, n) in counts {
            *purged.entry(class).or_insert(0) += n;
        }
        confirm_restored(store, &restored, &mut failures).await?;
        progress(orders_checked, totals.orders);
        if batch.orders.len() < PAGE as usize {
            break;
        }
    }
    // Orders are never deleted and never leave the walk: fewer checked
    // than were counted before it began means some were out of its reach.
    if orders_checked < totals.orders {
        failures.push(Failure::new(
            "orders",
            "",
            format!(
                "{} order(s) counted but outside the audit's walk by sequence number (seq edited)",
                totals.orders - orders_checked
            ),
        ));
    }
    let consent_ledger =
        check_consent_events(store, keyring, since.consent_ledger.as_ref(), &mut failures).await?;
    scan_schema_and_clear_columns(store, &mut failures).await?;
    // After the plaintext scan: many findings here (rows from before
    // migration 0007) must not crowd a card number in clear out of the
    // listed failures.
    check_idempotency_rows(store, keyring, &mut failures).await?;
    check_rows_belong_to_orders(store, &mut failures).await?;
    check_dispatches_kept(store, &mut failures).await?;
    check_orders_named_exist(store, &mut failures).await?;
    check_purges_kept(store, &mut failures).await?;
    check_guards(store, &mut failures).await?;
    let legal_holds = check_holds(store, keyring, &mut failures).await?;
    let access_log =
        match verify_chain_since(store, keyring.access_log_key(), since.access_log).await {
            Ok(status) => ChainReport {
                intact: true,
                entries: status.entries,
                head_seq: Some(status.head_seq),
                head_hash: Some(crate::hex::encode(&status.head_hash)),
                failure: None,
                anchored_at: since.access_log.map(|a| a.seq),
            },
            // A log that could not be read is no finding: the run fails
            // as any other read of the store does.
            Err(ChainError::Store(error)) => return Err(StoreError::Shared(error)),
            Err(error) => {
                let record_id = match &error {
                    ChainError::Entry { seq, .. } => seq.to_string(),
                    // The column is named in the finding's text.
                    ChainError::Damaged(_) => String::new(),
                    _ => "head".to_owned(),
                };
                failures.push(Failure::new("access_log", &record_id, error.to_string()));
                ChainReport {
                    intact: false,
                    entries: totals.records.get("access_log").copied().unwrap_or(0),
                    head_seq: None,
                    head_hash: None,
                    failure: Some(error.to_string()),
                    anchored_at: since.access_log.map(|a| a.seq),
                }
            }
        };
    let consent = store.consent_stats().await?;
    Ok(Report {
        format: "checkoutd-audit-report/1",
        generated_at: crate::ids::now(),
        verified: failures.count == 0,
        totals,
        orders_checked,
        records_checked,
        failure_count: failures.count,
        failures: failures.listed,
        purged,
        legal_holds,
        consent,
        access_log,
        consent_ledger,
    })
}

/// Every order has its records — except classes recorded as purged (with a
/// valid purge MAC). Returns the purges seen, per class, and the records
/// present although their purge is recorded, as `(order id, table)`: to be
/// confirmed by [`confirm_restored`], since a purge that committed between
/// reading the records and reading the purges looks the same.
fn check_completeness<'b>(
    keyring: &Keyring,
    batch: &'b AuditBatch,
    purges: &[crate::store::rows::PurgeRow],
    out: &mut Failures,
) -> (
    std::collections::BTreeMap<String, u64>,
    Vec<(&'b str, &'static str)>,
) {
    let mut restored = Vec::new();
    let key = keyring.consent_tag_key();
    let mut purged: HashMap<(&str, &str), bool> = HashMap::new();
    let mut counts = std::collections::BTreeMap::new();
    for p in purges {
        let bytes = crate::retention::purge_canonical_bytes(p);
        if key.verify(&[&bytes], &p.mac) {
            purged.insert((p.order_id.as_str(), p.class.as_str()), true);
            *counts.entry(p.class.clone()).or_insert(0) += 1;
        } else {
            out.push(Failure::new(
                "purges",
                &p.order_id,
                format!("purge of {} does not verify (forged)", p.class),
            ));
        }
    }
    let mut have: HashMap<&str, [bool; 5]> = HashMap::new();
    for r in &batch.records {
        let slot = match r.table {
            "billing_details" => 0,
            "shipping_details" => 1,
            "payment_cards" => 2,
            "contact_emails" => 4,
            _ => 3,
        };
        have.entry(r.order_id.as_str()).or_default()[slot] = true;
    }
    for o in &batch.orders {
        let h = have.get(o.id.as_str()).copied().unwrap_or_default();
        let is_purged = |class: &str| purged.contains_key(&(o.id.as_str(), class));
        for (present, (table, class)) in [h[0], h[1], h[2], h[4]].iter().zip([
            ("billing_details", "billing"),
            ("shipping_details", "shipping"),
            ("payment_cards", "card"),
            ("contact_emails", "contact"),
        ]) {
            if !present && !is_purged(class) {
                out.push(Failure::new("orders", &o.id, format!("no {table} record")));
            }
            // A purge deletes the records and writes its row in one
            // transaction: a record next to a valid purge was put back
            // (restored from a backup), and the shredding undone.
            if *present && is_purged(class) {
                restored.push((o.id.as_str(), table));
            }
        }
        if h[3] && is_purged("recipient") {
            restored.push((o.id.as_str(), "gift_recipients"));
        }
        let marker_is_gift = batch.records.iter().any(|r| {
            r.order_id == o.id && matches!(&r.extra, AuditExtra::Shipping { ship_to } if ship_to == "gift_recipient")
        });
        if h[1] && marker_is_gift != o.gift {
            out.push(Failure::new(
                "orders",
                &o.id,
                "gift flag and shipping marker disagree",
            ));
        }
        if o.gift != h[3] && !(o.gift && is_purged("recipient")) {
            out.push(Failure::new(
                "orders",
                &o.id,
                "gift flag and gift_recipients record disagree",
            ));
        }
    }
    (counts, restored)
}

/// Of the records [`check_completeness`] found next to their purge, those
/// still there when read again — after the purge was seen, so not a purge
/// that committed while the audit read — are named: put back after it.
async fn confirm_restored(
    store: &dyn Store,
    restored: &[(&str, &'static str)],
    out: &mut Failures,
) -> Result<(), StoreError> {
    let mut orders: Vec<&str> = restored.iter().map(|(o, _)| *o).collect();
    orders.dedup();
    for order_id in orders {
        let now = store.audit_order(order_id).await?;
        for (_, table) in restored.iter().filter(|(o, _)| *o == order_id) {
            if now.records.iter().any(|r| r.table == *table) {
                out.push(Failure::new(
                    "orders",
                    order_id,
                    format!("{table} record present although its purge is recorded (restored)"),
                ));
            }
        }
    }
    Ok(())
}

/// Every stored response a retry would replay is the one written for its
/// key (MAC present and verifying) and belongs to an order that exists.
/// Failures name the row by its `order_id` column (keys are stored only as
/// keyed hashes).
async fn check_idempotency_rows(
    store: &dyn Store,
    keyring: &Keyring,
    out: &mut Failures,
) -> Result<(), StoreError> {
    let mut after: Option<(Vec<u8>, Vec<u8>)> = None;
    loop {
        let rows = store
            .idempotency_audit_page(
                after.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
                SCAN_PAGE,
            )
            .await?;
        let Some(last) = rows.last() else { break };
        after = Some((last.client.clone(), last.key_hash.clone()));
        for row in &rows {
            if let Some(what) = check_key_row(keyring, row) {
                // Named by its key hash (the primary key; its order_id
                // column is as editable as the rest), the order id quoted
                // when it is one.
                let order = canonical_uuid(&row.order_id)
                    .map_or_else(|| "not a UUID".to_owned(), |u| u.to_string());
                out.push(Failure::new(
                    "idempotency_keys",
                    &key_row_id(&row.key_hash),
                    format!("{what} (order_id column: {order})"),
                ));
            }
        }
        if rows.len() < SCAN_PAGE as usize {
            break;
        }
    }
    // Every order keeps the row its key claimed: without it a retry of
    // that key would be taken as new and make a second order.
    let (missing, ids) = store
        .orders_without_key_row(u32::try_from(MAX_LISTED_FAILURES).unwrap_or(u32::MAX))
        .await?;
    for id in &ids {
        out.push(Failure::new(
            "orders",
            id,
            "its idempotency row is missing (deleted: a retry of its key would make a second order)",
        ));
    }
    // Beyond the listed ones, counted.
    out.count += missing.saturating_sub(ids.len() as u64);
    Ok(())
}

/// Every record and consent tag belongs to an order: the walk opens
/// records through their orders, so a row planted under an order id that
/// does not exist (foreign keys switched off, as the `sqlite3` shell has
/// them) — a card number in clear in a `ciphertext` column, say — would
/// otherwise never be looked at.
async fn check_rows_belong_to_orders(
    store: &dyn Store,
    out: &mut Failures,
) -> Result<(), StoreError> {
    let limit = u32::try_from(MAX_LISTED_FAILURES).unwrap_or(u32::MAX);
    let (count, listed) = store.rows_without_order(limit).await?;
    for (table, id) in &listed {
        out.push(Failure::new(
            table,
            id,
            "belongs to no order (its order_id names none): planted, or its order deleted",
        ));
    }
    out.count += count.saturating_sub(listed.len() as u64);
    Ok(())
}

/// A dispatch is never undone: the order's MAC cannot cover its status
/// (it changes once), so a dispatch set back to `accepted` with its facts
/// nulled — to ship the order twice, or keep its card data past retention
/// — is found through the access log, whose chain is verified separately:
/// every dispatch answered 200 was committed before its entry was written.
/// How old a dispatch must be before a missing access-log entry for it is
/// a finding.
const UNLOGGED_DISPATCH_GRACE: time::Duration = time::Duration::minutes(10);

/// The access-log actions whose objects name orders by id (besides other
/// objects, never of 36 characters): the warehouse's listings, the
/// marketing audience, the auditor's order view and consent proofs,
/// purges and legal holds. Dispatches are checked with their orders'
/// state ([`check_dispatches_kept`]).
const ACTIONS_NAMING_ORDERS: [&str; 8] = [
    "GET /v1/shipments",
    "GET /v1/marketing/audience",
    "GET /v1/audit/orders/{id}",
    "GET /v1/audit/consent",
    "POST /v1/audit/consent",
    crate::retention::PURGED_ACTION,
    crate::retention::HOLD_ACTION,
    crate::retention::RELEASE_ACTION,
];

/// An order is never deleted (a purge keeps its row, the guards refuse a
/// DELETE): one the access log names — read by the warehouse, exported,
/// viewed, purged, held — and gone was deleted with the guards switched
/// off (a customer's latest "no" removed, say, so that an older "yes"
/// counts again). An order deleted before anything named it is not found
/// here.
async fn check_orders_named_exist(store: &dyn Store, out: &mut Failures) -> Result<(), StoreError> {
    let limit = u32::try_from(MAX_LISTED_FAILURES).unwrap_or(u32::MAX);
    let (missing, found) = store
        .orders_named_but_missing(&ACTIONS_NAMING_ORDERS, limit)
        .await?;
    for (order_id, seq) in &found {
        out.push(Failure::new(
            "orders",
            order_id,
            format!("missing, but access-log entry {seq} names it (deleted)"),
        ));
    }
    out.count += missing.saturating_sub(found.len() as u64);
    Ok(())
}

/// The database's guards as the migrations created them: a trigger
/// missing, altered or disabled is a finding in its table (which rule it
/// kept is in its name: `access_log_no_delete`, `orders_never_deleted`,
/// `payment_cards_no_retired_kek` …), and so is a guarded table whose
/// writes can go around its triggers (`store::guards::Bypass`).
async fn check_guards(store: &dyn Store, out: &mut Failures) -> Result<(), StoreError> {
    use crate::store::guards::{Bypass, GuardProblem};
    for found in store.guard_findings().await? {
        let (table, trigger) = (found.table, found.trigger.unwrap_or("(none)"));
        let what = match found.problem {
            GuardProblem::Missing => format!(
                "database guard {trigger} is missing (dropped: what it refuses is no longer refused)"
            ),
            GuardProblem::Altered => format!(
                "database guard {trigger} is not as the migrations created it (its definition or its function was replaced)"
            ),
            GuardProblem::Disabled => {
                format!("database guard {trigger} is disabled (it does not fire)")
            }
            GuardProblem::Bypassed(Bypass::RowSecurity) => format!(
                "database guards of {table} can be gone around: row-level security is on (a policy can hide rows from its guards' own checks)"
            ),
            GuardProblem::Bypassed(Bypass::Rule) => format!(
                "database guards of {table} can be gone around: a rule rewrites statements on it"
            ),
            GuardProblem::Bypassed(Bypass::Inherited) => format!(
                "database guards of {table} can be gone around: a table inherits from it or is a partition of it (statements run on that table directly do not fire its statement guards; an inheriting table's rows fire none of its row guards)"
            ),
        };
        out.push(Failure::new(table, "", what));
    }
    Ok(())
}

async fn check_dispatches_kept(store: &dyn Store, out: &mut Failures) -> Result<(), StoreError> {
    let limit = u32::try_from(MAX_LISTED_FAILURES).unwrap_or(u32::MAX);
    let (undone, found) = store
        .dispatches_undone(crate::fulfillment::DISPATCH_ACTION, limit)
        .await?;
    for undone in &found {
        let seq = undone.log_seq;
        out.push(Failure::new(
            "orders",
            &undone.order_id,
            if undone.order_gone {
                format!("missing, but access-log entry {seq} records its dispatch (deleted)")
            } else if undone.dispatched_again {
                format!(
                    "dispatched after access-log entry {seq} recorded its dispatch (undone and \
                     dispatched again: shipped twice?)"
                )
            } else {
                format!(
                    "not dispatched, but access-log entry {seq} records its dispatch (rolled back)"
                )
            },
        ));
    }
    out.count += undone.saturating_sub(found.len() as u64);
    // A dispatch and its entry are written one after the other (in one
    // task the request cannot cancel): one committed in the last minutes
    // may be waiting for its entry.
    let settled = crate::ids::timestamp(time::OffsetDateTime::now_utc() - UNLOGGED_DISPATCH_GRACE);
    let (unlogged, found) = store
        .dispatches_unlogged(crate::fulfillment::DISPATCH_ACTION, &settled, limit)
        .await?;
    for order_id in &found {
        out.push(Failure::new(
            "orders",
            order_id,
            "dispatched, but no access-log entry records its dispatch (its log entry was \
             never written, or removed with the log's tail)"
                .to_owned(),
        ));
    }
    out.count += unlogged.saturating_sub(found.len() as u64);
    Ok(())
}

/// Every purge the access log records as done still has its row in
/// `purges` (the row's MAC is checked with the order's records, in
/// [`check_completeness`]). A purge row deleted with the records put back
/// from a backup would otherwise leave an order that looks whole.
async fn check_purges_kept(store: &dyn Store, out: &mut Failures) -> Result<(), StoreError> {
    let limit = u32::try_from(MAX_LISTED_FAILURES).unwrap_or(u32::MAX);
    let (unrecorded, found) = store
        .purges_unrecorded(crate::retention::PURGED_ACTION, limit)
        .await?;
    for purge in &found {
        // Quoted only as one of the class names (the text is the log's).
        let class = crate::crypto::DataClass::parse(&purge.class)
            .map_or("a class not known", crate::crypto::DataClass::as_str);
        out.push(Failure::new(
            "purges",
            &purge.order_id,
            format!(
                "no purge of {class} stored, but access-log entry {} records it (deleted)",
                purge.log_seq
            ),
        ));
    }
    out.count += unrecorded.saturating_sub(found.len() as u64);
    Ok(())
}

/// Every legal hold verifies: one written around the service (its MAC
/// fails) would keep an order's card data past its retention period.
/// Returns how many holds are in force.
async fn check_holds(
    store: &dyn Store,
    keyring: &Keyring,
    out: &mut Failures,
) -> Result<u64, StoreError> {
    let holds = store.holds().await?;
    for hold in &holds {
        check_hold(keyring, hold, out);
    }
    // The hold in force against the access log: a hold deleted (retention
    // would then shred a disputed order's data), released and put back
    // (its MAC still verifies: it keeps card data past its period), or
    // replaced by an older one is named. The log's entry is written before
    // the row changes, so an order whose last hold entry is recent may be
    // between the two (another process holding or releasing it now): left
    // for a later report. A hold whose command failed after logging it
    // stays a finding until the command is run again.
    let log = store
        .entries_naming_one_order(&[
            crate::retention::HOLD_ACTION,
            crate::retention::RELEASE_ACTION,
        ])
        .await?;
    let settled = crate::ids::timestamp(time::OffsetDateTime::now_utc() - UNLOGGED_DISPATCH_GRACE);
    // Per order: the hold entries since its last release, that release,
    // and its last entry's time.
    #[derive(Default)]
    struct Logged<'a> {
        placed: Vec<&'a crate::store::rows::OrderEntry>,
        released: Option<&'a crate::store::rows::OrderEntry>,
        last_at: &'a str,
    }
    let mut by_order: std::collections::BTreeMap<&str, Logged> = std::collections::BTreeMap::new();
    for entry in &log {
        let logged = by_order.entry(entry.order_id.as_str()).or_default();
        if entry.action == crate::retention::HOLD_ACTION {
            logged.placed.push(entry);
        } else {
            logged.placed.clear();
            logged.released = Some(entry);
        }
        logged.last_at = &entry.at;
    }
    for hold in &holds {
        let logged = by_order.get(hold.order_id.as_str());
        if logged.is_some_and(|l| l.last_at >= settled.as_str()) {
            continue;
        }
        // Two `orders hold` at once both log; the one refused as already
        // held left an entry of its own: any hold entry since the last
        // release may be the one in force.
        let what = match logged {
            None => "legal hold in force, but no access-log entry placed it (written around \
                     the service)"
                .to_owned(),
            Some(l) if l.placed.iter().any(|e| e.at == hold.placed_at) => continue,
            Some(Logged {
                placed,
                released: Some(release),
                ..
            }) if placed.is_empty() => format!(
                "legal hold in force, but access-log entry {} released it (put back)",
                release.seq
            ),
            Some(l) => format!(
                "legal hold in force is not one the access log placed since its last release \
                 (entry {}: replaced)",
                l.placed.last().map_or(0, |e| e.seq)
            ),
        };
        out.push(Failure::new("legal_holds", &hold.order_id, what));
    }
    check_purges_under_holds(store, &holds, &log, out).await?;
    for (order_id, logged) in &by_order {
        let Some(last) = logged.placed.last() else {
            continue;
        };
        if logged.last_at >= settled.as_str() || holds.iter().any(|h| h.order_id == *order_id) {
            continue;
        }
        out.push(Failure::new(
            "legal_holds",
            order_id,
            format!(
                "no legal hold in force, but access-log entry {} placed one and no entry \
                 released it (deleted)",
                last.seq
            ),
        ));
    }
    Ok(holds.len() as u64)
}

/// How long after a hold's `placed_at` a purge of the order may still have
/// committed legitimately: a purge checks for the hold's row, and one that
/// began just before the row was written (or on a host whose clock is a
/// little ahead) may carry a later time.
const HOLD_LANDING_GRACE: time::Duration = time::Duration::minutes(1);

/// Purges made while a hold in force now was already in place: the store
/// refuses every purge of a held order, so such a purge means the hold's
/// row was deleted around it and put back (its MAC still verifies) —
/// nothing else would show that the data the hold kept is gone. Only a
/// hold row the access log placed (an entry at its `placed_at`) is taken
/// as having been there since then; a hold logged whose row was never
/// written (its command failed; retention may then purge the order, as it
/// should) proves nothing, and neither does one released since.
async fn check_purges_under_holds(
    store: &dyn Store,
    holds: &[crate::store::rows::HoldRow],
    log: &[crate::store::rows::OrderEntry],
    out: &mut Failures,
) -> Result<(), StoreError> {
    let logged: Vec<&crate::store::rows::HoldRow> = holds
        .iter()
        .filter(|hold| {
            log.iter().any(|e| {
                e.action == crate::retention::HOLD_ACTION
                    && e.order_id == hold.order_id
                    && e.at == hold.placed_at
            })
        })
        .collect();
    if logged.is_empty() {
        return Ok(());
    }
    let order_ids: Vec<String> = logged.iter().map(|h| h.order_id.clone()).collect();
    for purge in store.purges_of(&order_ids).await? {
        let Some(hold) = logged.iter().find(|h| h.order_id == purge.order_id) else {
            continue;
        };
        let since = crate::ids::parse_timestamp(&hold.placed_at)
            .map(|at| crate::ids::timestamp(at + HOLD_LANDING_GRACE))
            .unwrap_or_else(|| hold.placed_at.clone());
        if purge.purged_at >= since {
            out.push(Failure::new(
                "purges",
                &purge.order_id,
                format!(
                    "{} records purged at {} under the legal hold placed at {} and still in \
                     force (the hold was deleted around the purge and put back)",
                    purge.class, purge.purged_at, hold.placed_at
                ),
            ));
        }
    }
    Ok(())
}

/// Whether one hold verifies; a failure named when it does not.
fn check_hold(keyring: &Keyring, hold: &crate::store::rows::HoldRow, out: &mut Failures) -> bool {
    let verifies = keyring
        .consent_tag_key()
        .verify(&[&crate::retention::hold_canonical_bytes(hold)], &hold.mac);
    if !verifies {
        out.push(Failure::new(
            "legal_holds",
            &hold.order_id,
            "legal hold does not verify (forged): it keeps the order's data past its retention \
             periods"
                .to_owned(),
        ));
    }
    verifies
}

/// How a report names an idempotency row: `key:` and the first 8 bytes of
/// its key hash in hex (the key itself is never stored).
pub fn key_row_id(key_hash: &[u8]) -> String {
    format!(
        "key:{}",
        crate::hex::encode(&key_hash[..key_hash.len().min(8)])
    )
}

/// What is wrong with one idempotency row, if anything.
fn check_key_row(keyring: &Keyring, row: &AuditKeyRow) -> Option<String> {
    let found = match &row.found {
        Err(reason) => return Some(format!("unreadable: {reason}")),
        Ok(found) => found,
    };
    if found.mac.is_none() {
        return Some(
            "stored response has no MAC (written before migration 0007, or nulled); it is never replayed"
                .to_owned(),
        );
    }
    if !crate::intake::seal::stored_response_verifies(keyring, &row.client, &row.key_hash, found) {
        return Some(
            "stored response MAC does not verify (edited, or copied from another key)".to_owned(),
        );
    }
    (!row.order_exists).then(|| "its order does not exist".to_owned())
}

/// No CVV-like column; no card number or email in any clear column.
async fn scan_schema_and_clear_columns(
    store: &dyn Store,
    out: &mut Failures,
) -> Result<(), StoreError> {
    for (table, columns) in store.schema().await? {
        for (column, _) in &columns {
            let c = column.to_ascii_lowercase();
            if [
                "cvv",
                "cvc",
                "csc",
                "cid",
                "card_verification",
                "security_code",
            ]
            .iter()
            .any(|n| c.contains(n))
                && c != "client_fingerprint"
            {
                out.push(Failure::new(
                    &table,
                    "",
                    format!("column {column} looks like a card verification code"),
                ));
            }
        }
        let clear: Vec<String> = columns
            .iter()
            .map(|(c, _)| c.clone())
            .filter(|c| !OPAQUE_COLUMNS.contains(&c.as_str()))
            .collect();
        if clear.is_empty() {
            continue;
        }
        // From the first row: a SQLite rowid may be 0 or negative.
        let mut after = None;
        loop {
            let rows = store.clear_rows(&table, &clear, after, SCAN_PAGE).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.rowid);
            for row in &rows {
                for (column, value) in &row.values {
                    if clear_column_holds_card(&table, column, value) {
                        out.push(Failure::new(
                            &table,
                            &row.record_id,
                            format!("clear column {column} holds a card number"),
                        ));
                    }
                    if contains_email(value) {
                        out.push(Failure::new(
                            &table,
                            &row.record_id,
                            format!("clear column {column} holds an email address"),
                        ));
                    }
                }
            }
            if rows.len() < SCAN_PAGE as usize {
                break;
            }
        }
    }
    Ok(())
}

/// The per-order view: metadata and verdicts, no plaintext. `None` for an
/// unknown order.
pub async fn order(
    store: &dyn Store,
    keyring: &Keyring,
    order_id: &str,
) -> Result<Option<OrderAudit>, StoreError> {
    let batch = store.audit_order(order_id).await?;
    if batch.orders.is_empty() {
        return Ok(None);
    }
    let mut failures = Failures::default();
    let (record_ok, tag_ok) = check_batch(keyring, &batch, &mut failures);
    let purges = store.purges_of(&[order_id.to_owned()]).await?;
    let (counts, restored) = check_completeness(keyring, &batch, &purges, &mut failures);
    confirm_restored(store, &restored, &mut failures).await?;
    let purged: Vec<String> = counts.into_keys().collect();
    let legal_hold = store
        .holds()
        .await?
        .into_iter()
        .find(|h| h.order_id == order_id)
        .map(|hold| HoldMeta {
            verifies: check_hold(keyring, &hold, &mut failures),
            reference: if crate::retention::hold_reference_problem(&hold.reference).is_none() {
                hold.reference
            } else {
                "(withheld: not a reference checkoutd accepts)".to_owned()
            },
            placed_at: shown_text(&hold.placed_at).into_owned(),
        });
    let records = batch
        .records
        .iter()
        .zip(record_ok)
        .map(|(r, ok)| {
            let env: Option<&Envelope> = r.envelope.as_ref().ok().and_then(Option::as_ref);
            RecordMeta {
                table: r.table,
                record_id: shown_id(&r.id),
                data_class: class_of(r.table).as_str(),
                algorithm: if env.is_some() {
                    "AES-256-GCM (per-record DEK wrapped by AES-256-GCM KEK)"
                } else {
                    "none (gift marker)"
                },
                format_version: env.map(|e| e.format_version),
                kek_version: env.map(|e| e.kek_version),
                nonce_len: env.map(|_| ring::aead::NONCE_LEN),
                ciphertext_len_rounded: env.map(|e| {
                    e.ciphertext.len().div_ceil(CIPHERTEXT_LEN_STEP) * CIPHERTEXT_LEN_STEP
                }),
                wrapped_dek_len: env.map(|e| e.wrapped_dek.len()),
                consent_tag_id: shown_id(&r.consent_tag_id),
                verifies: ok,
            }
        })
        .collect();
    let consent_tags = batch
        .tags
        .iter()
        .zip(tag_ok)
        .map(|(t, ok)| TagMeta {
            id: shown_id(&t.id),
            subject: shown_text(&t.subject).into_owned(),
            basis: shown_text(&t.basis).into_owned(),
            purposes: serde_json::json!(Purposes::from_array(t.purposes.map(|p| p == 1))),
            policy_version: shown_text(&t.policy_version).into_owned(),
            captured_at: shown_text(&t.captured_at).into_owned(),
            channel: shown_text(&t.channel).into_owned(),
            mac_key_version: t.mac_key_version,
            verifies: ok,
        })
        .collect();
    Ok(Some(OrderAudit {
        order_id: order_id.to_owned(),
        purged,
        verified: failures.count == 0,
        records,
        consent_tags,
        failures: failures.listed,
        legal_hold,
    }))
}

/// The withdrawal ledger verifies as a chain (no edit, deletion, reorder
/// or truncation; through `since`, a head seen before), and every sealed
/// reference opens.
async fn check_consent_events(
    store: &dyn Store,
    keyring: &Keyring,
    since: Option<&crate::consent::LedgerPosition>,
    out: &mut Failures,
) -> Result<LedgerReport, StoreError> {
    let start = crate::consent::LedgerPosition::start();
    let verified = crate::consent::verify_ledger_from(
        store,
        keyring.consent_tag_key(),
        &start,
        since.unwrap_or(&start),
    )
    .await;
    let anchored_at = since.map(|p| p.seq);
    let ledger = match verified {
        Ok(head) => LedgerReport {
            intact: true,
            head_seq: Some(head.seq),
            head_mac: Some(crate::hex::encode(&head.mac)),
            failure: None,
            anchored_at,
        },
        Err(crate::consent::LedgerFault::Unreadable(error)) => return Err(error),
        Err(crate::consent::LedgerFault::Broken { entry, what }) => {
            out.push(Failure::new("consent_events", &entry, what));
            LedgerReport {
                intact: false,
                head_seq: None,
                head_mac: None,
                failure: Some(what.to_owned()),
                anchored_at,
            }
        }
    };
    let mut after = 0i64;
    loop {
        let page = store.consent_events_page(after, SCAN_PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (_, e) in &page {
            // Not under the event's MAC (docs/encryption.md): checked here,
            // as for the records' blind indexes.
            if e.blind_index_version != i64::from(keyring.blind_index_key().version()) {
                out.push(Failure::new(
                    "consent_events",
                    &e.id,
                    "blind index version is not the keyring's",
                ));
            }
            if e.reference_damaged {
                out.push(Failure::new(
                    "consent_events",
                    &e.id,
                    crate::consent::REFERENCE_DAMAGED,
                ));
            }
            let Some(reference) = &e.reference else {
                continue;
            };
            let opened = uuid::Uuid::parse_str(&e.id).ok().and_then(|id| {
                let binding = Binding {
                    class: DataClass::Contact,
                    order_id: uuid::Uuid::nil(),
                    record_id: id,
                };
                envelope::open(keyring, &binding, reference).ok()
            });
            if opened.is_none() {
                out.push(Failure::new(
                    "consent_events",
                    &e.id,
                    "reference envelope does not open",
                ));
            }
        }
        if page.len() < SCAN_PAGE as usize {
            break;
        }
    }
    Ok(ledger)
}

#[cfg(test)]
mod tests {
    /// Every binary column the schema has is either opaque by design
    /// (random: a MAC, a ciphertext, a wrapped key, a keyed digest) or
    /// scanned on purpose; a random one scanned would, about once in
    /// 400 000 values, look like an email and fail a clean database for
    /// good.
    #[test]
    fn every_binary_column_is_opaque_or_scanned_on_purpose() {
        const SCANNED: [&str; 1] = ["response_body"];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let sql = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for line in sql.lines() {
                let code = line.split("--").next().unwrap_or("");
                let words: Vec<&str> = code
                    .split(|c: char| c.is_whitespace() || c == ',' || c == '(')
                    .filter(|w| !w.is_empty())
                    .collect();
                for pair in words.windows(2) {
                    if pair[1] == "BLOB" {
                        seen += 1;
                        assert!(
                            super::OPAQUE_COLUMNS.contains(&pair[0]) || SCANNED.contains(&pair[0]),
                            "binary column {} is neither opaque nor scanned on purpose",
                            pair[0]
                        );
                    }
                }
            }
        }
        assert!(seen > 10, "found only {seen} binary columns");
    }

    use super::{canonical_uuid, check_key_row, shown_text};
    use crate::crypto::keyring::Keyring;
    use crate::intake::seal::idempotency_canonical_bytes;
    use crate::store::rows::{AuditKeyRow, KeyRecord, StoredResponse};

    /// A row as intake writes it: MAC over its own client and key hash.
    fn key_row(keyring: &Keyring) -> AuditKeyRow {
        let (client, key_hash) = (vec![1u8; 32], vec![2u8; 32]);
        let mut found = KeyRecord {
            request_hash: vec![3; 32],
            response: StoredResponse {
                order_id: uuid::Uuid::from_u128(7),
                status: 201,
                body: br#"{"order_id":"x"}"#.to_vec(),
            },
            created_at: "2026-11-29T17:00:00.000Z".to_owned(),
            mac: None,
        };
        let bytes = idempotency_canonical_bytes(
            &client,
            &key_hash,
            &found.request_hash,
            &found.response,
            &found.created_at,
        );
        found.mac = Some(keyring.consent_tag_key().sign(&[&bytes]).to_vec());
        AuditKeyRow {
            client,
            key_hash,
            request_hash: found.request_hash.clone(),
            order_id: found.response.order_id.to_string(),
            found: Ok(found),
            order_exists: true,
        }
    }

    fn found(row: &mut AuditKeyRow) -> &mut KeyRecord {
        row.found.as_mut().unwrap()
    }

    #[test]
    fn every_idempotency_row_verdict() {
        let keyring = Keyring::generate(&ring::rand::SystemRandom::new(), "t").unwrap();
        let verdict = |edit: &dyn Fn(&mut AuditKeyRow)| {
            let mut row = key_row(&keyring);
            edit(&mut row);
            check_key_row(&keyring, &row).unwrap_or_default()
        };
        assert_eq!(verdict(&|_| {}), "");
        assert!(verdict(&|r| found(r).mac = None).contains("no MAC"));
        let edits: [&dyn Fn(&mut AuditKeyRow); 7] = [
            &|r| r.client[0] ^= 1,
            &|r| r.key_hash[0] ^= 1,
            &|r| found(r).request_hash[0] ^= 1,
            &|r| found(r).response.order_id = uuid::Uuid::from_u128(8),
            &|r| found(r).response.status = 200,
            &|r| found(r).response.body.push(b' '),
            &|r| found(r).created_at.push('0'),
        ];
        for edit in edits {
            assert!(verdict(edit).contains("does not verify"));
        }
        assert!(verdict(&|r| r.order_exists = false).contains("order does not exist"));
        assert!(verdict(&|r| r.found = Err("bad".into())).contains("unreadable"));
    }

    #[test]
    fn database_texts_are_shown_unless_shaped_like_a_card_number_or_an_email() {
        for genuine in [
            "2026-11-30T15:51:33.898Z",
            "2002-06-05",
            "web",
            "customer",
            "2026-11-30T15:51:33.898+01:00",
        ] {
            assert_eq!(shown_text(genuine), genuine);
        }
        for planted in [
            "4012888888881881",
            // A 13-digit Visa number that is also a valid GTIN.
            "4012888888881",
            "+30569309025904",
            "4012.8888.8888.1881",
            "4012 8888 8888 1881 123",
            "ada@example.com",
        ] {
            assert!(shown_text(planted).starts_with("(withheld"), "{planted}");
        }
    }

    #[test]
    fn a_failure_quotes_only_ids_never_a_card_number_or_an_email() {
        let f = super::Failure::new("orders", "4111 1111 1111 1111", "MAC does not verify");
        assert_eq!(f.table, "orders");
        assert!(f.record_id.starts_with("(withheld"), "{f:?}");
        assert_eq!(f.what, "MAC does not verify");
        for id in [
            "4111.1111.1111.1111",
            "4111  1111  1111  1111",
            "4111111111111111",
            "rowid:4111111111111111",
            "Ada Lovelace",
            "x@y.z",
        ] {
            let f = super::Failure::new("orders", id, "x");
            assert!(f.record_id.starts_with("(withheld"), "{f:?}");
        }
        let f = super::Failure::new("t", "1", "column ada@example.com is odd");
        assert!(f.what.starts_with("(withheld"), "{f:?}");
        let f = super::Failure::new("orders 4111111111111111", "1", "x");
        assert!(f.table.starts_with("(withheld"), "{f:?}");
        // Shaped like a table name, and still a card number.
        for table in ["t_4111111111111111", "t_4111_1111_1111_1111"] {
            let f = super::Failure::new(table, "1", "x");
            assert_eq!(f.table, "(withheld: not a table name)", "{f:?}");
        }
        // A column name with the number grouped by dots.
        let f = super::Failure::new("t", "1", "column c_4111.1111.1111.1111 is odd");
        assert!(f.what.starts_with("(withheld"), "{f:?}");
        for id in [
            "01a226be-7820-770e-882a-b9eb5cf2939c",
            "",
            "head",
            "42",
            "rowid:6",
            "rowid:281474976710655",
            "key:00112233445566ff",
        ] {
            assert_eq!(super::Failure::new("orders", id, "x").record_id, id);
        }
    }

    #[test]
    fn only_canonical_uuids_are_taken() {
        let id = "01a226be-7820-770e-882a-b9eb5cf2939c";
        assert!(canonical_uuid(id).is_some());
        // Each of these parses to the same UUID, but is not the stored id.
        for other in [
            "01A226BE-7820-770E-882A-B9EB5CF2939C",
            "01a226be7820770e882ab9eb5cf2939c",
            "{01a226be-7820-770e-882a-b9eb5cf2939c}",
            "urn:uuid:01a226be-7820-770e-882a-b9eb5cf2939c",
        ] {
            assert!(uuid::Uuid::parse_str(other).is_ok(), "{other}");
            assert!(canonical_uuid(other).is_none(), "{other}");
        }
    }
}
