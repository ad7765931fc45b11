//! Extractors: the authenticated caller and its permission grants, and JSON
//! bodies, query strings and path ids parsed into typed values with errors
//! that name the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::quota;
use crate::auth::tokens::{TokenKind, VerifiedToken};
use crate::domain::Role;
use crate::domain::access::{Action, Reach, reach};
use crate::storage::{Actor, Scope, UserRecord};

/// The caller, authenticated by a bearer access token and still active.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub user: UserRecord,
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let verified = verified_token(parts, state)?;
        let user = active_user(state, verified.user_id).await?;
        let current = CurrentUser { user };
        count_api_call(state, current.actor()).await?;
        Ok(current)
    }
}

/// The caller of the scan route, as its access token names it. The
/// token's signature, type and times are verified here, and the store
/// confirms that the user is still active with the token's role in the
/// statement that writes the scan. That saves the busiest route the round
/// trip to the database that [`CurrentUser`] makes. A token without a role
/// is confirmed here instead.
#[derive(Debug, Clone, Copy)]
pub struct TokenUser {
    pub actor: Actor,
}

impl FromRequestParts<AppState> for TokenUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let verified = verified_token(parts, state)?;
        let role = match verified.role {
            Some(role) => role,
            None => active_user(state, verified.user_id).await?.role,
        };
        let actor = Actor {
            user_id: verified.user_id,
            role,
        };
        count_api_call(state, actor).await?;
        Ok(TokenUser { actor })
    }
}

impl TokenUser {
    /// Checks `action` against the access matrix for the token's role.
    pub fn grant(&self, action: Action, description: &'static str) -> Result<Grant, ApiError> {
        grant(self.actor, action, description)
    }
}

/// Returns the verified claims of the request's bearer access token, and
/// records its user in the request's span.
fn verified_token(parts: &Parts, state: &AppState) -> Result<VerifiedToken, ApiError> {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::MissingToken)?;
    let text = header.to_str().map_err(|_| ApiError::InvalidToken)?;
    let (scheme, token) = text.split_once(' ').ok_or(ApiError::InvalidToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::InvalidToken);
    }

    let verified = state
        .tokens
        .verify(token.trim(), TokenKind::Access, chrono::Utc::now())
        .map_err(|_| ApiError::InvalidToken)?;
    tracing::Span::current().record("user_id", tracing::field::display(verified.user_id));
    Ok(verified)
}

/// Loads the user `id`, or rejects the token when the user is gone or
/// inactive.
pub async fn active_user(state: &AppState, id: Uuid) -> Result<UserRecord, ApiError> {
    state
        .store
        .user(id)
        .await?
        .filter(|user| user.is_active)
        .ok_or(ApiError::InvalidToken)
}

/// Counts an API call of `user`, or rejects it when the user's bucket is
/// full. Only a token with a valid signature reaches a counter, so a forged
/// token cannot use up anyone's allowance.
async fn count_api_call(state: &AppState, user: Actor) -> Result<(), ApiError> {
    let bucket = quota::api_bucket(state, user);
    if let Err(wait) = state.limiter.acquire(std::slice::from_ref(&bucket)).await {
        tracing::warn!(user_id = %user.user_id, "rate limit reached: API calls");
        return Err(quota::limited("API requests", wait));
    }
    Ok(())
}

/// Proof that the caller may take an action. Only [`grant`] creates one, so
/// a handler that needs an [`Actor`] cannot skip the check.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    actor: Actor,
    reach: Reach,
}

impl Grant {
    pub fn actor(&self) -> Actor {
        self.actor
    }

    /// Returns the cylinders this grant covers: all of them, or only those
    /// associated with the caller.
    pub fn scope(&self) -> Scope {
        match (self.reach, self.actor.role) {
            (Reach::All, _) => Scope::All,
            (_, Role::Customer) => Scope::Customer(self.actor.user_id),
            (_, _) => Scope::Driver(self.actor.user_id),
        }
    }
}

/// Checks `action` against the access matrix for `actor`'s role.
fn grant(actor: Actor, action: Action, description: &'static str) -> Result<Grant, ApiError> {
    match reach(actor.role, action) {
        Reach::Denied => Err(ApiError::Forbidden(description)),
        reach => Ok(Grant { actor, reach }),
    }
}

impl CurrentUser {
    /// Returns the caller as the store records it.
    pub fn actor(&self) -> Actor {
        Actor {
            user_id: self.user.id,
            role: self.user.role,
        }
    }

    /// Checks `action` against the access matrix.
    pub fn grant(&self, action: Action, description: &'static str) -> Result<Grant, ApiError> {
        grant(self.actor(), action, description)
    }

    /// Grants viewing cylinders: the whole fleet for roles that may view
    /// all, otherwise only the caller's own.
    pub fn cylinder_viewer(&self) -> Result<Grant, ApiError> {
        match self.grant(Action::ViewAllCylinders, "view all cylinders") {
            Ok(grant) => Ok(grant),
            Err(_) => self
                .grant(Action::ViewOwnCylinders, "view cylinders")
                .map(|grant| Grant {
                    reach: Reach::Own,
                    ..grant
                }),
        }
    }
}

/// A JSON body decoded into `T`. Malformed JSON is a 400; a wrong type,
/// missing or unknown field is a 422 that names the field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        JsonBody::from_request(request, state)
            .await?
            .decode()
            .map(ApiJson)
    }
}

/// A request body that is read but not yet decoded, so that a handler can
/// check the caller's permission first: a caller without it gets 403
/// whatever the body holds. Only a body over `MAX_REQUEST_BODY_BYTES` is
/// rejected before that, with 413.
pub struct JsonBody {
    is_json: bool,
    bytes: Bytes,
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(state.config.server_limits.max_body_bytes)
                } else {
                    ApiError::MalformedJson(format!(
                        "the request body could not be read: {rejection}"
                    ))
                }
            })?;
        Ok(Self { is_json, bytes })
    }
}

impl JsonBody {
    /// Checks the content type and decodes the body into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if !self.is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        decode_json(&self.bytes)
    }
}

/// Decodes `bytes`, mapping serde's errors to field-level API errors. The
/// body must be a JSON object: serde would also fill a struct from an array.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(_) => Err(ApiError::invalid("body", "must be a JSON object")),
            Err(error) => Err(ApiError::MalformedJson(format!(
                "the request body is not valid JSON: {}",
                strip_position(&error)
            ))),
        };
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        json_error(bytes, &path, &inner)
    })?;
    deserializer.end().map_err(|error| {
        ApiError::MalformedJson(format!(
            "the request body has trailing characters: {}",
            strip_position(&error)
        ))
    })?;
    Ok(value)
}

fn json_error(bytes: &[u8], path: &str, error: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let message = strip_position(error);
    let well_formed = || serde_json::from_slice::<serde_json::Value>(bytes).is_ok();
    match error.classify() {
        // serde_json reports a number or null where an enum expects a string
        // as a syntax error, although the document itself is well formed.
        Category::Syntax if path != "." && !path.contains('?') && well_formed() => {
            ApiError::invalid(path, "has the wrong type: expected a string")
        }
        // A number too large for a double, such as 1e400, is well formed
        // JSON that serde_json rejects as a syntax error.
        Category::Syntax
            if path != "." && !path.contains('?') && message.starts_with("number out of range") =>
        {
            ApiError::invalid(path, "is out of range for a number")
        }
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::MalformedJson(format!("the request body is not valid JSON: {message}"))
        }
        Category::Data if path == "." && message.starts_with("invalid type") => {
            ApiError::invalid("body", "must be a JSON object")
        }
        Category::Data => field_error(path, &message, "is not a field of this request"),
    }
}

/// Builds the 422 for a serde data error at `path`. serde reports missing
/// and repeated fields against the object that should contain them, so
/// their names come from the message.
fn field_error(path: &str, message: &str, unknown_rule: &str) -> ApiError {
    let names_field =
        message.starts_with("missing field") || message.starts_with("duplicate field");
    let field = match backticked(message).filter(|_| names_field) {
        Some(name) if path == "." || path.is_empty() => name.to_string(),
        Some(name) => format!("{path}.{name}"),
        None => path.to_string(),
    };
    let rule = if message.starts_with("unknown field") {
        unknown_rule.to_string()
    } else if message.starts_with("missing field") {
        "is required".to_string()
    } else if message.starts_with("duplicate field") {
        "is given more than once".to_string()
    } else {
        value_rule(&field, message)
    };
    ApiError::invalid(field, rule)
}

/// Rewords serde's and chrono's messages about a bad value into a rule.
fn value_rule(field: &str, message: &str) -> String {
    const DATE_ERRORS: [&str; 5] = [
        "input contains invalid characters",
        "premature end of input",
        "trailing input",
        "input is out of range",
        "input is not enough for unique date and time",
    ];
    if DATE_ERRORS.iter().any(|known| message.starts_with(known)) {
        // Time fields end in "_at"; the others hold dates.
        return if field.ends_with("_at") {
            "must be an RFC 3339 time with its offset, such as 2026-12-04T09:30:00Z".into()
        } else {
            "must be a date such as 2026-12-04".into()
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let expected = rest
            .split_once("expected ")
            .map(|(_, list)| list)
            .unwrap_or(rest);
        return format!("must be {}", expected.replace('`', ""));
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "another type"));
        let expected = match expected {
            "f64" | "f32" => "a number",
            "u32" | "u64" | "i64" | "i32" => "a whole number",
            "a boolean" => "true or false",
            other => other,
        };
        return format!("has the wrong type: expected {expected}, got {found}");
    }
    message.to_string()
}

/// Returns the text between the first pair of backticks.
fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let length = message[start..].find('`')?;
    Some(&message[start..start + length])
}

/// serde_json appends " at line L column C"; the client needs the rest.
fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(index) => text[..index].to_string(),
        None => text,
    }
}

/// A query string decoded into `T`, whose fields are all optional strings
/// that the handler parses with [`query_value`].
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|error| {
                let message = error.to_string();
                match backticked(&message) {
                    Some(name) if message.starts_with("unknown field") => {
                        ApiError::invalid(name, "is not a query parameter of this endpoint")
                    }
                    Some(_) => field_error("", &message, "is not a query parameter"),
                    None => ApiError::invalid("query", format!("could not be parsed: {message}")),
                }
            })
    }
}

/// Parses an optional query value with `parse`, which returns `None` for an
/// invalid value. The error then quotes `rule`, which describes a valid one.
pub fn query_value<T>(
    field: &'static str,
    raw: Option<&str>,
    rule: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    match raw {
        None => Ok(None),
        Some(text) => parse(text.trim())
            .map(Some)
            .ok_or_else(|| ApiError::invalid(field, format!("{rule}; got '{text}'"))),
    }
}

pub fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

pub fn parse_uuid(text: &str) -> Option<Uuid> {
    Uuid::parse_str(text).ok()
}

/// A UUID from the path, named `id` in errors.
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::invalid("id", "must be a UUID"))?;
        parse_uuid(&raw).map(PathId).ok_or_else(|| {
            ApiError::invalid(
                "id",
                "must be a UUID such as 3f2c4e9a-0b1d-4c55-9a7e-2f8b6d1c0e44",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        count: u32,
    }

    fn field_of(body: &str) -> Option<String> {
        match decode_json::<Sample>(body.as_bytes()) {
            Err(ApiError::Invalid { field, .. }) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn unknown_missing_and_mistyped_fields_named() {
        assert_eq!(
            field_of(r#"{"name":"a","count":1,"role":"ADMIN"}"#).as_deref(),
            Some("role")
        );
        assert_eq!(field_of(r#"{"name":"a"}"#).as_deref(), Some("count"));
        assert_eq!(
            field_of(r#"{"name":"a","count":"many"}"#).as_deref(),
            Some("count")
        );
        assert_eq!(
            field_of(r#"{"name":"a","count":-1}"#).as_deref(),
            Some("count")
        );
    }

    #[test]
    fn huge_number_names_its_field() {
        assert_eq!(
            field_of(r#"{"name":"a","count":1e400}"#).as_deref(),
            Some("count")
        );
    }

    #[test]
    fn syntax_errors_are_malformed() {
        for body in [
            r#"{"name":"#,
            "not json",
            r#"{"name":"a","count":1} extra"#,
            "",
        ] {
            let result = decode_json::<Sample>(body.as_bytes());
            assert!(matches!(result, Err(ApiError::MalformedJson(_))), "{body}");
        }
    }
}
