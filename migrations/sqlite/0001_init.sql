-- checkoutd initial schema (SQLite). See DESIGN.md "Data at rest".
CREATE TABLE schema_notes (
    id   INTEGER PRIMARY KEY,
    note TEXT NOT NULL
) STRICT;
