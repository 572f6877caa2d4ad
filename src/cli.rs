//! The command line (clap). Every flag also reads `CHECKOUTD_<FLAG>` from the
//! environment; `--config FILE` adds a TOML file beneath both. This module
//! only describes the raw input; [`crate::config`] merges and validates it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "checkoutd",
    version,
    about = "Secure checkout payment-capture service (TLS only, envelope-encrypted card and personal data)",
    long_about = "checkoutd takes the order forms a storefront posts over mutual TLS, encrypts card data \
                  and personal details before they touch disk, keeps billing, shipping and gift-recipient \
                  details apart, and tags every record with the customer's consent.\n\n\
                  Settings come from flags, then CHECKOUTD_* environment variables, then the TOML file \
                  named by --config, then built-in defaults."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Run the service. On a first run without certificates it creates a
    /// development PKI in --certs-dir, and without --master-key-share a
    /// development master key (data/master.key) and keyring; it says so
    /// loudly: they are for development only.
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(StoreArgs),
    /// Certificates: create the development PKI (`certs dev`).
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Orders: purge (crypto-shredding), legal holds.
    #[command(subcommand)]
    Orders(OrdersCommand),
    /// Key life cycle: init, status, rotate, rewrap, destroy. A running
    /// server picks up a rewritten keyring within a second.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Verify a database and its keyring offline (read-only) and write a
    /// signed JSON report and, optionally, a self-contained HTML report.
    /// Exit status: 0 everything verifies, 1 something failed, 2 usage or
    /// I/O error.
    Audit(AuditArgs),
}

#[derive(Debug, Subcommand)]
pub enum OrdersCommand {
    /// Destroy an order's personal and card data for good (its records and
    /// their data keys), keeping the non-personal order row, its consent
    /// tags and the access log. One order, or every order dispatched before
    /// a date.
    #[command(group = clap::ArgGroup::new("which").required(true).multiple(false))]
    Purge {
        #[command(flatten)]
        store: StoreArgs,
        /// The order id.
        #[arg(long, value_name = "ID", group = "which")]
        order: Option<String>,
        /// Every order dispatched before this date (YYYY-MM-DD, UTC).
        #[arg(long, value_name = "DATE", group = "which")]
        dispatched_before: Option<String>,
    },
    /// Place a legal hold on an order (a chargeback, a dispute, a court
    /// order): retention passes it over and `orders purge` refuses it until
    /// the hold is released. Prints the data classes the hold keeps.
    Hold {
        #[command(flatten)]
        store: StoreArgs,
        /// The order id.
        #[arg(long, value_name = "ID")]
        order: String,
        /// The case the order is held for: a dispute, chargeback or ticket
        /// number (1–64 ASCII letters, digits and `._:/#-`; never personal
        /// data).
        #[arg(long, value_name = "CASE")]
        reference: String,
    },
    /// Release an order's legal hold: retention takes it up again at its
    /// next pass (data whose period ran out while held goes then).
    Release {
        #[command(flatten)]
        store: StoreArgs,
        /// The order id.
        #[arg(long, value_name = "ID")]
        order: String,
    },
    /// List the legal holds in force: order, since when, case.
    Holds {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// The data classes `--class` names (clap refuses anything else, exit 2).
const CLASSES: [&str; 5] = ["card", "billing", "shipping", "recipient", "contact"];
/// As [`CLASSES`], or all of them at once.
const CLASSES_OR_ALL: [&str; 6] = ["card", "billing", "shipping", "recipient", "contact", "all"];

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a fresh keyring sealed under a new master key, split into N
    /// custodian share files (N ≥ 2, all needed). Refused when a keyring
    /// exists.
    Init {
        #[command(flatten)]
        store: StoreArgs,
        /// Number of custodians (share files), at least 2 (refused before
        /// anything is created otherwise).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..))]
        custodians: u32,
        /// Where to write the share files (hand each to its custodian, then
        /// remove them from this machine).
        #[arg(long, value_name = "DIR")]
        shares_dir: PathBuf,
    },
    /// Per data class, each KEK version with its state, creation date and
    /// how many records it wraps; the other keys' versions. No key material.
    Status {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// A new active KEK version for a class (card, billing, shipping,
    /// recipient, contact or all); the previous one is retired: it still
    /// opens, never seals.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
        /// The data class whose KEK to rotate, or all of them.
        #[arg(long, value_name = "CLASS", value_parser = CLASSES_OR_ALL)]
        class: String,
        /// Recovery after restoring keyring.json from a backup older than
        /// the database's last rotation (rotate is refused otherwise): the
        /// new versions are numbered above every version the database knows.
        #[arg(long)]
        after_keyring_restore: bool,
    },
    /// Re-wrap every data key still under a retired version with the active
    /// one (record ciphertexts are untouched). Batched, resumable, safe while
    /// the server runs.
    Rewrap {
        #[command(flatten)]
        store: StoreArgs,
        /// The data class whose data keys to re-wrap, or all of them.
        #[arg(long, value_name = "CLASS", default_value = "all", value_parser = CLASSES_OR_ALL)]
        class: String,
        /// Records per transaction.
        #[arg(long, env = "CHECKOUTD_BATCH", default_value_t = 500)]
        batch: u32,
    },
    /// Destroy a retired KEK version for good; refused while any record uses it.
    Destroy {
        #[command(flatten)]
        store: StoreArgs,
        /// The data class of the KEK version to destroy.
        #[arg(long, value_name = "CLASS", value_parser = CLASSES)]
        class: String,
        /// The retired version to destroy (`keys status` lists them).
        #[arg(long, value_name = "N")]
        version: u32,
    },
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Where to write the signed JSON report.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write a self-contained HTML report here.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// An earlier signed report of this database (its JSON): the access
    /// log and the withdrawal ledger must still pass through the heads it
    /// recorded — a tail cut off and an older head row put back verifies
    /// on its own.
    #[arg(long, value_name = "FILE")]
    pub since: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create the development PKI: ca.pem, server.pem, server-key.pem and
    /// <role>.pem, <role>-key.pem for storefront, fulfillment, auditor and
    /// marketing. Refused when the directory already holds any of them,
    /// unless --replace. Never use these in production.
    Dev {
        /// Directory to write into.
        #[arg(
            long,
            env = "CHECKOUTD_CERTS_DIR",
            default_value = "certs",
            value_name = "DIR"
        )]
        out: PathBuf,
        /// Re-create: replace a development PKI already there (every
        /// certificate issued by it stops working). Files that are not the
        /// development PKI's are never removed: refused instead.
        #[arg(long)]
        replace: bool,
    },
}

/// Where the data lives; shared by every subcommand that opens the database.
#[derive(Debug, Clone, Default, Args)]
pub struct StoreArgs {
    /// TOML configuration file; its keys are the flag names with `_` for `-`.
    #[arg(long, env = "CHECKOUTD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite database, development keyring) [default: ./data]
    #[arg(long, env = "CHECKOUTD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://… [default: sqlite://<data-dir>/checkoutd.db]
    // Its value may hold a password: `--help` names the variable only.
    #[arg(
        long,
        env = "CHECKOUTD_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Start on a PostgreSQL server that acknowledges commits before they
    /// are on disk (fsync, synchronous_commit or full_page_writes off): testing only, an
    /// acknowledged order could be lost in a crash. `=false` (or the
    /// variable set to false) overrides a configuration file's `true`
    #[arg(
        long,
        env = "CHECKOUTD_ALLOW_UNSAFE_DURABILITY",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_unsafe_durability: Option<bool>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "CHECKOUTD_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// A custodian's master-key share file; give every share (repeat the
    /// flag, or comma-separate in the variable). Without shares, the
    /// development key file <data-dir>/master.key is used.
    #[arg(
        long = "master-key-share",
        env = "CHECKOUTD_MASTER_KEY_SHARE",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub master_key_shares: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on (TLS only) [default: 127.0.0.1:8443]
    #[arg(long, env = "CHECKOUTD_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory with server.pem, server-key.pem and ca.pem [default: ./certs]
    #[arg(long, env = "CHECKOUTD_CERTS_DIR", value_name = "DIR")]
    pub certs_dir: Option<PathBuf>,
    /// CA that issues client certificates [default: <certs-dir>/ca.pem]
    #[arg(long, env = "CHECKOUTD_CLIENT_CA", value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Revocation lists of the client CAs (PEM): a revoked client certificate fails the handshake; so does every one while the CRL has expired or if its CA has none in the file. Reloaded on change, like the certificates [default: none]
    #[arg(long, env = "CHECKOUTD_CLIENT_CRL", value_name = "FILE")]
    pub client_crl: Option<PathBuf>,
    /// Most TLS connections served at once [default: 4096]
    #[arg(long, env = "CHECKOUTD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Time allowed for a TLS handshake, e.g. 10s or 500ms [default: 10s]
    #[arg(long, env = "CHECKOUTD_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    pub handshake_timeout: Option<String>,
    /// Time allowed to send an HTTP/1 request head [default: 10s]
    #[arg(long, env = "CHECKOUTD_HEADER_READ_TIMEOUT", value_name = "DURATION")]
    pub header_read_timeout: Option<String>,
    /// Time allowed for a whole request, body included [default: 30s]
    #[arg(long, env = "CHECKOUTD_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// Time in-flight requests get to finish on SIGTERM/SIGINT [default: 5s]
    #[arg(long, env = "CHECKOUTD_DRAIN_TIMEOUT", value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// Close a connection after this long without traffic [default: 60s]
    #[arg(long, env = "CHECKOUTD_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Most connections without a client certificate at once [default: 512]
    #[arg(long, env = "CHECKOUTD_MAX_ANONYMOUS_CONNECTIONS", value_name = "N")]
    pub max_anonymous_connections: Option<usize>,
    /// Most connections from one client address (IPv6: a /64) [default: 1024, at most --max-connections]
    #[arg(long, env = "CHECKOUTD_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Most new connections (TLS handshakes) a second from one client address (IPv6: a /64); its network (IPv4 /24, IPv6 /48) 5 times as many [default: 200]
    #[arg(long, env = "CHECKOUTD_MAX_HANDSHAKES_PER_IP", value_name = "N")]
    pub max_handshakes_per_ip: Option<u32>,
    /// Most requests processed at once; beyond, 503 with Retry-After [default: 1024]
    #[arg(long, env = "CHECKOUTD_MAX_REQUESTS_IN_FLIGHT", value_name = "N")]
    pub max_requests_in_flight: Option<usize>,
    /// Of those, most on connections without a client certificate [default: 64, at most --max-requests-in-flight]
    #[arg(
        long,
        env = "CHECKOUTD_MAX_ANONYMOUS_REQUESTS_IN_FLIGHT",
        value_name = "N"
    )]
    pub max_anonymous_requests_in_flight: Option<usize>,
    /// Orders waiting for the group-commit writer; beyond, 503 with Retry-After [default: 1024]
    #[arg(long, env = "CHECKOUTD_COMMIT_QUEUE", value_name = "N")]
    pub commit_queue: Option<usize>,
    /// Purge card data this many days after dispatch (0 keeps it) [default: 120]
    #[arg(long, env = "CHECKOUTD_RETAIN_CARD_DAYS", value_name = "DAYS")]
    pub retain_card_days: Option<u32>,
    /// Purge gift-recipient data this many days after dispatch (0 keeps it) [default: 30]
    #[arg(long, env = "CHECKOUTD_RETAIN_RECIPIENT_DAYS", value_name = "DAYS")]
    pub retain_recipient_days: Option<u32>,
    /// Purge the card, shipping and gift-recipient data of an order never dispatched this many days after it was taken: it can no longer be dispatched (0 keeps it) [default: 180]
    #[arg(long, env = "CHECKOUTD_RETAIN_UNDISPATCHED_DAYS", value_name = "DAYS")]
    pub retain_undispatched_days: Option<u32>,
    /// Hours a retried Idempotency-Key is compared with its first request and replayed; later it is refused (422 idempotency-window-passed), and a purge ends it at once [default: 168, at least 25]
    #[arg(long, env = "CHECKOUTD_REPLAY_WINDOW_HOURS", value_name = "HOURS")]
    pub replay_window_hours: Option<u32>,
    /// Opt-outs per client IP per minute on the public /unsubscribe page [default: 10]
    #[arg(long, env = "CHECKOUTD_UNSUBSCRIBE_RATE_LIMIT", value_name = "N")]
    pub unsubscribe_rate_limit: Option<u32>,
    /// Privacy-policy versions orders may name, comma-separated [default: 2002-06-05]
    #[arg(long, env = "CHECKOUTD_POLICY_VERSIONS", value_name = "LIST")]
    pub policy_versions: Option<String>,
}

/// Prefixes of `CHECKOUTD_` variables read outside the command line: the
/// test suite's, the benchmark's, the crash harness's and the failpoints'.
const OTHER_READERS: [&str; 6] = [
    "CHECKOUTD_TEST_",
    "CHECKOUTD_BENCH_",
    "CHECKOUTD_CRASH_",
    "CHECKOUTD_FAILPOINT_",
    "CHECKOUTD_KEEP_WORK_DIR",
    "CHECKOUTD_PANICS_CHILD",
];

/// Variables an earlier release read under another name, and the name that
/// replaced them. One still set is refused (exit 2), not ignored: an
/// operator's share files left unread would fall back to the development
/// master key on a new data directory.
pub const RENAMED_VARIABLES: [(&str, &str); 1] =
    [("CHECKOUTD_MASTER_KEY_SHARES", "CHECKOUTD_MASTER_KEY_SHARE")];

/// The renamed variables among `names`, each with its new name.
pub fn renamed_variables(
    names: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<(&'static str, &'static str)> {
    let names: Vec<std::ffi::OsString> = names.into_iter().collect();
    RENAMED_VARIABLES
        .into_iter()
        .filter(|(old, _)| names.iter().any(|n| n.as_os_str() == *old))
        .collect()
}

/// The `CHECKOUTD_*` names among `names` that no setting reads: most
/// likely misspelled (`CHECKOUTD_CLIENT_CRLS` would otherwise leave the
/// revocation list out without a word). Said, not refused: a variable left
/// in a shell (`CHECKOUTD_VERSION`, which `keys destroy` deliberately does
/// not read) must not stop every command.
pub fn unread_variables(names: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<String> {
    fn read_by(command: &clap::Command, into: &mut std::collections::HashSet<String>) {
        for arg in command.get_arguments() {
            if let Some(name) = arg.get_env().and_then(|n| n.to_str()) {
                into.insert(name.to_owned());
            }
        }
        for sub in command.get_subcommands() {
            read_by(sub, into);
        }
    }
    let mut read = std::collections::HashSet::new();
    read_by(&<Cli as clap::CommandFactory>::command(), &mut read);
    let mut unread: Vec<String> = names
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .filter(|n| n.starts_with("CHECKOUTD_") && !read.contains(n))
        .filter(|n| !OTHER_READERS.iter().any(|p| n.starts_with(p)))
        .filter(|n| !RENAMED_VARIABLES.iter().any(|(old, _)| n == old))
        .collect();
    unread.sort();
    unread
}

#[cfg(test)]
mod tests {
    #[test]
    fn variables_no_setting_reads_are_named() {
        let names = [
            "CHECKOUTD_CLIENT_CRLS",
            "CHECKOUTD_CLIENT_CRL",
            "CHECKOUTD_DATABASE_URL",
            "CHECKOUTD_MASTER_KEY_SHARES",
            "CHECKOUTD_MASTER_KEY_SHARE",
            "CHECKOUTD_BATCH",
            "CHECKOUTD_TEST_DATABASE_URL",
            "CHECKOUTD_FAILPOINT_AFTER_COMMIT",
            "PATH",
        ]
        .map(std::ffi::OsString::from);
        assert_eq!(
            super::unread_variables(names.clone()),
            ["CHECKOUTD_CLIENT_CRLS"]
        );
        assert_eq!(
            super::renamed_variables(names),
            [("CHECKOUTD_MASTER_KEY_SHARES", "CHECKOUTD_MASTER_KEY_SHARE")]
        );
    }

    #[test]
    fn class_names_are_the_data_classes() {
        let names: Vec<&str> = crate::crypto::DataClass::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        assert_eq!(names, super::CLASSES);
        assert_eq!(super::CLASSES_OR_ALL[..5], super::CLASSES);
        assert_eq!(super::CLASSES_OR_ALL[5], "all");
    }
}
