//! The PostgreSQL backend, for several instances sharing one database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};

use super::StoreResult;
use super::models::ScanWritten;
use super::scans::impl_scan_store;
use super::shared::impl_store;
use crate::domain::audit::ChainKey;
use crate::domain::rule_memory::RuleMemory;

/// The PostgreSQL schema's migrations, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per instance. On a 2-core database server, more than about
/// 16 concurrent connections lowers throughput.
const MAX_CONNECTIONS: u32 = 16;

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection idle for longer than this is pinged before use, because a
/// server restart or a firewall may have closed it in the meantime. A busy
/// connection is not pinged: sqlx's default test pings on every checkout,
/// which adds a round trip to each one.
const PING_AFTER_IDLE: Duration = Duration::from_secs(30);

pub struct PostgresStore {
    pool: PgPool,
    chain_key: ChainKey,
}

impl PostgresStore {
    pub async fn connect(url: &str, chain_key: ChainKey) -> StoreResult<Self> {
        Self::connect_with(PgConnectOptions::from_str(url)?, chain_key).await
    }

    /// Connects with prepared options; tests use this to select a schema.
    pub async fn connect_with(options: PgConnectOptions, chain_key: ChainKey) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .before_acquire(|connection, metadata| {
                Box::pin(async move {
                    if metadata.idle_for > PING_AFTER_IDLE {
                        connection.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options.application_name("cyltrack"))
            .await?;
        Ok(Self { pool, chain_key })
    }

    async fn begin_write(&self) -> StoreResult<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// Does nothing: write transactions use the one pool.
    async fn close_writer(&self) {}
}

/// Rebuilds every cylinder's rule memory from its scans, as migration 0003
/// did, for scans loaded without the service, such as the benchmark's
/// seeded history. The memory then contains no times and is complete
/// after the cylinder's latest scan, and its last fix is the latest located
/// scan.
pub const REBUILD_RULE_MEMORY: [&str; 2] = [
    "UPDATE cylinders SET recent_scans = '', recent_scans_after = latest.scanned_at \
     FROM (SELECT cylinder_id, MAX(scanned_at) AS scanned_at FROM cylinder_scans \
           WHERE cylinder_id IS NOT NULL GROUP BY cylinder_id) AS latest \
     WHERE latest.cylinder_id = cylinders.id",
    "UPDATE cylinders SET last_fix_scan_id = fix.id, last_fix_at = fix.scanned_at, \
       last_fix_latitude = fix.latitude, last_fix_longitude = fix.longitude, last_fix_accuracy_m = fix.accuracy_m \
     FROM (SELECT DISTINCT ON (s.cylinder_id) s.cylinder_id, s.id, s.scanned_at, c.latitude, c.longitude, c.accuracy_m \
           FROM cylinder_scans s JOIN scan_context c ON c.scan_id = s.id \
           WHERE s.cylinder_id IS NOT NULL AND c.latitude IS NOT NULL AND c.longitude IS NOT NULL \
           ORDER BY s.cylinder_id, s.scanned_at DESC, s.id DESC) AS fix \
     WHERE fix.cylinder_id = cylinders.id",
];

/// A scan's rows in one statement: for a scan of a known cylinder, the
/// cylinder's new chain head, history count, last scan time and rule
/// memory, and its SCANNED history entry; the scan; and its context when it
/// has any. Each round trip to the server costs more than the statements'
/// work, so the scan path writes all four at once.
///
/// Nothing is written unless the scanner `$6` is an active user with the
/// role `$7`. The cylinder's row is updated only while its version is
/// still `$36`, the one the scan was judged against, and the scan's rows
/// are written only with that update. The statement returns whether the
/// scanner was confirmed and whether the scan was written.
const WRITE_SCAN: &str = "WITH scanner AS ( \
       SELECT 1 FROM users WHERE id = $6 AND role = $7 AND is_active \
     ), head AS ( \
       UPDATE cylinders SET last_history_hash = $27, last_scanned_at = $12, history_count = $23, \
         recent_scans = $29, recent_scans_after = $30, last_fix_scan_id = $31, last_fix_at = $32, \
         last_fix_latitude = $33, last_fix_longitude = $34, last_fix_accuracy_m = $35 \
       WHERE $28 AND id = $2 AND xmin::text = $36 AND EXISTS (SELECT 1 FROM scanner) RETURNING id \
     ), scan AS ( \
       INSERT INTO cylinder_scans (id, cylinder_id, scan_type, result, scanned_code, scanner_id, scanner_role, \
         verification_message, is_suspicious, suspicious_reason, scanned_at, received_at, client_scan_id, response) \
       SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 \
       WHERE EXISTS (SELECT 1 FROM scanner) AND (NOT $28 OR EXISTS (SELECT 1 FROM head)) RETURNING id \
     ), context AS ( \
       INSERT INTO scan_context (scan_id, ip_address, user_agent, latitude, longitude, accuracy_m, address) \
       SELECT id, $15, $16, $17, $18, $19, $20 FROM scan WHERE $21 \
     ), history AS ( \
       INSERT INTO cylinder_history (id, cylinder_id, sequence, event_type, actor_id, actor_role, from_status, \
         to_status, notes, details, created_at, prev_hash, entry_hash) \
       SELECT $22, $2, $23, 'SCANNED', $6, $7, NULL, NULL, '', $24, $25, $26, $27 FROM scan WHERE $28 \
     ) \
     SELECT EXISTS (SELECT 1 FROM scanner), EXISTS (SELECT 1 FROM scan)";

impl PostgresStore {
    const CYLINDER_LOCKS: super::scans::CylinderLocks = super::scans::POSTGRES_LOCKS;

    /// Records a scan without a transaction: the cylinder is read without
    /// a lock, and the one write statement happens only if the row has not
    /// changed since. That takes two round trips where the locked path
    /// takes four, and most scans need no more. The write also confirms the
    /// scanner, so the scan route needs no user look-up of its own.
    ///
    /// Returns `None`, having written nothing, when the scan must take the
    /// locked path instead: another scan of the cylinder came in between,
    /// or the scan is suspicious, because flagging the cylinder takes more
    /// statements than one.
    async fn record_scan_unlocked(
        &self,
        scan: &super::ScanInput,
        policy: &crate::domain::scan::TamperPolicy,
        respond: super::ScanResponder<'_>,
    ) -> StoreResult<Option<super::ScanOutcome>> {
        let mut connection = self.pool.acquire().await?;
        let judged = self
            .judge_scan(
                &mut connection,
                &super::scans::POSTGRES_READS,
                scan,
                policy,
                respond,
            )
            .await?;
        if judged.suspicious_reason.is_some() {
            return Ok(None);
        }
        let written = self.write_scan(&mut connection, &judged.write(scan)).await;
        // A raced retry's first scan is read through the pool, so this
        // connection goes back first.
        drop(connection);
        match written {
            Ok(ScanWritten::Written) => Ok(Some(super::ScanOutcome::Recorded(
                judged.into_recorded(scan),
            ))),
            Ok(ScanWritten::Stale) => Ok(None),
            Ok(ScanWritten::ScannerRejected) => Ok(Some(super::ScanOutcome::ScannerRejected)),
            Err(error) => match self.first_of_raced_retry(&error, scan).await? {
                Some(first) => Ok(Some(super::ScanOutcome::Replayed(first))),
                None => Err(error.into()),
            },
        }
    }

    /// Runs [`WRITE_SCAN`] and returns what it did.
    async fn write_scan(
        &self,
        connection: &mut PgConnection,
        write: &super::models::ScanWrite<'_>,
    ) -> Result<ScanWritten, sqlx::Error> {
        let scan = write.scan;
        let history = write.history;
        let memory = write.memory;
        let fix = write.last_fix();
        let (scanner_active, written): (bool, bool) = sqlx::query_as(WRITE_SCAN)
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
            .bind(scan.ip_address.as_deref())
            .bind(scan.user_agent.as_deref())
            .bind(scan.position.map(|fix| fix.latitude))
            .bind(scan.position.map(|fix| fix.longitude))
            .bind(scan.position.and_then(|fix| fix.accuracy_m))
            .bind(scan.address.as_deref())
            .bind(write.has_context())
            .bind(history.map(|entry| entry.id))
            .bind(history.map(|entry| entry.sequence))
            .bind(history.map(|entry| entry.details.as_str()))
            .bind(history.map(|entry| entry.created_at))
            .bind(history.map(|entry| entry.prev_hash.as_str()))
            .bind(history.map(|entry| entry.entry_hash.as_str()))
            .bind(history.is_some())
            .bind(memory.map(RuleMemory::stored_times))
            .bind(memory.and_then(RuleMemory::complete_after))
            .bind(fix.map(|fix| fix.scan_id))
            .bind(fix.map(|fix| fix.scan.at))
            .bind(fix.map(|fix| fix.scan.position.latitude))
            .bind(fix.map(|fix| fix.scan.position.longitude))
            .bind(fix.and_then(|fix| fix.scan.position.accuracy_m))
            .bind(write.version)
            .fetch_one(&mut *connection)
            .await?;
        Ok(match (scanner_active, written) {
            (false, _) => ScanWritten::ScannerRejected,
            (true, false) => ScanWritten::Stale,
            (true, true) => ScanWritten::Written,
        })
    }
}

impl_store!(PostgresStore, Postgres);
impl_scan_store!(PostgresStore, Postgres);
