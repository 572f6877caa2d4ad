//! Envelope encryption of one record.
//!
//! Each record gets a fresh 256-bit data key (DEK). The record's plaintext
//! is sealed under the DEK; the DEK is sealed ("wrapped") under the active
//! KEK of the record's data class. Both use AES-256-GCM with fresh random
//! nonces. Stored per record: KEK version, wrapped DEK (60 bytes), data
//! ciphertext, format version. The DEK itself is never stored.
//!
//! Associated data (all fixed-length, see `docs/encryption.md`):
//! - data:  `"checkoutd/data" || format || class || order_id || record_id`
//! - DEK:   `"checkoutd/dek"  || format || class || order_id || record_id || kek_version (u32 BE)`
//!
//! So a ciphertext moved to another row, order or table — with or without
//! its row id — fails to open, and a wrapped DEK relabelled with another KEK
//! version fails too. The data AAD leaves the KEK version out on purpose:
//! re-wrapping a DEK under a new KEK version must not touch the data
//! ciphertext, and the DEK, unique to the record, already binds it.

use uuid::Uuid;
use zeroize::Zeroizing;

use super::aead::{self, KEY_LEN};
use super::keyring::{Keyring, OpeningKek, OpensClass, SealingKek};
use super::random::Random;
use super::{CryptoError, DataClass};

/// The envelope format this code writes.
pub const FORMAT_VERSION: u8 = 1;
/// Length of a wrapped DEK: nonce (12) + key (32) + tag (16).
pub const WRAPPED_DEK_LEN: usize = aead::OVERHEAD + KEY_LEN;

const DATA_LABEL: &[u8; 14] = b"checkoutd/data";
const DEK_LABEL: &[u8; 13] = b"checkoutd/dek";

/// Where a record lives: what its ciphertext is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub class: DataClass,
    pub order_id: Uuid,
    pub record_id: Uuid,
}

/// A sealed record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub format_version: u8,
    pub kek_version: u32,
    pub wrapped_dek: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl Binding {
    /// Associated data of the record's ciphertext.
    pub fn data_aad(&self, format_version: u8) -> Vec<u8> {
        let mut aad = Vec::with_capacity(DATA_LABEL.len() + 2 + 32);
        aad.extend_from_slice(DATA_LABEL);
        aad.push(format_version);
        aad.push(self.class.code());
        aad.extend_from_slice(self.order_id.as_bytes());
        aad.extend_from_slice(self.record_id.as_bytes());
        aad
    }

    /// Associated data of the wrapped DEK.
    pub fn dek_aad(&self, format_version: u8, kek_version: u32) -> Vec<u8> {
        let mut aad = Vec::with_capacity(DEK_LABEL.len() + 2 + 32 + 4);
        aad.extend_from_slice(DEK_LABEL);
        aad.push(format_version);
        aad.push(self.class.code());
        aad.extend_from_slice(self.order_id.as_bytes());
        aad.extend_from_slice(self.record_id.as_bytes());
        aad.extend_from_slice(&kek_version.to_be_bytes());
        aad
    }
}

/// Seals `plaintext` for the record at `binding` under a fresh DEK wrapped
/// by the class's active KEK.
pub fn seal(
    rng: &impl Random,
    keyring: &Keyring,
    binding: &Binding,
    plaintext: &[u8],
) -> Result<Envelope, CryptoError> {
    let kek = keyring.sealing_kek(binding.class)?;
    seal_with(rng, &kek, binding, plaintext)
}

/// As [`seal`], with an explicit sealing KEK (which must be the binding's
/// class).
pub fn seal_with(
    rng: &impl Random,
    kek: &SealingKek<'_>,
    binding: &Binding,
    plaintext: &[u8],
) -> Result<Envelope, CryptoError> {
    if kek.class != binding.class {
        return Err(CryptoError::UnknownKey);
    }
    let dek = aead::random_key(rng)?;
    let ciphertext = aead::seal(rng, &dek, &binding.data_aad(FORMAT_VERSION), plaintext)?;
    let wrapped_dek = aead::seal(
        rng,
        kek.key,
        &binding.dek_aad(FORMAT_VERSION, kek.version),
        dek.as_ref(),
    )?;
    Ok(Envelope {
        format_version: FORMAT_VERSION,
        kek_version: kek.version,
        wrapped_dek,
        ciphertext,
    })
}

/// Unwraps the record's DEK.
fn unwrap_dek(
    kek: &OpeningKek<'_>,
    binding: &Binding,
    envelope: &Envelope,
) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    if envelope.format_version != FORMAT_VERSION {
        return Err(CryptoError::Format);
    }
    if envelope.wrapped_dek.len() != WRAPPED_DEK_LEN {
        return Err(CryptoError::Malformed);
    }
    let raw = aead::open(
        kek.key,
        &binding.dek_aad(envelope.format_version, envelope.kek_version),
        &envelope.wrapped_dek,
    )?;
    let mut dek = Zeroizing::new([0u8; KEY_LEN]);
    if raw.len() != KEY_LEN {
        return Err(CryptoError::Malformed);
    }
    dek.copy_from_slice(&raw);
    Ok(dek)
}

/// Opens a record with any holder of the class's KEKs (the whole keyring,
/// or a [`super::keyring::ClassKeys`] subset). The plaintext comes back in
/// a zeroizing buffer.
pub fn open(
    keyring: &impl OpensClass,
    binding: &Binding,
    envelope: &Envelope,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let kek = keyring.opening_kek(binding.class, envelope.kek_version)?;
    let dek = unwrap_dek(&kek, binding, envelope)?;
    aead::open(
        &dek,
        &binding.data_aad(envelope.format_version),
        &envelope.ciphertext,
    )
}

/// Re-wraps a record's DEK under `to` without touching its ciphertext.
pub fn rewrap(
    rng: &impl Random,
    keyring: &Keyring,
    to: &SealingKek<'_>,
    binding: &Binding,
    envelope: &Envelope,
) -> Result<Envelope, CryptoError> {
    if to.class != binding.class {
        return Err(CryptoError::UnknownKey);
    }
    let from = keyring.opening_kek(binding.class, envelope.kek_version)?;
    let dek = unwrap_dek(&from, binding, envelope)?;
    let wrapped_dek = aead::seal(
        rng,
        to.key,
        &binding.dek_aad(FORMAT_VERSION, to.version),
        dek.as_ref(),
    )?;
    Ok(Envelope {
        format_version: envelope.format_version,
        kek_version: to.version,
        wrapped_dek,
        ciphertext: envelope.ciphertext.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn setup() -> (SystemRandom, Keyring) {
        let rng = SystemRandom::new();
        let ring = Keyring::generate(&rng, "t").unwrap();
        (rng, ring)
    }

    fn binding(class: DataClass, order: u128, record: u128) -> Binding {
        Binding {
            class,
            order_id: Uuid::from_u128(order),
            record_id: Uuid::from_u128(record),
        }
    }

    #[test]
    fn seal_then_open() {
        let (rng, ring) = setup();
        let b = binding(DataClass::Card, 1, 2);
        let env = seal(&rng, &ring, &b, b"{\"pan\":\"...\"}").unwrap();
        assert_eq!(env.wrapped_dek.len(), WRAPPED_DEK_LEN);
        assert_eq!(
            open(&ring, &b, &env).unwrap().as_slice(),
            b"{\"pan\":\"...\"}"
        );
    }

    #[test]
    fn moved_ciphertexts_do_not_open() {
        let (rng, ring) = setup();
        let b = binding(DataClass::Billing, 1, 2);
        let env = seal(&rng, &ring, &b, b"billing").unwrap();
        // Another order, another record id, another class (same KEK version).
        for other in [
            binding(DataClass::Billing, 9, 2),
            binding(DataClass::Billing, 1, 9),
            binding(DataClass::Shipping, 1, 2),
        ] {
            assert!(open(&ring, &other, &env).is_err(), "{other:?}");
        }
        // Relabelled KEK version.
        let mut relabelled = env.clone();
        relabelled.kek_version = 2;
        assert!(open(&ring, &b, &relabelled).is_err());
        // Ciphertext swapped between two records of the same class.
        let b2 = binding(DataClass::Billing, 3, 4);
        let env2 = seal(&rng, &ring, &b2, b"other").unwrap();
        let swapped = Envelope {
            ciphertext: env2.ciphertext.clone(),
            ..env.clone()
        };
        assert!(open(&ring, &b, &swapped).is_err());
        // Whole envelope moved along with its record id, into another order.
        assert!(open(&ring, &binding(DataClass::Billing, 3, 2), &env).is_err());
    }

    /// The associated data alone (not the per-class KEKs) binds both the
    /// ciphertext and the wrapped DEK to every part of where the record
    /// lives: class, order, record and, for the DEK, its KEK version. A
    /// moved envelope fails even where two places share a key.
    #[test]
    fn the_associated_data_differs_for_every_part_of_the_binding() {
        let b = binding(DataClass::Billing, 1, 2);
        let others = [
            binding(DataClass::Shipping, 1, 2),
            binding(DataClass::Billing, 9, 2),
            binding(DataClass::Billing, 1, 9),
        ];
        for other in &others {
            assert_ne!(b.data_aad(1), other.data_aad(1), "{other:?}");
            assert_ne!(b.dek_aad(1, 1), other.dek_aad(1, 1), "{other:?}");
        }
        assert_ne!(b.dek_aad(1, 1), b.dek_aad(1, 2), "KEK version");
        assert_ne!(b.data_aad(1), b.data_aad(2), "format version");
        // Every class has its own code.
        let mut codes: Vec<u8> = DataClass::ALL.iter().map(|c| c.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), DataClass::ALL.len());
    }

    #[test]
    fn tampered_or_truncated_or_wrong_keyring_fails() {
        let (rng, ring) = setup();
        let b = binding(DataClass::Recipient, 1, 2);
        let env = seal(&rng, &ring, &b, b"recipient").unwrap();
        let mut t = env.clone();
        let last = t.ciphertext.len() - 1;
        t.ciphertext[last] ^= 1;
        assert_eq!(open(&ring, &b, &t), Err(CryptoError::Unauthentic));
        let mut t = env.clone();
        t.wrapped_dek[20] ^= 1;
        assert_eq!(open(&ring, &b, &t), Err(CryptoError::Unauthentic));
        let mut t = env.clone();
        t.wrapped_dek.truncate(10);
        assert_eq!(open(&ring, &b, &t), Err(CryptoError::Malformed));
        let mut t = env.clone();
        t.ciphertext.truncate(5);
        assert_eq!(open(&ring, &b, &t), Err(CryptoError::Malformed));
        let mut t = env.clone();
        t.format_version = 2;
        assert_eq!(open(&ring, &b, &t), Err(CryptoError::Format));
        let (_, other) = setup();
        assert_eq!(open(&other, &b, &env), Err(CryptoError::Unauthentic));
    }

    #[test]
    fn rewrap_keeps_the_ciphertext() {
        let (rng, ring) = setup();
        let b = binding(DataClass::Shipping, 1, 2);
        let env = seal(&rng, &ring, &b, b"ship").unwrap();
        let kek = ring.sealing_kek(DataClass::Shipping).unwrap();
        let re = rewrap(&rng, &ring, &kek, &b, &env).unwrap();
        assert_eq!(re.ciphertext, env.ciphertext);
        assert_ne!(re.wrapped_dek, env.wrapped_dek);
        assert_eq!(open(&ring, &b, &re).unwrap().as_slice(), b"ship");
        // Never under another class's KEK.
        let card = ring.sealing_kek(DataClass::Card).unwrap();
        assert_eq!(
            rewrap(&rng, &ring, &card, &b, &env),
            Err(CryptoError::UnknownKey)
        );
    }

    /// The worked example of docs/encryption.md, byte for byte.
    #[test]
    fn documented_test_vector() {
        let kek = [0x11u8; 32];
        let dek = [0x22u8; 32];
        let b = Binding {
            class: DataClass::Card,
            order_id: Uuid::parse_str("0192f8a0-0000-4000-8000-000000000001").unwrap(),
            record_id: Uuid::parse_str("0192f8a0-0000-4000-8000-000000000002").unwrap(),
        };
        let data_aad = b.data_aad(1);
        let dek_aad = b.dek_aad(1, 1);
        assert_eq!(crate::hex::encode(&data_aad), DOC_DATA_AAD);
        assert_eq!(crate::hex::encode(&dek_aad), DOC_DEK_AAD);
        let plaintext = br#"{"pan":"4012888888881881","exp_month":12,"exp_year":2030,"holder_name":"Ada Lovelace"}"#;
        let ct = aead::seal_with_nonce(&dek, [0x33; 12], &data_aad, plaintext).unwrap();
        let wrapped = aead::seal_with_nonce(&kek, [0x44; 12], &dek_aad, &dek).unwrap();
        assert_eq!(crate::hex::encode(&ct), DOC_CIPHERTEXT);
        assert_eq!(crate::hex::encode(&wrapped), DOC_WRAPPED_DEK);
    }

    // Copied from docs/encryption.md ("Worked example").
    const DOC_DATA_AAD: &str = "636865636b6f7574642f6461746101010192f8a00000400080000000000000010192f8a0000040008000000000000002";
    const DOC_DEK_AAD: &str = "636865636b6f7574642f64656b01010192f8a00000400080000000000000010192f8a000004000800000000000000200000001";
    const DOC_CIPHERTEXT: &str = concat!(
        "3333333333333333333333330de1b68b1b0e4c4a3cddaa422de935aa1d9953bf698851c028fb0a93e6ff5d10e486db3fd301e5b66b8f508aa7f1c5af",
        "e1ef8bb3c4ae8e3197706cb7d54a7f6840b10cb8b2ecefb071308521192c2f652008ecc1be571675a0a87ce9f2e969d3b7d9ff296ffb"
    );
    const DOC_WRAPPED_DEK: &str = "444444444444444444444444ee676a4c681a0615cbb2bdbf0ac855cebae8ee199a2f1df5f571c3411ee908fedce9f33272a900a73bb906eaff2f7a39";
}
