//! The consent life cycle: withdrawals (opt-outs) in an append-only,
//! MACed ledger; the effective consent derived from checkout tags and
//! withdrawals; the proof of consent for one subject; marketing audiences
//! ([`audience`]).
//!
//! Rules:
//! - a subject is named by the blind index of their normalised email; the
//!   email itself is never stored in clear;
//! - the checkout tag is never changed; a withdrawal is a new ledger entry,
//!   effective the moment it is recorded (CAN-SPAM allows ten business
//!   days; we take zero) — its stored `effective_at` is never before the
//!   subject's latest checkout already committed, whatever the clocks of
//!   the processes that recorded the two (`Store::append_consent_event`);
//! - effective consent for a purpose = the subject's latest checkout tag
//!   grants it (and verifies) and no withdrawal of it is effective at or
//!   after that tag's capture less [`CAPTURED_AT_SKEW`] (see
//!   [`withdrawal_counts`]). So a withdrawal covers every order with that
//!   email, past ones included, and a checkout captured more than five
//!   minutes after it that grants the purpose re-grants it from then on;
//! - anything that fails its MAC counts as *no* consent (fail closed).

pub mod audience;

use std::borrow::Cow;

use ring::rand::SystemRandom;
use serde_json::Value;
#[cfg(test)]
use serde_json::json;
use time::OffsetDateTime;

use crate::audit::verify::{shown_id, shown_text};
use crate::crypto::DataClass;
use crate::crypto::envelope::{self, Binding};
use crate::crypto::keyring::KeyringHandle;
use crate::crypto::{CryptoError, mac::MacKey};
use crate::domain::consent::{Basis, ConsentTag, Purposes, Subject};
use crate::domain::contact::Email;
use crate::domain::text::Personal;
use crate::http::FieldError;
use crate::store::rows::{ConsentEventRow, ConsentHistory, RawTag};
use crate::store::{Store, StoreError};

/// How a withdrawal reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The public `/unsubscribe` page (or a shop's own web form).
    Online,
    /// An email the shop received and forwarded.
    Email,
    /// A letter the shop received and forwarded.
    Postal,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Online => "online",
            Channel::Email => "email",
            Channel::Postal => "postal",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "online" => Some(Channel::Online),
            "email" => Some(Channel::Email),
            "postal" => Some(Channel::Postal),
            _ => None,
        }
    }
}

/// A validated opt-out.
#[derive(Debug)]
pub struct Withdrawal {
    pub email: Email,
    /// `true` where the purpose is withdrawn.
    pub purposes: [bool; 5],
    pub channel: Channel,
    /// When the request was received (defaults to now), normalised.
    pub received_at: Option<String>,
    /// A free-text reference (Message-ID, scan reference): sealed.
    pub reference: Option<Personal>,
}

/// Parses `"all"` or a non-empty list of purpose names.
pub fn parse_purposes(value: &Value) -> Result<[bool; 5], FieldError> {
    let bad = || FieldError::new("purposes", "invalid", "\"all\" or a list of purposes");
    match value {
        Value::String(s) if s == "all" => Ok([true; 5]),
        Value::Array(items) if !items.is_empty() => {
            let mut out = [false; 5];
            for item in items {
                let name = item.as_str().ok_or_else(bad)?;
                let i = Purposes::NAMES
                    .iter()
                    .position(|n| *n == name)
                    .ok_or_else(|| {
                        FieldError::new(
                            "purposes",
                            "unknown_purpose",
                            "Not one of the five purposes",
                        )
                    })?;
                out[i] = true;
            }
            Ok(out)
        }
        _ => Err(bad()),
    }
}

/// Parses an RFC 3339 time into our timestamp format; refuses the far past
/// and more than five minutes in the future.
pub fn parse_received_at(text: &str) -> Option<String> {
    let at = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let now = OffsetDateTime::now_utc();
    (at.year() >= 2000 && at <= now + time::Duration::minutes(5)).then(|| crate::ids::timestamp(at))
}

/// The proof of consent for one subject (`GET /v1/audit/consent`).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ConsentProof<'a> {
    /// `checkoutd-consent-proof/1`.
    #[schema(value_type = String)]
    pub format: &'a str,
    /// RFC 3339.
    pub generated_at: String,
    pub subject: ProofSubject<'a>,
    /// Every checkout consent of this subject, oldest first.
    pub records: Vec<ProofRecord<'a>>,
    /// Every withdrawal, in ledger order.
    pub events: Vec<ProofEvent<'a>>,
    /// What the subject consents to now.
    pub effective: Purposes,
    /// Whether the whole withdrawal ledger verified as a chain (no
    /// withdrawal deleted, reordered or rolled back): a withdrawal of this
    /// subject that is gone would otherwise simply be absent here.
    pub ledger_verified: bool,
    /// Whether every MAC involved verified, and the ledger with them. The
    /// history is what the subject's blind index reaches: a contact record
    /// relabelled to another index drops out of it unseen here; the full
    /// report checks every blind index against its sealed email.
    pub verified: bool,
}

/// Who the proof is about, by blind index only.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProofSubject<'a> {
    /// Hex blind index of the normalised email.
    pub reference: String,
    #[schema(value_type = String)]
    pub reference_type: &'a str,
    /// Whether any checkout record names this subject.
    pub known: bool,
}

/// One checkout consent record in a proof.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProofRecord<'a> {
    #[schema(value_type = String)]
    pub record_id: Cow<'a, str>,
    /// `consent`.
    #[schema(value_type = String)]
    pub record_type: Cow<'a, str>,
    #[schema(value_type = String)]
    pub order_id: Cow<'a, str>,
    #[schema(value_type = String)]
    pub subject_type: Cow<'a, str>,
    #[schema(value_type = String)]
    pub lawful_basis: Cow<'a, str>,
    #[schema(value_type = String)]
    pub collection_method: Cow<'a, str>,
    #[schema(value_type = String)]
    pub policy_version: Cow<'a, str>,
    #[schema(value_type = String)]
    pub captured_at: Cow<'a, str>,
    pub purposes: Purposes,
    pub mac_verified: bool,
}

/// One withdrawal in a proof.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProofEvent<'a> {
    #[schema(value_type = String)]
    pub record_id: Cow<'a, str>,
    #[schema(value_type = String)]
    pub event_type: Cow<'a, str>,
    #[schema(value_type = Vec<String>)]
    pub purposes_withdrawn: Vec<&'a str>,
    #[schema(value_type = String)]
    pub channel: Cow<'a, str>,
    #[schema(value_type = String)]
    pub received_at: Cow<'a, str>,
    #[schema(value_type = String)]
    pub effective_at: Cow<'a, str>,
    #[schema(value_type = String)]
    pub recorded_at: Cow<'a, str>,
    pub has_reference: bool,
    pub mac_verified: bool,
}

/// The schema of the `POST /v1/consent/opt-out` body, beside its parser
/// ([`parse_opt_out`]); a test proves they agree.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Describes the body; `parse_opt_out` reads it.
pub struct OptOutRequest {
    /// The address the customer gave at checkout.
    #[schema(schema_with = crate::domain::contact::email_schema)]
    email: String,
    #[schema(schema_with = purposes_schema)]
    purposes: (),
    channel: ChannelName,
    /// RFC 3339 time the request was received; not in the future.
    #[schema(format = DateTime, example = "2026-01-02T03:04:05Z")]
    received_at: Option<String>,
    /// The shop's reference for the request (e.g. a message id); only its
    /// presence is ever shown.
    #[schema(min_length = 1, max_length = 256, example = "<m1@example.com>")]
    reference: Option<String>,
}

/// `"all"`, or a non-empty list of distinct purposes ([`parse_purposes`]).
fn purposes_schema() -> utoipa::openapi::Schema {
    use utoipa::PartialSchema;
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["all"])),
        )
        .item(
            ArrayBuilder::new()
                .items(PurposeName::schema())
                .min_items(Some(1)),
        )
        .description(Some("`all`, or a non-empty list of purposes"))
        .build()
        .into()
}

/// One of the five consent purposes ([`Purposes::NAMES`]).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum PurposeName {
    ProductUpdates,
    NewOfferings,
    Partnerships,
    SpecialOffers,
    ThirdPartySharing,
}

/// How the request reached the shop ([`Channel`]).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ChannelName {
    Online,
    Email,
    Postal,
}

/// `POST /v1/consent/opt-out` body: `{email, purposes, channel,
/// received_at?, reference?}`; every error by field, values never echoed.
/// The `email` member of a request body, read with `parse` (the string is
/// zeroized once read); a fault is added to `errors`, named `email`.
pub fn take_email(
    map: &mut serde_json::Map<String, Value>,
    parse: impl FnOnce(&str) -> Result<Email, (&'static str, &'static str)>,
    errors: &mut Vec<FieldError>,
) -> Option<Email> {
    let (code, message) = match map.remove("email") {
        Some(Value::String(mut s)) => {
            let email = parse(&s);
            zeroize::Zeroize::zeroize(&mut s);
            match email {
                Ok(email) => return Some(email),
                Err(fault) => fault,
            }
        }
        None | Some(Value::Null) => ("required", "This field is required"),
        Some(_) => ("invalid_type", "Expected a string"),
    };
    errors.push(FieldError::new("email", code, message));
    None
}

pub fn parse_opt_out(value: Value) -> Result<Withdrawal, Vec<FieldError>> {
    let Value::Object(mut map) = value else {
        return Err(vec![FieldError::new(
            "",
            "invalid_type",
            "Expected an object",
        )]);
    };
    let mut errors = Vec::new();
    let email = take_email(&mut map, Email::parse_contact, &mut errors);
    let purposes = match map.remove("purposes") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(
                "purposes",
                "required",
                "This field is required",
            ));
            None
        }
        Some(v) => parse_purposes(&v).map_err(|e| errors.push(e)).ok(),
    };
    let channel = match map.remove("channel") {
        Some(Value::String(s)) => Channel::parse(&s).or_else(|| {
            errors.push(FieldError::new(
                "channel",
                "invalid",
                "online, email or postal",
            ));
            None
        }),
        None | Some(Value::Null) => {
            errors.push(FieldError::new(
                "channel",
                "required",
                "This field is required",
            ));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(
                "channel",
                "invalid_type",
                "Expected a string",
            ));
            None
        }
    };
    let received_at = match map.remove("received_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => parse_received_at(&s).or_else(|| {
            errors.push(FieldError::new(
                "received_at",
                "invalid",
                "An RFC 3339 time, not in the future",
            ));
            None
        }),
        Some(_) => {
            errors.push(FieldError::new(
                "received_at",
                "invalid_type",
                "Expected a string",
            ));
            None
        }
    };
    let reference = match map.remove("reference") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Personal::parse(&s, 256, false)
            .map_err(|_| {
                errors.push(FieldError::new(
                    "reference",
                    "invalid",
                    "1 to 256 characters, no control characters",
                ));
            })
            .ok(),
        Some(_) => {
            errors.push(FieldError::new(
                "reference",
                "invalid_type",
                "Expected a string",
            ));
            None
        }
    };
    for key in map.keys() {
        errors.push(FieldError::new(
            crate::domain::order::shown_field_name(key),
            "unknown_field",
            "This field is not part of an opt-out",
        ));
    }
    match (email, purposes, channel) {
        (Some(email), Some(purposes), Some(channel)) if errors.is_empty() => Ok(Withdrawal {
            email,
            purposes,
            channel,
            received_at,
            reference,
        }),
        _ => Err(errors),
    }
}

/// The bytes an event's MAC covers: `"checkoutd/consent-event" ‖ 0x01 ‖
/// seq (u64 BE) ‖ prev_mac (32) ‖ len32(id) ‖ email_blind_index (32) ‖
/// len32(kind) ‖ five purpose bytes ‖ len32(channel) ‖ len32(received_at) ‖
/// len32(effective_at) ‖ len32(recorded_at) ‖ reference present (0x00/0x01)`.
pub fn event_canonical_bytes(e: &ConsentEventRow) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"checkoutd/consent-event");
    out.push(1);
    out.extend_from_slice(&u64::try_from(e.seq).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&e.prev_mac);
    let field = |out: &mut Vec<u8>, s: &[u8]| {
        out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(s);
    };
    field(&mut out, e.id.as_bytes());
    out.extend_from_slice(&e.email_blind_index);
    field(&mut out, e.kind.as_bytes());
    out.extend(e.purposes.map(|p| u8::from(p == 1)));
    for s in [&e.channel, &e.received_at, &e.effective_at, &e.recorded_at] {
        field(&mut out, s.as_bytes());
    }
    out.push(u8::from(e.reference.is_some()));
    out
}

/// Chains ledger entries: lent to the store inside its append transaction.
pub struct EventSealer<'a> {
    key: &'a MacKey,
}

impl EventSealer<'_> {
    /// The MAC of an event whose `seq` and `prev_mac` are set.
    pub fn mac(&self, e: &ConsentEventRow) -> [u8; 32] {
        self.key.sign(&[&event_canonical_bytes(e)])
    }

    /// The MAC of the head row.
    pub fn head_mac(&self, seq: i64, mac: &[u8]) -> [u8; 32] {
        self.key
            .sign(&[b"checkoutd/consent-events-head", &seq.to_be_bytes(), mac])
    }
}

/// The consent ledger service.
pub struct Ledger {
    rng: SystemRandom,
    keyring: std::sync::Arc<KeyringHandle>,
    /// The furthest position of the withdrawal ledger a proof verified: a
    /// ledger rolled back behind it fails the next proof.
    verified: std::sync::Mutex<LedgerPosition>,
}

impl Ledger {
    pub fn new(keyring: std::sync::Arc<KeyringHandle>) -> Self {
        Self::verified_up_to(keyring, None)
    }

    /// A ledger whose proofs require it to pass through `verified` (the
    /// head the last intact report saw, kept across restarts:
    /// `audit::anchors`).
    pub fn verified_up_to(
        keyring: std::sync::Arc<KeyringHandle>,
        verified: Option<LedgerPosition>,
    ) -> Self {
        Ledger {
            rng: SystemRandom::new(),
            keyring,
            verified: std::sync::Mutex::new(verified.unwrap_or_else(LedgerPosition::start)),
        }
    }

    /// Walks the whole withdrawal ledger (and checks it has not fallen
    /// behind what was verified before): whether it holds.
    async fn ledger_holds(&self, store: &dyn Store, key: &MacKey) -> Result<bool, LedgerError> {
        let known = match self.verified.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        match verify_ledger_from(store, key, &LedgerPosition::start(), &known).await {
            Ok(head) => {
                if let Ok(mut p) = self.verified.lock()
                    && head.seq > p.seq
                {
                    *p = head;
                }
                Ok(true)
            }
            Err(LedgerFault::Unreadable(error)) => Err(error.into()),
            Err(LedgerFault::Broken { what, .. }) => {
                tracing::error!(
                    what,
                    "the withdrawal ledger failed its check (consent proof)"
                );
                Ok(false)
            }
        }
    }

    /// The subject reference of an email: its blind index.
    pub fn subject(&self, email: &Email) -> [u8; 32] {
        self.keyring
            .current()
            .blind_index_key()
            .sign(&[email.expose().as_bytes()])
    }

    /// Records a withdrawal, effective now. The same work is done whether or
    /// not the address belongs to a customer (one more index lookup finds
    /// the subject's latest checkout either way: microseconds, not a
    /// network round trip's worth of difference; no enumeration, by timing or
    /// otherwise). Returns the time it was recorded.
    pub async fn withdraw(&self, store: &dyn Store, w: &Withdrawal) -> Result<String, LedgerError> {
        self.withdraw_at(store, w, crate::ids::now()).await
    }

    /// [`withdraw`](Self::withdraw) as recorded by a process whose clock
    /// reads `now` — another host's clock may be behind the one that
    /// captured the customer's last checkout (tests use this). The stored
    /// `effective_at` is never before that checkout's capture time (see
    /// `Store::append_consent_event`); the answer is `now` all the same, so
    /// it says nothing about whether the address is a customer's.
    pub async fn withdraw_at(
        &self,
        store: &dyn Store,
        w: &Withdrawal,
        now: String,
    ) -> Result<String, LedgerError> {
        let keyring = self.keyring.current();
        let id = crate::ids::new_id(&self.rng)?;
        let reference = match &w.reference {
            None => None,
            Some(text) => {
                let binding = Binding {
                    class: DataClass::Contact,
                    order_id: uuid::Uuid::nil(),
                    record_id: id,
                };
                Some(envelope::seal(
                    &self.rng,
                    &keyring,
                    &binding,
                    text.expose().as_bytes(),
                )?)
            }
        };
        let key = keyring.consent_tag_key();
        let blind = keyring.blind_index_key();
        let row = ConsentEventRow {
            id: id.to_string(),
            email_blind_index: self.subject(&w.email).to_vec(),
            blind_index_version: i64::from(blind.version()),
            kind: "withdrawal".to_owned(),
            purposes: w.purposes.map(i64::from),
            channel: w.channel.as_str().to_owned(),
            received_at: w.received_at.clone().unwrap_or_else(|| now.clone()),
            effective_at: now.clone(),
            recorded_at: now.clone(),
            reference,
            reference_damaged: false,
            mac_key_version: i64::from(key.version()),
            seq: 0,
            prev_mac: Vec::new(),
            mac: Vec::new(),
        };
        store
            .append_consent_event(row, &EventSealer { key })
            .await?;
        Ok(now)
    }

    /// The subject's effective consent now, and whether everything it rests
    /// on verified.
    pub fn effective(&self, history: &ConsentHistory) -> (Purposes, bool) {
        effective(self.keyring.current().consent_tag_key(), history)
    }

    /// The proof of consent for one subject (GDPR Art. 7(1)), in the spirit
    /// of ISO/IEC TS 27560 and the Kantara consent receipt: every record and
    /// every event, in order, and the effective state. No personal data:
    /// the subject is named by its blind index; references are only flagged.
    pub async fn proof(&self, store: &dyn Store, email: &Email) -> Result<Value, LedgerError> {
        let subject = self.subject(email);
        let history = store.consent_history(&subject).await?;
        let keyring = self.keyring.current();
        let key = keyring.consent_tag_key();
        let records: Vec<ProofRecord> = history
            .tags
            .iter()
            // Every text is read from the database: shown as the audit
            // shows such values (an edited one could hold a card number).
            .map(|t| ProofRecord {
                record_id: shown_id(&t.id).into(),
                record_type: "consent".into(),
                order_id: shown_id(&t.order_id).into(),
                subject_type: shown_text(&t.subject),
                lawful_basis: shown_text(&t.basis),
                collection_method: shown_text(&t.channel),
                policy_version: shown_text(&t.policy_version),
                captured_at: shown_text(&t.captured_at),
                purposes: Purposes::from_array(t.purposes.map(|p| p == 1)),
                mac_verified: tag_verifies(key, t),
            })
            .collect();
        let events: Vec<ProofEvent> = history
            .events
            .iter()
            .map(|e| ProofEvent {
                record_id: shown_id(&e.id).into(),
                event_type: shown_text(&e.kind),
                purposes_withdrawn: Purposes::NAMES
                    .iter()
                    .zip(e.purposes)
                    .filter(|(_, p)| *p == 1)
                    .map(|(n, _)| *n)
                    .collect(),
                channel: shown_text(&e.channel),
                received_at: shown_text(&e.received_at),
                effective_at: shown_text(&e.effective_at),
                recorded_at: shown_text(&e.recorded_at),
                has_reference: e.reference.is_some(),
                mac_verified: key.verify(&[&event_canonical_bytes(e)], &e.mac),
            })
            .collect();
        let (purposes, verified) = effective(key, &history);
        let ledger_verified = self.ledger_holds(store, key).await?;
        let proof = ConsentProof {
            format: "checkoutd-consent-proof/1",
            generated_at: crate::ids::now(),
            subject: ProofSubject {
                reference: crate::hex::encode(&subject),
                reference_type: "email blind index (HMAC-SHA256 of the normalised address)",
                known: !history.tags.is_empty(),
            },
            records,
            events,
            effective: purposes,
            ledger_verified,
            verified: verified && ledger_verified,
        };
        serde_json::to_value(proof).map_err(|_| LedgerError::Crypto(CryptoError::Malformed))
    }
}

fn tag_verifies(key: &MacKey, t: &RawTag) -> bool {
    let (Some(subject), Some(basis), Ok(id), Ok(order_id), Ok(mac)) = (
        Subject::parse(&t.subject),
        Basis::parse(&t.basis),
        uuid::Uuid::parse_str(&t.id),
        uuid::Uuid::parse_str(&t.order_id),
        <[u8; 32]>::try_from(t.mac.as_slice()),
    ) else {
        return false;
    };
    let tag = ConsentTag {
        id,
        order_id,
        subject,
        basis,
        purposes: Purposes::from_array(t.purposes.map(|p| p == 1)),
        policy_version: t.policy_version.clone(),
        captured_at: t.captured_at.clone(),
        channel: t.channel.clone(),
        mac_key_version: u32::try_from(t.mac_key_version).unwrap_or(0),
        mac,
    };
    i64::from(key.version()) == t.mac_key_version && key.verify(&[&tag.canonical_bytes()], &tag.mac)
}

/// Whether a withdrawal effective at `effective_at` counts against a
/// checkout captured at `captured_at` (both our RFC 3339 text): when it is
/// effective no earlier than [`CAPTURED_AT_SKEW`] before the capture.
///
/// A capture time is not when the customer chose. A storefront's clock
/// may run up to five minutes ahead (the form allows it, and intake lowers
/// it only to the moment the order is taken), and a checkout retried after
/// a failure is stamped at the retry when the storefront sends no
/// capture time. Either way a checkout made *before* an opt-out could
/// carry a capture time after it and silently undo it. Within the window
/// the withdrawal wins: a customer who opts out and checks out again
/// granting the same purpose within five minutes stays opted out of it
/// (the safe side of consent); a later checkout re-grants. An unreadable
/// capture time, or one not written as this service writes it (it passed
/// its MAC, so never ours to misread), counts as covered: fail closed. The SQL of the consent counts and the audience
/// export apply the same rule (`store::sql::audit::withdrawal_counts_sql`).
///
/// [`CAPTURED_AT_SKEW`]: crate::domain::order::CAPTURED_AT_SKEW
pub fn withdrawal_counts(effective_at: &str, captured_at: &str) -> bool {
    match crate::ids::parse_timestamp(captured_at)
        .and_then(|at| at.checked_sub(crate::domain::order::CAPTURED_AT_SKEW))
    {
        Some(at) => effective_at >= crate::ids::timestamp(at).as_str(),
        None => true,
    }
}

/// The subject's latest checkout tag, by its own MACed capture time (the
/// one [`effective`] starts from).
pub fn latest(history: &ConsentHistory) -> Option<&RawTag> {
    history
        .tags
        .iter()
        .max_by(|a, b| (&a.captured_at, &a.id).cmp(&(&b.captured_at, &b.id)))
}

/// Effective consent from a history (tags oldest first). Fails closed.
pub fn effective(key: &MacKey, history: &ConsentHistory) -> (Purposes, bool) {
    // Every tag must be authentic, about the customer, and belong to the
    // order it was reached through (a relinked or edited tag could
    // otherwise become "the latest"). The latest is chosen by its own MACed
    // capture time, not by any unauthenticated ordering.
    for (i, t) in history.tags.iter().enumerate() {
        let linked = history
            .via_orders
            .get(i)
            .is_none_or(|via| *via == t.order_id);
        if !tag_verifies(key, t) || t.subject != "customer" || !linked {
            return (Purposes::default(), false);
        }
    }
    let Some(latest) = latest(history) else {
        return (Purposes::default(), true);
    };
    let mut granted = latest.purposes.map(|p| p == 1);
    for e in &history.events {
        if !key.verify(&[&event_canonical_bytes(e)], &e.mac) {
            // An edited withdrawal must never re-enable marketing.
            return (Purposes::default(), false);
        }
        if withdrawal_counts(&e.effective_at, &latest.captured_at) {
            for (g, w) in granted.iter_mut().zip(e.purposes) {
                if w == 1 {
                    *g = false;
                }
            }
        }
    }
    (Purposes::from_array(granted), true)
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// What the audit says of a withdrawal whose reference columns were
/// partly emptied or set out of range.
pub const REFERENCE_DAMAGED: &str = "reference columns partly empty or out of range (edited)";

/// A verified position in the withdrawal ledger: the last entry's `seq` and
/// MAC (`seq` 0 and 32 zero bytes before the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerPosition {
    pub seq: i64,
    pub mac: Vec<u8>,
}

impl LedgerPosition {
    pub fn start() -> Self {
        LedgerPosition {
            seq: 0,
            mac: vec![0u8; 32],
        }
    }
}

/// Verifies the whole withdrawal ledger: `seq` without gaps, every MAC
/// linking to the previous one, and the MACed head. Pages through, so memory
/// stays bounded. The head is read first (appends during the walk are
/// verified next time). `Err` names the entry (or `head`) and what failed.
pub async fn verify_ledger(store: &dyn Store, key: &MacKey) -> Result<u64, (String, &'static str)> {
    let start = LedgerPosition::start();
    match verify_ledger_from(store, key, &start, &start).await {
        Ok(p) => Ok(u64::try_from(p.seq).unwrap_or(0)),
        Err(LedgerFault::Unreadable(_)) => Err((String::new(), "the ledger could not be read")),
        Err(LedgerFault::Broken { entry, what }) => Err((entry, what)),
    }
}

/// Why the ledger did not verify.
#[derive(Debug)]
pub enum LedgerFault {
    /// The store failed (the ledger may be fine).
    Unreadable(StoreError),
    /// The ledger is not what was appended: `entry` (an id, a `seq`, or
    /// `head`) and `what` failed.
    Broken { entry: String, what: &'static str },
}

/// As [`verify_ledger`], walking only the entries after `from` — a position
/// an earlier call returned — so a reader that checks before every page
/// (the marketing export) pays for the new entries only. Of what lies
/// before `from`, this sees only a deletion (the count of entries from 1 to
/// `from` falls); an entry edited since — its subject changed, so that the
/// subject's own history no longer finds it — needs the whole walk
/// ([`LedgerPosition::start`]), which the export makes on every first page.
/// `known` is the furthest position verified before (at or after `from`):
/// the ledger must still pass through it — a ledger rolled back to an older
/// state and appended to again since would otherwise verify. Returns the
/// head's position.
/// How many times a walk follows a head that moved while it walked.
const MAX_HEAD_ROUNDS: u32 = 3;

pub async fn verify_ledger_from(
    store: &dyn Store,
    key: &MacKey,
    from: &LedgerPosition,
    known: &LedgerPosition,
) -> Result<LedgerPosition, LedgerFault> {
    let sealer = EventSealer { key };
    let store_err = LedgerFault::Unreadable;
    let broken = |entry: &str, what: &'static str| LedgerFault::Broken {
        entry: entry.to_owned(),
        what,
    };
    // A row numbered below 1 lies outside every walk, yet a subject's
    // history and the audiences read it (a withdrawal planted there would
    // silently drop its subject from marketing): none may exist.
    let lowest = store.consent_events_lowest().await.map_err(store_err)?;
    if let Some(seq) = lowest.filter(|seq| *seq < 1) {
        return Err(broken(
            &seq.to_string(),
            "a withdrawal numbered below 1 (inserted outside the ledger)",
        ));
    }
    let head = store.consent_events_head().await.map_err(store_err)?;
    let Some((head_seq, head_mac_value, head_mac)) = head else {
        let first = store.consent_events_page(0, 1).await.map_err(store_err)?;
        return if !first.is_empty() {
            Err(broken("head", "missing while withdrawals exist"))
        } else if known.seq > 0 {
            Err(broken("head", "missing (the ledger was emptied)"))
        } else {
            Ok(LedgerPosition::start())
        };
    };
    if !crate::crypto::mac::constant_time_eq(&sealer.head_mac(head_seq, &head_mac_value), &head_mac)
    {
        return Err(broken("head", "head MAC does not verify"));
    }
    if head_seq < known.seq || (head_seq == known.seq && head_mac_value != known.mac) {
        return Err(broken(
            "head",
            "behind what was verified before (rolled back)",
        ));
    }
    if from.seq > 0 {
        let held = store
            .consent_events_up_to(from.seq)
            .await
            .map_err(store_err)?;
        if held != from.seq {
            return Err(broken(
                "head",
                "a withdrawal verified before is gone (deleted)",
            ));
        }
    }
    let (mut head_seq, mut head_mac_value) = (head_seq, head_mac_value);
    let mut prev = from.mac.clone();
    let mut expected = from.seq + 1;
    let mut rounds = 0;
    loop {
        'pages: while expected <= head_seq {
            let page = store
                .consent_events_page(expected - 1, 1000)
                .await
                .map_err(store_err)?;
            if page.is_empty() {
                break;
            }
            for (seq, e) in page {
                // Past the head, the ledger walked whole: below.
                if seq > head_seq && expected > head_seq {
                    break 'pages;
                }
                if seq != expected || e.seq != seq {
                    return Err(broken(
                        &expected.to_string(),
                        "withdrawal missing (sequence gap)",
                    ));
                }
                if e.prev_mac != prev {
                    return Err(broken(&e.id, "does not link to the previous withdrawal"));
                }
                // The MAC covers only whether a reference is there (its
                // envelope authenticates itself): columns half emptied are an
                // edit the MAC alone might not show.
                if e.reference_damaged {
                    return Err(broken(&e.id, REFERENCE_DAMAGED));
                }
                if i64::from(key.version()) != e.mac_key_version
                    || !key.verify(&[&event_canonical_bytes(&e)], &e.mac)
                {
                    return Err(broken(&e.id, "MAC does not verify (edited)"));
                }
                if seq == known.seq && e.mac != known.mac {
                    return Err(broken(&e.id, "not what was verified before (rolled back)"));
                }
                prev = e.mac.clone();
                expected += 1;
            }
        }
        // Withdrawals past the head: appended during the walk, under a newer
        // head that covers them (walked to in turn, a few times at most) — or
        // an older head put back, which must not pass for intact.
        if expected - 1 != head_seq {
            break;
        }
        let Some((next, _)) = store
            .consent_events_page(head_seq, 1)
            .await
            .map_err(store_err)?
            .into_iter()
            .next()
        else {
            break;
        };
        let Some((newer_seq, newer_mac_value, newer_mac)) =
            store.consent_events_head().await.map_err(store_err)?
        else {
            return Err(broken("head", "missing while withdrawals exist"));
        };
        if !crate::crypto::mac::constant_time_eq(
            &sealer.head_mac(newer_seq, &newer_mac_value),
            &newer_mac,
        ) {
            return Err(broken("head", "head MAC does not verify"));
        }
        if newer_seq < next {
            return Err(broken(
                &next.to_string(),
                "lies past the head (planted, or an older head put back)",
            ));
        }
        rounds += 1;
        if rounds > MAX_HEAD_ROUNDS {
            break;
        }
        (head_seq, head_mac_value) = (newer_seq, newer_mac_value);
    }
    if expected - 1 != head_seq || prev != head_mac_value {
        return Err(broken(
            "head",
            "does not match the last withdrawal (deleted or truncated)",
        ));
    }
    Ok(LedgerPosition {
        seq: head_seq,
        mac: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_withdrawal_counts_against_checkouts_captured_up_to_five_minutes_after_it() {
        let captured = "2026-12-01T10:00:00.000Z";
        for (effective_at, counts) in [
            ("2026-12-01T10:00:00.000Z", true),
            ("2026-12-01T11:00:00.000Z", true),
            ("2026-12-01T09:56:00.000Z", true),
            ("2026-12-01T09:55:00.000Z", true),
            ("2026-12-01T09:54:59.999Z", false),
            ("2026-12-01T08:00:00.000Z", false),
        ] {
            assert_eq!(
                withdrawal_counts(effective_at, captured),
                counts,
                "{effective_at}"
            );
        }
        // Across midnight and a year.
        assert!(withdrawal_counts(
            "2026-12-31T23:57:00.000Z",
            "2027-01-01T00:01:00.000Z"
        ));
        // Fail closed on a capture time that is not one, or not ours.
        for captured in [
            "yesterday",
            "infinity",
            "2026-13-01T10:00:00.000Z",
            "2026-12-01T10:00:00Z",
            "2026-12-01T12:00:00.000+02:00",
            "2026-02-31T10:00:00.000Z",
            "2026-12-01T24:00:00.000Z",
            "+2026-12-01T10:00:00.000Z",
            "-0001-12-01T10:00:00.000Z",
            "-9999-01-01T00:00:00.000Z",
        ] {
            assert!(
                withdrawal_counts("2000-01-01T00:00:00.000Z", captured),
                "{captured}"
            );
        }
    }

    /// The opt-out schema names what `parse_opt_out` reads: the purposes and
    /// channels it lists are exactly the parser's, its required members are
    /// reported missing, and a body of its examples is accepted.
    #[test]
    fn opt_out_schema_agrees_with_the_parser() {
        use utoipa::PartialSchema;
        let enum_of = |s: serde_json::Value| -> Vec<String> {
            s["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        let purposes = enum_of(serde_json::to_value(PurposeName::schema()).unwrap());
        assert_eq!(purposes, Purposes::NAMES);
        for name in enum_of(serde_json::to_value(ChannelName::schema()).unwrap()) {
            assert_eq!(
                Channel::parse(&name).map(Channel::as_str),
                Some(name.as_str())
            );
        }
        let schema = serde_json::to_value(OptOutRequest::schema()).unwrap();
        assert_eq!(schema["additionalProperties"], json!(false));
        let mut sample = serde_json::Map::new();
        for (name, member) in schema["properties"].as_object().unwrap() {
            let example = member
                .get("example")
                .or_else(|| member.get("examples").and_then(|e| e.get(0)))
                .cloned()
                .unwrap_or(json!("all"));
            sample.insert(name.clone(), example);
        }
        sample.insert("channel".into(), json!("email"));
        assert_eq!(sample.len(), 5);
        parse_opt_out(Value::Object(sample.clone())).unwrap();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(required, ["email", "purposes", "channel"]);
        for name in sample.keys() {
            let mut partial = sample.clone();
            partial.remove(name);
            let result = parse_opt_out(Value::Object(partial));
            if required.contains(&name.as_str()) {
                let errors = result.err().unwrap();
                assert!(
                    errors
                        .iter()
                        .any(|e| e.field == *name && e.code == "required")
                );
            } else {
                assert!(result.is_ok(), "{name}");
            }
        }
    }

    #[test]
    fn opt_out_bodies() {
        let ok = parse_opt_out(json!({"email": "Ada@Example.com", "purposes": "all", "channel": "email",
                                       "received_at": "2026-01-02T03:04:05+01:00", "reference": "<m1@x>"}))
        .unwrap();
        assert_eq!(ok.email.expose(), "ada@example.com");
        assert_eq!(ok.purposes, [true; 5]);
        assert_eq!(ok.received_at.as_deref(), Some("2026-01-02T02:04:05.000Z"));
        let some = parse_opt_out(
            json!({"email": "a@b.co", "purposes": ["special_offers"], "channel": "postal"}),
        )
        .unwrap();
        assert_eq!(some.purposes, [false, false, false, true, false]);
        let bad = parse_opt_out(
            json!({"email": "nope", "purposes": ["spam"], "channel": "fax",
                                        "received_at": "2999-01-01T00:00:00Z", "x": 1}),
        )
        .unwrap_err();
        let fields: Vec<&str> = bad.iter().map(|e| e.field.as_str()).collect();
        for f in ["email", "purposes", "channel", "received_at", "x"] {
            assert!(fields.contains(&f), "{f} in {fields:?}");
        }
        assert!(
            parse_opt_out(json!({"email": "a@b.co", "purposes": [], "channel": "online"})).is_err()
        );
    }
}
