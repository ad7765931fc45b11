//! The rate limits of the API: which bucket each kind of request counts in,
//! and the 429 it gets when a bucket is full.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::AppState;
use super::client::Client;
use super::error::ApiError;
use crate::ratelimit::{Bucket, Rate, retry_after_seconds};
use crate::storage::Actor;

/// Returns the bucket of every authenticated API call of `user`.
pub fn api_bucket(state: &AppState, user: Actor) -> Bucket {
    let count = state.config.rate_limits.api.of(user.role);
    Bucket::new(format!("api:{}", user.user_id), Rate::per_hour(count))
}

/// Returns the bucket of the scans `user` records.
pub fn scan_bucket(state: &AppState, user: Actor) -> Bucket {
    let count = state.config.rate_limits.scans.of(user.role);
    Bucket::new(format!("scan:{}", user.user_id), Rate::per_hour(count))
}

/// Returns the bucket of requests without a token from `client`.
pub fn anonymous_bucket(state: &AppState, client: &Client) -> Bucket {
    let count = state.config.rate_limits.anonymous;
    Bucket::new(
        format!("anon:{}", client.limit_key()),
        Rate::per_hour(count),
    )
}

/// Builds the 429 for a full bucket.
pub fn limited(counted: &str, wait: Duration) -> ApiError {
    ApiError::RateLimited {
        message: format!("too many {counted}"),
        retry_after: retry_after_seconds(wait),
    }
}

/// Proof that a request without a token fitted in its client's bucket.
/// Endpoints that need no token take it as their first argument.
#[derive(Debug, Clone, Copy)]
pub struct AnonymousQuota {
    pub client: Client,
}

impl FromRequestParts<AppState> for AnonymousQuota {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let client = Client::from_request_parts(parts, state).await?;
        let bucket = anonymous_bucket(state, &client);
        if let Err(wait) = state.limiter.acquire(std::slice::from_ref(&bucket)).await {
            tracing::warn!(client_ip = %client.ip, "rate limit reached: requests without a token");
            return Err(limited("requests from this address", wait));
        }
        Ok(Self { client })
    }
}
