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
}

/// One page of an audience.
#[derive(Debug)]
pub struct AudiencePage {
    pub emails: Vec<String>,
    /// The orders whose contact records were opened (for the access log).
    pub order_ids: Vec<String>,
    /// The cursor for the next page, if any.
    pub next: Option<i64>,
}

impl Marketing {
    pub fn new(keyring: &Keyring) -> Self {
        Marketing {
            keys: std::sync::RwLock::new(std::sync::Arc::new(
                keyring.class_keys(&[DataClass::Contact]),
            )),
            consent_key: keyring.consent_tag_key().duplicate(),
            blind_index_key: keyring.blind_index_key().duplicate(),
            ledger: std::sync::Mutex::new(super::LedgerPosition::start()),
        }
    }

    /// Takes the contact KEKs of a new keyring (nothing else).
    pub fn refresh(&self, keyring: &Keyring) {
        if let Ok(mut keys) = self.keys.write() {
            *keys = std::sync::Arc::new(keyring.class_keys(&[DataClass::Contact]));
        }
    }

    /// Emails whose effective consent for `purpose` is true, after `after`.
    pub async fn audience(
        &self,
        store: &dyn Store,
        purpose: &'static str,
        after: i64,
        limit: u32,
    ) -> Result<AudiencePage, StoreError> {
        // The withdrawal ledger first, whole (fail closed): each subject's
        // withdrawals are MAC-checked below, but one deleted, or moved to
        // another subject, would simply be absent — and its subject
        // exported again. An export's first page walks the whole ledger;
        // its next pages, only what was appended since (and a count).
        let known = match self.ledger.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let from = if after == 0 {
            super::LedgerPosition::start()
        } else {
            known.clone()
        };
        match super::verify_ledger_from(store, &self.consent_key, &from, &known).await {
            Ok(verified) => {
                if let Ok(mut p) = self.ledger.lock()
                    && verified.seq > p.seq
                {
                    *p = verified;
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
        let mut rows = store.audience(purpose, after, limit + 1).await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = if more {
            rows.last().map(|r| r.seq)
        } else {
            None
        };
        let mut emails = Vec::with_capacity(rows.len());
        let mut order_ids = Vec::with_capacity(rows.len());
        for row in rows {
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
                continue;
            }
            let (Ok(order_id), Ok(record_id)) = (
                uuid::Uuid::parse_str(&row.order_id),
                uuid::Uuid::parse_str(&row.contact_id),
            ) else {
                continue;
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
                continue;
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
                    emails.push(email);
                    order_ids.push(row.order_id);
                }
                _ => {
                    tracing::error!(order_id = %row.order_id, "a contact record does not match its subject")
                }
            }
        }
        Ok(AudiencePage {
            emails,
            order_ids,
            next,
        })
    }
}
