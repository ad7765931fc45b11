//! The one error type of the JSON API. Every failure reaches the client as
//! `{"error": {"code", "message", "field"?}}` with a safe message; causes of
//! internal errors go to the log, inside the request's span.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{InvalidValue, TransitionError};
use crate::storage::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not well-formed JSON.
    #[error("{0}")]
    MalformedJson(String),
    #[error("authentication required: send an Authorization: Bearer <access token> header")]
    MissingToken,
    #[error("the access token is invalid or expired; log in again or refresh it")]
    InvalidToken,
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("the refresh token is invalid, expired or already used; log in again")]
    InvalidRefreshToken,
    #[error("your role may not {0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        field: Option<&'static str>,
    },
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error(
        "the request did not complete within {} s; send the whole body at once and retry",
        .0.as_secs()
    )]
    RequestTimeout(std::time::Duration),
    #[error("the server is handling too many requests at once; retry in a second")]
    Overloaded,
    #[error("this endpoint does not support the request's HTTP method")]
    MethodNotAllowed,
    #[error("the request body must be JSON, sent with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("{field} {rule}")]
    Invalid { field: String, rule: String },
    /// A header that the request may send is malformed.
    #[error("{0}")]
    BadHeader(String),
    #[error("{0}; see ALLOWED_HOSTS")]
    InvalidHost(String),
    /// Too many requests; the client may retry after `retry_after` seconds.
    #[error("{message}; try again in {retry_after} seconds")]
    RateLimited { message: String, retry_after: u64 },
    #[error("an internal error occurred")]
    Internal(#[source] anyhow::Error),
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, such as `validation_failed`.
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds to wait before retrying, on `rate_limited` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            rule: rule.into(),
        }
    }

    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(error.into())
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::MissingToken
            | ApiError::InvalidToken
            | ApiError::InvalidCredentials
            | ApiError::InvalidRefreshToken => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadHeader(_) | ApiError::InvalidHost(_) => StatusCode::BAD_REQUEST,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::MissingToken => "authentication_required",
            ApiError::InvalidToken => "invalid_token",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::InvalidRefreshToken => "invalid_refresh_token",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict { code, .. } => code,
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Overloaded => "overloaded",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Invalid { .. } => "validation_failed",
            ApiError::BadHeader(_) => "invalid_header",
            ApiError::InvalidHost(_) => "invalid_host",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            ApiError::Invalid { field, .. } => Some(field.clone()),
            ApiError::Conflict { field, .. } => field.map(str::to_string),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(cause) = &self {
            // The request span carries the request id, so this line and the
            // client's x-request-id header can be matched up.
            tracing::error!(error = format!("{cause:#}"), "request failed");
        }

        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                field: self.field(),
                retry_after: self.retry_after(),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::Overloaded = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<InvalidValue> for ApiError {
    fn from(error: InvalidValue) -> Self {
        ApiError::invalid(error.field, error.rule)
    }
}

impl From<TransitionError> for ApiError {
    fn from(error: TransitionError) -> Self {
        let code = match error {
            TransitionError::NotAllowed { .. } => "invalid_transition",
            TransitionError::RequalificationOverdue { .. } => "requalification_overdue",
            TransitionError::Tampered { .. } => "cylinder_tampered",
        };
        ApiError::Conflict {
            code,
            message: error.to_string(),
            field: Some("status"),
        }
    }
}

impl From<crate::auth::AccountError> for ApiError {
    fn from(error: crate::auth::AccountError) -> Self {
        match error {
            crate::auth::AccountError::Store(store) => store.into(),
            crate::auth::AccountError::Password(hashing) => ApiError::internal(hashing),
        }
    }
}

/// Constraint violations become 409 or 422 here and nowhere else.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict { field, value } => ApiError::Conflict {
                code: "duplicate",
                message: format!("{field} '{value}' is already in use"),
                field: Some(field),
            },
            StoreError::InvalidReference { field, rule } => ApiError::invalid(field, rule),
            other => ApiError::internal(other),
        }
    }
}
