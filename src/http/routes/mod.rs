//! Route table of the JSON API.

mod auth;
mod cylinders;
mod depots;
mod meta;
mod scans;
mod users;

use axum::Router;
use axum::routing::{get, patch, post};

use super::AppState;
use super::error::ApiError;

pub use self::{auth::*, cylinders::*, depots::*, meta::*, scans::*, users::*};

pub fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(meta::health))
        .route("/api/openapi.json", get(meta::openapi_document))
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/refresh", post(auth::refresh))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/me", get(users::me))
        .route(
            "/api/v1/users",
            get(users::list_users).post(users::create_user),
        )
        .route(
            "/api/v1/users/{id}",
            get(users::get_user).patch(users::update_user),
        )
        .route(
            "/api/v1/depots",
            get(depots::list_depots).post(depots::create_depot),
        )
        .route(
            "/api/v1/cylinders",
            get(cylinders::list_cylinders).post(cylinders::register_cylinder),
        )
        .route("/api/v1/cylinders/{id}", get(cylinders::get_cylinder))
        .route(
            "/api/v1/cylinders/{id}/status",
            patch(cylinders::change_status),
        )
        .route(
            "/api/v1/cylinders/{id}/assign",
            post(cylinders::assign_cylinder),
        )
        .route(
            "/api/v1/cylinders/{id}/history",
            get(cylinders::cylinder_history),
        )
        .route("/api/v1/cylinders/{id}/scans", get(scans::cylinder_scans))
        .route(
            "/api/v1/cylinders/{id}/tamper",
            post(scans::set_tamper_flag),
        )
        .route(
            "/api/v1/cylinders/{id}/reissue-codes",
            post(scans::reissue_codes),
        )
        .route("/api/v1/scans", post(scans::scan))
        .route("/api/v1/scans/verify-token", post(scans::verify_token))
}

/// Returns 404 for every path that no route matches.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("endpoint")
}

/// Returns 405 for a known path with a method it does not support.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
