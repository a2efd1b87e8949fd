-- Feature flags (issue 6): one row per flag (its FlagDefinition as CBOR), the fleet's flag-state
-- version (one row, id 1), and the audit trail of every change (the FlagChange record as CBOR:
-- who, when, old -> new). A change writes all three, and its `flag-*` event, in one transaction.
-- The per-device evaluated flags are not stored: they follow from these rows and the devices.
CREATE TABLE flags (
    name       TEXT PRIMARY KEY NOT NULL,
    definition BLOB NOT NULL,   -- FlagDefinition (CBOR)
    version    BIGINT NOT NULL, -- the fleet version of its last change
    updated_at BIGINT NOT NULL
);

CREATE TABLE flag_state (
    id      BIGINT PRIMARY KEY NOT NULL, -- always 1
    version BIGINT NOT NULL              -- the fleet flag-state version (unix ms floor)
);

CREATE TABLE flag_changes (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    flag    TEXT NOT NULL,
    version BIGINT NOT NULL,
    at      BIGINT NOT NULL,  -- unix ms
    actor   TEXT NOT NULL,
    kind    TEXT NOT NULL,    -- created | updated | killed | revived | deleted
    record  BLOB NOT NULL     -- FlagChange (CBOR)
);
CREATE INDEX flag_changes_flag ON flag_changes (flag, id);
