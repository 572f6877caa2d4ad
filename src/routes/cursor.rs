//! Page cursors of the warehouse's and marketing's listings.
//!
//! A listing pages by the last row's order sequence number, which counts
//! every order the shop ever took: handed out in clear, it would tell a
//! warehouse or marketing client the shop's order volume, and let it be
//! watched over time. So the cursor is that number sealed with AES-256-GCM
//! (fresh nonce) under a key derived from the keyring's request-hash MAC
//! key (`HMAC(key, "checkoutd/page-cursor" ‖ 0x01)`: the same in every
//! process and across restarts, since MAC keys never rotate), with the
//! listing it came from as associated data — a cursor is valid only for
//! that listing (`shipments:pending`, `audience:special_offers`, …). Hex,
//! 72 characters. A cursor that does not open is "not a cursor returned by
//! this endpoint" (400), whatever is wrong with it.

use ring::rand::SystemRandom;
use zeroize::Zeroizing;

use crate::crypto::aead;
use crate::crypto::keyring::Keyring;

/// The characters of a cursor: hex of nonce ‖ sealed seq ‖ tag.
pub const LEN: usize = 2 * (aead::OVERHEAD + 8);

fn key(keyring: &Keyring) -> Zeroizing<[u8; aead::KEY_LEN]> {
    Zeroizing::new(
        keyring
            .request_hash_key()
            .sign(&[b"checkoutd/page-cursor", &[1]]),
    )
}

/// The cursor after the row with sequence number `seq` in `listing`;
/// `None` only if the system's random generator failed.
pub fn encode(keyring: &Keyring, listing: &str, seq: i64) -> Option<String> {
    aead::seal(
        &SystemRandom::new(),
        &key(keyring),
        listing.as_bytes(),
        &seq.to_be_bytes(),
    )
    .ok()
    .map(|sealed| crate::hex::encode(&sealed))
}

/// The sequence number a cursor of `listing` stands for.
pub fn decode(keyring: &Keyring, listing: &str, cursor: &str) -> Option<i64> {
    if cursor.len() != LEN {
        return None;
    }
    let sealed = crate::hex::decode(cursor)?;
    let seq = aead::open(&key(keyring), listing.as_bytes(), &sealed).ok()?;
    let seq = i64::from_be_bytes(seq.as_slice().try_into().ok()?);
    (seq >= 0).then_some(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_hide_the_number_and_belong_to_their_listing() {
        let keyring = Keyring::generate(&SystemRandom::new(), "2026-11-30T00:00:00.000Z").unwrap();
        let c = encode(&keyring, "shipments:pending", 42).unwrap();
        assert_eq!(c.len(), LEN);
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
        for garbage in ["", "zz", "00", "000000000000002a", &c[..LEN - 2]] {
            assert_eq!(decode(&keyring, "shipments:pending", garbage), None);
        }
        let negative = encode(&keyring, "shipments:pending", -1).unwrap();
        assert_eq!(decode(&keyring, "shipments:pending", &negative), None);
    }
}
