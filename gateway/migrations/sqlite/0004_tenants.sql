-- authgate schema 4 (sqlite): tenants kept in the database, and single-use SSO hand-off codes.

-- A tenant's settings (name, branding, switches, routes, policy files) are one JSON
-- document: they are read whole and parsed into a TenantConfig, never queried by field.
CREATE TABLE tenants (
    id       TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    created  REAL NOT NULL,
    updated  REAL NOT NULL
);

-- One row per host pattern: the primary key makes a host belong to one tenant only.
CREATE TABLE tenant_domains (
    domain   TEXT PRIMARY KEY,
    tenant   TEXT NOT NULL,
    position INTEGER NOT NULL
);
CREATE INDEX tenant_domains_tenant ON tenant_domains (tenant);

-- SSO codes: only the SHA-256 of the code is kept; consumed by a single DELETE.
CREATE TABLE sso_codes (
    code_hash   TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    session_tag TEXT NOT NULL,
    target_host TEXT NOT NULL,
    expires     REAL NOT NULL
);
CREATE INDEX sso_codes_expires ON sso_codes (expires);
