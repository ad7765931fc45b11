//! The middleware every request passes first: it resolves the client, checks
//! the Host header against `ALLOWED_HOSTS`, redirects plain HTTP when
//! `SECURE_SSL_REDIRECT` is on, and adds the security headers to every
//! response, errors included.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::client;
use super::error::ApiError;
use crate::config::{Config, LOOPBACK_HOSTS};

/// The policy for HTML pages: only this origin's own resources, no
/// plugins, no `<base>` tricks and no framing.
const HTML_POLICY: &str = "default-src 'self'; frame-ancestors 'none'; object-src 'none'; \
     base-uri 'none'; form-action 'self'";

/// The path of the health check, which reveals nothing but "ok".
const HEALTH_PATH: &str = "/healthz";

/// The policy for everything else: a JSON or text response loads nothing.
const DATA_POLICY: &str =
    "default-src 'none'; frame-ancestors 'none'; object-src 'none'; base-uri 'none'";

pub async fn guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let config = &state.config;
    let tls = config.tls.is_some();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);

    // The health check skips the host check and the redirect: load
    // balancers probe it by IP address and over plain HTTP.
    let probe = request.uri().path() == HEALTH_PATH;
    let checked = match peer {
        Some(peer) => client::resolve(peer, tls, request.headers(), &config.trusted_proxies)
            .map_err(|error| {
                tracing::warn!(peer = %peer, header = error.header, "malformed forwarding header");
                ApiError::BadHeader(error.to_string())
            })
            .and_then(|client| {
                if probe {
                    return Ok((client, None));
                }
                check_host(config, request.headers(), request.uri())
                    .inspect_err(|error| tracing::info!(peer = %peer, error = %error, "request rejected: host not allowed"))
                    .map(|host| (client, Some(host)))
            }),
        None => Err(ApiError::internal(anyhow::anyhow!(
            "the connection's peer address is missing"
        ))),
    };
    let (mut response, https) = match checked {
        Err(error) => (error.into_response(), tls),
        Ok((client, Some(host))) if config.ssl_redirect && !client.https => {
            (redirect(&host, &request), false)
        }
        Ok((client, _)) => {
            request.extensions_mut().insert(client);
            (next.run(request).await, client.https)
        }
    };
    add_security_headers(config, https, response.headers_mut());
    response
}

/// Returns the request's host name when `ALLOWED_HOSTS` allows it. With
/// `DEBUG` on, the loopback names are always allowed.
fn check_host(
    config: &Config,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<String, ApiError> {
    let raw = match headers.get(header::HOST) {
        Some(value) => value
            .to_str()
            .map_err(|_| ApiError::InvalidHost("the Host header is not visible ASCII".into()))?
            .to_string(),
        None => uri
            .authority()
            .map(|authority| authority.to_string())
            .ok_or_else(|| ApiError::InvalidHost("the request has no Host header".into()))?,
    };
    let name = host_name(&raw)
        .ok_or_else(|| ApiError::InvalidHost(format!("'{}' is not a host name", clip(&raw))))?;
    let allowed = config
        .allowed_hosts
        .iter()
        .any(|pattern| host_matches(pattern, &name))
        || (config.debug && LOOPBACK_HOSTS.contains(&name.as_str()));
    if allowed {
        Ok(raw)
    } else {
        Err(ApiError::InvalidHost(format!(
            "host '{}' is not in ALLOWED_HOSTS",
            clip(&name)
        )))
    }
}

/// Returns the lower-case host of a Host header value, without port,
/// brackets or a trailing dot.
fn host_name(value: &str) -> Option<String> {
    let value = value.trim();
    let host = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|port| port.parse::<u16>().is_ok()))
        {
            return None;
        }
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        inside
    } else {
        let (host, port) = value.split_once(':').unwrap_or((value, ""));
        if !port.is_empty() && port.parse::<u16>().is_err() {
            return None;
        }
        if value.split_once(':').is_some() && port.is_empty() {
            return None;
        }
        host
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'));
    valid.then_some(host)
}

/// Matches a host name against one `ALLOWED_HOSTS` entry: `*`, an exact
/// name, or `.example.com` for the domain and all its subdomains.
fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('.') {
        Some(domain) => host == domain || host.ends_with(&pattern),
        None => host == pattern,
    }
}

/// Sends a plain-HTTP request to the same URL over HTTPS. GET and HEAD
/// get 301; other methods get 308, which keeps the method and the body.
fn redirect(host: &str, request: &Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    let status = if matches!(*request.method(), Method::GET | Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    match HeaderValue::from_str(&format!("https://{host}{path}")) {
        Ok(location) => (status, [(header::LOCATION, location)]).into_response(),
        Err(_) => {
            ApiError::InvalidHost(format!("'{}' is not a host name", clip(host))).into_response()
        }
    }
}

fn add_security_headers(config: &Config, https: bool, headers: &mut HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        let html = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/html"));
        let policy = if html { HTML_POLICY } else { DATA_POLICY };
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(policy),
        );
    }
    // Responses carry tokens and personal data; no cache may keep them.
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if https && config.hsts_seconds > 0 {
        let mut value = format!("max-age={}", config.hsts_seconds);
        if config.hsts_include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, value);
        }
    }
}

fn clip(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_parse() {
        assert_eq!(
            host_name("Example.CO.ke:8443").as_deref(),
            Some("example.co.ke")
        );
        assert_eq!(
            host_name("example.co.ke.").as_deref(),
            Some("example.co.ke")
        );
        assert_eq!(host_name("[::1]:8000").as_deref(), Some("::1"));
        assert_eq!(host_name("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_name("example.co.ke:port"), None);
        assert_eq!(host_name("example.co.ke:"), None);
        assert_eq!(host_name("[::1"), None);
        assert_eq!(host_name("evil.com/path"), None);
        assert_eq!(host_name(""), None);
    }

    #[test]
    fn patterns_match() {
        assert!(host_matches("*", "anything.example"));
        assert!(host_matches(".example.co.ke", "example.co.ke"));
        assert!(host_matches(".example.co.ke", "depot.example.co.ke"));
        assert!(!host_matches(".example.co.ke", "badexample.co.ke"));
        assert!(host_matches(
            "cyltrack.example.co.ke",
            "cyltrack.example.co.ke"
        ));
        assert!(!host_matches(
            "cyltrack.example.co.ke",
            "other.example.co.ke"
        ));
    }
}
