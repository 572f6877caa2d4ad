#![no_main]
//! See `checkoutd_fuzz::idempotency_key` (fuzz/src/lib.rs) for what this target checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| checkoutd_fuzz::idempotency_key(data));
