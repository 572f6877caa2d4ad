-- A purge of an order's contact data keeps who it was about: the email's
-- blind index (a keyed HMAC, never the address), in the purge's own row and
-- under its MAC. The consent history of a subject reaches their orders
-- through contact_emails; without this, purging the contact data of the
-- order holding a customer's latest choice ("no more offers") made an
-- older order's "yes" the latest again, and marketing exported them.
-- With it, the purged order's tag still counts in the history (and, its
-- address gone, exports nothing).
--
-- `mac` of a contact purge made from now on covers it too: the 0004 bytes
-- ‖ len32(email_blind_index). Purges without one (other classes, and
-- contact purges made before) are MACed as before. Mirrored in
-- migrations/postgres/.
ALTER TABLE purges ADD COLUMN email_blind_index BLOB;
CREATE INDEX purges_contact_subject ON purges (email_blind_index)
    WHERE email_blind_index IS NOT NULL;
