//! The audit tables: append-only enforcement in the database, `audit
//! verify` in the library and the CLI, and the PostgreSQL grants of a
//! restricted service role.

use std::process::{Command, Output};

use cyltrack::audit::{
    AuditReport, BrokenCylinder, Identifier, grant_statements, verify, verify_in_pages,
};
use cyltrack::domain::Role;
use cyltrack::domain::audit::ChainBreak;
use cyltrack::domain::scan::{ScanType, TamperPolicy};
use cyltrack::storage::postgres::PostgresStore;
use cyltrack::storage::{
    Actor, ScanDraft, ScanInput, ScanOutcome, StatusChange, StatusChangeOutcome, Store,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Backend, RawDatabase, RawPool, TEST_SECRET_KEY, TestApp, on_both_backends, postgres_url,
    raw_postgres_pool, test_chain_key,
};

on_both_backends!(
    audit_tables_reject_changes,
    verify_passes_after_activity,
    verify_pages_through_cylinders,
    edited_entry_is_reported,
    deleted_entry_is_reported,
    edited_scan_is_reported,
);

/// Serial numbers of the cylinders that [`busy_app`] registers.
const SERIALS: [&str; 3] = ["AU-0001", "AU-0002", "AU-0003"];

/// History entries per cylinder after [`busy_app`]: REGISTERED, two
/// STATUS_CHANGED and SCANNED.
const ENTRIES_PER_CYLINDER: u64 = 4;

/// A cylinder that [`busy_app`] registered, with its one scan.
struct Registered {
    id: Uuid,
    serial: &'static str,
    qr_code: String,
    scan_id: Uuid,
}

fn uuid_of(value: &Value) -> Uuid {
    value
        .as_str()
        .and_then(|text| Uuid::parse_str(text).ok())
        .unwrap_or_else(|| panic!("not a UUID: {value}"))
}

/// Scans a QR code through the API and returns the scan's JSON.
async fn scan_qr(app: &TestApp, token: &str, qr_code: &str) -> Value {
    let (status, body) = app
        .post(
            "/api/v1/scans",
            token,
            json!({"code": qr_code, "scan_type": "QR"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "scan {qr_code}: {body}");
    body
}

/// Starts a server and, through the API, registers the cylinders of
/// [`SERIALS`], moves each to FILLED and then IN_TRANSIT, and scans each
/// once. Returns the server, the dispatcher who did it and the cylinders.
async fn busy_app(backend: Backend) -> (TestApp, Actor, String, Vec<Registered>) {
    let app = TestApp::spawn(backend).await;
    let (user, token) = app.user_with_token("dispatcher", Role::Dispatcher).await;
    let mut cylinders = Vec::new();
    for serial in SERIALS {
        let body = app.register_cylinder(&token, serial).await;
        let id = uuid_of(&body["id"]);
        for next in ["FILLED", "IN_TRANSIT"] {
            let (status, changed) = app
                .patch(
                    &format!("/api/v1/cylinders/{id}/status"),
                    &token,
                    json!({"status": next, "notes": "audit test"}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{serial} to {next}: {changed}");
        }
        let qr_code = body["qr_code"].as_str().unwrap_or_default().to_string();
        let scan = scan_qr(&app, &token, &qr_code).await;
        assert_eq!(scan["result"], "VALID", "scan of {serial}: {scan}");
        cylinders.push(Registered {
            id,
            serial,
            qr_code,
            scan_id: uuid_of(&scan["scan_id"]),
        });
    }
    let actor = Actor {
        user_id: user.id,
        role: Role::Dispatcher,
    };
    (app, actor, token, cylinders)
}

/// SQL that selects the id of the cylinder with `serial`.
fn cylinder_id_sql(serial: &str) -> String {
    format!("(SELECT id FROM cylinders WHERE serial_number = '{serial}')")
}

/// Removes the database trigger that rejects `operation` ("update" or
/// "delete") on `table`, as someone with the owner's rights could.
async fn remove_guard(pool: &RawPool, table: &str, operation: &str) {
    let sql = match pool {
        RawPool::Sqlite(_) => format!("DROP TRIGGER {table}_no_{operation}"),
        RawPool::Postgres(_) => {
            format!("ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
        }
    };
    pool.execute(&sql)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

async fn verified(app: &TestApp) -> AuditReport {
    verify(app.store.as_ref(), &test_chain_key())
        .await
        .unwrap_or_else(|error| panic!("verify: {error}"))
}

/// Reads every history entry and scan as text, to show that nothing changed.
async fn audit_snapshot(pool: &RawPool) -> (Vec<String>, Vec<String>) {
    let history = pool
        .texts(
            "SELECT CAST(sequence AS TEXT) || ':' || event_type || ':' || notes || ':' || entry_hash \
             FROM cylinder_history ORDER BY entry_hash",
        )
        .await;
    let scans = pool
        .texts(
            "SELECT result || ':' || scanned_code || ':' || verification_message \
             FROM cylinder_scans ORDER BY scanned_code",
        )
        .await;
    (history, scans)
}

async fn audit_tables_reject_changes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user_with_token("dispatcher", Role::Dispatcher).await.1;
    let body = app.register_cylinder(&token, "AO-0001").await;
    let qr_code = body["qr_code"].as_str().unwrap_or_default();
    scan_qr(&app, &token, qr_code).await;

    let pool = app.database.pool().await;
    let before = audit_snapshot(&pool).await;
    assert_eq!(before.0.len(), 2, "REGISTERED and SCANNED: {before:?}");
    assert_eq!(before.1.len(), 1, "one scan: {before:?}");

    let mut statements = vec![
        "UPDATE cylinder_history SET notes = 'edited'",
        "DELETE FROM cylinder_history",
        "UPDATE cylinder_scans SET result = 'FAILED'",
        "DELETE FROM cylinder_scans",
    ];
    if backend == Backend::Postgres {
        // SQLite has no TRUNCATE. CASCADE gets past the foreign keys of
        // scan_context and security_events, so only the trigger can stop it.
        statements.push("TRUNCATE cylinder_history");
        statements.push("TRUNCATE cylinder_scans CASCADE");
    }
    for sql in statements {
        let outcome = pool.execute(sql).await;
        let message = outcome
            .as_ref()
            .map_err(ToString::to_string)
            .err()
            .unwrap_or_default();
        assert!(outcome.is_err(), "{sql} must fail: {outcome:?}");
        assert!(
            message.contains("is append-only"),
            "{sql} must be stopped by the trigger: {message}"
        );
    }

    let after = audit_snapshot(&pool).await;
    assert_eq!(after.0, before.0, "history rows unchanged");
    assert_eq!(after.1, before.1, "scan rows unchanged");
    pool.close().await;
    app.stop().await;
}

async fn verify_passes_after_activity(backend: Backend) {
    let (app, _, _, _) = busy_app(backend).await;
    let report = verified(&app).await;
    assert!(report.is_intact(), "broken: {:?}", report.broken);
    assert_eq!(report.cylinders_checked, 3, "cylinders checked");
    assert_eq!(
        report.entries_checked,
        3 * ENTRIES_PER_CYLINDER,
        "entries checked"
    );
    assert_eq!(report.scans_checked, 3, "scans checked");
    app.stop().await;
}

async fn verify_pages_through_cylinders(backend: Backend) {
    let (app, _, _, cylinders) = busy_app(backend).await;
    let pool = app.database.pool().await;
    remove_guard(&pool, "cylinder_history", "update").await;
    for cylinder in &cylinders {
        let edited = pool
            .execute(&format!(
                "UPDATE cylinder_history SET notes = 'edited' WHERE sequence = 1 AND cylinder_id = {}",
                cylinder_id_sql(cylinder.serial)
            ))
            .await;
        assert_eq!(
            edited.ok(),
            Some(1),
            "{}: one entry edited",
            cylinder.serial
        );
    }
    let mut expected: Vec<Uuid> = cylinders.iter().map(|cylinder| cylinder.id).collect();
    expected.sort();

    // Page sizes below, at and above the number of cylinders, so that the
    // last page is short, full or the only one.
    for heads_per_page in [1, 2, 3, 4] {
        let report = verify_in_pages(app.store.as_ref(), &test_chain_key(), heads_per_page)
            .await
            .unwrap_or_else(|error| panic!("verify: {error}"));
        let found: Vec<Uuid> = report
            .broken
            .iter()
            .map(|broken| broken.cylinder_id)
            .collect();
        assert_eq!(
            report.cylinders_checked, 3,
            "{heads_per_page} per page: cylinders checked"
        );
        assert_eq!(
            found, expected,
            "{heads_per_page} per page: each cylinder once, in id order"
        );
    }
    pool.close().await;
    app.stop().await;
}

async fn edited_entry_is_reported(backend: Backend) {
    let (app, _, _, cylinders) = busy_app(backend).await;
    let target = &cylinders[1];
    let pool = app.database.pool().await;
    remove_guard(&pool, "cylinder_history", "update").await;
    let edited = pool
        .execute(&format!(
            "UPDATE cylinder_history SET notes = 'edited' WHERE sequence = 2 AND cylinder_id = {}",
            cylinder_id_sql(target.serial)
        ))
        .await;
    assert_eq!(edited.ok(), Some(1), "one entry edited");

    let report = verified(&app).await;
    let expected = BrokenCylinder {
        cylinder_id: target.id,
        serial_number: target.serial.to_string(),
        problem: ChainBreak::Changed { position: 2 },
    };
    assert_eq!(report.broken, vec![expected], "only the edited cylinder");
    assert_eq!(report.cylinders_checked, 3, "every cylinder still checked");
    let message = report.broken[0].problem.to_string();
    assert!(
        message.contains("entry 2"),
        "message names the position: {message}"
    );
    pool.close().await;
    app.stop().await;
}

async fn deleted_entry_is_reported(backend: Backend) {
    let (app, _, _, cylinders) = busy_app(backend).await;
    let target = &cylinders[2];
    let pool = app.database.pool().await;
    remove_guard(&pool, "cylinder_history", "delete").await;
    let deleted = pool
        .execute(&format!(
            "DELETE FROM cylinder_history WHERE sequence = 2 AND cylinder_id = {}",
            cylinder_id_sql(target.serial)
        ))
        .await;
    assert_eq!(deleted.ok(), Some(1), "one entry deleted");

    let report = verified(&app).await;
    let expected = BrokenCylinder {
        cylinder_id: target.id,
        serial_number: target.serial.to_string(),
        problem: ChainBreak::Missing {
            position: 3,
            previous: 1,
        },
    };
    assert_eq!(
        report.broken,
        vec![expected],
        "only the cylinder with a gap"
    );
    assert_eq!(
        report.entries_checked,
        3 * ENTRIES_PER_CYLINDER - 1,
        "entries checked"
    );
    pool.close().await;
    app.stop().await;
}

async fn edited_scan_is_reported(backend: Backend) {
    let (app, _, _, cylinders) = busy_app(backend).await;
    let target = &cylinders[0];
    let pool = app.database.pool().await;
    remove_guard(&pool, "cylinder_scans", "update").await;
    let edited = pool
        .execute(&format!(
            "UPDATE cylinder_scans SET result = 'FAILED' WHERE cylinder_id = {}",
            cylinder_id_sql(target.serial)
        ))
        .await;
    assert_eq!(edited.ok(), Some(1), "one scan edited");

    let report = verified(&app).await;
    let expected = BrokenCylinder {
        cylinder_id: target.id,
        serial_number: target.serial.to_string(),
        problem: ChainBreak::ScanMismatch {
            scan_id: target.scan_id,
        },
    };
    assert_eq!(
        report.broken,
        vec![expected],
        "only the cylinder of the scan"
    );
    pool.close().await;
    app.stop().await;
}

/// Runs the cyltrack binary on the SQLite database at `path`, with only
/// the secrets and the database in its environment.
async fn run_cyltrack(path: &std::path::Path, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("temp dir: {error}"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_cyltrack"));
    command
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SECRET_KEY", TEST_SECRET_KEY)
        .env("JWT_SECRET_KEY", "j".repeat(48))
        .env("DATABASE_URL", format!("sqlite://{}", path.display()));
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap_or_else(|error| panic!("join: {error}"))
        .unwrap_or_else(|error| panic!("run cyltrack: {error}"));
    drop(dir);
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_verify_reports_breaks() {
    let (app, _, _, cylinders) = busy_app(Backend::Sqlite).await;
    let RawDatabase::Sqlite { path } = app.database.clone() else {
        panic!("a SQLite app has a SQLite database")
    };

    let intact = run_cyltrack(&path, &["audit", "verify"]).await;
    let stdout = String::from_utf8_lossy(&intact.stdout);
    assert_eq!(
        intact.status.code(),
        Some(0),
        "intact exit code; stdout: {stdout}; stderr: {}",
        String::from_utf8_lossy(&intact.stderr)
    );
    assert!(
        stdout.contains("history intact: 3 cylinders, 12 history entries and 3 scans checked"),
        "summary: {stdout}"
    );

    let target = &cylinders[1];
    let pool = app.database.pool().await;
    remove_guard(&pool, "cylinder_history", "update").await;
    let edited = pool
        .execute(&format!(
            "UPDATE cylinder_history SET notes = 'edited' WHERE sequence = 3 AND cylinder_id = {}",
            cylinder_id_sql(target.serial)
        ))
        .await;
    assert_eq!(edited.ok(), Some(1), "one entry edited");
    pool.close().await;

    let broken = run_cyltrack(&path, &["audit", "verify"]).await;
    let stdout = String::from_utf8_lossy(&broken.stdout);
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert_eq!(broken.status.code(), Some(1), "broken exit code: {stderr}");
    let line = format!(
        "BROKEN {} ({}): entry 3 was changed",
        target.serial, target.id
    );
    assert!(stdout.contains(&line), "expected {line:?} in: {stdout}");
    assert_eq!(
        stdout.matches("BROKEN").count(),
        1,
        "one broken cylinder: {stdout}"
    );
    assert!(
        stderr.contains("error: the history of 1 of 3 cylinders is broken"),
        "error message: {stderr}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_grants_validate_role() {
    let path = std::path::Path::new("unused.db");
    let printed = run_cyltrack(path, &["db", "grants", "--role", "cyltrack_app"]).await;
    let stdout = String::from_utf8_lossy(&printed.stdout);
    assert_eq!(printed.status.code(), Some(0), "valid role exit code");
    assert_eq!(
        stdout,
        grant_statements(
            &Identifier::parse("cyltrack_app").unwrap_or_else(|error| panic!("{error}")),
            &Identifier::parse("public").unwrap_or_else(|error| panic!("{error}")),
        ),
        "printed SQL"
    );

    for role in ["app;DROP TABLE users", "1app", "public", "role\"x"] {
        let rejected = run_cyltrack(path, &["db", "grants", "--role", role]).await;
        let stderr = String::from_utf8_lossy(&rejected.stderr);
        assert_eq!(rejected.status.code(), Some(2), "{role}: exit code");
        assert!(
            stderr.contains("invalid value") && stderr.contains("--role"),
            "{role}: message names the option: {stderr}"
        );
        assert!(rejected.stdout.is_empty(), "{role}: no SQL printed");
    }
}

/// Asserts that `sql`, run as the restricted role, fails for lack of a
/// privilege and not because of a trigger.
async fn assert_denied(pool: &RawPool, sql: &str) {
    let outcome = pool.execute(sql).await;
    let message = outcome
        .as_ref()
        .map_err(ToString::to_string)
        .err()
        .unwrap_or_default();
    assert!(outcome.is_err(), "{sql} must fail: {outcome:?}");
    assert!(
        message.contains("permission denied") || message.contains("must be owner"),
        "{sql} must fail on privileges: {message}"
    );
}

async fn assert_allowed(pool: &RawPool, sql: &str) {
    let outcome = pool.execute(sql).await;
    assert_eq!(outcome.as_ref().ok(), Some(&1), "{sql}: {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_role_is_append_only() {
    let Some(url) = postgres_url() else {
        eprintln!(
            "skipped: {} is not set",
            crate::helpers::POSTGRES_URL_VARIABLE
        );
        return;
    };
    let (app, actor, _, cylinders) = busy_app(Backend::Postgres).await;
    let RawDatabase::Postgres { schema, .. } = app.database.clone() else {
        panic!("a PostgreSQL app has a PostgreSQL database")
    };
    let role = format!("cyltrack_test_{}", Uuid::new_v4().simple());
    let owner = app.database.pool().await;
    owner
        .execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap_or_else(|error| panic!("create role {role}: {error}"));

    // The checks run in their own task, so that the role is dropped even
    // when one of them fails.
    let checks = tokio::spawn(check_restricted_role(
        url,
        schema,
        role.clone(),
        actor,
        cylinders,
    ))
    .await;

    let dropped = owner
        .execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await;
    owner.close().await;
    app.stop().await;
    if let Err(failure) = checks {
        std::panic::resume_unwind(failure.into_panic());
    }
    assert!(dropped.is_ok(), "drop role {role}: {dropped:?}");
}

async fn check_restricted_role(
    url: String,
    schema: String,
    role: String,
    actor: Actor,
    cylinders: Vec<Registered>,
) {
    let owner = RawPool::Postgres(raw_postgres_pool(&url, None, &schema).await);
    let grants = grant_statements(
        &Identifier::parse_role(&role).unwrap_or_else(|error| panic!("{error}")),
        &Identifier::parse(&schema).unwrap_or_else(|error| panic!("{error}")),
    );
    owner
        .execute(&grants)
        .await
        .unwrap_or_else(|error| panic!("apply grants: {error}\n{grants}"));
    owner.close().await;

    // Raw SQL as the role: ordinary tables take every change, the audit
    // tables take new rows only.
    let restricted = RawPool::Postgres(raw_postgres_pool(&url, Some(&role), &schema).await);
    assert_allowed(
        &restricted,
        "INSERT INTO depots (id, name, town, latitude, longitude, created_at) \
         VALUES (gen_random_uuid(), 'Role Depot', 'Nairobi', -1.3, 36.8, now())",
    )
    .await;
    assert_allowed(
        &restricted,
        "UPDATE depots SET town = 'Mombasa' WHERE name = 'Role Depot'",
    )
    .await;
    assert_allowed(&restricted, "DELETE FROM depots WHERE name = 'Role Depot'").await;
    for table in ["cylinder_history", "cylinder_scans"] {
        assert_denied(&restricted, &format!("UPDATE {table} SET id = id")).await;
        assert_denied(&restricted, &format!("DELETE FROM {table}")).await;
        assert_denied(&restricted, &format!("TRUNCATE {table}")).await;
        assert_denied(
            &restricted,
            &format!("ALTER TABLE {table} DISABLE TRIGGER {table}_append_only"),
        )
        .await;
    }
    assert_denied(&restricted, "CREATE TABLE intruder (id INTEGER)").await;
    restricted.close().await;

    // The service's own writes and the audit work with these privileges.
    let options = std::str::FromStr::from_str(&url)
        .map(|options: sqlx::postgres::PgConnectOptions| {
            options
                .username(&role)
                .options([("search_path", schema.as_str())])
        })
        .unwrap_or_else(|error| panic!("parse URL: {error}"));
    let store = PostgresStore::connect_with(options, test_chain_key())
        .await
        .unwrap_or_else(|error| panic!("connect as {role}: {error}"));
    // Start-up reads the applied migrations, which the role may do, and
    // finds none pending, so it never tries to create a table.
    let pending = store.pending_migrations().await;
    assert!(
        matches!(pending, Ok(0)),
        "pending migrations as {role}: {pending:?}"
    );
    let target = &cylinders[0];
    let changed = store
        .change_status(
            StatusChange {
                cylinder_id: target.id,
                expected: cyltrack::domain::CylinderStatus::InTransit,
                to: cyltrack::domain::CylinderStatus::Delivered,
                notes: "as the restricted role".into(),
            },
            actor,
            chrono::Utc::now(),
        )
        .await;
    assert!(
        matches!(changed, Ok(StatusChangeOutcome::Changed(_))),
        "status change: {changed:?}"
    );

    let now = chrono::Utc::now();
    let respond = |_: &ScanDraft<'_>| String::from("{}");
    let scanned = store
        .record_scan(
            ScanInput {
                id: Uuid::new_v4(),
                scanner: actor,
                scan_type: ScanType::Qr,
                code: target.qr_code.clone(),
                raw_code: target.qr_code.clone(),
                position: None,
                address: None,
                ip_address: Some("127.0.0.1".into()),
                user_agent: Some("audit test".into()),
                scanned_at: now,
                received_at: now,
                client_scan_id: None,
            },
            &TamperPolicy::default(),
            &respond,
        )
        .await;
    assert!(
        matches!(scanned, Ok(ScanOutcome::Recorded(_))),
        "scan: {scanned:?}"
    );

    let report = verify(&store, &test_chain_key())
        .await
        .unwrap_or_else(|error| panic!("verify as {role}: {error}"));
    assert!(report.is_intact(), "broken: {:?}", report.broken);
    assert_eq!(report.scans_checked, 4, "scans checked");
    store.close().await;
}
