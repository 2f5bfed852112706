-- Deployments: models the queen keeps loaded with N replicas, optionally
-- pinned to some hives and a device. name is what clients ask for.
CREATE TABLE deployments (
    name       TEXT PRIMARY KEY,
    model      TEXT NOT NULL,
    replicas   INTEGER NOT NULL CHECK (replicas >= 1),
    hives      TEXT NOT NULL DEFAULT '', -- comma-separated; '' = any hive
    device     TEXT NOT NULL DEFAULT '', -- '' = the scheduler picks
    embeddings INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
