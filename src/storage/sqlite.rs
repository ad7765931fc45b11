//! The embedded SQLite backend, the default for a single depot.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::StoreResult;
use super::models::ScanWritten;
use super::scans::impl_scan_store;
use super::shared::impl_store;
use crate::domain::audit::ChainKey;

/// The SQLite schema's migrations, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Connections in the pool. SQLite allows one writer at a time, so more
/// connections only help concurrent readers.
const MAX_CONNECTIONS: u32 = 8;

/// How often the background task copies the write-ahead log into the
/// database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// How long a writer waits for another writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    pool: SqlitePool,
    /// The one connection that write transactions use. SQLite allows one
    /// writer at a time, so writers wait here in order. SQLite's busy
    /// handler would instead sleep and retry, which cost waiting writers
    /// hundreds of milliseconds.
    writer: SqlitePool,
    chain_key: ChainKey,
}

impl SqliteStore {
    /// Opens or creates the database file at `path` in WAL mode with
    /// `synchronous=FULL`, so that a committed scan survives a power cut.
    pub async fn open(path: &Path, chain_key: ChainKey) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // Checkpoints run in the background task below, not in the
            // commit of whichever request crosses SQLite's threshold.
            .pragma("wal_autocheckpoint", "0");
        let created = !path.exists();
        // An open SQLite file does not drop its connections the way a
        // server can, so sqlx's test on every checkout only costs a message
        // to the connection's worker thread and back.
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(BUSY_TIMEOUT)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        // The file contains password hashes and cylinder secrets, so a new one
        // is readable by its owner only. SQLite gives its WAL and shared
        // memory files the same mode.
        #[cfg(unix)]
        if created {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(sqlx::Error::Io)?;
        }
        tokio::spawn(checkpoint_periodically(pool.clone()));
        Ok(Self {
            pool,
            writer,
            chain_key,
        })
    }

    /// Begins a transaction that takes the write lock at once. A deferred
    /// transaction that reads first and writes later can fail with
    /// SQLITE_BUSY when another writer commits in between.
    async fn begin_write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn close_writer(&self) {
        self.writer.close().await;
    }
}

/// Copies committed pages from the write-ahead log into the database file
/// every `CHECKPOINT_INTERVAL` until the pool closes. A passive checkpoint
/// never waits for readers or the writer, so requests do not wait for it.
/// SQLite's automatic checkpoint instead runs in the commit that crosses
/// its threshold, and that request pays for the copy and its fsync.
async fn checkpoint_periodically(pool: SqlitePool) {
    let mut failing = false;
    while !pool.is_closed() {
        tokio::time::sleep(CHECKPOINT_INTERVAL).await;
        if pool.is_closed() {
            break;
        }
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            Ok(_) => failing = false,
            Err(error) if !failing && !pool.is_closed() => {
                failing = true;
                tracing::warn!(error = %error, "SQLite checkpoint failed; retrying");
            }
            Err(_) => {}
        }
    }
}

/// Rebuilds every cylinder's rule memory from its scans, as migration 0003
/// did. [`super::postgres::REBUILD_RULE_MEMORY`] says what the result is.
pub const REBUILD_RULE_MEMORY: [&str; 2] = [
    "UPDATE cylinders SET recent_scans = '', recent_scans_after = ( \
       SELECT MAX(scanned_at) FROM cylinder_scans WHERE cylinder_id = cylinders.id)",
    "UPDATE cylinders SET (last_fix_scan_id, last_fix_at, last_fix_latitude, last_fix_longitude, \
       last_fix_accuracy_m) = ( \
       SELECT s.id, s.scanned_at, c.latitude, c.longitude, c.accuracy_m \
       FROM cylinder_scans s JOIN scan_context c ON c.scan_id = s.id \
       WHERE s.cylinder_id = cylinders.id AND c.latitude IS NOT NULL AND c.longitude IS NOT NULL \
       ORDER BY s.scanned_at DESC, s.id DESC LIMIT 1)",
];

impl SqliteStore {
    const CYLINDER_LOCKS: super::scans::CylinderLocks = super::scans::SQLITE_LOCKS;

    /// Leaves every scan to the locked path. SQLite runs in-process and its
    /// writes take turns anyway, so a transaction costs no round trips.
    async fn record_scan_unlocked(
        &self,
        _scan: &super::ScanInput,
        _policy: &crate::domain::scan::TamperPolicy,
        _respond: super::ScanResponder<'_>,
    ) -> StoreResult<Option<super::ScanOutcome>> {
        Ok(None)
    }

    /// Writes a scan's rows: the scan, its context, its SCANNED history
    /// entry with the new chain head, and the cylinder's rule memory.
    /// SQLite runs in-process, so separate statements cost no network round
    /// trips. Nothing is written unless the scanner is an active user with
    /// the scan's role. The write transaction has held the database since
    /// the cylinder was read, so the cylinder cannot have changed.
    async fn write_scan(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        write: &super::models::ScanWrite<'_>,
    ) -> Result<ScanWritten, sqlx::Error> {
        use super::scans::{INSERT_SCAN, INSERT_SCAN_CONTEXT, SCANNER_ACTIVE, SET_SCAN_STATE};

        let scan = write.scan;
        let scanner_active: bool = sqlx::query_scalar(SCANNER_ACTIVE)
            .bind(scan.scanner.user_id)
            .bind(scan.scanner.role.as_str())
            .fetch_one(&mut **tx)
            .await?;
        if !scanner_active {
            return Ok(ScanWritten::ScannerRejected);
        }
        sqlx::query(INSERT_SCAN)
            .bind(scan.id)
            .bind(write.cylinder_id)
            .bind(scan.scan_type.as_str())
            .bind(write.result.as_str())
            .bind(&scan.raw_code)
            .bind(scan.scanner.user_id)
            .bind(scan.scanner.role.as_str())
            .bind(write.message)
            .bind(write.suspicious_reason.is_some())
            .bind(write.suspicious_reason)
            .bind(scan.scanned_at)
            .bind(scan.received_at)
            .bind(scan.client_scan_id.as_deref())
            .bind(write.response)
            .execute(&mut **tx)
            .await?;
        if write.has_context() {
            sqlx::query(INSERT_SCAN_CONTEXT)
                .bind(scan.id)
                .bind(scan.ip_address.as_deref())
                .bind(scan.user_agent.as_deref())
                .bind(scan.position.map(|fix| fix.latitude))
                .bind(scan.position.map(|fix| fix.longitude))
                .bind(scan.position.and_then(|fix| fix.accuracy_m))
                .bind(scan.address.as_deref())
                .execute(&mut **tx)
                .await?;
        }
        if let Some(entry) = write.history {
            Self::insert_prepared_entry(tx, entry).await?;
        }
        if let (Some(entry), Some(memory)) = (write.history, write.memory) {
            let fix = write.last_fix();
            sqlx::query(SET_SCAN_STATE)
                .bind(entry.cylinder_id)
                .bind(scan.received_at)
                .bind(entry.sequence)
                .bind(memory.stored_times())
                .bind(memory.complete_after())
                .bind(fix.map(|fix| fix.scan_id))
                .bind(fix.map(|fix| fix.scan.at))
                .bind(fix.map(|fix| fix.scan.position.latitude))
                .bind(fix.map(|fix| fix.scan.position.longitude))
                .bind(fix.and_then(|fix| fix.scan.position.accuracy_m))
                .execute(&mut **tx)
                .await?;
        }
        Ok(ScanWritten::Written)
    }
}

impl_store!(SqliteStore, Sqlite);
impl_scan_store!(SqliteStore, Sqlite);
