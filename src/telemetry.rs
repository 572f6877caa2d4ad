//! Logging setup: tracing to stderr, text or JSON, filtered by `RUST_LOG`
//! (default `info`), and a panic hook that never prints a panic's message. What may be logged is decided where lines are written
//! (see `http::access_log`): never bodies, query values, names, emails or
//! card numbers.

use std::borrow::Cow;
use std::io::Write;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = subscriber(filter, format, ansi, std::io::stderr).try_init();
    install_panic_hook();
}

/// The process's subscriber: `filter` and the caps ([`caps`]), both
/// global filters (layers), not per-layer ones — a per-layer filter keeps
/// a thread's verdict until the event it was asked about comes, and a
/// `log` record only asked about (sqlx's `log_enabled!`) left it set: the
/// next event on that thread was dropped. Lines go through [`OneLine`] to
/// what `writer` makes.
fn subscriber<W, F>(
    filter: EnvFilter,
    format: LogFormat,
    ansi: bool,
    writer: F,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: Write + 'static,
    F: Fn() -> W + Send + Sync + 'static,
{
    let registry = tracing_subscriber::registry().with(filter).with(caps());
    match format {
        LogFormat::Text => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(move || OneLine::new(writer(), ansi)),
            ),
        ),
        LogFormat::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(move || OneLine::json(writer())),
            ),
        ),
    }
}

/// Libraries whose events quote what a client sent, or a secret, and the
/// most verbose level of theirs that is ever logged — whatever `RUST_LOG`
/// says, a more specific directive for one of their modules included:
/// - rustls (and tokio-rustls, through the `log` bridge) warns about a
///   ClientHello's server name that is no DNS name, quoting it: any client,
///   before any certificate is checked, could put a card number or an
///   email there. Our own handshake-failure lines carry the reason;
/// - h2 and hyper, below info, write a malformed request's path and
///   authority, query string included;
/// - sqlx warns about an unrecognised database-URL parameter with its
///   value, which may be a secret (`sslpassword=…`).
const CAPPED: &[(&str, tracing::level_filters::LevelFilter)] = {
    use tracing::level_filters::LevelFilter;
    &[
        ("rustls", LevelFilter::OFF),
        ("tokio_rustls", LevelFilter::OFF),
        ("h2", LevelFilter::INFO),
        ("hyper", LevelFilter::INFO),
        ("hyper_util", LevelFilter::INFO),
        ("sqlx_postgres::options", LevelFilter::ERROR),
    ]
};

/// Whether an event of `target` at `level` may be logged at all
/// ([`CAPPED`]).
pub fn within_caps(target: &str, level: &tracing::Level) -> bool {
    CAPPED
        .iter()
        .find(|(prefix, _)| {
            target
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
        .is_none_or(|(_, most)| level <= most)
}

/// [`CAPPED`] as a global filter: a layer put beside `RUST_LOG`'s (or the
/// tests' own) [`EnvFilter`].
pub fn caps() -> tracing_subscriber::filter::FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    fn allowed(meta: &tracing::Metadata<'_>) -> bool {
        within_caps(meta.target(), meta.level())
    }
    tracing_subscriber::filter::FilterFn::new(allowed as fn(&tracing::Metadata<'_>) -> bool)
}

/// What the panic hook logs instead of a formatted panic message.
pub const WITHHELD_PANIC_MESSAGE: &str =
    "withheld: a formatted panic message may hold request data";

/// Replaces the default panic hook, which prints the panic message to
/// stderr, with one that logs (as an error event) where the panic happened
/// and on which thread — but the message only when it is a fixed string
/// literal (`panic!("…")`). A formatted message can carry request data: the
/// standard library's own do (a string-slicing panic quotes the string, an
/// `expect` appends the error's `Debug`), and so could a careless `{:?}`.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let detail = info
            .payload()
            .downcast_ref::<&'static str>()
            .copied()
            .unwrap_or(WITHHELD_PANIC_MESSAGE);
        let thread = std::thread::current();
        tracing::error!(
            location,
            thread = thread.name().unwrap_or("unnamed"),
            detail,
            "panic"
        );
    }));
}

// ---- log injection ----
//
// One rule for every log line: a line is one line, and it holds no control
// character a terminal or a log shipper would act on. Two layers enforce it:
// - `escape` for any text a client may have influenced (an error message
//   from TLS or HTTP parsing, anything read from a request) at the point
//   where it becomes a field: CR, LF, TAB, ESC, every other C0 and C1
//   control, DEL and the Unicode line/paragraph separators become visible
//   escapes (`\r`, `\n`, `\x1b`, `\u{85}`, ...);
// - `OneLine`, the writer of every subscriber `init` installs: whatever a
//   field held, a formatted event that reaches it is written as one line,
//   with the same escapes (ESC kept only for the colours of an interactive
//   terminal). The JSON format escapes control characters itself.

/// `text` with every control character made visible (see above); borrowed
/// when there is none.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

fn push_escaped(out: &mut String, c: char) {
    use std::fmt::Write as _;
    match c {
        '\r' => out.push_str("\\r"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 && needs_escape(c) => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// A writer for one formatted event: the final newline is kept, every other
/// control character is escaped (ESC kept when `ansi`, for colours).
pub struct OneLine<W: Write> {
    inner: W,
    ansi: bool,
    /// The event is a JSON object: escape as JSON does (`\u007f`), so the
    /// line stays valid JSON. Control characters can only be inside its
    /// strings (the encoder escapes C0 itself; DEL, C1 and U+2028/2029 it
    /// leaves).
    json: bool,
}

impl<W: Write> OneLine<W> {
    pub fn new(inner: W, ansi: bool) -> Self {
        OneLine {
            inner,
            ansi,
            json: false,
        }
    }

    /// For JSON events (no colours).
    pub fn json(inner: W) -> Self {
        OneLine {
            inner,
            ansi: false,
            json: true,
        }
    }
}

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let (body, newline) = match data.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (data, false),
        };
        let text = String::from_utf8_lossy(body);
        let clean = if text
            .chars()
            .any(|c| needs_escape(c) && !(self.ansi && c == '\x1b'))
        {
            let mut out = String::with_capacity(text.len() + 8);
            for c in text.chars() {
                if self.ansi && c == '\x1b' {
                    out.push(c);
                } else if self.json && needs_escape(c) {
                    use std::fmt::Write as _;
                    // Every control character and U+2028/9 is in the BMP.
                    let _ = write!(out, "\\u{:04x}", c as u32);
                } else {
                    push_escaped(&mut out, c);
                }
            }
            Cow::Owned(out)
        } else {
            text
        };
        let mut line = clean.into_owned().into_bytes();
        if newline {
            line.push(b'\n');
        }
        self.inner.write_all(&line)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

// ---- metrics (Prometheus text at `GET /metrics`, auditor role) ----
//
// Names and labels carry no personal data: routes are templates, statuses
// numbers, reasons fixed words.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide recorder, installed on first use.
fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    &latency,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(
                            "checkoutd_commit_batch_orders".into(),
                        ),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                    )
                })
                .and_then(|b| b.install_recorder())
                .map_err(|e| tracing::warn!(error = %e, "metrics are unavailable"))
                .ok()
        })
        .as_ref()
}

/// Installs the recorder and its upkeep task (call at start-up inside the
/// runtime; later calls are no-ops). Histograms keep raw samples until they
/// are drained: without upkeep an unscraped `/metrics` would grow without
/// bound.
pub fn init_metrics() {
    static UPKEEP: OnceLock<()> = OnceLock::new();
    if let Some(handle) = prometheus() {
        UPKEEP.get_or_init(|| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    handle.run_upkeep();
                }
            });
        });
    }
}

/// The current metrics in Prometheus text format.
pub fn render_metrics() -> String {
    prometheus().map(|h| h.render()).unwrap_or_default()
}

/// One HTTP request answered.
pub fn request(route: &str, method: &str, status: u16, latency: Duration) {
    let labels = [
        ("route", route.to_owned()),
        ("method", method.to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!("checkoutd_http_requests_total", &labels).increment(1);
    metrics::histogram!("checkoutd_http_request_duration_seconds", &labels)
        .record(latency.as_secs_f64());
}

/// One group-commit batch written (or failed).
pub fn commit_batch(orders: usize, latency: Duration, ok: bool) {
    let result = if ok { "committed" } else { "failed" };
    metrics::counter!("checkoutd_commit_batches_total", "result" => result).increment(1);
    metrics::histogram!("checkoutd_commit_batch_orders").record(orders as f64);
    metrics::histogram!("checkoutd_commit_duration_seconds").record(latency.as_secs_f64());
}

/// Changed TLS files (certificate, key, client CA, CRL) that do not load;
/// the configuration in force stays.
pub fn tls_reload_failed() {
    metrics::counter!("checkoutd_tls_reload_failures_total").increment(1);
}

/// TLS files on disk started (`true`) or stopped failing to load. A gauge
/// moved up and down, not set: one process has one set of TLS files, so it
/// reads 0 or 1.
pub fn tls_reload_failing(failing: bool) {
    let gauge = metrics::gauge!("checkoutd_tls_reload_failing");
    if failing {
        gauge.increment(1.0);
    } else {
        gauge.decrement(1.0);
    }
}

/// A refusal without its own access-log entry: one of a request without a
/// role past the access log's per-address or overall limit on refusals
/// (`routes::record_refusal`), or a 429 of the opt-out page after the first
/// of its budget's window.
pub fn denial_unlogged() {
    metrics::counter!("checkoutd_denials_unlogged_total").increment(1);
}

/// Orders stored for the first time (not replays), counted as their commit
/// returns: also those whose request was answered 503 before it did.
pub fn orders_committed(orders: usize) {
    metrics::counter!("checkoutd_orders_accepted_total").increment(orders as u64);
}

/// A TLS handshake that failed, by a fixed reason word.
pub fn handshake_failed(reason: &'static str) {
    metrics::counter!("checkoutd_tls_handshake_failures_total", "reason" => reason).increment(1);
}

/// Open connections, up or down by one.
pub fn connection_opened() {
    metrics::gauge!("checkoutd_open_connections").increment(1.0);
}

pub fn connection_closed() {
    metrics::gauge!("checkoutd_open_connections").decrement(1.0);
}

/// A connection turned away or cut short by the abuse limits, by a fixed
/// reason word: `shed` (an idle connection gave its slot to a newcomer),
/// `busy` (answered 503), `overflow` (closed unanswered), `per_ip` (its
/// address at its cap, answered 503), `anonymous` (the certificate-less cap),
/// `abandoning` (rapid reset), `response_unread` (a response left unsent
/// for the idle timeout), `idle` (no request for the idle timeout, while
/// HTTP/2 PINGs kept its I/O busy), `certificate_no_longer_valid` (checked again
/// after a TLS rebuild: revoked, expired, or its CA or CRL changed).
pub fn connection_refused(reason: &'static str) {
    metrics::counter!("checkoutd_connections_refused_total", "reason" => reason).increment(1);
}

/// Time a writer waited for a pooled connection and its write lock.
pub fn pool_wait(wait: Duration) {
    metrics::histogram!("checkoutd_db_write_wait_seconds").record(wait.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The subscriber `init` installs applies the caps, in both formats,
    /// whatever the filter lets through.
    #[test]
    fn the_process_subscriber_applies_the_caps() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let out = Arc::new(Mutex::new(Vec::new()));
            let sink = out.clone();
            let subscriber = subscriber(EnvFilter::new("trace"), format, false, move || {
                Buf(sink.clone())
            });
            tracing::subscriber::with_default(subscriber, || {
                tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI hostname 4111");
                tracing::debug!(target: "h2::server", "malformed path /x?email=");
                tracing::trace!(target: "checkoutd::server", "kept line");
            });
            let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
            assert!(text.contains("kept line"), "{format:?}: {text}");
            assert!(!text.contains("Illegal SNI"), "{format:?}: {text}");
            assert!(!text.contains("malformed path"), "{format:?}: {text}");
        }
    }

    /// The caps hold whatever `RUST_LOG` says: they are checked on each
    /// event's own target, so a directive for one module cannot lift them.
    #[test]
    fn the_caps_hold_for_every_module_of_a_capped_library() {
        use tracing::Level;
        for (target, level, logged) in [
            ("rustls::msgs::handshake", Level::WARN, false),
            ("rustls", Level::ERROR, false),
            ("tokio_rustls", Level::ERROR, false),
            ("h2::server", Level::DEBUG, false),
            ("h2::server", Level::INFO, true),
            ("hyper::proto::h1::role", Level::TRACE, false),
            ("hyper_util::server", Level::WARN, true),
            ("sqlx_postgres::options", Level::WARN, false),
            ("sqlx_postgres::options", Level::ERROR, true),
            ("sqlx_postgres::connection", Level::WARN, true),
            // Only whole path segments: another crate of a like name is not
            // capped.
            ("h2x", Level::DEBUG, true),
            ("rustls_pemfile_like", Level::DEBUG, true),
            ("checkoutd::server", Level::TRACE, true),
        ] {
            assert_eq!(within_caps(target, &level), logged, "{target} at {level}");
        }
    }

    #[test]
    fn escape_makes_every_control_visible() {
        assert!(matches!(escape("plain text é"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\r\nb\x1b[31mc\td\u{85}e\u{2028}f\x7f\0"),
            "a\\r\\nb\\x1b[31mc\\td\\u{85}e\\u{2028}f\\x7f\\x00"
        );
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_json_line_stays_one_valid_json_line_whatever_its_fields_hold() {
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || OneLine::json(sink.clone()))
            .json()
            .flatten_event(true)
            .finish();
        let hostile = "x\r\n{\"forged\":1}\x1b]0;pwned\x07\u{9b}31m\u{7f}\u{85}\u{2028}\u{2029}end";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(field = %hostile, "first");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.trim_end().chars().any(needs_escape), "{out:?}");
        let event: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(event["field"], hostile, "the value survives, escaped");
    }

    #[test]
    fn a_text_line_stays_one_line_whatever_its_fields_hold() {
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || OneLine::new(sink.clone(), false))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let hostile = "x\r\n2026-01-01 INFO forged line\x1b]0;pwned\x07\u{9b}31m";
            tracing::info!(field = %hostile, "first");
            tracing::info!(debug = ?hostile, "second\nhalf");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.ends_with('\n'));
        for line in out.lines() {
            assert!(!line.contains(['\r', '\x1b', '\x07', '\u{9b}']), "{line}");
        }
        assert!(
            out.contains("forged line"),
            "the text is kept, made harmless"
        );
    }
}
