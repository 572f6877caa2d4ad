#![no_main]
//! See `checkoutd_fuzz::master_shares` (fuzz/src/lib.rs) for what this target checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| checkoutd_fuzz::master_shares(data));
