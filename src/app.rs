//! Start-up: from validated settings to a bound, ready service.
//!
//! `Application::build` does everything that can fail *before* the port is
//! opened to clients — certificates (creating a development PKI on a first
//! run), database and migrations, TLS configuration — then binds. Tests use
//! the same builder with `--listen 127.0.0.1:0` and read `local_addr()`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::audit::access_log::AccessLog;
use crate::config::Settings;
use crate::crypto::keyring::{self, Keyring, KeyringError, KeyringHandle};
use crate::crypto::master::MasterKey;
use crate::fulfillment::Fulfillment;
use crate::intake::Intake;
use crate::pki;
use crate::routes::{self, AppState};
use crate::server::{self, ConnectionLimits, tls};
use crate::store::{self, Store};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(
        "the keyring {0} is missing but the database already holds records made under one \
         (orders, the access log, withdrawals); restore the keyring (or point --data-dir at \
         the right place) — a new one would not open or verify them"
    )]
    KeyringMissing(std::path::PathBuf),
    #[error(
        "no keyring at {0}: with --master-key-share the keyring is made only by \
         `checkoutd keys init` — give serve the same --data-dir as keys init"
    )]
    KeyringNotInitialised(std::path::PathBuf),
    #[error(transparent)]
    Anchors(#[from] crate::audit::anchors::AnchorError),
    #[error(
        "{0} lacks server.pem or server-key.pem; with --client-ca or --master-key-share set \
         (a production configuration) no development PKI is created"
    )]
    ServerCertificateMissing(std::path::PathBuf),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Arc<tls::ReloadableTls>,
    state: AppState,
    store: Arc<dyn Store>,
    limits: ConnectionLimits,
    request_timeout: std::time::Duration,
    /// Warnings for the operator found at start (see `startup_notices`).
    notices: Vec<String>,
}

/// The operator's start-up notices: kept for [`Application::startup_notices`]
/// and handed on as each is found.
struct Notices<'a> {
    list: Vec<String>,
    tell: &'a mut (dyn FnMut(&str) + Send),
}

impl Notices<'_> {
    fn push(&mut self, notice: String) {
        (self.tell)(&notice);
        self.list.push(notice);
    }
}

impl Application {
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        Self::build_telling(settings, &mut |_| {}).await
    }

    /// [`Application::build`], handing each notice to `tell` as soon as it
    /// is found: a notice of something made on this start (a development
    /// PKI, a development keyring) reaches the operator even when a later
    /// step (the database, the port) fails it — the next start finds them
    /// there and would say nothing.
    pub async fn build_telling(
        settings: &Settings,
        tell: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Self, StartupError> {
        let mut notices = Notices {
            list: Vec::new(),
            tell,
        };
        crate::telemetry::init_metrics();
        // Processes sharing a data directory (and `keys` commands) take
        // turns here, so two first runs never make two PKIs, master keys or
        // keyrings over each other.
        let keyring_path = settings.store.data_dir.join(keyring::FILE_NAME);
        let _first_run = first_run_lock(settings, &keyring_path).await?;
        if !settings.store.master_key_shares.is_empty() && !keyring_path.exists() {
            // With custodian shares, a keyring is made only by `keys init`
            // (which makes the shares too), never implicitly.
            return Err(StartupError::KeyringNotInitialised(keyring_path));
        }
        // The chains' heads the last intact report saw, kept across
        // restarts (a rollback while the server was down fails the first
        // report, consent proof and audience export). Read before anything
        // starts: a damaged file stops the start-up here.
        let report_job = crate::audit::job::ReportJob::anchored_in(
            settings
                .store
                .data_dir
                .join(crate::audit::anchors::FILE_NAME),
        )?;
        let ledger_verified = report_job.anchor().consent_ledger;
        if !settings.store.master_key_shares.is_empty() && settings.client_ca.is_none() {
            // Production key handling, yet clients are trusted through the
            // certificates directory's ca.pem: the development PKI's CA,
            // whose role keys lie beside it. Said at every start.
            notices.push(banner(&[
                "WARNING: --master-key-share is set but --client-ca is not: clients",
                "are trusted through ca.pem in the certificates directory (the",
                "development PKI's CA, whose role keys lie beside it):",
                &settings.certs_dir.display().to_string(),
                "Give --client-ca your own client CA for real cards.",
            ]));
        }
        if let Some(notice) = no_revocation_notice(settings) {
            notices.push(notice);
        }
        if let Some(notice) = development_set_up_exposed_notice(settings) {
            notices.push(notice);
        }
        if let Some(notice) = unverified_database_notice(&settings.store.database) {
            notices.push(notice);
        }
        if let Some(notice) = open_data_dir_notice(&settings.store.data_dir) {
            notices.push(notice);
        }
        if ensure_certificates(settings)? {
            notices.push(banner(&[
                "WARNING: no server certificate was found, so checkoutd created a",
                "DEVELOPMENT PKI (ca.pem, server.pem, <role>.pem, ...) in:",
                &settings.certs_dir.display().to_string(),
                "It is for development only: never use these certificates for",
                "real cards or customers.",
            ]));
        }
        let tls_files = tls::TlsFiles::in_dir(
            &settings.certs_dir,
            settings.client_ca.as_deref(),
            settings.client_crl.as_deref(),
        );
        // The newest client CRL taken from each CA, kept across restarts:
        // a list rolled back while the server was down stops the start.
        let tls = tls::ReloadableTls::load(
            tls_files,
            Some(
                settings
                    .store
                    .data_dir
                    .join(crate::server::crl_marks::FILE_NAME),
            ),
        )?;
        let store = store::open(&settings.store.database).await?;
        if !report_job.anchors_found() && store.access_log_head().await?.is_some() {
            // The file is missing beside a log that is not new: a restore
            // (expected), a database no intact report has run on yet, or a
            // file someone removed. Either way a rollback made before this
            // start goes unseen; the operator is told, not silenced.
            let path = settings
                .store
                .data_dir
                .join(crate::audit::anchors::FILE_NAME);
            tracing::warn!(
                path = %path.display(),
                "no audit anchors file, yet the access log holds entries: the first report takes the chains as they are now"
            );
            notices.push(banner(&[
                "WARNING: there is no audit anchors file, yet the access log holds",
                "entries. The first report takes the access log and the consent",
                "ledger as they are now: a rollback made before this start cannot be",
                "detected. Expected after a restore, or if no report has run yet;",
                "otherwise find out who removed it. The file belongs in:",
                &path.display().to_string(),
            ]));
        }
        if !keyring_path.exists() && store.holds_records().await? {
            // A missing keyring beside a database full of ciphertexts is a
            // misconfiguration (wrong --data-dir, unmounted volume), never a
            // first run: a new keyring would make old records unreadable
            // and new ones unrelated to them.
            return Err(StartupError::KeyringMissing(keyring_path));
        }
        let master = master_key(settings, &keyring_path)?;
        if let Some(notice) = development_master_key_notice(settings) {
            notices.push(notice);
        }
        let (keyring, created) =
            Keyring::load_or_create(&keyring_path, &master, &crate::ids::now())?;
        if created {
            tracing::warn!(path = %keyring_path.display(), "created a development keyring");
            notices.push(banner(&[
                "WARNING: created a DEVELOPMENT KEYRING, sealed under a development",
                "master key kept beside it (master.key, 0600) in:",
                &settings.store.data_dir.display().to_string(),
                "Anyone who can read that directory can read every card. Never use it",
                "for real cards: run `checkoutd keys init --custodians N` instead.",
            ]));
        }
        let handle = Arc::new(KeyringHandle::new(
            keyring,
            Some((keyring_path.clone(), master)),
        ));
        let keyring = handle.current();
        let fulfillment = Arc::new(Fulfillment::new(&keyring));
        let marketing = Arc::new(crate::consent::audience::Marketing::new(
            &keyring,
            ledger_verified.clone(),
        ));
        let access_log = AccessLog::start(store.clone(), keyring.access_log_key().duplicate());
        let intake = Arc::new(Intake::new(
            handle.clone(),
            store.clone(),
            settings.policy_versions.clone(),
            settings.replay_window,
            settings.commit_queue,
        ));
        // Started once the port is bound (below): a start that fails there
        // — a second `serve` beside the one holding the port, with a
        // mistyped retention period — must not have purged anything.
        let background = (handle.clone(), fulfillment.clone(), marketing.clone());
        let ledger = crate::consent::Ledger::verified_up_to(handle.clone(), ledger_verified);
        let state = AppState::new(routes::Services {
            store: store.clone(),
            intake,
            fulfillment,
            access_log,
            ledger: Arc::new(ledger),
            marketing,
            unsubscribe_limit: Arc::new(crate::http::rate_limit::RateLimiter::new(
                settings.unsubscribe_rate_limit,
                std::time::Duration::from_secs(60),
            )),
            // Each recorded opt-out is a synced ledger row, never trimmed,
            // that every export and proof walks: addresses are cheap, so
            // all of them together get a budget too.
            unsubscribe_writes: Arc::new(crate::http::rate_limit::RateLimiter::with_total(
                u32::MAX,
                settings
                    .unsubscribe_rate_limit
                    .saturating_mul(routes::UNSUBSCRIBES_IN_ALL_PER_CLIENT_LIMIT),
                std::time::Duration::from_secs(60),
            )),
            unsubscribe_network_writes: Arc::new(crate::http::rate_limit::RateLimiter::new(
                settings
                    .unsubscribe_rate_limit
                    .saturating_mul(routes::UNSUBSCRIBES_PER_NETWORK_PER_CLIENT_LIMIT),
                std::time::Duration::from_secs(60),
            )),
            denial_limit: Arc::new(crate::http::rate_limit::RateLimiter::with_total(
                routes::DENIALS_LOGGED_PER_MINUTE,
                routes::DENIALS_LOGGED_PER_MINUTE_IN_ALL,
                std::time::Duration::from_secs(60),
            )),
            keyring: handle,
            report_job: Arc::new(report_job),
            request_timeout: settings.limits.request_timeout,
            readiness: Default::default(),
        });
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: settings.listen,
            source,
        })?;
        let (handle, fulfillment, marketing) = background;
        watch_keyring(handle.clone(), fulfillment, marketing);
        crate::retention::spawn(
            store.clone(),
            handle,
            settings.retention.clone(),
            settings.replay_window,
            std::time::Duration::from_secs(3600),
        );
        Ok(Application {
            listener,
            local_addr,
            tls,
            state,
            store,
            limits: settings.limits,
            request_timeout: settings.limits.request_timeout,
            notices: notices.list,
        })
    }

    /// Loud warnings found at start — development material it created (a
    /// PKI, a keyring), a missing audit anchors file beside an access log
    /// that is not new; the binary prints them on stderr.
    pub fn startup_notices(&self) -> &[String] {
        &self.notices
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The handler state, e.g. to build the router with extra test routes.
    /// The server's TLS configuration (its reload state, for tests and
    /// probes).
    pub fn tls(&self) -> Arc<tls::ReloadableTls> {
        self.tls.clone()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, drains, then closes the database.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) {
        let router = routes::router(self.state.clone(), self.request_timeout);
        self.run_router_until(router, shutdown).await;
    }

    /// As [`run_until`](Self::run_until) with a caller-built router (tests
    /// add a slow route to observe draining).
    pub async fn run_router_until(
        self,
        router: axum::Router,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tracing::info!(listen = %self.local_addr, "checkoutd serving (TLS only)");
        self.tls.clone().watch();
        // The stop's drain deadline is known the moment it begins: orders
        // still waiting for their commit then are answered "retry" before
        // their connections are cut.
        let intake = self.state.intake.clone();
        let drain_timeout = self.limits.drain_timeout;
        let shutdown = async move {
            shutdown.await;
            intake.drain_by(tokio::time::Instant::now() + drain_timeout);
        };
        server::run(self.listener, self.tls, router, self.limits, shutdown).await;
        self.store.close().await;
        tracing::info!("checkoutd stopped");
    }
}

/// The exclusive lock on `<data-dir>/keyring.lock` (the one `keys`
/// commands take), creating the data directory owner-only if needed.
async fn first_run_lock(
    settings: &Settings,
    keyring_path: &std::path::Path,
) -> Result<std::fs::File, StartupError> {
    let lock_path = keyring_path.with_extension("lock");
    let data_dir = settings.store.data_dir.clone();
    let path = lock_path.clone();
    // Waiting for the lock blocks: not on the runtime's threads.
    let locked = tokio::task::spawn_blocking(move || {
        crate::files::create_private_dir(&data_dir).and_then(|()| crate::files::lock_file(&path))
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    locked.map_err(|source| {
        KeyringError::Write {
            path: lock_path,
            source,
        }
        .into()
    })
}

/// The master key: from the custodians' shares when given; else the
/// development key file, created on a first run (no keyring yet).
fn master_key(
    settings: &Settings,
    keyring_path: &std::path::Path,
) -> Result<MasterKey, StartupError> {
    let dev = settings
        .store
        .data_dir
        .join(crate::crypto::master::DEV_FILE_NAME);
    if settings.store.master_key_shares.is_empty() && !keyring_path.exists() && !dev.exists() {
        let master =
            MasterKey::generate(&ring::rand::SystemRandom::new()).map_err(KeyringError::from)?;
        crate::files::create_private_dir(&settings.store.data_dir).map_err(|source| {
            KeyringError::Write {
                path: settings.store.data_dir.clone(),
                source,
            }
        })?;
        master.save_dev(&dev).map_err(KeyringError::from)?;
        return Ok(master);
    }
    Ok(
        crate::crypto::master::resolve(&settings.store.data_dir, &settings.store.master_key_shares)
            .map_err(KeyringError::from)?,
    )
}

/// How often a running server looks for a rotated keyring file.
pub const KEYRING_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Polls the keyring file; when `checkoutd keys rotate` (or rewrap, or
/// destroy) rewrote it, the new keyring is swapped in and the components
/// that hold copies of KEKs take theirs. No restart, no signal needed.
fn watch_keyring(
    handle: Arc<KeyringHandle>,
    fulfillment: Arc<Fulfillment>,
    marketing: Arc<crate::consent::audience::Marketing>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(KEYRING_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match handle.reload_if_changed() {
                Ok(true) => {
                    let current = handle.current();
                    fulfillment.refresh(&current);
                    marketing.refresh(&current);
                    tracing::info!("keyring reloaded");
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(error = %error, "the keyring file changed but does not load; keeping the current keyring")
                }
            }
        }
    });
}

/// On a first run (no certificate file in the certs directory, no
/// `--client-ca`), creates the development PKI; returns whether it did. A
/// directory holding only some of the files is refused, naming what is
/// missing (see [`pki::ensure_dev_pki`]).
fn ensure_certificates(settings: &Settings) -> Result<bool, StartupError> {
    let production = settings.client_ca.is_some() || !settings.store.master_key_shares.is_empty();
    if production && !pki::server_cert_present(&settings.certs_dir) {
        return Err(StartupError::ServerCertificateMissing(
            settings.certs_dir.clone(),
        ));
    }
    let created = pki::ensure_dev_pki(&settings.certs_dir)?;
    if created {
        tracing::warn!(certs_dir = %settings.certs_dir.display(), "created a development PKI");
    }
    Ok(created)
}

/// A production set-up (its own client CA, or custodian shares) without
/// `--client-crl` checks no client certificate for revocation: a stolen
/// storefront certificate revoked at the CA would go on working until it
/// expires. Said at every start.
fn no_revocation_notice(settings: &Settings) -> Option<String> {
    let production = settings.client_ca.is_some() || !settings.store.master_key_shares.is_empty();
    (production && settings.client_crl.is_none()).then(|| {
        banner(&[
            "WARNING: --client-crl is not set: client certificates are not checked",
            "for revocation, and one revoked at your CA goes on working until it",
            "expires. Give --client-crl your client CA's revocation list (PEM; it",
            "is reloaded when the file changes).",
        ])
    })
}

/// A production set-up (its own client CA) whose keyring still opens with
/// the development master key file, in clear beside it. Said at every
/// start.
fn development_master_key_notice(settings: &Settings) -> Option<String> {
    (settings.store.master_key_shares.is_empty() && settings.client_ca.is_some()).then(|| {
        banner(&[
            "WARNING: --client-ca is set, yet the keyring opens with the",
            "DEVELOPMENT master key file (master.key, in clear) in:",
            &settings.store.data_dir.display().to_string(),
            "Anyone who can read it can read every card. For real cards, run",
            "`checkoutd keys init --custodians N` and serve with the shares.",
        ])
    })
}

/// The development set-up (the certificates directory's own CA, the
/// development master key in clear beside the keyring) listening where
/// other machines can reach it. Said at every start: after the first, no
/// other banner reminds the operator what this set-up is.
fn development_set_up_exposed_notice(settings: &Settings) -> Option<String> {
    let development = settings.client_ca.is_none() && settings.store.master_key_shares.is_empty();
    (development && !settings.listen.ip().is_loopback()).then(|| {
        banner(&[
            "WARNING: checkoutd runs its DEVELOPMENT set-up (the certificates",
            "directory's CA and role keys, the master key in clear) on",
            &settings.listen.to_string(),
            "an address other machines can reach. For real cards give it",
            "--client-ca and --master-key-share (README, \"Keys\").",
        ])
    })
}

/// A PostgreSQL server on another machine reached without checking its
/// certificate (no `sslmode`, so libpq's `prefer`, or `allow`, `require`,
/// `disable`): whoever sits between can pose as the server, be sent the
/// password, and read or change every row. Said at every start; the same
/// machine (a loopback address, `localhost`, a Unix socket) is not.
fn unverified_database_notice(database: &crate::config::DatabaseUrl) -> Option<String> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    let crate::config::DatabaseUrl::Postgres { url, .. } = database else {
        return None;
    };
    let options: PgConnectOptions = url.parse().ok()?;
    let host = options.get_host();
    let here = options.get_socket().is_some()
        || host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let verified = matches!(
        options.get_ssl_mode(),
        PgSslMode::VerifyCa | PgSslMode::VerifyFull
    );
    (!here && !verified).then(|| {
        banner(&[
            "WARNING: the PostgreSQL server is on another machine and its",
            "certificate is not verified (sslmode is neither verify-full nor",
            "verify-ca): whoever",
            "sits between can pose as it, be sent the password, and read or",
            "change every record. Add sslmode=verify-full&sslrootcert=<CA file>",
            "to --database-url (README, \"PostgreSQL\").",
        ])
    })
}

/// A data directory every user may write to (a volume mounted 0777):
/// whoever can may remove `crl-marks.json` (a
/// rolled-back CRL is then taken) or `audit-anchors.json`, or plant
/// symlinks where the database's files go. Said at every start (made by
/// checkoutd, it is 0700).
fn open_data_dir_notice(data_dir: &std::path::Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data_dir).ok()?.permissions().mode() & 0o777;
        (mode & 0o002 != 0).then(|| {
            banner(&[
                &format!(
                    "WARNING: the data directory is writable by other users (mode {mode:03o}):"
                ),
                &data_dir.display().to_string(),
                "they can remove the CRL marks and audit anchors kept there, or",
                "plant links where the database's files go: `chmod go-w` it (0700).",
            ])
        })
    }
    #[cfg(not(unix))]
    {
        let _ = data_dir;
        None
    }
}

/// A boxed, star-framed warning.
fn banner(lines: &[&str]) -> String {
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) + 4;
    let rule = "*".repeat(width + 2);
    let mut out = format!("\n{rule}\n");
    for line in lines {
        out.push_str(&format!("*  {line:<w$}*\n", w = width - 2));
    }
    out.push_str(&rule);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ServeArgs;

    #[test]
    fn a_production_set_up_without_a_crl_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("client-ca.pem");
        let crl = dir.path().join("client-crl.pem");
        std::fs::write(&ca, "").unwrap();
        std::fs::write(&crl, "").unwrap();
        let with = |client_ca: Option<&std::path::Path>, client_crl: Option<&std::path::Path>| {
            Settings::from_args(&ServeArgs {
                client_ca: client_ca.map(Into::into),
                client_crl: client_crl.map(Into::into),
                ..ServeArgs::default()
            })
            .unwrap()
        };
        let warned = no_revocation_notice(&with(Some(&ca), None)).unwrap();
        assert!(warned.contains("--client-crl is not set"), "{warned}");
        assert!(no_revocation_notice(&with(Some(&ca), Some(&crl))).is_none());
        // The development set-up (the certificates directory's own CA).
        assert!(no_revocation_notice(&with(None, None)).is_none());
        // Its own client CA, but the development master key: warned too.
        let warned = development_master_key_notice(&with(Some(&ca), Some(&crl))).unwrap();
        assert!(warned.contains("DEVELOPMENT master key"), "{warned}");
        assert!(development_master_key_notice(&with(None, None)).is_none());
    }

    #[cfg(unix)]
    #[test]
    fn a_data_directory_others_may_write_to_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let chmod = |mode| {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap()
        };
        // A group's write (a Kubernetes fsGroup volume, 2775) is the
        // operator's choice; everyone's is not.
        for (mode, warned) in [
            (0o700, false),
            (0o750, false),
            (0o770, false),
            (0o777, true),
            (0o702, true),
        ] {
            chmod(mode);
            let notice = open_data_dir_notice(dir.path());
            assert_eq!(notice.is_some(), warned, "{mode:o}");
            if let Some(notice) = notice {
                assert!(notice.contains(&format!("{mode:03o}")), "{notice}");
            }
        }
        chmod(0o700);
    }

    #[test]
    fn a_remote_database_without_certificate_checks_is_warned_about() {
        let url = |u: &str| crate::config::DatabaseUrl::parse(u).unwrap();
        for warned in [
            "postgres://app:pw@db.internal:5432/checkoutd",
            "postgres://app@10.0.0.5/checkoutd?sslmode=require",
            "postgresql://app@db.internal/checkoutd?sslmode=prefer",
        ] {
            let notice = unverified_database_notice(&url(warned)).unwrap();
            assert!(notice.contains("verify-full"), "{notice}");
            assert!(!notice.contains("pw"), "{notice}");
        }
        for quiet in [
            "postgres://app@db.internal/checkoutd?sslmode=verify-full&sslrootcert=/ca.pem",
            "postgres://app@db.internal/checkoutd?sslmode=verify-ca",
            "postgres://app@localhost/checkoutd",
            "postgres://app@127.0.0.1:5432/checkoutd",
            "postgres://app@[::1]/checkoutd",
            "postgres://app@%2Fvar%2Frun%2Fpostgresql/checkoutd",
            "sqlite://data/checkoutd.db",
        ] {
            assert!(unverified_database_notice(&url(quiet)).is_none(), "{quiet}");
        }
    }

    #[test]
    fn the_development_set_up_on_a_reachable_address_is_warned_about() {
        let at = |listen: &str, shares: Vec<std::path::PathBuf>| {
            let mut args = ServeArgs {
                listen: Some(listen.to_owned()),
                ..ServeArgs::default()
            };
            args.store.master_key_shares = shares;
            Settings::from_args(&args).unwrap()
        };
        for exposed in ["0.0.0.0:8443", "[::]:8443", "192.0.2.7:8443"] {
            let warned = development_set_up_exposed_notice(&at(exposed, Vec::new())).unwrap();
            assert!(warned.contains("DEVELOPMENT set-up"), "{warned}");
        }
        for local in ["127.0.0.1:8443", "[::1]:8443"] {
            assert!(development_set_up_exposed_notice(&at(local, Vec::new())).is_none());
        }
        // A production set-up is not the development one.
        let shares = vec!["a.json".into(), "b.json".into()];
        assert!(development_set_up_exposed_notice(&at("0.0.0.0:8443", shares)).is_none());
    }
}
