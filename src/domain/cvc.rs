//! `Cvc`: the card verification code. Validated, then discarded: it is never
//! persisted, not even encrypted (invariant 3). Zeroized on drop; `Debug`
//! prints `Cvc(***)`; no `Display`, `Serialize` or `Clone`, and no accessor.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::pan::CardBrand;

#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Cvc {
    digits: Vec<u8>,
}

/// Why a CVC was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CvcError {
    /// Not all digits, or the wrong count for the card's brand.
    Format,
}

impl Cvc {
    /// 3 digits, or 4 for Amex. Without a known brand (the card number was
    /// itself invalid) 3 or 4 digits are accepted so that only the card
    /// number is reported.
    pub fn parse(input: &str, brand: Option<CardBrand>) -> Result<Cvc, CvcError> {
        let bytes = input.as_bytes();
        if !bytes.iter().all(u8::is_ascii_digit) {
            return Err(CvcError::Format);
        }
        let ok = match brand {
            Some(b) => bytes.len() == b.cvc_len(),
            None => bytes.len() == 3 || bytes.len() == 4,
        };
        if !ok {
            return Err(CvcError::Format);
        }
        Ok(Cvc {
            digits: bytes.to_vec(),
        })
    }
}

impl fmt::Debug for Cvc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cvc(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_follow_the_brand() {
        assert!(Cvc::parse("123", Some(CardBrand::Visa)).is_ok());
        assert!(Cvc::parse("1234", Some(CardBrand::Visa)).is_err());
        assert!(Cvc::parse("1234", Some(CardBrand::Amex)).is_ok());
        assert!(Cvc::parse("123", Some(CardBrand::Amex)).is_err());
        assert!(Cvc::parse("12a", None).is_err());
        assert_eq!(
            format!("{:?}", Cvc::parse("987", None).unwrap()),
            "Cvc(***)"
        );
    }
}
