-- What each cylinder remembers for the cloning rules, so that a scan in
-- event-time order is judged from the locked cylinder row without reading
-- the scans table (see src/domain/rule_memory.rs).
--
-- recent_scans lists the event times, in microseconds since the Unix
-- epoch, of every scan after recent_scans_after (NULL: every scan since
-- registration). last_fix_* is the latest located scan by event time. The
-- position is personal data like scan_context's: erasing a scan's context
-- must clear or recompute the fix whose last_fix_scan_id names it.

ALTER TABLE cylinders
    ADD COLUMN recent_scans        TEXT NOT NULL DEFAULT '',
    ADD COLUMN recent_scans_after  TIMESTAMPTZ,
    ADD COLUMN last_fix_scan_id    UUID,
    ADD COLUMN last_fix_at         TIMESTAMPTZ,
    ADD COLUMN last_fix_latitude   DOUBLE PRECISION,
    ADD COLUMN last_fix_longitude  DOUBLE PRECISION,
    ADD COLUMN last_fix_accuracy_m DOUBLE PRECISION;

-- Cylinders scanned before this migration start with an empty list that is
-- complete after their latest scan, and with their latest located scan.
UPDATE cylinders SET recent_scans_after = latest.scanned_at
FROM (SELECT cylinder_id, MAX(scanned_at) AS scanned_at FROM cylinder_scans
      WHERE cylinder_id IS NOT NULL GROUP BY cylinder_id) AS latest
WHERE latest.cylinder_id = cylinders.id;

UPDATE cylinders SET last_fix_scan_id = fix.id, last_fix_at = fix.scanned_at,
    last_fix_latitude = fix.latitude, last_fix_longitude = fix.longitude,
    last_fix_accuracy_m = fix.accuracy_m
FROM (SELECT DISTINCT ON (s.cylinder_id) s.cylinder_id, s.id, s.scanned_at,
        c.latitude, c.longitude, c.accuracy_m
      FROM cylinder_scans s JOIN scan_context c ON c.scan_id = s.id
      WHERE s.cylinder_id IS NOT NULL AND c.latitude IS NOT NULL AND c.longitude IS NOT NULL
      ORDER BY s.cylinder_id, s.scanned_at DESC, s.id DESC) AS fix
WHERE fix.cylinder_id = cylinders.id;
