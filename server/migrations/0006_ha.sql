-- High availability (issue 15): the coordinator lease and the replicas that share the database.
-- `coordinator_lease` has one row (id 1). `epoch` grows by one at every takeover; every batch the
-- coordinator writes first checks, in its own transaction, that the row still names its replica
-- and epoch (fencing). `expires_at` is the DATABASE's clock in unix milliseconds.
CREATE TABLE coordinator_lease (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    holder        TEXT,                 -- the replica id holding (or last holding) the lease
    epoch         BIGINT NOT NULL,      -- the fencing epoch, +1 at every takeover
    advertise_url TEXT,                 -- where the holder's REST API answers
    expires_at    BIGINT NOT NULL       -- unix milliseconds, database clock
);
INSERT INTO coordinator_lease (id, holder, epoch, advertise_url, expires_at) VALUES (1, NULL, 0, NULL, 0);
-- Every replica's last heartbeat (written at each lease attempt or renewal), for status.
CREATE TABLE replicas (
    replica_id    TEXT PRIMARY KEY,
    role          TEXT NOT NULL,        -- leader | standby | stopped
    epoch         BIGINT NOT NULL,      -- the epoch it leads with (leader) or last saw
    advertise_url TEXT,
    heartbeat_at  BIGINT NOT NULL       -- unix milliseconds, database clock
);
