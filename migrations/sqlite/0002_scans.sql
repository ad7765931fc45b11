-- Scans, revoked codes, the security alert outbox, and append-only
-- enforcement of the audit tables.

ALTER TABLE cylinders ADD COLUMN last_scanned_at TEXT;

-- Codes taken off a cylinder when its labels were reissued. Scanning one
-- gives REVOKED.
CREATE TABLE revoked_codes (
    code        TEXT PRIMARY KEY NOT NULL,
    scan_type   TEXT NOT NULL CHECK (scan_type IN ('QR', 'RFID')),
    cylinder_id BLOB NOT NULL REFERENCES cylinders (id),
    revoked_at  TEXT NOT NULL,
    revoked_by  BLOB REFERENCES users (id),
    reason      TEXT NOT NULL DEFAULT ''
);

-- One row per scan. Personal data (client IP, user agent, position and
-- address) lives in scan_context, so that erasure and retention can delete
-- it while this table stays append-only.
CREATE TABLE cylinder_scans (
    id                   BLOB PRIMARY KEY NOT NULL,
    cylinder_id          BLOB REFERENCES cylinders (id),
    scan_type            TEXT NOT NULL CHECK (scan_type IN ('QR', 'RFID')),
    result               TEXT NOT NULL CHECK (result IN ('VALID', 'FAILED', 'TAMPERED', 'EXPIRED', 'REVOKED')),
    scanned_code         TEXT NOT NULL,
    scanner_id           BLOB NOT NULL REFERENCES users (id),
    scanner_role         TEXT NOT NULL,
    verification_message TEXT NOT NULL,
    is_suspicious        INTEGER NOT NULL DEFAULT 0 CHECK (is_suspicious IN (0, 1)),
    suspicious_reason    TEXT,
    scanned_at           TEXT NOT NULL,
    received_at          TEXT NOT NULL,
    client_scan_id       TEXT,
    -- The response as first sent, without its auth token, for retries.
    response             TEXT NOT NULL,
    UNIQUE (scanner_id, client_scan_id)
);

-- Both tamper rules read one cylinder's scans around an event time.
CREATE INDEX cylinder_scans_cylinder_time ON cylinder_scans (cylinder_id, scanned_at);

CREATE TABLE scan_context (
    scan_id    BLOB PRIMARY KEY NOT NULL REFERENCES cylinder_scans (id),
    ip_address TEXT,
    user_agent TEXT,
    latitude   REAL,
    longitude  REAL,
    accuracy_m REAL,
    address    TEXT
);

-- Security alerts, written in the same transaction as the event that raised
-- them; a delivery worker sends them by e-mail and webhook.
CREATE TABLE security_events (
    id           BLOB PRIMARY KEY NOT NULL,
    kind         TEXT NOT NULL,
    cylinder_id  BLOB REFERENCES cylinders (id),
    scan_id      BLOB REFERENCES cylinder_scans (id),
    details      TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    delivered_at TEXT
);

CREATE INDEX security_events_pending ON security_events (created_at) WHERE delivered_at IS NULL;

CREATE TRIGGER cylinder_history_no_update BEFORE UPDATE ON cylinder_history
BEGIN
    SELECT RAISE(ABORT, 'cylinder_history is append-only');
END;

CREATE TRIGGER cylinder_history_no_delete BEFORE DELETE ON cylinder_history
BEGIN
    SELECT RAISE(ABORT, 'cylinder_history is append-only');
END;

CREATE TRIGGER cylinder_scans_no_update BEFORE UPDATE ON cylinder_scans
BEGIN
    SELECT RAISE(ABORT, 'cylinder_scans is append-only');
END;

CREATE TRIGGER cylinder_scans_no_delete BEFORE DELETE ON cylinder_scans
BEGIN
    SELECT RAISE(ABORT, 'cylinder_scans is append-only');
END;
