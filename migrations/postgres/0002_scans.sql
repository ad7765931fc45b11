-- Scans, revoked codes, the security alert outbox, and append-only
-- enforcement of the audit tables.

ALTER TABLE cylinders ADD COLUMN last_scanned_at TIMESTAMPTZ;

-- Codes taken off a cylinder when its labels were reissued. Scanning one
-- gives REVOKED.
CREATE TABLE revoked_codes (
    code        TEXT PRIMARY KEY,
    scan_type   TEXT NOT NULL CHECK (scan_type IN ('QR', 'RFID')),
    cylinder_id UUID NOT NULL REFERENCES cylinders (id),
    revoked_at  TIMESTAMPTZ NOT NULL,
    revoked_by  UUID REFERENCES users (id),
    reason      TEXT NOT NULL DEFAULT ''
);

-- One row per scan. Personal data (client IP, user agent, position and
-- address) lives in scan_context, so that erasure and retention can delete
-- it while this table stays append-only.
CREATE TABLE cylinder_scans (
    id                   UUID PRIMARY KEY,
    cylinder_id          UUID REFERENCES cylinders (id),
    scan_type            TEXT NOT NULL CHECK (scan_type IN ('QR', 'RFID')),
    result               TEXT NOT NULL CHECK (result IN ('VALID', 'FAILED', 'TAMPERED', 'EXPIRED', 'REVOKED')),
    scanned_code         TEXT NOT NULL,
    scanner_id           UUID NOT NULL REFERENCES users (id),
    scanner_role         TEXT NOT NULL,
    verification_message TEXT NOT NULL,
    is_suspicious        BOOLEAN NOT NULL DEFAULT FALSE,
    suspicious_reason    TEXT,
    scanned_at           TIMESTAMPTZ NOT NULL,
    received_at          TIMESTAMPTZ NOT NULL,
    client_scan_id       TEXT,
    -- The response as first sent, without its auth token, for retries.
    response             TEXT NOT NULL,
    UNIQUE (scanner_id, client_scan_id)
);

-- Both tamper rules read one cylinder's scans around an event time.
CREATE INDEX cylinder_scans_cylinder_time ON cylinder_scans (cylinder_id, scanned_at);

CREATE TABLE scan_context (
    scan_id    UUID PRIMARY KEY REFERENCES cylinder_scans (id),
    ip_address TEXT,
    user_agent TEXT,
    latitude   DOUBLE PRECISION,
    longitude  DOUBLE PRECISION,
    accuracy_m DOUBLE PRECISION,
    address    TEXT
);

-- Security alerts, written in the same transaction as the event that raised
-- them; a delivery worker sends them by e-mail and webhook.
CREATE TABLE security_events (
    id           UUID PRIMARY KEY,
    kind         TEXT NOT NULL,
    cylinder_id  UUID REFERENCES cylinders (id),
    scan_id      UUID REFERENCES cylinder_scans (id),
    details      TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    delivered_at TIMESTAMPTZ
);

CREATE INDEX security_events_pending ON security_events (created_at) WHERE delivered_at IS NULL;

-- Rejects every change to an append-only table. The service's database role
-- should also lack UPDATE, DELETE and TRUNCATE on these tables; see
-- `cyltrack db grants`.
CREATE FUNCTION cyltrack_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER cylinder_history_append_only BEFORE UPDATE OR DELETE ON cylinder_history
    FOR EACH ROW EXECUTE FUNCTION cyltrack_reject_change();
CREATE TRIGGER cylinder_history_no_truncate BEFORE TRUNCATE ON cylinder_history
    FOR EACH STATEMENT EXECUTE FUNCTION cyltrack_reject_change();
CREATE TRIGGER cylinder_scans_append_only BEFORE UPDATE OR DELETE ON cylinder_scans
    FOR EACH ROW EXECUTE FUNCTION cyltrack_reject_change();
CREATE TRIGGER cylinder_scans_no_truncate BEFORE TRUNCATE ON cylinder_scans
    FOR EACH STATEMENT EXECUTE FUNCTION cyltrack_reject_change();
