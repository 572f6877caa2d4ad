//! The signed report as a background job, so that verifying a database of
//! any size never runs into the request time limit (or the connection idle
//! limit) and concurrent requests share one run.
//!
//! `GET /v1/audit/report` asks [`ReportJob::latest_or_start`]: a report that
//! finished less than [`FRESH`] ago is served as is (its `generated_at`
//! says when); otherwise a run is started — unless one is already running —
//! and the request waits up to its budget. If the run takes longer, the
//! answer is 202 with `Retry-After`, and a later request collects the result.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{Mutex, watch};

use crate::crypto::keyring::Keyring;
use crate::store::Store;

/// How long a finished report is served before a new run is started.
pub const FRESH: Duration = Duration::from_secs(30);

/// What a run produced: the signed document, or why it failed (no data).
pub type Outcome = Result<Arc<Value>, &'static str>;

/// Where a run takes its keyring: the server's handle (the keyring in
/// force), or a fixed one (tests).
pub trait KeyringSource: Send + Sync + 'static {
    fn current(&self) -> Arc<Keyring>;
}

impl KeyringSource for Arc<Keyring> {
    fn current(&self) -> Arc<Keyring> {
        self.clone()
    }
}

impl KeyringSource for Arc<crate::crypto::keyring::KeyringHandle> {
    fn current(&self) -> Arc<Keyring> {
        crate::crypto::keyring::KeyringHandle::current(self)
    }
}

/// Runs of one report when the keyring changed under the previous one.
const RUNS_ACROSS_ROTATIONS: usize = 3;

#[derive(Default)]
struct State {
    latest: Option<(Instant, Outcome)>,
    running: Option<watch::Receiver<Option<Outcome>>>,
}

#[derive(Default)]
pub struct ReportJob {
    state: Mutex<State>,
    /// The access log's head as the last intact run saw it: every later
    /// run requires the chain to pass through it (a tail cut off and an
    /// older, genuine head row put back would verify on its own).
    anchor: std::sync::Mutex<super::verify::Since>,
    /// Where the anchor is kept across restarts ([`super::anchors`]);
    /// `None`: in memory only.
    file: Option<Arc<super::anchors::AnchorsFile>>,
    /// How long a finished report is served; `None`: [`FRESH`].
    fresh: Option<Duration>,
}

impl ReportJob {
    /// The server's job: its anchor read from, and kept in, `file`
    /// ([`super::anchors`]), so that a chain rolled back while the server
    /// was down fails its first report.
    pub fn anchored_in(file: std::path::PathBuf) -> Result<Self, super::anchors::AnchorError> {
        let (file, since) = super::anchors::AnchorsFile::open(file)?;
        Ok(ReportJob {
            anchor: std::sync::Mutex::new(since),
            file: Some(Arc::new(file)),
            ..ReportJob::default()
        })
    }

    /// Whether the job started from an anchors file (a server's job only).
    pub fn anchors_found(&self) -> bool {
        self.file.as_ref().is_some_and(|f| f.found_at_start())
    }

    /// The same job, its finished reports served for `fresh` (tests: zero).
    pub fn fresh_for(self, fresh: Duration) -> Self {
        ReportJob {
            fresh: Some(fresh),
            ..self
        }
    }

    /// The heads the job's reports are anchored at now.
    pub fn anchor(&self) -> super::verify::Since {
        self.anchor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A job whose finished reports are served for `fresh` (tests: zero).
    pub fn with_freshness(fresh: Duration) -> Self {
        ReportJob {
            fresh: Some(fresh),
            ..ReportJob::default()
        }
    }

    /// A fresh report if there is one; otherwise waits up to `wait` for a
    /// run (started now, or already under way). `None`: still running.
    pub async fn latest_or_start(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        keyring: impl KeyringSource,
        wait: Duration,
    ) -> Option<Outcome> {
        let mut rx = {
            let mut state = self.state.lock().await;
            if let Some((at, outcome)) = &state.latest
                && at.elapsed() < self.fresh.unwrap_or(FRESH)
            {
                return Some(outcome.clone());
            }
            match &state.running {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    state.running = Some(rx.clone());
                    let job = self.clone();
                    tokio::spawn(async move {
                        let outcome = job.run(store.as_ref(), &keyring).await;
                        let mut state = job.state.lock().await;
                        state.latest = Some((Instant::now(), outcome.clone()));
                        state.running = None;
                        let _ = tx.send(Some(outcome));
                    });
                    rx
                }
            }
        };
        let waited = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(done)) => done.clone(),
            _ => None,
        }
    }
}

impl ReportJob {
    async fn run(&self, store: &dyn Store, source: &impl KeyringSource) -> Outcome {
        let since = self
            .anchor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut keyring = source.current();
        let mut runs = 0;
        let report = loop {
            runs += 1;
            let report = super::verify::verify_since(store, &keyring, &|_, _| {}, &since)
                .await
                .map_err(|error| {
                    tracing::error!(error = %error, "the audit report run failed");
                    "the database could not be read"
                })?;
            // A rotation or a rewrap during the run: records sealed or
            // re-wrapped under a version the run's keyring did not hold
            // failed for that alone. Run again under the keyring in force,
            // rather than sign failures that are not there.
            let now = source.current();
            if report.verified || Arc::ptr_eq(&now, &keyring) || runs == RUNS_ACROSS_ROTATIONS {
                break report;
            }
            tracing::info!(
                "the keyring changed during an audit run that found failures; running it again"
            );
            keyring = now;
        };
        let keyring = keyring.as_ref();
        let moved = {
            // Each chain's anchor moves forward with an intact run only.
            let seen = super::verify::Since::of(&report);
            let mut anchor = self.anchor.lock().unwrap_or_else(|p| p.into_inner());
            let before = (anchor.access_log, anchor.consent_ledger.clone());
            if let Some(head) = seen.access_log
                && anchor.access_log.is_none_or(|a| head.seq >= a.seq)
            {
                anchor.access_log = Some(head);
            }
            if let Some(head) = seen.consent_ledger
                && anchor
                    .consent_ledger
                    .as_ref()
                    .is_none_or(|a| head.seq >= a.seq)
            {
                anchor.consent_ledger = Some(head);
            }
            (before != (anchor.access_log, anchor.consent_ledger.clone())).then(|| anchor.clone())
        };
        if let (Some(file), Some(anchor)) = (self.file.clone(), moved) {
            // Kept for the next start; a failure is logged, the report
            // still served (the anchor in memory holds until then).
            let path = file.path().display().to_string();
            match tokio::task::spawn_blocking(move || file.keep(&anchor)).await {
                Ok(Ok(())) | Ok(Err(super::anchors::KeepError::Removed { first: false })) => {}
                Ok(Err(super::anchors::KeepError::Removed { first: true })) => tracing::error!(
                    path = %path,
                    "the audit anchors file was removed while this server ran; it is not \
                     written back (this server's heads are those of the database it started \
                     on). If the database was restored, stop every server on this data \
                     directory and start them again: the next intact report anchors anew"
                ),
                _ => tracing::warn!(
                    path = %path,
                    "the audit anchors could not be saved; a restart forgets them"
                ),
            }
        }
        super::report::sign(&report, keyring)
            .map(Arc::new)
            .map_err(|_| "signing the report failed")
    }
}
