//! The order form as types that parse themselves.
//!
//! Raw input (JSON, or a form turned into the same tree by [`form`]) becomes
//! an [`order::OrderForm`] once, in [`order::parse`]; nothing downstream sees
//! a raw string. Secret and personal values live in types that zeroize on
//! drop and mask their `Debug`: [`pan::Pan`], [`cvc::Cvc`],
//! [`text::Personal`] and the contact types built on it.

pub mod consent;
pub mod contact;
pub mod cvc;
pub mod detect;
pub mod expiry;
pub mod form;
pub mod json;
pub mod order;
pub mod order_schema;
pub mod pan;
pub mod text;
