//! Marketing audiences: the emails that consent to one purpose right now.
//!
//! Invariant: this service holds the `contact` KEK (a record holding only
//! the email) and the consent-tag MAC key — nothing else. It decrypts only
//! what it returns. Gift recipients have no contact record, so they can
//! never be in an audience. `third_party_sharing` is the partner-export list.

use crate::crypto::DataClass;
use crate::crypto::envelope::{self, Binding};
use crate::crypto::keyring::{ClassKeys, Keyring};
use crate::crypto::mac::MacKey;
use crate::store::{Store, StoreError};

pub struct Marketing {
    /// The contact KEKs (all versions); replaced by [`Marketing::refresh`].
    keys: std::sync::RwLock<std::sync::Arc<ClassKeys>>,
    consent_key: MacKey,
    /// To check that a decrypted email really is the subject it was filed
    /// under (a relabelled blind index would dodge that subject's opt-outs).
    blind_index_key: MacKey,
    /// How far the withdrawal ledger was verified (see [`Marketing::audience`]).
    ledger: std::sync::Mutex<super::LedgerPosition>,
    /// When this process last walked the whole ledger; `None`: never.
    whole_walk: std::sync::Mutex<Option<std::time::Instant>>,
}

/// The longest an export goes without a walk of the whole ledger, whatever
/// its cursors: a page with a cursor checks only what was appended since,
/// and a client that never asks for a first page (one resuming a stored
/// cursor after a restart, say) would otherwise never see an entry edited
/// before that.
const WHOLE_WALK_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// One page of an audience. Its `Debug` counts the emails, never shows them.
pub struct AudiencePage {
    pub emails: Vec<String>,
    /// The orders whose contact records were opened (for the access log).
    pub order_ids: Vec<String>,
    /// Where the next page starts (the last subject scanned), if any.
    pub next: Option<[u8; 32]>,
}

impl std::fmt::Debug for AudiencePage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudiencePage")
            .field("emails", &format_args!("<{} redacted>", self.emails.len()))
            .field("order_ids", &self.order_ids)
            .field("next", &self.next.is_some())
            .finish()
    }
}

/// The most chunks of subjects one page scans to fill itself: a page costs
/// at most this many times `limit` subjects, and may come back short (with
/// a cursor) where few of them consent.
const MAX_CHUNKS: usize = 8;

impl Marketing {
    /// `ledger_verified`: the withdrawal ledger's head the last intact
    /// report saw (`audit::anchors`), which every export's check of the
    /// ledger must still pass through; `None` before the first.
    pub fn new(keyring: &Keyring, ledger_verified: Option<super::LedgerPosition>) -> Self {
        Marketing {
            keys: std::sync::RwLock::new(std::sync::Arc::new(
                keyring.class_keys(&[DataClass::Contact]),
            )),
            consent_key: keyring.consent_tag_key().duplicate(),
            blind_index_key: keyring.blind_index_key().duplicate(),
            ledger: std::sync::Mutex::new(
                ledger_verified.unwrap_or_else(super::LedgerPosition::start),
            ),
            whole_walk: std::sync::Mutex::new(None),
        }
    }

    /// Takes the contact KEKs of a new keyring (nothing else).
    pub fn refresh(&self, keyring: &Keyring) {
        if let Ok(mut keys) = self.keys.write() {
            *keys = std::sync::Arc::new(keyring.class_keys(&[DataClass::Contact]));
        }
    }

    /// Up to `limit` emails whose effective consent for `purpose` is true,
    /// of the customers after `after` (`None`: from the first) in
    /// blind-index order: each customer is on one page only, however often
    /// they order during an export.
    pub async fn audience(
        &self,
        store: &dyn Store,
        purpose: &'static str,
        after: Option<[u8; 32]>,
        limit: u32,
    ) -> Result<AudiencePage, StoreError> {
        // The withdrawal ledger first, whole (fail closed): each subject's
        // withdrawals are MAC-checked below, but one deleted, or moved to
        // another subject, would simply be absent — and its subject
        // exported again. An export's first page walks the whole ledger;
        // its next pages, only what was appended since (and a count) —
        // unless this process has not walked it whole lately.
        let known = match self.ledger.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let whole_walk_due = match self.whole_walk.lock() {
            Ok(at) => at.is_none_or(|at| at.elapsed() >= WHOLE_WALK_EVERY),
            Err(_) => true,
        };
        let whole = after.is_none() || whole_walk_due;
        let from = if whole {
            super::LedgerPosition::start()
        } else {
            known.clone()
        };
        let started = std::time::Instant::now();
        match super::verify_ledger_from(store, &self.consent_key, &from, &known).await {
            Ok(verified) => {
                if let Ok(mut p) = self.ledger.lock()
                    && verified.seq > p.seq
                {
                    *p = verified;
                }
                if whole && let Ok(mut at) = self.whole_walk.lock() {
                    *at = Some(started);
                }
            }
            Err(super::LedgerFault::Unreadable(error)) => return Err(error),
            Err(super::LedgerFault::Broken { what, .. }) => {
                tracing::error!(
                    what,
                    "the withdrawal ledger failed its check; no audience is exported until an auditor has looked"
                );
                return Err(StoreError::Corrupt(
                    "the withdrawal ledger failed its integrity check",
                ));
            }
        }
        let mut emails = Vec::new();
        let mut order_ids = Vec::new();
        let mut cursor: Vec<u8> = after.map(|a| a.to_vec()).unwrap_or_default();
        let mut next = None;
        for _ in 0..MAX_CHUNKS {
            let want = limit.saturating_sub(u32::try_from(emails.len()).unwrap_or(u32::MAX));
            if want == 0 {
                break;
            }
            let chunk = store.audience(purpose, &cursor, want).await?;
            for row in chunk.rows {
                if let Some((email, order_id)) = self.exported(store, purpose, row).await? {
                    emails.push(email);
                    order_ids.push(order_id);
                }
            }
            // Fewer subjects than asked: the last chunk.
            next = match chunk.last {
                Some(last) if chunk.scanned == want => Some(
                    <[u8; 32]>::try_from(last.as_slice())
                        .map_err(|_| StoreError::Corrupt("an email blind index is not 32 bytes"))?,
                ),
                _ => None,
            };
            match next {
                Some(last) => cursor = last.to_vec(),
                None => break,
            }
        }
        Ok(AudiencePage {
            emails,
            order_ids,
            next,
        })
    }

    /// The email of an audience row, with its order id, once its whole
    /// consent history verifies and its contact record opens under its
    /// subject; `None` (logged) otherwise.
    async fn exported(
        &self,
        store: &dyn Store,
        purpose: &'static str,
        row: crate::store::rows::AudienceRow,
    ) -> Result<Option<(String, String)>, StoreError> {
        // The store applied tags and withdrawals in SQL; before trusting
        // that, re-derive it from the authenticated history (every tag
        // and withdrawal MAC-checked; fail closed).
        let history = store.consent_history(&row.email_blind_index).await?;
        let (purposes, verified) = super::effective(&self.consent_key, &history);
        let index = crate::domain::consent::Purposes::NAMES
            .iter()
            .position(|n| *n == purpose)
            .unwrap_or(0);
        if !verified || !purposes.as_array()[index] || row.tag.order_id != row.order_id {
            tracing::error!(order_id = %row.order_id, "an audience row's consent tag failed its MAC check");
            return Ok(None);
        }
        let (Ok(order_id), Ok(record_id)) = (
            uuid::Uuid::parse_str(&row.order_id),
            uuid::Uuid::parse_str(&row.contact_id),
        ) else {
            return Ok(None);
        };
        let binding = Binding {
            class: DataClass::Contact,
            order_id,
            record_id,
        };
        let keys = match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let Ok(plain) = envelope::open(keys.as_ref(), &binding, &row.envelope) else {
            tracing::error!(order_id = %row.order_id, "a contact record failed to open");
            return Ok(None);
        };
        let email = serde_json::from_slice::<serde_json::Value>(&plain)
            .ok()
            .and_then(|v| v.get("email").and_then(|e| e.as_str()).map(str::to_owned));
        match email {
            Some(email)
                if self
                    .blind_index_key
                    .verify(&[email.as_bytes()], &row.email_blind_index) =>
            {
                Ok(Some((email, row.order_id)))
            }
            _ => {
                tracing::error!(order_id = %row.order_id, "a contact record does not match its subject");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Invariant 5: marketing's reader holds the contact KEKs and no other
    /// class's, as built and after a keyring reload.
    #[test]
    fn marketing_holds_the_contact_keys_only() {
        let rng = ring::rand::SystemRandom::new();
        let keyring = crate::crypto::keyring::Keyring::generate(&rng, "t").unwrap();
        let reader = super::Marketing::new(&keyring, None);
        let held = |reader: &super::Marketing| format!("{:?}", **reader.keys.read().unwrap());
        assert_eq!(held(&reader), "ClassKeys([Contact], <redacted>)");
        reader.refresh(&keyring);
        assert_eq!(held(&reader), "ClassKeys([Contact], <redacted>)");
    }

    /// A page in a log line counts its emails, never shows them.
    #[test]
    fn an_audience_page_s_debug_shows_no_email() {
        let page = super::AudiencePage {
            emails: vec!["ada@example.com".into(), "grace@example.org".into()],
            order_ids: vec!["o-1".into()],
            next: Some([7; 32]),
        };
        let shown = format!("{page:?}");
        assert!(shown.contains("<2 redacted>"), "{shown}");
        assert!(!shown.contains('@'), "{shown}");
    }
}
