-- Key rotation (issue 7): every accepted signed trust-set update, by sequence. The newest row is
-- the fleet's trust set in force (it overrides the configured [trust] keys) and is republished
-- retained on ota/v1/trust. The server verifies each update against the previous one before
-- inserting it; it never holds a signing key.
CREATE TABLE trust_updates (
    sequence    BIGINT PRIMARY KEY NOT NULL,
    payload     BYTEA NOT NULL,   -- the signed envelope, as posted
    accepted_at BIGINT NOT NULL,  -- unix seconds
    actor       TEXT NOT NULL     -- the operator who posted it
);
