//! Records as the storage layer reads and writes them, and the raw rows
//! that both backends decode before the text columns become enums.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{StoreError, StoreResult};
use crate::domain::rule_memory::{LastFix, RuleMemory};
use crate::domain::scan::{Coordinates, LocatedScan, ScanResult, ScanType, Verdict};
use crate::domain::{CylinderStatus, Role};

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: Uuid,
    pub username: String,
    pub full_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub role: Role,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A user with the stored password hash, for login only.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: UserRecord,
    pub password_hash: String,
}

#[derive(Debug, Clone)]
pub struct NewUserRecord {
    pub username: String,
    pub full_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub role: Role,
    pub password_hash: String,
}

/// Changes to a user; `None` leaves a field as it is. For `email` and
/// `phone`, `Some(None)` clears the value.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub full_name: Option<String>,
    pub email: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RefreshTokenRecord {
    pub id: Uuid,
    pub family_id: Uuid,
    pub user_id: Uuid,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DepotRecord {
    pub id: Uuid,
    pub name: String,
    pub town: String,
    pub latitude: f64,
    pub longitude: f64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewDepotRecord {
    pub name: String,
    pub town: String,
    pub latitude: f64,
    pub longitude: f64,
}

/// A cylinder without its secret, which only the scan path reads.
#[derive(Debug, Clone, PartialEq)]
pub struct CylinderRecord {
    pub id: Uuid,
    pub serial_number: String,
    pub brand: String,
    pub capacity_kg: f64,
    pub qr_code: String,
    pub rfid_tag: String,
    pub status: CylinderStatus,
    pub is_tampered: bool,
    pub tamper_notes: String,
    pub manufacture_date: NaiveDate,
    pub expiry_date: NaiveDate,
    pub depot_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub driver_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewCylinderRecord {
    pub id: Uuid,
    pub serial_number: String,
    pub brand: String,
    pub capacity_kg: f64,
    pub qr_code: String,
    pub rfid_tag: String,
    pub secret_key: Vec<u8>,
    pub auth_hash: String,
    pub manufacture_date: NaiveDate,
    pub expiry_date: NaiveDate,
    pub depot_id: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub struct StatusChange {
    pub cylinder_id: Uuid,
    pub expected: CylinderStatus,
    pub to: CylinderStatus,
    pub notes: String,
}

/// New custody of a cylinder. `None` leaves a party unchanged and
/// `Some(None)` clears it.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub cylinder_id: Uuid,
    pub customer_id: Option<Option<Uuid>>,
    pub driver_id: Option<Option<Uuid>>,
    pub notes: String,
}

/// Kinds of history entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryEvent {
    Registered,
    StatusChanged,
    Assigned,
    Scanned,
    /// A cloning rule fired on a scan and flagged the cylinder.
    TamperDetected,
    /// Staff set the tamper flag by hand.
    TamperFlagged,
    /// Staff cleared the tamper flag after an investigation.
    TamperCleared,
    /// The cylinder got new codes and its old ones were revoked.
    CodesReissued,
}

impl HistoryEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryEvent::Registered => "REGISTERED",
            HistoryEvent::StatusChanged => "STATUS_CHANGED",
            HistoryEvent::Assigned => "ASSIGNED",
            HistoryEvent::Scanned => "SCANNED",
            HistoryEvent::TamperDetected => "TAMPER_DETECTED",
            HistoryEvent::TamperFlagged => "TAMPER_FLAGGED",
            HistoryEvent::TamperCleared => "TAMPER_CLEARED",
            HistoryEvent::CodesReissued => "CODES_REISSUED",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRecord {
    pub id: Uuid,
    pub cylinder_id: Uuid,
    /// Position in the cylinder's history, from 1.
    pub sequence: i64,
    pub event_type: String,
    pub actor_id: Option<Uuid>,
    pub actor_role: Option<Role>,
    pub from_status: Option<CylinderStatus>,
    pub to_status: Option<CylinderStatus>,
    pub notes: String,
    pub details: Value,
    pub created_at: DateTime<Utc>,
}

/// A history entry to append.
#[derive(Debug, Clone)]
pub struct NewHistoryEntry {
    pub cylinder_id: Uuid,
    pub event: HistoryEvent,
    pub actor: Option<super::Actor>,
    pub from_status: Option<CylinderStatus>,
    pub to_status: Option<CylinderStatus>,
    pub notes: String,
    pub details: Value,
}

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    pub id: Uuid,
    pub username: String,
    pub full_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub role: String,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub password_hash: String,
}

fn parse_role(text: &str) -> Result<Role, StoreError> {
    Role::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown role '{text}'")))
}

fn parse_status(text: &str) -> Result<CylinderStatus, StoreError> {
    CylinderStatus::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown cylinder status '{text}'")))
}

impl UserRow {
    pub fn into_credentials(self) -> Result<Credentials, StoreError> {
        let user = UserRecord {
            id: self.id,
            username: self.username,
            full_name: self.full_name,
            email: self.email,
            phone: self.phone,
            role: parse_role(&self.role)?,
            is_active: self.is_active,
            created_at: self.created_at,
            updated_at: self.updated_at,
        };
        Ok(Credentials {
            user,
            password_hash: self.password_hash,
        })
    }

    pub fn into_record(self) -> Result<UserRecord, StoreError> {
        self.into_credentials().map(|credentials| credentials.user)
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct CylinderRow {
    pub id: Uuid,
    pub serial_number: String,
    pub brand: String,
    pub capacity_kg: f64,
    pub qr_code: String,
    pub rfid_tag: String,
    pub status: String,
    pub is_tampered: bool,
    pub tamper_notes: String,
    pub manufacture_date: NaiveDate,
    pub expiry_date: NaiveDate,
    pub depot_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub driver_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CylinderRow {
    pub fn into_record(self) -> Result<CylinderRecord, StoreError> {
        Ok(CylinderRecord {
            id: self.id,
            serial_number: self.serial_number,
            brand: self.brand,
            capacity_kg: self.capacity_kg,
            qr_code: self.qr_code,
            rfid_tag: self.rfid_tag,
            status: parse_status(&self.status)?,
            is_tampered: self.is_tampered,
            tamper_notes: self.tamper_notes,
            manufacture_date: self.manufacture_date,
            expiry_date: self.expiry_date,
            depot_id: self.depot_id,
            customer_id: self.customer_id,
            driver_id: self.driver_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct HistoryRow {
    pub id: Uuid,
    pub cylinder_id: Uuid,
    pub sequence: i64,
    pub event_type: String,
    pub actor_id: Option<Uuid>,
    pub actor_role: Option<String>,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub notes: String,
    pub details: String,
    pub created_at: DateTime<Utc>,
    pub prev_hash: String,
    pub entry_hash: String,
}

impl HistoryRow {
    pub fn into_stored(self) -> crate::domain::audit::StoredEntry {
        crate::domain::audit::StoredEntry {
            cylinder_id: self.cylinder_id,
            sequence: self.sequence,
            event_type: self.event_type,
            actor_id: self.actor_id,
            actor_role: self.actor_role,
            from_status: self.from_status,
            to_status: self.to_status,
            notes: self.notes,
            details: self.details,
            created_at: self.created_at,
            prev_hash: self.prev_hash,
            entry_hash: self.entry_hash,
        }
    }

    pub fn into_record(self) -> Result<HistoryRecord, StoreError> {
        Ok(HistoryRecord {
            id: self.id,
            cylinder_id: self.cylinder_id,
            sequence: self.sequence,
            event_type: self.event_type,
            actor_id: self.actor_id,
            actor_role: self.actor_role.as_deref().map(parse_role).transpose()?,
            from_status: self.from_status.as_deref().map(parse_status).transpose()?,
            to_status: self.to_status.as_deref().map(parse_status).transpose()?,
            notes: self.notes,
            details: serde_json::from_str(&self.details).map_err(|error| {
                StoreError::Corrupt(format!("history details are not JSON: {error}"))
            })?,
            created_at: self.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct DepotRow {
    pub id: Uuid,
    pub name: String,
    pub town: String,
    pub latitude: f64,
    pub longitude: f64,
    pub created_at: DateTime<Utc>,
}

impl DepotRow {
    pub fn into_record(self) -> DepotRecord {
        DepotRecord {
            id: self.id,
            name: self.name,
            town: self.town,
            latitude: self.latitude,
            longitude: self.longitude,
            created_at: self.created_at,
        }
    }
}

/// A cylinder row with its secret and chain head, read only on the scan
/// path.
#[derive(sqlx::FromRow)]
pub(super) struct CylinderSecretRow {
    #[sqlx(flatten)]
    pub cylinder: CylinderRow,
    pub secret_key: Vec<u8>,
    /// The number of entries in the cylinder's history.
    pub history_count: i64,
    /// The hash of the cylinder's latest history entry.
    pub last_history_hash: String,
    pub recent_scans: String,
    pub recent_scans_after: Option<DateTime<Utc>>,
    pub last_fix_scan_id: Option<Uuid>,
    pub last_fix_at: Option<DateTime<Utc>>,
    pub last_fix_latitude: Option<f64>,
    pub last_fix_longitude: Option<f64>,
    pub last_fix_accuracy_m: Option<f64>,
    /// PostgreSQL's version of the row (`xmin`), which every update
    /// changes; NULL on SQLite.
    pub version: Option<String>,
}

impl CylinderSecretRow {
    /// Returns the cylinder's memory for the cloning rules, or `Corrupt` when
    /// the stored columns cannot be read back.
    pub fn rule_memory(&self) -> StoreResult<RuleMemory> {
        let last_fix = match (
            self.last_fix_scan_id,
            self.last_fix_at,
            self.last_fix_latitude,
            self.last_fix_longitude,
        ) {
            (Some(scan_id), Some(at), Some(latitude), Some(longitude)) => Some(LastFix {
                scan_id,
                scan: LocatedScan {
                    at,
                    position: Coordinates {
                        latitude,
                        longitude,
                        accuracy_m: self.last_fix_accuracy_m,
                    },
                },
            }),
            (None, None, None, None) => None,
            _ => {
                return Err(StoreError::Corrupt(
                    "a cylinder's last fix is incomplete".into(),
                ));
            }
        };
        RuleMemory::from_stored(self.recent_scans_after, &self.recent_scans, last_fix)
            .map_err(|error| StoreError::Corrupt(format!("a cylinder's rule memory: {}", error.0)))
    }
}

/// A scan to record, parsed and normalised by the caller.
#[derive(Debug, Clone)]
pub struct ScanInput {
    pub id: Uuid,
    pub scanner: super::Actor,
    pub scan_type: ScanType,
    /// The normalised code that is looked up.
    pub code: String,
    /// The code as received, for the audit trail.
    pub raw_code: String,
    pub position: Option<Coordinates>,
    pub address: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    /// When the scan happened: the device's time, or the receive time.
    pub scanned_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub client_scan_id: Option<String>,
}

/// The facts of a new scan, passed to the response builder.
#[derive(Debug, Clone)]
pub struct ScanDraft<'a> {
    pub scan_id: Uuid,
    pub cylinder: Option<&'a CylinderRecord>,
    pub verdict: &'a Verdict,
    pub suspicious_reason: Option<&'a str>,
    pub scanned_at: DateTime<Utc>,
}

/// Builds the JSON response stored with a scan, so that a retry with the
/// same client scan id gets the same response.
pub type ScanResponder<'a> = &'a (dyn Fn(&ScanDraft<'_>) -> String + Send + Sync);

/// A scan that was recorded now.
#[derive(Debug, Clone)]
pub struct RecordedScan {
    pub id: Uuid,
    pub cylinder_id: Option<Uuid>,
    pub result: ScanResult,
    pub is_suspicious: bool,
    pub response: String,
    pub received_at: DateTime<Utc>,
    /// The code as the scanner sent it, to tell a true retry from a
    /// reused client scan id.
    pub scanned_code: String,
    /// Whether the cylinder is flagged as tampered now.
    pub cylinder_flagged: bool,
    /// The cylinder's secret, which keys the scan's auth token.
    pub token_key: Option<Vec<u8>>,
}

/// Outcome of recording a scan.
#[derive(Debug, Clone)]
pub enum ScanOutcome {
    Recorded(RecordedScan),
    /// The scanner sent this client scan id before; nothing new was
    /// recorded and this is the first scan.
    Replayed(RecordedScan),
    /// The scanner's account is inactive, gone, or no longer has the role
    /// that the scan was made with; nothing was recorded.
    ScannerRejected,
}

/// The result of a backend's `write_scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScanWritten {
    Written,
    /// Another write changed the cylinder after the scan was judged, so
    /// nothing was written.
    Stale,
    /// The scanner is not an active user with the scan's role, so nothing
    /// was written.
    ScannerRejected,
}

/// A scan as the scan list shows it, with its personal data while that is
/// still kept.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanRecord {
    pub id: Uuid,
    pub cylinder_id: Option<Uuid>,
    pub scan_type: ScanType,
    pub result: ScanResult,
    pub scanned_code: String,
    pub scanner_id: Uuid,
    pub scanner_role: Role,
    pub verification_message: String,
    pub is_suspicious: bool,
    pub suspicious_reason: Option<String>,
    pub scanned_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub client_scan_id: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub accuracy_m: Option<f64>,
    pub address: Option<String>,
}

#[derive(sqlx::FromRow)]
pub(super) struct ScanRow {
    pub id: Uuid,
    pub cylinder_id: Option<Uuid>,
    pub scan_type: String,
    pub result: String,
    pub scanned_code: String,
    pub scanner_id: Uuid,
    pub scanner_role: String,
    pub verification_message: String,
    pub is_suspicious: bool,
    pub suspicious_reason: Option<String>,
    pub scanned_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub client_scan_id: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub accuracy_m: Option<f64>,
    pub address: Option<String>,
}

fn parse_result(text: &str) -> Result<ScanResult, StoreError> {
    ScanResult::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown scan result '{text}'")))
}

impl ScanRow {
    pub fn into_record(self) -> Result<ScanRecord, StoreError> {
        Ok(ScanRecord {
            id: self.id,
            cylinder_id: self.cylinder_id,
            scan_type: ScanType::parse(&self.scan_type).ok_or_else(|| {
                StoreError::Corrupt(format!("unknown scan type '{}'", self.scan_type))
            })?,
            result: parse_result(&self.result)?,
            scanned_code: self.scanned_code,
            scanner_id: self.scanner_id,
            scanner_role: parse_role(&self.scanner_role)?,
            verification_message: self.verification_message,
            is_suspicious: self.is_suspicious,
            suspicious_reason: self.suspicious_reason,
            scanned_at: self.scanned_at,
            received_at: self.received_at,
            client_scan_id: self.client_scan_id,
            ip_address: self.ip_address,
            user_agent: self.user_agent,
            latitude: self.latitude,
            longitude: self.longitude,
            accuracy_m: self.accuracy_m,
            address: self.address,
        })
    }
}

/// The stored part of an earlier scan that a retry or a token check needs.
#[derive(sqlx::FromRow)]
pub(super) struct StoredScanRow {
    pub id: Uuid,
    pub cylinder_id: Option<Uuid>,
    pub result: String,
    pub is_suspicious: bool,
    pub response: String,
    pub received_at: DateTime<Utc>,
    pub scanned_code: String,
    pub cylinder_flagged: bool,
    pub secret_key: Option<Vec<u8>>,
}

impl StoredScanRow {
    pub fn into_recorded(self) -> Result<RecordedScan, StoreError> {
        Ok(RecordedScan {
            id: self.id,
            cylinder_id: self.cylinder_id,
            result: parse_result(&self.result)?,
            is_suspicious: self.is_suspicious,
            response: self.response,
            received_at: self.received_at,
            scanned_code: self.scanned_code,
            cylinder_flagged: self.cylinder_flagged,
            token_key: self.secret_key,
        })
    }
}

/// New codes for a cylinder whose labels are reissued.
#[derive(Debug, Clone)]
pub struct CodeReissue {
    pub cylinder_id: Uuid,
    pub qr_code: String,
    pub rfid_tag: String,
    pub secret_key: Vec<u8>,
    pub auth_hash: String,
    pub reason: String,
}

/// Outcome of setting or clearing the tamper flag.
#[derive(Debug)]
pub enum TamperFlagOutcome {
    Changed(CylinderRecord),
    /// The flag already had the requested value; nothing was written.
    Unchanged(CylinderRecord),
    NotFound,
}

/// The head of one cylinder's history chain, as the cylinder row records it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChainHead {
    pub id: Uuid,
    pub serial_number: String,
    pub history_count: i64,
    pub last_history_hash: String,
}

/// A scan's fields that its SCANNED history entry repeats.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScanLink {
    pub id: Uuid,
    pub result: String,
    pub is_suspicious: bool,
}

/// A history entry with its position and hash computed, ready to insert.
#[derive(Debug, Clone)]
pub struct PreparedEntry {
    pub id: Uuid,
    pub cylinder_id: Uuid,
    pub sequence: i64,
    pub event_type: &'static str,
    pub actor_id: Option<Uuid>,
    pub actor_role: Option<&'static str>,
    pub from_status: Option<&'static str>,
    pub to_status: Option<&'static str>,
    pub notes: String,
    /// Canonical JSON text, exactly as hashed.
    pub details: String,
    pub created_at: DateTime<Utc>,
    pub prev_hash: String,
    pub entry_hash: String,
}

impl PreparedEntry {
    /// Hashes `entry` at the reserved position: the new history count and
    /// the hash of the entry before it.
    pub fn new(
        key: &crate::domain::audit::ChainKey,
        entry: NewHistoryEntry,
        (sequence, prev_hash): (i64, String),
        now: DateTime<Utc>,
    ) -> Self {
        use crate::domain::audit::{ChainedEntry, entry_hash};
        use chrono::SubsecRound;

        // Both databases keep microseconds, so the hashed time is cut to
        // microseconds before it is stored.
        let created_at = now.trunc_subsecs(6);
        let details = entry.details.to_string();
        let mut prepared = Self {
            // Time-ordered, like scan ids, for the same index locality.
            id: Uuid::now_v7(),
            cylinder_id: entry.cylinder_id,
            sequence,
            event_type: entry.event.as_str(),
            actor_id: entry.actor.map(|actor| actor.user_id),
            actor_role: entry.actor.map(|actor| actor.role.as_str()),
            from_status: entry.from_status.map(CylinderStatus::as_str),
            to_status: entry.to_status.map(CylinderStatus::as_str),
            notes: entry.notes,
            details,
            created_at,
            prev_hash,
            entry_hash: String::new(),
        };
        prepared.entry_hash = entry_hash(
            key,
            &ChainedEntry {
                cylinder_id: prepared.cylinder_id,
                sequence: prepared.sequence,
                event_type: prepared.event_type,
                actor_id: prepared.actor_id,
                actor_role: prepared.actor_role,
                from_status: prepared.from_status,
                to_status: prepared.to_status,
                notes: &prepared.notes,
                details: &prepared.details,
                created_at: prepared.created_at,
                prev_hash: &prepared.prev_hash,
            },
        );
        prepared
    }
}

/// A scan judged against its cylinder as it was read: the rows to write
/// and the response for the scanner.
#[derive(Debug)]
pub(super) struct JudgedScan {
    pub cylinder: Option<CylinderRecord>,
    /// The version of the cylinder's row that was judged, so that the
    /// write can insist on it.
    pub version: Option<String>,
    pub secret: Option<Vec<u8>>,
    pub verdict: Verdict,
    pub suspicious_reason: Option<String>,
    pub response: String,
    /// The SCANNED entry, for a scan of a known cylinder.
    pub history: Option<PreparedEntry>,
    /// The cylinder's rule memory with this scan recorded, for a scan of a
    /// known cylinder.
    pub memory: Option<RuleMemory>,
}

impl JudgedScan {
    /// Returns the rows to write for `scan`.
    pub fn write<'a>(&'a self, scan: &'a ScanInput) -> ScanWrite<'a> {
        ScanWrite {
            scan,
            cylinder_id: self.cylinder.as_ref().map(|record| record.id),
            version: self.version.as_deref(),
            result: self.verdict.result,
            message: &self.verdict.message,
            suspicious_reason: self.suspicious_reason.as_deref(),
            response: &self.response,
            history: self.history.as_ref(),
            memory: self.memory.as_ref(),
        }
    }

    /// Returns what the caller gets once the scan is committed.
    pub fn into_recorded(self, scan: &ScanInput) -> RecordedScan {
        RecordedScan {
            id: scan.id,
            cylinder_id: self.cylinder.as_ref().map(|record| record.id),
            result: self.verdict.result,
            is_suspicious: self.suspicious_reason.is_some(),
            response: self.response,
            received_at: scan.received_at,
            scanned_code: scan.raw_code.clone(),
            cylinder_flagged: self
                .cylinder
                .as_ref()
                .is_some_and(|record| record.is_tampered),
            token_key: self.secret,
        }
    }
}

/// The rows one scan writes, for the backends' `write_scan`.
#[derive(Debug)]
pub(super) struct ScanWrite<'a> {
    pub scan: &'a ScanInput,
    pub cylinder_id: Option<Uuid>,
    /// The version of the cylinder's row that the scan was judged against.
    pub version: Option<&'a str>,
    pub result: ScanResult,
    pub message: &'a str,
    pub suspicious_reason: Option<&'a str>,
    pub response: &'a str,
    pub history: Option<&'a PreparedEntry>,
    pub memory: Option<&'a RuleMemory>,
}

impl ScanWrite<'_> {
    /// Returns the last fix to store with the scan.
    pub fn last_fix(&self) -> Option<&LastFix> {
        self.memory.and_then(RuleMemory::last_fix)
    }

    /// True when the scan has personal context to store.
    pub fn has_context(&self) -> bool {
        let scan = self.scan;
        scan.ip_address.is_some()
            || scan.user_agent.is_some()
            || scan.position.is_some()
            || scan.address.is_some()
    }
}
