//! HTTP plumbing shared by every route: problem documents, security headers,
//! the per-request access log line and the request timeout.

pub mod access_log;
pub mod guard;
pub mod headers;
pub mod problem;
pub mod rate_limit;

pub use problem::{FieldError, Problem};
