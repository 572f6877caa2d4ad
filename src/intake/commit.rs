//! Group commit: concurrent orders share one synced transaction.
//!
//! A request task validates and seals its order, then hands the finished
//! rows to the single writer task here and waits. The writer takes every
//! order queued at that moment (up to [`MAX_BATCH`]) and commits them with
//! one multi-row INSERT per table in one transaction, then answers each
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
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::store::rows::{CommitOutcome, NewOrder};
use crate::store::{Store, StoreError};

/// The most orders one transaction takes.
pub const MAX_BATCH: usize = 256;

/// Orders waiting for the writer; beyond this, request tasks wait to
/// enqueue (backpressure instead of unbounded memory).
const QUEUE: usize = 4 * MAX_BATCH;

/// The longest one commit may take before its orders are answered 503 (well
/// inside the request timeout, so a client hears "retry", not a 408). The
/// outcome is then unknown; a retry with the same key replays or commits.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

struct Job {
    order: NewOrder,
    done: oneshot::Sender<Result<CommitOutcome, StoreError>>,
}

/// The handle request tasks commit through.
pub struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(store, queue));
        GroupCommit { jobs }
    }

    /// Commits `order` with whatever else is queued; returns once it is
    /// durable (or known not to be written).
    pub async fn commit(&self, order: NewOrder) -> Result<CommitOutcome, StoreError> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job { order, done })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }
}

async fn write_batches(store: Arc<dyn Store>, mut queue: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let (orders, waiters): (Vec<NewOrder>, Vec<_>) =
            jobs.drain(..).map(|j| (j.order, j.done)).unzip();
        let started = Instant::now();
        let result = commit(store.as_ref(), &orders).await;
        crate::telemetry::commit_batch(orders.len(), started.elapsed(), result.is_ok());
        match result {
            Ok(outcomes) if outcomes.len() == waiters.len() => {
                for (done, outcome) in waiters.into_iter().zip(outcomes) {
                    let _ = done.send(Ok(outcome));
                }
            }
            Ok(_) => fail_all(
                waiters,
                StoreError::Incomplete("the store answered a batch with the wrong count"),
            ),
            Err(error) if error.is_unavailable() || orders.len() == 1 => {
                fail_all(waiters, error);
            }
            Err(error) => {
                tracing::warn!(error = %error, orders = orders.len(), "a commit batch failed; retrying its orders one by one");
                let mut waiters = waiters.into_iter();
                for order in &orders {
                    let Some(done) = waiters.next() else { break };
                    let one = commit(store.as_ref(), std::slice::from_ref(order))
                        .await
                        .and_then(|mut o| {
                            o.pop()
                                .ok_or(StoreError::Incomplete("the store answered no outcome"))
                        });
                    match one {
                        // The database went away meanwhile: the rest get
                        // that answer at once instead of each waiting.
                        Err(error) if error.is_unavailable() => {
                            let rest: Vec<_> =
                                std::iter::once(done).chain(waiters.by_ref()).collect();
                            fail_all(rest, error);
                        }
                        one => {
                            let _ = done.send(one);
                        }
                    }
                }
            }
        }
    }
}

/// One `commit_orders` call, bounded by [`COMMIT_TIMEOUT`].
async fn commit(store: &dyn Store, orders: &[NewOrder]) -> Result<Vec<CommitOutcome>, StoreError> {
    tokio::time::timeout(COMMIT_TIMEOUT, store.commit_orders(orders))
        .await
        .unwrap_or(Err(StoreError::Timeout(COMMIT_TIMEOUT)))
}

fn fail_all(waiters: Vec<oneshot::Sender<Result<CommitOutcome, StoreError>>>, error: StoreError) {
    let shared = Arc::new(error);
    for done in waiters {
        let _ = done.send(Err(StoreError::Shared(shared.clone())));
    }
}
