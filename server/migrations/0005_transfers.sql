-- Delta updates (issue 18): what each device's download cost, one row per device and desired
-- state (generation), as the device first reported it (`Transfer` in its outcomes and events:
-- network body bytes fetched, chunk index included, against the artifact's full size). The
-- key makes a repeated report count once: rollout totals, the device view's `last_transfer` and
-- the `ota_download_*` metrics are sums over these rows. Rows are never updated or deleted.
CREATE TABLE transfers (
    device_id  TEXT NOT NULL,
    generation BIGINT NOT NULL,
    rollout_id BIGINT,          -- the desired state's rollout (also for rollbacks)
    digest     TEXT,            -- the release's artifact digest, when the device named it
    fetched    BIGINT NOT NULL, -- body bytes received over the network
    size       BIGINT NOT NULL, -- the artifact's full size
    at         BIGINT NOT NULL, -- when the server first recorded it, unix seconds
    PRIMARY KEY (device_id, generation)
);
CREATE INDEX transfers_rollout ON transfers (rollout_id, digest);
