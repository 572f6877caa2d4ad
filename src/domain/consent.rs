//! Consent: the five marketing purposes of the privacy policy, who a tag is
//! about, and on what basis their data is used.

use serde::{Deserialize, Serialize};

/// The purposes a customer can consent to at checkout (absent = `false`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Purposes {
    pub product_updates: bool,
    pub new_offerings: bool,
    pub partnerships: bool,
    pub special_offers: bool,
    pub third_party_sharing: bool,
}

impl Purposes {
    pub const NAMES: [&'static str; 5] = [
        "product_updates",
        "new_offerings",
        "partnerships",
        "special_offers",
        "third_party_sharing",
    ];

    /// In the order of [`Purposes::NAMES`].
    pub fn as_array(&self) -> [bool; 5] {
        [
            self.product_updates,
            self.new_offerings,
            self.partnerships,
            self.special_offers,
            self.third_party_sharing,
        ]
    }

    pub fn from_array(a: [bool; 5]) -> Self {
        Purposes {
            product_updates: a[0],
            new_offerings: a[1],
            partnerships: a[2],
            special_offers: a[3],
            third_party_sharing: a[4],
        }
    }
}

/// Whom a consent tag is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    Customer,
    GiftRecipient,
}

impl Subject {
    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Customer => "customer",
            Subject::GiftRecipient => "gift_recipient",
        }
    }
    pub fn code(self) -> u8 {
        match self {
            Subject::Customer => 1,
            Subject::GiftRecipient => 2,
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "customer" => Some(Subject::Customer),
            "gift_recipient" => Some(Subject::GiftRecipient),
            _ => None,
        }
    }
}

/// The lawful basis for using the subject's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The customer's own choices at checkout.
    Consent,
    /// Details about another person, used only to deliver the order.
    FulfillmentOnly,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Consent => "consent",
            Basis::FulfillmentOnly => "fulfillment_only",
        }
    }
    pub fn code(self) -> u8 {
        match self {
            Basis::Consent => 1,
            Basis::FulfillmentOnly => 2,
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "consent" => Some(Basis::Consent),
            "fulfillment_only" => Some(Basis::FulfillmentOnly),
            _ => None,
        }
    }
}

/// How a consent was captured.
pub const CHANNEL_CHECKOUT: &str = "checkout";

/// A consent tag as stored: what a record's subject agreed to, under which
/// policy version, when and how. `mac` authenticates
/// [`ConsentTag::canonical_bytes`] under the keyring's consent-tag key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentTag {
    pub id: uuid::Uuid,
    pub order_id: uuid::Uuid,
    pub subject: Subject,
    pub basis: Basis,
    pub purposes: Purposes,
    pub policy_version: String,
    pub captured_at: String,
    pub channel: String,
    pub mac_key_version: u32,
    pub mac: [u8; 32],
}

impl ConsentTag {
    /// The bytes the MAC covers (documented in docs/encryption.md):
    /// `"checkoutd/consent-tag" || 0x01 || id (16) || order_id (16) ||
    /// subject (1) || basis (1) || five purpose bytes (0/1) ||
    /// len32(policy_version) || len32(captured_at) || len32(channel)`,
    /// where `len32(s)` is the UTF-8 byte length as u32 big-endian, then the
    /// bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.policy_version.len() + self.captured_at.len());
        out.extend_from_slice(b"checkoutd/consent-tag");
        out.push(1);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(self.order_id.as_bytes());
        out.push(self.subject.code());
        out.push(self.basis.code());
        out.extend(self.purposes.as_array().map(u8::from));
        for s in [&self.policy_version, &self.captured_at, &self.channel] {
            // Every field is far below 4 GiB (validated at intake); a longer
            // one would not be representable and is cut at u32::MAX bytes.
            let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes().get(..len as usize).unwrap_or(s.as_bytes()));
        }
        out
    }

    /// The public view of a tag (API responses).
    pub fn view(&self) -> serde_json::Value {
        serde_json::to_value(self.tag_view()).unwrap_or(serde_json::Value::Null)
    }

    /// The public view as a typed value.
    pub fn tag_view(&self) -> TagView<'_> {
        TagView {
            id: self.id,
            subject: self.subject,
            basis: self.basis,
            purposes: self.purposes,
            policy_version: &self.policy_version,
            captured_at: &self.captured_at,
            channel: &self.channel,
        }
    }
}

/// The public view of a consent tag: what is shown in API answers (no MAC,
/// no personal data). The OpenAPI `ConsentTag` schema is derived from it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ConsentTag)]
pub struct TagView<'a> {
    pub id: uuid::Uuid,
    pub subject: Subject,
    pub basis: Basis,
    pub purposes: Purposes,
    /// The privacy-policy version the consent was given under.
    #[schema(value_type = String, example = "2002-06-05")]
    pub policy_version: &'a str,
    /// RFC 3339 time of capture.
    #[schema(value_type = String)]
    pub captured_at: &'a str,
    /// How the consent was captured (`checkout`).
    #[schema(value_type = String, example = "checkout")]
    pub channel: &'a str,
}
