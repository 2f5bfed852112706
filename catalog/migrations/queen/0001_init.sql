-- Hives the queen knows, with what they reported about themselves.
-- Times are unix milliseconds; NULL means never.
CREATE TABLE hives (
    name          TEXT PRIMARY KEY,
    kind          TEXT NOT NULL DEFAULT 'ssh',
    host          TEXT NOT NULL DEFAULT '',
    port          INTEGER NOT NULL DEFAULT 0,
    ssh_user      TEXT NOT NULL DEFAULT '',
    status        TEXT NOT NULL DEFAULT 'unknown',
    status_reason TEXT NOT NULL DEFAULT '',
    agent_version TEXT NOT NULL DEFAULT '',
    added_at      INTEGER,
    last_seen_at  INTEGER,
    devices_at    INTEGER
);

CREATE TABLE hive_devices (
    hive_name   TEXT NOT NULL REFERENCES hives(name) ON DELETE CASCADE ON UPDATE CASCADE,
    id          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    idx         INTEGER NOT NULL DEFAULT 0,
    name        TEXT NOT NULL DEFAULT '',
    total_bytes INTEGER NOT NULL DEFAULT 0,
    free_bytes  INTEGER NOT NULL DEFAULT 0,
    compute_cap TEXT NOT NULL DEFAULT '',
    cores       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hive_name, id)
) WITHOUT ROWID;

CREATE TABLE hive_capabilities (
    hive_name TEXT NOT NULL REFERENCES hives(name) ON DELETE CASCADE ON UPDATE CASCADE,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (hive_name, key)
) WITHOUT ROWID;
