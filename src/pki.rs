//! The development PKI: a throw-away CA, a server certificate and one client
//! certificate per role, made with rcgen.
//!
//! For development and tests only. Production deployments bring their own
//! server certificate and client CA (`--certs-dir`, `--client-ca`). The CA's
//! private key is never written to disk: to issue new certificates, make a
//! new PKI. Private key files are written with mode 0600.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::server::identity::Role;

/// File names of the development PKI inside a certs directory.
pub const CA_FILE: &str = "ca.pem";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server-key.pem";

pub fn client_cert_file(role: Role) -> String {
    format!("{role}.pem")
}

pub fn client_key_file(role: Role) -> String {
    format!("{role}-key.pem")
}

/// Every file a development PKI writes.
/// The development CA's common name.
const DEV_CA_NAME: &str = "checkoutd development CA";

fn dev_pki_files() -> Vec<String> {
    let mut files = vec![
        CA_FILE.to_owned(),
        SERVER_CERT_FILE.to_owned(),
        SERVER_KEY_FILE.to_owned(),
    ];
    for role in Role::ALL {
        files.push(client_cert_file(role));
        files.push(client_key_file(role));
    }
    files
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a development certificate failed")]
    Generate(#[from] rcgen::Error),
    #[error("writing the development PKI to {path} failed")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Some of the files are there already: never written beside or over
    /// them, as a new CA would replace the one the clients' certificates
    /// come from (and `serve` finding only some, say a key that failed to
    /// mount, must not paper over it).
    #[error(
        "{dir} already holds {found}; a development PKI is written only into a \
         directory holding none of its files (restore what is missing, or move them away)"
    )]
    Occupied { dir: PathBuf, found: String },
    #[error("a certificate to revoke is not one PEM X.509 certificate")]
    NotACertificate,
    /// `certs dev --replace` found files it cannot tell are a development
    /// PKI's: never removed (a production server key, say).
    #[error(
        "{dir} holds {file}, which is not the development PKI's (or there is no development ca.pem \
         beside it); --replace replaces a development PKI only: move the files away yourself"
    )]
    NotDevelopment { dir: PathBuf, file: String },
}

/// A certificate and its private key, both PEM. The key zeroizes on drop.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuedCert { key: <redacted> }")
    }
}

/// A freshly generated development PKI, held in memory.
pub struct DevPki {
    ca_cert: Certificate,
    ca_key: KeyPair,
    pub server: IssuedCert,
    pub clients: Vec<(Role, IssuedCert)>,
}

impl std::fmt::Debug for DevPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevPki { .. }")
    }
}

impl DevPki {
    /// A new CA, a server certificate for localhost / 127.0.0.1 / ::1 and one
    /// client certificate per role.
    pub fn generate() -> Result<Self, PkiError> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name = name(DEV_CA_NAME);
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut ca, 3650);
        let ca_cert = ca.self_signed(&ca_key)?;

        let mut pki = DevPki {
            ca_cert,
            ca_key,
            server: IssuedCert {
                cert_pem: String::new(),
                key_pem: Zeroizing::new(String::new()),
            },
            clients: Vec::new(),
        };
        pki.server = pki.issue_server()?;
        for role in Role::ALL {
            let cert = pki.issue_client(&format!("checkoutd {role}"), &[role.uri()])?;
            pki.clients.push((role, cert));
        }
        Ok(pki)
    }

    pub fn ca_pem(&self) -> String {
        self.ca_cert.pem()
    }

    /// The client certificate of one role.
    pub fn client(&self, role: Role) -> Option<&IssuedCert> {
        self.clients
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, c)| c)
    }

    fn issue_server(&self) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        params.distinguished_name = name("localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, 365);
        self.sign(params)
    }

    /// Issues a client certificate carrying the given URI SANs. Tests use it
    /// to make certificates with no role, an unknown role or two roles.
    pub fn issue_client(&self, common_name: &str, uris: &[String]) -> Result<IssuedCert, PkiError> {
        self.issue_client_until(
            common_name,
            uris,
            OffsetDateTime::now_utc() + Duration::days(365),
        )
    }

    /// As [`issue_client`](Self::issue_client), valid until `not_after`
    /// (tests make one that expires while its connection is open).
    pub fn issue_client_until(
        &self,
        common_name: &str,
        uris: &[String],
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, 365);
        params.not_after = not_after;
        self.sign(params)
    }

    /// A certificate revocation list of this CA (PEM) revoking `revoked`,
    /// issued at `this_update` and valid until `next_update` — what an
    /// operator's CA publishes for `serve --client-crl` (tests revoke a
    /// role's certificate with it, or make an expired list).
    pub fn revocation_list(
        &self,
        revoked: &[&IssuedCert],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String, PkiError> {
        // Numbered by its time, so that a later list has a higher number.
        let number = u64::try_from(this_update.unix_timestamp()).unwrap_or(1);
        self.revocation_list_numbered(revoked, this_update, next_update, number)
    }

    /// [`Self::revocation_list`] with a CRL number of the caller's choosing
    /// (tests: two lists issued within one second).
    pub fn revocation_list_numbered(
        &self,
        revoked: &[&IssuedCert],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        number: u64,
    ) -> Result<String, PkiError> {
        let revoked_certs = revoked
            .iter()
            .map(|cert| {
                let (_, pem) = x509_parser::pem::parse_x509_pem(cert.cert_pem.as_bytes())
                    .map_err(|_| PkiError::NotACertificate)?;
                let parsed = pem.parse_x509().map_err(|_| PkiError::NotACertificate)?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(
                        parsed.tbs_certificate.raw_serial(),
                    ),
                    revocation_time: this_update,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.ca_cert, &self.ca_key)?.pem()?)
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    /// Writes `ca.pem`, `server.pem`, `server-key.pem` and, per role,
    /// `<role>.pem` and `<role>-key.pem` into `dir` (created if missing).
    /// Key files get mode 0600.
    pub fn write_to(&self, dir: &Path) -> Result<(), PkiError> {
        fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.to_owned(),
            source,
        })?;
        // All or nothing: no file is written beside an existing one.
        let (present, missing): (Vec<_>, Vec<_>) = dev_pki_files()
            .into_iter()
            .partition(|f| dir.join(f).symlink_metadata().is_ok());
        if !present.is_empty() {
            let mut found = present.join(", ");
            if !missing.is_empty() {
                found = format!("{found} but not {}", missing.join(", "));
            }
            return Err(PkiError::Occupied {
                dir: dir.to_owned(),
                found,
            });
        }
        let ca = self.ca_pem();
        let mut files: Vec<(PathBuf, &[u8], bool)> = vec![
            (dir.join(CA_FILE), ca.as_bytes(), false),
            (
                dir.join(SERVER_CERT_FILE),
                self.server.cert_pem.as_bytes(),
                false,
            ),
            (
                dir.join(SERVER_KEY_FILE),
                self.server.key_pem.as_bytes(),
                true,
            ),
        ];
        for (role, cert) in &self.clients {
            files.push((
                dir.join(client_cert_file(*role)),
                cert.cert_pem.as_bytes(),
                false,
            ));
            files.push((
                dir.join(client_key_file(*role)),
                cert.key_pem.as_bytes(),
                true,
            ));
        }
        // A failure part way (a full disk) removes what this call wrote: a
        // partial set would stop the next start, which refuses one.
        for (n, (path, bytes, secret)) in files.iter().enumerate() {
            if let Err(error) = write_file(path, bytes, *secret) {
                for (written, _, _) in &files[..n] {
                    let _ = fs::remove_file(written);
                }
                return Err(error);
            }
        }
        Ok(())
    }
}

/// `certs dev --replace`: a new development PKI in `dir` in place of the
/// one there (or of none). Only files that are the development PKI's are
/// removed: `ca.pem` must be the development CA and `server.pem` and each
/// `<role>.pem` issued by it; anything else — or other files of the set
/// with no development `ca.pem` beside them — is refused, nothing removed.
/// Private key files go with their certificates. Not atomic: a crash part
/// way leaves some files, which `serve` names and a second run replaces.
pub fn replace_dev_pki(dir: &Path) -> Result<(), PkiError> {
    let refuse = |file: &str| PkiError::NotDevelopment {
        dir: dir.to_owned(),
        file: file.to_owned(),
    };
    let present: Vec<String> = dev_pki_files()
        .into_iter()
        .filter(|f| dir.join(f).symlink_metadata().is_ok())
        .collect();
    if !present.is_empty() {
        // ca.pem is the client-CA bundle when --client-ca is not given: it
        // must hold the development CA and nothing else.
        if !matches!(development_certs(&dir.join(CA_FILE), true), Some(n) if n.len() == 1) {
            return Err(refuse(CA_FILE));
        }
        let pairs = std::iter::once((SERVER_CERT_FILE.to_owned(), SERVER_KEY_FILE.to_owned()))
            .chain(
                Role::ALL
                    .into_iter()
                    .map(|r| (client_cert_file(r), client_key_file(r))),
            );
        for (cert, key) in pairs {
            let spki = if present.contains(&cert) {
                match development_certs(&dir.join(&cert), false).as_deref() {
                    Some([spki]) => Some(spki.clone()),
                    _ => return Err(refuse(&cert)),
                }
            } else {
                None
            };
            // A private key goes only with the development certificate it
            // belongs to (a production key made for a new certificate
            // request, beside the old development one, stays).
            if present.contains(&key) {
                let belongs = spki.is_some_and(|spki| {
                    fs::read_to_string(dir.join(&key))
                        .ok()
                        .and_then(|pem| KeyPair::from_pem(&pem).ok())
                        .is_some_and(|pair| pair.public_key_der() == spki)
                });
                if !belongs {
                    return Err(refuse(&key));
                }
            }
        }
        for file in &present {
            fs::remove_file(dir.join(file)).map_err(|source| PkiError::Write {
                path: dir.join(file),
                source,
            })?;
        }
    }
    DevPki::generate()?.write_to(dir)
}

/// The public keys (SubjectPublicKeyInfo, DER) of the PEM certificates at
/// `path` if every one is the development CA (`ca`) or issued by it (by
/// subject, resp. issuer, name); `None` if one is not, or the file is not
/// PEM certificates.
fn development_certs(path: &Path, ca: bool) -> Option<Vec<Vec<u8>>> {
    let bytes = fs::read(path).ok()?;
    let mut keys = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
        let pem = pem.ok()?;
        let cert = pem.parse_x509().ok()?;
        let name = if ca { cert.subject() } else { cert.issuer() };
        let development = name
            .iter_organization()
            .any(|a| a.as_str().is_ok_and(|v| v == "checkoutd development"))
            && name
                .iter_common_name()
                .any(|a| a.as_str().is_ok_and(|v| v == DEV_CA_NAME));
        if !development {
            return None;
        }
        keys.push(cert.tbs_certificate.subject_pki.raw.to_vec());
    }
    (!keys.is_empty()).then_some(keys)
}

/// True when `dir` already holds a server certificate and key.
pub fn server_cert_present(dir: &Path) -> bool {
    dir.join(SERVER_CERT_FILE).is_file() && dir.join(SERVER_KEY_FILE).is_file()
}

/// For `serve`: `Ok(false)` when `dir` holds the server's certificate and
/// key; on a first run (none of the development PKI's files there) creates
/// one and returns `Ok(true)`; if only some files are there — a key that
/// failed to mount, say — refuses, naming what is missing.
pub fn ensure_dev_pki(dir: &Path) -> Result<bool, PkiError> {
    if server_cert_present(dir) {
        return Ok(false);
    }
    DevPki::generate()?.write_to(dir)?;
    Ok(true)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "checkoutd development");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

/// Writes a new file, atomically (never seen half-written) and never over
/// an existing one (an error naming it): a CA, a key or a master key share
/// must not silently replace another. `secret` files get mode 0600, others
/// 0644.
pub(crate) fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), PkiError> {
    let mode = if secret { 0o600 } else { 0o644 };
    crate::files::create_new_file(path, bytes, mode).map_err(|source| PkiError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::identity::ClientIdentity;
    use rustls_pki_types::{CertificateDer, pem::PemObject};

    #[test]
    fn client_certificates_carry_their_role() {
        let pki = DevPki::generate().unwrap();
        for role in Role::ALL {
            let der = CertificateDer::from_pem_slice(pki.client(role).unwrap().cert_pem.as_bytes())
                .unwrap();
            match ClientIdentity::from_peer_certificates(Some(&[der])) {
                ClientIdentity::Certified { role: found, .. } => assert_eq!(found, Some(role)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn two_role_uris_or_unknown_role_give_no_role() {
        let pki = DevPki::generate().unwrap();
        for uris in [
            vec![Role::Storefront.uri(), Role::Auditor.uri()],
            vec!["urn:checkoutd:role:admin".to_owned()],
            vec![],
        ] {
            let cert = pki.issue_client("odd", &uris).unwrap();
            let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
            assert_eq!(
                ClientIdentity::from_peer_certificates(Some(&[der])).role(),
                None,
                "{uris:?}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        DevPki::generate().unwrap().write_to(dir.path()).unwrap();
        let mode = |f: &str| {
            fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(SERVER_KEY_FILE), 0o600);
        assert_eq!(mode("storefront-key.pem"), 0o600);
        assert_eq!(mode(CA_FILE), 0o644);
        assert!(server_cert_present(dir.path()));
    }

    #[test]
    fn a_directory_missing_only_some_files_is_refused_never_regenerated() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            ensure_dev_pki(dir.path()).unwrap(),
            "a first run creates one"
        );
        assert!(!ensure_dev_pki(dir.path()).unwrap(), "the next one uses it");
        let ca = fs::read(dir.path().join(CA_FILE)).unwrap();
        let storefront = fs::read(dir.path().join("storefront-key.pem")).unwrap();
        // The server's key did not mount: nothing is written, the CA stays,
        // and the error names what is missing.
        fs::remove_file(dir.path().join(SERVER_KEY_FILE)).unwrap();
        let err = ensure_dev_pki(dir.path()).unwrap_err().to_string();
        assert!(err.contains("but not server-key.pem"), "{err}");
        assert_eq!(fs::read(dir.path().join(CA_FILE)).unwrap(), ca);
        assert_eq!(
            fs::read(dir.path().join("storefront-key.pem")).unwrap(),
            storefront
        );
        assert!(!dir.path().join(SERVER_KEY_FILE).exists());
        // Only the CA left (or anything else of it): the same.
        let only_ca = tempfile::tempdir().unwrap();
        fs::write(only_ca.path().join(CA_FILE), &ca).unwrap();
        assert!(ensure_dev_pki(only_ca.path()).is_err());
        assert_eq!(fs::read(only_ca.path().join(CA_FILE)).unwrap(), ca);
        // `certs dev` into a full directory overwrites nothing either.
        let err = DevPki::generate()
            .unwrap()
            .write_to(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("already holds"), "{err}");
        assert_eq!(fs::read(dir.path().join(CA_FILE)).unwrap(), ca);
    }
}
