//! Typed settings: flags and `CHECKOUTD_*` variables (clap) over an optional
//! TOML file over defaults, validated before anything binds or opens.
//!
//! Errors name the setting and where it came from, never its value (a
//! database URL can hold a password).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{ServeArgs, StoreArgs};
use crate::server::ConnectionLimits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {reason}")]
    ParseFile { path: PathBuf, reason: String },
    #[error(
        "invalid setting `{setting}` (--{flag} / CHECKOUTD_{env} / config key {setting}): {expected}"
    )]
    Invalid {
        setting: &'static str,
        flag: &'static str,
        env: &'static str,
        expected: &'static str,
    },
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A validated database location. The scheme picks the engine; anything but
/// `sqlite:` and `postgres:`/`postgresql:` is refused.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite {
        path: PathBuf,
    },
    Postgres {
        url: String,
        /// Start even if the server acknowledges commits before they are on
        /// disk (`fsync`, `synchronous_commit` or `full_page_writes` off). Never in production.
        allow_unsafe_durability: bool,
    },
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite { path } => write!(f, "sqlite://{}", path.display()),
            // The URL may hold credentials.
            DatabaseUrl::Postgres { .. } => f.write_str("postgres://<redacted>"),
        }
    }
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Option<Self> {
        if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            // A query (`?mode=ro`, `?cache=shared`) would be ignored —
            // checkoutd opens the file its own way — so it is refused, as
            // an unknown scheme is, rather than silently dropped.
            if rest.is_empty() || rest == ":memory:" || rest.contains('?') {
                return None;
            }
            let path = rest;
            return Some(DatabaseUrl::Sqlite {
                path: PathBuf::from(path),
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Some(DatabaseUrl::Postgres {
                url: url.to_owned(),
                allow_unsafe_durability: false,
            });
        }
        None
    }

    pub fn default_for(data_dir: &Path) -> Self {
        DatabaseUrl::Sqlite {
            path: data_dir.join("checkoutd.db"),
        }
    }
}

/// A list of strings, or one string of comma-separated items.
fn list_or_commas<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCommas {
        List(Vec<String>),
        Commas(String),
    }
    Ok(Some(match ListOrCommas::deserialize(deserializer)? {
        ListOrCommas::List(items) => items,
        ListOrCommas::Commas(text) => text.split(',').map(|v| v.trim().to_owned()).collect(),
    }))
}

/// The TOML file: the same settings as the flags, `snake_case`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    /// `master_key_share` too: the flag's own name (`--master-key-share`).
    #[serde(alias = "master_key_share")]
    master_key_shares: Option<Vec<PathBuf>>,
    database_url: Option<String>,
    allow_unsafe_durability: Option<bool>,
    log_format: Option<String>,
    listen: Option<String>,
    certs_dir: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    client_crl: Option<PathBuf>,
    max_connections: Option<usize>,
    handshake_timeout: Option<String>,
    header_read_timeout: Option<String>,
    request_timeout: Option<String>,
    drain_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_anonymous_connections: Option<usize>,
    max_requests_in_flight: Option<usize>,
    max_anonymous_requests_in_flight: Option<usize>,
    max_connections_per_ip: Option<usize>,
    max_handshakes_per_ip: Option<u32>,
    commit_queue: Option<usize>,
    /// A list, or one string of comma-separated versions as the flag
    /// takes them.
    #[serde(default, deserialize_with = "list_or_commas")]
    policy_versions: Option<Vec<String>>,
    unsubscribe_rate_limit: Option<u32>,
    retain_card_days: Option<u32>,
    retain_recipient_days: Option<u32>,
    retain_undispatched_days: Option<u32>,
    replay_window_hours: Option<u32>,
}

fn load_file(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        // toml's message names the key and position; values in a config
        // file are the operator's own.
        reason: e.message().to_owned(),
    })
}

/// Settings every subcommand that opens the database needs.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub data_dir: PathBuf,
    /// Custodian share files (empty: the development master key file).
    pub master_key_shares: Vec<PathBuf>,
    pub database: DatabaseUrl,
    pub log_format: LogFormat,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store: StoreSettings,
    pub listen: SocketAddr,
    pub certs_dir: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// The client CAs' revocation lists, if any.
    pub client_crl: Option<PathBuf>,
    /// The connection limits, and the request time limit
    /// (`limits.request_timeout`).
    pub limits: ConnectionLimits,
    /// Orders that may wait for the group-commit writer; beyond, 503.
    pub commit_queue: usize,
    /// Privacy-policy versions an order may name in `consent.policy_version`.
    pub policy_versions: Vec<String>,
    /// Opt-outs per client IP per minute on the public `/unsubscribe` page.
    pub unsubscribe_rate_limit: u32,
    /// Retention rules run by `serve` (empty: keep everything).
    pub retention: Vec<crate::retention::Rule>,
    /// How long an idempotency row keeps its request hash (see
    /// `crate::retention`).
    pub replay_window: Duration,
}

/// Orders that may wait for the group-commit writer by default (four full
/// batches).
pub const DEFAULT_COMMIT_QUEUE: usize = 4 * crate::intake::commit::MAX_BATCH;

/// The longest retention period (`--retain-*-days`): 100 years.
pub const MAX_RETAIN_DAYS: u32 = 36_500;

/// The policy version known when no other is configured ("last updated").
pub const DEFAULT_POLICY_VERSION: &str = "2002-06-05";

impl StoreSettings {
    pub fn from_args(args: &StoreArgs) -> Result<Self, ConfigError> {
        let file = load_file(args.config.as_deref())?;
        Self::merge(args, &file)
    }

    fn merge(args: &StoreArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let data_dir = args
            .data_dir
            .clone()
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("data"));
        let database = match args
            .database_url
            .as_deref()
            .or(file.database_url.as_deref())
        {
            None => DatabaseUrl::default_for(&data_dir),
            Some(url) => DatabaseUrl::parse(url).ok_or(ConfigError::Invalid {
                setting: "database_url",
                flag: "database-url",
                env: "DATABASE_URL",
                expected: "expected sqlite://PATH (no ?parameters) or postgres://USER@HOST/DB",
            })?,
        };
        let database = match database {
            DatabaseUrl::Postgres { url, .. } => DatabaseUrl::Postgres {
                url,
                // Flag, then variable, then file, as every setting: an
                // explicit false overrides a file's true.
                allow_unsafe_durability: args
                    .allow_unsafe_durability
                    .or(file.allow_unsafe_durability)
                    .unwrap_or(false),
            },
            sqlite => sqlite,
        };
        let log_format = match args.log_format.as_deref().or(file.log_format.as_deref()) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => {
                return Err(ConfigError::Invalid {
                    setting: "log_format",
                    flag: "log-format",
                    env: "LOG_FORMAT",
                    expected: "expected `text` or `json`",
                });
            }
        };
        Ok(StoreSettings {
            master_key_shares: if args.master_key_shares.is_empty() {
                file.master_key_shares.clone().unwrap_or_default()
            } else {
                args.master_key_shares.clone()
            },
            data_dir,
            database,
            log_format,
        })
    }
}

impl Settings {
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = load_file(args.store.config.as_deref())?;
        let store = StoreSettings::merge(&args.store, &file)?;
        let listen = args
            .listen
            .as_deref()
            .or(file.listen.as_deref())
            .unwrap_or("127.0.0.1:8443")
            .parse()
            .map_err(|_| ConfigError::Invalid {
                setting: "listen",
                flag: "listen",
                env: "LISTEN",
                expected: "expected IP:PORT, e.g. 127.0.0.1:8443 or [::1]:8443",
            })?;
        let replay_window_hours = args
            .replay_window_hours
            .or(file.replay_window_hours)
            .unwrap_or(crate::retention::DEFAULT_REPLAY_WINDOW_HOURS);
        if !(crate::retention::MIN_REPLAY_WINDOW_HOURS..=87_600).contains(&replay_window_hours) {
            return Err(ConfigError::Invalid {
                setting: "replay_window_hours",
                flag: "replay-window-hours",
                env: "REPLAY_WINDOW_HOURS",
                expected: "expected a whole number of hours from 25 (keys are replayed at least a day, and an hour for clocks) to 87600",
            });
        }
        // Retention in days, 0 = keep: at most 100 years. A larger value
        // ("keep for ever") would put the purge horizon before the year
        // −9999, where the retention task's date arithmetic fails.
        for (days, setting, flag, env) in [
            (
                args.retain_card_days.or(file.retain_card_days),
                "retain_card_days",
                "retain-card-days",
                "RETAIN_CARD_DAYS",
            ),
            (
                args.retain_recipient_days.or(file.retain_recipient_days),
                "retain_recipient_days",
                "retain-recipient-days",
                "RETAIN_RECIPIENT_DAYS",
            ),
            (
                args.retain_undispatched_days
                    .or(file.retain_undispatched_days),
                "retain_undispatched_days",
                "retain-undispatched-days",
                "RETAIN_UNDISPATCHED_DAYS",
            ),
        ] {
            if days.is_some_and(|d| d > MAX_RETAIN_DAYS) {
                return Err(ConfigError::Invalid {
                    setting,
                    flag,
                    env,
                    expected: "expected a whole number of days from 0 (keep) to 36500",
                });
            }
        }
        let defaults = ConnectionLimits::default();
        // 0 is refused, not read as 1: the page cannot be switched off
        // (an opt-out needs nothing but an email), and a setting is never
        // changed behind the operator's back.
        let unsubscribe_rate_limit = args
            .unsubscribe_rate_limit
            .or(file.unsubscribe_rate_limit)
            .unwrap_or(10);
        if !(1..=1_000_000).contains(&unsubscribe_rate_limit) {
            return Err(ConfigError::Invalid {
                setting: "unsubscribe_rate_limit",
                flag: "unsubscribe-rate-limit",
                env: "UNSUBSCRIBE_RATE_LIMIT",
                expected: "expected a whole number from 1 to 1000000",
            });
        }
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(defaults.max_connections);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(ConfigError::Invalid {
                setting: "max_connections",
                flag: "max-connections",
                env: "MAX_CONNECTIONS",
                expected: "expected a whole number from 1 to 1000000",
            });
        }
        let duration = |flag: &Option<String>,
                        file: &Option<String>,
                        default: Duration,
                        setting: &'static str,
                        flag_name: &'static str,
                        env: &'static str| {
            match flag.as_deref().or(file.as_deref()) {
                None => Ok(default),
                Some(text) => parse_duration(text).ok_or(ConfigError::Invalid {
                    setting,
                    flag: flag_name,
                    env,
                    expected: "expected a duration from 1ms to 1h, e.g. 10s, 500ms or 2m",
                }),
            }
        };
        let max_requests_in_flight = args
            .max_requests_in_flight
            .or(file.max_requests_in_flight)
            .unwrap_or(defaults.max_requests_in_flight);
        let limits = ConnectionLimits {
            max_connections,
            // Set below, once parsed.
            request_timeout: defaults.request_timeout,
            handshake_timeout: duration(
                &args.handshake_timeout,
                &file.handshake_timeout,
                defaults.handshake_timeout,
                "handshake_timeout",
                "handshake-timeout",
                "HANDSHAKE_TIMEOUT",
            )?,
            header_read_timeout: duration(
                &args.header_read_timeout,
                &file.header_read_timeout,
                defaults.header_read_timeout,
                "header_read_timeout",
                "header-read-timeout",
                "HEADER_READ_TIMEOUT",
            )?,
            drain_timeout: duration(
                &args.drain_timeout,
                &file.drain_timeout,
                defaults.drain_timeout,
                "drain_timeout",
                "drain-timeout",
                "DRAIN_TIMEOUT",
            )?,
            idle_timeout: duration(
                &args.idle_timeout,
                &file.idle_timeout,
                defaults.idle_timeout,
                "idle_timeout",
                "idle-timeout",
                "IDLE_TIMEOUT",
            )?,
            max_anonymous_connections: args
                .max_anonymous_connections
                .or(file.max_anonymous_connections)
                .unwrap_or(defaults.max_anonymous_connections.min(max_connections)),
            max_requests_in_flight,
            max_anonymous_requests_in_flight: args
                .max_anonymous_requests_in_flight
                .or(file.max_anonymous_requests_in_flight)
                .unwrap_or(
                    defaults
                        .max_anonymous_requests_in_flight
                        .min(max_requests_in_flight),
                ),
            max_connections_per_ip: args
                .max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(defaults.max_connections_per_ip.min(max_connections)),
            max_handshakes_per_ip: args
                .max_handshakes_per_ip
                .or(file.max_handshakes_per_ip)
                .unwrap_or(defaults.max_handshakes_per_ip),
        };
        if !(1..=1_000_000).contains(&limits.max_handshakes_per_ip) {
            return Err(ConfigError::Invalid {
                setting: "max_handshakes_per_ip",
                flag: "max-handshakes-per-ip",
                env: "MAX_HANDSHAKES_PER_IP",
                expected: "expected a whole number from 1 to 1000000",
            });
        }
        if limits.max_connections_per_ip == 0 || limits.max_connections_per_ip > max_connections {
            return Err(ConfigError::Invalid {
                setting: "max_connections_per_ip",
                flag: "max-connections-per-ip",
                env: "MAX_CONNECTIONS_PER_IP",
                expected: "expected a whole number from 1 to max_connections",
            });
        }
        if !(1..=1_000_000).contains(&limits.max_requests_in_flight) {
            return Err(ConfigError::Invalid {
                setting: "max_requests_in_flight",
                flag: "max-requests-in-flight",
                env: "MAX_REQUESTS_IN_FLIGHT",
                expected: "expected a whole number from 1 to 1000000",
            });
        }
        if limits.max_anonymous_requests_in_flight == 0
            || limits.max_anonymous_requests_in_flight > limits.max_requests_in_flight
        {
            return Err(ConfigError::Invalid {
                setting: "max_anonymous_requests_in_flight",
                flag: "max-anonymous-requests-in-flight",
                env: "MAX_ANONYMOUS_REQUESTS_IN_FLIGHT",
                expected: "expected a whole number from 1 to max_requests_in_flight",
            });
        }
        let commit_queue = args
            .commit_queue
            .or(file.commit_queue)
            .unwrap_or(DEFAULT_COMMIT_QUEUE);
        if !(1..=65_536).contains(&commit_queue) {
            return Err(ConfigError::Invalid {
                setting: "commit_queue",
                flag: "commit-queue",
                env: "COMMIT_QUEUE",
                expected: "expected a whole number from 1 to 65536",
            });
        }
        if limits.max_anonymous_connections == 0
            || limits.max_anonymous_connections > max_connections
        {
            return Err(ConfigError::Invalid {
                setting: "max_anonymous_connections",
                flag: "max-anonymous-connections",
                env: "MAX_ANONYMOUS_CONNECTIONS",
                expected: "expected a whole number from 1 to max_connections",
            });
        }
        let request_timeout = duration(
            &args.request_timeout,
            &file.request_timeout,
            defaults.request_timeout,
            "request_timeout",
            "request-timeout",
            "REQUEST_TIMEOUT",
        )?;
        // An order stops waiting for its commit a moment before the limit
        // (`intake::commit::ANSWER_MARGIN`): a shorter limit leaves it none.
        if request_timeout < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                setting: "request_timeout",
                flag: "request-timeout",
                env: "REQUEST_TIMEOUT",
                expected: "expected at least 1s",
            });
        }
        if request_timeout >= limits.idle_timeout {
            return Err(ConfigError::Invalid {
                setting: "request_timeout",
                flag: "request-timeout",
                env: "REQUEST_TIMEOUT",
                expected: "must be shorter than idle_timeout, or requests in progress could be cut off",
            });
        }
        let limits = ConnectionLimits {
            request_timeout,
            ..limits
        };
        let certs_dir = args
            .certs_dir
            .clone()
            .or_else(|| file.certs_dir.clone())
            .unwrap_or_else(|| PathBuf::from("certs"));
        let client_ca = args.client_ca.clone().or_else(|| file.client_ca.clone());
        let client_crl = args.client_crl.clone().or_else(|| file.client_crl.clone());
        // Named here, before anything is written (a first run's development
        // PKI) or bound: a typo in a path is a setting's error.
        for (path, setting, flag, env) in [
            (&client_ca, "client_ca", "client-ca", "CLIENT_CA"),
            (&client_crl, "client_crl", "client-crl", "CLIENT_CRL"),
        ] {
            if path.as_ref().is_some_and(|p| !p.is_file()) {
                return Err(ConfigError::Invalid {
                    setting,
                    flag,
                    env,
                    expected: "expected an existing, readable PEM file",
                });
            }
        }
        let policy_versions = match (&args.policy_versions, &file.policy_versions) {
            (Some(list), _) => list.split(',').map(|v| v.trim().to_owned()).collect(),
            (None, Some(list)) => list.clone(),
            (None, None) => vec![DEFAULT_POLICY_VERSION.to_owned()],
        };
        if policy_versions.is_empty()
            || policy_versions
                .iter()
                .any(|v| v.is_empty() || v.len() > 64 || !v.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::Invalid {
                setting: "policy_versions",
                flag: "policy-versions",
                env: "POLICY_VERSIONS",
                expected: "expected a comma-separated list of version labels, e.g. 2002-06-05",
            });
        }
        Ok(Settings {
            store,
            listen,
            certs_dir,
            client_ca,
            client_crl,
            limits,
            commit_queue,
            policy_versions,
            retention: {
                use crate::crypto::DataClass::{Card, Recipient, Shipping};
                use crate::retention::Clock::{CreationUndispatched, Dispatch};
                let undispatched = args
                    .retain_undispatched_days
                    .or(file.retain_undispatched_days)
                    .unwrap_or(180);
                [
                    (
                        &[Card][..],
                        Dispatch,
                        args.retain_card_days
                            .or(file.retain_card_days)
                            .unwrap_or(120),
                    ),
                    (
                        &[Recipient][..],
                        Dispatch,
                        args.retain_recipient_days
                            .or(file.retain_recipient_days)
                            .unwrap_or(30),
                    ),
                    // The ship-to before the recipient's record, as every
                    // purge takes them, all in one transaction (see
                    // `PurgeIf::Undispatched`).
                    (
                        &[Card, Shipping, Recipient][..],
                        CreationUndispatched,
                        undispatched,
                    ),
                ]
                .into_iter()
                .filter(|(_, _, days)| *days > 0)
                .map(|(classes, from, days)| crate::retention::Rule {
                    classes,
                    after: Duration::from_secs(u64::from(days) * 86_400),
                    from,
                })
                .collect()
            },
            replay_window: Duration::from_secs(u64::from(replay_window_hours) * 3600),
            unsubscribe_rate_limit,
        })
    }
}

/// `10s`, `500ms`, `2m`, or a bare number of seconds; 1 ms to 1 h.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1000)
    };
    let n: u64 = number.trim().parse().ok()?;
    let ms = n.checked_mul(unit_ms)?;
    (1..=3_600_000)
        .contains(&ms)
        .then(|| Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("2h"), None);
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/x.db"),
            Some(DatabaseUrl::Sqlite {
                path: "data/x.db".into()
            })
        );
        assert!(matches!(
            DatabaseUrl::parse("postgres://u:secret@h/db"),
            Some(DatabaseUrl::Postgres { .. })
        ));
        assert!(DatabaseUrl::parse("mysql://h/db").is_none());
        assert!(DatabaseUrl::parse("sqlite://").is_none());
        // Parameters checkoutd would ignore are refused, not dropped.
        assert!(DatabaseUrl::parse("sqlite://data/x.db?mode=ro").is_none());
        let shown = format!(
            "{:?}",
            DatabaseUrl::parse("postgres://u:secret@h/db").unwrap()
        );
        assert!(!shown.contains("secret"));
    }

    #[test]
    fn flags_beat_file_beat_defaults_and_errors_name_the_setting() {
        let file: FileConfig =
            toml::from_str("listen = \"127.0.0.1:9000\"\ndata_dir = \"/tmp/x\"").unwrap();
        let args = StoreArgs::default();
        let s = StoreSettings::merge(&args, &file).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(
            s.database,
            DatabaseUrl::Sqlite {
                path: "/tmp/x/checkoutd.db".into()
            }
        );
        let args = StoreArgs {
            database_url: Some("mysql://nope".into()),
            ..StoreArgs::default()
        };
        let err = StoreSettings::merge(&args, &file).unwrap_err().to_string();
        assert!(err.contains("database_url"), "{err}");
        assert!(!err.contains("nope"), "{err}");
        assert!(toml::from_str::<FileConfig>("lisen = \"x\"").is_err());
    }

    /// The file takes the flags' own spellings: `master_key_share` (the
    /// flag's name) beside `master_key_shares`, and policy versions as a
    /// list or as the flag's comma-separated string.
    #[test]
    fn the_file_takes_the_flags_spellings() {
        let file: FileConfig = toml::from_str(
            "master_key_share = [\"a.json\", \"b.json\"]\npolicy_versions = \"2002-06-05, 2026-01-01\"",
        )
        .unwrap();
        assert_eq!(
            file.master_key_shares,
            Some(vec![PathBuf::from("a.json"), PathBuf::from("b.json")])
        );
        assert_eq!(
            file.policy_versions,
            Some(vec!["2002-06-05".to_owned(), "2026-01-01".to_owned()])
        );
        let file: FileConfig =
            toml::from_str("master_key_shares = [\"a.json\"]\npolicy_versions = [\"2002-06-05\"]")
                .unwrap();
        assert_eq!(file.policy_versions, Some(vec!["2002-06-05".to_owned()]));
        assert_eq!(file.master_key_shares, Some(vec![PathBuf::from("a.json")]));
        let empty: FileConfig = toml::from_str("").unwrap();
        assert!(empty.policy_versions.is_none());
    }

    #[test]
    fn the_replay_window_defaults_to_a_week_and_is_more_than_a_day() {
        let week = Settings::from_args(&ServeArgs::default()).unwrap();
        assert_eq!(week.replay_window, Duration::from_secs(168 * 3600));
        let day = Settings::from_args(&ServeArgs {
            replay_window_hours: Some(25),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(day.replay_window, Duration::from_secs(25 * 3600));
        for hours in [0, 24, 87_601] {
            let err = Settings::from_args(&ServeArgs {
                replay_window_hours: Some(hours),
                ..ServeArgs::default()
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains("replay_window_hours"), "{err}");
        }
        assert!(toml::from_str::<FileConfig>("replay_window_hours = 48").is_ok());
    }

    #[test]
    fn retention_is_at_most_a_hundred_years() {
        for (card, recipient) in [(Some(36_501), None), (None, Some(99_999_999))] {
            let err = Settings::from_args(&ServeArgs {
                retain_card_days: card,
                retain_recipient_days: recipient,
                ..ServeArgs::default()
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains("retain_"), "{err}");
        }
        let err = Settings::from_args(&ServeArgs {
            retain_undispatched_days: Some(36_501),
            ..ServeArgs::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("retain_undispatched_days"), "{err}");
        let kept = Settings::from_args(&ServeArgs {
            retain_card_days: Some(36_500),
            retain_recipient_days: Some(0),
            retain_undispatched_days: Some(0),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(kept.retention.len(), 1);
        // By default: card and recipient data after dispatch, and both of
        // an order never dispatched, 180 days after it was taken.
        use crate::retention::Clock;
        let rules: Vec<_> = Settings::from_args(&ServeArgs::default())
            .unwrap()
            .retention
            .iter()
            .map(|r| {
                let names: Vec<&str> = r.classes.iter().map(|c| c.as_str()).collect();
                (names.join("+"), r.from, r.after.as_secs() / 86_400)
            })
            .collect();
        assert_eq!(
            rules,
            [
                ("card".into(), Clock::Dispatch, 120),
                ("recipient".into(), Clock::Dispatch, 30),
                (
                    "card+shipping+recipient".into(),
                    Clock::CreationUndispatched,
                    180
                ),
            ]
        );
        assert!(toml::from_str::<FileConfig>("retain_undispatched_days = 365").is_ok());
    }

    #[test]
    fn a_missing_client_ca_or_crl_file_is_a_settings_error() {
        for (args, setting) in [
            (
                ServeArgs {
                    client_ca: Some("/nonexistent/ca.pem".into()),
                    ..ServeArgs::default()
                },
                "client_ca",
            ),
            (
                ServeArgs {
                    client_crl: Some("/nonexistent/crl.pem".into()),
                    ..ServeArgs::default()
                },
                "client_crl",
            ),
        ] {
            let err = Settings::from_args(&args).unwrap_err().to_string();
            assert!(err.contains(setting), "{err}");
            assert!(!err.contains("nonexistent"), "never the value: {err}");
        }
    }

    #[test]
    fn abuse_limits_have_production_defaults_and_are_validated() {
        let ok = Settings::from_args(&ServeArgs::default()).unwrap();
        assert_eq!(ok.limits.max_requests_in_flight, 1024);
        assert_eq!(ok.limits.max_anonymous_requests_in_flight, 64);
        assert_eq!(ok.limits.max_connections_per_ip, 1024);
        assert_eq!(ok.limits.max_handshakes_per_ip, 200);
        let few = Settings::from_args(&ServeArgs {
            max_requests_in_flight: Some(2),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(
            few.limits.max_anonymous_requests_in_flight, 2,
            "never above the in-flight cap"
        );
        assert_eq!(ok.commit_queue, 1024);
        let small = Settings::from_args(&ServeArgs {
            max_connections: Some(8),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(
            small.limits.max_connections_per_ip, 8,
            "never above the cap"
        );
        for (args, setting) in [
            (
                ServeArgs {
                    max_connections: Some(8),
                    max_connections_per_ip: Some(9),
                    ..ServeArgs::default()
                },
                "max_connections_per_ip",
            ),
            (
                ServeArgs {
                    max_requests_in_flight: Some(0),
                    ..ServeArgs::default()
                },
                "max_requests_in_flight",
            ),
            (
                ServeArgs {
                    max_requests_in_flight: Some(64),
                    max_anonymous_requests_in_flight: Some(65),
                    ..ServeArgs::default()
                },
                "max_anonymous_requests_in_flight",
            ),
            (
                ServeArgs {
                    max_anonymous_requests_in_flight: Some(0),
                    ..ServeArgs::default()
                },
                "max_anonymous_requests_in_flight",
            ),
            (
                ServeArgs {
                    max_handshakes_per_ip: Some(0),
                    ..ServeArgs::default()
                },
                "max_handshakes_per_ip",
            ),
            (
                ServeArgs {
                    commit_queue: Some(0),
                    ..ServeArgs::default()
                },
                "commit_queue",
            ),
            (
                ServeArgs {
                    unsubscribe_rate_limit: Some(0),
                    ..ServeArgs::default()
                },
                "unsubscribe_rate_limit",
            ),
        ] {
            let err = Settings::from_args(&args).unwrap_err().to_string();
            assert!(err.contains(&format!("`{setting}`")), "{err}");
        }
        let file: FileConfig = toml::from_str(
            "max_requests_in_flight = 10\ncommit_queue = 5\nmax_connections_per_ip = 3\nmax_handshakes_per_ip = 7",
        )
        .unwrap();
        assert_eq!(file.max_handshakes_per_ip, Some(7));
        assert_eq!(file.max_requests_in_flight, Some(10));
        assert_eq!(file.commit_queue, Some(5));
        assert_eq!(file.max_connections_per_ip, Some(3));
    }

    #[test]
    fn serve_settings_validate_listen() {
        let args = ServeArgs {
            listen: Some("localhost".into()),
            ..ServeArgs::default()
        };
        let err = Settings::from_args(&args).unwrap_err().to_string();
        assert!(err.contains("`listen`"), "{err}");
        let ok = Settings::from_args(&ServeArgs::default()).unwrap();
        assert_eq!(ok.listen, "127.0.0.1:8443".parse::<SocketAddr>().unwrap());
    }
}
