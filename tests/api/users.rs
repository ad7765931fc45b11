//! User management through the API, and the command line: `user create`,
//! `migrate`, `serve` with its start-up checks and graceful shutdown.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use cyltrack::domain::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, PASSWORD, TestApp, error_of, on_both_backends};

on_both_backends!(
    admin_creates_users,
    duplicate_username_conflicts,
    list_users_filters_role,
    update_user_fields,
    admin_cannot_lock_self_out,
    password_reset_ends_sessions,
);

async fn admin_creates_users(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.user_with_token("admin", Role::Admin).await;
    let request = json!({
        "username": "Akinyi.O",
        "full_name": "Akinyi Odhiambo",
        "email": "akinyi@example.co.ke",
        "phone": "0712 345 678",
        "role": "CUSTOMER",
        "password": "her own long password",
    });
    let (status, body) = app.post("/api/v1/users", &admin, request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["username"], "akinyi.o");
    assert_eq!(body["phone"], "+254712345678");
    assert_eq!(body["role"], "CUSTOMER");
    assert_eq!(body["is_active"], true);
    assert!(
        body.get("password").is_none() && body.get("password_hash").is_none(),
        "{body}"
    );

    let (status, _) = app.login("akinyi.o", "her own long password").await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

async fn duplicate_username_conflicts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.user_with_token("admin", Role::Admin).await;
    let request = json!({"username": "kamau", "role": "DRIVER", "password": PASSWORD});
    let (status, _) = app.post("/api/v1/users", &admin, request.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let mut upper = request;
    upper["username"] = json!("KAMAU");
    let (status, body) = app.post("/api/v1/users", &admin, upper).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        error_of(&body),
        ("duplicate".to_string(), "username".to_string())
    );
    app.stop().await;
}

async fn list_users_filters_role(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, dispatcher) = app.user_with_token("dispatcher", Role::Dispatcher).await;
    app.create_user("driver.a", Role::Driver).await;
    app.create_user("driver.b", Role::Driver).await;
    app.create_user("customer.a", Role::Customer).await;

    let (status, body) = app.get("/api/v1/users?role=DRIVER", &dispatcher).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names: Vec<&str> = body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item["username"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(names, vec!["driver.a", "driver.b"]);
    app.stop().await;
}

async fn update_user_fields(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.user_with_token("admin", Role::Admin).await;
    let user = app.create_user("fatuma", Role::Customer).await;
    let path = format!("/api/v1/users/{}", user.id);

    let (status, body) = app
        .patch(
            &path,
            &admin,
            json!({"email": "fatuma@example.co.ke", "role": "DRIVER"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["email"], "fatuma@example.co.ke");
    assert_eq!(body["role"], "DRIVER");
    assert_eq!(body["full_name"], "Test User", "absent fields stay");

    let (status, body) = app.patch(&path, &admin, json!({"email": null})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["email"].is_null(), "{body}");

    let missing = format!("/api/v1/users/{}", uuid::Uuid::new_v4());
    let (status, _) = app
        .patch(&missing, &admin, json!({"full_name": "Nobody"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn admin_cannot_lock_self_out(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (admin_user, admin) = app.user_with_token("admin", Role::Admin).await;
    let path = format!("/api/v1/users/{}", admin_user.id);
    for change in [json!({"is_active": false}), json!({"role": "DISPATCHER"})] {
        let (status, body) = app.patch(&path, &admin, change.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{change}: {body}");
        assert_eq!(error_of(&body).0, "self_lockout");
    }
    let (status, body) = app.get("/api/v1/me", &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["role"], "ADMIN");
    app.stop().await;
}

async fn password_reset_ends_sessions(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.user_with_token("admin", Role::Admin).await;
    let user = app.create_user("njoroge", Role::Driver).await;
    let (_, tokens) = app.login("njoroge", PASSWORD).await;

    let (status, _) = app
        .patch(
            &format!("/api/v1/users/{}", user.id),
            &admin,
            json!({"password": "a brand new password"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let refresh = json!({"refresh_token": tokens["refresh_token"]});
    let (status, _) = app
        .send(
            reqwest::Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(refresh),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app.login("njoroge", PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app.login("njoroge", "a brand new password").await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

/// Builds a `cyltrack` command with a clean environment, run in `dir`.
fn cyltrack(dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cyltrack"));
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SECRET_KEY", "s".repeat(48))
        .env("JWT_SECRET_KEY", "j".repeat(48))
        .env("RUST_LOG", "info");
    command
}

fn run_with_stdin(mut command: Command, input: &str) -> std::process::Output {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("spawn cyltrack: {error}"));
    if let Some(mut stdin) = child.stdin.take() {
        // A command that rejects its arguments exits without reading its
        // input, so a broken pipe here is expected and harmless.
        let _ = stdin.write_all(input.as_bytes());
    }
    child
        .wait_with_output()
        .unwrap_or_else(|error| panic!("wait for cyltrack: {error}"))
}

#[test]
fn cli_user_create_checks_input() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let create = |username: &str, role: &str| {
        let mut command = cyltrack(dir.path());
        command.args([
            "user",
            "create",
            "--username",
            username,
            "--role",
            role,
            "--password-stdin",
        ]);
        command
    };

    let output = run_with_stdin(create("first.admin", "admin"), "a strong admin password\n");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("created ADMIN first.admin"));
    assert!(
        dir.path().join("cyltrack.db").exists(),
        "SQLite is the default database"
    );

    let output = run_with_stdin(create("first.admin", "admin"), "a strong admin password\n");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("username 'first.admin' is already in use")
    );

    let output = run_with_stdin(create("second", "admin"), "short\n");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least 10 characters"));

    let output = run_with_stdin(create("third", "root"), "a strong admin password\n");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a role"));

    let mut without_flag = cyltrack(dir.path());
    without_flag.args(["user", "create", "--username", "fourth", "--role", "admin"]);
    let output = run_with_stdin(without_flag, "a strong admin password\n");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--password-stdin"));
}

#[test]
fn cli_rejects_placeholder_secret() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let mut command = cyltrack(dir.path());
    command.arg("migrate").env(
        "SECRET_KEY",
        "your-super-secret-key-here-change-in-production",
    );
    let output = run_with_stdin(command, "");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SECRET_KEY") && stderr.contains("Fix:"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("cyltrack.db").exists(),
        "nothing may be created"
    );
}

#[test]
fn cli_serve_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let mut command = cyltrack(dir.path());
    command
        .arg("serve")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json");
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("spawn: {error}"));

    // The "listening" log line carries the bound address.
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut lines = BufReader::new(stdout).lines();
    let address = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("server exited before listening")
        };
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["message"] == "listening" {
            break event["address"].as_str().unwrap_or_default().to_string();
        }
    };

    let health = raw_http_get(&format!("http://{address}/healthz"));
    assert_eq!(health, Some(200));

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(killed.is_ok_and(|status| status.success()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        exit.is_some_and(|status| status.success()),
        "exit: {exit:?}"
    );
}

/// Sends a blocking GET over a plain TCP connection and returns the status
/// code, so that this synchronous test needs no async client.
fn raw_http_get(url: &str) -> Option<u16> {
    use std::io::Read;
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(host, path)| (host, format!("/{path}")))?;
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}
