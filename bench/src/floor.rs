//! The floor: the scan's logical work on the same database state without
//! HTTP, JSON or the service. On PostgreSQL, pgbench runs it as one SQL
//! statement per scan, the fewest round trips possible. On SQLite, it runs
//! as one transaction per scan in a tight loop through sqlx.

use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sqlx::{Connection, Executor};

use crate::report::Stat;
use crate::seed::{Database, Seeded};
use crate::{Args, Backend};

#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    pub connections: usize,
    pub method: &'static str,
    pub runs: Vec<f64>,
    pub throughput: Stat,
}

/// One scan as a single statement: lock and advance the cylinder's chain
/// head, count its scans in the rapid window, read its last located scan,
/// and insert the scan, its context and its history entry. md5() replaces
/// for the HMAC that the service computes in Rust. Event times are random
/// seconds in the 8 days before now, because with every floor scan at now(),
/// each run would add to the scans that the next run's window counts. The
/// floor would then fall from run to run. Seeded history ends before those
/// 8 days, so the located scan is found as for a live fleet.
const PGBENCH_SCRIPT: &str = r"\set n random(1, :cylinders)
\set driver random(1, :drivers)
\set second random(0, 691199)
WITH event AS (
  SELECT now() - :second * interval '1 second' AS at
), head AS (
  UPDATE cylinders SET last_scanned_at = now(), history_count = cylinders.history_count + 1,
    last_history_hash = md5(random()::text)
  FROM (SELECT id, last_history_hash AS prev_hash FROM cylinders
        WHERE qr_code = 'CYL-' || upper(substr(md5('qr' || :n), 1, 26)) FOR UPDATE) AS old
  WHERE cylinders.id = old.id
  RETURNING cylinders.id, cylinders.history_count, old.prev_hash, cylinders.last_history_hash
), recent AS (
  SELECT count(*) AS scans FROM cylinder_scans s JOIN head ON s.cylinder_id = head.id
  WHERE s.scanned_at > (SELECT at FROM event) - interval '5 minutes'
    AND s.scanned_at < (SELECT at FROM event) + interval '5 minutes'
), located AS (
  SELECT fix.scanned_at, fix.latitude, fix.longitude FROM head, LATERAL (
    SELECT s.scanned_at, x.latitude, x.longitude FROM cylinder_scans s JOIN scan_context x ON x.scan_id = s.id
    WHERE s.cylinder_id = head.id AND s.scanned_at <= (SELECT at FROM event) AND x.latitude IS NOT NULL
    ORDER BY s.scanned_at DESC LIMIT 1) AS fix
), scan AS (
  INSERT INTO cylinder_scans (id, cylinder_id, scan_type, result, scanned_code, scanner_id, scanner_role,
    verification_message, is_suspicious, suspicious_reason, scanned_at, received_at, response)
  SELECT gen_random_uuid(), head.id, 'QR', 'VALID', 'CYL-FLOOR', md5('driver' || :driver)::uuid, 'DRIVER',
    'Genuine cylinder, in service.', (SELECT scans FROM recent) > 5,
    (SELECT latitude::text FROM located), (SELECT at FROM event), now(), '{}' FROM head
  RETURNING id
), context AS (
  INSERT INTO scan_context (scan_id, ip_address, latitude, longitude, accuracy_m)
  SELECT id, '127.0.0.1', -1.28, 36.82, 15 FROM scan
)
INSERT INTO cylinder_history (id, cylinder_id, sequence, event_type, actor_id, actor_role, notes, details,
  created_at, prev_hash, entry_hash)
SELECT gen_random_uuid(), head.id, head.history_count, 'SCANNED', md5('driver' || :driver)::uuid, 'DRIVER', '',
  '{}', now(), head.prev_hash, head.last_history_hash FROM head;
";

/// Measures the floor once at `connections`, in scans per second.
pub async fn run_once(
    args: &Args,
    database: &Database,
    seeded: &Seeded,
    connections: usize,
) -> anyhow::Result<f64> {
    match (args.backend, database) {
        (Backend::Postgres, Database::Postgres { url, .. }) => {
            pgbench(args, url, connections).await
        }
        (Backend::Sqlite, Database::Sqlite { path, .. }) => {
            sqlite_loop(args, path, seeded, connections).await
        }
        _ => anyhow::bail!("backend and database do not match"),
    }
}

impl Floor {
    /// Summarises the floor's runs at one concurrency.
    pub fn of(args: &Args, connections: usize, runs: Vec<f64>) -> Self {
        let method = match args.backend {
            Backend::Postgres => "pgbench -M prepared, one statement per scan",
            Backend::Sqlite => "one transaction per scan through sqlx, no HTTP",
        };
        Self {
            connections,
            method,
            throughput: Stat::of(runs.clone()),
            runs,
        }
    }
}

/// Returns the path of this process's pgbench script.
pub fn script_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("cyltrack-floor-{}.sql", std::process::id()))
}

async fn pgbench(args: &Args, url: &str, connections: usize) -> anyhow::Result<f64> {
    let script = script_path();
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    let threads = connections.clamp(1, 2);
    let output = tokio::process::Command::new("pgbench")
        .args(["-n", "-M", "prepared"])
        .args([
            "-c",
            &connections.to_string(),
            "-j",
            &threads.to_string(),
            "-T",
            &args.duration.to_string(),
        ])
        .args([
            "-D",
            &format!("cylinders={}", args.cylinders),
            "-D",
            &format!("drivers={}", args.drivers),
        ])
        .arg("-f")
        .arg(&script)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let _ = std::fs::remove_file(&script);
    let output = output.context("cannot run pgbench; install PostgreSQL's client tools")?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {}{}",
        text,
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .find(|line| line.starts_with("tps = "))
        .and_then(|line| line.split_whitespace().nth(2))
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("no tps in pgbench output: {text}"))
}

/// Runs the scan's statements as one `BEGIN IMMEDIATE` transaction per scan,
/// with the server's pragmas, on `connections` connections at once.
async fn sqlite_loop(
    args: &Args,
    path: &std::path::Path,
    seeded: &Seeded,
    connections: usize,
) -> anyhow::Result<f64> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..connections {
        let options = options.clone();
        let codes = seeded.codes.clone();
        let drivers = args.drivers;
        workers.push(tokio::spawn(async move {
            let mut connection = sqlx::SqliteConnection::connect_with(&options).await?;
            let mut done = 0u64;
            let mut number = worker as u64 * 7_919;
            while Instant::now() < deadline {
                number += 1;
                let code =
                    &codes[(number.wrapping_mul(2_654_435_761) % codes.len() as u64) as usize];
                // Under contention SQLite can still return SQLITE_BUSY after
                // its busy timeout. The service would fail that request, so
                // the floor drops the transaction and goes on.
                match sqlite_scan(&mut connection, code, number % drivers + 1).await {
                    Ok(()) => done += 1,
                    Err(_) => {
                        let _ = connection.execute("ROLLBACK").await;
                    }
                }
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for worker in workers {
        total += worker.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn sqlite_scan(
    connection: &mut sqlx::SqliteConnection,
    code: &str,
    driver: u64,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    // A random event time in the 8 days before now, as in the PostgreSQL
    // floor.
    let second = (uuid::Uuid::new_v4().as_u128() % 691_200) as i64;
    let at = now - chrono::Duration::seconds(second);
    let driver_id = uuid::Uuid::from_u128(1_000_000_000 + u128::from(driver));
    connection.execute("BEGIN IMMEDIATE").await?;
    let head: Option<(uuid::Uuid, i64, String)> = sqlx::query_as(
        "UPDATE cylinders SET last_scanned_at = $2, history_count = history_count + 1 WHERE qr_code = $1 \
         RETURNING id, history_count, last_history_hash",
    )
    .bind(code)
    .bind(now)
    .fetch_optional(&mut *connection)
    .await?;
    let Some((cylinder_id, sequence, prev_hash)) = head else {
        connection.execute("ROLLBACK").await?;
        return Ok(());
    };
    let (_recent,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM cylinder_scans WHERE cylinder_id = $1 AND scanned_at > $2 AND scanned_at < $3",
    )
    .bind(cylinder_id)
    .bind(at - chrono::Duration::minutes(5))
    .bind(at + chrono::Duration::minutes(5))
    .fetch_one(&mut *connection)
    .await?;
    let _located: Option<(chrono::DateTime<chrono::Utc>, f64, f64)> = sqlx::query_as(
        "SELECT s.scanned_at, c.latitude, c.longitude FROM cylinder_scans s JOIN scan_context c ON c.scan_id = s.id \
         WHERE s.cylinder_id = $1 AND s.scanned_at <= $2 AND c.latitude IS NOT NULL ORDER BY s.scanned_at DESC LIMIT 1",
    )
    .bind(cylinder_id)
    .bind(at)
    .fetch_optional(&mut *connection)
    .await?;
    let scan_id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO cylinder_scans (id, cylinder_id, scan_type, result, scanned_code, scanner_id, scanner_role, \
         verification_message, is_suspicious, scanned_at, received_at, response) \
         VALUES ($1, $2, 'QR', 'VALID', $3, $4, 'DRIVER', 'Genuine cylinder, in service.', 0, $5, $6, '{}')",
    )
    .bind(scan_id)
    .bind(cylinder_id)
    .bind(code)
    .bind(driver_id)
    .bind(at)
    .bind(now)
    .execute(&mut *connection)
    .await?;
    sqlx::query("INSERT INTO scan_context (scan_id, ip_address, latitude, longitude, accuracy_m) VALUES ($1, '127.0.0.1', -1.28, 36.82, 15)")
        .bind(scan_id)
        .execute(&mut *connection)
        .await?;
    let entry_hash = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    sqlx::query(
        "INSERT INTO cylinder_history (id, cylinder_id, sequence, event_type, actor_id, actor_role, notes, details, \
         created_at, prev_hash, entry_hash) VALUES ($1, $2, $3, 'SCANNED', $4, 'DRIVER', '', '{}', $5, $6, $7)",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(cylinder_id)
    .bind(sequence)
    .bind(driver_id)
    .bind(now)
    .bind(&prev_hash)
    .bind(&entry_hash)
    .execute(&mut *connection)
    .await?;
    sqlx::query("UPDATE cylinders SET last_history_hash = $2 WHERE id = $1")
        .bind(cylinder_id)
        .bind(&entry_hash)
        .execute(&mut *connection)
        .await?;
    connection.execute("COMMIT").await?;
    Ok(())
}
