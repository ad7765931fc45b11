//! The HTTP layer: routing, middleware, extractors and error mapping. The
//! handlers parse requests into domain values, check access and delegate to
//! the [`Store`].

pub mod client;
pub mod error;
pub mod extract;
mod guard;
mod limits;
pub mod openapi;
pub mod quota;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, Response, header};
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::auth::tokens::TokenService;
use crate::config::Config;
use crate::ratelimit::RateLimiter;
use crate::storage::Store;

pub use error::ApiError;
pub use routes::register as register_cylinder;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub tokens: Arc<TokenService>,
    /// An Argon2 hash that logins for unknown usernames are checked
    /// against, so that they take as long as a wrong password.
    pub decoy_password_hash: Arc<str>,
    pub limiter: Arc<RateLimiter>,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the router with its middleware.
pub fn router(state: AppState) -> Router {
    let trace = TraceLayer::new_for_http()
        .make_span_with(make_request_span)
        .on_request(())
        .on_response(|response: &Response<_>, latency: Duration, span: &Span| {
            span.record("status", response.status().as_u16());
            tracing::info!(
                latency_ms = latency.as_secs_f64() * 1000.0,
                "request finished"
            );
        })
        .on_failure(());

    let server_limits = state.config.server_limits;
    let api = routes::api_routes()
        .with_state(state.clone())
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed);
    limits::apply(api, &server_limits)
        .layer(axum::middleware::from_fn_with_state(state, guard::guard))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(trace)
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]))
}

/// Creates the span of one request. `user_id` is filled in once the caller
/// is known, and `status` when the response is ready.
fn make_request_span(request: &Request) -> Span {
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-");
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    tracing::info_span!(
        "request",
        method = %request.method(),
        route,
        request_id,
        user_id = tracing::field::Empty,
        status = tracing::field::Empty,
    )
}
