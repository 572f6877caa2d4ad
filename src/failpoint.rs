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

/// The writer committed a batch of `orders` and is about to answer them.
#[cfg(feature = "failpoints")]
pub async fn after_commit(orders: usize) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static BATCHES: AtomicU64 = AtomicU64::new(0);
    let Some(at) = std::env::var("CHECKOUTD_FAILPOINT_AFTER_COMMIT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    if BATCHES.fetch_add(1, Ordering::SeqCst) + 1 == at {
        tracing::error!(
            orders,
            "failpoint after_commit reached: batch committed, answers held"
        );
        std::future::pending::<()>().await;
    }
}

/// The writer committed a batch of `orders` and is about to answer them.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn after_commit(_orders: usize) {}
