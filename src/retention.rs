//! Purge (crypto-shredding) and retention.
//!
//! Purging a data class of an order deletes its records — and with them
//! their wrapped data keys, the only way to their plaintext: the data is
//! unrecoverable even with the full keyring. The order row (no personal
//! data), its consent tags and the access log stay, so the audit trail is
//! whole; each purge is recorded in `purges` with a MAC, and the audit shows
//! purged classes as purged, not as failures.
//!
//! Retention (run by `serve` every hour; documented in the README):
//! - card data: `--retain-card-days` after dispatch (default 120: the card
//!   networks' chargeback window, during which the merchant may need the
//!   card record to answer a dispute or refund);
//! - gift-recipient data: `--retain-recipient-days` after dispatch (default
//!   30: enough for a delivery problem or a return; the recipient's details
//!   were collected only to deliver the parcel).
//!
//! Billing, shipping and contact data follow the customer relationship and
//! are purged on request (`checkoutd orders purge`).

use std::sync::Arc;
use std::time::Duration;

use crate::audit::access_log::{Chainer, Entry, Outcome};
use crate::crypto::DataClass;
use crate::crypto::keyring::Keyring;
use crate::store::rows::PurgeRow;
use crate::store::{Store, StoreError};

/// The bytes a purge MAC covers.
pub fn purge_canonical_bytes(
    order_id: &str,
    class: &str,
    purged_at: &str,
    reason: &str,
) -> Vec<u8> {
    let mut out = b"checkoutd/purge".to_vec();
    for field in [order_id, class, purged_at, reason] {
        out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// Purges `classes` of one order; logs it. Returns the classes purged.
pub async fn purge_order(
    store: &dyn Store,
    keyring: &Keyring,
    order_id: &str,
    classes: &[DataClass],
    reason: &str,
    who: (&str, &str),
) -> Result<Vec<String>, StoreError> {
    let now = crate::ids::now();
    let key = keyring.consent_tag_key();
    let rows: Vec<PurgeRow> = classes
        .iter()
        .map(|c| PurgeRow {
            order_id: order_id.to_owned(),
            class: c.as_str().to_owned(),
            purged_at: now.clone(),
            reason: reason.to_owned(),
            mac: key
                .sign(&[&purge_canonical_bytes(order_id, c.as_str(), &now, reason)])
                .to_vec(),
        })
        .collect();
    let done = store.purge(order_id, &rows).await?;
    // The deletion is committed: it is logged even if emptying the WAL
    // below fails (then a purge run again, which finds nothing left to
    // delete, still empties it).
    if !done.is_empty() {
        let entry = Entry {
            at: now,
            role: who.0.to_owned(),
            cert_fingerprint: who.1.to_owned(),
            origin_ip: "local".to_owned(),
            action: format!("purge ({reason})"),
            objects: std::iter::once(order_id.to_owned())
                .chain(done.iter().map(|c| format!("class:{c}")))
                .collect(),
            outcome: Outcome::Allowed,
            status: 0,
        };
        store
            .append_access_log(
                std::slice::from_ref(&entry),
                &Chainer::new(keyring.access_log_key()),
            )
            .await?;
    }
    store.after_purge().await?;
    Ok(done)
}

/// A retention rule: purge `class` this long after dispatch.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub class: DataClass,
    pub after_dispatch: Duration,
}

/// One pass of the retention schedule. Returns how many purges it made.
pub async fn run_once(
    store: &dyn Store,
    keyring: &Keyring,
    rules: &[Rule],
) -> Result<u64, StoreError> {
    let mut purged = 0;
    for rule in rules {
        let cutoff = time::OffsetDateTime::now_utc()
            - time::Duration::try_from(rule.after_dispatch).unwrap_or(time::Duration::ZERO);
        let before = crate::ids::timestamp(cutoff);
        loop {
            let due = store.due_for_retention(rule.class, &before, 500).await?;
            if due.is_empty() {
                break;
            }
            for order_id in &due {
                let reason = format!("retention:{}", rule.class.as_str());
                purged += purge_order(
                    store,
                    keyring,
                    order_id,
                    &[rule.class],
                    &reason,
                    ("system", "retention"),
                )
                .await?
                .len() as u64;
            }
        }
    }
    Ok(purged)
}

/// Runs the schedule every `every` until the process ends.
pub fn spawn(
    store: Arc<dyn Store>,
    keyring: Arc<crate::crypto::keyring::KeyringHandle>,
    rules: Vec<Rule>,
    every: Duration,
) {
    if rules.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match run_once(store.as_ref(), &keyring.current(), &rules).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "retention purged expired records"),
                Err(error) => tracing::error!(error = %error, "the retention pass failed"),
            }
        }
    });
}
