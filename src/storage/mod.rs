//! Persistence. [`Store`] is the one interface the rest of the service
//! uses; each method is a whole use case that owns its transaction. The
//! SQLite and PostgreSQL backends share their SQL and pass one conformance
//! suite.

mod models;
pub mod postgres;
mod scans;
mod shared;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use crate::config::DatabaseTarget;
use crate::domain::audit::{ChainKey, StoredEntry};
use crate::domain::scan::TamperPolicy;
use crate::domain::{CylinderStatus, Role};

pub use models::*;

/// Failures of a storage call. "Not found" is not an error: methods return
/// `Option` for it, so a database failure can never read as a missing row.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique value is already taken. `field` is the request field name.
    #[error("{field} '{value}' is already in use")]
    Conflict { field: &'static str, value: String },
    /// A referenced record is missing or unsuitable, for example a driver id
    /// that names a customer.
    #[error("{field} {rule}")]
    InvalidReference { field: &'static str, rule: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The person behind a change, as recorded in the history.
#[derive(Debug, Clone, Copy)]
pub struct Actor {
    pub user_id: Uuid,
    pub role: Role,
}

/// The set of cylinders a caller may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    /// Cylinders assigned to this customer.
    Customer(Uuid),
    /// Cylinders in this driver's custody.
    Driver(Uuid),
}

/// A page of results, numbered from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u32,
    pub per_page: u32,
}

impl PageRequest {
    pub const DEFAULT_PER_PAGE: u32 = 50;
    pub const MAX_PER_PAGE: u32 = 200;
    /// Maximum page number. Deep offsets get slow, and no person pages
    /// through 10,000 pages by hand.
    pub const MAX_PAGE: u32 = 10_000;

    pub fn offset(self) -> i64 {
        i64::from(self.page.saturating_sub(1)) * i64::from(self.per_page)
    }

    /// Rows to fetch: one more than a page, to learn whether another follows.
    pub fn fetch_limit(self) -> i64 {
        i64::from(self.per_page) + 1
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            page: 1,
            per_page: Self::DEFAULT_PER_PAGE,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: u32,
    pub per_page: u32,
    pub has_more: bool,
}

impl<T> Page<T> {
    /// Builds a page from rows fetched with [`PageRequest::fetch_limit`].
    pub fn from_rows(mut rows: Vec<T>, request: PageRequest) -> Self {
        let has_more = rows.len() > request.per_page as usize;
        rows.truncate(request.per_page as usize);
        Self {
            items: rows,
            page: request.page,
            per_page: request.per_page,
            has_more,
        }
    }
}

/// Filters of the cylinder list; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct CylinderFilter {
    pub status: Option<CylinderStatus>,
    pub tampered: Option<bool>,
    /// Expired means the requalification date is before `today`.
    pub expired: Option<bool>,
    pub customer_id: Option<Uuid>,
    pub driver_id: Option<Uuid>,
    pub depot_id: Option<Uuid>,
    /// The date that `expired` compares against; the current UTC date when
    /// `None`.
    pub today: Option<NaiveDate>,
}

#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    pub role: Option<Role>,
    pub active: Option<bool>,
}

/// Outcome of presenting a refresh token for rotation.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was valid and unused; `next` replaced it.
    Rotated,
    /// The token was already spent: the whole family is now revoked,
    /// because someone else may have a copy.
    Reused,
    /// No such token, or it expired, was revoked, or its user is inactive.
    Rejected,
}

/// Outcome of a status change.
#[derive(Debug)]
pub enum StatusChangeOutcome {
    Changed(CylinderRecord),
    /// The cylinder's status changed between the caller's read and this
    /// write. It contains the current record.
    Stale(CylinderRecord),
    NotFound,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations. This needs the right to create tables.
    async fn migrate(&self) -> StoreResult<()>;
    /// Counts migrations not yet applied; needs only read access.
    async fn pending_migrations(&self) -> StoreResult<usize>;
    /// Closes the pool after in-flight queries finish.
    async fn close(&self);
    /// Checks that the database responds.
    async fn ping(&self) -> StoreResult<()>;

    async fn create_user(&self, user: NewUserRecord, now: DateTime<Utc>)
    -> StoreResult<UserRecord>;
    async fn user(&self, id: Uuid) -> StoreResult<Option<UserRecord>>;
    async fn credentials(&self, username: &str) -> StoreResult<Option<Credentials>>;
    async fn list_users(
        &self,
        filter: &UserFilter,
        page: PageRequest,
    ) -> StoreResult<Page<UserRecord>>;
    /// Applies `changes`; deactivating a user revokes all their refresh
    /// tokens in the same transaction.
    async fn update_user(
        &self,
        id: Uuid,
        changes: UserChanges,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<UserRecord>>;

    async fn insert_refresh_token(&self, token: RefreshTokenRecord) -> StoreResult<()>;
    /// Marks `used` as spent and stores `next` in its place, or revokes the
    /// family when `used` was spent before.
    async fn rotate_refresh_token(
        &self,
        used: Uuid,
        next: RefreshTokenRecord,
        now: DateTime<Utc>,
    ) -> StoreResult<RefreshOutcome>;
    async fn revoke_token_family(&self, family: Uuid, now: DateTime<Utc>) -> StoreResult<()>;

    async fn create_depot(
        &self,
        depot: NewDepotRecord,
        now: DateTime<Utc>,
    ) -> StoreResult<DepotRecord>;
    async fn list_depots(&self) -> StoreResult<Vec<DepotRecord>>;

    /// Inserts the cylinder and its REGISTERED history entry.
    async fn register_cylinder(
        &self,
        cylinder: NewCylinderRecord,
        actor: Actor,
        now: DateTime<Utc>,
    ) -> StoreResult<CylinderRecord>;
    async fn cylinder(&self, id: Uuid, scope: Scope) -> StoreResult<Option<CylinderRecord>>;
    async fn list_cylinders(
        &self,
        filter: &CylinderFilter,
        scope: Scope,
        page: PageRequest,
    ) -> StoreResult<Page<CylinderRecord>>;
    /// Sets the status to `to` if it is still `expected`, with a
    /// STATUS_CHANGED history entry.
    async fn change_status(
        &self,
        change: StatusChange,
        actor: Actor,
        now: DateTime<Utc>,
    ) -> StoreResult<StatusChangeOutcome>;
    /// Sets custody after checking that each named user is active and has
    /// the right role, with an ASSIGNED history entry.
    async fn assign_cylinder(
        &self,
        assignment: Assignment,
        actor: Actor,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<CylinderRecord>>;
    async fn cylinder_history(
        &self,
        id: Uuid,
        page: PageRequest,
    ) -> StoreResult<Page<HistoryRecord>>;

    /// Returns the earlier scan that `scanner_id` sent with `client_scan_id`.
    async fn scan_by_client_id(
        &self,
        scanner_id: Uuid,
        client_scan_id: &str,
    ) -> StoreResult<Option<RecordedScan>>;
    /// Returns a scan with its cylinder's secret, to check an auth token.
    async fn scan_for_token(&self, scan_id: Uuid) -> StoreResult<Option<RecordedScan>>;
    /// Records a scan atomically: looks the code up, applies the cloning
    /// rules of `policy` in event-time order with no other write to the
    /// cylinder in between,
    /// writes the scan, its personal context and a SCANNED history entry,
    /// and when a rule fires also flags the cylinder, writes a
    /// TAMPER_DETECTED entry and queues a security event. `respond` builds
    /// the response that retries with the same client scan id get.
    async fn record_scan(
        &self,
        scan: ScanInput,
        policy: &TamperPolicy,
        respond: ScanResponder<'_>,
    ) -> StoreResult<ScanOutcome>;
    /// Lists a cylinder's scans, newest event first.
    async fn cylinder_scans(&self, id: Uuid, page: PageRequest) -> StoreResult<Page<ScanRecord>>;
    /// Sets or clears the tamper flag with a TAMPER_FLAGGED or
    /// TAMPER_CLEARED history entry.
    async fn set_tamper_flag(
        &self,
        id: Uuid,
        flagged: bool,
        notes: String,
        actor: Actor,
        now: DateTime<Utc>,
    ) -> StoreResult<TamperFlagOutcome>;
    /// Replaces a cylinder's codes and secret. The old codes go to the
    /// revoked list, so that scanning them gives REVOKED.
    async fn reissue_codes(
        &self,
        reissue: CodeReissue,
        actor: Actor,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<CylinderRecord>>;

    /// Lists chain heads in id order, after `after`, for the audit.
    async fn chain_heads(&self, after: Option<Uuid>, limit: i64) -> StoreResult<Vec<ChainHead>>;
    /// Returns a cylinder's whole history, oldest first, with its hashes.
    async fn chain_entries(&self, cylinder_id: Uuid) -> StoreResult<Vec<StoredEntry>>;
    /// Returns the scans of a cylinder, to match them with their history.
    async fn scan_links(&self, cylinder_id: Uuid) -> StoreResult<Vec<ScanLink>>;
    /// Counts the security events waiting for delivery.
    async fn pending_security_events(&self) -> StoreResult<i64>;
    /// Queues a security event that concerns no cylinder, such as a failed
    /// login. `details` is a JSON object.
    async fn record_security_event(
        &self,
        kind: &str,
        details: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
}

/// Connects to the configured database. Migrations are not applied here.
/// `chain_key` keys the hashes of the history chain.
pub async fn connect(target: &DatabaseTarget, chain_key: ChainKey) -> StoreResult<Arc<dyn Store>> {
    match target {
        DatabaseTarget::Sqlite { path } => {
            Ok(Arc::new(sqlite::SqliteStore::open(path, chain_key).await?))
        }
        DatabaseTarget::Postgres { url } => {
            use secrecy::ExposeSecret;
            let store = postgres::PostgresStore::connect(url.expose_secret(), chain_key).await?;
            Ok(Arc::new(store))
        }
    }
}
