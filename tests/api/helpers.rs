//! Test harness: a fresh database, a running server and a logged-in client
//! for each test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use cyltrack::auth::create_account;
use cyltrack::auth::tokens::{TokenKind, TokenService};
use cyltrack::config::{self, Variables};
use cyltrack::domain::Role;
use cyltrack::domain::user::NewUser;
use cyltrack::domain::value::{FullName, Password, Username};
use cyltrack::storage::postgres::PostgresStore;
use cyltrack::storage::sqlite::SqliteStore;
use cyltrack::storage::{Store, UserRecord};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Variable holding the URL of a PostgreSQL database that tests may create
/// schemas in. When it is unset the PostgreSQL half of the suite is skipped.
pub const POSTGRES_URL_VARIABLE: &str = "CYLTRACK_TEST_POSTGRES_URL";

/// The password of every account the harness creates.
pub const PASSWORD: &str = "a long test password";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs `test` on both backends as two test functions named `sqlite` and
/// `postgres` inside a module named after the test.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::helpers::Backend;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if $crate::helpers::postgres_url().is_none() {
                        eprintln!("skipped: {} is not set", $crate::helpers::POSTGRES_URL_VARIABLE);
                        return;
                    }
                    super::$name(Backend::Postgres).await;
                }
            }
        )*
    };
}
pub(crate) use on_both_backends;

pub fn postgres_url() -> Option<String> {
    std::env::var(POSTGRES_URL_VARIABLE)
        .ok()
        .filter(|url| !url.is_empty())
}

/// Opens a fresh, migrated store. On PostgreSQL each store gets its own schema.
pub async fn fresh_store(backend: Backend, dir: &std::path::Path) -> Arc<dyn Store> {
    fresh_store_with_raw(backend, dir).await.0
}

/// Opens a fresh, migrated store and returns it with the location of its
/// database, for raw SQL.
pub async fn fresh_store_with_raw(
    backend: Backend,
    dir: &std::path::Path,
) -> (Arc<dyn Store>, RawDatabase) {
    let (store, database): (Arc<dyn Store>, RawDatabase) = match backend {
        Backend::Sqlite => {
            let path = dir.join("test.db");
            let store = SqliteStore::open(&path, test_chain_key())
                .await
                .unwrap_or_else(|error| panic!("open SQLite: {error}"));
            (Arc::new(store), RawDatabase::Sqlite { path })
        }
        Backend::Postgres => {
            let (store, database) = postgres_schema_store().await;
            (Arc::new(store), database)
        }
    };
    store
        .migrate()
        .await
        .unwrap_or_else(|error| panic!("migrate: {error}"));
    (store, database)
}

async fn postgres_schema_store() -> (PostgresStore, RawDatabase) {
    use sqlx::postgres::PgConnectOptions;
    use std::str::FromStr;

    let url = postgres_url().unwrap_or_else(|| panic!("{POSTGRES_URL_VARIABLE} is not set"));
    let schema = format!("test_{}", Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&url)
        .await
        .unwrap_or_else(|error| panic!("connect to {POSTGRES_URL_VARIABLE}: {error}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap_or_else(|error| panic!("create schema: {error}"));
    admin.close().await;

    let options = PgConnectOptions::from_str(&url)
        .unwrap_or_else(|error| panic!("parse {POSTGRES_URL_VARIABLE}: {error}"))
        .options([("search_path", schema.as_str())]);
    let store = PostgresStore::connect_with(options, test_chain_key())
        .await
        .unwrap_or_else(|error| panic!("connect to schema {schema}: {error}"));
    (store, RawDatabase::Postgres { url, schema })
}

/// Location of a test's database, for tests that change it behind the
/// service's back.
#[derive(Debug, Clone)]
pub enum RawDatabase {
    Sqlite {
        path: PathBuf,
    },
    /// `url` is the harness's PostgreSQL URL, and the tables are in `schema`.
    Postgres {
        url: String,
        schema: String,
    },
}

impl RawDatabase {
    /// Opens a pool as the harness's database user. On PostgreSQL the
    /// search path is the test's schema.
    pub async fn pool(&self) -> RawPool {
        match self {
            RawDatabase::Sqlite { path } => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .busy_timeout(std::time::Duration::from_secs(10));
                let pool = sqlx::SqlitePool::connect_with(options)
                    .await
                    .unwrap_or_else(|error| panic!("open {}: {error}", path.display()));
                RawPool::Sqlite(pool)
            }
            RawDatabase::Postgres { url, schema } => {
                RawPool::Postgres(raw_postgres_pool(url, None, schema).await)
            }
        }
    }
}

/// Connects to `url` as `user` (the URL's user when `None`) with the search
/// path set to `schema`.
pub async fn raw_postgres_pool(url: &str, user: Option<&str>, schema: &str) -> sqlx::PgPool {
    use sqlx::postgres::PgConnectOptions;
    use std::str::FromStr;

    let mut options = PgConnectOptions::from_str(url)
        .unwrap_or_else(|error| panic!("parse {POSTGRES_URL_VARIABLE}: {error}"))
        .options([("search_path", schema)]);
    if let Some(user) = user {
        options = options.username(user);
    }
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap_or_else(|error| panic!("connect to schema {schema}: {error}"))
}

/// A raw connection pool to a test's database.
pub enum RawPool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl RawPool {
    /// Runs one or more statements and returns the rows they affected.
    pub async fn execute(&self, sql: &str) -> Result<u64, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        let result = match self {
            RawPool::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await?.rows_affected(),
            RawPool::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await?.rows_affected(),
        };
        Ok(result)
    }

    /// Returns the first column of each row as text.
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        use sqlx::Row;
        let query = sqlx::AssertSqlSafe(sql.to_string());
        let fetched = match self {
            RawPool::Sqlite(pool) => sqlx::query(query)
                .fetch_all(pool)
                .await
                .and_then(|rows| rows.iter().map(|row| row.try_get::<String, _>(0)).collect()),
            RawPool::Postgres(pool) => sqlx::query(query)
                .fetch_all(pool)
                .await
                .and_then(|rows| rows.iter().map(|row| row.try_get::<String, _>(0)).collect()),
        };
        fetched.unwrap_or_else(|error| panic!("{sql}: {error}"))
    }

    pub async fn close(&self) {
        match self {
            RawPool::Sqlite(pool) => pool.close().await,
            RawPool::Postgres(pool) => pool.close().await,
        }
    }
}

/// Returns the chain key that `test_variables` gives the server.
pub fn test_chain_key() -> cyltrack::domain::audit::ChainKey {
    cyltrack::domain::audit::ChainKey::derive(TEST_SECRET_KEY.as_bytes())
}

/// `SECRET_KEY` of every test server.
pub const TEST_SECRET_KEY: &str = "ssssssssssssssssssssssssssssssssssssssssssssssss";

/// Configuration variables with strong secrets and DEBUG off, as in
/// production.
pub fn test_variables(dir: &std::path::Path) -> Variables {
    let mut variables = Variables::new();
    variables.insert("SECRET_KEY".into(), TEST_SECRET_KEY.into());
    variables.insert("JWT_SECRET_KEY".into(), "j".repeat(48));
    variables.insert(
        "SECRETS_FILE".into(),
        dir.join("secrets.env").display().to_string(),
    );
    variables.insert(
        "DATABASE_URL".into(),
        format!("sqlite://{}", dir.join("unused.db").display()),
    );
    variables.insert("LISTEN_ADDR".into(), "127.0.0.1:0".into());
    variables
}

/// A running server with its store and an HTTP client.
pub struct TestApp {
    pub address: SocketAddr,
    pub store: Arc<dyn Store>,
    /// The store's database, for raw SQL.
    pub database: RawDatabase,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Starts a server after `adjust` has changed the configuration
    /// variables.
    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Variables)) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("temp dir: {error}"));
        let mut variables = test_variables(dir.path());
        adjust(&mut variables);
        let (config, _) =
            config::load(&variables).unwrap_or_else(|error| panic!("config: {error}"));

        let (store, database) = fresh_store_with_raw(backend, dir.path()).await;
        let state = cyltrack::app::build_state(config, store.clone())
            .await
            .unwrap_or_else(|error| panic!("build state: {error}"));
        let (listener, address) =
            cyltrack::app::bind("127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()))
                .await
                .unwrap_or_else(|error| panic!("bind: {error}"));

        let (shutdown, signal) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let stop = async move {
                let _ = signal.await;
            };
            if let Err(error) = cyltrack::app::serve(state, listener, stop).await {
                panic!("server failed: {error}");
            }
        });

        Self {
            address,
            store,
            database,
            client: reqwest::Client::new(),
            shutdown: Some(shutdown),
            server: Some(server),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    /// Creates an account directly in the store.
    pub async fn create_user(&self, username: &str, role: Role) -> UserRecord {
        let new_user = NewUser {
            username: Username::parse("username", username)
                .unwrap_or_else(|error| panic!("{error}")),
            full_name: FullName::parse("full_name", "Test User")
                .unwrap_or_else(|error| panic!("{error}")),
            email: None,
            phone: None,
            role,
            password: Password::parse("password", PASSWORD.into())
                .unwrap_or_else(|error| panic!("{error}")),
        };
        create_account(self.store.as_ref(), new_user)
            .await
            .unwrap_or_else(|error| panic!("create user {username}: {error}"))
    }

    /// Logs in and returns the whole token response.
    pub async fn login(&self, username: &str, password: &str) -> (StatusCode, Value) {
        self.send(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": username, "password": password})),
        )
        .await
    }

    /// Creates a user and returns them with an access token.
    pub async fn user_with_token(&self, username: &str, role: Role) -> (UserRecord, String) {
        let user = self.create_user(username, role).await;
        let (status, body) = self.login(username, PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "login {username}: {body}");
        let token = body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (user, token)
    }

    /// Sends a JSON request and returns the status and the parsed body
    /// (`Value::Null` when the body is empty or not JSON).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|error| panic!("request {path}: {error}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    /// Registers a cylinder through the API and returns its JSON.
    pub async fn register_cylinder(&self, token: &str, serial: &str) -> Value {
        let (status, body) = self
            .post("/api/v1/cylinders", token, cylinder_body(serial))
            .await;
        assert_eq!(status, StatusCode::CREATED, "register {serial}: {body}");
        body
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

/// Returns a valid registration body.
pub fn cylinder_body(serial: &str) -> Value {
    json!({
        "serial_number": serial,
        "brand": "Jiko Gas",
        "capacity_kg": 13,
        "manufacture_date": "2022-03-01",
        "expiry_date": "2032-03-01",
    })
}

/// Returns the `error.code` and `error.field` of an error body.
pub fn error_of(body: &Value) -> (String, String) {
    (
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body["error"]["field"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Counts the items a staff token lists at an endpoint (up to 200 items),
/// to prove that a rejected request wrote nothing.
pub async fn count_items(app: &TestApp, path: &str, staff_token: &str) -> usize {
    let separator = if path.contains('?') { '&' } else { '?' };
    let (status, body) = app
        .get(&format!("{path}{separator}per_page=200"), staff_token)
        .await;
    assert_eq!(status, StatusCode::OK, "list {path}: {body}");
    body["items"].as_array().map(Vec::len).unwrap_or_default()
}

/// Signs an access token for `user_id` issued at `issued_at`, with the
/// JWT key that `test_variables` sets for every test server. The token
/// carries no role, as tokens issued before roles were added did not.
pub fn sign_access_token(user_id: Uuid, issued_at: chrono::DateTime<chrono::Utc>) -> String {
    let signed = tempfile::tempdir()
        .map_err(|error| error.to_string())
        .and_then(|dir| {
            config::load(&test_variables(dir.path())).map_err(|error| error.to_string())
        })
        .and_then(|(config, _)| TokenService::new(&config.jwt).map_err(|error| error.to_string()))
        .and_then(|tokens| {
            tokens
                .issue(TokenKind::Access, user_id, None, None, issued_at)
                .map_err(|error| error.to_string())
        });
    assert!(signed.is_ok(), "sign an access token: {signed:?}");
    signed.map(|issued| issued.token).unwrap_or_default()
}
