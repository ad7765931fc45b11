//! Abuse resistance: rate limits, login throttling, client IPs behind
//! proxies, host checks, HTTPS redirects and security headers.

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, PASSWORD, TestApp, error_of, on_both_backends};
use cyltrack::domain::Role;

on_both_backends!(
    scan_limit_refuses_101st,
    scan_replays_not_counted,
    replay_at_limit_needs_active_user,
    forged_tokens_spend_nothing,
    login_throttled_after_failures,
    proxy_ip_recorded_on_scans,
);

/// Sends a request with extra headers and returns the status, headers and
/// parsed body.
async fn raw(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|error| panic!("client: {error}"));
    let mut request = client.request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|error| panic!("request {path}: {error}"));
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// Sends a GET without a token, with extra headers.
async fn get_with(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    raw(app, Method::GET, path, None, None, headers).await
}

/// Tries to log in as `username` with a wrong password, sending `headers`.
async fn failed_login(
    app: &TestApp,
    username: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    let body = json!({"username": username, "password": "wrong password"});
    raw(
        app,
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(body),
        headers,
    )
    .await
}

fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Builds a scan of a code that no cylinder has, with its own client scan id.
fn unknown_scan(index: usize) -> Value {
    json!({
        "code": format!("CYL-{index:026}"),
        "scan_type": "QR",
        "client_scan_id": format!("phone-1-{index}"),
    })
}

async fn scans_stored(app: &TestApp) -> usize {
    let pool = app.database.pool().await;
    let count = pool
        .texts("SELECT CAST(COUNT(*) AS TEXT) FROM cylinder_scans")
        .await;
    pool.close().await;
    count
        .first()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("no scan count: {count:?}"))
}

/// Checks a 429: the code, and a Retry-After header equal to the body's
/// `retry_after`, within `range` seconds.
fn assert_limited(
    status: StatusCode,
    headers: &HeaderMap,
    body: &Value,
    range: std::ops::RangeInclusive<u64>,
) {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(error_of(body).0, "rate_limited", "{body}");
    let header: u64 = header_text(headers, "retry-after")
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is not whole seconds: {headers:?}"));
    assert_eq!(
        Some(header),
        body["error"]["retry_after"].as_u64(),
        "{body}"
    );
    assert!(
        range.contains(&header),
        "Retry-After {header} outside {range:?}"
    );
}

async fn scan_limit_refuses_101st(backend: Backend) {
    let app = TestApp::spawn_with(backend, |variables| {
        variables.insert("SCAN_RATE_LIMIT_DRIVER".into(), "100".into());
    })
    .await;
    let (_, driver) = app.user_with_token("driver-a", Role::Driver).await;
    let (_, other) = app.user_with_token("driver-b", Role::Driver).await;

    for index in 0..100 {
        let (status, body) = app
            .post("/api/v1/scans", &driver, unknown_scan(index))
            .await;
        assert_eq!(status, StatusCode::CREATED, "scan {index}: {body}");
    }
    let (status, headers, body) = raw(
        &app,
        Method::POST,
        "/api/v1/scans",
        Some(&driver),
        Some(unknown_scan(100)),
        &[],
    )
    .await;
    // 100 an hour refill one every 36 seconds.
    assert_limited(status, &headers, &body, 1..=36);
    assert_eq!(
        scans_stored(&app).await,
        100,
        "the refused scan wrote nothing"
    );

    // Asking again at once does not push the wait further out.
    let (status, headers, body) = raw(
        &app,
        Method::POST,
        "/api/v1/scans",
        Some(&driver),
        Some(unknown_scan(101)),
        &[],
    )
    .await;
    assert_limited(status, &headers, &body, 1..=36);

    let (status, body) = app.post("/api/v1/scans", &other, unknown_scan(0)).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "another driver is unaffected: {body}"
    );
    // Reads stay within the driver's API allowance.
    let (status, body) = app.get("/api/v1/me", &driver).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.stop().await;
}

async fn scan_replays_not_counted(backend: Backend) {
    let app = TestApp::spawn_with(backend, |variables| {
        variables.insert("SCAN_RATE_LIMIT_DRIVER".into(), "3".into());
    })
    .await;
    let (_, driver) = app.user_with_token("driver-a", Role::Driver).await;

    for round in 0..4 {
        for index in 0..3 {
            let (status, body) = app
                .post("/api/v1/scans", &driver, unknown_scan(index))
                .await;
            let expected = if round == 0 {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            assert_eq!(status, expected, "round {round}, scan {index}: {body}");
        }
    }
    let (status, body) = app.post("/api/v1/scans", &driver, unknown_scan(3)).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "a fourth new scan: {body}"
    );
    // At the limit, a retry of a recorded scan still gets its first response.
    let (status, body) = app.post("/api/v1/scans", &driver, unknown_scan(1)).await;
    assert_eq!(status, StatusCode::OK, "replay at the limit: {body}");
    assert_eq!(scans_stored(&app).await, 3);
    app.stop().await;
}

async fn replay_at_limit_needs_active_user(backend: Backend) {
    let app = TestApp::spawn_with(backend, |variables| {
        variables.insert("SCAN_RATE_LIMIT_DRIVER".into(), "1".into());
    })
    .await;
    let (driver, driver_token) = app.user_with_token("driver-b", Role::Driver).await;
    let (_, admin) = app.user_with_token("admin-b", Role::Admin).await;
    let (status, body) = app
        .post("/api/v1/scans", &driver_token, unknown_scan(0))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // At the limit the scan never reaches the store's write, which
    // confirms the caller, so the route confirms the account itself.
    let path = format!("/api/v1/users/{}", driver.id);
    let (status, body) = app.patch(&path, &admin, json!({"is_active": false})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .post("/api/v1/scans", &driver_token, unknown_scan(0))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "retry: {body}");
    let new_scan = json!({"code": "CYL-UNKNOWN-0002", "scan_type": "QR"});
    let (status, body) = app.post("/api/v1/scans", &driver_token, new_scan).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "new scan: {body}");
    assert_eq!(scans_stored(&app).await, 1);
    app.stop().await;
}

/// Returns `token` with its signature's last characters changed.
fn forged(token: &str) -> String {
    let (head, signature) = token.rsplit_once('.').unwrap_or((token, ""));
    let replaced: String = signature
        .chars()
        .rev()
        .enumerate()
        .map(|(index, c)| {
            if index < 4 {
                if c == 'A' { 'B' } else { 'A' }
            } else {
                c
            }
        })
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}.{replaced}")
}

async fn forged_tokens_spend_nothing(backend: Backend) {
    let app = TestApp::spawn_with(backend, |variables| {
        variables.insert("SCAN_RATE_LIMIT_DRIVER".into(), "2".into());
        variables.insert("API_RATE_LIMIT_DRIVER".into(), "3".into());
    })
    .await;
    let (_, driver) = app.user_with_token("driver-a", Role::Driver).await;
    let fake = forged(&driver);
    assert_ne!(fake, driver);

    for _ in 0..20 {
        let (status, body) = app.get("/api/v1/me", &fake).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let (status, body) = app.post("/api/v1/scans", &fake, unknown_scan(0)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    for call in 0..3 {
        let (status, body) = app.get("/api/v1/me", &driver).await;
        assert_eq!(status, StatusCode::OK, "call {call}: {body}");
    }
    // 3 an hour refill one every 1,200 seconds.
    let (status, headers, body) =
        raw(&app, Method::GET, "/api/v1/me", Some(&driver), None, &[]).await;
    assert_limited(status, &headers, &body, 1100..=1200);
    app.stop().await;
}

async fn login_throttled_after_failures(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_user("victim", Role::Dispatcher).await;
    app.create_user("bystander", Role::Dispatcher).await;

    // Four failures, then the right password: the count starts again.
    for _ in 0..4 {
        let (status, _) = app.login("victim", "wrong password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = app.login("victim", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    for attempt in 0..5 {
        let (status, body) = app.login("victim", "wrong password").await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}: {body}"
        );
    }
    // The sixth attempt is refused before the password is checked, even
    // with the right one; 5 in 15 minutes refill one every 180 seconds.
    let (status, headers, body) = raw(
        &app,
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(json!({"username": "victim", "password": PASSWORD})),
        &[],
    )
    .await;
    assert_limited(status, &headers, &body, 170..=180);

    // An unknown username is throttled the same way, so the throttle does
    // not reveal which accounts exist.
    for _ in 0..5 {
        let (status, _) = app.login("nobody-here", "wrong password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = app.login("nobody-here", "wrong password").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");

    // Another account from the same address still logs in.
    let (status, body) = app.login("bystander", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Every failure is queued as a security event; refused attempts write
    // nothing.
    let pool = app.database.pool().await;
    let events = pool
        .texts("SELECT details FROM security_events WHERE kind = 'LOGIN_FAILED'")
        .await;
    pool.close().await;
    assert_eq!(events.len(), 14, "{events:?}");
    assert!(
        events.iter().all(|details| details.contains("127.0.0.1")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|details| details.contains("nobody-here")),
        "{events:?}"
    );
    app.stop().await;
}

async fn proxy_ip_recorded_on_scans(backend: Backend) {
    let app = TestApp::spawn_with(backend, |variables| {
        variables.insert("TRUSTED_PROXIES".into(), "127.0.0.1/32".into());
    })
    .await;
    let (_, staff) = app.user_with_token("dispatcher", Role::Dispatcher).await;
    let cylinder = app.register_cylinder(&staff, "PX-0001").await;
    let id = cylinder["id"].as_str().unwrap_or_default().to_string();

    let body = json!({"code": cylinder["qr_code"], "scan_type": "QR"});
    let forwarded = [("x-forwarded-for", "203.0.113.50, 127.0.0.1")];
    let (status, _, answer) = raw(
        &app,
        Method::POST,
        "/api/v1/scans",
        Some(&staff),
        Some(body.clone()),
        &forwarded,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");

    let (status, _, answer) = raw(
        &app,
        Method::POST,
        "/api/v1/scans",
        Some(&staff),
        Some(body),
        &[("x-forwarded-for", "203.0.113.50, not-an-ip")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(error_of(&answer).0, "invalid_header", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("X-Forwarded-For"), "{answer}");

    let (status, scans) = app
        .get(&format!("/api/v1/cylinders/{id}/scans"), &staff)
        .await;
    assert_eq!(status, StatusCode::OK, "{scans}");
    let items = scans["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        items.len(),
        1,
        "the malformed request wrote nothing: {scans}"
    );
    assert_eq!(items[0]["ip_address"], "203.0.113.50", "{scans}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_forwarded_for_ignored() {
    let app = TestApp::spawn_with(Backend::Sqlite, |variables| {
        variables.insert("ANONYMOUS_RATE_LIMIT".into(), "3".into());
    })
    .await;
    // Without TRUSTED_PROXIES, a new X-Forwarded-For on every request is
    // ignored: every login counts against the socket's address.
    for index in 0..3 {
        let spoofed = format!("198.51.100.{index}");
        let spoofing = [
            ("x-forwarded-for", spoofed.as_str()),
            ("x-forwarded-for", "garbage"),
        ];
        let (status, _, body) = failed_login(&app, "someone", &spoofing).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let spoofing = [("x-forwarded-for", "198.51.100.99")];
    let (status, headers, body) = failed_login(&app, "someone-else", &spoofing).await;
    // 3 an hour refill one every 1,200 seconds.
    assert_limited(status, &headers, &body, 1100..=1200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_separates_clients() {
    let app = TestApp::spawn_with(Backend::Sqlite, |variables| {
        variables.insert("ANONYMOUS_RATE_LIMIT".into(), "2".into());
        variables.insert("TRUSTED_PROXIES".into(), "127.0.0.0/8".into());
    })
    .await;
    for index in 0..6 {
        let client = format!("198.51.100.{index}");
        let (status, _, body) = raw(
            &app,
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": "not-a-token"})),
            &[("x-real-ip", &client)],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "client {index}: {body}");
    }
    let same = [("forwarded", "for=198.51.100.200;proto=https")];
    for _ in 0..2 {
        let body = Some(json!({"refresh_token": "not-a-token"}));
        let (status, _, _) = raw(
            &app,
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            body,
            &same,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let body = Some(json!({"refresh_token": "not-a-token"}));
    let (status, _, answer) = raw(
        &app,
        Method::POST,
        "/api/v1/auth/refresh",
        None,
        body,
        &same,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_on_every_response() {
    let app = TestApp::spawn_with(Backend::Sqlite, |variables| {
        variables.insert("SECURE_HSTS_SECONDS".into(), "31536000".into());
        variables.insert("TRUSTED_PROXIES".into(), "127.0.0.1".into());
    })
    .await;
    let (_, token) = app.user_with_token("dispatcher", Role::Dispatcher).await;
    type Case<'a> = (
        Method,
        &'a str,
        Option<&'a str>,
        &'a [(&'a str, &'a str)],
        StatusCode,
    );
    let cases: [Case; 5] = [
        (Method::GET, "/healthz", None, &[], StatusCode::OK),
        (Method::GET, "/api/v1/me", Some(&token), &[], StatusCode::OK),
        (
            Method::GET,
            "/api/v1/me",
            None,
            &[],
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::GET,
            "/no/such/page",
            None,
            &[],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api/openapi.json",
            None,
            &[("host", "evil.example")],
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, token, headers, expected) in cases {
        let (status, received, body) = raw(&app, method, path, token, None, headers).await;
        assert_eq!(status, expected, "{path}: {body}");
        assert_eq!(
            header_text(&received, "x-content-type-options"),
            "nosniff",
            "{path}"
        );
        assert_eq!(header_text(&received, "x-frame-options"), "DENY", "{path}");
        assert_eq!(
            header_text(&received, "referrer-policy"),
            "same-origin",
            "{path}"
        );
        let policy = header_text(&received, "content-security-policy");
        for directive in [
            "frame-ancestors 'none'",
            "object-src 'none'",
            "base-uri 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert_eq!(
            header_text(&received, "cache-control"),
            "no-store",
            "{path}"
        );
        // Plain HTTP from the proxy without a forwarded scheme: no HSTS.
        assert!(
            received.get("strict-transport-security").is_none(),
            "{path}"
        );
    }

    let https = [("x-forwarded-proto", "https")];
    let (_, received, _) = get_with(&app, "/healthz", &https).await;
    assert_eq!(
        header_text(&received, "strict-transport-security"),
        "max-age=31536000"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_ignores_untrusted_scheme() {
    let app = TestApp::spawn_with(Backend::Sqlite, |variables| {
        variables.insert("SECURE_HSTS_SECONDS".into(), "31536000".into());
    })
    .await;
    let https = [("x-forwarded-proto", "https")];
    let (_, received, _) = get_with(&app, "/healthz", &https).await;
    assert!(
        received.get("strict-transport-security").is_none(),
        "{received:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_check_follows_allowed_hosts() {
    let app = TestApp::spawn_with(Backend::Sqlite, |variables| {
        variables.insert(
            "ALLOWED_HOSTS".into(),
            "cyltrack.example.co.ke,.depots.example.co.ke".into(),
        );
    })
    .await;
    let cases = [
        ("cyltrack.example.co.ke", StatusCode::OK),
        ("CYLTRACK.example.co.ke:8443", StatusCode::OK),
        ("depots.example.co.ke", StatusCode::OK),
        ("nakuru.depots.example.co.ke", StatusCode::OK),
        ("evil.example", StatusCode::BAD_REQUEST),
        (
            "cyltrack.example.co.ke.evil.example",
            StatusCode::BAD_REQUEST,
        ),
        ("localhost", StatusCode::BAD_REQUEST),
        ("127.0.0.1", StatusCode::BAD_REQUEST),
        ("bad host!", StatusCode::BAD_REQUEST),
    ];
    for (host, expected) in cases {
        let (status, _, body) = get_with(&app, "/api/openapi.json", &[("host", host)]).await;
        assert_eq!(status, expected, "{host}: {body}");
        if expected == StatusCode::BAD_REQUEST {
            assert_eq!(error_of(&body).0, "invalid_host", "{host}: {body}");
        }
    }
    // Load balancers probe the health check by IP address.
    let (status, _, body) = get_with(&app, "/healthz", &[("host", "10.0.0.5:8000")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.stop().await;

    let debug = TestApp::spawn_with(Backend::Sqlite, |variables| {
        variables.insert("ALLOWED_HOSTS".into(), "cyltrack.example.co.ke".into());
        variables.insert("DEBUG".into(), "true".into());
    })
    .await;
    for host in ["localhost:8000", "127.0.0.1", "[::1]:8000"] {
        let (status, _, body) = get_with(&debug, "/api/openapi.json", &[("host", host)]).await;
        assert_eq!(status, StatusCode::OK, "with DEBUG, {host}: {body}");
    }
    let (status, _, _) = get_with(&debug, "/api/openapi.json", &[("host", "evil.example")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    debug.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_redirect_uses_trusted_scheme() {
    let app = TestApp::spawn_with(Backend::Sqlite, |variables| {
        variables.insert("SECURE_SSL_REDIRECT".into(), "true".into());
        variables.insert("TRUSTED_PROXIES".into(), "127.0.0.1".into());
        variables.insert("ALLOWED_HOSTS".into(), "cyltrack.example.co.ke".into());
    })
    .await;
    let host = [("host", "cyltrack.example.co.ke")];
    let (status, headers, _) = get_with(&app, "/api/openapi.json?probe=1", &host).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        header_text(&headers, "location"),
        "https://cyltrack.example.co.ke/api/openapi.json?probe=1"
    );

    let body = Some(json!({"username": "someone", "password": "wrong password"}));
    let (status, headers, _) =
        raw(&app, Method::POST, "/api/v1/auth/login", None, body, &host).await;
    assert_eq!(
        status,
        StatusCode::PERMANENT_REDIRECT,
        "a POST keeps its method"
    );
    assert_eq!(
        header_text(&headers, "location"),
        "https://cyltrack.example.co.ke/api/v1/auth/login"
    );

    let behind_tls = [
        ("host", "cyltrack.example.co.ke"),
        ("x-forwarded-proto", "https"),
    ];
    let (status, _, body) = get_with(&app, "/api/openapi.json", &behind_tls).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = get_with(&app, "/api/openapi.json", &[("host", "evil.example")]).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the host is checked before any redirect: {body}"
    );
    app.stop().await;

    // Without TRUSTED_PROXIES the forwarded scheme is anyone's claim.
    let direct = TestApp::spawn_with(Backend::Sqlite, |variables| {
        variables.insert("SECURE_SSL_REDIRECT".into(), "true".into());
    })
    .await;
    let (status, _, _) = get_with(
        &direct,
        "/api/openapi.json",
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    // The health check is served over plain HTTP.
    let (status, _, _) = get_with(&direct, "/healthz", &[]).await;
    assert_eq!(status, StatusCode::OK);
    direct.stop().await;
}
