//! Login, token refresh and logout.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::password;
use crate::auth::tokens::{TokenKind, VerifiedToken};
use crate::domain::Role;
use crate::domain::value::Password;
use crate::http::AppState;
use crate::http::client::Client;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::ApiJson;
use crate::http::quota::{self, AnonymousQuota};
use crate::ratelimit::{Bucket, Rate, retry_after_seconds};
use crate::storage::{RefreshOutcome, RefreshTokenRecord};

/// The log target of security events, so that operators can route them.
pub const SECURITY_LOG: &str = "cyltrack::security";

/// Failed logins of one account from one client: 5, then one every 3 minutes.
const FAILURES_PER_ACCOUNT_AND_CLIENT: Rate = Rate {
    count: 5,
    period: std::time::Duration::from_secs(15 * 60),
};

/// Failed logins of one account from anywhere: 30, then one every 30 seconds.
/// Low enough to slow a guessing attack spread over many addresses, short
/// enough that the real user waits at most 30 seconds once it stops.
const FAILURES_PER_ACCOUNT: Rate = Rate {
    count: 30,
    period: std::time::Duration::from_secs(15 * 60),
};

/// Failed logins from one client across all accounts: 20, then one every 3
/// minutes.
const FAILURES_PER_CLIENT: Rate = Rate {
    count: 20,
    period: std::time::Duration::from_secs(60 * 60),
};

/// The failure buckets a login attempt is checked against. Only failures
/// count; a success empties the account-and-client bucket.
struct LoginThrottle {
    buckets: [Bucket; 3],
}

impl LoginThrottle {
    /// Keys on the normalised username, whether or not such an account
    /// exists, so that the throttle reveals nothing about accounts.
    fn new(username: &str, client: &Client) -> Self {
        let address = client.limit_key();
        Self {
            buckets: [
                Bucket::new(
                    format!("login:{username}|{address}"),
                    FAILURES_PER_ACCOUNT_AND_CLIENT,
                ),
                Bucket::new(format!("login:{username}"), FAILURES_PER_ACCOUNT),
                Bucket::new(format!("login-from:{address}"), FAILURES_PER_CLIENT),
            ],
        }
    }
}

/// Maximum username length accepted at login, in characters.
const MAX_USERNAME_CHARS: usize = 150;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// A fresh access token and the refresh token that replaces it later.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenPair),
        (status = 401, description = "Unknown username or wrong password; both give the same body", body = ErrorBody),
        (status = 422, description = "A field is missing, empty or too long", body = ErrorBody),
        (status = 429, description = "Too many requests from this address, or too many failed logins for this username; the password was not checked. Retry-After gives the wait", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn login(
    State(state): State<AppState>,
    quota: AnonymousQuota,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let username = request.username.trim().to_lowercase();
    if username.is_empty() {
        return Err(ApiError::invalid("username", "must not be empty"));
    }
    if username.chars().count() > MAX_USERNAME_CHARS {
        return Err(ApiError::invalid(
            "username",
            format!("must be at most {MAX_USERNAME_CHARS} characters"),
        ));
    }
    if request.password.is_empty() {
        return Err(ApiError::invalid("password", "must not be empty"));
    }
    if request.password.len() > Password::MAX_BYTES {
        return Err(ApiError::invalid(
            "password",
            format!("must be at most {} bytes", Password::MAX_BYTES),
        ));
    }

    let throttle = LoginThrottle::new(&username, &quota.client);
    if let Err(wait) = state.limiter.peek(&throttle.buckets).await {
        tracing::warn!(
            target: SECURITY_LOG,
            event = "login_throttled",
            username = %username,
            client_ip = %quota.client.ip,
            retry_after = retry_after_seconds(wait),
            "login refused: too many failed attempts"
        );
        return Err(quota::limited("failed logins", wait));
    }

    // An unknown username is checked against a decoy hash, so that it costs
    // the same Argon2 work as a wrong password and timing reveals nothing.
    let credentials = state.store.credentials(&username).await?;
    let stored_hash = credentials
        .as_ref()
        .map(|found| found.password_hash.clone())
        .unwrap_or_else(|| state.decoy_password_hash.to_string());
    let matches = password::verify(request.password, stored_hash)
        .await
        .map_err(ApiError::internal)?;

    let user = match credentials {
        Some(found) if matches && found.user.is_active => found.user,
        _ => {
            state.limiter.charge(&throttle.buckets).await;
            let details = serde_json::json!({
                "username": username,
                "client_ip": quota.client.ip.to_string(),
                "account_exists": credentials.is_some(),
            });
            state
                .store
                .record_security_event("LOGIN_FAILED", &details, Utc::now())
                .await?;
            tracing::warn!(
                target: SECURITY_LOG,
                event = "login_failed",
                username = %username,
                client_ip = %quota.client.ip,
                "login failed"
            );
            return Err(ApiError::InvalidCredentials);
        }
    };
    state.limiter.reset(&throttle.buckets[0].key).await;
    tracing::info!(user_id = %user.id, "login succeeded");
    issue_pair(&state, user.id, user.role, Uuid::new_v4())
        .await
        .map(Json)
}

#[utoipa::path(
    post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair; the presented refresh token is spent", body = TokenPair),
        (status = 401, description = "Invalid, expired or already used; reuse revokes the whole token family", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn refresh(
    State(state): State<AppState>,
    _quota: AnonymousQuota,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let presented = verify_refresh(&state, &request.refresh_token)?;
    let family = presented.family.ok_or(ApiError::InvalidRefreshToken)?;
    let now = Utc::now();
    // The new access token carries the role that the user has now.
    let user = state
        .store
        .user(presented.user_id)
        .await?
        .filter(|user| user.is_active)
        .ok_or(ApiError::InvalidRefreshToken)?;

    let next = state
        .tokens
        .issue(
            TokenKind::Refresh,
            presented.user_id,
            None,
            Some(family),
            now,
        )
        .map_err(ApiError::internal)?;
    let record = RefreshTokenRecord {
        id: next.id,
        family_id: family,
        user_id: presented.user_id,
        issued_at: now,
        expires_at: next.expires_at,
    };
    match state
        .store
        .rotate_refresh_token(presented.id, record, now)
        .await?
    {
        RefreshOutcome::Rotated => {}
        RefreshOutcome::Reused => {
            tracing::warn!(user_id = %presented.user_id, family = %family, "refresh token reused; family revoked");
            return Err(ApiError::InvalidRefreshToken);
        }
        RefreshOutcome::Rejected => return Err(ApiError::InvalidRefreshToken),
    }

    let access = state
        .tokens
        .issue(TokenKind::Access, user.id, Some(user.role), None, now)
        .map_err(ApiError::internal)?;
    Ok(Json(TokenPair {
        access_token: access.token,
        refresh_token: next.token,
        token_type: "Bearer",
        expires_in: state.tokens.access_lifetime_seconds(),
    }))
}

#[utoipa::path(
    post, path = "/api/v1/auth/logout", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 204, description = "The refresh token's family is revoked"),
        (status = 401, description = "The refresh token is not valid", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn logout(
    State(state): State<AppState>,
    _quota: AnonymousQuota,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    let presented = verify_refresh(&state, &request.refresh_token)?;
    let family = presented.family.ok_or(ApiError::InvalidRefreshToken)?;
    state.store.revoke_token_family(family, Utc::now()).await?;
    tracing::info!(user_id = %presented.user_id, "logged out");
    Ok(StatusCode::NO_CONTENT)
}

fn verify_refresh(state: &AppState, token: &str) -> Result<VerifiedToken, ApiError> {
    state
        .tokens
        .verify(token.trim(), TokenKind::Refresh, Utc::now())
        .map_err(|_| ApiError::InvalidRefreshToken)
}

/// Issues an access token and the first refresh token of a new family.
async fn issue_pair(
    state: &AppState,
    user_id: Uuid,
    role: Role,
    family: Uuid,
) -> Result<TokenPair, ApiError> {
    let now = Utc::now();
    let access = state
        .tokens
        .issue(TokenKind::Access, user_id, Some(role), None, now)
        .map_err(ApiError::internal)?;
    let refresh = state
        .tokens
        .issue(TokenKind::Refresh, user_id, None, Some(family), now)
        .map_err(ApiError::internal)?;
    state
        .store
        .insert_refresh_token(RefreshTokenRecord {
            id: refresh.id,
            family_id: family,
            user_id,
            issued_at: now,
            expires_at: refresh.expires_at,
        })
        .await?;
    Ok(TokenPair {
        access_token: access.token,
        refresh_token: refresh.token,
        token_type: "Bearer",
        expires_in: state.tokens.access_lifetime_seconds(),
    })
}
