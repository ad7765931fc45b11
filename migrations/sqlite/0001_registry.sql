-- Accounts, sessions, depots, the cylinder registry and its history.
-- UUIDs are 16-byte BLOBs, timestamps RFC 3339 text in UTC, dates
-- YYYY-MM-DD text, booleans 0 or 1: the encodings sqlx uses.

CREATE TABLE users (
    id            BLOB PRIMARY KEY NOT NULL,
    username      TEXT NOT NULL UNIQUE,
    full_name     TEXT NOT NULL DEFAULT '',
    email         TEXT,
    phone         TEXT,
    role          TEXT NOT NULL CHECK (role IN ('CUSTOMER', 'DRIVER', 'DISPATCHER', 'ADMIN')),
    password_hash TEXT NOT NULL,
    is_active     INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

CREATE INDEX users_role ON users (role, username);

-- One row per refresh token. A family is the chain of rotations that
-- started at one login; reuse of a spent token revokes the family.
CREATE TABLE refresh_tokens (
    id         BLOB PRIMARY KEY NOT NULL,
    family_id  BLOB NOT NULL,
    user_id    BLOB NOT NULL REFERENCES users (id),
    issued_at  TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    revoked_at TEXT
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id) WHERE revoked_at IS NULL;

CREATE TABLE depots (
    id         BLOB PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL UNIQUE,
    town       TEXT NOT NULL,
    latitude   REAL NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude  REAL NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    created_at TEXT NOT NULL
);

CREATE TABLE cylinders (
    id               BLOB PRIMARY KEY NOT NULL,
    serial_number    TEXT NOT NULL UNIQUE,
    brand            TEXT NOT NULL,
    capacity_kg      REAL NOT NULL CHECK (capacity_kg > 0),
    qr_code          TEXT NOT NULL UNIQUE,
    rfid_tag         TEXT NOT NULL UNIQUE,
    secret_key       BLOB NOT NULL,
    auth_hash        TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('IN_STOCK', 'FILLED', 'IN_TRANSIT', 'DELIVERED',
                                                     'RETURNED', 'MAINTENANCE', 'LOST', 'RETIRED')),
    is_tampered      INTEGER NOT NULL DEFAULT 0 CHECK (is_tampered IN (0, 1)),
    tamper_notes     TEXT NOT NULL DEFAULT '',
    manufacture_date TEXT NOT NULL,
    expiry_date      TEXT NOT NULL,
    depot_id         BLOB REFERENCES depots (id),
    customer_id      BLOB REFERENCES users (id),
    driver_id        BLOB REFERENCES users (id),
    created_by       BLOB REFERENCES users (id),
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    -- Head of the cylinder's history chain: the number of entries and the
    -- hash of the last one, so that an append needs no scan of the history.
    history_count     INTEGER NOT NULL DEFAULT 0,
    last_history_hash TEXT NOT NULL DEFAULT ''
);

-- The list is ordered by serial number; the filters that staff use most
-- (tampered, expired, by status, by holder) each have an index.
CREATE INDEX cylinders_status ON cylinders (status, serial_number);
CREATE INDEX cylinders_tampered ON cylinders (serial_number) WHERE is_tampered = 1;
CREATE INDEX cylinders_expiry ON cylinders (expiry_date);
CREATE INDEX cylinders_customer ON cylinders (customer_id, serial_number) WHERE customer_id IS NOT NULL;
CREATE INDEX cylinders_driver ON cylinders (driver_id, serial_number) WHERE driver_id IS NOT NULL;
CREATE INDEX cylinders_depot ON cylinders (depot_id, serial_number) WHERE depot_id IS NOT NULL;

-- Every change to a cylinder, numbered per cylinder from 1. Each entry
-- carries an HMAC over its content and the previous entry's hash, so that
-- `cyltrack audit verify` finds any row changed, removed or reordered.
-- `details` is canonical JSON text (sorted keys), exactly as hashed.
CREATE TABLE cylinder_history (
    id          BLOB PRIMARY KEY NOT NULL,
    cylinder_id BLOB NOT NULL REFERENCES cylinders (id),
    sequence    INTEGER NOT NULL,
    event_type  TEXT NOT NULL,
    actor_id    BLOB REFERENCES users (id),
    actor_role  TEXT,
    from_status TEXT,
    to_status   TEXT,
    notes       TEXT NOT NULL DEFAULT '',
    details     TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    entry_hash  TEXT NOT NULL,
    UNIQUE (cylinder_id, sequence)
);
