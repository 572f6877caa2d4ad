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
//!   were collected only to deliver the parcel);
//! - of an order never dispatched, its card data and its ship-to (the
//!   shipping record, and a gift's recipient record):
//!   `--retain-undispatched-days` after it was taken (default 180). An
//!   order the warehouse never ships (cancelled, refused as fraud, out of
//!   stock) would otherwise keep them for good: no dispatch ever starts the
//!   clocks above. 180 days cover the chargeback window of a charge made at
//!   checkout, and a shipment delayed for months. The three go in one
//!   transaction per order, which goes ahead only if the order, locked, is
//!   still undispatched then ([`PurgeIf::Undispatched`]); a dispatch locks
//!   the order first too, so of the two racing, either the dispatch wins
//!   (nothing is purged) or it finds the ship-to gone (`409
//!   ship-to-purged`).
//!
//! Billing, shipping and contact data follow the customer relationship and
//! are purged on request (`checkoutd orders purge`).
//!
//! The replay window (`--replay-window-hours`, default 168, at least 25):
//! an idempotency row's request hash — HMAC(request key, the request
//! without its CVC), what tells a retry from another body — is emptied once
//! the window has passed, and at once when its order is purged
//! ([`retire_request_hashes`]). Kept, it would let whoever holds the
//! database and the full keyring test guesses of a purged card number and
//! expiry against it (given every other field of the request). The key
//! itself stays single-use: a retry of it gets `idempotency-window-passed`
//! naming its order, never a second order.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::access_log::{Chainer, Entry, Outcome};
use crate::crypto::DataClass;
use crate::crypto::keyring::Keyring;
use crate::store::rows::{
    AuditKeyRow, HoldPlaced, HoldRow, KeysDue, PurgeIf, PurgeRow, RetiredRequestHash,
};
use crate::store::{Store, StoreError};

/// The bytes a purge's MAC covers (all of `p` but the MAC): `"checkoutd/purge"
/// ‖ len32(order_id) ‖ len32(class) ‖ len32(purged_at) ‖ len32(reason)`, then
/// `‖ len32(email_blind_index)` when the purge keeps one.
pub fn purge_canonical_bytes(p: &PurgeRow) -> Vec<u8> {
    let mut out = b"checkoutd/purge".to_vec();
    let mut field = |bytes: &[u8]| {
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    for text in [&p.order_id, &p.class, &p.purged_at, &p.reason] {
        field(text.as_bytes());
    }
    if let Some(subject) = &p.email_blind_index {
        field(subject);
    }
    out
}

/// Purges `classes` of one order, logged, then empties what the deletion
/// leaves behind ([`Store::after_purge`]). Returns the classes purged.
pub async fn purge_order(
    store: &dyn Store,
    keyring: &Keyring,
    order_id: &str,
    classes: &[DataClass],
    reason: &str,
    who: (&str, &str),
) -> Result<Vec<String>, StoreError> {
    let done = purge_records(
        store,
        keyring,
        order_id,
        (classes, &PurgeIf::Always),
        reason,
        who,
    )
    .await;
    // Even when nothing was left to delete (a purge run again after an
    // `Incomplete` one is how its WAL gets emptied), and when the purge
    // failed after a step that changed rows (the request hash, emptied
    // first).
    let emptied = store.after_purge().await;
    let done = done?;
    emptied?;
    Ok(done)
}

/// Purges `classes` of one order and logs it, without
/// [`Store::after_purge`] (for a series of purges, which runs it once at
/// the end). Returns the classes purged.
///
/// The access log entry is written first: a purge the log cannot record
/// does not happen, and a crash between the two leaves a logged request
/// whose outcome the `purges` table (MACed) tells — never an unlogged
/// deletion.
pub async fn purge_records(
    store: &dyn Store,
    keyring: &Keyring,
    order_id: &str,
    (classes, condition): (&[DataClass], &PurgeIf),
    reason: &str,
    who: (&str, &str),
) -> Result<Vec<String>, StoreError> {
    let now = crate::ids::now();
    let key = keyring.consent_tag_key();
    // A contact purge keeps whom the order's consent was about (see
    // `PurgeRow::email_blind_index`): else an older order's choice would
    // become the subject's latest again.
    let subject = if classes.contains(&DataClass::Contact) {
        store.contact_subject(order_id).await?
    } else {
        None
    };
    let rows: Vec<PurgeRow> = classes
        .iter()
        .map(|c| {
            let mut row = PurgeRow {
                order_id: order_id.to_owned(),
                class: c.as_str().to_owned(),
                purged_at: now.clone(),
                reason: reason.to_owned(),
                email_blind_index: (*c == DataClass::Contact)
                    .then(|| subject.clone())
                    .flatten(),
                mac: Vec::new(),
            };
            row.mac = key.sign(&[&purge_canonical_bytes(&row)]).to_vec();
            row
        })
        .collect();
    // A held order keeps everything, its replay window included: its hold
    // is checked before anything is logged or the request hash goes, as
    // the command line checks it (a refused purge is not logged as one).
    // The purge's own check, in its transaction, is the one that keeps the
    // records; a hold placed between the two costs the order only the
    // replay of its answer.
    if store.holds().await?.iter().any(|h| h.order_id == order_id) {
        return Err(StoreError::UnderLegalHold);
    }
    log_operator(
        store,
        keyring,
        &format!("purge ({reason})"),
        std::iter::once(order_id.to_owned())
            .chain(classes.iter().map(|c| format!("class:{}", c.as_str())))
            .collect(),
        &now,
        who,
    )
    .await?;
    // The request hash first: once the records are gone nothing finds the
    // order again for it (retention looks for orders that still hold
    // records). Ending the replay window of an order whose purge then
    // fails costs nothing.
    retire_request_hashes(store, keyring, KeysDue::OfOrder(order_id)).await?;
    let done = store.purge(order_id, &rows, condition).await?;
    log_outcome(store, keyring, (order_id, &now), &done, who).await;
    Ok(done)
}

/// The access-log action of a purge's outcome: one entry per class whose
/// records a purge deleted, objects `["<order id>", "class:<class>"]`.
pub const PURGED_ACTION: &str = "purged";

/// Records in the access log what a purge deleted, once it committed. The
/// entry before the purge says what was asked, not what was done (a class
/// already gone, an order dispatched meanwhile); this one is what the
/// audit holds the `purges` table to: a purge row deleted from the
/// database — with the records put back from a backup, the shredding
/// undone unseen — is found through it (`Store::purges_unrecorded`).
///
/// A failure here is logged, not returned: the purge is done and was
/// logged before it began; only this evidence of its outcome is missing
/// (as after a crash between the two).
async fn log_outcome(
    store: &dyn Store,
    keyring: &Keyring,
    (order_id, purged_at): (&str, &str),
    done: &[String],
    who: (&str, &str),
) {
    if done.is_empty() {
        return;
    }
    // Never before the purge rows' `purged_at` (the audit matches a row
    // to an entry no older than it), even if the clock stepped back
    // meanwhile: the two are texts of one fixed layout, in time order.
    let at = std::cmp::max(crate::ids::now(), purged_at.to_owned());
    let entries: Vec<Entry> = done
        .iter()
        .map(|class| {
            local_entry(
                PURGED_ACTION,
                vec![order_id.to_owned(), format!("class:{class}")],
                &at,
                who,
            )
        })
        .collect();
    if let Err(error) = store
        .append_access_log(&entries, &Chainer::new(keyring.access_log_key()))
        .await
    {
        tracing::error!(
            order_id,
            classes = ?done,
            error = %error,
            "the purge is done, but its outcome could not be written to the access log: \
             the audit cannot tell if its purge record is later deleted"
        );
    }
}

/// The replay window's default: a week. Storefronts retry within minutes;
/// an order retried later than this gets `idempotency-window-passed`.
pub const DEFAULT_REPLAY_WINDOW_HOURS: u32 = 168;
/// The shortest replay window: DESIGN keeps keys at least 24 hours; the
/// hour more is a margin for the clocks of the processes involved (a row's
/// age is its writer's clock against the retention pass's).
pub const MIN_REPLAY_WINDOW_HOURS: u32 = 25;

/// Empties the request hash of every idempotency row `due`, re-making its
/// `response_mac` over the empty hash, so the row still proves its stored
/// answer and order (a retry is told which order its key made). A row
/// whose MAC does not verify loses its hash and its MAC (the old MAC covers
/// the old hash, so it could be searched just the same): it stays a
/// finding for the audit and unverifiable for a retry, and is never given a
/// MAC that verifies. Returns how many rows changed.
pub async fn retire_request_hashes(
    store: &dyn Store,
    keyring: &Keyring,
    due: KeysDue<'_>,
) -> Result<u64, StoreError> {
    const PAGE: u32 = 500;
    let mut retired = 0;
    loop {
        let rows = store.replayable_keys(due, PAGE).await?;
        let retiring: Vec<RetiredRequestHash> = rows
            .iter()
            .filter_map(|row| retirement(keyring, row))
            .collect();
        let changed = store.retire_request_hashes(&retiring).await?;
        retired += changed;
        // A short page was the last; a page of which nothing changed (each
        // row changed meanwhile by another process, which retires it
        // itself) would come back the same.
        if rows.len() < PAGE as usize || changed == 0 {
            return Ok(retired);
        }
    }
}

/// How one row is retired, if its hash is there to empty.
fn retirement(keyring: &Keyring, row: &AuditKeyRow) -> Option<RetiredRequestHash> {
    let (request_hash, mac) = match &row.found {
        Ok(found) if found.request_hash.is_empty() => return None,
        Ok(found) => {
            let mac = crate::intake::seal::stored_response_verifies(
                keyring,
                &row.client,
                &row.key_hash,
                found,
            )
            .then(|| {
                crate::intake::seal::response_mac(
                    keyring,
                    &row.client,
                    &row.key_hash,
                    &[],
                    &found.response,
                    &found.created_at,
                )
                .to_vec()
            });
            (found.request_hash.clone(), mac)
        }
        // Unreadable (a column holds what the service never writes): no
        // MAC can be made, but the hash can still go.
        Err(_) if row.request_hash.is_empty() => return None,
        Err(_) => (row.request_hash.clone(), None),
    };
    Some(RetiredRequestHash {
        client: row.client.clone(),
        key_hash: row.key_hash.clone(),
        request_hash,
        mac,
    })
}

/// A retention rule: purge `class` this long after dispatch.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Purged together, in one transaction per order (the ship-to's
    /// classes: shipping before recipient, as every purge takes them).
    pub classes: &'static [DataClass],
    /// How long after [`Rule::from`].
    pub after: Duration,
    pub from: Clock,
}

/// What a retention period counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The order's dispatch (dispatched orders only).
    Dispatch,
    /// The order's creation, for orders never dispatched.
    CreationUndispatched,
}

impl Rule {
    /// The purge reason: `retention:card`, `retention:recipient`,
    /// `retention:undispatched`.
    fn reason(&self) -> String {
        match self.from {
            Clock::Dispatch => {
                let names: Vec<&str> = self.classes.iter().map(|c| c.as_str()).collect();
                format!("retention:{}", names.join("+"))
            }
            Clock::CreationUndispatched => "retention:undispatched".to_owned(),
        }
    }
}

/// One pass of the retention schedule: every due purge, then one
/// [`Store::after_purge`] for them all (not one per order: on SQLite each is
/// a checkpoint of the whole WAL, taken between two commits). Returns how
/// many purges it made; an error comes only after the purges made before
/// it were followed by `after_purge` too.
pub async fn run_once(
    store: &dyn Store,
    keyring: &Keyring,
    rules: &[Rule],
) -> Result<u64, StoreError> {
    let mut purged = 0;
    let mut outcome = Ok(());
    // One rule's failure does not hold back the others (each is its own
    // class's promise); the first failure is what the pass returns.
    for rule in rules {
        let cutoff = time::OffsetDateTime::now_utc()
            - time::Duration::try_from(rule.after).unwrap_or(time::Duration::ZERO);
        let ran = purge_before(
            store,
            keyring,
            rule.classes,
            (rule.from, &crate::ids::timestamp(cutoff)),
            &rule.reason(),
            ("system", "retention"),
            &mut purged,
        )
        .await;
        if let Err(error) = ran {
            tracing::error!(rule = %rule.reason(), error = %error, "a retention rule failed this pass; the other rules still ran");
            if outcome.is_ok() {
                outcome = Err(error);
            }
        }
    }
    finish_purges(store, purged, outcome, false).await
}

/// Purges `class` of every order whose `clock` reads before `before` (a
/// timestamp): dispatched before it, or taken before it and never
/// dispatched. Each is logged with `reason` and `who`, counting into
/// `purged` as it goes — so a caller meeting an error part way still knows
/// that records were deleted. Without [`Store::after_purge`]: see
/// [`finish_purges`].
pub async fn purge_before(
    store: &dyn Store,
    keyring: &Keyring,
    classes: &[DataClass],
    (clock, before): (Clock, &str),
    reason: &str,
    who: (&str, &str),
    purged: &mut u64,
) -> Result<(), StoreError> {
    let condition = match clock {
        Clock::Dispatch => PurgeIf::Always,
        Clock::CreationUndispatched => PurgeIf::Undispatched {
            taken_before: before.to_owned(),
        },
    };
    // An order found due whose purge then does not go ahead (dispatched
    // meanwhile) is not asked about again in this pass.
    let mut passed_over = std::collections::HashSet::new();
    loop {
        let due = store.due_for_retention(classes, clock, before, 500).await?;
        let fresh: Vec<&String> = due.iter().filter(|id| !passed_over.contains(*id)).collect();
        if fresh.is_empty() {
            return Ok(());
        }
        for order_id in fresh {
            let done =
                match purge_records(store, keyring, order_id, (classes, &condition), reason, who)
                    .await
                {
                    // Held since it was found due: its data stays.
                    Err(StoreError::UnderLegalHold) => Vec::new(),
                    done => done?,
                };
            if done.is_empty() {
                passed_over.insert(order_id.clone());
            }
            *purged += done.len() as u64;
        }
    }
}

/// Ends a series of purges: if any record was deleted — also when
/// `outcome` says the series failed part way — or `always` (an operator's
/// purge run again to finish an `Incomplete` one), empties what the
/// deletions left behind ([`Store::after_purge`]). Returns the purges made,
/// or the series' error (else `after_purge`'s, which is logged when the
/// series' error is the one returned).
pub async fn finish_purges(
    store: &dyn Store,
    purged: u64,
    outcome: Result<(), StoreError>,
    always: bool,
) -> Result<u64, StoreError> {
    let emptied = if purged > 0 || always {
        store.after_purge().await
    } else {
        Ok(())
    };
    if let (Err(_), Err(error)) = (&outcome, &emptied) {
        tracing::warn!(error = %error, "after a failed series of purges, emptying what they left failed too");
    }
    outcome?;
    emptied?;
    Ok(purged)
}

/// Runs the schedule every `every` until the process ends: the replay
/// window first, then the retention rules.
pub fn spawn(
    store: Arc<dyn Store>,
    keyring: Arc<crate::crypto::keyring::KeyringHandle>,
    rules: Vec<Rule>,
    replay_window: Duration,
    every: Duration,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether a pass may have left deleted records behind (it failed,
        // after deleting some, or a reader held the WAL): each following
        // pass empties first, until that succeeds. True at start: a
        // process that died between a purge's commit and its emptying
        // left the purged pages in SQLite's WAL, and nothing else would
        // empty them before the next purge.
        let mut leftovers = true;
        loop {
            tick.tick().await;
            if leftovers {
                match store.after_purge().await {
                    Ok(()) => leftovers = false,
                    Err(error) => {
                        tracing::warn!(error = %error, "retention: emptying what earlier purges left failed; trying again next pass")
                    }
                }
            }
            let keyring = keyring.current();
            let window_start = time::OffsetDateTime::now_utc()
                - time::Duration::try_from(replay_window).unwrap_or(time::Duration::ZERO);
            let retired = match retire_request_hashes(
                store.as_ref(),
                &keyring,
                KeysDue::CreatedBefore(&crate::ids::timestamp(window_start)),
            )
            .await
            {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(
                            keys = n,
                            "idempotency keys past the replay window: request hashes emptied"
                        );
                    }
                    n
                }
                Err(error) => {
                    tracing::error!(error = %error, "emptying the request hashes past the replay window failed; trying again next pass");
                    // Pages emptied before the failure are committed.
                    leftovers = true;
                    0
                }
            };
            let pass = match run_once(store.as_ref(), &keyring, &rules).await {
                // No purge emptied the WAL: on SQLite the old hashes' pages
                // leave the WAL and the database file only at a checkpoint.
                Ok(0) if retired > 0 => store.after_purge().await.map(|()| 0),
                pass => pass,
            };
            leftovers |= pass.is_err();
            match pass {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "retention purged expired records"),
                Err(StoreError::Incomplete(why)) => {
                    tracing::warn!(why, "retention: emptying the WAL is left to the next pass")
                }
                Err(error) => tracing::error!(error = %error, "the retention pass failed"),
            }
        }
    });
}

// ---- legal holds ----

/// The bytes a legal hold's MAC covers: `"checkoutd/legal-hold" ‖
/// len32(order_id) ‖ len32(placed_at) ‖ len32(reference)`.
pub fn hold_canonical_bytes(h: &HoldRow) -> Vec<u8> {
    let mut out = b"checkoutd/legal-hold".to_vec();
    for text in [&h.order_id, &h.placed_at, &h.reference] {
        out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out
}

/// The longest hold reference.
pub const MAX_HOLD_REFERENCE: usize = 64;

/// Why a hold reference is refused, if it is: it names a case (a dispute,
/// chargeback or ticket number), 1–64 characters of ASCII letters, digits
/// and `._:/#-`, stored in clear and written to the operator's terminal —
/// so never a card number however grouped (intake's rule for clear
/// fields) and, by its alphabet, never an email address or a name with
/// spaces.
pub fn hold_reference_problem(reference: &str) -> Option<&'static str> {
    if reference.is_empty() || reference.len() > MAX_HOLD_REFERENCE {
        return Some("--reference must be 1 to 64 characters");
    }
    if !reference
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:/#-".contains(&b))
    {
        return Some(
            "--reference may hold only ASCII letters, digits and . _ : / # - (a case number, never personal data)",
        );
    }
    // Intake's wide reading (`4111:1111:1111:1111`, `4111#1111#…`): the
    // audit scans the column with the narrow one, never stricter.
    if crate::domain::detect::contains_pan_clear(reference) {
        return Some("--reference looks like a card number; give the case number instead");
    }
    None
}

/// Places a legal hold on `order_id` for the case `reference` (checked by
/// the caller with [`hold_reference_problem`]) at `at` (now; a test gives
/// an earlier time), logged first as a purge is.
pub async fn place_hold(
    store: &dyn Store,
    keyring: &Keyring,
    (order_id, reference): (&str, &str),
    at: String,
    who: (&str, &str),
) -> Result<HoldPlaced, StoreError> {
    let mut hold = HoldRow {
        order_id: order_id.to_owned(),
        placed_at: at,
        reference: reference.to_owned(),
        mac: Vec::new(),
    };
    hold.mac = keyring
        .consent_tag_key()
        .sign(&[&hold_canonical_bytes(&hold)])
        .to_vec();
    // A hold refused because one is in force is not logged as placed (the
    // audit holds the table to the log's hold entries since each order's
    // last release).
    if let Some(held) = store
        .holds()
        .await?
        .into_iter()
        .find(|h| h.order_id == order_id)
    {
        return Ok(HoldPlaced::AlreadyHeld(held));
    }
    log_operator(
        store,
        keyring,
        HOLD_ACTION,
        vec![order_id.to_owned()],
        &hold.placed_at,
        who,
    )
    .await?;
    store.place_hold(&hold).await
}

/// The access-log action of a legal hold placed; objects `["<order id>"]`,
/// `at` the hold's `placed_at`.
pub const HOLD_ACTION: &str = "legal hold";
/// The access-log action of a legal hold released; objects `["<order id>"]`.
pub const RELEASE_ACTION: &str = "legal hold released";

/// Releases the legal hold on `order_id` at `at` (now; a test gives an
/// earlier time), logged first; the hold that was in force, if any.
pub async fn release_hold(
    store: &dyn Store,
    keyring: &Keyring,
    order_id: &str,
    at: &str,
    who: (&str, &str),
) -> Result<Option<HoldRow>, StoreError> {
    log_operator(
        store,
        keyring,
        RELEASE_ACTION,
        vec![order_id.to_owned()],
        at,
        who,
    )
    .await?;
    store.release_hold(order_id).await
}

/// Writes one entry of a command run on this host (an operator's, or
/// retention's) to the access log.
async fn log_operator(
    store: &dyn Store,
    keyring: &Keyring,
    action: &str,
    objects: Vec<String>,
    at: &str,
    who: (&str, &str),
) -> Result<(), StoreError> {
    store
        .append_access_log(
            &[local_entry(action, objects, at, who)],
            &Chainer::new(keyring.access_log_key()),
        )
        .await
        .map(|_| ())
}

/// An access-log entry of a command run on this host: `who` is its role
/// and the name in place of a certificate, its origin `local`.
fn local_entry(action: &str, objects: Vec<String>, at: &str, who: (&str, &str)) -> Entry {
    Entry {
        at: at.to_owned(),
        role: who.0.to_owned(),
        cert_fingerprint: who.1.to_owned(),
        origin_ip: "local".to_owned(),
        action: action.to_owned(),
        objects,
        outcome: Outcome::Allowed,
        status: 0,
    }
}
