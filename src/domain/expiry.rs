//! Card expiry: month 1–12, a four-digit year, not in the past and not
//! more than [`MAX_YEARS_AHEAD`] ahead. A card is valid through the last
//! day of its expiry month.

use time::{Date, Month, OffsetDateTime};

/// The furthest ahead an expiry year may be. Cards are issued for a few
/// years; a year beyond this is a typing mistake (`2093` for `2029`).
pub const MAX_YEARS_AHEAD: i64 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    month: u8,
    year: u16,
}

/// What is wrong with an expiry; the month and the year are judged apart,
/// so both are reported when both are wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryError {
    /// Not a month (1–12) and/or not a year (a four-digit year, at most
    /// [`MAX_YEARS_AHEAD`] ahead; a past year is [`ExpiryError::Expired`]).
    Invalid {
        month: bool,
        year: bool,
    },
    Expired,
}

impl Expiry {
    /// Checks against `today` (UTC).
    pub fn parse(month: i64, year: i64, today: Date) -> Result<Expiry, ExpiryError> {
        let now_year = i64::from(today.year());
        let month_ok = (1..=12).contains(&month);
        let year_ok = (2000..=now_year + MAX_YEARS_AHEAD).contains(&year);
        let (Ok(month), Ok(year), true, true) =
            (u8::try_from(month), u16::try_from(year), month_ok, year_ok)
        else {
            return Err(ExpiryError::Invalid {
                month: !month_ok,
                year: !year_ok,
            });
        };
        if (i64::from(year), month) < (now_year, u8::from(today.month())) {
            return Err(ExpiryError::Expired);
        }
        Ok(Expiry { month, year })
    }

    pub fn parse_now(month: i64, year: i64) -> Result<Expiry, ExpiryError> {
        Self::parse(month, year, OffsetDateTime::now_utc().date())
    }

    pub fn month(self) -> u8 {
        self.month
    }

    pub fn year(self) -> u16 {
        self.year
    }

    /// The first day after the card stops being valid.
    pub fn ends(self) -> Option<Date> {
        let (y, m) = if self.month == 12 {
            (i32::from(self.year) + 1, 1)
        } else {
            (i32::from(self.year), self.month + 1)
        };
        Date::from_calendar_date(y, Month::try_from(m).ok()?, 1).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn current_month_is_valid_last_month_is_not() {
        let today = date!(2026 - 11 - 29);
        assert!(Expiry::parse(11, 2026, today).is_ok());
        assert_eq!(Expiry::parse(10, 2026, today), Err(ExpiryError::Expired));
        assert_eq!(Expiry::parse(12, 2025, today), Err(ExpiryError::Expired));
        let invalid = |month, year| Err(ExpiryError::Invalid { month, year });
        assert_eq!(Expiry::parse(13, 2030, today), invalid(true, false));
        assert_eq!(Expiry::parse(0, 2030, today), invalid(true, false));
        assert_eq!(Expiry::parse(1, 30, today), invalid(false, true));
        assert_eq!(Expiry::parse(13, 1999, today), invalid(true, true));
        assert_eq!(Expiry::parse(-1, i64::MAX, today), invalid(true, true));
        // Up to 20 years ahead, not one more.
        assert!(Expiry::parse(12, 2046, today).is_ok());
        assert_eq!(Expiry::parse(1, 2047, today), invalid(false, true));
        assert_eq!(
            Expiry::parse(12, 2030, today).unwrap().ends(),
            Some(date!(2031 - 01 - 01))
        );
    }
}
