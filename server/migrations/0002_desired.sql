-- MQTT coordination: the desired state last published to each device (republished, retained,
-- at every (re)connect to the broker: the embedded broker keeps retained messages in memory only)
-- and the last desired-state generation each device reported acting on. Generations are
-- monotonic per device: a new desired state gets max(desired.generation,
-- devices.reported_generation) + 1.
ALTER TABLE devices ADD COLUMN reported_generation BIGINT NOT NULL DEFAULT 0;

CREATE TABLE desired (
    device_id  TEXT PRIMARY KEY NOT NULL,
    generation BIGINT NOT NULL,
    rollout_id BIGINT,           -- the rollout that published it (also for rollbacks)
    digest     TEXT NOT NULL,    -- the release's artifact digest
    kind       TEXT NOT NULL,    -- notify | rollback | cancel
    payload    BLOB NOT NULL,   -- the DesiredState CBOR exactly as published
    updated_at BIGINT NOT NULL
);
