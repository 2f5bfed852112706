-- Models on this hive, addressed by content. Times are unix milliseconds;
-- NULL means never. alias is NULL when unset so that UNIQUE allows many.
CREATE TABLE models (
    id               TEXT PRIMARY KEY,
    sha256           TEXT NOT NULL UNIQUE,
    ref              TEXT NOT NULL DEFAULT '',
    alias            TEXT UNIQUE,
    path             TEXT NOT NULL,
    size             INTEGER NOT NULL DEFAULT 0,
    format           TEXT NOT NULL DEFAULT '',
    arch             TEXT NOT NULL DEFAULT '',
    quant            TEXT NOT NULL DEFAULT '',
    params           INTEGER NOT NULL DEFAULT 0,
    ctx_train        INTEGER NOT NULL DEFAULT 0,
    weights_bytes    INTEGER NOT NULL DEFAULT 0,
    kv_bytes_per_tok INTEGER NOT NULL DEFAULT 0,
    added_at         INTEGER,
    last_used_at     INTEGER
);
CREATE INDEX models_ref ON models(ref);
CREATE INDEX models_path ON models(path);

-- Worker binaries and engine bundles installed on this hive.
CREATE TABLE worker_binaries (
    id           TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    version      TEXT NOT NULL,
    path         TEXT NOT NULL,
    sha256       TEXT NOT NULL DEFAULT '',
    capabilities TEXT NOT NULL DEFAULT '[]',
    added_at     INTEGER,
    last_used_at INTEGER,
    UNIQUE (type, version)
);
CREATE INDEX worker_binaries_type_added ON worker_binaries(type, added_at);
