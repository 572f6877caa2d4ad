//! Who is calling: the role carried in a verified client certificate.
//!
//! rustls has already checked that a presented certificate chains to the
//! client CA before anything here runs; this module only reads the role from
//! the certificate's URI subject-alternative-name `urn:checkoutd:role:<role>`.
//! A certificate with no role URI, an unknown role, or more than one role URI
//! is *certified but roleless*: it is answered 403, never guessed at.

use std::fmt;
use std::net::SocketAddr;

use ring::digest;
use rustls_pki_types::CertificateDer;
use serde::Serialize;

/// Prefix of the URI SAN that names a client's role.
pub const ROLE_URI_PREFIX: &str = "urn:checkoutd:role:";

/// The four kinds of client (DESIGN.md, "Users and roles").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Storefront,
    Fulfillment,
    Auditor,
    Marketing,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Storefront,
        Role::Fulfillment,
        Role::Auditor,
        Role::Marketing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Storefront => "storefront",
            Role::Fulfillment => "fulfillment",
            Role::Auditor => "auditor",
            Role::Marketing => "marketing",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The URI SAN a certificate for this role carries.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SHA-256 of a client certificate's DER encoding: the stable name of one
/// client, used to scope idempotency keys and in the access log.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint([u8; 32]);

impl CertFingerprint {
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        let d = digest::digest(&digest::SHA256, cert.as_ref());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({})", self.to_hex())
    }
}

/// What the TLS handshake established about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdentity {
    /// No client certificate was presented.
    Anonymous,
    /// A certificate chaining to the client CA was presented. `role` is
    /// `None` when it names no role, an unknown one, or several.
    Certified {
        fingerprint: CertFingerprint,
        role: Option<Role>,
    },
}

impl ClientIdentity {
    /// Reads the identity from the peer certificates rustls verified.
    pub fn from_peer_certificates(certs: Option<&[CertificateDer<'static>]>) -> Self {
        match certs.and_then(|c| c.first()) {
            None => ClientIdentity::Anonymous,
            Some(leaf) => ClientIdentity::Certified {
                fingerprint: CertFingerprint::of(leaf),
                role: role_of(leaf),
            },
        }
    }

    pub fn role(&self) -> Option<Role> {
        match self {
            ClientIdentity::Anonymous => None,
            ClientIdentity::Certified { role, .. } => *role,
        }
    }
}

/// The role named by the certificate's URI SANs: exactly one
/// `urn:checkoutd:role:*` URI naming a known role, or `None`.
fn role_of(cert: &CertificateDer<'_>) -> Option<Role> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut roles = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            // The URN's scheme and namespace are case-insensitive (RFC
            // 8141): `URN:CHECKOUTD:role:auditor` is a role URI too, and
            // counts as a second one. Only the exact lower-case form names
            // a role.
            GeneralName::URI(uri)
                if uri
                    .get(..ROLE_URI_PREFIX.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(ROLE_URI_PREFIX)) =>
            {
                Some(uri.strip_prefix(ROLE_URI_PREFIX))
            }
            _ => None,
        });
    let first = roles.next()??;
    if roles.next().is_some() {
        return None;
    }
    Role::parse(first)
}

/// Everything known about the connection a request arrived on; inserted into
/// every request's extensions by the accept loop.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Negotiated protocol, e.g. `TLSv1.3`.
    pub tls_version: &'static str,
    pub identity: ClientIdentity,
}

/// A caller that passed the role guard of its route: handlers take this as a
/// typed value instead of looking at certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    pub fingerprint: CertFingerprint,
}
