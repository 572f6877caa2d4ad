//! `spawn_app()` and TLS clients for the integration tests.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use checkoutd::app::Application;
use checkoutd::cli::{ServeArgs, StoreArgs};
use checkoutd::config::Settings;
use checkoutd::pki::DevPki;
use checkoutd::server::identity::Role;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Everything the server logged during this test binary's run, for leak
/// scans. Installed once as the global subscriber.
pub fn captured_logs() -> String {
    let buf = log_buffer().lock().unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

/// Set by tests/log_hygiene.rs when it runs this binary: every log line
/// also goes to this file, and each test app's key material (master key,
/// TLS private keys) to `<file>.keys`, one needle per line, for its scan.
pub const LOG_FILE_ENV: &str = "CHECKOUTD_TEST_LOG_FILE";

fn log_file() -> Option<&'static Mutex<std::fs::File>> {
    static FILE: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::var_os(LOG_FILE_ENV)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        Some(Mutex::new(file))
    })
    .as_ref()
}

/// Lists a test app's key material in `<log file>.keys` (see [`LOG_FILE_ENV`]).
fn record_key_material(data_dir: &std::path::Path, pki: &DevPki) {
    let Some(log) = std::env::var_os(LOG_FILE_ENV) else {
        return;
    };
    let mut needles = Vec::new();
    if let Ok(text) = std::fs::read_to_string(data_dir.join("master.key")) {
        let file: serde_json::Value = serde_json::from_str(&text).unwrap();
        needles.push(file["key"].as_str().unwrap().to_owned());
    }
    let keys = std::iter::once(&pki.server).chain(pki.clients.iter().map(|(_, c)| c));
    for issued in keys {
        // The longest base64 line of the private key's PEM.
        let line = issued.key_pem.lines().max_by_key(|l| l.len()).unwrap();
        needles.push(line.to_owned());
    }
    let mut path = log;
    path.push(".keys");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(file, "{}", needles.join("\n")).unwrap();
}

#[derive(Clone)]
struct BufWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        if let Some(file) = log_file() {
            file.lock().unwrap().write_all(data)?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let buf = log_buffer().clone();
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        // Everything the server side logs (our crate at debug, its libraries at
        // info, the server's caps on top: checkoutd::telemetry::caps); the
        // test clients' own protocol chatter (DevTools over WebSocket,
        // reqwest) is not server output and stays out.
        let filter = tracing_subscriber::EnvFilter::new(
            "info,checkoutd=debug,tungstenite=warn,tokio_tungstenite=warn,reqwest=warn",
        );
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(checkoutd::telemetry::caps())
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(move || BufWriter(buf.clone())),
            )
            .try_init();
    });
}

/// The environment variable naming a PostgreSQL server for the suite: a URL
/// whose role may `CREATE DATABASE` (e.g.
/// `postgres://checkoutd:checkoutd@127.0.0.1/postgres`). Set, every test
/// runs on its own freshly created database there, dropped afterwards;
/// unset, every test runs on SQLite.
pub const POSTGRES_ENV: &str = "CHECKOUTD_TEST_DATABASE_URL";

/// The PostgreSQL server URL of this run, if any.
pub fn postgres_server() -> Option<String> {
    std::env::var(POSTGRES_ENV).ok().filter(|v| !v.is_empty())
}

/// Says once, on the real stderr (past the test harness's capture), which
/// engine this run uses.
fn announce_engine() {
    sqlx::any::install_default_drivers();
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let line = match postgres_server() {
            Some(_) => "checkoutd tests: running on PostgreSQL (one fresh database per test)\n".to_owned(),
            None => format!(
                "checkoutd tests: running on SQLite; the PostgreSQL run was SKIPPED (set {POSTGRES_ENV} to a PostgreSQL URL whose role may create databases, as .ci/run does)\n"
            ),
        };
        let _ = std::io::stderr().write_all(line.as_bytes());
    });
}

/// The database of one test: an SQLite file in the test's data directory,
/// or a PostgreSQL database created for the test and dropped with it.
pub struct TestDatabase {
    /// What `--database-url` is given.
    pub url: String,
    /// (server URL, database name) of a PostgreSQL database to drop.
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    pub async fn create(data_dir: &std::path::Path) -> Self {
        let Some(server) = postgres_server() else {
            return TestDatabase {
                url: format!("sqlite://{}", data_dir.join("checkoutd.db").display()),
                postgres: None,
            };
        };
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        // Hex, so no database name holds a long decimal run that the log
        // scan (tests/log_hygiene.rs) could take for a card number.
        let name = format!(
            "checkoutd_test_{:x}_{:x}_{nanos:x}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        drop_leftover_databases(&server).await;
        let admin = sqlx::PgPool::connect(&server).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        TestDatabase {
            url: with_database(&server, &name),
            postgres: Some((server, name)),
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }
}

/// `url` with its database (path) replaced by `name`, parameters kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, params) = match url.split_once('?') {
        Some((b, p)) => (b, format!("?{p}")),
        None => (url, String::new()),
    };
    let (scheme, rest) = base.split_once("://").unwrap();
    let authority = rest.split('/').next().unwrap();
    format!("{scheme}://{authority}/{name}{params}")
}

/// `url` with its `host:port` replaced by `via` (user and password kept).
pub fn with_authority(url: &str, via: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!("{scheme}://{}{via}{path}", userinfo.unwrap_or_default())
}

/// The `host:port` of a PostgreSQL URL, resolved.
pub async fn postgres_addr(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split(['/', '?']).next().unwrap();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    tokio::net::lookup_host(host_port)
        .await
        .unwrap()
        .next()
        .unwrap()
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((server, name)) = self.postgres.take() else {
            return;
        };
        // On a thread of its own, and not waited for. Drop runs on the
        // test's runtime thread, where the test's server still runs: blocked
        // here, a connection that server was opening would hang half-way
        // through authentication — PostgreSQL's DROP DATABASE waits for
        // every backend to take its signal barrier, which a backend still
        // authenticating does not, and FORCE does not end it (it has no
        // database yet) — for `authentication_timeout`, a minute. Not
        // blocked, the runtime ends, the connection closes, the drop
        // finishes at once. A drop cut short by the end of the test
        // process is finished by a later run ([`drop_leftover_databases`])
        // or by `.ci/run`.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(drop_database(&server, &name));
        });
    }
}

/// Best effort: a drop refused (PostgreSQL answers 42501 when FORCE would
/// have to end a backend of another role, such as autovacuum's) or cut off
/// leaves the database to a later run ([`drop_leftover_databases`]) or to
/// `.ci/run`; it fails no test and panics no thread.
async fn drop_database(server: &str, name: &str) {
    let admin = match sqlx::PgPool::connect(server).await {
        Ok(admin) => admin,
        Err(error) => {
            eprintln!("test database {name} left for a later run: {error}");
            return;
        }
    };
    if let Err(error) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
    {
        eprintln!("test database {name} left for a later run: {error}");
    }
    admin.close().await;
}

/// Drops test databases left behind — by an interrupted run, or a drop
/// cut short by the end of its process — that are over an hour old (the
/// creation time is in the name) and that no session uses: never one of a
/// run still going, on this machine or another sharing the server. Once
/// per process.
async fn drop_leftover_databases(server: &str) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let admin = sqlx::PgPool::connect(server).await.unwrap();
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT d.datname FROM pg_database d
              WHERE d.datname LIKE 'checkoutd\\_test\\_%'
                AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
        )
        .fetch_all(&admin)
        .await
        .unwrap();
        admin.close().await;
        let hour_ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            .saturating_sub(3_600_000_000_000);
        for name in names {
            let created = name
                .rsplit('_')
                .next()
                .and_then(|hex| u128::from_str_radix(hex, 16).ok());
            if created.is_some_and(|at| at < hour_ago) {
                drop_database(server, &name).await;
            }
        }
    })
    .await;
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub pki: Arc<DevPki>,
    pub dir: Arc<TempDir>,
    pub database: Arc<TestDatabase>,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: Option<JoinHandle<()>>,
    /// What the server told its operator at start
    /// (`Application::startup_notices`).
    pub notices: Vec<String>,
    /// The running server's services (its keyring handle, say).
    pub state: checkoutd::routes::AppState,
    /// The running server's TLS configuration (whether its files load).
    pub tls: Arc<checkoutd::server::tls::ReloadableTls>,
}

const CLIENT_CRL_FILE: &str = "client-crl.pem";

pub fn in_a_week() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(7)
}

/// Writes the CA's revocation list, revoking `revoked`'s certificates,
/// whose next update is `next_update` (in the past: an expired list).
fn write_client_crl(
    pki: &DevPki,
    certs: &std::path::Path,
    revoked: &[Role],
    next_update: time::OffsetDateTime,
) {
    // Issued now, as a CA issues its current list (a reload refuses a list
    // older than the one in force), or just before it expired.
    let this_update = (time::OffsetDateTime::now_utc() - time::Duration::minutes(5))
        .min(next_update - time::Duration::seconds(1));
    let revoked: Vec<_> = revoked.iter().map(|r| pki.client(*r).unwrap()).collect();
    let pem = pki
        .revocation_list(&revoked, this_update, next_update)
        .unwrap();
    // Replaced in one step, as an operator's deployment should.
    let tmp = certs.join("client-crl.pem.new");
    std::fs::write(&tmp, pem).unwrap();
    std::fs::rename(tmp, certs.join(CLIENT_CRL_FILE)).unwrap();
}

impl TestApp {
    /// Publishes a new client CRL (the server picks it up within its poll).
    pub fn write_client_crl(&self, revoked: &[Role], next_update: time::OffsetDateTime) {
        write_client_crl(
            &self.pki,
            &self.dir.path().join("certs"),
            revoked,
            next_update,
        );
    }

    /// Overwrites the client CRL file with `bytes` as they are.
    pub fn write_client_crl_bytes(&self, bytes: &[u8]) {
        std::fs::write(self.dir.path().join("certs").join(CLIENT_CRL_FILE), bytes).unwrap();
    }
}

/// Rewrites a database URL.
pub type RewriteUrl = Box<dyn FnOnce(&str) -> String + Send>;

/// Options for [`spawn_app_with`].
#[derive(Default)]
pub struct Options {
    pub serve: ServeArgs,
    /// Extra routes merged into the real router (e.g. a slow one).
    pub extra_routes: Option<axum::Router<checkoutd::routes::AppState>>,
    /// Run as a second instance of this app: same data directory (keyring,
    /// certificates), same database — what two processes of one
    /// deployment share.
    pub share_with: Option<Shared>,
    /// Rewrites the test database's URL (e.g. to go through a proxy).
    pub database_url: Option<RewriteUrl>,
    /// Serve with `--client-crl`: the test CA's revocation list, revoking
    /// nothing at first (see [`TestApp::write_client_crl`]).
    pub client_crl: bool,
}

/// What a second instance shares with the first.
#[derive(Clone)]
pub struct Shared {
    pki: Arc<DevPki>,
    dir: Arc<TempDir>,
    database: Arc<TestDatabase>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    init_logs();
    announce_engine();
    let (pki, dir, database) = match options.share_with {
        Some(shared) => (shared.pki, shared.dir, shared.database),
        None => {
            let dir = tempfile::tempdir().unwrap();
            let pki = DevPki::generate().unwrap();
            pki.write_to(&dir.path().join("certs")).unwrap();
            let database = TestDatabase::create(&dir.path().join("data")).await;
            (Arc::new(pki), Arc::new(dir), Arc::new(database))
        }
    };
    let certs = dir.path().join("certs");
    let mut args = options.serve;
    if options.client_crl {
        write_client_crl(&pki, &certs, &[], in_a_week());
        args.client_crl = Some(certs.join(CLIENT_CRL_FILE));
    }
    args.listen = Some("127.0.0.1:0".into());
    args.certs_dir = Some(certs);
    args.store = StoreArgs {
        data_dir: Some(dir.path().join("data")),
        database_url: Some(match options.database_url {
            Some(rewrite) => rewrite(&database.url),
            None => database.url.clone(),
        }),
        ..args.store
    };
    let settings = Settings::from_args(&args).unwrap();
    let app = Application::build(&settings).await.unwrap();
    let notices = app.startup_notices().to_vec();
    let state = app.state().clone();
    let tls = app.tls();
    record_key_material(&dir.path().join("data"), &pki);
    let addr = app.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let server = match options.extra_routes {
        None => tokio::spawn(app.run_until(shutdown)),
        Some(extra) => {
            let router =
                checkoutd::routes::router_with(app.state().clone(), Duration::from_secs(30), extra);
            tokio::spawn(app.run_router_until(router, shutdown))
        }
    };
    TestApp {
        addr,
        pki,
        dir,
        database,
        shutdown: Some(tx),
        server: Some(server),
        notices,
        state,
        tls,
    }
}

impl TestApp {
    /// Another process of this deployment (same data directory, database
    /// and certificates), started now: a restart, or a second host.
    pub async fn another_process(&self) -> TestApp {
        spawn_app_with(Options {
            share_with: Some(self.shared()),
            ..Default::default()
        })
        .await
    }

    /// What a second instance of this deployment needs (see
    /// [`Options::share_with`]).
    pub fn shared(&self) -> Shared {
        Shared {
            pki: self.pki.clone(),
            dir: self.dir.clone(),
            database: self.database.clone(),
        }
    }

    /// A connection pool on this test's database (either engine; write SQL
    /// with `$N` parameters).
    ///
    /// Its statements are not logged: a test's own SQL (tamper statements
    /// with literal card numbers) is not server output, and must not reach
    /// the logs `tests/log_hygiene.rs` scans.
    pub async fn db(&self) -> sqlx::AnyPool {
        use sqlx::ConnectOptions;
        sqlx::any::install_default_drivers();
        let options: sqlx::any::AnyConnectOptions = self.database.url.parse().unwrap();
        let options = options
            .log_statements(log::LevelFilter::Off)
            .log_slow_statements(log::LevelFilter::Off, std::time::Duration::from_secs(1));
        sqlx::AnyPool::connect_with(options).await.unwrap()
    }

    /// As someone with write access to the database would: switch off the
    /// triggers guarding `table` (append-only, retired-KEK). Until
    /// [`Self::reguard`], the audit also names each guard switched off.
    pub async fn unguard(&self, table: &str) {
        let db = self.db().await;
        sqlx::query("CREATE TABLE IF NOT EXISTS test_unguarded (tbl TEXT NOT NULL, def TEXT)")
            .execute(&db)
            .await
            .unwrap();
        if self.database.is_postgres() {
            sqlx::query(&format!("ALTER TABLE {table} DISABLE TRIGGER USER"))
                .execute(&db)
                .await
                .unwrap();
            sqlx::query("INSERT INTO test_unguarded (tbl) VALUES ($1)")
                .bind(table)
                .execute(&db)
                .await
                .unwrap();
            return;
        }
        let triggers: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = $1",
        )
        .bind(table)
        .fetch_all(&db)
        .await
        .unwrap();
        assert!(!triggers.is_empty(), "{table} has triggers");
        for (name, def) in triggers {
            sqlx::query("INSERT INTO test_unguarded (tbl, def) VALUES ($1, $2)")
                .bind(table)
                .bind(&def)
                .execute(&db)
                .await
                .unwrap();
            sqlx::query(&format!("DROP TRIGGER {name}"))
                .execute(&db)
                .await
                .unwrap();
        }
    }

    /// Switches back on every guard [`Self::unguard`] switched off, as
    /// the migrations made them: the forged rows stay, and the audit must
    /// find them by what they are, not by a guard left off.
    pub async fn reguard(&self) {
        let db = self.db().await;
        let off: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT tbl, def FROM test_unguarded")
                .fetch_all(&db)
                .await
                .unwrap();
        for (table, def) in off {
            let sql = match def {
                Some(def) => def,
                None => format!("ALTER TABLE {table} ENABLE TRIGGER USER"),
            };
            sqlx::raw_sql(&sql).execute(&db).await.unwrap();
        }
        sqlx::query("DROP TABLE test_unguarded")
            .execute(&db)
            .await
            .unwrap();
    }

    /// Every byte the database holds, as someone with a copy would see it:
    /// for SQLite the file and its WAL; for PostgreSQL a `pg_dump` of the
    /// test database, with every `bytea` value also decoded to its bytes.
    pub async fn database_bytes(&self) -> Vec<(&'static str, Vec<u8>)> {
        if !self.database.is_postgres() {
            let file = self.dir.path().join("data").join("checkoutd.db");
            let mut out = vec![("database file", std::fs::read(&file).unwrap())];
            if let Ok(wal) = std::fs::read(file.with_extension("db-wal")) {
                out.push(("wal", wal));
            }
            return out;
        }
        let dump = std::process::Command::new("pg_dump")
            .args(["--data-only", "--dbname"])
            .arg(&self.database.url)
            .output()
            .expect("pg_dump (Debian: postgresql-client) runs");
        assert_succeeded(&dump);
        let text = String::from_utf8_lossy(&dump.stdout).into_owned();
        let mut decoded = Vec::new();
        for part in text.split("\\\\x").skip(1) {
            let hex: String = part.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
            for i in (0..hex.len() / 2 * 2).step_by(2) {
                decoded.push(u8::from_str_radix(&hex[i..i + 2], 16).unwrap());
            }
            decoded.push(0);
        }
        assert!(
            text.contains("COPY public.orders"),
            "the dump holds the orders"
        );
        vec![("pg_dump", dump.stdout), ("pg_dump bytea values", decoded)]
    }

    /// The checkoutd binary, pointed at this app's data directory and
    /// database.
    pub fn command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_checkoutd"));
        c.env("CHECKOUTD_DATA_DIR", self.dir.path().join("data"))
            .env("CHECKOUTD_DATABASE_URL", &self.database.url);
        c
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
    }

    /// A client presenting the certificate of `role`.
    pub fn client(&self, role: Role) -> reqwest::Client {
        let cert = self.pki.client(role).unwrap();
        client_with(
            &self.pki,
            Some((&cert.cert_pem, &cert.key_pem)),
            Versions::Both,
        )
    }

    /// GET `path` as `role`; the JSON body.
    pub async fn get_json(&self, role: Role, path: &str) -> serde_json::Value {
        self.client(role)
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A client with no certificate.
    /// The server's `/metrics` text (auditor role). The recorder is global
    /// to the test process: every app of the suite counts into it, so a
    /// test compares scrapes before and after what it does.
    /// The access log's first 1 000 entries, as the auditor reads them.
    pub async fn access_log_entries(&self) -> Vec<serde_json::Value> {
        let mut log = self
            .get_json(Role::Auditor, "/v1/audit/log?limit=1000")
            .await;
        match log["entries"].take() {
            serde_json::Value::Array(entries) => entries,
            other => panic!("no entries: {other}"),
        }
    }

    pub async fn metrics(&self) -> String {
        self.client(Role::Auditor)
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn anonymous(&self) -> reqwest::Client {
        client_with(&self.pki, None, Versions::Both)
    }

    /// Begins graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Clone, Copy)]
pub enum Versions {
    Both,
    Tls12,
    Tls13,
}

/// A reqwest client trusting only the test CA of `pki`, optionally
/// presenting a client certificate.
pub fn client_with(
    pki: &DevPki,
    cert: Option<(&str, &str)>,
    versions: Versions,
) -> reqwest::Client {
    let config = rustls_client_config(pki, cert, versions);
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn rustls_client_config(
    pki: &DevPki,
    cert: Option<(&str, &str)>,
    versions: Versions,
) -> rustls::ClientConfig {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match versions {
        Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Tls12 => &[&rustls::version::TLS12],
        Versions::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// Asserts a problem+json answer with `status` and returns its body.
pub async fn expect_problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "problem documents use application/problem+json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:checkoutd:problem:")
    );
    assert!(body["title"].is_string());
    body
}

/// A raw TLS connection to the app (handshake done, nothing sent), with or
/// without a client certificate.
pub async fn tls_connect(
    app: &TestApp,
    role: Option<Role>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_connect_offering(app, role, None).await
}

/// As [`tls_connect`], offering only the ALPN protocols `alpn` if given
/// (e.g. `[b"http/1.1"]` for a raw HTTP/1.1 connection).
pub async fn tls_connect_offering(
    app: &TestApp,
    role: Option<Role>,
    alpn: Option<&[&[u8]]>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cert = role.map(|r| app.pki.client(r).unwrap());
    let mut config = rustls_client_config(
        &app.pki,
        cert.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())),
        Versions::Both,
    );
    if let Some(alpn) = alpn {
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// How long a test waits for something that normally takes milliseconds
/// (a request reaching its handler, a server noticing a signal): generous,
/// so a slow, loaded machine never fails a test by chance, and only a
/// broken behaviour ever waits this long.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A test route whose handler counts itself in and then waits until the
/// test releases it: the test knows exactly how many requests are in their
/// handlers, and holds them there as long as it needs, instead of guessing
/// with sleeps.
#[derive(Clone)]
pub struct HeldRoute {
    entered: Arc<tokio::sync::watch::Sender<usize>>,
    released: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for HeldRoute {
    fn default() -> Self {
        HeldRoute {
            entered: Arc::new(tokio::sync::watch::Sender::new(0)),
            released: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }
}

impl HeldRoute {
    /// `path` for any method, answering `answer` once released (a body, if
    /// any, is never read).
    pub fn router(
        &self,
        path: &str,
        answer: &'static str,
    ) -> axum::Router<checkoutd::routes::AppState> {
        let held = self.clone();
        axum::Router::new().route(
            path,
            axum::routing::any(move || {
                let held = held.clone();
                async move {
                    let mut released = held.released.subscribe();
                    held.entered.send_modify(|n| *n += 1);
                    let _ = released.wait_for(|r| *r).await;
                    answer
                }
            }),
        )
    }

    /// How many requests have entered the handler so far.
    pub fn entered(&self) -> usize {
        *self.entered.borrow()
    }

    /// Follows [`entered`](Self::entered).
    pub fn entries(&self) -> tokio::sync::watch::Receiver<usize> {
        self.entered.subscribe()
    }

    /// Waits (at most [`PATIENCE`]) until `n` requests have entered.
    pub async fn wait_entered(&self, n: usize) {
        let mut entries = self.entries();
        let reached = tokio::time::timeout(PATIENCE, entries.wait_for(|e| *e >= n)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "only {} of {n} requests reached the held handler within {PATIENCE:?}",
            self.entered()
        );
    }

    /// Lets every held request (and any later one) finish.
    pub fn release(&self) {
        self.released.send_replace(true);
    }
}

/// Whether `app` still completes a TLS handshake at its address. Only this
/// app can: its certificate is from this test's own CA, so another test's
/// server that has since taken the freed port does not count.
pub async fn still_serves(app: &TestApp) -> bool {
    let connect = tokio::net::TcpStream::connect(app.addr);
    let Ok(Ok(tcp)) = tokio::time::timeout(Duration::from_secs(5), connect).await else {
        return false;
    };
    let config = rustls_client_config(&app.pki, None, Versions::Both);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let handshake = connector.connect(name, tcp);
    matches!(
        tokio::time::timeout(Duration::from_secs(5), handshake).await,
        Ok(Ok(_))
    )
}

/// A `checkoutd` command that must wait on a lock a test holds: started,
/// and still running 2 s later (`why` says what it should be waiting
/// for). Collect its output with [`finish`] once the lock is let go.
pub async fn start_waiting(mut command: std::process::Command, why: &str) -> std::process::Child {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(child.try_wait().unwrap().is_none(), "{why}");
    child
}

/// The output of a command started with [`start_waiting`], once it ends.
pub async fn finish(child: std::process::Child) -> std::process::Output {
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
}

/// Asserts that a command run to completion succeeded, showing what it
/// said on stderr if it did not.
pub fn assert_succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the unlabelled metric `name` in a `/metrics` text (0 when
/// it was never counted).
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse::<f64>().unwrap())
}
