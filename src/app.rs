//! Start-up: connect and migrate the database, build the application state
//! and serve HTTP or HTTPS until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::auth::password;
use crate::auth::tokens::TokenService;
use crate::config::{Config, DatabaseTarget};
use crate::domain::audit::ChainKey;
use crate::domain::codes::fill_random;
use crate::domain::value::Password;
use crate::http::{self, AppState};
use crate::ratelimit::RateLimiter;
use crate::server::{self, Transport};
use crate::storage::{self, Store};

/// Connects to the configured database and applies migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let description = match &config.database {
        DatabaseTarget::Sqlite { path } => format!("SQLite database {}", path.display()),
        DatabaseTarget::Postgres { .. } => "PostgreSQL database from DATABASE_URL".to_string(),
    };
    let store = storage::connect(&config.database, chain_key(config))
        .await
        .with_context(|| format!("cannot open the {description}"))?;
    // A restricted service role may read the schema but not create tables,
    // and sqlx's migrator always tries to create its table. So migrations
    // run only when some are pending, which needs the owner role.
    let pending = store.pending_migrations().await?;
    if pending > 0 {
        store.migrate().await.with_context(|| {
            format!(
                "cannot apply {pending} pending migrations to the {description}; \
                 run `cyltrack migrate` as the database owner"
            )
        })?;
    }
    tracing::info!(database = %description, "database ready");
    Ok(store)
}

/// Derives the key of the history chain from `SECRET_KEY`.
pub fn chain_key(config: &Config) -> ChainKey {
    use secrecy::ExposeSecret;
    ChainKey::derive(config.secret_key.expose_secret().as_bytes())
}

/// Builds the state that handlers share.
pub async fn build_state(config: Config, store: Arc<dyn Store>) -> anyhow::Result<AppState> {
    let tokens = TokenService::new(&config.jwt).context("cannot load the JWT keys")?;

    let mut decoy = [0u8; 24];
    fill_random(&mut decoy)?;
    let decoy_plain = hex::encode(decoy);
    let decoy = Password::parse("decoy", decoy_plain).map_err(|error| anyhow::anyhow!(error))?;
    let decoy_password_hash = password::hash(&decoy)
        .await
        .context("cannot compute the decoy password hash")?;

    let limiter = match &config.redis_url {
        Some(url) => RateLimiter::with_redis(url, &config.redis_key_prefix)?,
        None => RateLimiter::in_process(),
    };
    limiter.probe().await;

    Ok(AppState {
        config: Arc::new(config),
        store,
        tokens: Arc::new(tokens),
        decoy_password_hash: decoy_password_hash.into(),
        limiter: Arc::new(limiter),
    })
}

/// Binds `addr` and returns the listener with the address actually bound,
/// so that callers may ask for port 0.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves HTTP, or HTTPS when `TLS_CERT_FILE` and `TLS_KEY_FILE` are set,
/// until `shutdown` completes. Then it lets in-flight requests finish and
/// closes the database pool. An unusable certificate or key stops it before
/// it serves anything.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = state.store.clone();
    let transport = match Transport::from_config(state.config.tls.as_ref()) {
        Ok(transport) => transport,
        Err(error) => {
            store.close().await;
            return Err(error.context("cannot serve HTTPS"));
        }
    };
    let limits = state.config.server_limits;
    let router = http::router(state);

    // Log watchers and the CLI tests read the bound address from this line.
    let address = listener.local_addr()?;
    tracing::info!(%address, scheme = transport.scheme(), "listening");
    server::run(listener, router, transport, &limits, shutdown).await;

    store.close().await;
    tracing::info!("server stopped");
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };

    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = interrupt => tracing::info!("received Ctrl-C; shutting down"),
        () = terminate => tracing::info!("received SIGTERM; shutting down"),
    }
}
