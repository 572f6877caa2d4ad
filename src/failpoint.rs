//! Test-only failpoints for the crash-safety harness (`tools/checkoutd-crash.rs`).
//!
//! Compiled in only with the `failpoints` cargo feature; a normal build has
//! none, and each function below is an empty inline function. With the
//! feature, `CHECKOUTD_FAILPOINT_AFTER_COMMIT=N` makes the group-commit
//! writer stop for good right after its N-th batch commits and before any of
//! that batch's requests is answered, after logging a fixed line the
//! harness waits for before it `kill -9`s the process. That is the moment
//! that proves group commit acknowledges nothing before it is durable: the
//! orders are committed, no client heard so, and a retry with the same
//! Idempotency-Key must find them.

/// The writer committed a batch and is about to answer it: `orders`, each
/// with its outcome. The line logged names the orders this batch wrote
/// (their ids: no personal data), so that the harness can require each of
/// them to come back to its client as a replay of that very order.
#[cfg(feature = "failpoints")]
pub async fn after_commit(
    orders: &[crate::store::rows::NewOrder],
    outcomes: &[crate::store::rows::CommitOutcome],
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static BATCHES: AtomicU64 = AtomicU64::new(0);
    let Some(at) = std::env::var("CHECKOUTD_FAILPOINT_AFTER_COMMIT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    if BATCHES.fetch_add(1, Ordering::SeqCst) + 1 == at {
        let written: Vec<String> = orders
            .iter()
            .zip(outcomes)
            .filter(|(_, o)| matches!(o, crate::store::rows::CommitOutcome::Committed))
            .map(|(order, _)| order.id.to_string())
            .collect();
        tracing::error!(
            "failpoint after_commit reached: batch committed, answers held; orders {}",
            written.join(",")
        );
        std::future::pending::<()>().await;
    }
}

/// The writer committed a batch and is about to answer it.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn after_commit(
    _orders: &[crate::store::rows::NewOrder],
    _outcomes: &[crate::store::rows::CommitOutcome],
) {
}
