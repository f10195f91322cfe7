-- authgate schema 1 (SQLite). Times are UNIX seconds (REAL); tuples are JSON arrays.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    username      TEXT NOT NULL,
    username_key  TEXT NOT NULL,
    email         TEXT,
    display_name  TEXT,
    groups        TEXT NOT NULL DEFAULT '[]',
    roles         TEXT NOT NULL DEFAULT '[]',
    disabled      INTEGER NOT NULL DEFAULT 0,
    password_hash TEXT,
    created       REAL NOT NULL,
    updated       REAL NOT NULL,
    UNIQUE (tenant, username_key)
);

CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    amr        TEXT NOT NULL,
    auth_time  REAL NOT NULL,
    created    REAL NOT NULL,
    last_seen  REAL NOT NULL,
    expires    REAL NOT NULL,
    ip         TEXT,
    user_agent TEXT,
    country    TEXT,
    remember   INTEGER NOT NULL DEFAULT 0,
    data       TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX sessions_user ON sessions (tenant, user_id);
CREATE INDEX sessions_expires ON sessions (expires);

CREATE TABLE api_keys (
    id        TEXT PRIMARY KEY,
    tenant    TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    name      TEXT NOT NULL,
    prefix    TEXT NOT NULL,
    key_hash  TEXT NOT NULL UNIQUE,
    created   REAL NOT NULL,
    expires   REAL,
    last_used REAL,
    revoked   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX api_keys_user ON api_keys (tenant, user_id);

CREATE TABLE signing_keys (
    kid                   TEXT PRIMARY KEY,
    algorithm             TEXT NOT NULL,
    private_pem_encrypted BLOB NOT NULL,
    public_jwk            TEXT NOT NULL,
    created               REAL NOT NULL,
    retired               REAL
);

CREATE TABLE audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    time       REAL NOT NULL,
    tenant     TEXT,
    event      TEXT NOT NULL,
    username   TEXT,
    ip         TEXT,
    country    TEXT,
    user_agent TEXT,
    session_fp TEXT,
    rule       TEXT,
    outcome    TEXT,
    details    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_time ON audit (time);
CREATE INDEX audit_tenant_user ON audit (tenant, username, time);

CREATE TABLE rate_hits (
    key          TEXT NOT NULL,
    window_s     REAL NOT NULL,
    window_start REAL NOT NULL,
    count        INTEGER NOT NULL,
    expires      REAL NOT NULL,
    PRIMARY KEY (key, window_s)
);

CREATE TABLE bans (
    key   TEXT PRIMARY KEY,
    until REAL NOT NULL
);

-- Revocation fan-out for the SQL event bus: subscribers poll for ids above the last seen.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    message TEXT NOT NULL,
    created REAL NOT NULL
);
