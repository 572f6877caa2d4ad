//! Auditing: the hash-chained access log ([`access_log`]) now; the
//! verification engine and signed reports build on it.

pub mod access_log;
