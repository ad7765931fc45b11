//! The OpenAPI document, health check, request ids, fallbacks, the demo
//! command and what the logs must never contain.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use cyltrack::domain::Role;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, PASSWORD, TestApp, error_of, on_both_backends};

on_both_backends!(openapi_lists_every_endpoint, health_and_fallbacks);

/// Every endpoint of the API, as OpenAPI spells its path.
const ENDPOINTS: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/refresh"),
    ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/me"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/users"),
    ("get", "/api/v1/users/{id}"),
    ("patch", "/api/v1/users/{id}"),
    ("get", "/api/v1/depots"),
    ("post", "/api/v1/depots"),
    ("get", "/api/v1/cylinders"),
    ("post", "/api/v1/cylinders"),
    ("get", "/api/v1/cylinders/{id}"),
    ("patch", "/api/v1/cylinders/{id}/status"),
    ("post", "/api/v1/cylinders/{id}/assign"),
    ("get", "/api/v1/cylinders/{id}/history"),
    ("get", "/api/v1/cylinders/{id}/scans"),
    ("post", "/api/v1/cylinders/{id}/tamper"),
    ("post", "/api/v1/cylinders/{id}/reissue-codes"),
    ("post", "/api/v1/scans"),
    ("post", "/api/v1/scans/verify-token"),
];

async fn openapi_lists_every_endpoint(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, document) = app.send(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|version| version.starts_with('3')),
        "{}",
        document["openapi"]
    );

    for (method, path) in ENDPOINTS {
        let operation = &document["paths"][path][method];
        assert!(
            operation.is_object(),
            "{method} {path} is missing from the OpenAPI document"
        );
        let responses = operation["responses"]
            .as_object()
            .map(|map| map.len())
            .unwrap_or_default();
        assert!(
            responses >= 2 || *path == "/healthz",
            "{method} {path} documents {responses} responses"
        );
        if *method != "get" {
            assert!(
                operation["requestBody"].is_object(),
                "{method} {path} has no request body"
            );
        }
    }
    let documented: usize = document["paths"]
        .as_object()
        .map(|paths| {
            paths
                .values()
                .map(|item| item.as_object().map(|ops| ops.len()).unwrap_or_default())
                .sum()
        })
        .unwrap_or_default();
    assert_eq!(
        documented,
        ENDPOINTS.len(),
        "the document lists operations this test does not know"
    );
    assert!(document["components"]["schemas"]["ErrorBody"].is_object());
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
    app.stop().await;
}

async fn health_and_fallbacks(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-request-id"));
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    assert_eq!(body, json!({"status": "ok"}));

    let (status, body) = app
        .send(Method::GET, "/api/v1/nothing-here", None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body).0, "not_found");

    let (_, token) = app.user_with_token("meta.admin", Role::Admin).await;
    let (status, body) = app
        .send(Method::DELETE, "/api/v1/cylinders", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_of(&body).0, "method_not_allowed");
    app.stop().await;
}

/// Starts `cyltrack` with `args` in `dir` and returns the child and its
/// standard output as lines.
fn spawn_cyltrack(
    dir: &std::path::Path,
    args: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cyltrack"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SECRET_KEY", "s".repeat(48))
        .env("JWT_SECRET_KEY", "j".repeat(48))
        .env("LOG_FORMAT", "json")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("spawn cyltrack: {error}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    (child, BufReader::new(stdout).lines())
}

fn terminate(mut child: std::process::Child) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

#[tokio::test]
async fn logs_hold_no_secrets() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let mut create = Command::new(env!("CARGO_BIN_EXE_cyltrack"));
    create
        .args([
            "user",
            "create",
            "--username",
            "log.admin",
            "--role",
            "admin",
            "--password-stdin",
        ])
        .current_dir(dir.path())
        .env_clear()
        .env("SECRET_KEY", "s".repeat(48))
        .env("JWT_SECRET_KEY", "j".repeat(48))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = create.spawn().unwrap_or_else(|error| panic!("{error}"));
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = writeln!(stdin, "{PASSWORD}");
    }
    assert!(child.wait().is_ok_and(|status| status.success()));

    let (server, mut lines) = spawn_cyltrack(dir.path(), &["serve"]);
    let mut log = Vec::new();
    let address = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("server exited before listening")
        };
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        log.push(line);
        if event["message"] == "listening" {
            break event["address"].as_str().unwrap_or_default().to_string();
        }
    };

    let client = reqwest::Client::new();
    let login = client
        .post(format!("http://{address}/api/v1/auth/login"))
        .json(&json!({"username": "log.admin", "password": PASSWORD}))
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let tokens: serde_json::Value = login.json().await.unwrap_or_default();
    let access = tokens["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!access.is_empty(), "{tokens}");
    let me = client
        .get(format!("http://{address}/api/v1/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(me.status(), StatusCode::OK);
    let _ = client
        .post(format!("http://{address}/api/v1/auth/login"))
        .json(&json!({"username": "log.admin", "password": "a wrong password here"}))
        .send()
        .await;

    assert!(terminate(server).is_some_and(|status| status.success()));
    log.extend(lines.map_while(Result::ok));
    let text = log.join("\n");

    assert!(
        text.contains("\"request_id\""),
        "request spans carry the request id"
    );
    assert!(text.contains("login failed"), "failed logins are logged");
    let refresh = tokens["refresh_token"].as_str().unwrap_or_default();
    let secrets = [
        PASSWORD,
        "a wrong password here",
        access.as_str(),
        refresh,
        &"s".repeat(48),
        &"j".repeat(48),
    ];
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "the log contains a secret: {secret}"
        );
    }
}

#[tokio::test]
async fn demo_serves_sample_fleet() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let folder = dir.path().join("demo");
    let folder_text = folder.display().to_string();
    let (demo, mut lines) = spawn_cyltrack(
        dir.path(),
        &[
            "demo",
            "--dir",
            &folder_text,
            "--listen",
            "127.0.0.1:0",
            "--cylinders",
            "40",
        ],
    );

    let mut address = String::new();
    let mut password = String::new();
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("cyltrack demo is running at http://") {
            address = rest.trim().to_string();
        }
        if let Some(rest) = line.strip_prefix("Logins (every account uses the password ") {
            password = rest.trim_end_matches("):").to_string();
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    assert!(
        !address.is_empty() && !password.is_empty(),
        "demo printed no address or password"
    );

    let client = reqwest::Client::new();
    let login = |username: &'static str| {
        let client = client.clone();
        let (address, password) = (address.clone(), password.clone());
        async move {
            let response = client
                .post(format!("http://{address}/api/v1/auth/login"))
                .json(&json!({"username": username, "password": password}))
                .send()
                .await
                .unwrap_or_else(|error| panic!("{error}"));
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            body["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    let dispatcher = login("dispatch.nairobi").await;
    let cylinders: serde_json::Value = client
        .get(format!("http://{address}/api/v1/cylinders?per_page=200"))
        .bearer_auth(&dispatcher)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"))
        .json()
        .await
        .unwrap_or_default();
    let items = cylinders["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 40, "{cylinders}");
    let statuses: std::collections::HashSet<&str> = items
        .iter()
        .filter_map(|item| item["status"].as_str())
        .collect();
    assert!(
        statuses.len() >= 3,
        "the fleet shows several statuses: {statuses:?}"
    );
    assert!(
        items
            .iter()
            .all(|item| item["capacity_kg"] == 6.0 || item["capacity_kg"] == 13.0)
    );

    let depots: serde_json::Value = client
        .get(format!("http://{address}/api/v1/depots"))
        .bearer_auth(&dispatcher)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"))
        .json()
        .await
        .unwrap_or_default();
    let towns: std::collections::HashSet<&str> = depots
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|depot| depot["town"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        towns.contains("Nairobi") && towns.contains("Mombasa"),
        "{depots}"
    );

    let customer = login("mama.njeri").await;
    assert!(!customer.is_empty(), "demo customers can log in");

    assert!(terminate(demo).is_some_and(|status| status.success()));
    let output = Command::new(env!("CARGO_BIN_EXE_cyltrack"))
        .args(["demo", "--dir", &folder_text, "--listen", "127.0.0.1:0"])
        .env_clear()
        .output()
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(
        !output.status.success(),
        "a folder with a database is rejected"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("already contains a cyltrack.db"));
}
