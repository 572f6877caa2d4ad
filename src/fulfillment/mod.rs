//! Fulfillment: what the warehouse may see of an order — its ship-to,
//! items, gift flag and message, and the customer's effective consent —
//! and nothing else.
//!
//! Invariant: this module holds only the `shipping` and `recipient` KEKs
//! (a [`ClassKeys`] subset made at start-up) and the consent-tag MAC key. It
//! cannot open billing or card records: the keys are not reachable from here,
//! and the store query behind it does not select those tables.

use serde::Serialize;
use serde_json::Value;

use crate::crypto::DataClass;
use crate::crypto::envelope::{self, Binding};
use crate::crypto::keyring::{ClassKeys, Keyring};
use crate::crypto::mac::MacKey;
use crate::domain::consent::Purposes;
use crate::store::rows::{ConsentHistory, PurgeRow, ShipToRow, ShipmentRow};

/// The warehouse's dispatch route …
pub const DISPATCH_PATH: &str = "/v1/shipments/{order_id}/dispatch";
/// … as its access-log entries name it (`METHOD /route`): the audit finds
/// every dispatch by it.
pub const DISPATCH_ACTION: &str = "POST /v1/shipments/{order_id}/dispatch";

/// One customer's consent, from their history, as the shipment listing
/// shows it on each of their parcels ([`Fulfillment::customer_consent`]).
pub struct CustomerConsent {
    /// The effective purposes now (none unless `verified`).
    purposes: Purposes,
    /// Every tag and withdrawal of the history verified.
    verified: bool,
    /// The policy version of the latest tag.
    latest_policy: Option<String>,
    /// (tag id, order id) of every tag of the history.
    tags: std::collections::HashSet<(String, String)>,
}

/// The keys fulfillment holds.
pub struct Fulfillment {
    /// The shipping and recipient KEKs (all versions); replaced by
    /// [`Fulfillment::refresh`] when the keyring is rotated.
    keys: std::sync::RwLock<std::sync::Arc<ClassKeys>>,
    consent_key: MacKey,
}

/// Whoever receives the parcel: the opened `shipping` or `recipient` record
/// (the gift message is lifted out into `gift_message`; absent members are
/// left out).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes `Shipment::ship_to`; never built.
pub struct ShipTo {
    name: String,
    company: Option<String>,
    phone: Option<String>,
    #[schema(value_type = crate::intake::seal::AddressPlain)]
    address: (),
}

/// One shipment as the warehouse sees it. Its `Debug` leaves out the
/// ship-to details and the gift message (personal data, for the warehouse's
/// eyes only, never for a log).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Shipment {
    pub order_id: uuid::Uuid,
    pub created_at: String,
    pub status: String,
    pub items: Vec<ShipmentItem>,
    /// Name, company, address and phone of whoever receives the parcel;
    /// `null` if the record failed its integrity check.
    #[schema(value_type = Option<ShipTo>)]
    pub ship_to: Option<Value>,
    pub gift: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gift_message: Option<String>,
    /// What the customer currently consents to (e.g. a promotional insert
    /// for `special_offers`). All false when the tag does not verify.
    pub consent: EffectiveConsent,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatch: Option<crate::store::rows::DispatchView>,
    /// True when the ship-to record did not open: do not ship, tell the
    /// auditors.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub integrity_error: bool,
    /// True when the ship-to details were purged (the customer's erasure
    /// before dispatch, or retention after it): nothing to ship to, and
    /// not an integrity error. A pending order in this state cannot be
    /// dispatched (409).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub purged: bool,
}

impl std::fmt::Debug for Shipment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |present: bool| if present { "<redacted>" } else { "none" };
        f.debug_struct("Shipment")
            .field("order_id", &self.order_id)
            .field("created_at", &self.created_at)
            .field("status", &self.status)
            .field("items", &self.items.len())
            .field("ship_to", &shown(self.ship_to.is_some()))
            .field("gift", &self.gift)
            .field("gift_message", &shown(self.gift_message.is_some()))
            .field("consent", &self.consent)
            .field("dispatch", &self.dispatch)
            .field("integrity_error", &self.integrity_error)
            .field("purged", &self.purged)
            .finish()
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ShipmentItem {
    pub sku: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub quantity: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EffectiveConsent {
    #[serde(flatten)]
    pub purposes: Purposes,
    pub policy_version: String,
    /// Whether the consent tag's MAC verified.
    pub verified: bool,
}

impl Fulfillment {
    /// Opens one ship-to record as JSON; `None` if it does not verify.
    fn open(
        &self,
        class: DataClass,
        order_id: uuid::Uuid,
        record_id: uuid::Uuid,
        envelope: &crate::crypto::envelope::Envelope,
    ) -> Option<Value> {
        let binding = Binding {
            class,
            order_id,
            record_id,
        };
        let keys = match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        envelope::open(keys.as_ref(), &binding, envelope)
            .ok()
            .and_then(|plain| serde_json::from_slice::<Value>(&plain).ok())
    }

    pub fn new(keyring: &Keyring) -> Self {
        Fulfillment {
            keys: std::sync::RwLock::new(std::sync::Arc::new(Self::keys_of(keyring))),
            consent_key: keyring.consent_tag_key().duplicate(),
        }
    }

    fn keys_of(keyring: &Keyring) -> ClassKeys {
        keyring.class_keys(&[DataClass::Shipping, DataClass::Recipient])
    }

    /// Takes the shipping and recipient KEKs of a new keyring (nothing else).
    pub fn refresh(&self, keyring: &Keyring) {
        if let Ok(mut keys) = self.keys.write() {
            *keys = std::sync::Arc::new(Self::keys_of(keyring));
        }
    }

    /// The warehouse's view of an order whose row does not read (see
    /// `ShipmentEntry::Damaged`): an integrity error, nothing to ship.
    pub fn damaged(&self, order_id: uuid::Uuid, created_at: String, status: &str) -> Shipment {
        Shipment {
            order_id,
            created_at,
            status: if status == "dispatched" {
                "dispatched".into()
            } else {
                "pending".into()
            },
            items: Vec::new(),
            ship_to: None,
            gift: false,
            gift_message: None,
            consent: EffectiveConsent {
                purposes: Purposes::default(),
                policy_version: String::new(),
                verified: false,
            },
            dispatch: None,
            integrity_error: true,
            purged: false,
        }
    }

    /// Whether `purges` (the order's) hold a genuine purge of `class`.
    fn purged(&self, order_id: uuid::Uuid, class: DataClass, purges: &[PurgeRow]) -> bool {
        let order_id = order_id.to_string();
        purges.iter().any(|p| {
            p.order_id == order_id
                && p.class == class.as_str()
                && self
                    .consent_key
                    .verify(&[&crate::retention::purge_canonical_bytes(p)], &p.mac)
        })
    }

    /// What the listing needs of one customer's consent history (all their
    /// checkout tags and withdrawals), worked out once per page: verifying
    /// the history costs a MAC per tag and per withdrawal, and a customer
    /// with many orders may have many of them on one page — done per row,
    /// a page cost rows × history, seconds of blocking work.
    pub fn customer_consent(&self, history: &ConsentHistory) -> CustomerConsent {
        let (purposes, verified) = crate::consent::effective(&self.consent_key, history);
        CustomerConsent {
            purposes,
            verified,
            latest_policy: crate::consent::latest(history).map(|t| t.policy_version.clone()),
            tags: history
                .tags
                .iter()
                .map(|t| (t.id.clone(), t.order_id.clone()))
                .collect(),
        }
    }

    /// Decrypts the ship-to of one row and assembles the warehouse's view.
    /// `consent` is the customer's ([`Fulfillment::customer_consent`]): the
    /// effective consent is the current one. `purges` are the order's
    /// purges (needed only when its ship-to record is missing: a genuine
    /// purge of it is not an integrity error).
    pub fn view(
        &self,
        row: ShipmentRow,
        consent: &CustomerConsent,
        purges: &[PurgeRow],
    ) -> Shipment {
        // Items, gift flag and dispatch facts edited in the database are
        // not shown as the order's: nothing to ship, an integrity error.
        if !crate::intake::seal::order_row_verifies(
            &self.consent_key,
            &row.order_id.to_string(),
            &row.created_at,
            &row.status,
            &row.seal,
            row.dispatch.as_ref(),
        ) {
            tracing::error!(order_id = %row.order_id, "an order row failed its MAC check");
            return self.damaged(row.order_id, row.created_at, &row.status);
        }
        let mut purged = false;
        let (opened, gift) = match &row.ship_to {
            ShipToRow::Customer {
                record_id,
                envelope,
            } => (
                self.open(DataClass::Shipping, row.order_id, *record_id, envelope),
                false,
            ),
            ShipToRow::GiftRecipient {
                record_id,
                envelope,
            } => (
                self.open(DataClass::Recipient, row.order_id, *record_id, envelope),
                true,
            ),
            ShipToRow::Missing { purged_with, gift } => {
                purged = purged_with
                    .iter()
                    .any(|class| self.purged(row.order_id, *class, purges));
                (None, *gift)
            }
            ShipToRow::Broken => (None, false),
        };
        let integrity_error = opened.is_none() && !purged;
        if integrity_error {
            tracing::error!(order_id = %row.order_id, "a ship-to record is missing or failed to open");
        }
        let (ship_to, gift_message) = match opened {
            Some(Value::Object(mut record)) => {
                let message = record
                    .remove("message")
                    .and_then(|m| m.as_str().map(str::to_owned));
                record.retain(|_, v| !v.is_null());
                (Some(Value::Object(record)), message)
            }
            _ => (None, None),
        };
        let mut purposes = consent.purposes;
        // The history was found by the blind index on the billing record,
        // which no MAC covers. It is this customer's only if it holds this
        // order's own tag — the one `orders` names, of this order (every tag
        // of a history that verifies is genuine, the customer's, and of the
        // order it was reached through). Else a database writer could show
        // another customer's consent on this parcel.
        let own_tag = consent
            .tags
            .contains(&(row.customer_tag.id.to_string(), row.order_id.to_string()));
        // The billing record that finds the history purged on its own —
        // `orders purge --dispatched-before` takes one class at a time, so
        // between its billing and shipping passes (or for good, the run
        // stopped there) a dispatched order has its ship-to but no history.
        let history_purged = row.email_blind_index.is_none()
            && self.purged(row.order_id, DataClass::Billing, purges);
        let verified = if purged || history_purged {
            // The billing record that finds the history may be purged with
            // the rest; what is shown is whether the order's own tag is
            // genuine, the customer's and this order's.
            let tag = &row.customer_tag;
            self.consent_key.verify(&[&tag.canonical_bytes()], &tag.mac)
                && tag.order_id == row.order_id
                && tag.subject == crate::domain::consent::Subject::Customer
        } else {
            consent.verified && own_tag
        };
        if !verified {
            purposes = Purposes::default();
        }
        if gift || integrity_error || purged || history_purged {
            // The parcel goes to the gift recipient, whose details may be
            // used only to deliver it: no promotional insert, whatever the
            // buyer chose. (Nor when the buyer's current choice cannot be
            // known: their history went with the billing record.)
            purposes = Purposes::default();
        }
        // (A purged order's billing record, which finds the history, may be
        // gone with it: nothing to verify then, and nothing is shipped.)
        if !verified && !purged && !history_purged {
            tracing::error!(order_id = %row.order_id, "a consent tag failed its MAC check");
        }
        // The policy the purposes shown were agreed under: the latest tag's.
        let policy_version = match &consent.latest_policy {
            Some(latest) if verified => latest.clone(),
            _ => row.customer_tag.policy_version.clone(),
        };
        Shipment {
            order_id: row.order_id,
            created_at: row.created_at,
            status: if row.status == "dispatched" {
                "dispatched".into()
            } else {
                "pending".into()
            },
            items: row
                .items
                .into_iter()
                .map(|i| ShipmentItem {
                    sku: i.sku.as_str().to_owned(),
                    description: i.description.map(|d| d.as_str().to_owned()),
                    quantity: i.quantity,
                })
                .collect(),
            ship_to,
            gift,
            gift_message,
            consent: EffectiveConsent {
                purposes,
                policy_version,
                verified,
            },
            dispatch: row.dispatch.map(Into::into),
            integrity_error,
            purged,
        }
    }
}

#[cfg(test)]
mod tests {
    /// Invariant 5: the warehouse's reader holds the shipping and recipient
    /// KEKs and no other class's, as built and after a keyring reload.
    #[test]
    fn the_warehouse_holds_the_shipping_and_recipient_keys_only() {
        let rng = ring::rand::SystemRandom::new();
        let keyring = crate::crypto::keyring::Keyring::generate(&rng, "t").unwrap();
        let reader = super::Fulfillment::new(&keyring);
        let held = |reader: &super::Fulfillment| format!("{:?}", **reader.keys.read().unwrap());
        assert_eq!(
            held(&reader),
            "ClassKeys([Shipping, Recipient], <redacted>)"
        );
        reader.refresh(&keyring);
        assert_eq!(
            held(&reader),
            "ClassKeys([Shipping, Recipient], <redacted>)"
        );
    }

    /// The audit finds dispatches by the action the access log writes for
    /// the route (`METHOD /route`): the two must not drift apart.
    #[test]
    fn the_dispatch_action_names_the_dispatch_route() {
        assert_eq!(
            super::DISPATCH_ACTION,
            format!("POST {}", super::DISPATCH_PATH)
        );
    }

    /// A shipment in a log line (one `?shipment` away) names its order, not
    /// where it goes or what the gift message says.
    #[test]
    fn a_shipment_s_debug_shows_no_personal_data() {
        let shipment = super::Shipment {
            order_id: uuid::Uuid::nil(),
            created_at: "2026-12-01T00:00:00.000Z".into(),
            status: "pending".into(),
            items: Vec::new(),
            ship_to: Some(serde_json::json!({"name": "Ada Lovelace", "phone": "+44 20 7946 0018"})),
            gift: true,
            gift_message: Some("Happy birthday, Ada".into()),
            consent: super::EffectiveConsent {
                purposes: crate::domain::consent::Purposes::default(),
                policy_version: "v1".into(),
                verified: true,
            },
            dispatch: None,
            integrity_error: false,
            purged: false,
        };
        let shown = format!("{shipment:?}");
        assert!(
            shown.contains("00000000-0000-0000-0000-000000000000"),
            "{shown}"
        );
        for secret in ["Ada", "7946", "birthday"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
