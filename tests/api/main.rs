//! Integration tests: the real server, real TLS, real client certificates.
//! One test binary (faster to link); each test spawns its own server on
//! 127.0.0.1:0 with its own data directory and PKI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod abuse;
mod audit;
mod cli;
mod commit;
mod consent;
mod fulfillment;
mod helpers;
mod keys;
mod leaks;
mod multi;
mod openapi;
mod orders;
mod purge;
mod tls;
