//! Group commit: concurrent orders share one synced transaction.
//!
//! A request task validates and seals its order, then hands the finished
//! rows to the single writer task here and waits. The writer takes every
//! order queued at that moment (up to [`MAX_BATCH`]) and commits them in
//! one transaction (`Store::commit_orders`: SQLite's order writer thread,
//! or one statement of `unnest` INSERTs on PostgreSQL), then answers each
//! waiter. There is no timer: while one batch is being committed (and
//! synced) the next one queues up, so batches grow with load by themselves
//! and a lone order is committed at once.
//!
//! Failure never spreads silently: when the database is unavailable every
//! order of the batch gets that error (answered 503, retry with the same
//! Idempotency-Key); any other failure of a batch is retried order by order,
//! so one bad order fails alone. A waiter is answered only after the commit
//! returned: never a 2xx without a commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::intake::KeyHold;
use crate::store::rows::{CommitOutcome, NewOrder};
use crate::store::{Store, StoreError};

/// The most orders one transaction takes.
pub const MAX_BATCH: usize = 256;

/// Orders waiting for the writer by default; beyond the queue's depth an
/// order is refused at once with [`StoreError::Busy`] (answered 503 with
/// `Retry-After`; nothing was written, nor the Idempotency-Key claimed), so
/// neither memory nor waiting grows without bound under a flood.
const QUEUE: usize = 4 * MAX_BATCH;

/// The longest one commit may take before its orders are answered 503 (well
/// inside the request timeout, so a client hears "retry", not a 408). The
/// outcome is then unknown; a retry with the same key replays or commits.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where batches are written: the store, or a stand-in in tests.
#[async_trait::async_trait]
pub trait OrderSink: Send + Sync + 'static {
    /// As [`Store::commit_orders`]: one outcome per order, or an error and
    /// nothing written.
    async fn commit_orders(&self, batch: Arc<[NewOrder]>)
    -> Result<Vec<CommitOutcome>, StoreError>;
}

#[async_trait::async_trait]
impl OrderSink for Arc<dyn Store> {
    async fn commit_orders(
        &self,
        batch: Arc<[NewOrder]>,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        self.as_ref().commit_orders(batch).await
    }
}

struct Job {
    order: NewOrder,
    done: oneshot::Sender<Result<CommitOutcome, StoreError>>,
    /// The order's Idempotency-Key kept busy in this process until the
    /// order is resolved (see `intake::KeyHold`).
    hold: Option<KeyHold>,
}

/// The key holds of a batch's orders, in the batch's order.
type Holds = Vec<Option<KeyHold>>;

/// The handle request tasks commit through.
pub struct GroupCommit {
    jobs: mpsc::Sender<Job>,
    /// Store calls that outlived [`COMMIT_TIMEOUT`] and have not returned.
    overdue: Arc<AtomicUsize>,
    /// When a graceful stop cuts off the requests still running (set when
    /// the stop begins): orders waiting for their commit are answered 503
    /// "retry" before it, as before their own time limit.
    drain_by: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
}

impl GroupCommit {
    /// Starts the writer task on the current runtime.
    pub fn start(sink: impl OrderSink) -> Self {
        Self::with_queue(sink, QUEUE)
    }

    /// As [`start`](Self::start), with room for `depth` waiting orders.
    pub fn with_queue(sink: impl OrderSink, depth: usize) -> Self {
        let (jobs, queue) = mpsc::channel(depth.max(1));
        let overdue = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write_batches(sink, queue, overdue.clone()));
        GroupCommit {
            jobs,
            overdue,
            drain_by: tokio::sync::watch::Sender::new(None),
        }
    }

    /// A graceful stop began: requests still running at `by` are cut off.
    /// Every order waiting for its commit — now or later — is answered
    /// ([`StoreError::Timeout`], a 503 "retry with the same key")
    /// [`ANSWER_MARGIN`] before `by` if its commit has not returned, as it
    /// is before its own time limit: never a reset that says nothing.
    pub fn drain_by(&self, by: tokio::time::Instant) {
        self.drain_by.send_replace(Some(by));
    }

    /// Whether a store call outlived [`COMMIT_TIMEOUT`] and is still
    /// running: its connection (PostgreSQL) or the writer thread (SQLite)
    /// is taken, its orders' keys are busy, and every later order waits
    /// behind it — the instance is not ready (`/readyz`).
    pub fn stalled(&self) -> bool {
        self.overdue.load(Ordering::Acquire) > 0
    }

    /// Commits `order` with whatever else is queued; returns once it is
    /// durable (or known not to be written).
    ///
    /// `answer_by` is when the caller must have its answer (the request's
    /// time limit). The wait ends [`ANSWER_MARGIN`] before it with
    /// [`StoreError::Timeout`] (answered 503: retry with the same key), so
    /// the time limit's 408 — which tells a client nothing was kept — is
    /// never sent for an order that may still commit. An order whose caller
    /// stopped waiting is left out of the next batch; only one already
    /// being committed may still land, and a retry then replays it.
    ///
    /// `hold` is kept until the order is resolved: answered, left out, or —
    /// when its commit outlived [`COMMIT_TIMEOUT`] and was answered 503 —
    /// until the store call that may still commit it has returned.
    pub async fn commit(
        &self,
        order: NewOrder,
        hold: Option<KeyHold>,
        answer_by: Option<tokio::time::Instant>,
    ) -> Result<CommitOutcome, StoreError> {
        let wait = answer_by.map(|by| {
            by.saturating_duration_since(tokio::time::Instant::now())
                .saturating_sub(ANSWER_MARGIN)
        });
        if wait == Some(Duration::ZERO) {
            return Err(StoreError::Timeout(Duration::ZERO));
        }
        // Past a stop's answer deadline an order is not queued at all: it
        // would be answered 503 at once, and an idle writer could still
        // commit it — an order stored that its client was told to retry.
        let draining = *self.drain_by.borrow();
        if draining.is_some_and(|by| {
            by.checked_sub(ANSWER_MARGIN)
                .is_none_or(|answer_by| tokio::time::Instant::now() >= answer_by)
        }) {
            return Err(StoreError::Timeout(Duration::ZERO));
        }
        let (done, answer) = oneshot::channel();
        self.jobs
            .try_send(Job { order, done, hold })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => StoreError::Busy,
                mpsc::error::TrySendError::Closed(_) => StoreError::WriterStopped,
            })?;
        let answer = async { answer.await.map_err(|_| StoreError::WriterStopped)? };
        let mut drain = self.drain_by.subscribe();
        let drained = async move {
            let Ok(by) = drain.wait_for(Option::is_some).await.map(|by| *by) else {
                return std::future::pending().await;
            };
            let by = by.map_or_else(tokio::time::Instant::now, |by| {
                by.checked_sub(ANSWER_MARGIN)
                    .unwrap_or_else(tokio::time::Instant::now)
            });
            tokio::time::sleep_until(by).await;
        };
        let answer = async {
            tokio::select! {
                // An answer that is in when the stop's deadline comes is
                // the one given. (A commit still running then is answered
                // 503 "retry with the same key", and may land: its retry
                // replays it.)
                biased;
                answered = answer => answered,
                () = drained => Err(StoreError::Timeout(Duration::ZERO)),
            }
        };
        match wait {
            None => answer.await,
            Some(wait) => tokio::time::timeout(wait, answer)
                .await
                .unwrap_or(Err(StoreError::Timeout(wait))),
        }
    }
}

/// How long before its request's time limit an order stops waiting for
/// its commit (and is answered 503), so that the answer leaves in time.
pub const ANSWER_MARGIN: Duration = Duration::from_millis(250);

async fn write_batches(
    store: impl OrderSink,
    mut queue: mpsc::Receiver<Job>,
    overdue: Arc<AtomicUsize>,
) {
    let store = Arc::new(store);
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        // A caller that stopped waiting (answered 503 at its time limit,
        // or its client went away) is not committed behind its back: it
        // was told nothing was kept, or nothing at all.
        jobs.retain(|j| !j.done.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let mut orders = Vec::with_capacity(jobs.len());
        let mut waiters = Vec::with_capacity(jobs.len());
        let mut holds: Holds = Vec::with_capacity(jobs.len());
        for job in jobs.drain(..) {
            orders.push(job.order);
            waiters.push(job.done);
            holds.push(job.hold);
        }
        let orders: Arc<[NewOrder]> = orders.into();
        let started = Instant::now();
        // The holds come back with the outcome; a commit that timed out
        // keeps them until its store call returns.
        let (result, holds) = commit(&store, orders.clone(), holds, &overdue).await;
        crate::telemetry::commit_batch(orders.len(), started.elapsed(), result.is_ok());
        match result {
            Ok(outcomes) if outcomes.len() == waiters.len() => {
                crate::failpoint::after_commit(&orders, &outcomes).await;
                let mut unheard = 0;
                for (done, outcome) in waiters.into_iter().zip(outcomes) {
                    unheard += usize::from(!answer(done, Ok(outcome)));
                }
                note_unheard(unheard);
                drop(holds);
            }
            Ok(outcomes) => {
                // No store does this; if one did, the batch *was*
                // committed, so its orders are neither stored for sure nor
                // lost for sure: answered "retry with the same key" (a
                // retry replays what landed), their keys uncertain.
                tracing::error!(
                    orders = waiters.len(),
                    outcomes = outcomes.len(),
                    "the store answered a committed batch with the wrong count; its orders are answered as unconfirmed"
                );
                for hold in holds.iter().flatten().flatten() {
                    hold.outcome_unknown(OUTCOME_UNKNOWN);
                }
                fail_all(waiters, StoreError::Timeout(Duration::ZERO));
            }
            // A retired KEK is one order's fault (sealed just before a
            // rotation): retried one by one below, it fails alone.
            Err(error)
                if (error.is_unavailable() && !error.is_retired_kek()) || orders.len() == 1 =>
            {
                mark_uncertain(holds.iter().flatten().flatten(), &error);
                fail_all(waiters, error);
            }
            Err(error) => {
                // The batch was rolled back (a non-transient error is never
                // one whose outcome is unknown), so its holds are the
                // orders' own again: each goes with its order's answer.
                tracing::warn!(error = %error, orders = orders.len(), "a commit batch failed; retrying its orders one by one");
                let holds = holds.unwrap_or_else(|| waiters.iter().map(|_| None).collect());
                let mut waiters = waiters.into_iter().zip(holds);
                for order in orders.iter() {
                    let Some((done, hold)) = waiters.next() else {
                        break;
                    };
                    if done.is_closed() {
                        continue;
                    }
                    let (one, hold) = commit(
                        &store,
                        Arc::from(std::slice::from_ref(order)),
                        vec![hold],
                        &overdue,
                    )
                    .await;
                    let one = one.and_then(|mut o| {
                        o.pop()
                            .ok_or(StoreError::Incomplete("the store answered no outcome"))
                    });
                    match one {
                        // The database went away meanwhile: the rest get
                        // that answer at once instead of each waiting.
                        Err(error) if error.is_unavailable() && !error.is_retired_kek() => {
                            mark_uncertain(hold.iter().flatten().flatten(), &error);
                            let rest: Vec<_> = std::iter::once(done)
                                .chain(waiters.by_ref().map(|(done, _)| done))
                                .collect();
                            fail_all(rest, error);
                        }
                        one => note_unheard(usize::from(!answer(done, one))),
                    }
                    drop(hold);
                }
            }
        }
    }
}

/// One `commit_orders` call, waited for at most [`COMMIT_TIMEOUT`], with
/// the batch's key holds. The call runs in a task of its own that owns the
/// batch and the holds: when the wait ends first, the orders are answered
/// 503 ("retry with the same key") while the call goes on — SQLite's
/// writer thread finishing the batch, PostgreSQL's statement still running
/// on the server — and may yet commit. Their keys stay busy until it
/// returns, so a retry meanwhile is told 409, never answered as if the
/// first attempt had failed. `None` holds: kept by that task.
async fn commit<S: OrderSink>(
    store: &Arc<S>,
    orders: Arc<[NewOrder]>,
    holds: Holds,
    overdue: &Arc<AtomicUsize>,
) -> (Result<Vec<CommitOutcome>, StoreError>, Option<Holds>) {
    let store = store.clone();
    let mut call = tokio::spawn(async move {
        let result = store.commit_orders(orders).await;
        // Counted here, where every commit returns — in time or after its
        // orders were answered 503, in a batch or one by one — so that the
        // count is what the database holds, not what was answered.
        if let Ok(outcomes) = &result {
            crate::telemetry::orders_committed(
                outcomes
                    .iter()
                    .filter(|o| matches!(o, CommitOutcome::Committed))
                    .count(),
            );
        }
        (result, holds)
    });
    match tokio::time::timeout(COMMIT_TIMEOUT, &mut call).await {
        Ok(Ok((result, holds))) => (result, Some(holds)),
        // The call panicked: the batch's transaction went with it.
        Ok(Err(_)) => (Err(StoreError::Incomplete("the commit call failed")), None),
        Err(_) => {
            // Counted until it returns (`GroupCommit::stalled`).
            overdue.fetch_add(1, Ordering::AcqRel);
            let overdue = overdue.clone();
            tokio::spawn(async move {
                // Answered 503 long ago; if the call then failed with its
                // outcome unknown, its keys stay uncertain as if it had
                // failed in time.
                match call.await {
                    Ok((Err(error), holds)) => {
                        tracing::warn!(error = %error, "a commit answered 503 at its time limit failed later");
                        mark_uncertain(holds.iter().flatten(), &error);
                    }
                    Ok((Ok(outcomes), _)) => tracing::warn!(
                        orders = outcomes
                            .iter()
                            .filter(|o| matches!(o, CommitOutcome::Committed))
                            .count(),
                        "a commit answered 503 at its time limit landed later: its orders are stored, and a retry with the same key replays them"
                    ),
                    Err(_) => {}
                }
                overdue.fetch_sub(1, Ordering::AcqRel);
            });
            (Err(StoreError::Timeout(COMMIT_TIMEOUT)), None)
        }
    }
}

/// Sends `result` to its request. `false` when it is a commit its request
/// no longer waited for (answered 503 "retry" at its time limit or at a
/// stop): the order is stored all the same, and its retry replays it.
fn answer(
    done: oneshot::Sender<Result<CommitOutcome, StoreError>>,
    result: Result<CommitOutcome, StoreError>,
) -> bool {
    let committed = matches!(result, Ok(CommitOutcome::Committed));
    done.send(result).is_ok() || !committed
}

/// Logs orders stored after their requests were answered 503.
fn note_unheard(orders: usize) {
    if orders > 0 {
        tracing::warn!(
            orders,
            "orders committed after their requests stopped waiting (answered 503 at their time limit or a stop, or their client went away): stored, and a retry with the same key replays them"
        );
    }
}

/// How long a key stays uncertain after its batch's connection broke
/// mid-statement (`StoreError::outcome_unknown`): longer than the serving
/// sessions' `statement_timeout` on PostgreSQL (20 s, `store::postgres`),
/// by which the server has committed or rolled back what it had read.
pub(crate) const OUTCOME_UNKNOWN: Duration = Duration::from_secs(25);

/// Marks the keys of a failed batch whose outcome is unknown
/// (`KeyHold::outcome_unknown`); a batch known to have written nothing
/// marks none.
fn mark_uncertain<'a>(holds: impl Iterator<Item = &'a KeyHold>, error: &StoreError) {
    if error.outcome_unknown() {
        for hold in holds {
            hold.outcome_unknown(OUTCOME_UNKNOWN);
        }
    }
}

fn fail_all(waiters: Vec<oneshot::Sender<Result<CommitOutcome, StoreError>>>, error: StoreError) {
    let shared = Arc::new(error);
    for done in waiters {
        let _ = done.send(Err(StoreError::Shared(shared.clone())));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::crypto::keyring::Keyring;
    use crate::intake::IdempotencyKey;
    use ring::rand::SystemRandom;

    /// A sink that answers each call from a script, recording batch sizes.
    struct Scripted {
        answers: Mutex<Vec<Answer>>,
        calls: Arc<Mutex<Vec<usize>>>,
    }

    #[derive(Clone, Copy)]
    enum Answer {
        Commit,
        Fail,
        Outage,
        RetiredKek,
        Hang,
        /// The connection broke after the statement was sent.
        Broken,
        /// Hangs for an hour, then the connection breaks.
        HangThenBroken,
        /// Commits, and answers one outcome too few.
        Short,
    }

    #[async_trait::async_trait]
    impl OrderSink for Scripted {
        async fn commit_orders(
            &self,
            batch: Arc<[NewOrder]>,
        ) -> Result<Vec<CommitOutcome>, StoreError> {
            self.calls.lock().unwrap().push(batch.len());
            let next = {
                let mut a = self.answers.lock().unwrap();
                if a.is_empty() {
                    Answer::Commit
                } else {
                    a.remove(0)
                }
            };
            match next {
                Answer::Commit => Ok(vec![CommitOutcome::Committed; batch.len()]),
                Answer::Fail => Err(StoreError::Corrupt("a constraint failed")),
                Answer::Outage => Err(StoreError::WriterStopped),
                Answer::Broken => Err(StoreError::Unavailable(sqlx::Error::Io(
                    std::io::ErrorKind::ConnectionReset.into(),
                ))),
                Answer::HangThenBroken => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Err(StoreError::Unavailable(sqlx::Error::Io(
                        std::io::ErrorKind::ConnectionReset.into(),
                    )))
                }
                Answer::RetiredKek => Err(StoreError::RetiredKek),
                Answer::Short => Ok(vec![CommitOutcome::Committed; batch.len() - 1]),
                Answer::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(vec![CommitOutcome::Committed; batch.len()])
                }
            }
        }
    }

    fn order(rng: &SystemRandom, keyring: &Keyring, n: usize) -> NewOrder {
        let form = crate::intake::seal::tests::form(false);
        let key = IdempotencyKey::parse(format!("k-{n}").as_bytes()).unwrap();
        crate::intake::seal::seal_order(rng, keyring, form, [1; 32], &key, [2; 32]).unwrap()
    }

    /// Starts a writer over `answers` and submits `n` orders at once.
    async fn run(
        answers: Vec<Answer>,
        n: usize,
    ) -> (Vec<Result<CommitOutcome, StoreError>>, Vec<usize>) {
        let rng = SystemRandom::new();
        let keyring = Keyring::generate(&rng, "2026-11-29T00:00:00.000Z").unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::new(GroupCommit::start(Scripted {
            answers: Mutex::new(answers),
            calls: calls.clone(),
        }));
        let orders: Vec<NewOrder> = (0..n).map(|i| order(&rng, &keyring, i)).collect();
        let tasks: Vec<_> = orders
            .into_iter()
            .map(|o| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.commit(o, None, None).await })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let calls = calls.lock().unwrap().clone();
        (results, calls)
    }

    #[tokio::test]
    async fn concurrent_orders_share_a_commit_and_all_are_answered_after_it() {
        let (results, calls) = run(vec![], 20).await;
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Ok(CommitOutcome::Committed)))
        );
        assert_eq!(calls.iter().sum::<usize>(), 20, "each order written once");
        assert!(
            calls.len() < 20,
            "some batch held several orders: {calls:?}"
        );
        assert!(calls.iter().all(|&n| n <= MAX_BATCH));
    }

    #[tokio::test]
    async fn a_failed_batch_is_retried_order_by_order_so_one_bad_order_fails_alone() {
        // The batch fails; then the retries: the second order fails, the
        // others commit.
        let (results, calls) = run(vec![Answer::Fail, Answer::Commit, Answer::Fail], 8).await;
        // All eight were queued before the writer ran (one runtime thread).
        assert_eq!(calls, vec![8, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert!(results[1].is_err(), "the second order alone fails");
        for (i, r) in results.iter().enumerate().filter(|(i, _)| *i != 1) {
            assert!(
                matches!(r, Ok(CommitOutcome::Committed)),
                "order {i}: {r:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_outage_fails_every_order_of_the_batch_as_retryable() {
        let (results, calls) = run(vec![Answer::Outage], 6).await;
        assert_eq!(calls, vec![6], "no retries into an outage");
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_err_and(StoreError::is_unavailable))
        );
    }

    #[tokio::test]
    async fn retrying_one_by_one_stops_at_the_first_outage() {
        let (results, calls) = run(vec![Answer::Fail, Answer::Outage], 5).await;
        assert_eq!(calls, vec![5, 1], "the other four are not tried");
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_err_and(StoreError::is_unavailable))
        );
    }

    /// An order sealed under a KEK retired a moment ago fails the
    /// batch's transaction; it must fail alone, not take the batch's
    /// correctly sealed orders down with it.
    #[tokio::test]
    async fn an_order_under_a_retired_kek_fails_alone() {
        let (results, calls) = run(
            vec![Answer::RetiredKek, Answer::Commit, Answer::RetiredKek],
            4,
        )
        .await;
        assert_eq!(calls, vec![4, 1, 1, 1, 1]);
        assert!(results[1].as_ref().is_err_and(StoreError::is_retired_kek));
        for i in [0, 2, 3] {
            assert!(
                matches!(results[i], Ok(CommitOutcome::Committed)),
                "order {i}: {:?}",
                results[i]
            );
        }
    }

    /// A caller stops waiting before its request's time limit and is
    /// answered "retry" (503), and its order, still queued behind a slow
    /// commit, is then left out: it never commits behind a 503's back.
    #[tokio::test(start_paused = true)]
    async fn a_caller_past_its_deadline_is_answered_and_its_order_left_out() {
        let rng = SystemRandom::new();
        let keyring = Keyring::generate(&rng, "2026-11-29T00:00:00.000Z").unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::new(GroupCommit::start(Slow {
            calls: calls.clone(),
        }));
        // The first order occupies the writer for 5 s.
        let first = {
            let (writer, o) = (writer.clone(), order(&rng, &keyring, 0));
            tokio::spawn(async move { writer.commit(o, None, None).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let by = tokio::time::Instant::now() + Duration::from_secs(2);
        let late = writer
            .commit(order(&rng, &keyring, 1), None, Some(by))
            .await;
        assert!(
            matches!(late, Err(StoreError::Timeout(_))),
            "answered as retryable: {late:?}"
        );
        // Exactly the margin before the request's time limit (paused time).
        assert_eq!(tokio::time::Instant::now(), by - ANSWER_MARGIN);
        assert!(matches!(first.await.unwrap(), Ok(CommitOutcome::Committed)));
        // Give the writer its turn: the abandoned order is not written.
        let third = writer.commit(order(&rng, &keyring, 2), None, None).await;
        assert!(matches!(third, Ok(CommitOutcome::Committed)));
        assert_eq!(
            *calls.lock().unwrap(),
            vec![1, 1],
            "order 1 never reached the store"
        );
        // A deadline already too close is refused without queueing.
        let now = writer
            .commit(
                order(&rng, &keyring, 3),
                None,
                Some(tokio::time::Instant::now()),
            )
            .await;
        assert!(matches!(now, Err(StoreError::Timeout(_))));
        assert_eq!(calls.lock().unwrap().len(), 2);
    }

    /// A graceful stop cuts running requests off at its drain deadline:
    /// an order still waiting for its commit is answered "retry" the
    /// margin before it, however far its own time limit, and so is one
    /// that arrives during the drain.
    #[tokio::test(start_paused = true)]
    async fn a_stop_answers_orders_still_waiting_before_its_drain_deadline() {
        let rng = SystemRandom::new();
        let keyring = Keyring::generate(&rng, "2026-11-29T00:00:00.000Z").unwrap();
        let writer = Arc::new(GroupCommit::start(Slow {
            calls: Arc::new(Mutex::new(Vec::new())),
        }));
        // The first order occupies the writer for 5 s; the second waits
        // behind it, its own time limit 30 s away.
        let first = {
            let (writer, o) = (writer.clone(), order(&rng, &keyring, 0));
            tokio::spawn(async move { writer.commit(o, None, None).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiting = {
            let (writer, o) = (writer.clone(), order(&rng, &keyring, 1));
            let by = tokio::time::Instant::now() + Duration::from_secs(30);
            tokio::spawn(async move { writer.commit(o, None, Some(by)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let drain_by = tokio::time::Instant::now() + Duration::from_secs(1);
        writer.drain_by(drain_by);
        let answered = waiting.await.unwrap();
        assert!(
            matches!(answered, Err(StoreError::Timeout(_))),
            "answered as retryable: {answered:?}"
        );
        assert_eq!(tokio::time::Instant::now(), drain_by - ANSWER_MARGIN);
        // One arriving during the drain too.
        let late = writer.commit(order(&rng, &keyring, 2), None, None).await;
        assert!(matches!(late, Err(StoreError::Timeout(_))), "{late:?}");
        // The order being committed meanwhile, its commit outlasting the
        // drain, is told "retry" the same way (it may still commit: a
        // retry then replays it).
        let first = first.await.unwrap();
        assert!(matches!(first, Err(StoreError::Timeout(_))), "{first:?}");
    }

    /// A commit that outlives group commit's wait is answered 503, but the
    /// order's key stays busy until the store call returns (it may still
    /// commit); an order answered normally frees its key at once.
    #[tokio::test(start_paused = true)]
    async fn a_key_stays_busy_until_a_commit_that_outlived_its_wait_returns() {
        let (rng, keyring, set, writer) = with_key_holds(vec![Answer::Hang, Answer::Commit]);
        let busy = |key: &str| set.is_held([1; 32], key);
        let hold = KeyHold::taken_in(&set, [1; 32], "k-0");
        let late = writer.commit(order(&rng, &keyring, 0), hold, None).await;
        assert!(
            late.as_ref().is_err_and(StoreError::is_unavailable),
            "{late:?}"
        );
        assert!(busy("k-0"), "released while the commit may still land");
        assert!(writer.stalled(), "a call past its wait is not reported");
        let hold = KeyHold::taken_in(&set, [1; 32], "k-1");
        let next = writer.commit(order(&rng, &keyring, 1), hold, None).await;
        assert!(matches!(next, Ok(CommitOutcome::Committed)), "{next:?}");
        tokio::task::yield_now().await;
        assert!(!busy("k-1"), "an answered order's key stays busy");
        assert!(busy("k-0"));
        // The hanging call returns (an hour later): only now is k-0 free.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!busy("k-0"), "never released");
        assert!(!writer.stalled());
    }

    /// A batch whose connection broke mid-statement may still commit: its
    /// keys are marked uncertain for a while (a retry with a body that no
    /// longer validates is then told "in flight", not 422), but freed as
    /// usual; a batch known to have written nothing marks none.
    #[tokio::test]
    async fn a_connection_broken_mid_commit_leaves_its_keys_uncertain() {
        let (rng, keyring, set, writer) = with_key_holds(vec![Answer::Broken, Answer::Outage]);
        let hold = KeyHold::taken_in(&set, [1; 32], "k-0");
        let broken = writer.commit(order(&rng, &keyring, 0), hold, None).await;
        assert!(
            broken.as_ref().is_err_and(StoreError::is_unavailable),
            "{broken:?}"
        );
        let hold = KeyHold::taken_in(&set, [1; 32], "k-1");
        let refused = writer.commit(order(&rng, &keyring, 1), hold, None).await;
        assert!(refused.is_err(), "{refused:?}");
        tokio::task::yield_now().await;
        assert!(set.is_uncertain([1; 32], "k-0"));
        assert!(!set.is_uncertain([1; 32], "k-1"), "nothing was sent");
        assert!(!set.is_held([1; 32], "k-0"), "a valid retry is not blocked");
        assert!(!set.is_uncertain([2; 32], "k-0"), "per client");
    }

    /// A commit whose request stopped waiting is told apart (and logged):
    /// stored all the same.
    #[test]
    fn a_commit_nobody_waits_for_any_more_is_told_apart() {
        let (done, waiting) = oneshot::channel();
        assert!(answer(done, Ok(CommitOutcome::Committed)), "heard");
        drop(waiting);
        let (done, gone) = oneshot::channel();
        drop(gone);
        assert!(
            !answer(done, Ok(CommitOutcome::Committed)),
            "stored, unheard"
        );
        let (done, gone) = oneshot::channel();
        drop(gone);
        assert!(
            answer(done, Ok(CommitOutcome::DuplicateKey)),
            "nothing stored"
        );
        let (done, gone) = oneshot::channel();
        drop(gone);
        assert!(answer(done, Err(StoreError::Busy)), "nothing stored");
    }

    /// A store that answers a committed batch with the wrong count: the
    /// orders may have landed, so each is answered "retry" (503), never
    /// "nothing was stored", and its key is left uncertain.
    #[tokio::test]
    async fn a_batch_answered_with_the_wrong_count_is_unconfirmed_not_failed() {
        let (rng, keyring, set, writer) = with_key_holds(vec![Answer::Short]);
        let hold = KeyHold::taken_in(&set, [1; 32], "k-0");
        let answer = writer.commit(order(&rng, &keyring, 0), hold, None).await;
        assert!(
            answer.as_ref().is_err_and(StoreError::is_unavailable),
            "{answer:?}"
        );
        tokio::task::yield_now().await;
        assert!(set.is_uncertain([1; 32], "k-0"));
        assert!(!set.is_held([1; 32], "k-0"), "a valid retry is not blocked");
    }

    /// The orders-accepted count is what was stored: an order answered 503
    /// at its time limit whose commit lands later counts too.
    #[test]
    fn orders_are_counted_when_their_commit_lands_not_when_answered() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async {
                let (rng, keyring, _, writer) = with_key_holds(vec![Answer::Hang, Answer::Commit]);
                let late = writer.commit(order(&rng, &keyring, 0), None, None).await;
                assert!(late.is_err(), "{late:?}");
                let next = writer.commit(order(&rng, &keyring, 1), None, None).await;
                assert!(matches!(next, Ok(CommitOutcome::Committed)), "{next:?}");
                // The first call returns (an hour later), committed.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
            });
        });
        let text = handle.render();
        assert!(text.contains("checkoutd_orders_accepted_total 2"), "{text}");
    }

    /// What the key-hold tests share: a keyring to seal orders with, the
    /// in-flight set their holds are taken in, and a writer over `answers`.
    fn with_key_holds(
        answers: Vec<Answer>,
    ) -> (
        SystemRandom,
        Keyring,
        Arc<crate::intake::InFlight>,
        GroupCommit,
    ) {
        let rng = SystemRandom::new();
        let keyring = Keyring::generate(&rng, "2026-11-29T00:00:00.000Z").unwrap();
        let writer = GroupCommit::start(Scripted {
            answers: Mutex::new(answers),
            calls: Arc::default(),
        });
        (rng, keyring, Arc::default(), writer)
    }

    /// A commit answered 503 at its time limit whose connection then
    /// breaks leaves its key uncertain too.
    #[tokio::test(start_paused = true)]
    async fn a_late_commit_that_breaks_leaves_its_key_uncertain() {
        let (rng, keyring, set, writer) = with_key_holds(vec![Answer::HangThenBroken]);
        let hold = KeyHold::taken_in(&set, [1; 32], "k-0");
        let late = writer.commit(order(&rng, &keyring, 0), hold, None).await;
        assert!(
            late.as_ref().is_err_and(StoreError::is_unavailable),
            "{late:?}"
        );
        assert!(!set.is_uncertain([1; 32], "k-0"), "not known yet");
        assert!(set.is_held([1; 32], "k-0"));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!set.is_held([1; 32], "k-0"));
        assert!(set.is_uncertain([1; 32], "k-0"));
    }

    /// A sink whose every commit takes 5 s.
    struct Slow {
        calls: Arc<Mutex<Vec<usize>>>,
    }

    #[async_trait::async_trait]
    impl OrderSink for Slow {
        async fn commit_orders(
            &self,
            batch: Arc<[NewOrder]>,
        ) -> Result<Vec<CommitOutcome>, StoreError> {
            self.calls.lock().unwrap().push(batch.len());
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(vec![CommitOutcome::Committed; batch.len()])
        }
    }

    /// An order that comes after a stop's answer deadline is answered 503
    /// without reaching the writer, even an idle one: never committed
    /// behind a "retry".
    #[tokio::test(start_paused = true)]
    async fn an_order_past_the_stop_s_answer_deadline_is_not_queued() {
        let rng = SystemRandom::new();
        let keyring = Keyring::generate(&rng, "2026-11-29T00:00:00.000Z").unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        // A queue of one, behind an order being committed for 5 s.
        let writer = Arc::new(GroupCommit::with_queue(
            Slow {
                calls: calls.clone(),
            },
            1,
        ));
        let first = {
            let (writer, o) = (writer.clone(), order(&rng, &keyring, 0));
            tokio::spawn(async move { writer.commit(o, None, None).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        writer.drain_by(tokio::time::Instant::now() + ANSWER_MARGIN / 2);
        for n in 1..=2 {
            let late = writer.commit(order(&rng, &keyring, n), None, None).await;
            // Had the first late order been queued, the second would find
            // the queue full (`Busy`).
            assert!(matches!(late, Err(StoreError::Timeout(_))), "{late:?}");
        }
        let _ = first.await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(*calls.lock().unwrap(), vec![1], "the writer got a late one");
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_that_never_returns_is_a_retryable_timeout_not_a_success() {
        let (results, _) = run(vec![Answer::Hang], 1).await;
        match &results[0] {
            Err(e) => assert!(e.is_unavailable(), "{e}"),
            Ok(_) => panic!("answered before a commit"),
        }
    }
}
