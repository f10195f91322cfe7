-- Where each user last signed in, and every country they have signed in from:
-- the impossible-travel and new-country checks at sign-in (gateway/geo.py).
CREATE TABLE sign_in_last (
    tenant      TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    time        REAL NOT NULL,
    ip          TEXT,
    country     TEXT,
    subdivision TEXT,
    city        TEXT,
    latitude    REAL,
    longitude   REAL,
    accuracy_km REAL,
    PRIMARY KEY (tenant, user_id)
);

CREATE TABLE sign_in_countries (
    tenant     TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    country    TEXT NOT NULL,
    first_seen REAL NOT NULL,
    PRIMARY KEY (tenant, user_id, country)
);
