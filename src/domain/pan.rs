//! `Pan`: a primary account number (full card number) and its brand.
//!
//! Invariant 2: the digits live only inside this type. It zeroizes on drop,
//! its `Debug` prints `Pan(****1881)`, and it has no `Display`, `Serialize`
//! or `Clone`. The one way to read the digits is [`Pan::expose_digits`],
//! whose callers (the envelope sealer and the keyed fingerprint) say why.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Card networks we accept, detected from the issuer identification number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CardBrand {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Jcb,
    Diners,
    Unionpay,
}

impl CardBrand {
    pub fn as_str(self) -> &'static str {
        match self {
            CardBrand::Visa => "visa",
            CardBrand::Mastercard => "mastercard",
            CardBrand::Amex => "amex",
            CardBrand::Discover => "discover",
            CardBrand::Jcb => "jcb",
            CardBrand::Diners => "diners",
            CardBrand::Unionpay => "unionpay",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            CardBrand::Visa,
            CardBrand::Mastercard,
            CardBrand::Amex,
            CardBrand::Discover,
            CardBrand::Jcb,
            CardBrand::Diners,
            CardBrand::Unionpay,
        ]
        .into_iter()
        .find(|b| b.as_str() == s)
    }

    /// Card number lengths valid for the brand.
    fn lengths(self) -> &'static [usize] {
        match self {
            CardBrand::Visa => &[13, 16, 19],
            CardBrand::Mastercard => &[16],
            CardBrand::Amex => &[15],
            CardBrand::Discover | CardBrand::Jcb | CardBrand::Unionpay => &[16, 17, 18, 19],
            CardBrand::Diners => &[14, 15, 16, 17, 18, 19],
        }
    }

    /// The CVC length for the brand (4 for Amex, 3 otherwise).
    pub fn cvc_len(self) -> usize {
        if self == CardBrand::Amex { 4 } else { 3 }
    }

    /// Detects the brand from the leading digits.
    fn detect(digits: &[u8]) -> Option<CardBrand> {
        let prefix = |n: usize| -> u32 {
            digits
                .iter()
                .take(n)
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
        };
        if digits.len() < 6 {
            return None;
        }
        let (p1, p2, p3, p4, p6) = (prefix(1), prefix(2), prefix(3), prefix(4), prefix(6));
        Some(match () {
            _ if p1 == 4 => CardBrand::Visa,
            _ if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) => CardBrand::Mastercard,
            _ if p2 == 34 || p2 == 37 => CardBrand::Amex,
            _ if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 => CardBrand::Discover,
            _ if (622_126..=622_925).contains(&p6) => CardBrand::Discover,
            _ if p2 == 62 => CardBrand::Unionpay,
            _ if (3528..=3589).contains(&p4) => CardBrand::Jcb,
            _ if (300..=305).contains(&p3) || p3 == 309 || p2 == 36 || p2 == 38 || p2 == 39 => {
                CardBrand::Diners
            }
            _ => return None,
        })
    }
}

/// Why a card number was refused. Carries no digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanError {
    /// Characters other than digits, spaces and dashes.
    Format,
    /// No brand we accept starts with these digits.
    UnknownBrand,
    /// Wrong number of digits for the detected brand.
    Length,
    /// The Luhn check digit is wrong.
    Luhn,
}

/// A validated card number. See the module documentation.
///
/// ```
/// use checkoutd::domain::pan::{CardBrand, Pan, PanError};
///
/// let pan = Pan::parse("4012 8888 8888 1881").unwrap();
/// assert_eq!(pan.brand(), CardBrand::Visa);
/// assert_eq!(format!("{pan:?}"), "Pan(****1881)");
/// assert_eq!(Pan::parse("4012 8888 8888 1882").unwrap_err(), PanError::Luhn);
/// ```
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Pan {
    digits: Vec<u8>,
    #[zeroize(skip)]
    brand: CardBrand,
}

impl Pan {
    /// Parses digits with optional spaces and dashes. The input stays the
    /// caller's to zeroize; the digits are copied into a buffer of exactly
    /// the right capacity (no reallocation leaves copies behind).
    pub fn parse(input: &str) -> Result<Pan, PanError> {
        let mut digits = Zeroizing::new(Vec::with_capacity(input.len()));
        for c in input.bytes() {
            match c {
                b'0'..=b'9' => digits.push(c),
                b' ' | b'-' => {}
                _ => return Err(PanError::Format),
            }
        }
        if !(12..=19).contains(&digits.len()) {
            return Err(PanError::Length);
        }
        let brand = CardBrand::detect(&digits).ok_or(PanError::UnknownBrand)?;
        if !brand.lengths().contains(&digits.len()) {
            return Err(PanError::Length);
        }
        if !luhn_valid(&digits) {
            return Err(PanError::Luhn);
        }
        Ok(Pan {
            digits: std::mem::take(&mut *digits),
            brand,
        })
    }

    pub fn brand(&self) -> CardBrand {
        self.brand
    }

    /// The last four digits (not secret under PCI DSS; shown to storefronts).
    pub fn last4(&self) -> String {
        let start = self.digits.len().saturating_sub(4);
        String::from_utf8_lossy(&self.digits[start..]).into_owned()
    }

    /// The full digits. Callers: the card envelope sealer and the keyed
    /// fingerprint, nothing else.
    pub fn expose_digits(&self) -> &[u8] {
        &self.digits
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan(****{})", self.last4())
    }
}

/// Whether ASCII `digits` are a card number `Pan::parse` would accept: a
/// brand we know, a length valid for it, the Luhn check. The detectors'
/// stricter test, for digits that only *might* be a card number
/// (`detect`), where a bare Luhn check would refuse one in ten.
pub fn is_card_number(digits: &[u8]) -> bool {
    digits.iter().all(u8::is_ascii_digit)
        && CardBrand::detect(digits).is_some_and(|b| b.lengths().contains(&digits.len()))
        && luhn_valid(digits)
}

/// The Luhn (mod 10) check over ASCII digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d.wrapping_sub(b'0'));
        if v > 9 {
            return false;
        }
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brands_and_lengths() {
        let cases = [
            ("4000 0566 5566 5556", CardBrand::Visa),
            ("4222222222222", CardBrand::Visa),
            ("5105-1051-0510-5100", CardBrand::Mastercard),
            ("2223003122003222", CardBrand::Mastercard),
            ("378282246310005", CardBrand::Amex),
            ("6011111111111117", CardBrand::Discover),
            ("3566002020360505", CardBrand::Jcb),
            ("36227206271667", CardBrand::Diners),
            ("3056930009020004", CardBrand::Diners),
            ("6200000000000005", CardBrand::Unionpay),
        ];
        for (input, brand) in cases {
            let pan = Pan::parse(input).unwrap_or_else(|e| panic!("{input}: {e:?}"));
            assert_eq!(pan.brand(), brand, "{input}");
        }
    }

    #[test]
    fn rejections() {
        assert_eq!(Pan::parse("4111111111111112").unwrap_err(), PanError::Luhn);
        assert_eq!(Pan::parse("4111x111").unwrap_err(), PanError::Format);
        assert_eq!(
            Pan::parse("40128888888818811234").unwrap_err(),
            PanError::Length
        );
        // Amex with 16 digits (Luhn-valid) is the wrong length for the brand.
        assert_eq!(
            Pan::parse("3782822463100005").unwrap_err(),
            PanError::Length
        );
        assert_eq!(
            Pan::parse("9999999999999995").unwrap_err(),
            PanError::UnknownBrand
        );
        assert_eq!(Pan::parse("").unwrap_err(), PanError::Length);
    }

    #[test]
    fn debug_is_masked() {
        let pan = Pan::parse("4012 8888 8888 1881").unwrap_or_else(|_| panic!("valid"));
        assert_eq!(format!("{pan:?}"), "Pan(****1881)");
        assert_eq!(pan.last4(), "1881");
    }
}
