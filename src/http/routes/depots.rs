//! Depots, the places cylinders are stored and dispatched from.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::access::Action;
use crate::domain::value::DepotName;
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{CurrentUser, JsonBody};
use crate::storage::{DepotRecord, NewDepotRecord};

#[derive(Debug, Serialize, ToSchema)]
pub struct DepotView {
    pub id: Uuid,
    pub name: String,
    pub town: String,
    pub latitude: f64,
    pub longitude: f64,
    pub created_at: DateTime<Utc>,
}

impl From<DepotRecord> for DepotView {
    fn from(depot: DepotRecord) -> Self {
        Self {
            id: depot.id,
            name: depot.name,
            town: depot.town,
            latitude: depot.latitude,
            longitude: depot.longitude,
            created_at: depot.created_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDepotRequest {
    pub name: String,
    pub town: String,
    /// Degrees, -90 to 90.
    pub latitude: f64,
    /// Degrees, -180 to 180.
    pub longitude: f64,
}

#[utoipa::path(
    get, path = "/api/v1/depots", tag = "depots",
    responses(
        (status = 200, description = "All depots by name", body = Vec<DepotView>),
        (status = 403, description = "Only dispatchers and admins", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_depots(
    State(state): State<AppState>,
    current: CurrentUser,
) -> Result<Json<Vec<DepotView>>, ApiError> {
    current.grant(Action::ViewDirectory, "list depots")?;
    let depots = state.store.list_depots().await?;
    Ok(Json(depots.into_iter().map(DepotView::from).collect()))
}

#[utoipa::path(
    post, path = "/api/v1/depots", tag = "depots",
    request_body = CreateDepotRequest,
    responses(
        (status = 201, description = "The new depot", body = DepotView),
        (status = 403, description = "Only admins create depots", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_depot(
    State(state): State<AppState>,
    current: CurrentUser,
    body: JsonBody,
) -> Result<(StatusCode, Json<DepotView>), ApiError> {
    current.grant(Action::ManageDepots, "create depots")?;
    let request: CreateDepotRequest = body.decode()?;
    let depot = NewDepotRecord {
        name: DepotName::parse("name", &request.name)?.into_inner(),
        town: DepotName::parse("town", &request.town)?.into_inner(),
        latitude: coordinate("latitude", request.latitude, 90.0)?,
        longitude: coordinate("longitude", request.longitude, 180.0)?,
    };
    let created = state.store.create_depot(depot, Utc::now()).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

fn coordinate(field: &'static str, value: f64, limit: f64) -> Result<f64, ApiError> {
    if value.is_finite() && (-limit..=limit).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::invalid(
            field,
            format!("must be a number of degrees from -{limit} to {limit}"),
        ))
    }
}
