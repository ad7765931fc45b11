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
use crate::domain::value::Password;
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::ApiJson;
use crate::storage::{RefreshOutcome, RefreshTokenRecord};

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
    )
)]
#[tracing::instrument(skip_all)]
pub async fn login(
    State(state): State<AppState>,
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
            tracing::warn!(username = %username, "login failed");
            return Err(ApiError::InvalidCredentials);
        }
    };
    tracing::info!(user_id = %user.id, "login succeeded");
    issue_pair(&state, user.id, Uuid::new_v4()).await.map(Json)
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
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let presented = verify_refresh(&state, &request.refresh_token)?;
    let family = presented.family.ok_or(ApiError::InvalidRefreshToken)?;
    let now = Utc::now();

    let next = state
        .tokens
        .issue(TokenKind::Refresh, presented.user_id, Some(family), now)
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
        .issue(TokenKind::Access, presented.user_id, None, now)
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
async fn issue_pair(state: &AppState, user_id: Uuid, family: Uuid) -> Result<TokenPair, ApiError> {
    let now = Utc::now();
    let access = state
        .tokens
        .issue(TokenKind::Access, user_id, None, now)
        .map_err(ApiError::internal)?;
    let refresh = state
        .tokens
        .issue(TokenKind::Refresh, user_id, Some(family), now)
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
