//! Card expiry: month 1–12, a four-digit year, not in the past. A card is
//! valid through the last day of its expiry month.

use time::{Date, Month, OffsetDateTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    month: u8,
    year: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryError {
    Month,
    Year,
    Expired,
}

impl Expiry {
    /// Checks against `today` (UTC). Years must be 2000–2099.
    pub fn parse(month: i64, year: i64, today: Date) -> Result<Expiry, ExpiryError> {
        let month = u8::try_from(month)
            .ok()
            .filter(|m| (1..=12).contains(m))
            .ok_or(ExpiryError::Month)?;
        let year = u16::try_from(year)
            .ok()
            .filter(|y| (2000..=2099).contains(y))
            .ok_or(ExpiryError::Year)?;
        let now_year = u16::try_from(today.year()).unwrap_or(0);
        let now_month = u8::from(today.month());
        if (year, month) < (now_year, now_month) {
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
        assert_eq!(Expiry::parse(13, 2030, today), Err(ExpiryError::Month));
        assert_eq!(Expiry::parse(0, 2030, today), Err(ExpiryError::Month));
        assert_eq!(Expiry::parse(1, 30, today), Err(ExpiryError::Year));
        assert_eq!(
            Expiry::parse(12, 2030, today).unwrap().ends(),
            Some(date!(2031 - 01 - 01))
        );
    }
}
