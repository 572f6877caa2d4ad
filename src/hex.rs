//! Lower-case hexadecimal encoding for digests and ids (never for secrets
//! outside the keyring file and test vectors).

pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Decodes lower- or upper-case hex; `None` on odd length or a non-hex digit.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2)
        .map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

/// Decodes a 32-byte key (64 hex digits) straight into an array wiped on
/// drop: a key never passes through a growing vector, whose outgrown
/// blocks would go back to the allocator with part of it still in them.
pub fn decode_key(s: &str) -> Option<zeroize::Zeroizing<[u8; 32]>> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    for (out, pair) in key.iter_mut().zip(s.chunks_exact(2)) {
        *out = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(key)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(super::encode(&bytes), "00017f80ff");
        assert_eq!(super::decode("00017F80ff").unwrap(), bytes);
        let key: Vec<u8> = (0..32).collect();
        assert_eq!(
            *super::decode_key(&super::encode(&key)).unwrap(),
            key.as_slice()
        );
        assert!(super::decode_key(&super::encode(&key[..31])).is_none());
        assert!(super::decode_key(&"0g".repeat(32)).is_none());
        assert!(super::decode("abc").is_none());
        assert!(super::decode("zz").is_none());
    }
}
