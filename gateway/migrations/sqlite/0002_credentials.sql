-- authgate schema 2 (SQLite): second factors. Seeds are encrypted by the gateway
-- (SecretBox) and backup codes keyed-hashed before they reach these tables.

CREATE TABLE totp_devices (
    id               TEXT PRIMARY KEY,
    tenant           TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    name             TEXT NOT NULL,
    secret_encrypted BLOB NOT NULL,
    last_used_step   INTEGER NOT NULL DEFAULT 0,
    created          REAL NOT NULL,
    confirmed        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX totp_devices_user ON totp_devices (user_id);

CREATE TABLE webauthn_credentials (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    name            TEXT NOT NULL,
    credential_id   BLOB NOT NULL UNIQUE,
    public_key      BLOB NOT NULL,
    sign_count      INTEGER NOT NULL DEFAULT 0,
    transports      TEXT NOT NULL DEFAULT '[]',
    aaguid          TEXT NOT NULL DEFAULT '',
    backup_eligible INTEGER NOT NULL DEFAULT 0,
    backed_up       INTEGER NOT NULL DEFAULT 0,
    user_handle     BLOB NOT NULL,
    created         REAL NOT NULL,
    last_used       REAL
);
CREATE INDEX webauthn_credentials_user ON webauthn_credentials (user_id);

CREATE TABLE backup_codes (
    tenant    TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    created   REAL NOT NULL,
    used_at   REAL,
    PRIMARY KEY (user_id, code_hash)
);
