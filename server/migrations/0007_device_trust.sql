-- Which trust set each device uses (issue 16, the console's trust page and GET /api/v1/trust):
-- the sequence a device reported in its last trust report (`ota/v1/devices/{id}/trust`): the
-- set in force on it after it handled an update, taken or refused. A device without a row
-- never reported one: it uses the set it was provisioned with (counted as sequence 0).
CREATE TABLE device_trust (
    device_id TEXT PRIMARY KEY,
    sequence  BIGINT NOT NULL,
    at        BIGINT NOT NULL   -- when the server recorded the report, unix seconds
);
