//! `cyltrack check --deploy` run as a process: the production checklist on
//! a good and a bad configuration, and the database-role item on
//! PostgreSQL as the owner and as a restricted role.

use std::path::Path;
use std::process::{Command, Output};

use cyltrack::audit::{Identifier, grant_statements};
use uuid::Uuid;

use crate::helpers::{Backend, RawDatabase, RawPool, fresh_store_with_raw, postgres_url};

const SECRET_KEY: &str = "deploy-check-secret-key-0123456789abcdef";
const JWT_SECRET_KEY: &str = "deploy-check-jwt-key-fedcba9876543210fedcba";

/// The number of lines `check --deploy` prints for a valid configuration.
const ITEMS: usize = 14;

/// Variables of a production-ready single instance on SQLite in `dir`.
fn good_variables(dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("SECRET_KEY", SECRET_KEY.to_string()),
        ("JWT_SECRET_KEY", JWT_SECRET_KEY.to_string()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("cyltrack.db").display()),
        ),
        ("ALLOWED_HOSTS", "cyltrack.example.co.ke".to_string()),
        ("TRUSTED_PROXIES", "127.0.0.1".to_string()),
        ("SECURE_SSL_REDIRECT", "true".to_string()),
        ("SECURE_HSTS_SECONDS", "31536000".to_string()),
        ("SECURITY_EMAIL", "security@example.co.ke".to_string()),
    ]
}

/// Runs `cyltrack check --deploy` with `extra_args` in the working
/// directory `dir`, with only PATH and `variables` in its environment.
async fn run_check(dir: &Path, variables: &[(&str, String)], extra_args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cyltrack"));
    command
        .args(["check", "--deploy"])
        .args(extra_args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (name, value) in variables {
        command.env(name, value);
    }
    tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap_or_else(|error| panic!("join: {error}"))
        .unwrap_or_else(|error| panic!("run cyltrack: {error}"))
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|error| panic!("temp dir: {error}"))
}

/// Returns the line that reports `item`, failing the test when none does.
fn line_of<'a>(stdout: &'a str, item: &str) -> &'a str {
    stdout
        .lines()
        .find(|line| line.get(5..).unwrap_or_default().starts_with(item))
        .unwrap_or_else(|| panic!("no line for {item:?} in:\n{stdout}"))
}

fn assert_no_secret(output: &Output, secrets: &[&str]) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for secret in secrets {
        assert!(!text.contains(secret), "{secret:?} printed in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_check_passes_good_config() {
    let dir = temp_dir();
    let output = run_check(dir.path(), &good_variables(dir.path()), &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(0), "exit code; stderr: {stderr}");
    assert_eq!(
        stdout.lines().count(),
        ITEMS,
        "one line per item:\n{stdout}"
    );
    for line in stdout.lines() {
        assert!(line.starts_with("PASS "), "every line passes: {line}");
    }
    assert!(
        line_of(&stdout, "Database role cannot change the audit tables").contains("triggers"),
        "SQLite note:\n{stdout}"
    );
    assert_no_secret(&output, &[SECRET_KEY, JWT_SECRET_KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_check_fails_bad_config() {
    let dir = temp_dir();
    let short_secret = "short-secret-value";
    let variables = vec![
        ("DEBUG", "true".to_string()),
        ("SECRET_KEY", short_secret.to_string()),
        (
            "JWT_SECRET_KEY",
            "your-super-secret-key-here-change-in-production".to_string(),
        ),
        ("JWT_PREVIOUS_SECRET_KEYS", "old-weak-jwt-key".to_string()),
        ("ALLOWED_HOSTS", "*".to_string()),
        ("SECURE_HSTS_SECONDS", "3600".to_string()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("cyltrack.db").display()),
        ),
    ];
    let output = run_check(dir.path(), &variables, &["--instances", "3"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(
        output.status.code(),
        Some(1),
        "exit code; stdout:\n{stdout}"
    );
    assert!(
        stderr.contains("11 of 14 checks failed"),
        "summary on stderr: {stderr}"
    );
    let failures = [
        ("DEBUG is off", "Fix: set DEBUG=false"),
        (
            "SECRET_KEY is set and strong",
            "Fix: set SECRET_KEY to a random value",
        ),
        (
            "JWT_SECRET_KEY is set and strong",
            "Fix: set JWT_SECRET_KEY to a random value",
        ),
        (
            "JWT_PREVIOUS_SECRET_KEYS are strong",
            "Fix: remove the weak keys from JWT_PREVIOUS_SECRET_KEYS",
        ),
        (
            "ALLOWED_HOSTS names the service's host",
            "Fix: set ALLOWED_HOSTS to the host names",
        ),
        ("HTTPS is configured", "set TRUSTED_PROXIES"),
        (
            "SECURE_SSL_REDIRECT is on",
            "Fix: set SECURE_SSL_REDIRECT=true",
        ),
        (
            "SECURE_HSTS_SECONDS is at least one year",
            "Fix: set SECURE_HSTS_SECONDS=31536000",
        ),
        (
            "Database suits the number of instances",
            "Fix: set DATABASE_URL",
        ),
        (
            "Rate-limit counts are shared between instances",
            "Fix: set REDIS_URL",
        ),
        (
            "Security alerts have a destination",
            "Fix: set SECURITY_EMAIL",
        ),
    ];
    for (item, fix) in failures {
        let line = line_of(&stdout, item);
        assert!(line.starts_with("FAIL "), "{item} fails: {line}");
        assert!(line.contains(fix), "{item} names its fix {fix:?}: {line}");
    }
    assert!(
        line_of(&stdout, "Configuration is valid").starts_with("PASS "),
        "valid values:\n{stdout}"
    );
    assert_no_secret(&output, &[short_secret, "old-weak-jwt-key"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_check_never_generates_secrets() {
    let dir = temp_dir();
    let variables: Vec<(&str, String)> = good_variables(dir.path())
        .into_iter()
        .filter(|(name, _)| !name.ends_with("SECRET_KEY"))
        .collect();
    let output = run_check(dir.path(), &variables, &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);

    assert_eq!(output.status.code(), Some(1), "exit code:\n{stdout}");
    for name in ["SECRET_KEY", "JWT_SECRET_KEY"] {
        let line = line_of(&stdout, &format!("{name} is set and strong"));
        assert!(
            line.starts_with(&format!("FAIL {name} is set and strong: {name} is not set")),
            "{name} missing: {line}"
        );
    }
    assert!(
        !dir.path().join("cyltrack-secrets.env").exists(),
        "no secrets file written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_check_reports_invalid_value() {
    let dir = temp_dir();
    let mut variables = good_variables(dir.path());
    variables.push(("SECURE_SSL_REDIRECT", "sometimes".to_string()));
    let output = run_check(dir.path(), &variables, &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(1), "exit code; stderr: {stderr}");
    let line = line_of(&stdout, "Configuration is valid");
    assert!(
        line.starts_with("FAIL ")
            && line.contains("SECURE_SSL_REDIRECT: 'sometimes' is not a boolean"),
        "names the variable and the rule: {line}"
    );
    assert!(line.contains("Fix: use true or false"), "fix: {line}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_check_rejects_zero_instances() {
    let dir = temp_dir();
    let output = run_check(
        dir.path(),
        &good_variables(dir.path()),
        &["--instances", "0"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "usage error: {stderr}");
    assert!(stderr.contains("--instances"), "names the option: {stderr}");
}

/// `url` with its user information replaced by `user` and no password.
fn url_as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("not a URL: {url}"));
    let host_and_path = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    format!("{scheme}://{user}@{host_and_path}")
}

/// `url` with the search path set to `schema`.
fn url_in_schema(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options[search_path]={schema}")
}

mod database_role {
    /// The owner of the tables fails the database-role item; a role set
    /// up with `db grants` passes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if crate::helpers::postgres_url().is_none() {
            eprintln!(
                "skipped: {} is not set",
                crate::helpers::POSTGRES_URL_VARIABLE
            );
            return;
        }
        super::database_role_on_postgres().await;
    }
}

async fn database_role_on_postgres() {
    let url = postgres_url().unwrap_or_else(|| panic!("no PostgreSQL URL"));
    let dir = temp_dir();
    let (store, database) = fresh_store_with_raw(Backend::Postgres, dir.path()).await;
    store.close().await;
    let RawDatabase::Postgres { schema, .. } = database.clone() else {
        panic!("a PostgreSQL store has a PostgreSQL database")
    };

    let owner = database.pool().await;
    let role = format!("cyltrack_check_{}", Uuid::new_v4().simple());
    owner
        .execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap_or_else(|error| panic!("create role {role}: {error}"));

    // The checks run in their own task, so that the role is dropped even
    // when one of them fails.
    let checks = tokio::spawn(check_roles(url, schema, role.clone())).await;

    let dropped = owner
        .execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await;
    owner.close().await;
    if let Err(failure) = checks {
        std::panic::resume_unwind(failure.into_panic());
    }
    assert!(dropped.is_ok(), "drop role {role}: {dropped:?}");
}

async fn check_roles(url: String, schema: String, role: String) {
    const ITEM: &str = "Database role cannot change the audit tables";
    let dir = temp_dir();
    let mut variables = good_variables(dir.path());
    variables.retain(|(name, _)| *name != "DATABASE_URL");

    let owner_url = url_in_schema(&url, &schema);
    let mut as_owner = variables.clone();
    as_owner.push(("DATABASE_URL", owner_url.clone()));
    let output = run_check(dir.path(), &as_owner, &["--instances", "2"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = line_of(&stdout, ITEM);
    assert_eq!(output.status.code(), Some(1), "owner exit code:\n{stdout}");
    assert!(line.starts_with("FAIL "), "owner fails: {line}");
    assert!(
        line.contains("DELETE")
            && line.contains("cylinder_history")
            && line.contains("cylinder_scans"),
        "names the privileges and tables: {line}"
    );
    assert!(
        line.contains("superuser") || line.contains("owns the tables"),
        "names the cause: {line}"
    );
    assert!(
        line.contains("Fix: create a restricted role, apply `cyltrack db grants --role NAME`"),
        "names the fix: {line}"
    );
    assert_no_secret(&output, &[&owner_url, SECRET_KEY, JWT_SECRET_KEY]);

    let pool = RawPool::Postgres(crate::helpers::raw_postgres_pool(&url, None, &schema).await);
    let grants = grant_statements(
        &Identifier::parse_role(&role).unwrap_or_else(|error| panic!("{error}")),
        &Identifier::parse(&schema).unwrap_or_else(|error| panic!("{error}")),
    );
    pool.execute(&grants)
        .await
        .unwrap_or_else(|error| panic!("apply grants: {error}\n{grants}"));
    pool.close().await;

    let role_url = url_in_schema(&url_as_user(&url, &role), &schema);
    let mut as_role = variables;
    as_role.push(("DATABASE_URL", role_url.clone()));
    // With 2 instances the shared-state items need REDIS_URL too; nothing
    // connects to it.
    as_role.push(("REDIS_URL", "redis://127.0.0.1:6379/0".to_string()));
    let output = run_check(dir.path(), &as_role, &["--instances", "2"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = line_of(&stdout, ITEM);
    assert!(line.starts_with("PASS "), "restricted role passes: {line}");
    assert!(line.contains(&role), "names the role: {line}");

    // The statistics item reports the server's own setting, which differs
    // between machines: a CI server may run with autovacuum off.
    let statistics = line_of(&stdout, STATISTICS_ITEM);
    let autovacuum = autovacuum_setting(&url, &schema).await;
    if autovacuum == "on" {
        assert!(
            statistics.starts_with("PASS "),
            "autovacuum on: {statistics}"
        );
    } else {
        assert!(
            statistics.starts_with("FAIL ") && statistics.contains("autovacuum is off"),
            "autovacuum {autovacuum}: {statistics}"
        );
    }
    let failed: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("FAIL ") && *line != statistics)
        .collect();
    assert!(
        failed.is_empty(),
        "only the statistics item may fail: {failed:?}"
    );
    let expected_code = if statistics.starts_with("PASS ") {
        0
    } else {
        1
    };
    assert_eq!(
        output.status.code(),
        Some(expected_code),
        "restricted exit code:\n{stdout}"
    );
    assert_no_secret(&output, &[&role_url, SECRET_KEY, JWT_SECRET_KEY]);
}

const STATISTICS_ITEM: &str = "PostgreSQL keeps table statistics current";

/// Returns the server's `autovacuum` setting, `on` or `off`.
async fn autovacuum_setting(url: &str, schema: &str) -> String {
    let pool = RawPool::Postgres(crate::helpers::raw_postgres_pool(url, None, schema).await);
    let setting = pool.texts("SHOW autovacuum").await;
    pool.close().await;
    setting.first().cloned().unwrap_or_default()
}
