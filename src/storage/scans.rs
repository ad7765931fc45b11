//! SQL and use-case code of the scan path, the tamper flag, code reissue
//! and the audit reads, shared by both backends like [`super::shared`].

/// Builds the statement that finds a cylinder by `$where` and, on a
/// backend with row locks, locks its row until commit with `$lock`, so
/// that scans of one cylinder are judged one after the other. It returns
/// the chain head and the rule memory with the record, and as `version`
/// the expression `$version`, which changes whenever the row does. SQLite
/// needs no row lock, because its write transactions run one at a time.
macro_rules! cylinder_lock_sql {
    ($version:literal, $where:literal, $lock:literal) => {
        concat!(
            "SELECT id, serial_number, brand, capacity_kg, qr_code, rfid_tag, status, is_tampered, tamper_notes, \
             manufacture_date, expiry_date, depot_id, customer_id, driver_id, created_at, updated_at, secret_key, \
             history_count, last_history_hash, recent_scans, recent_scans_after, last_fix_scan_id, last_fix_at, \
             last_fix_latitude, last_fix_longitude, last_fix_accuracy_m, ",
            $version,
            " AS version FROM cylinders WHERE ",
            $where,
            $lock
        )
    };
}

/// The statements that find the cylinder a scan names, by QR code, RFID
/// tag or id, and lock it or only read it.
pub(super) struct CylinderLocks {
    pub by_qr: &'static str,
    pub by_rfid: &'static str,
    pub by_id: &'static str,
}

/// PostgreSQL takes the weakest row lock that still excludes other
/// writers, so that foreign-key checks of the scan's inserts do not wait.
pub(super) const POSTGRES_LOCKS: CylinderLocks = CylinderLocks {
    by_qr: cylinder_lock_sql!("xmin::text", "qr_code = $1", " FOR NO KEY UPDATE"),
    by_rfid: cylinder_lock_sql!("xmin::text", "rfid_tag = $1", " FOR NO KEY UPDATE"),
    by_id: cylinder_lock_sql!("xmin::text", "id = $1", " FOR NO KEY UPDATE"),
};

/// PostgreSQL's reads without a lock, for a scan whose write then insists
/// on the row version it read. `xmin` is the transaction that wrote the
/// row version, so any update of the row changes it.
pub(super) const POSTGRES_READS: CylinderLocks = CylinderLocks {
    by_qr: cylinder_lock_sql!("xmin::text", "qr_code = $1", ""),
    by_rfid: cylinder_lock_sql!("xmin::text", "rfid_tag = $1", ""),
    by_id: cylinder_lock_sql!("xmin::text", "id = $1", ""),
};

pub(super) const SQLITE_LOCKS: CylinderLocks = CylinderLocks {
    by_qr: cylinder_lock_sql!("NULL", "qr_code = $1", ""),
    by_rfid: cylinder_lock_sql!("NULL", "rfid_tag = $1", ""),
    by_id: cylinder_lock_sql!("NULL", "id = $1", ""),
};

/// The check that the user `$1` is active with the role `$2`, which the
/// scan path makes in its write transaction.
pub(super) const SCANNER_ACTIVE: &str =
    "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND role = $2 AND is_active)";

pub(super) const FIND_REVOKED_CODE: &str =
    "SELECT cylinder_id FROM revoked_codes WHERE code = $1 AND scan_type = $2";

/// What both cloning rules read, in one round trip: the event times of a
/// cylinder's scans in an open interval (kind 0, for the rapid-scan rule),
/// and its located scans just before (kind 1) and just after (kind 2) an
/// event time, for the movement rule. Only scans that the cylinder's rule
/// memory cannot judge read it: late uploads and long bursts.
pub(super) const RULE_INPUTS: &str = "SELECT CAST(0 AS BIGINT) AS kind, scanned_at, \
       CAST(NULL AS DOUBLE PRECISION) AS latitude, CAST(NULL AS DOUBLE PRECISION) AS longitude, \
       CAST(NULL AS DOUBLE PRECISION) AS accuracy_m \
     FROM cylinder_scans WHERE cylinder_id = $1 AND scanned_at > $3 AND scanned_at < $4 \
     UNION ALL \
     SELECT CAST(1 AS BIGINT), scanned_at, latitude, longitude, accuracy_m FROM ( \
       SELECT s.scanned_at, c.latitude, c.longitude, c.accuracy_m FROM cylinder_scans s \
       JOIN scan_context c ON c.scan_id = s.id \
       WHERE s.cylinder_id = $1 AND s.scanned_at <= $2 AND c.latitude IS NOT NULL \
       ORDER BY s.scanned_at DESC LIMIT 1) AS before_scan \
     UNION ALL \
     SELECT CAST(2 AS BIGINT), scanned_at, latitude, longitude, accuracy_m FROM ( \
       SELECT s.scanned_at, c.latitude, c.longitude, c.accuracy_m FROM cylinder_scans s \
       JOIN scan_context c ON c.scan_id = s.id \
       WHERE s.cylinder_id = $1 AND s.scanned_at > $2 AND c.latitude IS NOT NULL \
       ORDER BY s.scanned_at ASC LIMIT 1) AS after_scan";

pub(super) const INSERT_SCAN: &str = "INSERT INTO cylinder_scans \
     (id, cylinder_id, scan_type, result, scanned_code, scanner_id, scanner_role, verification_message, \
      is_suspicious, suspicious_reason, scanned_at, received_at, client_scan_id, response) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

pub(super) const INSERT_SCAN_CONTEXT: &str = "INSERT INTO scan_context \
     (scan_id, ip_address, user_agent, latitude, longitude, accuracy_m, address) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Stores what a scan changes on its cylinder besides the chain head: the
/// time of the last scan, the history count and the rule memory.
/// PostgreSQL does this in its one write statement instead.
pub(super) const SET_SCAN_STATE: &str = "UPDATE cylinders SET last_scanned_at = $2, history_count = $3, \
     recent_scans = $4, recent_scans_after = $5, last_fix_scan_id = $6, last_fix_at = $7, last_fix_latitude = $8, \
     last_fix_longitude = $9, last_fix_accuracy_m = $10 WHERE id = $1";

pub(super) const FLAG_TAMPERED: &str = "UPDATE cylinders SET is_tampered = TRUE, tamper_notes = $2, updated_at = $3 \
     WHERE id = $1";

pub(super) const INSERT_SECURITY_EVENT: &str = "INSERT INTO security_events \
     (id, kind, cylinder_id, scan_id, details, created_at) VALUES ($1, $2, $3, $4, $5, $6)";

pub(super) const SCAN_BY_CLIENT_ID: &str = "SELECT s.id, s.cylinder_id, s.result, s.is_suspicious, s.response, \
     s.received_at, s.scanned_code, COALESCE(c.is_tampered, FALSE) AS cylinder_flagged, c.secret_key FROM cylinder_scans s LEFT JOIN cylinders c ON c.id = s.cylinder_id \
     WHERE s.scanner_id = $1 AND s.client_scan_id = $2";

pub(super) const SCAN_BY_ID: &str = "SELECT s.id, s.cylinder_id, s.result, s.is_suspicious, s.response, \
     s.received_at, s.scanned_code, COALESCE(c.is_tampered, FALSE) AS cylinder_flagged, c.secret_key FROM cylinder_scans s LEFT JOIN cylinders c ON c.id = s.cylinder_id \
     WHERE s.id = $1";

pub(super) const LIST_SCANS: &str = "SELECT s.id, s.cylinder_id, s.scan_type, s.result, s.scanned_code, \
     s.scanner_id, s.scanner_role, s.verification_message, s.is_suspicious, s.suspicious_reason, s.scanned_at, \
     s.received_at, s.client_scan_id, c.ip_address, c.user_agent, c.latitude, c.longitude, c.accuracy_m, c.address \
     FROM cylinder_scans s LEFT JOIN scan_context c ON c.scan_id = s.id \
     WHERE s.cylinder_id = $1 ORDER BY s.scanned_at DESC, s.id LIMIT $2 OFFSET $3";

pub(super) const SET_TAMPER_FLAG: &str = "UPDATE cylinders SET is_tampered = $2, tamper_notes = $3, updated_at = $4 \
     WHERE id = $1 AND is_tampered <> $2 \
     RETURNING id, serial_number, brand, capacity_kg, qr_code, rfid_tag, status, is_tampered, tamper_notes, \
     manufacture_date, expiry_date, depot_id, customer_id, driver_id, created_at, updated_at";

/// Locks the cylinder and returns its current codes, which are about to be
/// revoked.
pub(super) const LOCK_CODES: &str =
    "UPDATE cylinders SET updated_at = $2 WHERE id = $1 RETURNING qr_code, rfid_tag";

pub(super) const INSERT_REVOKED_CODE: &str = "INSERT INTO revoked_codes \
     (code, scan_type, cylinder_id, revoked_at, revoked_by, reason) VALUES ($1, $2, $3, $4, $5, $6)";

pub(super) const SET_CODES: &str = "UPDATE cylinders SET qr_code = $2, rfid_tag = $3, secret_key = $4, auth_hash = $5, \
     updated_at = $6 WHERE id = $1 \
     RETURNING id, serial_number, brand, capacity_kg, qr_code, rfid_tag, status, is_tampered, tamper_notes, \
     manufacture_date, expiry_date, depot_id, customer_id, driver_id, created_at, updated_at";

pub(super) const CHAIN_HEADS_FIRST: &str = "SELECT id, serial_number, history_count, last_history_hash \
     FROM cylinders ORDER BY id LIMIT $1";

pub(super) const CHAIN_HEADS_AFTER: &str = "SELECT id, serial_number, history_count, last_history_hash \
     FROM cylinders WHERE id > $1 ORDER BY id LIMIT $2";

pub(super) const SCAN_LINKS: &str = "SELECT id, result, is_suspicious FROM cylinder_scans WHERE cylinder_id = $1 ORDER BY scanned_at, id";

pub(super) const PENDING_SECURITY_EVENTS: &str =
    "SELECT COUNT(*) FROM security_events WHERE delivered_at IS NULL";

/// Implements the scan-path use cases as inherent methods of `$store`; the
/// `Store` implementation of [`super::shared::impl_store`] delegates to them.
macro_rules! impl_scan_store {
    ($store:ty, $db:ty) => {
        impl $store {
            /// Records a scan; see [`crate::storage::Store::record_scan`].
            /// A backend may first try to record it without a lock; when
            /// that cannot be done, the scan is judged again with its
            /// cylinder locked.
            async fn record_scan_in_transaction(
                &self,
                scan: $crate::storage::ScanInput,
                policy: &$crate::domain::scan::TamperPolicy,
                respond: $crate::storage::ScanResponder<'_>,
            ) -> $crate::storage::StoreResult<$crate::storage::ScanOutcome> {
                // Each path runs as its own boxed future. Inline, both would
                // sit in this future, and every move of it would copy them.
                if let Some(outcome) = Box::pin(self.record_scan_unlocked(&scan, policy, respond)).await? {
                    return Ok(outcome);
                }
                Box::pin(self.record_scan_locked(scan, policy, respond)).await
            }

            /// Records a scan with its cylinder locked from the read to the
            /// commit.
            async fn record_scan_locked(
                &self,
                scan: $crate::storage::ScanInput,
                policy: &$crate::domain::scan::TamperPolicy,
                respond: $crate::storage::ScanResponder<'_>,
            ) -> $crate::storage::StoreResult<$crate::storage::ScanOutcome> {
                use $crate::storage::models::ScanWritten;
                use $crate::storage::{ScanOutcome, StoreError};

                let mut tx = self.begin_write().await?;
                let judged = self.judge_scan(&mut tx, &Self::CYLINDER_LOCKS, &scan, policy, respond).await?;
                match self.write_scan(&mut tx, &judged.write(&scan)).await {
                    Ok(ScanWritten::Written) => {}
                    Ok(ScanWritten::Stale) => {
                        return Err(StoreError::Corrupt("a locked cylinder changed before its scan was written".into()));
                    }
                    Ok(ScanWritten::ScannerRejected) => {
                        tx.rollback().await?;
                        return Ok(ScanOutcome::ScannerRejected);
                    }
                    Err(error) => {
                        tx.rollback().await?;
                        return match self.first_of_raced_retry(&error, &scan).await? {
                            Some(first) => Ok(ScanOutcome::Replayed(first)),
                            None => Err(error.into()),
                        };
                    }
                }
                if let (Some(record), Some(reason)) = (&judged.cylinder, judged.suspicious_reason.as_deref()) {
                    self.flag_detected_tamper(&mut tx, record.id, scan.id, reason, &scan).await?;
                }
                tx.commit().await?;
                Ok(ScanOutcome::Recorded(judged.into_recorded(&scan)))
            }

            /// Returns the first scan when `error` is the unique violation of
            /// a retry of it that raced this one and won. The scanner needs no check here: the
            /// insert that failed runs only for a confirmed scanner.
            async fn first_of_raced_retry(
                &self,
                error: &sqlx::Error,
                scan: &$crate::storage::ScanInput,
            ) -> $crate::storage::StoreResult<Option<$crate::storage::RecordedScan>> {
                use $crate::storage::Store as _;

                let duplicate = matches!(error, sqlx::Error::Database(database) if database.is_unique_violation());
                match (duplicate, scan.client_scan_id.as_deref()) {
                    (true, Some(client_scan_id)) => self.scan_by_client_id(scan.scanner.user_id, client_scan_id).await,
                    _ => Ok(None),
                }
            }

            /// Finds the cylinder a scan names with `reads`, through a
            /// revoked code if need be, and judges the scan: the cloning
            /// rules, the verdict, the response and the rows to write.
            /// Writes nothing.
            async fn judge_scan(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                reads: &$crate::storage::scans::CylinderLocks,
                scan: &$crate::storage::ScanInput,
                policy: &$crate::domain::scan::TamperPolicy,
                respond: $crate::storage::ScanResponder<'_>,
            ) -> $crate::storage::StoreResult<$crate::storage::models::JudgedScan> {
                use $crate::domain::scan::{ScanFacts, ScanType, verdict};
                use $crate::storage::scans::*;
                use $crate::storage::{HistoryEvent, NewHistoryEntry, ScanDraft};

                let read = match scan.scan_type {
                    ScanType::Qr => reads.by_qr,
                    ScanType::Rfid => reads.by_rfid,
                };
                let mut found: Option<$crate::storage::models::CylinderSecretRow> =
                    sqlx::query_as(read).bind(&scan.code).fetch_optional(&mut *conn).await?;
                let mut code_revoked = false;
                if found.is_none() {
                    let revoked: Option<(uuid::Uuid,)> = sqlx::query_as(FIND_REVOKED_CODE)
                        .bind(&scan.code)
                        .bind(scan.scan_type.as_str())
                        .fetch_optional(&mut *conn)
                        .await?;
                    if let Some((cylinder_id,)) = revoked {
                        code_revoked = true;
                        found = sqlx::query_as(reads.by_id).bind(cylinder_id).fetch_optional(&mut *conn).await?;
                    }
                }
                // A driver who leaves the scanner in QR mode reads an RFID
                // tag id as text. That is a genuine tag, not a counterfeit.
                let looks_like_rfid = scan.code.len() >= 8 && scan.code.chars().all(|c| c.is_ascii_hexdigit());
                if found.is_none() && scan.scan_type == ScanType::Qr && looks_like_rfid {
                    found = sqlx::query_as(reads.by_rfid).bind(&scan.code).fetch_optional(&mut *conn).await?;
                }
                let (mut cylinder, secret, reserved, mut memory, version) = match found {
                    Some(row) => {
                        let memory = row.rule_memory()?;
                        (
                            Some(row.cylinder.into_record()?),
                            Some(row.secret_key),
                            // The scan's SCANNED entry takes the next position.
                            Some((row.history_count + 1, row.last_history_hash)),
                            Some(memory),
                            row.version,
                        )
                    }
                    None => (None, None, None, None, None),
                };

                let suspicious = match (&cylinder, &memory) {
                    (Some(record), Some(memory)) => {
                        self.apply_tamper_rules(&mut *conn, record.id, memory, scan, policy).await?
                    }
                    _ => None,
                };
                if let Some(memory) = memory.as_mut() {
                    memory.record(scan.id, scan.scanned_at, scan.position);
                }
                let facts = cylinder.as_ref().map(|record| ScanFacts {
                    status: record.status,
                    expiry_date: record.expiry_date,
                    is_tampered: record.is_tampered,
                    code_revoked,
                });
                let outcome = verdict(facts.as_ref(), suspicious.as_deref(), scan.scanned_at.date_naive());
                if let (Some(record), Some(reason)) = (cylinder.as_mut(), suspicious.as_deref()) {
                    record.is_tampered = true;
                    record.tamper_notes = reason.to_string();
                    record.updated_at = scan.received_at;
                }

                let response = respond(&ScanDraft {
                    scan_id: scan.id,
                    cylinder: cylinder.as_ref(),
                    verdict: &outcome,
                    suspicious_reason: suspicious.as_deref(),
                    scanned_at: scan.scanned_at,
                });
                let history = match (&cylinder, reserved) {
                    (Some(record), Some(reserved)) => {
                        let entry = NewHistoryEntry {
                            cylinder_id: record.id,
                            event: HistoryEvent::Scanned,
                            actor: Some(scan.scanner),
                            from_status: None,
                            to_status: None,
                            notes: String::new(),
                            details: serde_json::json!({
                                "scan_id": scan.id,
                                "scan_type": scan.scan_type.as_str(),
                                "result": outcome.result.as_str(),
                                "is_suspicious": suspicious.is_some(),
                                "scanned_at": scan.scanned_at,
                            }),
                        };
                        Some($crate::storage::PreparedEntry::new(&self.chain_key, entry, reserved, scan.received_at))
                    }
                    _ => None,
                };
                Ok($crate::storage::models::JudgedScan {
                    cylinder,
                    version,
                    secret,
                    verdict: outcome,
                    suspicious_reason: suspicious,
                    response,
                    history,
                    memory,
                })
            }

            /// Applies both cloning rules to a scan of `cylinder_id` and
            /// returns the reason when one fires. The inputs come from the
            /// cylinder's rule memory when it contains them all, and from the
            /// scans table otherwise.
            async fn apply_tamper_rules(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                cylinder_id: uuid::Uuid,
                memory: &$crate::domain::rule_memory::RuleMemory,
                scan: &$crate::storage::ScanInput,
                policy: &$crate::domain::scan::TamperPolicy,
            ) -> $crate::storage::StoreResult<Option<String>> {
                use $crate::domain::scan::{Coordinates, LocatedScan, RuleInputs, cloning_reason};
                use $crate::storage::scans::*;

                let at = scan.scanned_at;
                let inputs = match memory.inputs(at, policy.rapid_window) {
                    Some(inputs) => inputs,
                    None => {
                        // Planned afresh on every call, because a plan that
                        // PostgreSQL caches while the tables are nearly
                        // empty scans them whole once they have grown.
                        let rows: Vec<(i64, chrono::DateTime<chrono::Utc>, Option<f64>, Option<f64>, Option<f64>)> =
                            sqlx::query_as(RULE_INPUTS)
                                .persistent(false)
                                .bind(cylinder_id)
                                .bind(at)
                                .bind(at - policy.rapid_window)
                                .bind(at + policy.rapid_window)
                                .fetch_all(&mut *conn)
                                .await?;
                        let mut inputs = RuleInputs::default();
                        for (kind, time, latitude, longitude, accuracy_m) in rows {
                            match (kind, latitude, longitude) {
                                (0, _, _) => inputs.times.push(time),
                                (_, Some(latitude), Some(longitude)) => inputs.neighbours.push(LocatedScan {
                                    at: time,
                                    position: Coordinates { latitude, longitude, accuracy_m },
                                }),
                                _ => {}
                            }
                        }
                        inputs
                    }
                };
                Ok(cloning_reason(policy, at, scan.position, &inputs))
            }

            /// Flags the cylinder, appends TAMPER_DETECTED and queues a
            /// security event, all in the scan's transaction.
            async fn flag_detected_tamper(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                cylinder_id: uuid::Uuid,
                scan_id: uuid::Uuid,
                reason: &str,
                scan: &$crate::storage::ScanInput,
            ) -> $crate::storage::StoreResult<()> {
                use $crate::storage::scans::*;
                use $crate::storage::{HistoryEvent, NewHistoryEntry};

                sqlx::query(FLAG_TAMPERED)
                    .bind(cylinder_id)
                    .bind(reason)
                    .bind(scan.received_at)
                    .execute(&mut **tx)
                    .await?;
                let details = serde_json::json!({
                    "scan_id": scan_id,
                    "reason": reason,
                    "scanner_id": scan.scanner.user_id,
                    "scanner_role": scan.scanner.role.as_str(),
                    "scanned_at": scan.scanned_at,
                });
                let entry = NewHistoryEntry {
                    cylinder_id,
                    event: HistoryEvent::TamperDetected,
                    actor: Some(scan.scanner),
                    from_status: None,
                    to_status: None,
                    notes: reason.to_string(),
                    details: details.clone(),
                };
                self.append_history(tx, entry, scan.received_at).await?;
                sqlx::query(INSERT_SECURITY_EVENT)
                    .bind(uuid::Uuid::new_v4())
                    .bind("TAMPER_DETECTED")
                    .bind(cylinder_id)
                    .bind(scan_id)
                    .bind(details.to_string())
                    .bind(scan.received_at)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            async fn stored_scan(
                &self,
                sql: &'static str,
                bind_first: uuid::Uuid,
                bind_second: Option<&str>,
            ) -> $crate::storage::StoreResult<Option<$crate::storage::RecordedScan>> {
                let mut query = sqlx::query_as::<_, $crate::storage::models::StoredScanRow>(sql).bind(bind_first);
                if let Some(second) = bind_second {
                    query = query.bind(second.to_string());
                }
                let row = query.fetch_optional(&self.pool).await?;
                row.map(|row| row.into_recorded()).transpose()
            }
        }
    };
}

pub(super) use impl_scan_store;
