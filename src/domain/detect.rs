//! Detectors for card numbers and email addresses in text that should hold
//! neither. Used twice: intake refuses them in the fields that are stored in
//! clear (SKU, item description, storefront reference), and the audit scans
//! every clear column of the database with them.
//!
//! A card number is a maximal run of 13–19 digits, optionally grouped by
//! single spaces or dashes, that passes the Luhn check. UUIDs and long hex
//! strings (digests such as certificate fingerprints) are blanked first:
//! their digit stretches would otherwise look like numbers about once in two
//! hundred.

use super::pan::luhn_valid;

/// True when `text` holds something shaped like a card number.
pub fn contains_pan(text: &str) -> bool {
    let bytes = blank_uuids(text.as_bytes());
    let mut digits: Vec<u8> = Vec::with_capacity(19);
    let mut i = 0;
    while i <= bytes.len() {
        let b = bytes.get(i).copied();
        match b {
            Some(d @ b'0'..=b'9') => digits.push(d),
            // A single separator between digits continues the run.
            Some(b' ' | b'-')
                if !digits.is_empty() && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {}
            _ => {
                if (13..=19).contains(&digits.len()) && luhn_valid(&digits) {
                    return true;
                }
                digits.clear();
            }
        }
        i += 1;
    }
    false
}

/// As [`contains_pan`], for free text typed by a person (a name, an address
/// line, a gift message): digits may also be grouped by runs of any
/// whitespace (line breaks included), dots, slashes or underscores, and
/// full-width digits count as digits — a card number typed into such a field
/// is found however it was spaced.
pub fn contains_pan_typed(text: &str) -> bool {
    let mut normal = String::with_capacity(text.len());
    let mut separator = false;
    for c in text.chars() {
        let c = match c {
            '\u{ff10}'..='\u{ff19}' => char::from(b'0' + (c as u32 - 0xff10) as u8),
            c if c.is_whitespace()
                || matches!(c, '.' | '/' | '_' | '-' | '\u{2010}'..='\u{2015}') =>
            {
                // A run of separators is one separator.
                if !separator {
                    normal.push(' ');
                }
                separator = true;
                continue;
            }
            c => c,
        };
        separator = false;
        normal.push(c);
    }
    contains_pan(&normal)
}

/// True when `text` holds something shaped like an email address
/// (`local@domain.tld`).
pub fn contains_email(text: &str) -> bool {
    let b = text.as_bytes();
    b.iter().enumerate().any(|(at, c)| {
        if *c != b'@' {
            return false;
        }
        let local_ok = at > 0 && is_local(b[at - 1]);
        let domain: Vec<u8> = b[at + 1..]
            .iter()
            .copied()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
            .collect();
        let domain = domain.strip_suffix(b".").unwrap_or(&domain);
        let dot = domain.iter().rposition(|c| *c == b'.');
        local_ok && dot.is_some_and(|d| d > 0 && d + 2 < domain.len() + 1 && domain.len() - d > 2)
    })
}

fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b".!#$%&'*+/=?^_`{|}~-".contains(&c)
}

/// Replaces every `8-4-4-4-12` hex UUID, and every run of 32 or more hex
/// characters that contains a letter (a digest), with `x`s.
fn blank_uuids(text: &[u8]) -> Vec<u8> {
    let mut out = text.to_vec();
    let mut start = 0;
    while start < out.len() {
        let len = out[start..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if len >= 32 && out[start..start + len].iter().any(u8::is_ascii_alphabetic) {
            out[start..start + len].fill(b'x');
        }
        start += len.max(1);
    }
    let shape = [8usize, 4, 4, 4, 12];
    let mut i = 0;
    while i + 36 <= out.len() {
        let mut p = i;
        let mut ok = true;
        for (n, len) in shape.iter().enumerate() {
            if !out[p..p + len].iter().all(u8::is_ascii_hexdigit) {
                ok = false;
                break;
            }
            p += len;
            if n < 4 {
                if out[p] != b'-' {
                    ok = false;
                    break;
                }
                p += 1;
            }
        }
        if ok {
            out[i..i + 36].fill(b'x');
            i += 36;
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers() {
        assert!(contains_pan("ref 4012 8888 8888 1881 end"));
        assert!(contains_pan("4012-8888-8888-1881"));
        assert!(contains_pan("x4012888888881881y"));
        assert!(contains_pan("378282246310005"));
        assert!(!contains_pan("4111 1111 1111 1112"), "Luhn fails");
        assert!(!contains_pan("4012888888881881111111"), "too long a run");
        assert!(!contains_pan("2026-11-29T05:33:45.551Z"));
        assert!(!contains_pan("order 12345"));
        assert!(
            !contains_pan(r#"["0192f8a0-0000-4a00-8123-123456789012"]"#),
            "UUIDs are not card numbers"
        );
        assert!(
            !contains_pan("4012  8888 8888 1881"),
            "two spaces break a run"
        );
    }

    #[test]
    fn card_numbers_typed_into_free_text() {
        for typed in [
            "4012888888881881",
            "Ada 4012 8888 8888 1881",
            "4012-8888-8888-1881",
            "4012  8888\n8888\t1881",
            "4012.8888.8888.1881",
            "4012 - 8888 - 8888 - 1881",
            "\u{ff14}\u{ff10}\u{ff11}\u{ff12}888888881881",
            "3782 822463 10005",
        ] {
            assert!(contains_pan_typed(typed), "{typed:?}");
        }
        for fine in [
            "Ada Lovelace",
            "12 Rue de la Paix, 75002 Paris",
            "Flat 4012, 8888 Long Road",
            "4012 8888 8888 1882",
        ] {
            assert!(!contains_pan_typed(fine), "{fine:?}");
        }
    }

    #[test]
    fn random_digests_and_ids_are_never_card_numbers() {
        use ring::rand::SecureRandom;
        let rng = ring::rand::SystemRandom::new();
        for _ in 0..5000 {
            let mut d = [0u8; 32];
            rng.fill(&mut d).unwrap();
            let hex = crate::hex::encode(&d);
            assert!(!contains_pan(&hex), "{hex}");
            let id = crate::ids::new_id(&rng).unwrap().to_string();
            assert!(!contains_pan(&format!("[\"{id}\"]")), "{id}");
        }
    }

    #[test]
    fn emails() {
        assert!(contains_email("contact ada@example.com please"));
        assert!(contains_email("ADA@EXAMPLE.CO.UK"));
        assert!(!contains_email("no at sign"));
        assert!(!contains_email("@handle"));
        assert!(!contains_email("a@b"));
        assert!(!contains_email("urn:checkoutd:role:storefront"));
    }
}
