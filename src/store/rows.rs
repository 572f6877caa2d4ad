//! Row types: what the store writes and reads, kept apart from the domain
//! types. Every field here is either ciphertext or free of personal data.

use uuid::Uuid;

use crate::crypto::envelope::Envelope;
use crate::domain::consent::ConsentTag;
use crate::domain::order::Item;

/// An encrypted record of one class.
#[derive(Debug, Clone)]
pub struct SealedRecord {
    pub id: Uuid,
    pub consent_tag_id: Uuid,
    pub envelope: Envelope,
}

/// Whom the order ships to.
#[derive(Debug, Clone)]
pub enum ShippingRecord {
    /// The customer's address (sealed under `shipping`).
    Customer(SealedRecord),
    /// A gift: only the marker; the recipient's record holds the details.
    GiftRecipient { id: Uuid, consent_tag_id: Uuid },
}

impl ShippingRecord {
    pub fn id(&self) -> Uuid {
        match self {
            ShippingRecord::Customer(r) => r.id,
            ShippingRecord::GiftRecipient { id, .. } => *id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CardRecord {
    pub sealed: SealedRecord,
    pub brand: &'static str,
    pub last4: String,
    pub fingerprint: [u8; 32],
    pub fingerprint_key_version: u32,
}

#[derive(Debug, Clone)]
pub struct BillingRecord {
    pub sealed: SealedRecord,
    pub email_blind_index: [u8; 32],
    pub blind_index_version: u32,
}

/// The idempotency row written in the same transaction as its order.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub client: [u8; 32],
    /// Keyed hash of the Idempotency-Key (the key itself is not stored).
    pub key_hash: [u8; 32],
    pub request_hash: [u8; 32],
    pub response: StoredResponse,
    pub created_at: String,
    /// HMAC over all of the above (`intake::seal::idempotency_canonical_bytes`):
    /// a retry is answered with the stored response only if it verifies.
    pub mac: [u8; 32],
}

/// A response kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub order_id: Uuid,
    pub status: u16,
    pub body: Vec<u8>,
}

/// Everything one accepted order writes, all in one transaction.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub id: Uuid,
    /// HMAC over the order's fixed columns (`intake::seal::order_canonical_bytes`).
    pub mac: [u8; 32],
    /// `items` exactly as stored (the MAC covers this text).
    pub items_json: String,
    pub created_at: String,
    pub storefront_ref: Option<String>,
    pub currency: &'static str,
    pub items: Vec<Item>,
    pub total_minor: i64,
    pub client_fingerprint: [u8; 32],
    pub customer_tag: ConsentTag,
    pub recipient_tag: Option<ConsentTag>,
    pub billing: BillingRecord,
    /// The email alone, sealed under `contact` (same blind index as billing).
    pub contact: SealedRecord,
    pub shipping: ShippingRecord,
    pub recipient: Option<SealedRecord>,
    pub card: CardRecord,
    pub idempotency: IdempotencyRecord,
}

/// What became of one order of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// The (client, key) pair was taken by another request first; nothing
    /// of this order was written.
    DuplicateKey,
}

/// The idempotency row as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub request_hash: Vec<u8>,
    pub response: StoredResponse,
    pub created_at: String,
    /// `None` only for a row written before migration 0007 (or nulled).
    pub mac: Option<Vec<u8>>,
}

/// Which idempotency rows are due to lose their request hash
/// ([`Store::replayable_keys`](super::Store::replayable_keys)).
#[derive(Debug, Clone, Copy)]
pub enum KeysDue<'a> {
    /// Rows created before this timestamp: the replay window has passed.
    CreatedBefore(&'a str),
    /// The row of this order (it is being purged).
    OfOrder(&'a str),
}

/// An idempotency row whose request hash is to be emptied: its primary key,
/// the hash it was read with, and its new `response_mac` (over the empty
/// hash; `None` for a row whose MAC did not verify: its MAC is removed
/// too, since it covers the old hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredRequestHash {
    pub client: Vec<u8>,
    pub key_hash: Vec<u8>,
    pub request_hash: Vec<u8>,
    pub mac: Option<Vec<u8>>,
}

/// One idempotency row for the audit: its primary key, the row as found
/// (or why it could not be read), its `order_id` column as text, and
/// whether that order exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditKeyRow {
    pub client: Vec<u8>,
    pub key_hash: Vec<u8>,
    /// The `request_hash` column as found, also when the row is not
    /// readable as a whole (empty if this column is not readable either).
    pub request_hash: Vec<u8>,
    pub order_id: String,
    pub found: Result<KeyRecord, String>,
    pub order_exists: bool,
}

/// The storefront's masked view of an order.
#[derive(Debug, Clone)]
pub struct OrderSummary {
    /// The MAC-covered columns as stored: checked before the row is served.
    pub seal: OrderSeal,
    pub id: Uuid,
    pub created_at: String,
    pub status: String,
    pub storefront_ref: Option<String>,
    pub currency: String,
    pub items: Vec<Item>,
    pub total_minor: i64,
    pub gift: bool,
    /// `None` once the card data was purged.
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub consent: ConsentTag,
    pub dispatch: Option<Dispatch>,
}

/// An order row's columns exactly as stored that its MAC covers (with its
/// id and `created_at`, which the reader has), and its MACs: what a reader
/// checks (`intake::seal::order_row_verifies`) before it serves the row's
/// items, totals and dispatch facts as genuine. Nothing personal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSeal {
    pub storefront_ref: Option<String>,
    pub currency: String,
    /// `items` as stored, the text the MAC covers.
    pub items_json: String,
    pub total_minor: i64,
    pub gift: bool,
    pub consent_tag_id: String,
    pub client_fingerprint: Vec<u8>,
    pub mac: Vec<u8>,
    pub dispatch_mac: Option<Vec<u8>>,
    /// Whether any of `carrier`, `tracking`, `dispatched_at` is set (an
    /// undispatched order has none; a partial set is no dispatch at all).
    pub any_dispatch_fact: bool,
}

/// An order row as [`OrderSeal`] and the order's own columns cover it
/// (`Store::order_check`). A dispatch is written only while the row is
/// still exactly the one checked (`Store::dispatch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderCheck {
    pub created_at: String,
    pub status: String,
    pub seal: OrderSeal,
    pub dispatch: Option<Dispatch>,
}

/// Which shipments to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShipmentStatus {
    /// Accepted, not yet dispatched.
    Pending,
    Dispatched,
}

impl ShipmentStatus {
    /// The `orders.status` value.
    pub fn order_status(self) -> &'static str {
        match self {
            ShipmentStatus::Pending => "accepted",
            ShipmentStatus::Dispatched => "dispatched",
        }
    }
}

/// One shipment as read for fulfillment: no billing or card columns.
#[derive(Debug, Clone)]
pub struct ShipmentRow {
    /// The MAC-covered columns as stored: checked before the row is served.
    pub seal: OrderSeal,
    pub seq: i64,
    pub order_id: Uuid,
    pub created_at: String,
    pub status: String,
    pub items: Vec<Item>,
    /// The ship-to envelope: the customer's shipping record, or the gift
    /// recipient's record for a gift (with its own record id and class).
    pub ship_to: ShipToRow,
    pub customer_tag: ConsentTag,
    /// The customer's email blind index (a clear keyed digest, not the
    /// email), to find their current consent; `None` once the billing
    /// record is purged.
    pub email_blind_index: Option<Vec<u8>>,
    pub dispatch: Option<Dispatch>,
}

/// One row of the shipments query: whole, or damaged — a column edited so
/// that it no longer reads (`items` that are not JSON, a malformed tag). A
/// damaged row is shown to the warehouse as an integrity error (or, without
/// a readable order id, left out and logged), never failing the page: the
/// queue and its cursor move past it.
#[derive(Debug, Clone)]
pub enum ShipmentEntry {
    Whole(Box<ShipmentRow>),
    Damaged {
        seq: i64,
        order_id: Option<Uuid>,
        created_at: String,
        status: String,
        what: &'static str,
    },
}

impl ShipmentEntry {
    /// The order's sequence number (the page cursor).
    pub fn seq(&self) -> i64 {
        match self {
            ShipmentEntry::Whole(row) => row.seq,
            ShipmentEntry::Damaged { seq, .. } => *seq,
        }
    }
}

#[derive(Debug, Clone)]
pub enum ShipToRow {
    Customer {
        record_id: Uuid,
        envelope: Envelope,
    },
    GiftRecipient {
        record_id: Uuid,
        envelope: Envelope,
    },
    /// The ship-to record is not there: purged (a verified purge of one
    /// of `purged_with` says so), or else deleted — an integrity error.
    /// `gift`: the parcel was to go to a gift recipient.
    Missing {
        purged_with: &'static [crate::crypto::DataClass],
        gift: bool,
    },
    /// The ship-to record is malformed: shown as an integrity error
    /// instead of failing the whole page.
    Broken,
}

/// Dispatch facts (none personal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    pub carrier: String,
    pub tracking: String,
    pub dispatched_at: String,
}

/// A dispatch to record, with its MAC
/// (`intake::seal::dispatch_canonical_bytes`).
#[derive(Debug, Clone)]
pub struct NewDispatch {
    pub dispatch: Dispatch,
    pub mac: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchOutcome {
    /// Now dispatched with these facts.
    Dispatched(Dispatch),
    /// Already dispatched: the row as read now, whose (possibly different)
    /// facts are served only once it passes its integrity check.
    AlreadyDispatched(Box<OrderCheck>),
    /// Not dispatched, and its shipping record is gone (purged): there is
    /// nowhere to send it.
    NoShipTo,
    /// Not dispatched: the row is no longer the one checked (edited in the
    /// database meanwhile, or no longer readable).
    Changed,
    NotFound,
}

/// An access-log entry recording a dispatch that the orders no longer show
/// (`Store::dispatches_undone`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoneDispatch {
    /// The order the entry names (from the log: quoted only as an id).
    pub order_id: String,
    pub log_seq: i64,
    /// No order has that id at all (deleted), rather than one not dispatched.
    pub order_gone: bool,
    /// The order is dispatched, but later than the entry: the dispatch it
    /// records was undone and the order dispatched again.
    pub dispatched_again: bool,
}

/// An access-log entry recording a purge of which `purges` holds no row
/// (`Store::purges_unrecorded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnrecordedPurge {
    /// The order the entry names (from the log: quoted only as an id).
    pub order_id: String,
    /// The data class the entry names.
    pub class: String,
    pub log_seq: i64,
}

/// Dispatch facts as shown to fulfillment.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DispatchView {
    pub carrier: String,
    pub tracking: String,
    pub dispatched_at: String,
}

impl From<Dispatch> for DispatchView {
    fn from(d: Dispatch) -> Self {
        DispatchView {
            carrier: d.carrier,
            tracking: d.tracking,
            dispatched_at: d.dispatched_at,
        }
    }
}

/// An order as the audit sees it.
#[derive(Debug, Clone)]
pub struct AuditOrder {
    pub seq: i64,
    pub id: String,
    pub created_at: String,
    pub status: String,
    pub storefront_ref: Option<String>,
    pub currency: String,
    pub items: String,
    pub total_minor: i64,
    pub consent_tag_id: String,
    pub gift: bool,
    pub client_fingerprint: Vec<u8>,
    pub mac: Vec<u8>,
    pub carrier: Option<String>,
    pub tracking: Option<String>,
    pub dispatched_at: Option<String>,
    pub dispatch_mac: Option<Vec<u8>>,
}

/// What is special about a record besides its envelope.
#[derive(Debug, Clone)]
pub enum AuditExtra {
    /// Billing and contact records: a sealed email and its blind index.
    Email {
        email_blind_index: Vec<u8>,
        blind_index_version: i64,
    },
    Shipping {
        ship_to: String,
    },
    Recipient,
    Card {
        brand: String,
        last4: String,
        fingerprint: Vec<u8>,
        fingerprint_key_version: i64,
    },
}

/// One encrypted record, raw from the database (the audit judges it).
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub table: &'static str,
    pub id: String,
    pub order_id: String,
    pub consent_tag_id: String,
    /// `None` when all four envelope columns are NULL; `Err` when only some are.
    pub envelope: Result<Option<Envelope>, &'static str>,
    pub extra: AuditExtra,
}

/// A consent tag, raw from the database.
#[derive(Debug, Clone)]
pub struct RawTag {
    pub id: String,
    pub order_id: String,
    pub subject: String,
    pub basis: String,
    pub purposes: [i64; 5],
    pub policy_version: String,
    pub captured_at: String,
    pub channel: String,
    pub mac_key_version: i64,
    pub mac: Vec<u8>,
}

/// Orders with everything recorded for them.
#[derive(Debug, Clone, Default)]
pub struct AuditBatch {
    pub orders: Vec<AuditOrder>,
    pub records: Vec<AuditRecord>,
    pub tags: Vec<RawTag>,
}

/// One row's clear (non-ciphertext) columns, for the plaintext scan.
#[derive(Debug, Clone)]
pub struct ClearRow {
    pub rowid: i64,
    /// The row's id (or sequence number, or `rowid:N`).
    pub record_id: String,
    pub values: Vec<(String, String)>,
}

/// Counts for the report.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct Totals {
    pub orders: u64,
    /// Rows per table.
    pub records: std::collections::BTreeMap<String, u64>,
    /// Records per data class and KEK version (`"card" -> {"1": n}`).
    pub kek_versions: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
}

/// Customers (distinct email blind indexes) by their latest checkout tag.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct ConsentStats {
    pub customers: u64,
    /// Customers who currently consent, per purpose.
    pub consenting: std::collections::BTreeMap<String, u64>,
    /// Customers who do not (declined, or withdrew), per purpose.
    pub not_consenting: std::collections::BTreeMap<String, u64>,
    /// Subjects who sent at least one withdrawal of the purpose (opt-outs
    /// by email, post or the online page), whatever they did since.
    pub opted_out: std::collections::BTreeMap<String, u64>,
}

/// A withdrawal as stored in `consent_events`.
#[derive(Debug, Clone)]
pub struct ConsentEventRow {
    /// Position in the ledger chain (1, 2, 3, …); set by the store.
    pub seq: i64,
    pub id: String,
    pub email_blind_index: Vec<u8>,
    pub blind_index_version: i64,
    pub kind: String,
    /// 1 where the event withdraws the purpose, in `Purposes::NAMES` order.
    pub purposes: [i64; 5],
    pub channel: String,
    pub received_at: String,
    pub effective_at: String,
    pub recorded_at: String,
    pub reference: Option<Envelope>,
    /// As read back: the four reference columns were neither all set nor
    /// all NULL, or held a version out of range (`reference` is then
    /// `None`). Never true for a row this service wrote.
    pub reference_damaged: bool,
    pub mac_key_version: i64,
    /// The previous event's MAC (32 zero bytes for the first); set by the store.
    pub prev_mac: Vec<u8>,
    pub mac: Vec<u8>,
}

/// One customer in an audience page: their latest order's contact record
/// and checkout tag.
#[derive(Debug, Clone)]
pub struct AudienceRow {
    pub email_blind_index: Vec<u8>,
    pub contact_id: String,
    pub order_id: String,
    pub envelope: Envelope,
    pub tag: RawTag,
}

/// One chunk of an audience export: the subjects scanned, and of them the
/// ones to export.
#[derive(Debug, Clone)]
pub struct AudienceChunk {
    /// The subjects to export, in blind-index order.
    pub rows: Vec<AudienceRow>,
    /// How many subjects were scanned (fewer than asked: the last chunk).
    pub scanned: u32,
    /// The last subject scanned (the next chunk starts after it); `None`
    /// when none was.
    pub last: Option<Vec<u8>>,
}

/// Everything recorded about one subject's consent, oldest first.
#[derive(Debug, Clone, Default)]
pub struct ConsentHistory {
    /// Customer tags of every order with this email.
    pub tags: Vec<RawTag>,
    /// For each tag, the order through which it was found (its contact
    /// record's order): a tag whose own `order_id` differs was relinked.
    pub via_orders: Vec<String>,
    pub events: Vec<ConsentEventRow>,
}

/// One envelope whose data key must be re-wrapped (`keys rewrap`).
#[derive(Debug, Clone)]
pub struct RewrapItem {
    /// `payment_cards`, …, or `consent_events` (a sealed reference).
    pub table: &'static str,
    /// The row's id (for consent_events, the event id).
    pub id: String,
    /// The order id bound in the AAD (the nil UUID for a reference).
    pub order_id: String,
    pub envelope: Envelope,
}

/// When a purge goes ahead ([`crate::store::Store::purge`]) — either way,
/// never while the order is under a legal hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeIf {
    /// Whatever the order's state (an operator's purge; retention after
    /// dispatch, which cannot be undone).
    Always,
    /// Only while the order is still undispatched and was taken before
    /// this timestamp — checked in the purge's own transaction, the order
    /// row locked: a dispatch landing since the order was found due is
    /// either seen (nothing is purged) or waits for the purge (and then
    /// finds its ship-to gone).
    Undispatched { taken_before: String },
}

/// A legal hold in force on one order (`legal_holds`): retention passes
/// the order over and a purge of it is refused until the hold is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRow {
    pub order_id: String,
    pub placed_at: String,
    /// The case it is held for (a dispute or ticket number).
    pub reference: String,
    pub mac: Vec<u8>,
}

/// An access-log entry that names exactly one order
/// (`Store::entries_naming_one_order`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEntry {
    pub seq: i64,
    pub at: String,
    pub action: String,
    /// The order the entry names (from the log: quoted only as an id).
    pub order_id: String,
}

/// What placing a hold did (`Store::place_hold`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldPlaced {
    /// Placed; the data classes the order still holds records of (what
    /// the hold keeps — a class purged before it is gone for good).
    Placed {
        classes_held: Vec<String>,
    },
    /// The order was already held: the hold in force, unchanged.
    AlreadyHeld(HoldRow),
    NoSuchOrder,
}

/// A purge of one data class of one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRow {
    pub order_id: String,
    pub class: String,
    pub purged_at: String,
    pub reason: String,
    /// For a contact purge: the blind index of the order's email, so the
    /// order's consent tag stays in its subject's history (migration 0009
    /// / 0012). `None` for the other classes and older contact purges.
    pub email_blind_index: Option<Vec<u8>>,
    pub mac: Vec<u8>,
}
