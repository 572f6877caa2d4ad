//! Signed reports: a report's canonical bytes and their Ed25519 signature.
//!
//! Canonical bytes: the report as compact JSON (no white space) with every
//! object's members sorted by name (byte order), strings escaped as
//! `serde_json` does (non-ASCII kept as UTF-8). Python reproduces them with
//! `json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()`.
//! The report holds only ASCII (ids, counts, static text), so the two agree.

use base64::Engine;
use ring::signature::KeyPair;
use serde::Serialize;
use serde_json::{Value, json};

use crate::crypto::CryptoError;
use crate::crypto::keyring::Keyring;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The public half of the report-signing key, as auditors need it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PublicKeyInfo {
    pub key_id: String,
    #[schema(value_type = String)]
    pub algorithm: &'static str,
    /// The 32-byte raw public key, hex.
    pub public_key_hex: String,
    /// SubjectPublicKeyInfo PEM, for `openssl pkeyutl -verify`.
    pub public_key_pem: String,
}

pub fn public_key(keyring: &Keyring) -> Result<PublicKeyInfo, CryptoError> {
    let (version, pair) = keyring.signing_key()?;
    let raw = pair.public_key().as_ref();
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(raw);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    Ok(PublicKeyInfo {
        key_id: format!("report-signing/v{version}"),
        algorithm: "Ed25519",
        public_key_hex: crate::hex::encode(raw),
        public_key_pem: format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"),
    })
}

/// Compact JSON with object members sorted by name, recursively.
pub fn canonical_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Serialising a string cannot fail.
                out.extend(serde_json::to_vec(k).unwrap_or_default());
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).unwrap_or_default()),
    }
}

/// The shape [`sign`] produces for the verification report (OpenAPI only).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes `sign`'s output; never built.
pub struct SignedReport {
    report: crate::audit::verify::Report,
    signature: ReportSignature,
}

/// The Ed25519 signature over the report's canonical JSON.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ReportSignature {
    /// `Ed25519`.
    algorithm: String,
    key_id: String,
    public_key_hex: String,
    value_hex: String,
    /// What was signed, in words.
    signed_bytes: String,
}

/// `{"report": …, "signature": {…}}` with the signature over the report's
/// canonical bytes.
pub fn sign<T: Serialize>(report: &T, keyring: &Keyring) -> Result<Value, CryptoError> {
    let value = serde_json::to_value(report).map_err(|_| CryptoError::Malformed)?;
    let bytes = canonical_bytes(&value);
    let (_, pair) = keyring.signing_key()?;
    let signature = pair.sign(&bytes);
    let key = public_key(keyring)?;
    Ok(json!({
        "report": value,
        "signature": {
            "algorithm": "Ed25519",
            "key_id": key.key_id,
            "public_key_hex": key.public_key_hex,
            "value_hex": crate::hex::encode(signature.as_ref()),
            "signed_bytes": "the canonical JSON of `report`: compact, object members sorted by name",
        }
    }))
}

/// Checks a signed report document against a public key (tests and tools).
pub fn verify_signed(document: &Value, public_key_raw: &[u8]) -> bool {
    let (Some(report), Some(sig)) = (
        document.get("report"),
        document
            .pointer("/signature/value_hex")
            .and_then(Value::as_str),
    ) else {
        return false;
    };
    let Some(sig) = crate::hex::decode(sig) else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key_raw)
        .verify(&canonical_bytes(report), &sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_bytes_sort_members_recursively() {
        let v = json!({"b": 1, "a": {"d": [1, {"z": true, "y": null}], "c": "x"}});
        assert_eq!(
            String::from_utf8(canonical_bytes(&v)).unwrap(),
            r#"{"a":{"c":"x","d":[1,{"y":null,"z":true}]},"b":1}"#
        );
    }

    #[test]
    fn signatures_verify_and_detect_edits() {
        let ring = Keyring::generate(&ring::rand::SystemRandom::new(), "t").unwrap();
        let doc = sign(&json!({"verified": true, "failures": []}), &ring).unwrap();
        let key = crate::hex::decode(&public_key(&ring).unwrap().public_key_hex).unwrap();
        assert!(verify_signed(&doc, &key));
        let mut edited = doc.clone();
        edited["report"]["verified"] = json!(false);
        assert!(!verify_signed(&edited, &key));
        assert!(
            public_key(&ring)
                .unwrap()
                .public_key_pem
                .starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA")
        );
    }
}
