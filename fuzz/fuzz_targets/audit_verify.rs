#![no_main]
//! See `checkoutd_fuzz::audit_verify` (fuzz/src/lib.rs) for what this target checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| checkoutd_fuzz::audit_verify(data));
