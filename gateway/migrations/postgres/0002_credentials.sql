-- authgate schema 2 (PostgreSQL): second factors. Seeds are encrypted by the gateway
-- (SecretBox) and backup codes keyed-hashed before they reach these tables.

CREATE TABLE totp_devices (
    id               TEXT PRIMARY KEY,
    tenant           TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    name             TEXT NOT NULL,
    secret_encrypted BYTEA NOT NULL,
    last_used_step   BIGINT NOT NULL DEFAULT 0,
    created          DOUBLE PRECISION NOT NULL,
    confirmed        BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX totp_devices_user ON totp_devices (user_id);

CREATE TABLE webauthn_credentials (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    name            TEXT NOT NULL,
    credential_id   BYTEA NOT NULL UNIQUE,
    public_key      BYTEA NOT NULL,
    sign_count      BIGINT NOT NULL DEFAULT 0,
    transports      TEXT NOT NULL DEFAULT '[]',
    aaguid          TEXT NOT NULL DEFAULT '',
    backup_eligible BOOLEAN NOT NULL DEFAULT FALSE,
    backed_up       BOOLEAN NOT NULL DEFAULT FALSE,
    user_handle     BYTEA NOT NULL,
    created         DOUBLE PRECISION NOT NULL,
    last_used       DOUBLE PRECISION
);
CREATE INDEX webauthn_credentials_user ON webauthn_credentials (user_id);

CREATE TABLE backup_codes (
    tenant    TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    created   DOUBLE PRECISION NOT NULL,
    used_at   DOUBLE PRECISION,
    PRIMARY KEY (user_id, code_hash)
);
