//! checkoutd — a secure checkout payment-capture service.
//!
//! A storefront posts the order form a customer filled in; checkoutd takes it
//! over mutual TLS only, encrypts card data and personal details before
//! anything touches disk, keeps billing, shipping and gift-recipient details
//! as separate records, and tags each record with the customer's consent.
//! The contract is `DESIGN.md`; security rationale lives next to the code.
//!
//! # Layout
//! - [`cli`] / [`config`] — the command line and validated settings.
//! - [`app`] — start-up: certificates, keyring, database, TLS, bind.
//! - [`server`] — the TLS accept loop, roles from client certificates
//!   ([`server::identity`]), the TLS policy ([`server::tls`]), shutdown.
//! - [`routes`] — the HTTP surface and the one table of who may call what.
//! - [`http`] — problem documents, security headers, the access log line,
//!   the per-IP rate limit.
//! - [`domain`] — order-form types that parse themselves.
//! - [`intake`] — order intake: idempotency, validation, sealing, commit.
//! - [`fulfillment`] — the warehouse's view: shipping and recipient keys only.
//! - [`consent`] — opt-outs, effective consent, proof of consent, audiences.
//! - [`crypto`] — AEAD, envelope encryption, the keyring, keyed MACs.
//! - [`store`] — one `Store` trait; its one implementation (`store/sql/`,
//!   queries both engines share) and one file per engine for what differs
//!   (`store/sqlite.rs`, `store/postgres.rs`).
//! - [`audit`] — the hash-chained access log, the verification engine,
//!   signed reports (a background job), the HTML report.
//! - [`keys`] — key life cycle: status, rotate, rewrap, destroy.
//! - [`retention`] — purge (crypto-shredding) and the retention schedule.
//! - [`pki`] — the development PKI (rcgen).
//! - [`ids`] / [`hex`] — random ids, timestamps, hex.
//! - [`telemetry`] — logging and metrics.
//! - [`failpoint`] — test-only crash points (the `failpoints` feature).

pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod consent;
pub mod crypto;
pub mod domain;
pub mod failpoint;
pub mod files;
pub mod fulfillment;
pub mod hardening;
pub mod hex;
pub mod http;
pub mod ids;
pub mod intake;
pub mod keys;
pub mod pki;
pub mod retention;
pub mod routes;
pub mod server;
pub mod store;
pub mod telemetry;
