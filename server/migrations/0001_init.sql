-- ota-server schema, SQLite dialect (server/migrations-postgres/ holds the same schema for
-- PostgreSQL). Portable conventions: times are BIGINT unix seconds, booleans are BIGINT 0/1,
-- JSON is TEXT, digests are lowercase hex TEXT, binary is BLOB (BYTEA on PostgreSQL).

-- Published releases, keyed by the artifact's SHA-256 (the name devices report and rollouts use).
CREATE TABLE releases (
    digest           TEXT PRIMARY KEY NOT NULL,
    product          TEXT NOT NULL,
    version          TEXT NOT NULL,
    security_version BIGINT NOT NULL,
    size             BIGINT NOT NULL,
    hardware         TEXT NOT NULL,   -- JSON array of hardware classes
    created          BIGINT NOT NULL, -- manifest `created`
    expires          BIGINT,          -- manifest `expires`
    installer        TEXT,            -- manifest installer hint
    signers          TEXT NOT NULL,   -- JSON array of key ids that verified at intake
    release_bytes    BLOB NOT NULL,   -- the signed release (COSE_Sign) exactly as uploaded
    created_at       BIGINT NOT NULL, -- when it was published to this server
    published_by     TEXT NOT NULL    -- operator name
);

-- Devices and their last reported state.
CREATE TABLE devices (
    id                    TEXT PRIMARY KEY NOT NULL,
    hardware_class        TEXT,
    labels                TEXT NOT NULL DEFAULT '{}', -- JSON object, reported by the device
    server_labels         TEXT NOT NULL DEFAULT '{}', -- JSON object, set by operators (wins)
    running_version       TEXT,
    running_digest        TEXT,
    known_good_digest     TEXT,
    last_committed_digest TEXT,
    last_result           TEXT,
    power                 TEXT,   -- JSON
    inventory             TEXT,   -- JSON
    reported              BLOB,   -- the last reported-state message as received
    first_seen            BIGINT NOT NULL,
    last_seen             BIGINT NOT NULL,
    online                BIGINT NOT NULL DEFAULT 0,
    drifted               BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX devices_hardware_class ON devices (hardware_class);

-- Rollouts: the release, the device filter, the spec and the planner's state blob.
CREATE TABLE rollouts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    release_digest TEXT NOT NULL REFERENCES releases (digest),
    device_filter  TEXT NOT NULL,
    spec           TEXT NOT NULL,  -- JSON
    planner_state  BLOB NOT NULL,  -- planner state (CBOR)
    status         TEXT NOT NULL,
    created_by     TEXT NOT NULL,
    approved_by    TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX rollouts_status ON rollouts (status);

-- The audit log: append-only.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    rollout_id BIGINT,
    device_id  TEXT,
    details    TEXT NOT NULL DEFAULT '{}' -- JSON object
);
CREATE INDEX events_rollout ON events (rollout_id, id);
CREATE INDEX events_device ON events (device_id, id);
