-- authgate schema 1 (PostgreSQL). Times are UNIX seconds; tuples are JSON arrays (text).

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    username      TEXT NOT NULL,
    username_key  TEXT NOT NULL,
    email         TEXT,
    display_name  TEXT,
    groups        TEXT NOT NULL DEFAULT '[]',
    roles         TEXT NOT NULL DEFAULT '[]',
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    password_hash TEXT,
    created       DOUBLE PRECISION NOT NULL,
    updated       DOUBLE PRECISION NOT NULL,
    UNIQUE (tenant, username_key)
);

CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    amr        TEXT NOT NULL,
    auth_time  DOUBLE PRECISION NOT NULL,
    created    DOUBLE PRECISION NOT NULL,
    last_seen  DOUBLE PRECISION NOT NULL,
    expires    DOUBLE PRECISION NOT NULL,
    ip         TEXT,
    user_agent TEXT,
    country    TEXT,
    remember   BOOLEAN NOT NULL DEFAULT FALSE,
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
    created   DOUBLE PRECISION NOT NULL,
    expires   DOUBLE PRECISION,
    last_used DOUBLE PRECISION,
    revoked   BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX api_keys_user ON api_keys (tenant, user_id);

CREATE TABLE signing_keys (
    kid                   TEXT PRIMARY KEY,
    algorithm             TEXT NOT NULL,
    private_pem_encrypted BYTEA NOT NULL,
    public_jwk            TEXT NOT NULL,
    created               DOUBLE PRECISION NOT NULL,
    retired               DOUBLE PRECISION
);

CREATE TABLE audit (
    id         BIGSERIAL PRIMARY KEY,
    time       DOUBLE PRECISION NOT NULL,
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
    window_s     DOUBLE PRECISION NOT NULL,
    window_start DOUBLE PRECISION NOT NULL,
    count        INTEGER NOT NULL,
    expires      DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (key, window_s)
);

CREATE TABLE bans (
    key   TEXT PRIMARY KEY,
    until DOUBLE PRECISION NOT NULL
);

-- Revocation fan-out for the SQL event bus: subscribers poll for ids above the last seen.
CREATE TABLE events (
    id      BIGSERIAL PRIMARY KEY,
    channel TEXT NOT NULL,
    message TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
