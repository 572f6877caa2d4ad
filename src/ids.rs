//! Identifiers and timestamps.
//!
//! Ids are random (version 4) UUIDs from the system CSPRNG, so an order id
//! reveals nothing about volume or order. Timestamps are RFC 3339 UTC with
//! millisecond precision (`2026-11-29T05:10:30.123Z`), which sort as text.

use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use time::macros::format_description;
use uuid::Uuid;

use crate::crypto::CryptoError;

pub fn new_id(rng: &SystemRandom) -> Result<Uuid, CryptoError> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes).map_err(|_| CryptoError::Random)?;
    Ok(uuid::Builder::from_random_bytes(bytes).into_uuid())
}

pub fn timestamp(at: OffsetDateTime) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000Z"))
}

pub fn now() -> String {
    timestamp(OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v4_and_timestamps_are_rfc3339_millis() {
        let rng = SystemRandom::new();
        assert_eq!(new_id(&rng).unwrap().get_version_num(), 4);
        let t = timestamp(time::macros::datetime!(2026-11-29 05:10:30.123456 UTC));
        assert_eq!(t, "2026-11-29T05:10:30.123Z");
    }
}
