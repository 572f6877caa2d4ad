-- Two indexes no query uses, each keyed by a random-looking value (an HMAC),
-- so every order dirtied a random page of each at commit: the card
-- fingerprint (kept as a column for the audit; a card-reuse lookup would
-- bring its index back) and the billing record's email blind index
-- (subject lookups use contact_emails_subject). docs/performance.md.
DROP INDEX payment_cards_fingerprint;
DROP INDEX billing_details_email;
