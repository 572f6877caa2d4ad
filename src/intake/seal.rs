//! Sealing an order: the one place where validated personal data and card
//! data become ciphertext, blind indexes, fingerprints and consent tags.
//!
//! Each record's plaintext is a small JSON document (documented in
//! `docs/encryption.md`) written into a zeroizing buffer sized up front so
//! that no reallocation leaves a copy behind. The CVC is not here: the
//! validator dropped it.

use ring::rand::SystemRandom;
use serde::Serialize;

use crate::crypto::envelope::{self, Binding};
use crate::crypto::keyring::Keyring;
use crate::crypto::random::OrderEntropy;
use crate::crypto::{CryptoError, DataClass, json_zeroizing as plaintext};
use crate::domain::consent::{Basis, CHANNEL_CHECKOUT, ConsentTag, Purposes, Subject};
use crate::domain::order::{Address, OrderForm, ShipTo};
use crate::ids;
use crate::store::rows::{
    BillingRecord, CardRecord, IdempotencyRecord, NewOrder, SealedRecord, ShippingRecord,
    StoredResponse,
};

use super::IdempotencyKey;

/// A postal address inside a sealed record (and so in fulfillment's view).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Address)]
pub struct AddressPlain<'a> {
    #[schema(value_type = String)]
    line1: &'a str,
    #[schema(value_type = Option<String>)]
    line2: Option<&'a str>,
    #[schema(value_type = String)]
    city: &'a str,
    #[schema(value_type = Option<String>)]
    region: Option<&'a str>,
    #[schema(value_type = String)]
    postal_code: &'a str,
    /// ISO 3166-1 alpha-2.
    #[schema(value_type = String)]
    country: &'a str,
}

impl<'a> AddressPlain<'a> {
    fn of(a: &'a Address) -> Self {
        AddressPlain {
            line1: a.line1.expose(),
            line2: a.line2.as_ref().map(|p| p.expose()),
            city: a.city.expose(),
            region: a.region.as_ref().map(|p| p.expose()),
            postal_code: a.postal_code.expose(),
            country: a.country.as_str(),
        }
    }
}

/// The answer to an accepted order (`201`, stored for idempotent replay):
/// no personal data, the card as brand and last four digits only.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OrderAccepted<'a> {
    pub order_id: uuid::Uuid,
    /// Always `accepted`.
    #[schema(value_type = String, example = "accepted")]
    pub status: &'a str,
    /// RFC 3339.
    #[schema(value_type = String)]
    pub created_at: &'a str,
    /// ISO 4217 code, upper-case.
    #[schema(value_type = String, example = "USD")]
    pub currency: &'a str,
    /// Sum of quantity × unit price, in minor units.
    pub total_minor: i64,
    pub card: CardSummary<'a>,
    pub consent: crate::domain::consent::TagView<'a>,
}

/// A card as shown after intake: brand and last four digits only.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CardSummary<'a> {
    #[schema(value_type = String, example = "visa")]
    pub brand: &'a str,
    #[schema(value_type = String, pattern = "^[0-9]{4}$", example = "1881")]
    pub last4: &'a str,
}

/// Plaintext of a `contact` record: the email alone.
#[derive(Serialize)]
struct ContactPlain<'a> {
    email: &'a str,
}

/// Plaintext of a `card` record.
#[derive(Serialize)]
struct CardPlain<'a> {
    pan: &'a str,
    exp_month: u8,
    exp_year: u16,
    holder_name: Option<&'a str>,
}

/// Plaintext of a `billing` record.
#[derive(Serialize)]
struct BillingPlain<'a> {
    name: &'a str,
    company: Option<&'a str>,
    email: &'a str,
    phone: &'a str,
    address: AddressPlain<'a>,
}

/// Plaintext of a `shipping` record (the customer's own ship-to).
#[derive(Serialize)]
struct ShippingPlain<'a> {
    name: &'a str,
    company: Option<&'a str>,
    phone: &'a str,
    address: AddressPlain<'a>,
}

/// Plaintext of a `recipient` record.
#[derive(Serialize)]
struct RecipientPlain<'a> {
    name: &'a str,
    phone: Option<&'a str>,
    message: Option<&'a str>,
    address: AddressPlain<'a>,
}

fn sealed_record(
    rng: &OrderEntropy<'_>,
    keyring: &Keyring,
    class: DataClass,
    order_id: uuid::Uuid,
    consent_tag_id: uuid::Uuid,
    plaintext: &[u8],
) -> Result<SealedRecord, CryptoError> {
    let id = ids::new_id(rng)?;
    let binding = Binding {
        class,
        order_id,
        record_id: id,
    };
    Ok(SealedRecord {
        id,
        consent_tag_id,
        envelope: envelope::seal(rng, keyring, &binding, plaintext)?,
    })
}

/// What a new consent tag says; [`tag`] adds an id and the MAC.
struct TagFacts<'a> {
    order_id: uuid::Uuid,
    subject: Subject,
    basis: Basis,
    purposes: Purposes,
    policy_version: &'a str,
    captured_at: &'a str,
}

fn tag(
    rng: &OrderEntropy<'_>,
    keyring: &Keyring,
    facts: TagFacts<'_>,
) -> Result<ConsentTag, CryptoError> {
    let key = keyring.consent_tag_key();
    let mut tag = ConsentTag {
        id: ids::new_id(rng)?,
        order_id: facts.order_id,
        subject: facts.subject,
        basis: facts.basis,
        purposes: facts.purposes,
        policy_version: facts.policy_version.to_owned(),
        captured_at: facts.captured_at.to_owned(),
        channel: CHANNEL_CHECKOUT.to_owned(),
        mac_key_version: key.version(),
        mac: [0; 32],
    };
    tag.mac = key.sign(&[&tag.canonical_bytes()]);
    Ok(tag)
}

/// Seals a validated order into the rows the store writes. Consumes the
/// form: every secret in it is zeroized when this returns. Its ids, data
/// keys and nonces come from one draw of the system generator
/// ([`OrderEntropy`]), each byte used once.
pub fn seal_order(
    system: &SystemRandom,
    keyring: &Keyring,
    form: OrderForm,
    client: [u8; 32],
    key: &IdempotencyKey,
    request_hash: [u8; 32],
) -> Result<NewOrder, CryptoError> {
    let entropy = OrderEntropy::draw(system)?;
    seal_order_from(&entropy, keyring, form, client, key, request_hash)
}

/// [`seal_order`] with its randomness from `rng`.
fn seal_order_from(
    rng: &OrderEntropy<'_>,
    keyring: &Keyring,
    form: OrderForm,
    client: [u8; 32],
    key: &IdempotencyKey,
    request_hash: [u8; 32],
) -> Result<NewOrder, CryptoError> {
    let order_id = ids::new_id(rng)?;
    let now = time::OffsetDateTime::now_utc();
    let created_at = ids::timestamp(now);
    // The customer's choices date from the checkout the storefront names,
    // else from now — never later than now: a storefront clock running
    // ahead (the form allows 5 minutes of skew) must not rank these choices
    // above a checkout the customer makes meanwhile.
    let captured_at = form
        .consent
        .captured_at
        .map_or_else(|| created_at.clone(), |at| ids::timestamp(at.min(now)));
    let customer_tag = tag(
        rng,
        keyring,
        TagFacts {
            order_id,
            subject: Subject::Customer,
            basis: Basis::Consent,
            purposes: form.consent.purposes,
            policy_version: &form.consent.policy_version,
            captured_at: &captured_at,
        },
    )?;

    // Card: PAN + expiry + holder under a per-record DEK; brand, last4 and
    // a keyed fingerprint in clear.
    let pan = &form.card.pan;
    let digits = std::str::from_utf8(pan.expose_digits()).map_err(|_| CryptoError::Malformed)?;
    let holder = form.card.holder_name.as_ref().map(|h| h.expose());
    let card_plain = plaintext(&CardPlain {
        pan: digits,
        exp_month: form.card.expiry.month(),
        exp_year: form.card.expiry.year(),
        holder_name: holder,
    })?;
    let fingerprint_key = keyring.fingerprint_key();
    let card = CardRecord {
        sealed: sealed_record(
            rng,
            keyring,
            DataClass::Card,
            order_id,
            customer_tag.id,
            &card_plain,
        )?,
        brand: pan.brand().as_str(),
        last4: pan.last4(),
        fingerprint: fingerprint_key.sign(&[pan.expose_digits()]),
        fingerprint_key_version: fingerprint_key.version(),
    };
    drop(card_plain);

    // Billing: the customer and the billing address; the email also as a
    // blind index for opt-out lookups.
    let c = &form.customer;
    let billing_address = AddressPlain::of(&form.billing_address);
    let billing_plain = BillingPlain {
        name: c.name.expose(),
        company: c.company.as_ref().map(|p| p.expose()),
        email: c.email.expose(),
        phone: c.phone.expose(),
        address: billing_address,
    };
    let billing_bytes = plaintext(&billing_plain)?;
    let blind_key = keyring.blind_index_key();
    let billing = BillingRecord {
        sealed: sealed_record(
            rng,
            keyring,
            DataClass::Billing,
            order_id,
            customer_tag.id,
            &billing_bytes,
        )?,
        email_blind_index: blind_key.sign(&[c.email.expose().as_bytes()]),
        blind_index_version: blind_key.version(),
    };
    drop(billing_bytes);

    // Contact: the email alone, so that marketing can open emails and
    // nothing else.
    // (A struct of borrowed text, as every record: `json!` would copy the
    // email into a string nobody wipes.)
    let contact_bytes = plaintext(&ContactPlain {
        email: c.email.expose(),
    })?;
    let contact = sealed_record(
        rng,
        keyring,
        DataClass::Contact,
        order_id,
        customer_tag.id,
        &contact_bytes,
    )?;
    drop(contact_bytes);

    // Shipping: the customer's own ship-to (fulfillment needs name, phone
    // and address in this one record), or for a gift only a marker plus the
    // recipient's record under their own fulfillment-only tag.
    let ship_to_customer = |address: &Address| -> Result<ShippingRecord, CryptoError> {
        let bytes = plaintext(&ShippingPlain {
            name: c.name.expose(),
            company: c.company.as_ref().map(|p| p.expose()),
            phone: c.phone.expose(),
            address: AddressPlain::of(address),
        })?;
        let record = sealed_record(
            rng,
            keyring,
            DataClass::Shipping,
            order_id,
            customer_tag.id,
            &bytes,
        )?;
        Ok(ShippingRecord::Customer(record))
    };
    let (shipping, recipient, recipient_tag) = match &form.ship_to {
        ShipTo::Gift(gift) => {
            let rtag = tag(
                rng,
                keyring,
                TagFacts {
                    order_id,
                    subject: Subject::GiftRecipient,
                    basis: Basis::FulfillmentOnly,
                    purposes: Purposes::default(),
                    policy_version: &form.consent.policy_version,
                    captured_at: &captured_at,
                },
            )?;
            let bytes = plaintext(&RecipientPlain {
                name: gift.name.expose(),
                phone: gift.phone.as_ref().map(|p| p.expose()),
                message: gift.message.as_ref().map(|m| m.expose()),
                address: AddressPlain::of(&gift.address),
            })?;
            let record = sealed_record(
                rng,
                keyring,
                DataClass::Recipient,
                order_id,
                rtag.id,
                &bytes,
            )?;
            let marker = ShippingRecord::GiftRecipient {
                id: ids::new_id(rng)?,
                consent_tag_id: rtag.id,
            };
            (marker, Some(record), Some(rtag))
        }
        ShipTo::Address(address) => (ship_to_customer(address)?, None, None),
        ShipTo::BillingAddress => (ship_to_customer(&form.billing_address)?, None, None),
    };

    let response = OrderAccepted {
        order_id,
        status: "accepted",
        created_at: &created_at,
        currency: form.currency.code(),
        total_minor: form.total_minor(),
        card: CardSummary {
            brand: pan.brand().as_str(),
            last4: &card.last4,
        },
        consent: customer_tag.tag_view(),
    };
    let body = serde_json::to_vec(&response).map_err(|_| CryptoError::Malformed)?;

    let items_json = serde_json::to_string(&form.items).map_err(|_| CryptoError::Malformed)?;
    let storefront_ref = form
        .storefront_order_ref
        .as_ref()
        .map(|r| r.as_str().to_owned());
    let key_hash = key_hash(keyring, key);
    let response = StoredResponse {
        order_id,
        status: 201,
        body,
    };
    let response_mac = response_mac(
        keyring,
        &client,
        &key_hash,
        &request_hash,
        &response,
        &created_at,
    );
    let mac = keyring.consent_tag_key().sign(&[&order_canonical_bytes(
        &order_id.to_string(),
        &created_at,
        storefront_ref.as_deref(),
        form.currency.code(),
        &items_json,
        form.total_minor(),
        recipient.is_some(),
        &customer_tag.id.to_string(),
        &client,
    )]);

    Ok(NewOrder {
        id: order_id,
        mac,
        items_json,
        created_at: created_at.clone(),
        storefront_ref: form
            .storefront_order_ref
            .as_ref()
            .map(|r| r.as_str().to_owned()),
        currency: form.currency.code(),
        items: form.items.clone(),
        total_minor: form.total_minor(),
        client_fingerprint: client,
        customer_tag,
        recipient_tag,
        billing,
        contact,
        shipping,
        recipient,
        card,
        idempotency: IdempotencyRecord {
            client,
            key_hash,
            request_hash,
            response,
            created_at,
            mac: response_mac,
        },
    })
}

/// The stored form of an Idempotency-Key: HMAC-SHA256(request key,
/// `"idempotency-key" ‖ 0x00 ‖ key`). Client-chosen text never reaches the
/// database in clear.
pub fn key_hash(keyring: &Keyring, key: &IdempotencyKey) -> [u8; 32] {
    keyring
        .request_hash_key()
        .sign(&[b"idempotency-key", &[0], key.as_str().as_bytes()])
}

/// The bytes an idempotency row's `response_mac` covers (HMAC-SHA256 under
/// the consent-tag key): `"checkoutd/idempotency" ‖ 0x01 ‖` then, each as
/// len32 ‖ bytes: client fingerprint, key hash, request hash, order id
/// (the UUID's canonical text), response status (decimal), response body, created_at. Binding
/// the client and key hash means a response copied onto another key's row
/// does not verify there; binding the request hash means no other body can
/// be made to replay it.
pub fn idempotency_canonical_bytes(
    client: &[u8],
    key_hash: &[u8],
    request_hash: &[u8],
    response: &StoredResponse,
    created_at: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + response.body.len());
    out.extend_from_slice(b"checkoutd/idempotency");
    out.push(1);
    let order_id = response.order_id.to_string();
    let status = response.status.to_string();
    for field in [
        client,
        key_hash,
        request_hash,
        order_id.as_bytes(),
        status.as_bytes(),
        &response.body,
        created_at.as_bytes(),
    ] {
        out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// An idempotency row's `response_mac`: HMAC-SHA256 under the consent-tag
/// key over [`idempotency_canonical_bytes`]. An empty `request_hash` is a
/// row past its replay window (`retention::retire_request_hashes`).
pub fn response_mac(
    keyring: &Keyring,
    client: &[u8],
    key_hash: &[u8],
    request_hash: &[u8],
    response: &StoredResponse,
    created_at: &str,
) -> [u8; 32] {
    keyring
        .consent_tag_key()
        .sign(&[&idempotency_canonical_bytes(
            client,
            key_hash,
            request_hash,
            response,
            created_at,
        )])
}

/// Whether a stored idempotency row is the one this service wrote for
/// `(client, key_hash)`: its MAC is present and verifies.
pub fn stored_response_verifies(
    keyring: &Keyring,
    client: &[u8],
    key_hash: &[u8],
    found: &crate::store::rows::KeyRecord,
) -> bool {
    found.mac.as_deref().is_some_and(|mac| {
        keyring.consent_tag_key().verify(
            &[&idempotency_canonical_bytes(
                client,
                key_hash,
                &found.request_hash,
                &found.response,
                &found.created_at,
            )],
            mac,
        )
    })
}

/// The bytes an order row's `mac` covers (HMAC-SHA256 under the consent-tag
/// key): `"checkoutd/order" ‖ 0x01 ‖` then, each as len32 ‖ UTF-8: id,
/// created_at, storefront_ref (empty when absent), currency, items (the
/// stored JSON text), total_minor (decimal), gift (`0`/`1`), consent_tag_id,
/// client fingerprint (hex).
#[allow(clippy::too_many_arguments)]
pub fn order_canonical_bytes(
    id: &str,
    created_at: &str,
    storefront_ref: Option<&str>,
    currency: &str,
    items_json: &str,
    total_minor: i64,
    gift: bool,
    consent_tag_id: &str,
    client_fingerprint: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + items_json.len());
    out.extend_from_slice(b"checkoutd/order");
    out.push(1);
    let total = total_minor.to_string();
    let fingerprint = crate::hex::encode(client_fingerprint);
    for field in [
        id,
        created_at,
        storefront_ref.unwrap_or(""),
        currency,
        items_json,
        total.as_str(),
        if gift { "1" } else { "0" },
        consent_tag_id,
        fingerprint.as_str(),
    ] {
        out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// Whether an order row read back is genuine: its MAC verifies over the
/// columns as stored, and its dispatch facts agree with its status — not
/// one while accepted, and all MAC-verified once dispatched (as the audit checks
/// them, `audit::verify`). A row edited in the database (items, total,
/// gift flag, links, a dispatch undone or rewritten) is not.
pub fn order_row_verifies(
    key: &crate::crypto::mac::MacKey,
    id: &str,
    created_at: &str,
    status: &str,
    seal: &crate::store::rows::OrderSeal,
    dispatch: Option<&crate::store::rows::Dispatch>,
) -> bool {
    let canonical = order_canonical_bytes(
        id,
        created_at,
        seal.storefront_ref.as_deref(),
        &seal.currency,
        &seal.items_json,
        seal.total_minor,
        seal.gift,
        &seal.consent_tag_id,
        &seal.client_fingerprint,
    );
    if !key.verify(&[&canonical], &seal.mac) {
        return false;
    }
    match (status, dispatch, seal.dispatch_mac.as_deref()) {
        ("accepted", None, None) => !seal.any_dispatch_fact,
        ("dispatched", Some(d), Some(mac)) => key.verify(
            &[&dispatch_canonical_bytes(
                id,
                &d.carrier,
                &d.tracking,
                &d.dispatched_at,
            )],
            mac,
        ),
        _ => false,
    }
}

/// The bytes a dispatch's `dispatch_mac` covers: `"checkoutd/dispatch" ‖
/// 0x01 ‖` then len32 ‖ UTF-8 of: order id, carrier, tracking, dispatched_at.
pub fn dispatch_canonical_bytes(
    order_id: &str,
    carrier: &str,
    tracking: &str,
    dispatched_at: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"checkoutd/dispatch");
    out.push(1);
    for field in [order_id, carrier, tracking, dispatched_at] {
        out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::crypto::random::ORDER_POOL;
    use crate::domain::order::{Rules, Source};

    /// A valid order form (a gift with a recipient when `gift`), for this
    /// module's and the group-commit writer's unit tests.
    pub(crate) fn form(gift: bool) -> OrderForm {
        let mut tree = serde_json::json!({
            "customer": {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+1 949 555 0100"},
            "billing_address": {"line1": "51 Columbia", "city": "Aliso Viejo",
                                "postal_code": "92656", "country": "US"},
            "items": [{"sku": "FAXSTF-PRO", "quantity": 1, "unit_price_minor": 4999}],
            "currency": "USD",
            "card": {"number": "4012888888881881", "exp_month": 12, "exp_year": 2035, "cvc": "123"},
            "consent": {"policy_version": "2002-06-05"}
        });
        if gift {
            tree["gift_recipient"] = serde_json::json!({"name": "Grace Hopper",
                "address": {"line1": "1 Navy Way", "city": "Arlington", "postal_code": "22202", "country": "US"}});
        }
        let versions = vec!["2002-06-05".to_owned()];
        let rules = Rules {
            policy_versions: &versions,
            now: time::OffsetDateTime::now_utc(),
        };
        crate::domain::order::parse(tree, Source::Json, &rules).unwrap()
    }

    /// Every id and every nonce of an order (a record's and its wrapped
    /// data key's), from one order's draw or another's.
    fn randoms(order: &NewOrder) -> (Vec<uuid::Uuid>, Vec<Vec<u8>>) {
        let mut records = vec![&order.card.sealed, &order.billing.sealed, &order.contact];
        records.extend(order.recipient.as_ref());
        let mut ids = vec![order.id, order.customer_tag.id];
        match &order.shipping {
            ShippingRecord::Customer(r) => records.push(r),
            ShippingRecord::GiftRecipient { id, .. } => ids.push(*id),
        }
        ids.extend(order.recipient_tag.as_ref().map(|t| t.id));
        let mut nonces = Vec::new();
        for r in records {
            ids.push(r.id);
            nonces.push(r.envelope.ciphertext[..12].to_vec());
            nonces.push(r.envelope.wrapped_dek[..12].to_vec());
        }
        (ids, nonces)
    }

    /// One draw covers a whole order, gift or not (so sealing makes one
    /// system call), and no id or nonce repeats within an order or across
    /// orders.
    #[test]
    fn one_draw_seals_an_order_and_nothing_repeats() {
        let system = SystemRandom::new();
        let keyring = Keyring::generate(&system, "2026-11-29T00:00:00.000Z").unwrap();
        let key = IdempotencyKey::parse(b"k").unwrap();
        let (mut ids, mut nonces) = (HashSet::new(), HashSet::new());
        // Four sealed records either way (card, billing, contact, and
        // shipping or the recipient's): 4 data keys (32 random bytes each)
        // and 8 nonces (12); ids (10) for the order, its tag and the
        // records, and for a gift also the recipient's tag and the shipping
        // marker. ORDER_POOL must hold that; beyond it sealing still works,
        // one system call per value.
        for (gift, bytes) in [(true, 304), (false, 284), (true, 304)] {
            let entropy = OrderEntropy::draw(&system).unwrap();
            let order =
                seal_order_from(&entropy, &keyring, form(gift), [1; 32], &key, [2; 32]).unwrap();
            assert_eq!(ORDER_POOL - entropy.remaining(), bytes, "gift: {gift}");
            assert_eq!(order.recipient.is_some(), gift);
            let (order_ids, order_nonces) = randoms(&order);
            assert_eq!(order_ids.len(), if gift { 8 } else { 6 });
            for id in order_ids {
                assert!(ids.insert(id), "id {id} repeated");
            }
            for nonce in order_nonces {
                assert!(nonces.insert(nonce), "a nonce repeated");
            }
        }
    }
}
