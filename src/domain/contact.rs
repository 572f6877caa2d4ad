//! Email addresses, phone numbers, countries and currencies.

use super::text::Personal;

/// What [`Email::parse`] accepts (before trimming), as an ECMA-262 regular
/// expression for the OpenAPI schemas (together with at most 254 bytes).
pub const EMAIL_PATTERN: &str = r#"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"#;

/// The OpenAPI schema of an email address as [`Email::parse`] accepts it.
pub fn email_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(3))
        .max_length(Some(254))
        .pattern(Some(EMAIL_PATTERN))
        .examples([serde_json::json!("ada@example.com")])
        .build()
}

/// An email address, valid under the HTML5 `type=email` rule, normalised
/// (trimmed, lower-case) — the form used for storage and the blind index.
#[derive(Debug, PartialEq, Eq)]
pub struct Email(Personal);

impl Email {
    pub fn parse(input: &str) -> Option<Email> {
        let trimmed = input.trim();
        if trimmed.is_empty() || trimmed.len() > 254 {
            return None;
        }
        let (local, domain) = trimmed.split_once('@')?;
        let local_ok = !local.is_empty()
            && local
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b".!#$%&'*+/=?^_`{|}~-".contains(&c));
        let domain_ok = !domain.is_empty()
            && domain.split('.').all(|label| {
                let b = label.as_bytes();
                !b.is_empty()
                    && b.len() <= 63
                    && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                    && b.first() != Some(&b'-')
                    && b.last() != Some(&b'-')
            });
        (local_ok && domain_ok)
            .then(|| Email(Personal::from_validated(trimmed.to_ascii_lowercase())))
    }

    /// The normalised address. For sealing and the blind index only.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// Whether the address holds a card number: in the local part,
    /// however grouped and at the start of a run
    /// (`super::detect::contains_card_number`), or anywhere — local part or
    /// domain — as a person types one (`contains_card_typed`:
    /// `ada.1.5105.1051.0510.5100@…`, `ada@5105105105105100.example`).
    pub fn holds_card_number(&self) -> bool {
        let local = self.expose().split('@').next().unwrap_or("");
        super::detect::contains_card_number(local)
            || super::detect::contains_card_typed(self.expose())
    }

    /// A customer's contact address, as every form that takes one reads
    /// it (the order, both opt-outs): valid, and no card number in it — no
    /// order accepts one, so no customer has one. The error is a field
    /// error's code and message.
    pub fn parse_contact(s: &str) -> Result<Email, (&'static str, &'static str)> {
        let email = Email::parse(s).ok_or(("invalid_email", "Not a valid email address"))?;
        if email.holds_card_number() {
            return Err((
                "looks_like_card_number",
                "An email address must not hold a card number",
            ));
        }
        Ok(email)
    }
}

/// A phone number, leniently: 7–20 digits, an optional leading `+`, and the
/// separators space, `-`, `.`, `/`, `(`, `)`. Kept as written (trimmed).
#[derive(Debug, PartialEq, Eq)]
pub struct Phone(Personal);

impl Phone {
    pub fn parse(input: &str) -> Option<Phone> {
        let trimmed = input.trim();
        if trimmed.len() > 40 {
            return None;
        }
        let body = trimmed.strip_prefix('+').unwrap_or(trimmed);
        let mut digits = 0;
        for c in body.chars() {
            match c {
                '0'..='9' => digits += 1,
                ' ' | '-' | '.' | '/' | '(' | ')' => {}
                _ => return None,
            }
        }
        (7..=20)
            .contains(&digits)
            .then(|| Phone(Personal::from_validated(trimmed.to_owned())))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// Whether its digits are a card number
    /// (`super::detect::phone_is_card_number`), or it holds one after other
    /// digits (`contains_card_typed`: `+1 5105 1051 0510 5100`).
    pub fn is_card_number(&self) -> bool {
        super::detect::phone_is_card_number(self.expose())
            || super::detect::contains_card_typed(self.expose())
    }
}

/// An ISO 3166-1 alpha-2 country code, upper-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Country([u8; 2]);

impl Country {
    pub fn parse(input: &str) -> Option<Country> {
        let upper = input.trim().to_ascii_uppercase();
        let code = isocountry::CountryCode::for_alpha2(&upper).ok()?;
        let bytes = code.alpha2().as_bytes();
        Some(Country([*bytes.first()?, *bytes.get(1)?]))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

/// An ISO 4217 currency a customer can pay in: with minor units (XAU, XXX
/// and the like, which have none, are refused), not a fund code (BOV, CLF,
/// USN: units of account, not money a card is charged in) and not
/// withdrawn (HRK since the euro, SLL, ZWL: a price in one is a stale
/// storefront setting). Case-insensitive on input, upper-case after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency {
    code: iso_currency::Currency,
    minor_units: u16,
}

impl Currency {
    pub fn parse(input: &str) -> Option<Currency> {
        let code = iso_currency::Currency::from_code(&input.trim().to_ascii_uppercase())?;
        if code.is_fund() || code.is_superseded().is_some() {
            return None;
        }
        let minor_units = code.exponent()?;
        Some(Currency { code, minor_units })
    }

    pub fn code(&self) -> &'static str {
        self.code.code()
    }

    /// Digits after the decimal point: 2 for USD, 0 for JPY, 3 for BHD.
    pub fn minor_units(&self) -> u16 {
        self.minor_units
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse(" Ada@Example.COM ").unwrap().expose(),
            "ada@example.com"
        );
        assert!(Email::parse("a.b+tag@sub.example.co.uk").is_some());
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@-x.com",
            "ada@x-.com",
            "a b@x.com",
            "ada@x..com",
            "ada@@x.com",
        ] {
            assert!(Email::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn phones() {
        assert!(Phone::parse("+1 949 555 0100").is_some());
        assert!(Phone::parse("(030) 1234-567").is_some());
        assert!(Phone::parse("123456").is_none());
        assert!(Phone::parse("+1 949 555 0100 ext 4").is_none());
        assert!(Phone::parse("1+2345678").is_none());
        assert!(Phone::parse(&"1".repeat(21)).is_none());
    }

    #[test]
    fn countries_and_currencies() {
        assert_eq!(Country::parse("us").unwrap().as_str(), "US");
        assert!(Country::parse("XX").is_none());
        assert!(Country::parse("USA").is_none());
        assert_eq!(Currency::parse("JPY").unwrap().minor_units(), 0);
        assert_eq!(Currency::parse("BHD").unwrap().minor_units(), 3);
        assert_eq!(Currency::parse("USD").unwrap().code(), "USD");
        assert!(Currency::parse("XAU").is_none());
        for not_money in ["HRK", "SLL", "ZWL", "CUC", "BOV", "CLF", "USN"] {
            assert!(Currency::parse(not_money).is_none(), "{not_money}");
        }
        for money in ["EUR", "SLE", "VED", "CUP", "CHF", "CLP"] {
            assert!(Currency::parse(money).is_some(), "{money}");
        }
        assert_eq!(Currency::parse("usd").unwrap().code(), "USD");
        assert!(Currency::parse("ABC").is_none());
    }
}
