//! Creates the benchmark database and seeds a fleet directly in SQL, which
//! is far faster than the API for millions of rows.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use anyhow::Context;
use sqlx::{Connection, Executor};

use crate::{Args, Backend};

/// The benchmark's own database.
pub enum Database {
    Sqlite { dir: PathBuf, path: PathBuf },
    Postgres { name: String, url: String },
}

impl Database {
    pub async fn create(args: &Args) -> anyhow::Result<Self> {
        let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S");
        match args.backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir()
                    .join(format!("cyltrack-bench-{stamp}-{}", std::process::id()));
                std::fs::create_dir_all(&dir)?;
                let path = dir.join("bench.db");
                Ok(Database::Sqlite { dir, path })
            }
            Backend::Postgres => {
                let name = format!("cyltrack_bench_{stamp}_{}", std::process::id());
                let mut admin = sqlx::PgConnection::connect(&args.postgres_admin_url).await?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await?;
                admin.close().await?;
                let options = sqlx::postgres::PgConnectOptions::from_str(&args.postgres_admin_url)?
                    .database(&name);
                // The server and pgbench connect with the admin URL's
                // parameters, such as its sslmode.
                let parameters = args
                    .postgres_admin_url
                    .split_once('?')
                    .map(|(_, query)| format!("?{query}"))
                    .unwrap_or_default();
                let url = format!(
                    "postgres://{}@{}:{}/{name}{parameters}",
                    options.get_username(),
                    options.get_host(),
                    options.get_port()
                );
                Ok(Database::Postgres { name, url })
            }
        }
    }

    /// Returns the `DATABASE_URL` the server gets.
    pub fn url(&self) -> String {
        match self {
            Database::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            Database::Postgres { url, .. } => url.clone(),
        }
    }

    /// Writes the previous measurement's pages to disk, so that the next one
    /// does not pay for them. PostgreSQL runs a `CHECKPOINT`. SQLite copies
    /// the whole write-ahead log into the database file, syncs it and
    /// empties the log. A failure, such as a PostgreSQL role that may not
    /// checkpoint, prints a warning and the run goes on.
    ///
    /// PostgreSQL first runs `ANALYZE`, as autovacuum would, because a
    /// server with autovacuum off never updates the statistics of the
    /// growing tables. The service's connections would then keep plans
    /// made while the tables were empty: the foreign-key check of each
    /// scan's context scanned the whole scans table.
    pub async fn settle(&self, args: &Args) {
        let result = match self {
            Database::Postgres { url, .. } => {
                async {
                    let mut database = sqlx::PgConnection::connect(url).await?;
                    database.execute("ANALYZE").await?;
                    database.close().await?;
                    let mut admin = sqlx::PgConnection::connect(&args.postgres_admin_url).await?;
                    admin.execute("CHECKPOINT").await?;
                    admin.close().await
                }
                .await
            }
            Database::Sqlite { path, .. } => {
                async {
                    let options = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite:")?
                        .filename(path)
                        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                        .busy_timeout(std::time::Duration::from_secs(10));
                    let mut connection = sqlx::SqliteConnection::connect_with(&options).await?;
                    connection
                        .execute("PRAGMA wal_checkpoint(TRUNCATE)")
                        .await?;
                    connection.close().await
                }
                .await
            }
        };
        if let Err(error) = result {
            eprintln!("warning: the checkpoint before the measurement failed: {error}");
        }
    }

    pub async fn drop_database(&self, args: &Args) {
        match self {
            Database::Sqlite { dir, .. } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Database::Postgres { name, .. } => {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&args.postgres_admin_url).await {
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            }
        }
    }
}

/// The seeded fleet's codes and ids, for the load generator and the floor.
pub struct Seeded {
    pub codes: Vec<String>,
    /// Ids of the cylinders, in the same order as `codes`.
    pub ids: Vec<uuid::Uuid>,
    pub seconds: f64,
}

/// The `SECRET_KEY` that the benchmark server runs with.
pub const SECRET_KEY: &str = "benchmark-secret-key-0123456789abcdef0123456789abcdef";
pub const JWT_SECRET_KEY: &str = "benchmark-jwt-key-0123456789abcdef0123456789abcdef0123";
/// Days between the latest seeded scan and the start of the benchmark: one
/// day before the load's first event time.
const HISTORY_END_DAYS_AGO: i64 = crate::load::LOAD_START_DAYS_AGO + 1;

/// Password of every benchmark driver.
pub const DRIVER_PASSWORD: &str = "benchmark driver password";

pub async fn seed(args: &Args, database: &Database) -> anyhow::Result<Seeded> {
    let started = Instant::now();
    let chain_key = cyltrack::domain::audit::ChainKey::derive(SECRET_KEY.as_bytes());
    let target = match database {
        Database::Sqlite { path, .. } => {
            cyltrack::config::DatabaseTarget::Sqlite { path: path.clone() }
        }
        Database::Postgres { url, .. } => cyltrack::config::DatabaseTarget::Postgres {
            url: url.clone().into(),
        },
    };
    let store = cyltrack::storage::connect(&target, chain_key).await?;
    store.migrate().await?;
    store.close().await;

    let password_hash = cyltrack::auth::password::hash_blocking(DRIVER_PASSWORD)?;
    let rows = match database {
        Database::Postgres { url, .. } => seed_postgres(args, url, &password_hash).await?,
        Database::Sqlite { path, .. } => seed_sqlite(args, path, &password_hash).await?,
    };
    let (ids, codes) = rows.into_iter().unzip();
    Ok(Seeded {
        codes,
        ids,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn seed_postgres(
    args: &Args,
    url: &str,
    password_hash: &str,
) -> anyhow::Result<Vec<(uuid::Uuid, String)>> {
    let mut connection = sqlx::PgConnection::connect(url).await?;
    sqlx::query(
        "INSERT INTO users (id, username, full_name, role, password_hash, is_active, created_at, updated_at) \
         SELECT md5('driver' || i)::uuid, 'bench.driver' || i, 'Bench Driver ' || i, 'DRIVER', $1, TRUE, now(), now() \
         FROM generate_series(1, $2::bigint) AS i",
    )
    .bind(password_hash)
    .bind(args.drivers as i64)
    .execute(&mut connection)
    .await
    .context("seeding drivers")?;
    sqlx::query(
        "INSERT INTO users (id, username, full_name, role, password_hash, is_active, created_at, updated_at) \
         VALUES (md5('admin')::uuid, 'bench.admin', 'Bench Admin', 'ADMIN', $1, TRUE, now(), now())",
    )
    .bind(password_hash)
    .execute(&mut connection)
    .await
    .context("seeding the admin")?;

    sqlx::query(
        "INSERT INTO cylinders (id, serial_number, brand, capacity_kg, qr_code, rfid_tag, secret_key, auth_hash, \
           status, is_tampered, tamper_notes, manufacture_date, expiry_date, created_at, updated_at) \
         SELECT md5('cylinder' || i)::uuid, 'BN-' || lpad(i::text, 9, '0'), 'Bench Gas', \
           CASE WHEN i % 3 = 0 THEN 6 ELSE 13 END, 'CYL-' || upper(substr(md5('qr' || i), 1, 26)), \
           upper(substr(md5('rfid' || i), 1, 24)), decode(md5('a' || i) || md5('b' || i), 'hex'), md5('hash' || i), \
           'FILLED', FALSE, '', DATE '2022-01-01', DATE '2032-01-01', now(), now() \
         FROM generate_series(1, $1::bigint) AS i",
    )
    .bind(args.cylinders as i64)
    .execute(&mut connection)
    .await
    .context("seeding cylinders")?;

    if args.history > 0 {
        // Historical scans spread over the 90 days before the day ahead of
        // the load's first event time, every second one with a position,
        // so that the rules' look-ups meet a realistic table.
        sqlx::query(
            "INSERT INTO cylinder_scans (id, cylinder_id, scan_type, result, scanned_code, scanner_id, scanner_role, \
               verification_message, is_suspicious, scanned_at, received_at, response) \
             SELECT md5('scan' || i)::uuid, md5('cylinder' || ((i * 7919) % $2 + 1))::uuid, 'QR', 'VALID', 'CYL-SEEDED', \
               md5('driver' || (i % $3 + 1))::uuid, 'DRIVER', 'Genuine cylinder, in service.', FALSE, \
               now() - $4 * interval '1 day' - (i % 7776000) * interval '1 second', \
               now() - $4 * interval '1 day' - (i % 7776000) * interval '1 second', '{}' \
             FROM generate_series(1, $1::bigint) AS i",
        )
        .bind(args.history as i64)
        .bind(args.cylinders as i64)
        .bind(args.drivers as i64)
        .bind(HISTORY_END_DAYS_AGO as f64)
        .execute(&mut connection)
        .await
        .context("seeding scans")?;
        sqlx::query(
            "INSERT INTO scan_context (scan_id, ip_address, latitude, longitude, accuracy_m) \
             SELECT md5('scan' || i)::uuid, '10.0.0.1', -1.28 + (i % 100) * 0.001, 36.82 + (i % 97) * 0.001, 15 \
             FROM generate_series(2, $1::bigint, 2) AS i",
        )
        .bind(args.history as i64)
        .execute(&mut connection)
        .await
        .context("seeding scan context")?;
        for statement in cyltrack::storage::postgres::REBUILD_RULE_MEMORY {
            connection
                .execute(statement)
                .await
                .context("rebuilding the cylinders' rule memory")?;
        }
    }
    connection.execute("VACUUM ANALYZE").await?;
    let rows: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, qr_code FROM cylinders ORDER BY serial_number")
            .fetch_all(&mut connection)
            .await?;
    Ok(rows)
}

async fn seed_sqlite(
    args: &Args,
    path: &std::path::Path,
    password_hash: &str,
) -> anyhow::Result<Vec<(uuid::Uuid, String)>> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .foreign_keys(true);
    let mut connection = sqlx::SqliteConnection::connect_with(&options).await?;
    // Ids are 16-byte blobs made from a number, so that scans can name their
    // cylinder and driver without a join.
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
         INSERT INTO users (id, username, full_name, role, password_hash, is_active, created_at, updated_at) \
         SELECT unhex(printf('%032x', 1000000000 + i)), 'bench.driver' || i, 'Bench Driver ' || i, 'DRIVER', $1, 1, \
           strftime('%Y-%m-%dT%H:%M:%fZ'), strftime('%Y-%m-%dT%H:%M:%fZ') FROM n",
    )
    .bind(password_hash)
    .bind(args.drivers as i64)
    .execute(&mut connection)
    .await
    .context("seeding drivers")?;
    sqlx::query(
        "INSERT INTO users (id, username, full_name, role, password_hash, is_active, created_at, updated_at) \
         VALUES (unhex(printf('%032x', 999999999)), 'bench.admin', 'Bench Admin', 'ADMIN', $1, 1, \
           strftime('%Y-%m-%dT%H:%M:%fZ'), strftime('%Y-%m-%dT%H:%M:%fZ'))",
    )
    .bind(password_hash)
    .execute(&mut connection)
    .await
    .context("seeding the admin")?;

    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO cylinders (id, serial_number, brand, capacity_kg, qr_code, rfid_tag, secret_key, auth_hash, \
           status, is_tampered, tamper_notes, manufacture_date, expiry_date, created_at, updated_at) \
         SELECT unhex(printf('%032x', i)), 'BN-' || printf('%09d', i), 'Bench Gas', CASE WHEN i % 3 = 0 THEN 6 ELSE 13 END, \
           'CYL-' || hex(randomblob(13)), hex(randomblob(12)), randomblob(32), hex(randomblob(32)), 'FILLED', 0, '', \
           '2022-01-01', '2032-01-01', strftime('%Y-%m-%dT%H:%M:%fZ'), strftime('%Y-%m-%dT%H:%M:%fZ') FROM n",
    )
    .bind(args.cylinders as i64)
    .execute(&mut connection)
    .await
    .context("seeding cylinders")?;

    if args.history > 0 {
        let history_end = chrono::Utc::now() - chrono::Duration::days(HISTORY_END_DAYS_AGO);
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
             INSERT INTO cylinder_scans (id, cylinder_id, scan_type, result, scanned_code, scanner_id, scanner_role, \
               verification_message, is_suspicious, scanned_at, received_at, response) \
             SELECT unhex(printf('%032x', 2000000000 + i)), unhex(printf('%032x', (i * 7919) % $2 + 1)), 'QR', 'VALID', \
               'CYL-SEEDED', unhex(printf('%032x', 1000000000 + i % $3 + 1)), 'DRIVER', 'Genuine cylinder, in service.', 0, \
               strftime('%Y-%m-%dT%H:%M:%f+00:00', $4, '-' || (i % 7776000) || ' seconds'), \
               strftime('%Y-%m-%dT%H:%M:%f+00:00', $4, '-' || (i % 7776000) || ' seconds'), '{}' FROM n",
        )
        .bind(args.history as i64)
        .bind(args.cylinders as i64)
        .bind(args.drivers as i64)
        .bind(history_end.format("%Y-%m-%d %H:%M:%S").to_string())
        .execute(&mut connection)
        .await
        .context("seeding scans")?;
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 2 FROM n WHERE i + 2 <= $1) \
             INSERT INTO scan_context (scan_id, ip_address, latitude, longitude, accuracy_m) \
             SELECT unhex(printf('%032x', 2000000000 + i)), '10.0.0.1', -1.28 + (i % 100) * 0.001, 36.82 + (i % 97) * 0.001, 15 FROM n",
        )
        .bind(args.history as i64)
        .execute(&mut connection)
        .await
        .context("seeding scan context")?;
        for statement in cyltrack::storage::sqlite::REBUILD_RULE_MEMORY {
            connection
                .execute(statement)
                .await
                .context("rebuilding the cylinders' rule memory")?;
        }
    }
    connection.execute("ANALYZE").await?;
    let rows: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, qr_code FROM cylinders ORDER BY serial_number")
            .fetch_all(&mut connection)
            .await?;
    Ok(rows)
}
