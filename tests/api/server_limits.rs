//! Serving HTTPS with rustls, and the server limits: body size, header
//! count and head size, request timeout and concurrent requests. These
//! tests talk raw HTTP/1.1 over TCP or TLS, because they need to stall a
//! body or send an oversized head, which a normal client does not do. The
//! database plays no part here, so they run on SQLite only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cyltrack::config::{self, Variables};
use cyltrack::domain::Role;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::helpers::{
    Backend, PASSWORD, TestApp, count_items, cylinder_body, fresh_store, test_variables,
};

/// How long a test waits for any one response before it fails.
const RESPONSE_WAIT: Duration = Duration::from_secs(15);

/// A response read from the wire.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Formats an HTTP/1.1 request with `Connection: close`, so the server
/// closes the connection after its response.
fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text.into_bytes()
}

/// Reads until the server closes the connection, then parses the response.
/// A reset after the response counts as the end, since hyper may close a
/// connection whose request it did not read in full.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> RawResponse {
    let mut bytes = Vec::new();
    let reading = async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(count) => bytes.extend_from_slice(&buffer[..count]),
            }
        }
    };
    if tokio::time::timeout(RESPONSE_WAIT, reading).await.is_err() {
        panic!("no response within {RESPONSE_WAIT:?}");
    }
    parse_response(&bytes)
}

fn parse_response(bytes: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    RawResponse {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Sends `request` and reads the whole response.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> RawResponse {
    stream
        .write_all(request)
        .await
        .unwrap_or_else(|error| panic!("send request: {error}"));
    read_response(stream).await
}

async fn connect(address: SocketAddr) -> TcpStream {
    TcpStream::connect(address)
        .await
        .unwrap_or_else(|error| panic!("connect to {address}: {error}"))
}

/// Sends one plain HTTP request on a new connection.
async fn http_exchange(address: SocketAddr, request: &[u8]) -> RawResponse {
    exchange(&mut connect(address).await, request).await
}

async fn spawn_sqlite(settings: &[(&str, &str)]) -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, |variables| {
        for (name, value) in settings {
            variables.insert((*name).into(), (*value).into());
        }
    })
    .await
}

/// Runs a command to completion off the async threads.
async fn run_command(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || {
        command
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("run {command:?}: {error}"))
    })
    .await
    .unwrap_or_else(|error| panic!("join: {error}"))
}

/// A self-signed certificate for localhost and 127.0.0.1 with its key,
/// made by the openssl command.
struct Certificate {
    cert: PathBuf,
    key: PathBuf,
}

async fn self_signed_certificate(dir: &Path, name: &str) -> Certificate {
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    let mut command = Command::new("openssl");
    command.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"]);
    command.args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]);
    command.args(["-subj", "/CN=localhost"]);
    command.args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]);
    command.args(["-addext", "basicConstraints=critical,CA:FALSE"]);
    command.arg("-keyout").arg(&key).arg("-out").arg(&cert);
    let output = run_command(command).await;
    assert!(
        output.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Certificate { cert, key }
}

fn tls_variables(certificate: &Certificate) -> Vec<(&'static str, String)> {
    vec![
        ("TLS_CERT_FILE", certificate.cert.display().to_string()),
        ("TLS_KEY_FILE", certificate.key.display().to_string()),
    ]
}

async fn spawn_https(certificate: &Certificate) -> TestApp {
    let settings = tls_variables(certificate);
    TestApp::spawn_with(Backend::Sqlite, |variables| {
        for (name, value) in settings {
            variables.insert(name.into(), value);
        }
    })
    .await
}

/// Builds a rustls client that trusts only `certificate` and offers only
/// `version`.
fn tls_connector(
    certificate: &Certificate,
    version: &'static SupportedProtocolVersion,
) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(&certificate.cert)
        .unwrap_or_else(|error| panic!("read certificate: {error}"));
    for certificate in certificates {
        let certificate = certificate.unwrap_or_else(|error| panic!("parse certificate: {error}"));
        roots
            .add(certificate)
            .unwrap_or_else(|error| panic!("trust certificate: {error}"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap_or_else(|error| panic!("client versions: {error}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Sends one request over a new TLS connection and returns the response
/// with the protocol version the handshake agreed on.
async fn https_exchange(
    address: SocketAddr,
    connector: &TlsConnector,
    request: &[u8],
) -> (RawResponse, Option<rustls::ProtocolVersion>) {
    let server_name = ServerName::try_from("localhost").unwrap_or_else(|_| unreachable!());
    let mut stream = connector
        .connect(server_name, connect(address).await)
        .await
        .unwrap_or_else(|error| panic!("TLS handshake with {address}: {error}"));
    let version = stream.get_ref().1.protocol_version();
    (exchange(&mut stream, request).await, version)
}

/// Sends a JSON request over HTTPS and returns the status and body.
async fn https_json(
    app: &TestApp,
    connector: &TlsConnector,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let authorization = token.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(value) = &authorization {
        headers.push(("Authorization", value.as_str()));
    }
    let request = request_bytes("POST", path, &headers, &body.to_string());
    let (response, _) = https_exchange(app.address, connector, &request).await;
    (response.status, response.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_tls12_and_tls13() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let certificate = self_signed_certificate(dir.path(), "server").await;
    let app = spawn_https(&certificate).await;

    let versions = [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ];
    for (offered, expected) in versions {
        let connector = tls_connector(&certificate, offered);

        let request = request_bytes("GET", "/healthz", &[], "");
        let (health, agreed) = https_exchange(app.address, &connector, &request).await;
        assert_eq!(agreed, Some(expected));
        assert_eq!(health.status, 200, "{health:?}");
        assert_eq!(health.json()["status"], "ok", "{health:?}");

        let request = request_bytes("GET", "/no/such/page", &[], "");
        let (missing, _) = https_exchange(app.address, &connector, &request).await;
        assert_eq!(missing.status, 404, "{missing:?}");
        assert_eq!(missing.error_code(), "not_found", "{missing:?}");
        assert!(missing.header("x-request-id").is_some(), "{missing:?}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_rejects_tls11_client() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let certificate = self_signed_certificate(dir.path(), "server").await;
    let app = spawn_https(&certificate).await;
    let address = app.address.to_string();

    // SECLEVEL=0 lets OpenSSL 3 offer TLS 1.1 at all, so that a failure
    // comes from the server.
    let s_client = |version: &str| {
        let mut command = Command::new("openssl");
        command.args(["s_client", "-connect", &address, "-servername", "localhost"]);
        command.args([version, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        command
    };

    let modern = run_command(s_client("-tls1_2")).await;
    assert!(
        modern.status.success(),
        "a TLS 1.2 client fails: {}",
        String::from_utf8_lossy(&modern.stderr)
    );

    let legacy = run_command(s_client("-tls1_1")).await;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&legacy.stdout),
        String::from_utf8_lossy(&legacy.stderr)
    );
    assert!(
        !legacy.status.success(),
        "a TLS 1.1 client connects: {output}"
    );
    // rustls 0.23 rejects a ClientHello without TLS 1.2 or 1.3 with a
    // handshake_failure alert, which s_client reports by number.
    assert!(
        output.contains("SSL alert number"),
        "the handshake did not end with an alert from the server: {output}"
    );
    assert!(output.contains("Cipher is (NONE)"), "{output}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_handlers_see_peer_address() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let certificate = self_signed_certificate(dir.path(), "server").await;
    let app = spawn_https(&certificate).await;
    let connector = tls_connector(&certificate, &rustls::version::TLS13);
    app.create_user("tls.dispatcher", Role::Dispatcher).await;

    let login = json!({"username": "tls.dispatcher", "password": PASSWORD});
    let (status, tokens) = https_json(&app, &connector, "/api/v1/auth/login", None, &login).await;
    assert_eq!(status, 200, "{tokens}");
    let token = tokens["access_token"].as_str().unwrap_or_default();

    let (status, cylinder) = https_json(
        &app,
        &connector,
        "/api/v1/cylinders",
        Some(token),
        &cylinder_body("TLS-0001"),
    )
    .await;
    assert_eq!(status, 201, "{cylinder}");

    // The scan handler records the client's address from ConnectInfo.
    let scan = json!({"code": cylinder["qr_code"], "scan_type": "QR"});
    let (status, body) = https_json(&app, &connector, "/api/v1/scans", Some(token), &scan).await;
    assert_eq!(status, 201, "{body}");
    let pool = app.database.pool().await;
    let addresses = pool.texts("SELECT ip_address FROM scan_context").await;
    pool.close().await;
    assert_eq!(addresses, ["127.0.0.1"]);
    app.stop().await;
}

/// Runs `app::serve` with the TLS files and returns its error message.
async fn serve_error(dir: &Path, cert: &Path, key: &Path) -> String {
    let mut variables: Variables = test_variables(dir);
    variables.insert("TLS_CERT_FILE".into(), cert.display().to_string());
    variables.insert("TLS_KEY_FILE".into(), key.display().to_string());
    let (config, _) = config::load(&variables).unwrap_or_else(|error| panic!("config: {error}"));
    let store = fresh_store(Backend::Sqlite, dir).await;
    let state = cyltrack::app::build_state(config, store)
        .await
        .unwrap_or_else(|error| panic!("build state: {error}"));
    let (listener, _) =
        cyltrack::app::bind("127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()))
            .await
            .unwrap_or_else(|error| panic!("bind: {error}"));

    let serving = cyltrack::app::serve(state, listener, std::future::pending());
    match tokio::time::timeout(Duration::from_secs(10), serving).await {
        Ok(Err(error)) => format!("{error:#}"),
        Ok(Ok(())) => panic!("the server stopped without an error"),
        Err(_) => panic!(
            "the server started with {} and {}",
            cert.display(),
            key.display()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_stop_startup() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let good = self_signed_certificate(dir.path(), "good").await;
    let other = self_signed_certificate(dir.path(), "other").await;
    let missing = dir.path().join("missing.pem");
    let not_pem = dir.path().join("not-pem.txt");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap_or_else(|e| panic!("{e}"));
    // A damaged key whose text must not appear in any message.
    let damaged_key = dir.path().join("damaged-key.pem");
    std::fs::write(
        &damaged_key,
        "-----BEGIN PRIVATE KEY-----\nS3CR3TKEYMATERIAL!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let cases: [(&str, &Path, &Path, &str, &Path, &str); 6] = [
        (
            "missing cert",
            &missing,
            &good.key,
            "TLS_CERT_FILE",
            &missing,
            "cannot be read",
        ),
        (
            "missing key",
            &good.cert,
            &missing,
            "TLS_KEY_FILE",
            &missing,
            "cannot be read",
        ),
        (
            "cert not PEM",
            &not_pem,
            &good.key,
            "TLS_CERT_FILE",
            &not_pem,
            "contains no CERTIFICATE",
        ),
        (
            "key is a cert",
            &good.cert,
            &good.cert,
            "TLS_KEY_FILE",
            &good.cert,
            "contains no PRIVATE KEY",
        ),
        (
            "damaged key",
            &good.cert,
            &damaged_key,
            "TLS_KEY_FILE",
            &damaged_key,
            "is not a valid PEM",
        ),
        (
            "key of another cert",
            &good.cert,
            &other.key,
            "TLS_KEY_FILE",
            &other.key,
            "cannot be used",
        ),
    ];
    for (case, cert, key, variable, named_path, problem) in cases {
        let case_dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        let message = serve_error(case_dir.path(), cert, key).await;
        assert!(message.contains(variable), "{case}: {message}");
        assert!(
            message.contains(&named_path.display().to_string()),
            "{case}: {message}"
        );
        assert!(message.contains(problem), "{case}: {message}");
        assert!(!message.contains("S3CR3T"), "{case}: {message}");
    }
}

#[tokio::test]
async fn cli_names_missing_certificate() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let missing = dir.path().join("no-such-cert.pem");
    let mut command = Command::new(env!("CARGO_BIN_EXE_cyltrack"));
    command
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("SECRET_KEY", "s".repeat(48))
        .env("JWT_SECRET_KEY", "j".repeat(48))
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("TLS_CERT_FILE", &missing)
        .env("TLS_KEY_FILE", dir.path().join("no-such-key.pem"));
    let output = run_command(command).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("TLS_CERT_FILE"), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(stderr.contains("cannot be read"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_limit_is_413() {
    let app = spawn_sqlite(&[("MAX_REQUEST_BODY_BYTES", "1024")]).await;
    let (_, token) = app
        .user_with_token("body.dispatcher", Role::Dispatcher)
        .await;
    let authorization = format!("Bearer {token}");
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", authorization.as_str()),
    ];

    // A valid registration padded with spaces to the limit, then one byte
    // more.
    let mut body = cylinder_body("BODY-0001").to_string();
    body.push_str(&" ".repeat(1024 - body.len()));
    let request = request_bytes("POST", "/api/v1/cylinders", &headers, &body);
    let at_limit = http_exchange(app.address, &request).await;
    assert_eq!(at_limit.status, 201, "{at_limit:?}");

    let mut body = cylinder_body("BODY-0002").to_string();
    body.push_str(&" ".repeat(1025 - body.len()));
    let request = request_bytes("POST", "/api/v1/cylinders", &headers, &body);
    let over = http_exchange(app.address, &request).await;
    assert_eq!(over.status, 413, "{over:?}");
    assert_eq!(over.error_code(), "payload_too_large", "{over:?}");
    let message = over.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("1024 bytes"), "{message}");

    assert_eq!(count_items(&app, "/api/v1/cylinders", &token).await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_is_431() {
    let app = spawn_sqlite(&[("MAX_REQUEST_HEADERS", "16")]).await;
    let names: Vec<String> = (0..20).map(|index| format!("X-Extra-{index}")).collect();

    // Host and Connection are two of the 16.
    let fourteen: Vec<(&str, &str)> = names[..14]
        .iter()
        .map(|name| (name.as_str(), "1"))
        .collect();
    let request = request_bytes("GET", "/healthz", &fourteen, "");
    let within = http_exchange(app.address, &request).await;
    assert_eq!(within.status, 200, "{within:?}");

    let twenty: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "1")).collect();
    let request = request_bytes("GET", "/healthz", &twenty, "");
    let over = http_exchange(app.address, &request).await;
    assert_eq!(over.status, 431, "{over:?}");

    // The server goes on serving.
    let request = request_bytes("GET", "/healthz", &[], "");
    assert_eq!(http_exchange(app.address, &request).await.status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_is_431() {
    let app = spawn_sqlite(&[("MAX_REQUEST_HEAD_BYTES", "8192")]).await;

    let small = "a".repeat(4000);
    let request = request_bytes("GET", "/healthz", &[("X-Padding", &small)], "");
    let within = http_exchange(app.address, &request).await;
    assert_eq!(within.status, 200, "{within:?}");

    let large = "a".repeat(9000);
    let request = request_bytes("GET", "/healthz", &[("X-Padding", &large)], "");
    let over = http_exchange(app.address, &request).await;
    assert_eq!(over.status, 431, "{over:?}");
    app.stop().await;
}

/// Sends the head of a login request that announces a 100-byte body, and
/// only the first bytes of that body, so that the handler waits for the
/// rest.
async fn start_stalled_login<S: AsyncWrite + Unpin>(stream: &mut S) {
    let head = "POST /api/v1/auth/login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user";
    stream
        .write_all(head.as_bytes())
        .await
        .unwrap_or_else(|error| panic!("send head: {error}"));
    stream
        .flush()
        .await
        .unwrap_or_else(|error| panic!("flush head: {error}"));
}

/// Sends the rest of the stalled login body and reads the response, a 422
/// because the body is not a valid login.
async fn finish_stalled_login<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> RawResponse {
    let rest = format!("{:<94}", "\":\"x\"}");
    stream
        .write_all(rest.as_bytes())
        .await
        .unwrap_or_else(|error| panic!("send rest: {error}"));
    read_response(stream).await
}

/// Opens a connection with a stalled login request on it.
async fn stalled_login(address: SocketAddr) -> TcpStream {
    let mut stream = connect(address).await;
    start_stalled_login(&mut stream).await;
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_times_out_with_408() {
    let app = spawn_sqlite(&[("REQUEST_TIMEOUT", "1")]).await;

    let started = Instant::now();
    let mut stream = stalled_login(app.address).await;
    let response = read_response(&mut stream).await;
    let elapsed = started.elapsed();

    assert_eq!(response.status, 408, "{response:?}");
    assert_eq!(response.error_code(), "request_timeout", "{response:?}");
    assert!(response.header("x-request-id").is_some(), "{response:?}");
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_over_concurrency_limit_is_503() {
    let app = spawn_sqlite(&[("MAX_CONCURRENT_REQUESTS", "1")]).await;
    let health = request_bytes("GET", "/healthz", &[], "");

    // The stalled request takes the only permit once the server has read
    // its head, which happens soon but not at a known moment. If a probe
    // is served first, the stalled request may be the one rejected, and
    // then it is sent again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stalled = stalled_login(app.address).await;
    let rejected = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let response = http_exchange(app.address, &health).await;
        if response.status == 503 || Instant::now() > deadline {
            break response;
        }
        let mut byte = [0u8; 1];
        let waiting = Duration::from_millis(10);
        if tokio::time::timeout(waiting, stalled.read(&mut byte))
            .await
            .is_ok()
        {
            stalled = stalled_login(app.address).await;
        }
    };
    assert_eq!(rejected.status, 503, "{rejected:?}");
    assert_eq!(rejected.error_code(), "overloaded", "{rejected:?}");
    assert_eq!(rejected.header("retry-after"), Some("1"), "{rejected:?}");

    // Finishing the stalled request frees the permit.
    let finished = finish_stalled_login(&mut stalled).await;
    assert_ne!(finished.status, 503, "{finished:?}");
    assert_eq!(http_exchange(app.address, &health).await.status, 200);
    app.stop().await;
}

/// Stops `app` while a request is in flight on `stalled`, and checks that
/// the request still gets its response and that the server then stops.
async fn check_shutdown_waits<S: AsyncRead + AsyncWrite + Unpin>(app: TestApp, stalled: &mut S) {
    let address = app.address;
    start_stalled_login(stalled).await;
    // Give the server time to read the head, so the request is in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the server stopped with a request in flight"
    );

    let finished = finish_stalled_login(stalled).await;
    assert_eq!(finished.status, 422, "{finished:?}");

    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap_or_else(|_| panic!("the server did not stop after its last request"))
        .unwrap_or_else(|error| panic!("join: {error}"));
    assert!(
        TcpStream::connect(address).await.is_err(),
        "still accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_shutdown_lets_request_finish() {
    let app = spawn_sqlite(&[]).await;
    let mut stream = connect(app.address).await;
    check_shutdown_waits(app, &mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_shutdown_lets_request_finish() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let certificate = self_signed_certificate(dir.path(), "server").await;
    let app = spawn_https(&certificate).await;
    let connector = tls_connector(&certificate, &rustls::version::TLS13);
    let server_name = ServerName::try_from("localhost").unwrap_or_else(|_| unreachable!());
    let mut stream = connector
        .connect(server_name, connect(app.address).await)
        .await
        .unwrap_or_else(|error| panic!("TLS handshake: {error}"));
    check_shutdown_waits(app, &mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_https_gets_hsts_without_redirect() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let certificate = self_signed_certificate(dir.path(), "server").await;
    let mut settings = tls_variables(&certificate);
    settings.push(("SECURE_SSL_REDIRECT", "true".into()));
    settings.push(("SECURE_HSTS_SECONDS", "31536000".into()));
    settings.push(("SECURE_HSTS_INCLUDE_SUBDOMAINS", "true".into()));
    let app = TestApp::spawn_with(Backend::Sqlite, |variables| {
        for (name, value) in settings {
            variables.insert(name.into(), value);
        }
    })
    .await;

    // A request that arrived over cyltrack's own TLS is already secure:
    // it is served, not redirected, and gets HSTS.
    let connector = tls_connector(&certificate, &rustls::version::TLS13);
    let request = request_bytes("GET", "/healthz", &[], "");
    let (health, _) = https_exchange(app.address, &connector, &request).await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(
        health.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains"),
        "{health:?}"
    );
    assert_eq!(health.header("x-frame-options"), Some("DENY"), "{health:?}");
    app.stop().await;
}
