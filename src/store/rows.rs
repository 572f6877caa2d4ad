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
    pub key: String,
    pub request_hash: [u8; 32],
    pub response: StoredResponse,
    pub created_at: String,
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
    pub created_at: String,
    pub storefront_ref: Option<String>,
    pub currency: &'static str,
    pub items: Vec<Item>,
    pub total_minor: i64,
    pub client_fingerprint: [u8; 32],
    pub customer_tag: ConsentTag,
    pub recipient_tag: Option<ConsentTag>,
    pub billing: BillingRecord,
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
}

/// The storefront's masked view of an order.
#[derive(Debug, Clone)]
pub struct OrderSummary {
    pub id: Uuid,
    pub created_at: String,
    pub status: String,
    pub storefront_ref: Option<String>,
    pub currency: String,
    pub items: Vec<Item>,
    pub total_minor: i64,
    pub gift: bool,
    pub brand: String,
    pub last4: String,
    pub consent: ConsentTag,
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
    pub seq: i64,
    pub order_id: Uuid,
    pub created_at: String,
    pub status: String,
    pub items: Vec<Item>,
    /// The ship-to envelope: the customer's shipping record, or the gift
    /// recipient's record for a gift (with its own record id and class).
    pub ship_to: ShipToRow,
    pub customer_tag: ConsentTag,
    pub dispatch: Option<Dispatch>,
}

#[derive(Debug, Clone)]
pub enum ShipToRow {
    Customer { record_id: Uuid, envelope: Envelope },
    GiftRecipient { record_id: Uuid, envelope: Envelope },
}

/// Dispatch facts (none personal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    pub carrier: String,
    pub tracking: String,
    pub dispatched_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchOutcome {
    /// Now dispatched with these facts.
    Dispatched(Dispatch),
    /// Already dispatched, with these (possibly different) facts.
    AlreadyDispatched(Dispatch),
    NotFound,
}

/// Dispatch facts as shown to fulfillment.
#[derive(Debug, Clone, serde::Serialize)]
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
