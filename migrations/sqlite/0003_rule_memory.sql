-- What each cylinder remembers for the cloning rules, so that a scan in
-- event-time order is judged from the cylinder row without reading the
-- scans table (see src/domain/rule_memory.rs and the PostgreSQL migration
-- of the same number).

ALTER TABLE cylinders ADD COLUMN recent_scans TEXT NOT NULL DEFAULT '';
ALTER TABLE cylinders ADD COLUMN recent_scans_after TEXT;
ALTER TABLE cylinders ADD COLUMN last_fix_scan_id BLOB;
ALTER TABLE cylinders ADD COLUMN last_fix_at TEXT;
ALTER TABLE cylinders ADD COLUMN last_fix_latitude REAL;
ALTER TABLE cylinders ADD COLUMN last_fix_longitude REAL;
ALTER TABLE cylinders ADD COLUMN last_fix_accuracy_m REAL;

UPDATE cylinders SET recent_scans_after = (
    SELECT MAX(scanned_at) FROM cylinder_scans WHERE cylinder_id = cylinders.id);

UPDATE cylinders SET (last_fix_scan_id, last_fix_at, last_fix_latitude, last_fix_longitude,
        last_fix_accuracy_m) = (
    SELECT s.id, s.scanned_at, c.latitude, c.longitude, c.accuracy_m
    FROM cylinder_scans s JOIN scan_context c ON c.scan_id = s.id
    WHERE s.cylinder_id = cylinders.id AND c.latitude IS NOT NULL AND c.longitude IS NOT NULL
    ORDER BY s.scanned_at DESC, s.id DESC LIMIT 1);
