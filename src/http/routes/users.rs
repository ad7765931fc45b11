//! The caller's own account and user management by admins.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::password;
use crate::domain::Role;
use crate::domain::access::Action;
use crate::domain::user::NewUser;
use crate::domain::value::{Email, FullName, Password, Phone, Username};
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiQuery, CurrentUser, JsonBody, PathId, parse_bool, query_value};
use crate::storage::{UserChanges, UserFilter, UserRecord};

use super::cylinders::page_request;

/// A user account as the API shows it. The password hash never leaves the
/// server.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub username: String,
    pub full_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub role: Role,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<UserRecord> for UserView {
    fn from(user: UserRecord) -> Self {
        Self {
            id: user.id,
            username: user.username,
            full_name: user.full_name,
            email: user.email,
            phone: user.phone,
            role: user.role,
            is_active: user.is_active,
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    pub items: Vec<UserView>,
    pub page: u32,
    pub per_page: u32,
    /// True when a further page exists.
    pub has_more: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub username: String,
    #[serde(default)]
    pub full_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub role: Role,
    /// At least 10 characters.
    pub password: String,
}

/// Changes to a user; absent fields stay as they are. `email` and `phone`
/// may be `null` to clear them. Deactivating a user ends all of that user's
/// sessions at once. A new password revokes the user's refresh tokens, and
/// access tokens issued before it work until they expire.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    pub full_name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub phone: Option<Option<String>>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
    pub password: Option<String>,
}

/// Tells a field that is `null` (`Some(None)`) from one that is absent
/// (`None`, through `#[serde(default)]`).
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserListQuery {
    /// CUSTOMER, DRIVER, DISPATCHER or ADMIN.
    pub role: Option<String>,
    /// true or false.
    pub active: Option<String>,
    /// Page number from 1.
    pub page: Option<String>,
    /// Items per page, 1 to 200; 50 by default.
    pub per_page: Option<String>,
}

#[utoipa::path(
    get, path = "/api/v1/me", tag = "users",
    responses(
        (status = 200, description = "The caller's account", body = UserView),
        (status = 401, description = "Missing or invalid access token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn me(current: CurrentUser) -> Json<UserView> {
    Json(current.user.into())
}

#[utoipa::path(
    get, path = "/api/v1/users", tag = "users",
    params(UserListQuery),
    responses(
        (status = 200, description = "Users ordered by username", body = UserPage),
        (status = 403, description = "Only dispatchers and admins may look up users", body = ErrorBody),
        (status = 422, description = "A query parameter is invalid", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_users(
    State(state): State<AppState>,
    current: CurrentUser,
    ApiQuery(query): ApiQuery<UserListQuery>,
) -> Result<Json<UserPage>, ApiError> {
    current.grant(Action::ViewDirectory, "look up users")?;
    let filter = UserFilter {
        role: query_value(
            "role",
            query.role.as_deref(),
            "must be CUSTOMER, DRIVER, DISPATCHER or ADMIN",
            Role::parse,
        )?,
        active: query_value(
            "active",
            query.active.as_deref(),
            "must be true or false",
            parse_bool,
        )?,
    };
    let page = page_request(query.page.as_deref(), query.per_page.as_deref())?;
    let found = state.store.list_users(&filter, page).await?;
    Ok(Json(UserPage {
        items: found.items.into_iter().map(UserView::from).collect(),
        page: found.page,
        per_page: found.per_page,
        has_more: found.has_more,
    }))
}

#[utoipa::path(
    get, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 403, description = "Only dispatchers and admins may look up users", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_user(
    State(state): State<AppState>,
    current: CurrentUser,
    PathId(id): PathId,
) -> Result<Json<UserView>, ApiError> {
    current.grant(Action::ViewDirectory, "look up users")?;
    let user = state
        .store
        .user(id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(Json(user.into()))
}

#[utoipa::path(
    post, path = "/api/v1/users", tag = "users",
    request_body = CreateUserRequest,
    responses(
        (status = 201, description = "The new user", body = UserView),
        (status = 403, description = "Only admins manage users", body = ErrorBody),
        (status = 409, description = "The username is taken", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all)]
pub async fn create_user(
    State(state): State<AppState>,
    current: CurrentUser,
    body: JsonBody,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let grant = current.grant(Action::ManageUsers, "manage users")?;
    let request: CreateUserRequest = body.decode()?;
    let new_user = NewUser {
        username: Username::parse("username", &request.username)?,
        full_name: FullName::parse("full_name", &request.full_name)?,
        email: request
            .email
            .as_deref()
            .map(|email| Email::parse("email", email))
            .transpose()?,
        phone: request
            .phone
            .as_deref()
            .map(|phone| Phone::parse("phone", phone))
            .transpose()?,
        role: request.role,
        password: Password::parse("password", request.password)?,
    };
    let user = crate::auth::create_account(state.store.as_ref(), new_user).await?;
    tracing::info!(admin_id = %grant.actor().user_id, user_id = %user.id, role = %user.role, "user created");
    Ok((StatusCode::CREATED, Json(user.into())))
}

#[utoipa::path(
    patch, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = Uuid, Path, description = "User id")),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "The updated user", body = UserView),
        (status = 403, description = "Only admins manage users", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "An admin cannot deactivate or demote their own account", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(target_user = %id))]
pub async fn update_user(
    State(state): State<AppState>,
    current: CurrentUser,
    PathId(id): PathId,
    body: JsonBody,
) -> Result<Json<UserView>, ApiError> {
    let grant = current.grant(Action::ManageUsers, "manage users")?;
    let request: UpdateUserRequest = body.decode()?;
    let self_lockout =
        request.is_active == Some(false) || request.role.is_some_and(|role| role != Role::Admin);
    if id == grant.actor().user_id && self_lockout {
        return Err(ApiError::Conflict {
            code: "self_lockout",
            message: "an admin cannot deactivate or demote their own account; ask another admin"
                .into(),
            field: None,
        });
    }

    let password_hash = match request.password {
        Some(raw) => Some(
            password::hash(&Password::parse("password", raw)?)
                .await
                .map_err(ApiError::internal)?,
        ),
        None => None,
    };
    let changes = UserChanges {
        full_name: request
            .full_name
            .as_deref()
            .map(|name| FullName::parse("full_name", name))
            .transpose()?
            .map(FullName::into_inner),
        email: parse_clearable(request.email, |email| {
            Email::parse("email", email).map(Email::into_inner)
        })?,
        phone: parse_clearable(request.phone, |phone| {
            Phone::parse("phone", phone).map(Phone::into_inner)
        })?,
        role: request.role,
        is_active: request.is_active,
        password_hash,
    };
    let user = state
        .store
        .update_user(id, changes, Utc::now())
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    tracing::info!(admin_id = %grant.actor().user_id, user_id = %user.id, "user updated");
    Ok(Json(user.into()))
}

/// Parses a field that may be absent, `null`, or a value.
fn parse_clearable(
    value: Option<Option<String>>,
    parse: impl Fn(&str) -> Result<String, crate::domain::InvalidValue>,
) -> Result<Option<Option<String>>, ApiError> {
    match value {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(text)) => Ok(Some(Some(parse(&text)?))),
    }
}
