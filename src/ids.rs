//! Identifiers and timestamps.
//!
//! Ids are version 7 UUIDs: the creation millisecond, then 74 bits from the
//! system CSPRNG. An id therefore reveals when it was made (as the record's
//! `created_at` / `captured_at` already does) but nothing about volume, and
//! cannot be guessed. Timestamps are RFC 3339 UTC with millisecond
//! precision (`2026-11-29T05:10:30.123Z`), which sort as text.

use time::OffsetDateTime;
use time::macros::format_description;
use uuid::Uuid;

use crate::crypto::CryptoError;
use crate::crypto::random::Random;

/// A new record or order id: UUID version 7 (RFC 9562), a millisecond
/// timestamp followed by 74 random bits. Time-ordered ids go into the
/// database's indexes at their right-hand end, so a commit touches a few
/// index pages instead of one random page per index per order (measured:
/// docs/performance.md). The time they reveal is the order's `created_at`,
/// which is no secret.
pub fn new_id(rng: &impl Random) -> Result<Uuid, CryptoError> {
    let mut random = [0u8; 10];
    rng.fill_random(&mut random)?;
    let millis = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let millis = u64::try_from(millis).map_err(|_| CryptoError::Random)?;
    Ok(uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
}

pub fn timestamp(at: OffsetDateTime) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000Z"))
}

/// The time of a [`timestamp`] text, exactly as that writes it (never
/// another RFC 3339 spelling, a signed year, `now` or `infinity`): it must
/// come back the same text.
pub fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::PrimitiveDateTime::parse(text, &format)
        .ok()
        .map(time::PrimitiveDateTime::assume_utc)
        .filter(|at| timestamp(*at) == text)
}

pub fn now() -> String {
    timestamp(OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn ids_are_v7_and_timestamps_are_rfc3339_millis() {
        let rng = SystemRandom::new();
        let (a, b) = (new_id(&rng).unwrap(), new_id(&rng).unwrap());
        assert_eq!(a.get_version_num(), 7);
        assert_ne!(a, b);
        let t = timestamp(time::macros::datetime!(2026-11-29 05:10:30.123456 UTC));
        assert_eq!(t, "2026-11-29T05:10:30.123Z");
    }
}
