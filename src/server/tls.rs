//! The TLS configuration: the only way into checkoutd.
//!
//! Invariants (DESIGN.md invariant 1):
//! - TLS 1.3 and TLS 1.2 only; TLS 1.2 only with ECDHE key exchange and an
//!   AEAD cipher (AES-GCM or ChaCha20-Poly1305). rustls implements no CBC
//!   suite and no RSA key exchange, and the suite list below is explicit so
//!   that a future rustls default cannot widen it.
//! - Client certificates are optional at the handshake (health checks and
//!   the public opt-out page need none) but a presented one must chain to the
//!   client CA, or the handshake fails.
//! - ALPN offers h2 and http/1.1.
//! - With `--client-crl`, a client certificate its CA has revoked fails the
//!   handshake; so does any client certificate while the CRL has expired,
//!   or whose CA has no CRL in the file (fail closed: an unknown revocation
//!   status is not a good one).
//! - A client CRL older (`thisUpdate`) than the newest taken from the same
//!   CA, and not yet expired, is refused: on a reload, it is not taken; at
//!   start, where the data directory keeps the newest lists across restarts
//!   ([`super::crl_marks`]), the server does not start.
//! - The files are watched ([`ReloadableTls`]): a renewed server certificate
//!   or a new CRL takes effect within [`TLS_POLL`] without a restart. Each
//!   rebuild (also when the CRL passes its next update, and every
//!   [`TLS_REFRESH`]) starts an empty session cache — rustls resumes a
//!   session without checking its client certificate again — and every open
//!   connection's certificate is checked again under it: a revoked or
//!   expired certificate keeps no connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{CryptoProvider, ring as ring_provider};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what} file {path} holds no certificate")]
    Empty { what: &'static str, path: PathBuf },
    #[error("the client CRL file {path} holds no certificate revocation list")]
    NoCrl { path: PathBuf },
    #[error(
        "the client CRL file {path} holds two lists from one CA (the first would be used, \
         whichever is newer): keep only each CA's newest list"
    )]
    TwoCrlsFromOneCa { path: PathBuf },
    #[error(
        "the client CRL file {path} holds no list from the client CA {ca}: every client \
         certificate under that CA (its intermediates included) would be refused; add the CA's \
         current list, or remove the CA from the client CA file"
    )]
    NoCrlFromCa { path: PathBuf, ca: String },
    #[error(
        "the client CRL file {path} holds a list named for the client CA {ca} that the CA did \
         not sign (another CA of the same name, or a damaged file): taken, it would refuse every \
         certificate of that CA and its time would be kept as the newest list seen; publish the \
         CA's own list"
    )]
    CrlNotSignedByCa { path: PathBuf, ca: String },
    #[error(
        "the server private key {path} is open to every local user (mode {mode:o}): \
         `chmod o-rwx` it (0600, or 0640 for a group of your own)"
    )]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error(
        "the client CRL file {path} holds a list older (thisUpdate, or CRL number) than the \
         newest this server has taken from the same CA: put back, it would let in again every \
         certificate revoked since; keeping the lists in force — publish the CA's current list"
    )]
    CrlOlderThanInForce { path: PathBuf },
    #[error(
        "the client CRL file {path} holds the list of CA {ca} {this}, older than its list \
         {newest} that a server on this data directory took before (kept in {marks}): put back, it would let in again every certificate revoked since; publish the \
         CA's current list. Only if that CA was replaced by a new one under the same name and \
         key, stop every server on the data directory and remove {marks}: that forgets every \
         CA's newest list"
    )]
    CrlOlderThanKept {
        path: PathBuf,
        ca: String,
        this: String,
        newest: String,
        marks: PathBuf,
    },
    #[error(transparent)]
    CrlMarks(#[from] super::crl_marks::MarksError),
    #[error("cannot read {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the client CA file {path} holds no usable CA certificate")]
    BadClientCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("building the client-certificate verifier failed")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the server certificate and key do not form a valid TLS identity")]
    Identity(#[source] rustls::Error),
}

/// The crypto provider checkoutd uses everywhere: ring, with an explicit
/// allow-list of cipher suites.
pub fn provider() -> CryptoProvider {
    use ring_provider::cipher_suite as cs;
    CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..ring_provider::default_provider()
    }
}

/// Where the server's TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_ca: PathBuf,
    /// Certificate revocation lists of the client CAs (PEM), if any.
    pub client_crl: Option<PathBuf>,
}

impl TlsFiles {
    /// The development layout of a certs directory (`server.pem`,
    /// `server-key.pem`, `ca.pem`), with an optional separate client CA and
    /// an optional client CRL.
    pub fn in_dir(certs_dir: &Path, client_ca: Option<&Path>, client_crl: Option<&Path>) -> Self {
        TlsFiles {
            server_cert: certs_dir.join(crate::pki::SERVER_CERT_FILE),
            server_key: certs_dir.join(crate::pki::SERVER_KEY_FILE),
            client_ca: client_ca
                .map(Path::to_owned)
                .unwrap_or_else(|| certs_dir.join(crate::pki::CA_FILE)),
            client_crl: client_crl.map(Path::to_owned),
        }
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [&self.server_cert, &self.server_key, &self.client_ca]
            .into_iter()
            .map(PathBuf::as_path)
            .chain(self.client_crl.as_deref())
    }

    /// SHA-256 over every file's path and contents: what tells that one of
    /// them changed (contents, not times: a copy within the same second or
    /// a file replaced by an older one still counts).
    fn digest(&self) -> Result<[u8; 32], TlsError> {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        for path in self.paths() {
            let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|source| {
                TlsError::ReadFile {
                    path: path.to_owned(),
                    source,
                }
            })?);
            for part in [path.as_os_str().as_encoded_bytes(), bytes.as_slice()] {
                context.update(&(part.len() as u64).to_be_bytes());
                context.update(part);
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(context.finish().as_ref());
        Ok(out)
    }
}

/// How often the TLS files are checked for a change.
pub const TLS_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// The most intermediate certificates a client may send with its own.
/// webpki builds paths through whatever a client sends, up to a budget of
/// 200 000 steps that each parse every certificate sent: a few dozen
/// throwaway CA certificates that name one issuer and lead nowhere cost
/// half a second of a worker thread per handshake, from a client with no
/// valid certificate at all. No chain of a client CA needs more than a
/// root's intermediate or two; four leaves room, and keeps the search
/// through any four trivial.
pub const MAX_CLIENT_INTERMEDIATES: usize = 4;

/// The client-certificate verifier, refusing a chain of more than
/// [`MAX_CLIENT_INTERMEDIATES`] before webpki builds any path; the rest
/// is webpki's.
#[derive(Debug)]
struct BoundedChains(Arc<dyn ClientCertVerifier>);

/// Why a client chain was refused unread ([`BoundedChains`]).
#[derive(Debug, thiserror::Error)]
#[error("the client sent more intermediate certificates than any chain of ours needs")]
pub struct ChainTooLong;

impl ClientCertVerifier for BoundedChains {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        if intermediates.len() > MAX_CLIENT_INTERMEDIATES {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(ChainTooLong))),
            ));
        }
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.requires_raw_public_keys()
    }
}

/// How long a configuration serves at most before it is rebuilt, files
/// changed or not: a rebuilt configuration starts with an empty session
/// cache, and resumption is how a session outlives the checks of its
/// client certificate (rustls resumes without verifying the chain again),
/// so this bounds how long a certificate that has since expired can go on
/// being resumed. Each rebuild also checks every open connection's
/// certificate again.
pub const TLS_REFRESH: std::time::Duration = std::time::Duration::from_secs(3600);

/// A built configuration: what serves handshakes, the verifier that checks
/// open connections again after a rebuild, and when its CRLs expire.
struct Built {
    acceptor: TlsAcceptor,
    verifier: Arc<dyn ClientCertVerifier>,
    /// The `nextUpdate` of each client CRL that has one.
    crl_expiries: Vec<std::time::SystemTime>,
    /// Each client CRL's `thisUpdate` and `nextUpdate`, by issuer, scope
    /// and CA key: a reload never goes back to an older list
    /// ([`ReloadableTls::newest_crls`]).
    crl_issued: CrlIssued,
    digest: [u8; 32],
    built_at: std::time::Instant,
    built_wall: std::time::SystemTime,
}

impl Built {
    /// The same configuration with an empty session cache, built now.
    fn refreshed(&self) -> Built {
        let mut config = ServerConfig::clone(self.acceptor.config());
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        Built {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            verifier: self.verifier.clone(),
            crl_expiries: self.crl_expiries.clone(),
            crl_issued: self.crl_issued.clone(),
            digest: self.digest,
            built_at: std::time::Instant::now(),
            built_wall: std::time::SystemTime::now(),
        }
    }
}

/// Sessions a configuration's cache holds (rustls's default).
const SESSION_CACHE: usize = 256;

/// The server's TLS configuration, rebuilt when its files change, when its
/// CRL expires, and every [`TLS_REFRESH`].
pub struct ReloadableTls {
    files: TlsFiles,
    current: std::sync::RwLock<Arc<Built>>,
    /// The last failure logged (not every poll).
    failed: std::sync::Mutex<Option<String>>,
    /// Bumped on every rebuild: each connection with a client certificate
    /// checks it again ([`ReloadableTls::trusts`]) and closes if it fails.
    generation: watch::Sender<u64>,
    /// The newest `thisUpdate` this server has taken from each CA's list
    /// (issuer, scope and CA key) — in this process, or before a restart
    /// when the data directory keeps it ([`super::crl_marks`]) — never
    /// lowered — not by an older list
    /// taken because it had expired (it fails closed), nor by a CA's list
    /// left out of the file for a while: a reload refuses a list older than
    /// it. The mark is capped at the clock plus [`CRL_CLOCK_SKEW`] when a
    /// list is first taken, so a CA clock running ahead cannot hold back
    /// its later lists; kept beside the list's own `thisUpdate` (the first
    /// of the pair), so only a newer list moves it.
    newest_crls: std::sync::Mutex<NewestCrls>,
    /// Where [`Self::newest_crls`] outlives the process (the data
    /// directory's [`super::crl_marks::FILE_NAME`]); none without
    /// `--client-crl`.
    marks_file: Option<super::crl_marks::MarksFile>,
    /// The file holds less than memory: a list was taken since the last
    /// write, or the write failed (tried again at every poll).
    marks_unsaved: std::sync::atomic::AtomicBool,
    /// The last write of the marks failed (logged once until one succeeds).
    marks_failing: std::sync::atomic::AtomicBool,
}

/// A list older than the newest taken from its CA: the CA's name (DER),
/// and what makes it older, as an operator reads it — the list's
/// `thisUpdate` and the newest one's, or its CRL number and the highest.
struct OlderList {
    issuer: Vec<u8>,
    this: String,
    newest: String,
}

/// A distinguished name (DER) as an operator reads it.
fn name_of(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    x509_parser::x509::X509Name::from_der(der)
        .map_or_else(|_| crate::hex::encode(der), |(_, name)| name.to_string())
}

/// A time as RFC 3339, to the second.
fn rfc3339(at: std::time::SystemTime) -> String {
    // Whole seconds, checked: `OffsetDateTime::from` panics on a time past
    // what it can represent.
    let seconds = match at.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).ok(),
        Err(before) => i64::try_from(before.duration().as_secs()).ok().map(|s| -s),
    };
    seconds
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "an unprintable time".to_owned())
}

/// Per list: its own newest `thisUpdate` taken, and the mark a reload
/// compares with.
type NewestCrls = super::crl_marks::Marks;

/// Raises each list's newest `thisUpdate`, its mark (that time, capped
/// at `cap`: now plus the clock skew allowed) and its highest CRL number to
/// the lists `taken`; whether anything moved. The times rise apart: a list
/// dated ahead of its CA's clock (a day ahead, say) is the newest seen
/// until the CA's clock reaches it, but its mark is capped — and each later
/// list, older than it yet newer than the mark, raises the mark, so that
/// rolling one of those back to the one before is still refused.
fn raise_marks<'a>(
    newest: &mut NewestCrls,
    taken: impl Iterator<Item = (&'a CrlKey, &'a Issued)>,
    cap: std::time::SystemTime,
) -> bool {
    let mut taken_marks = NewestCrls::new();
    for (list, issued) in taken {
        taken_marks.insert(
            list.clone(),
            super::crl_marks::Mark {
                newest: issued.this_update,
                mark: issued.this_update.min(cap),
                number: issued.number.clone(),
            },
        );
    }
    super::crl_marks::merge(newest, &taken_marks)
}

/// How far ahead of this server's clock a CA's `thisUpdate` may be.
const CRL_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// Why a configuration is rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rebuild {
    FilesChanged,
    CrlExpired,
    Refresh,
}

impl ReloadableTls {
    /// Loads the TLS files. With `marks` (the data directory's
    /// [`super::crl_marks::FILE_NAME`]), the newest list taken from each CA
    /// before a restart is remembered: a client CRL file older than it —
    /// rolled back while the server was down — stops the start, as it is
    /// refused on a reload; and each newer list taken is written there.
    ///
    /// Blocking (file reads, a lock beside the marks file, fsyncs), like the
    /// rest of the start-up before the listener binds.
    pub fn load(files: TlsFiles, marks: Option<PathBuf>) -> Result<Arc<Self>, TlsError> {
        let built = build(&files, files.digest()?)?;
        // Without revocation checking there is nothing to remember: the
        // file is neither read nor written.
        let marks_file = marks
            .filter(|_| files.client_crl.is_some())
            .map(super::crl_marks::MarksFile::at);
        let kept = match &marks_file {
            Some(file) => file.read()?,
            None => NewestCrls::new(),
        };
        let tls = ReloadableTls {
            files,
            newest_crls: std::sync::Mutex::new(kept),
            current: std::sync::RwLock::new(Arc::new(built)),
            failed: std::sync::Mutex::new(None),
            generation: watch::Sender::new(0),
            marks_file,
            marks_unsaved: std::sync::atomic::AtomicBool::new(false),
            marks_failing: std::sync::atomic::AtomicBool::new(false),
        };
        if let (Some(older), Some(path), Some(file)) = (
            tls.rolled_back(&tls.built()),
            &tls.files.client_crl,
            &tls.marks_file,
        ) {
            return Err(TlsError::CrlOlderThanKept {
                path: path.clone(),
                ca: name_of(&older.issuer),
                this: older.this,
                newest: older.newest,
                marks: file.path().to_owned(),
            });
        }
        tls.record_crls(&tls.built());
        // A write that fails does not stop the start: the lists are in
        // force in memory, as they were before the marks were kept at all;
        // it is logged and tried again at every poll.
        tls.save_marks_or_log();
        Ok(Arc::new(tls))
    }

    /// Writes the marks to their file if it holds less than memory
    /// (blocking). On failure they stay in memory, in force, and the write
    /// is tried again at the next poll.
    fn save_marks(&self) -> Result<(), super::crl_marks::MarksError> {
        use std::sync::atomic::Ordering;
        let Some(file) = &self.marks_file else {
            return Ok(());
        };
        if !self.marks_unsaved.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let marks = self.newest().clone();
        match file.keep(&marks) {
            Ok(merged) => {
                // Another process's newer marks count here too.
                super::crl_marks::merge(&mut self.newest(), &merged);
                Ok(())
            }
            Err(error) => {
                self.marks_unsaved.store(true, Ordering::Release);
                Err(error)
            }
        }
    }

    /// [`Self::save_marks`] on a running server: a failure is logged once
    /// each time it starts failing, the marks stay in force in memory.
    fn save_marks_or_log(&self) {
        use std::sync::atomic::Ordering;
        match self.save_marks() {
            Ok(()) => self.marks_failing.store(false, Ordering::Release),
            Err(error) => {
                if !self.marks_failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        error = %error,
                        "the newest client CRLs taken could not be written to the data directory: they are in force, but a restart would forget them; trying again every poll"
                    );
                }
            }
        }
    }

    fn newest(&self) -> std::sync::MutexGuard<'_, NewestCrls> {
        match self.newest_crls.lock() {
            Ok(n) => n,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Raises [`Self::newest_crls`] to the lists of `built`, for each list
    /// newer than any taken before from its CA.
    fn record_crls(&self, built: &Built) {
        let cap = std::time::SystemTime::now() + CRL_CLOCK_SKEW;
        let mut newest = self.newest();
        let moved = raise_marks(&mut newest, built.crl_issued.iter(), cap);
        if moved {
            self.marks_unsaved
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Whether `built` holds a list older than the newest taken from the
    /// same CA ([`Self::newest_crls`]) — issued before its mark, or with a
    /// lower CRL number than the highest taken — not yet expired (an
    /// expired one takes back nothing: it fails closed, refusing every
    /// certificate of its CA). The number is compared only when both have
    /// one: a CA's numbers rise with every list it issues for a scope (RFC
    /// 5280, 5.2.3), so a lower one is an earlier list even within the
    /// same second, which the whole-second times cannot tell apart.
    fn rolls_back(&self, built: &Built) -> bool {
        self.rolled_back(built).is_some()
    }

    /// The first list of `built` that [`Self::rolls_back`].
    fn rolled_back(&self, built: &Built) -> Option<OlderList> {
        let wall = std::time::SystemTime::now();
        let newest = self.newest();
        built.crl_issued.iter().find_map(|(list, issued)| {
            let kept = newest.get(list)?;
            if issued.next_update.is_some_and(|next| next <= wall) {
                return None;
            }
            if issued.this_update < kept.mark {
                return Some(OlderList {
                    issuer: list.0.clone(),
                    this: format!("issued {} (thisUpdate)", rfc3339(issued.this_update)),
                    newest: format!("issued {}", rfc3339(kept.newest)),
                });
            }
            match (&issued.number, &kept.number) {
                (Some(number), Some(highest)) if number < highest => Some(OlderList {
                    issuer: list.0.clone(),
                    this: format!("numbered {number} (CRL number)"),
                    newest: format!("numbered {highest}"),
                }),
                _ => None,
            }
        })
    }

    fn built(&self) -> Arc<Built> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.built().acceptor.clone()
    }

    /// Changes when the configuration was rebuilt.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// When a certificate stops being valid: its `notAfter`, in seconds
    /// since the Unix epoch (`None` if it does not parse).
    pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
        Some(parsed.validity().not_after.timestamp())
    }

    /// Whether a client certificate chain (end entity first) is still
    /// trusted by the configuration in force: its CA, its CRL, its validity
    /// period, now.
    pub fn trusts(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return false;
        };
        self.built()
            .verifier
            .verify_client_cert(end_entity, intermediates, rustls_pki_types::UnixTime::now())
            .is_ok()
    }

    /// One poll, blocking (file reads, parsing): rebuilds if the files
    /// changed, the CRL expired or the configuration is [`TLS_REFRESH`]
    /// old. A change that does not load (a file half written, a key that
    /// does not match) keeps the configuration in force and is logged once.
    fn poll(&self) {
        // A write of the marks that failed before is tried again first.
        self.save_marks_or_log();
        let current = self.built();
        let now = std::time::SystemTime::now();
        // A CRL that passed its next update since the configuration was
        // built: its session cache holds sessions resumable past it.
        let crl_expired = current
            .crl_expiries
            .iter()
            .any(|at| current.built_wall < *at && now >= *at);
        let time_due = crl_expired || current.built_at.elapsed() >= TLS_REFRESH;
        let digest = self.files.digest();
        if digest.as_ref().is_ok_and(|d| *d == current.digest) && !time_due {
            // Back to the set in force (or never left it): a later failure
            // is news again.
            self.set_failed(None);
            return;
        }
        let rebuilt = match digest.and_then(|digest| {
            if digest == current.digest {
                Ok(None)
            } else {
                build(&self.files, digest).and_then(|built| {
                    // A list older than one already taken from the same CA
                    // (a rollback of the file, last week's put back) would
                    // take back revocations: refused, as a file that does
                    // not load is.
                    match (self.rolls_back(&built), &self.files.client_crl) {
                        (true, Some(path)) => {
                            Err(TlsError::CrlOlderThanInForce { path: path.clone() })
                        }
                        _ => Ok(Some(built)),
                    }
                })
            }
        }) {
            Ok(Some(built)) => Some((Rebuild::FilesChanged, built)),
            Ok(None) => None,
            Err(error) => {
                let text = format!(
                    "{error}{}",
                    std::error::Error::source(&error)
                        .map_or_else(String::new, |s| format!(": {s}"))
                );
                if self.set_failed(Some(text.clone())).as_deref() != Some(text.as_str()) {
                    // Once per failure, as the log line: an operator alerts
                    // on it (a CRL that does not load leaves the revocations
                    // it adds out of force).
                    crate::telemetry::tls_reload_failed();
                    tracing::error!(error = %text, "the TLS files changed but do not load; keeping the configuration in force");
                }
                None
            }
        };
        // The files are unchanged, or changed but do not load: what is due
        // by time is done on the set in force — a new session cache, every
        // open certificate checked again — so a bad file left in place
        // never holds back an expired CRL's effect.
        let (why, built) = match rebuilt {
            Some(rebuilt) => rebuilt,
            None if time_due => (
                if crl_expired {
                    Rebuild::CrlExpired
                } else {
                    Rebuild::Refresh
                },
                current.refreshed(),
            ),
            None => return,
        };
        if why == Rebuild::FilesChanged {
            self.record_crls(&built);
            self.save_marks_or_log();
        }
        match self.current.write() {
            Ok(mut slot) => *slot = Arc::new(built),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(built),
        }
        self.generation.send_modify(|g| *g += 1);
        match why {
            Rebuild::FilesChanged => {
                self.set_failed(None);
                tracing::info!(
                    "TLS files changed: certificate, key, client CA and CRL reloaded; open connections whose client certificate no longer verifies are closed"
                )
            }
            Rebuild::CrlExpired => tracing::error!(
                "a client CRL has passed its next update: no certificate of its CA is accepted until a current CRL is published (--client-crl)"
            ),
            Rebuild::Refresh => tracing::debug!(
                "TLS configuration refreshed (session cache emptied, open client certificates checked again)"
            ),
        }
    }

    /// Polls the files every [`TLS_POLL`] (off the runtime's workers) until
    /// the process ends.
    pub fn watch(self: Arc<Self>) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TLS_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let tls = self.clone();
                let _ = tokio::task::spawn_blocking(move || tls.poll()).await;
            }
        });
    }

    /// Whether the TLS files on disk fail to load now (what the
    /// `checkoutd_tls_reload_failing` gauge adds up over the process).
    pub fn reload_failing(&self) -> bool {
        match self.failed.lock() {
            Ok(failed) => failed.is_some(),
            Err(poisoned) => poisoned.into_inner().is_some(),
        }
    }

    /// Records the failure last logged; returns the one before.
    /// Records whether the files on disk fail to load (and why); returns
    /// the previous failure. The `checkoutd_tls_reload_failing` gauge
    /// follows: 1 while they fail, so an alert lasts as long as the cause.
    fn set_failed(&self, failure: Option<String>) -> Option<String> {
        let failing = failure.is_some();
        let previous = match self.failed.lock() {
            Ok(mut failed) => std::mem::replace(&mut *failed, failure),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), failure),
        };
        if previous.is_some() != failing {
            crate::telemetry::tls_reload_failing(failing);
        }
        previous
    }
}

/// Builds the server configuration from PEM files.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let (config, _, _) = config_and_verifier(files)?;
    Ok(config)
}

fn build(files: &TlsFiles, digest: [u8; 32]) -> Result<Built, TlsError> {
    let (config, verifier, crls) = config_and_verifier(files)?;
    Ok(Built {
        acceptor: TlsAcceptor::from(config),
        verifier,
        crl_expiries: crls.expiries,
        crl_issued: crls.issued,
        digest,
        built_at: std::time::Instant::now(),
        built_wall: std::time::SystemTime::now(),
    })
}

type ConfigParts = (Arc<ServerConfig>, Arc<dyn ClientCertVerifier>, Crls);

/// A list's issuer (raw name), scope (its issuing distribution point, raw;
/// empty for a list of the CA's whole scope) and CA key (the key
/// identifier of its authority key identifier; empty if it has none): a CA
/// re-keyed under the same name starts its lists afresh.
type CrlKey = super::crl_marks::ListKey;

/// What a rollback is measured by, of one client CRL.
#[derive(Debug, Clone)]
struct Issued {
    /// When it was issued (`thisUpdate`).
    this_update: std::time::SystemTime,
    /// When it expires (`nextUpdate`), if it does.
    next_update: Option<std::time::SystemTime>,
    /// Its CRL number, if it has one.
    number: Option<super::crl_marks::CrlNumber>,
}

/// Each client CRL's [`Issued`], by issuer, scope and CA key.
type CrlIssued = std::collections::HashMap<CrlKey, Issued>;

/// What the configuration keeps of its client CRLs.
#[derive(Default)]
struct Crls {
    /// The `nextUpdate` of each list that has one (one without never
    /// expires).
    expiries: Vec<std::time::SystemTime>,
    issued: CrlIssued,
}

fn config_and_verifier(files: &TlsFiles) -> Result<ConfigParts, TlsError> {
    let chain = read_certs(&files.server_cert, "server certificate")?;
    // Every local user could read (or swap) a key whose file is open to
    // them all: refused, as the master key file is. Group access is left
    // to the operator (a key shared with a TLS group, say).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.server_key)
            .map_err(|source| TlsError::Read {
                what: "server private key",
                path: files.server_key.clone(),
                source: rustls_pki_types::pem::Error::Io(source),
            })?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o007 != 0 {
            return Err(TlsError::KeyExposed {
                path: files.server_key.clone(),
                mode,
            });
        }
    }
    let key = PrivateKeyDer::from_pem_file(&files.server_key).map_err(|source| TlsError::Read {
        what: "server private key",
        path: files.server_key.clone(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    let client_cas = read_certs(&files.client_ca, "client CA")?;
    for ca in client_cas.iter().cloned() {
        roots.add(ca).map_err(|source| TlsError::BadClientCa {
            path: files.client_ca.clone(),
            source,
        })?;
    }
    let provider = Arc::new(provider());
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated();
    let mut crl_facts = Crls::default();
    if let Some(path) = &files.client_crl {
        let crls = CertificateRevocationListDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|source| TlsError::Read {
                what: "client CRL",
                path: path.clone(),
                source,
            })?;
        if crls.is_empty() {
            return Err(TlsError::NoCrl { path: path.clone() });
        }
        crl_facts = read_crls(&crls, path)?;
        let issuers: CrlIssuers = crl_facts.issued.keys().map(|(i, _, _)| i.clone()).collect();
        every_ca_has_a_list(&client_cas, &issuers, path)?;
        signed_by_their_cas(&client_cas, &crls, path)?;
        // Every certificate below the trust anchor is checked, an issuing
        // intermediate included (a compromised one, revoked in its root's
        // list, must not go on minting roles); an expired list, or a CA of
        // the chain without one, fails closed.
        verifier = verifier.with_crls(crls).enforce_revocation_expiration();
    }
    let verifier: Arc<dyn ClientCertVerifier> = Arc::new(BoundedChains(verifier.build()?));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Identity)?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(chain, key)
        .map_err(TlsError::Identity)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // One cache per configuration: a rebuilt one resumes nothing from before.
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    // Our suite order (strongest first, `provider`), not the client's: a
    // client that prefers a weaker suite still gets the strongest we share.
    config.ignore_client_order = true;
    Ok((Arc::new(config), verifier, crl_facts))
}

/// The `nextUpdate` of each of `crls` that has one (one without never
/// expires), and each list's `thisUpdate` by issuer, scope and CA key. A file with
/// two lists from one CA is refused (but for a CA-certificates-only list
/// beside an end-entities-only one): the verifier would use the first that
/// may apply, so a newer list appended after the old one (`cat new.crl >>
/// crl.pem`) would be ignored until the old one expired, and a partial list
/// (another scope) before the full one could hide its revocations.
/// Which certificates a list may speak for (its issuing distribution
/// point's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Covers {
    All,
    CaCertificates,
    EndEntities,
}

fn read_crls(crls: &[CertificateRevocationListDer<'_>], path: &Path) -> Result<Crls, TlsError> {
    let mut out = Vec::new();
    let mut issued = CrlIssued::new();
    let mut coverage: std::collections::HashMap<Vec<u8>, Covers> = Default::default();
    for crl in crls {
        let (_, parsed) =
            x509_parser::parse_x509_crl(crl.as_ref()).map_err(|_| TlsError::NoCrl {
                path: path.to_owned(),
            })?;
        // The scope (issuing distribution point) is kept with the list's
        // marks. Two lists from one CA are refused unless one covers only
        // CA certificates and the other only end-entity ones (no
        // certificate is in both): the verifier uses the first list that
        // *may* apply to a certificate, and a certificate without a
        // distribution point is in the scope of a URI-named list as well as
        // of the full one — an older partial list put first would hide a
        // revocation in the full list after it.
        let covers = parsed
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::IssuingDistributionPoint(idp) => Some(
                    match (idp.only_contains_ca_certs, idp.only_contains_user_certs) {
                        (true, false) => Covers::CaCertificates,
                        (false, true) => Covers::EndEntities,
                        _ => Covers::All,
                    },
                ),
                _ => None,
            })
            .unwrap_or(Covers::All);
        let scope = parsed
            .extensions()
            .iter()
            .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_ISSUER_DISTRIBUTION_POINT)
            .map(|e| e.value.to_vec())
            .unwrap_or_default();
        let at = |t: x509_parser::time::ASN1Time| {
            std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        // The key identifier alone: the extension may also name the CA
        // certificate's issuer and serial, which a renewal under the same
        // key changes.
        let ca_key = parsed
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .unwrap_or_default();
        let issuer = parsed.issuer().as_raw().to_vec();
        // The verifier finds lists by name, whatever their keys.
        if let Some(other) = coverage.get(&issuer)
            && !matches!(
                (other, covers),
                (Covers::CaCertificates, Covers::EndEntities)
                    | (Covers::EndEntities, Covers::CaCertificates)
            )
        {
            return Err(TlsError::TwoCrlsFromOneCa {
                path: path.to_owned(),
            });
        }
        // A third list of that name meets one of the two and is refused.
        if coverage.contains_key(&issuer) {
            coverage.insert(issuer.clone(), Covers::All);
        } else {
            coverage.insert(issuer.clone(), covers);
        }
        let next = parsed.next_update().map(at);
        issued.insert(
            (issuer, scope, ca_key),
            Issued {
                this_update: at(parsed.last_update()),
                next_update: next,
                number: parsed
                    .crl_number()
                    .map(|n| super::crl_marks::CrlNumber::from_be_bytes(&n.to_bytes_be())),
            },
        );
        out.extend(next);
    }
    Ok(Crls {
        expiries: out,
        issued,
    })
}

/// The issuers (raw names) of a CRL file's lists.
type CrlIssuers = std::collections::HashSet<Vec<u8>>;

/// Revocation is checked along the whole chain, and a CA without a list
/// fails closed: a trust anchor with no list in the file would refuse every
/// certificate below it — an intermediate it issued first of all. Refused
/// when the file loads, naming the CA, not found out one handshake at a
/// time. (An intermediate's own list can only be missed at a handshake: the
/// intermediates come with the clients.)
fn every_ca_has_a_list(
    cas: &[CertificateDer<'_>],
    issuers: &CrlIssuers,
    path: &Path,
) -> Result<(), TlsError> {
    for ca in cas {
        // A CA certificate that does not parse was refused by the root
        // store already.
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(ca.as_ref()) else {
            continue;
        };
        if !issuers.contains(cert.subject().as_raw()) {
            return Err(TlsError::NoCrlFromCa {
                path: path.to_owned(),
                ca: cert.subject().to_string(),
            });
        }
    }
    Ok(())
}

/// Each list named for a CA of the client CA file is signed by it (by one
/// of the certificates of that name: a CA renewed under a new key may be
/// there twice). The verifier checks a list's signature only at a
/// handshake, so a list of another CA of the same name would otherwise be
/// taken: every certificate of the CA refused, and its `thisUpdate` kept
/// as the newest list seen — the CA's own list then refused as a rollback,
/// on every restart too. (An intermediate's list, whose CA comes with the
/// clients, is checked at the handshake only.)
fn signed_by_their_cas(
    cas: &[CertificateDer<'_>],
    crls: &[CertificateRevocationListDer<'_>],
    path: &Path,
) -> Result<(), TlsError> {
    let cas: Vec<x509_parser::certificate::X509Certificate<'_>> = cas
        .iter()
        .filter_map(|ca| x509_parser::parse_x509_certificate(ca.as_ref()).ok())
        .map(|(_, cert)| cert)
        .collect();
    for crl in crls {
        let Ok((_, list)) = x509_parser::parse_x509_crl(crl.as_ref()) else {
            return Err(TlsError::NoCrl {
                path: path.to_owned(),
            });
        };
        let named: Vec<&x509_parser::certificate::X509Certificate<'_>> = cas
            .iter()
            .filter(|ca| ca.subject().as_raw() == list.issuer().as_raw())
            .collect();
        if !named.is_empty()
            && !named
                .iter()
                .any(|ca| list.verify_signature(ca.public_key()).is_ok())
        {
            return Err(TlsError::CrlNotSignedByCa {
                path: path.to_owned(),
                ca: list.issuer().to_string(),
            });
        }
    }
    Ok(())
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The protocol name for logs, e.g. `TLSv1.3`.
pub fn version_name(version: Option<rustls::ProtocolVersion>) -> &'static str {
    match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {

    /// A server key every local user may read is refused; a group may.
    #[cfg(unix)]
    #[test]
    fn a_server_key_open_to_every_user_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        crate::pki::DevPki::generate()
            .unwrap()
            .write_to(&certs)
            .unwrap();
        let key = certs.join("server-key.pem");
        let files = TlsFiles::in_dir(&certs, None, None);
        let chmod = |mode| std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode));
        chmod(0o644).unwrap();
        match config_and_verifier(&files) {
            Err(error @ TlsError::KeyExposed { mode: 0o644, .. }) => {
                assert!(error.to_string().contains("server-key.pem"), "{error}")
            }
            other => panic!("a world-readable key was taken: {:?}", other.err()),
        }
        chmod(0o640).unwrap();
        assert!(config_and_verifier(&files).is_ok());
    }

    /// A list dated a day ahead (its CA's clock wrong) is the newest seen,
    /// but later lists still raise the mark: rolling one of them back to
    /// the one before stays refused.
    #[test]
    fn marks_keep_rising_after_a_list_dated_ahead() {
        use std::time::{Duration, UNIX_EPOCH};
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let key: super::CrlKey = (b"ca".to_vec(), Vec::new(), Vec::new());
        let mut newest = super::NewestCrls::new();
        let skew = super::CRL_CLOCK_SKEW;
        let day = Duration::from_secs(86_400);
        let hour = Duration::from_secs(3_600);
        // Each list taken when the clock reads `now`.
        let mut take = |issued, now| {
            let issued = super::Issued {
                this_update: issued,
                next_update: None,
                number: None,
            };
            super::raise_marks(&mut newest, [(&key, &issued)].into_iter(), now + skew)
        };
        assert!(take(t + day, t));
        assert!(take(t + hour, t + hour), "a later list raises the mark");
        assert!(take(t + 2 * hour, t + 2 * hour));
        assert!(!take(t + hour, t + 2 * hour), "an older one does not");
        let crate::server::crl_marks::Mark {
            newest: seen, mark, ..
        } = newest[&key].clone();
        assert_eq!(seen, t + day);
        assert_eq!(mark, t + 2 * hour);
        // So the list of `t + hour` is older than the mark: a rollback.
        assert!(t + hour < mark);
    }

    /// A time no `OffsetDateTime` holds is printed as such, not a panic.
    #[test]
    fn any_system_time_prints() {
        let far = std::time::UNIX_EPOCH + std::time::Duration::from_secs(300_000_000_000);
        assert_eq!(super::rfc3339(far), "an unprintable time");
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_500);
        assert_eq!(super::rfc3339(at), "2023-11-14T22:13:20Z");
    }

    use super::*;
    use rustls::SupportedCipherSuite;

    /// A client CA that issues through an intermediate: revoking the
    /// intermediate in the root's list revokes every certificate it
    /// issued, and each CA of the chain needs its list.
    #[test]
    fn a_revoked_intermediate_revokes_what_it_issued() {
        use rcgen::{
            BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, KeyPair,
            KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
        };
        let now = time::OffsetDateTime::now_utc();
        let ca_params = |serial: u64| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, format!("test CA {serial}"));
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.serial_number = Some(SerialNumber::from(serial));
            p
        };
        let root_key = KeyPair::generate().unwrap();
        let root = ca_params(1).self_signed(&root_key).unwrap();
        let middle_key = KeyPair::generate().unwrap();
        let middle = ca_params(2)
            .signed_by(&middle_key, &root, &root_key)
            .unwrap();
        let mut leaf_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        leaf_params.subject_alt_names = vec![SanType::URI(
            "urn:checkoutd:role:storefront".try_into().unwrap(),
        )];
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params
            .signed_by(&leaf_key, &middle, &middle_key)
            .unwrap();
        let list = |revoked: Vec<RevokedCertParams>, issuer: &rcgen::Certificate, key: &KeyPair| {
            CertificateRevocationListParams {
                this_update: now - time::Duration::minutes(5),
                next_update: now + time::Duration::days(7),
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: revoked,
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(issuer, key)
            .unwrap()
            .pem()
            .unwrap()
        };
        let middle_revoked_again = || RevokedCertParams {
            serial_number: SerialNumber::from(2u64),
            revocation_time: now - time::Duration::minutes(1),
            reason_code: Some(rcgen::RevocationReason::CaCompromise),
            invalidity_date: None,
        };
        let middle_revoked = middle_revoked_again();
        let dir = tempfile::tempdir().unwrap();
        crate::pki::DevPki::generate()
            .unwrap()
            .write_to(&dir.path().join("certs"))
            .unwrap();
        let ca = dir.path().join("client-ca.pem");
        std::fs::write(&ca, root.pem()).unwrap();
        let crl = dir.path().join("client-crl.pem");
        let verifies = |crls: String| {
            std::fs::write(&crl, crls).unwrap();
            let files = TlsFiles::in_dir(&dir.path().join("certs"), Some(&ca), Some(&crl));
            let (_, verifier, _) = config_and_verifier(&files).unwrap();
            let verified = verifier.verify_client_cert(
                leaf.der(),
                std::slice::from_ref(middle.der()),
                rustls_pki_types::UnixTime::now(),
            );
            verified.is_ok()
        };
        let middle_list = list(Vec::new(), &middle, &middle_key);
        assert!(verifies(format!(
            "{}{middle_list}",
            list(Vec::new(), &root, &root_key)
        )));
        assert!(
            !verifies(format!(
                "{}{middle_list}",
                list(vec![middle_revoked], &root, &root_key)
            )),
            "a revoked intermediate's certificate was accepted"
        );
        // The root's list missing: the file is refused at load, naming
        // the root (every certificate below it would fail closed).
        std::fs::write(&crl, &middle_list).unwrap();
        let files = TlsFiles::in_dir(&dir.path().join("certs"), Some(&ca), Some(&crl));
        match config_and_verifier(&files) {
            Err(error @ TlsError::NoCrlFromCa { .. }) => {
                assert!(error.to_string().contains("test CA 1"), "{error}")
            }
            other => panic!("loaded without the root's list: {:?}", other.err()),
        }
        // A newer list appended after an older one from the same CA: the
        // file is refused (the verifier would read the first).
        std::fs::write(
            &crl,
            format!(
                "{}{middle_list}{}",
                list(Vec::new(), &root, &root_key),
                list(vec![middle_revoked_again()], &root, &root_key)
            ),
        )
        .unwrap();
        let files = TlsFiles::in_dir(&dir.path().join("certs"), Some(&ca), Some(&crl));
        assert!(matches!(
            config_and_verifier(&files),
            Err(TlsError::TwoCrlsFromOneCa { .. })
        ));
        // Two lists of one CA for different scopes are refused too: the
        // partial list first would be the one the verifier reads for a
        // certificate without a distribution point.
        let scoped = |scope| {
            CertificateRevocationListParams {
                this_update: now - time::Duration::minutes(5),
                next_update: now + time::Duration::days(7),
                crl_number: SerialNumber::from(3u64),
                issuing_distribution_point: Some(rcgen::CrlIssuingDistributionPoint {
                    distribution_point: rcgen::CrlDistributionPoint {
                        uris: vec!["http://ca.example/crl".to_owned()],
                    },
                    scope: Some(scope),
                }),
                revoked_certs: Vec::new(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(&root, &root_key)
            .unwrap()
            .pem()
            .unwrap()
        };
        std::fs::write(
            &crl,
            format!(
                "{}{}{middle_list}",
                scoped(rcgen::CrlScope::UserCertsOnly),
                list(Vec::new(), &root, &root_key)
            ),
        )
        .unwrap();
        assert!(matches!(
            config_and_verifier(&files),
            Err(TlsError::TwoCrlsFromOneCa { .. })
        ));
        // A list for CA certificates only beside one for end entities only:
        // no certificate is in both, so the pair loads — and nothing more.
        let pair = format!(
            "{}{}{middle_list}",
            scoped(rcgen::CrlScope::CaCertsOnly),
            scoped(rcgen::CrlScope::UserCertsOnly)
        );
        assert!(verifies(pair.clone()));
        std::fs::write(
            &crl,
            format!("{pair}{}", list(Vec::new(), &root, &root_key)),
        )
        .unwrap();
        assert!(matches!(
            config_and_verifier(&files),
            Err(TlsError::TwoCrlsFromOneCa { .. })
        ));
        // A list named for the root but signed by another CA of that name
        // (a staging CA's, say): refused at load, before its time is kept
        // as the newest list seen.
        let impostor_key = KeyPair::generate().unwrap();
        let impostor = ca_params(1).self_signed(&impostor_key).unwrap();
        std::fs::write(
            &crl,
            format!(
                "{}{middle_list}",
                list(Vec::new(), &impostor, &impostor_key)
            ),
        )
        .unwrap();
        match config_and_verifier(&files) {
            Err(error @ TlsError::CrlNotSignedByCa { .. }) => {
                assert!(error.to_string().contains("test CA 1"), "{error}")
            }
            other => panic!("an impostor's list loaded: {:?}", other.err()),
        }
        // The root's own list loads again.
        assert!(verifies(format!(
            "{}{middle_list}",
            list(Vec::new(), &root, &root_key)
        )));
    }

    #[test]
    fn only_ecdhe_aead_suites_are_offered() {
        for suite in provider().cipher_suites {
            let name = format!("{:?}", suite.suite());
            match suite {
                SupportedCipherSuite::Tls13(_) => {}
                SupportedCipherSuite::Tls12(_) => {
                    assert!(name.contains("ECDHE"), "{name}");
                    assert!(name.contains("GCM") || name.contains("CHACHA20"), "{name}");
                    assert!(!name.contains("CBC"), "{name}");
                }
            }
        }
    }
}
