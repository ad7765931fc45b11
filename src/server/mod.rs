//! The connection layer under the router: accepts TCP connections, runs the
//! TLS handshake when HTTPS is configured, and serves HTTP/1.1 on each
//! connection with hyper under the request head limits.

pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::Layer;

use crate::config::ServerLimits;

/// How long a client may take for the TLS handshake, and separately for
/// sending the request line and headers of each request. The head timer
/// also runs while a keep-alive connection is idle. Slower clients are
/// disconnected, so that they cannot hold connections open for free.
// NOTE: nothing bounds how long a client may take to read a response body,
// and graceful shutdown waits for such a client too.
pub const HEAD_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The pause after a failure to accept a connection that is not the
/// client's fault, such as running out of file descriptors, before the
/// next attempt.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Whether connections are plain HTTP or HTTPS.
#[derive(Clone)]
pub enum Transport {
    Http,
    Https(TlsAcceptor),
}

impl Transport {
    /// Returns the URL scheme, for logs.
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Https(_) => "https",
        }
    }

    /// Loads the certificate and key when `files` is set.
    pub fn from_config(files: Option<&crate::config::TlsFiles>) -> anyhow::Result<Self> {
        match files {
            None => Ok(Transport::Http),
            Some(files) => {
                let config = tls::server_config(files)?;
                Ok(Transport::Https(TlsAcceptor::from(config)))
            }
        }
    }
}

/// Accepts connections on `listener` until `shutdown` completes, then stops
/// accepting and waits for the requests in flight to finish.
pub async fn run(
    listener: TcpListener,
    router: Router,
    transport: Transport,
    limits: &ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let http = http1_builder(limits);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(connection) => connection,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                tracing::error!(error = %error, "cannot accept a connection; retrying in 1 s");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };

        let connection = Connection {
            peer,
            http: http.clone(),
            router: router.clone(),
            watcher: graceful.watcher(),
        };
        tokio::spawn(connection.serve(stream, transport.clone()));
    }

    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "stopped accepting connections; waiting for requests in flight"
    );
    graceful.shutdown().await;
}

/// Configures HTTP/1.1 with the head limits. hyper responds with 431 to a
/// request whose head has more than `max_headers` fields or more than
/// `max_head_bytes` bytes, and closes the connection.
fn http1_builder(limits: &ServerLimits) -> Arc<http1::Builder> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_READ_TIMEOUT)
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_head_bytes);
    Arc::new(builder)
}

/// Errors from `accept` that concern one connection only, which the client
/// closed before it was accepted.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

/// One accepted connection and what it needs to be served.
struct Connection {
    peer: SocketAddr,
    http: Arc<http1::Builder>,
    router: Router,
    watcher: Watcher,
}

impl Connection {
    async fn serve(self, stream: TcpStream, transport: Transport) {
        let Transport::Https(acceptor) = transport else {
            self.serve_http(stream).await;
            return;
        };

        // Failed handshakes are logged at debug level only, because every
        // port scanner and every client without TLS 1.2 causes one.
        match tokio::time::timeout(HEAD_READ_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => self.serve_http(stream).await,
            Ok(Err(error)) => {
                tracing::debug!(peer = %self.peer, error = %error, "TLS handshake failed");
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "TLS handshake timed out");
            }
        }
    }

    /// Serves HTTP/1.1 requests on `stream` until the client closes it, or
    /// until shutdown once the request in flight has its response.
    async fn serve_http<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Handlers read the client's address through `ConnectInfo`.
        let service = axum::Extension(ConnectInfo(self.peer)).layer(self.router);
        let connection = self
            .http
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));

        // Errors here are the client's: a closed connection, a malformed or
        // oversized head (hyper has already sent a 4xx) or a head read
        // timeout.
        if let Err(error) = self.watcher.watch(connection).await {
            tracing::debug!(peer = %self.peer, error = %error, "connection ended with an error");
        }
    }
}
