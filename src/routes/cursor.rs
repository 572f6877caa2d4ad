//! Page cursors of the warehouse's and marketing's listings.
//!
//! The shipment listings page by the last row's order sequence number,
//! which counts every order the shop ever took: handed out in clear, it
//! would tell a warehouse client the shop's order volume, and let it be
//! watched over time. The audience export pages by customer (the email's
//! blind index), which must not leave the service either. So a cursor is
//! its position sealed with AES-256-GCM (fresh nonce) under a key derived
//! from the keyring's request-hash MAC key (`HMAC(key,
//! "checkoutd/page-cursor" ‖ 0x01)`: the same in every process and across
//! restarts, since MAC keys never rotate), with the listing it came from as
//! associated data — a cursor is valid only for that listing
//! (`shipments:pending`, `audience:special_offers`, …). Hex: 72 characters
//! for a sequence number ([`SEQ_LEN`]), 120 for a blind index
//! ([`SUBJECT_LEN`]). A cursor that does not open is "not a cursor returned
//! by this endpoint" (400), whatever is wrong with it.

use ring::rand::SystemRandom;
use zeroize::Zeroizing;

use crate::crypto::aead;
use crate::crypto::keyring::Keyring;

/// The characters of a sequence-number cursor: hex of nonce ‖ sealed seq ‖
/// tag.
pub const SEQ_LEN: usize = 2 * (aead::OVERHEAD + 8);

/// The characters of a subject cursor: hex of nonce ‖ sealed blind index ‖
/// tag.
pub const SUBJECT_LEN: usize = 2 * (aead::OVERHEAD + 32);

fn key(keyring: &Keyring) -> Zeroizing<[u8; aead::KEY_LEN]> {
    Zeroizing::new(
        keyring
            .request_hash_key()
            .sign(&[b"checkoutd/page-cursor", &[1]]),
    )
}

/// `position` sealed for `listing`; `None` only if the system's random
/// generator failed.
fn seal(keyring: &Keyring, listing: &str, position: &[u8]) -> Option<String> {
    aead::seal(
        &SystemRandom::new(),
        &key(keyring),
        listing.as_bytes(),
        position,
    )
    .ok()
    .map(|sealed| crate::hex::encode(&sealed))
}

/// The position a cursor of `listing`, `len` characters long, stands for.
fn open(keyring: &Keyring, listing: &str, cursor: &str, len: usize) -> Option<Zeroizing<Vec<u8>>> {
    if cursor.len() != len {
        return None;
    }
    let sealed = crate::hex::decode(cursor)?;
    aead::open(&key(keyring), listing.as_bytes(), &sealed).ok()
}

/// The cursor after the row with sequence number `seq` in `listing`.
pub fn encode(keyring: &Keyring, listing: &str, seq: i64) -> Option<String> {
    seal(keyring, listing, &seq.to_be_bytes())
}

/// The sequence number a cursor of `listing` stands for.
pub fn decode(keyring: &Keyring, listing: &str, cursor: &str) -> Option<i64> {
    let seq = open(keyring, listing, cursor, SEQ_LEN)?;
    let seq = i64::from_be_bytes(seq.as_slice().try_into().ok()?);
    (seq >= 0).then_some(seq)
}

/// The cursor after the subject (email blind index) `subject` in `listing`.
pub fn encode_subject(keyring: &Keyring, listing: &str, subject: &[u8; 32]) -> Option<String> {
    seal(keyring, listing, subject)
}

/// The subject a subject cursor of `listing` stands for.
pub fn decode_subject(keyring: &Keyring, listing: &str, cursor: &str) -> Option<[u8; 32]> {
    open(keyring, listing, cursor, SUBJECT_LEN)?
        .as_slice()
        .try_into()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_hide_the_number_and_belong_to_their_listing() {
        let keyring = Keyring::generate(&SystemRandom::new(), "2026-11-30T00:00:00.000Z").unwrap();
        let c = encode(&keyring, "shipments:pending", 42).unwrap();
        assert_eq!(c.len(), SEQ_LEN);
        assert_eq!(decode(&keyring, "shipments:pending", &c), Some(42));
        // Two cursors for the same row differ (fresh nonce): nothing to
        // compare or count.
        assert_ne!(c, encode(&keyring, "shipments:pending", 42).unwrap());
        assert_eq!(decode(&keyring, "shipments:dispatched", &c), None);
        assert_eq!(decode(&keyring, "audience:special_offers", &c), None);
        assert_eq!(
            decode(
                &Keyring::generate(&SystemRandom::new(), "2026-11-30T00:00:00.000Z").unwrap(),
                "shipments:pending",
                &c
            ),
            None
        );
        let mut flipped = c.clone().into_bytes();
        flipped[30] = if flipped[30] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(decode(&keyring, "shipments:pending", &flipped), None);
        for garbage in ["", "zz", "00", "000000000000002a", &c[..SEQ_LEN - 2]] {
            assert_eq!(decode(&keyring, "shipments:pending", garbage), None);
        }
        let negative = encode(&keyring, "shipments:pending", -1).unwrap();
        assert_eq!(decode(&keyring, "shipments:pending", &negative), None);

        // Subject cursors: the same sealing, their own length.
        let subject = [7u8; 32];
        let s = encode_subject(&keyring, "audience:special_offers", &subject).unwrap();
        assert_eq!(s.len(), SUBJECT_LEN);
        assert!(!s.contains(&crate::hex::encode(&subject)));
        assert_eq!(
            decode_subject(&keyring, "audience:special_offers", &s),
            Some(subject)
        );
        assert_eq!(decode_subject(&keyring, "audience:partnerships", &s), None);
        assert_eq!(decode(&keyring, "audience:special_offers", &s), None);
        assert_eq!(decode_subject(&keyring, "shipments:pending", &c), None);
    }
}
