//! Our cryptographic construction, organised by responsibility:
//! - [`aead`]: AES-256-GCM seal/open with a fresh random nonce and length
//!   checks before any slicing;
//! - [`envelope`]: per-record data keys wrapped by versioned key-encrypting
//!   keys, with associated data binding each ciphertext to its place;
//! - [`keyring`]: the versioned keys themselves and their file;
//! - [`random`]: the random bytes of ids, data keys and nonces;
//! - [`mac`]: keyed digests — card fingerprint, email blind index, consent
//!   tag MAC, idempotency request hash.
//!
//! The byte-level format is documented in `docs/encryption.md`, with a test
//! vector checked by `envelope::tests::documented_test_vector`.

pub mod aead;
pub mod envelope;
pub mod keyring;
pub mod mac;
pub mod master;
pub mod random;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Failures of our cryptography. Deliberately uninformative: an open that
/// fails says so and nothing about why a tag did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("the ciphertext is malformed (too short)")]
    Malformed,
    #[error("the ciphertext did not authenticate")]
    Unauthentic,
    #[error("no key-encrypting key of that class and version")]
    UnknownKey,
    #[error("the system random generator failed")]
    Random,
    #[error("unsupported envelope format version")]
    Format,
}

/// The class of data a record holds; each has its own KEK lineage, and a
/// reader of one class never needs another class's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataClass {
    Card,
    Billing,
    Shipping,
    Recipient,
    /// The customer's email address alone, for consent-respecting contact:
    /// marketing opens this class and nothing else.
    Contact,
}

impl DataClass {
    pub const ALL: [DataClass; 5] = [
        DataClass::Card,
        DataClass::Billing,
        DataClass::Shipping,
        DataClass::Recipient,
        DataClass::Contact,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DataClass::Card => "card",
            DataClass::Billing => "billing",
            DataClass::Shipping => "shipping",
            DataClass::Recipient => "recipient",
            DataClass::Contact => "contact",
        }
    }

    /// The byte that stands for the class in associated data.
    pub fn code(self) -> u8 {
        match self {
            DataClass::Card => 1,
            DataClass::Billing => 2,
            DataClass::Shipping => 3,
            DataClass::Recipient => 4,
            DataClass::Contact => 5,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        DataClass::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Serialises secret-bearing JSON into a zeroizing buffer of exactly the
/// right capacity (a first pass counts the bytes), so it never reallocates
/// and leaves no stray copy behind.
pub fn json_zeroizing<T: Serialize + ?Sized>(value: &T) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_err(|_| CryptoError::Malformed)?;
    let mut buf = Zeroizing::new(Vec::with_capacity(count.0));
    serde_json::to_writer(&mut *buf, value).map_err(|_| CryptoError::Malformed)?;
    Ok(buf)
}
