//! The PostgreSQL backend, for several instances sharing one database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use super::StoreResult;
use super::scans::impl_scan_store;
use super::shared::impl_store;
use crate::domain::audit::ChainKey;

/// Connections per instance. On a 2-core database server, more than about
/// 16 concurrent connections lowers throughput.
const MAX_CONNECTIONS: u32 = 16;

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

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
            .connect_with(options.application_name("cyltrack"))
            .await?;
        Ok(Self { pool, chain_key })
    }

    async fn run_migrations(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    /// Counts the embedded migrations that the database has not applied.
    /// Any error reading the migrations table counts all as pending, so that
    /// running them reports the real problem.
    async fn count_pending_migrations(&self) -> StoreResult<usize> {
        let migrator = sqlx::migrate!("./migrations/postgres");
        let query = "SELECT version FROM _sqlx_migrations WHERE success";
        let applied: Vec<(i64,)> = match sqlx::query_as(query).fetch_all(&self.pool).await {
            Ok(rows) => rows,
            Err(_) => return Ok(migrator.iter().count()),
        };
        let pending = migrator
            .iter()
            .filter(|migration| {
                !applied
                    .iter()
                    .any(|(version,)| *version == migration.version)
            })
            .count();
        Ok(pending)
    }

    async fn begin_write(&self) -> StoreResult<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }
}

impl_store!(PostgresStore, Postgres);
impl_scan_store!(PostgresStore, Postgres);
