//! The cylinder registry: register, list, show, change status, assign and
//! read the history.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::domain::access::Action;
use crate::domain::codes::{CylinderCodes, auth_hash};
use crate::domain::cylinder::{LifecycleState, NewCylinder, check_transition};
use crate::domain::value::{Brand, CapacityKg, Notes, SerialNumber};
use crate::domain::{CylinderStatus, Role};
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{
    ApiQuery, CurrentUser, JsonBody, PathId, parse_bool, parse_uuid, query_value,
};
use crate::storage::{
    Assignment, CylinderFilter, CylinderRecord, HistoryRecord, NewCylinderRecord, PageRequest,
    Scope, StatusChange, StatusChangeOutcome, StoreError,
};

use super::users::present;

/// A cylinder as the API shows it. Depot staff see every field; drivers do
/// not see the codes or tamper notes, and customers see neither those nor
/// the other parties with custody. The per-cylinder secret is never shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CylinderView {
    pub id: Uuid,
    pub serial_number: String,
    pub brand: String,
    pub capacity_kg: f64,
    pub status: CylinderStatus,
    pub is_tampered: bool,
    /// True when the requalification date has passed: the cylinder must not
    /// be filled or delivered.
    pub is_expired: bool,
    pub manufacture_date: NaiveDate,
    /// The next requalification due date.
    pub expiry_date: NaiveDate,
    pub depot_id: Option<Uuid>,
    /// Staff only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qr_code: Option<String>,
    /// Staff only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rfid_tag: Option<String>,
    /// Staff only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tamper_notes: Option<String>,
    /// Staff and drivers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<Uuid>,
    /// Staff and drivers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CylinderView {
    pub fn for_role(record: CylinderRecord, role: Role, today: NaiveDate) -> Self {
        let staff = role.is_staff();
        let sees_parties = staff || role == Role::Driver;
        Self {
            id: record.id,
            is_expired: record.expiry_date < today,
            serial_number: record.serial_number,
            brand: record.brand,
            capacity_kg: record.capacity_kg,
            status: record.status,
            is_tampered: record.is_tampered,
            manufacture_date: record.manufacture_date,
            expiry_date: record.expiry_date,
            depot_id: record.depot_id,
            qr_code: staff.then_some(record.qr_code),
            rfid_tag: staff.then_some(record.rfid_tag),
            tamper_notes: staff.then_some(record.tamper_notes),
            customer_id: if sees_parties {
                record.customer_id
            } else {
                None
            },
            driver_id: if sees_parties { record.driver_id } else { None },
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CylinderPage {
    pub items: Vec<CylinderView>,
    pub page: u32,
    pub per_page: u32,
    /// True when a further page exists.
    pub has_more: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterCylinderRequest {
    /// 3 to 40 characters of A-Z, 0-9, '-' and '/'; stored in upper case.
    pub serial_number: String,
    pub brand: String,
    /// Nominal LPG capacity, 0.5 to 100 kg, for example 6 or 13.
    pub capacity_kg: f64,
    /// YYYY-MM-DD, not in the future.
    pub manufacture_date: NaiveDate,
    /// The next requalification due date, YYYY-MM-DD, after the
    /// manufacture date.
    pub expiry_date: NaiveDate,
    /// The depot that stores the cylinder.
    pub depot_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    pub status: CylinderStatus,
    /// Up to 1,000 characters.
    pub notes: Option<String>,
}

/// New custody. An absent field stays as it is; `null` clears it. At least
/// one of `customer_id` and `driver_id` must be present.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    pub customer_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    pub driver_id: Option<Option<Uuid>>,
    pub notes: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CylinderListQuery {
    /// One of the cylinder statuses, such as FILLED.
    pub status: Option<String>,
    /// true or false.
    pub tampered: Option<String>,
    /// true for cylinders past their requalification date, false for the rest.
    pub expired: Option<String>,
    /// Customer id; staff only.
    pub customer_id: Option<String>,
    /// Driver id; staff only.
    pub driver_id: Option<String>,
    pub depot_id: Option<String>,
    /// Page number from 1.
    pub page: Option<String>,
    /// Items per page, 1 to 200; 50 by default.
    pub per_page: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page number from 1.
    pub page: Option<String>,
    /// Items per page, 1 to 200; 50 by default.
    pub per_page: Option<String>,
}

/// One event in a cylinder's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntryView {
    pub id: Uuid,
    /// Position in the cylinder's history, from 1.
    pub sequence: i64,
    /// REGISTERED, STATUS_CHANGED or ASSIGNED.
    pub event_type: String,
    /// Staff only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<Uuid>,
    pub actor_role: Option<Role>,
    pub from_status: Option<CylinderStatus>,
    pub to_status: Option<CylinderStatus>,
    pub notes: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

impl HistoryEntryView {
    fn for_role(record: HistoryRecord, role: Role) -> Self {
        Self {
            id: record.id,
            sequence: record.sequence,
            event_type: record.event_type,
            actor_id: if role.is_staff() {
                record.actor_id
            } else {
                None
            },
            actor_role: record.actor_role,
            from_status: record.from_status,
            to_status: record.to_status,
            notes: record.notes,
            details: if role.is_staff() {
                record.details
            } else {
                serde_json::json!({})
            },
            created_at: record.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    pub items: Vec<HistoryEntryView>,
    pub page: u32,
    pub per_page: u32,
    pub has_more: bool,
}

/// Parses `page` and `per_page` query values.
pub fn page_request(page: Option<&str>, per_page: Option<&str>) -> Result<PageRequest, ApiError> {
    let page_rule = format!("must be a whole number from 1 to {}", PageRequest::MAX_PAGE);
    let per_page_rule = format!(
        "must be a whole number from 1 to {}",
        PageRequest::MAX_PER_PAGE
    );
    let page = query_value("page", page, &page_rule, |text| {
        text.parse::<u32>()
            .ok()
            .filter(|n| (1..=PageRequest::MAX_PAGE).contains(n))
    })?;
    let per_page = query_value("per_page", per_page, &per_page_rule, |text| {
        text.parse::<u32>()
            .ok()
            .filter(|n| (1..=PageRequest::MAX_PER_PAGE).contains(n))
    })?;
    Ok(PageRequest {
        page: page.unwrap_or(1),
        per_page: per_page.unwrap_or(PageRequest::DEFAULT_PER_PAGE),
    })
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// How many times registration draws new codes after a collision. With
/// 128-bit QR codes and 96-bit RFID tags a collision is practically
/// impossible, so a second failure means something else is wrong.
const CODE_ATTEMPTS: usize = 3;

#[utoipa::path(
    post, path = "/api/v1/cylinders", tag = "cylinders",
    request_body = RegisterCylinderRequest,
    responses(
        (status = 201, description = "Registered, with its generated QR code and RFID tag", body = CylinderView),
        (status = 403, description = "Only dispatchers and admins register cylinders", body = ErrorBody),
        (status = 409, description = "The serial number is already registered", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all)]
pub async fn register_cylinder(
    State(state): State<AppState>,
    current: CurrentUser,
    body: JsonBody,
) -> Result<(StatusCode, Json<CylinderView>), ApiError> {
    let grant = current.grant(Action::RegisterCylinder, "register cylinders")?;
    let request: RegisterCylinderRequest = body.decode()?;
    let today = today();
    let cylinder = NewCylinder {
        serial_number: SerialNumber::parse("serial_number", &request.serial_number)?,
        brand: Brand::parse("brand", &request.brand)?,
        capacity_kg: CapacityKg::parse("capacity_kg", request.capacity_kg)?,
        manufacture_date: request.manufacture_date,
        expiry_date: request.expiry_date,
        depot_id: request.depot_id,
    };
    NewCylinder::check_dates(cylinder.manufacture_date, cylinder.expiry_date, today)?;

    let record = register(&state, &cylinder, grant.actor()).await?;
    tracing::info!(cylinder_id = %record.id, serial = %record.serial_number, "cylinder registered");
    Ok((
        StatusCode::CREATED,
        Json(CylinderView::for_role(record, current.user.role, today)),
    ))
}

/// Generates codes and stores a cylinder, drawing new codes if they
/// collide with existing ones. Shared with the demo fleet loader.
pub async fn register(
    state: &AppState,
    cylinder: &NewCylinder,
    actor: crate::storage::Actor,
) -> Result<CylinderRecord, ApiError> {
    use secrecy::ExposeSecret;
    let server_key = state.config.secret_key.expose_secret().as_bytes();

    for _ in 0..CODE_ATTEMPTS {
        let codes = CylinderCodes::generate().map_err(ApiError::internal)?;
        let serial = cylinder.serial_number.as_str();
        let record = NewCylinderRecord {
            id: Uuid::new_v4(),
            serial_number: serial.to_string(),
            brand: cylinder.brand.as_str().to_string(),
            capacity_kg: cylinder.capacity_kg.get(),
            auth_hash: auth_hash(
                server_key,
                serial,
                &codes.qr_code,
                &codes.rfid_tag,
                &codes.secret_key,
            ),
            qr_code: codes.qr_code,
            rfid_tag: codes.rfid_tag,
            secret_key: codes.secret_key.to_vec(),
            manufacture_date: cylinder.manufacture_date,
            expiry_date: cylinder.expiry_date,
            depot_id: cylinder.depot_id,
        };
        match state
            .store
            .register_cylinder(record, actor, Utc::now())
            .await
        {
            Err(StoreError::Conflict {
                field: "qr_code" | "rfid_tag",
                ..
            }) => {
                tracing::warn!(
                    "generated cylinder code collided with an existing one; drawing again"
                );
            }
            other => return Ok(other?),
        }
    }
    Err(ApiError::internal(anyhow::anyhow!(
        "cylinder codes collided {CODE_ATTEMPTS} times in a row"
    )))
}

#[utoipa::path(
    get, path = "/api/v1/cylinders", tag = "cylinders",
    params(CylinderListQuery),
    responses(
        (status = 200, description = "Cylinders ordered by serial number: the whole fleet for staff, the caller's own for customers and drivers", body = CylinderPage),
        (status = 422, description = "A query parameter is invalid", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_cylinders(
    State(state): State<AppState>,
    current: CurrentUser,
    ApiQuery(query): ApiQuery<CylinderListQuery>,
) -> Result<Json<CylinderPage>, ApiError> {
    let grant = current.cylinder_viewer()?;
    let uuid_rule = "must be a UUID";
    let today = today();
    let filter = CylinderFilter {
        status: query_value(
            "status",
            query.status.as_deref(),
            &status_rule(),
            CylinderStatus::parse,
        )?,
        tampered: query_value(
            "tampered",
            query.tampered.as_deref(),
            "must be true or false",
            parse_bool,
        )?,
        expired: query_value(
            "expired",
            query.expired.as_deref(),
            "must be true or false",
            parse_bool,
        )?,
        customer_id: query_value(
            "customer_id",
            query.customer_id.as_deref(),
            uuid_rule,
            parse_uuid,
        )?,
        driver_id: query_value(
            "driver_id",
            query.driver_id.as_deref(),
            uuid_rule,
            parse_uuid,
        )?,
        depot_id: query_value("depot_id", query.depot_id.as_deref(), uuid_rule, parse_uuid)?,
        today: Some(today),
    };
    // Customers and drivers may name themselves in a filter, but no other user.
    let others_named = match grant.scope() {
        Scope::All => false,
        Scope::Customer(own) => {
            filter.customer_id.is_some_and(|id| id != own) || filter.driver_id.is_some()
        }
        Scope::Driver(own) => {
            filter.driver_id.is_some_and(|id| id != own) || filter.customer_id.is_some()
        }
    };
    if others_named {
        return Err(ApiError::Forbidden("filter cylinders by another user"));
    }
    let page = page_request(query.page.as_deref(), query.per_page.as_deref())?;

    let found = state
        .store
        .list_cylinders(&filter, grant.scope(), page)
        .await?;
    let role = current.user.role;
    Ok(Json(CylinderPage {
        items: found
            .items
            .into_iter()
            .map(|record| CylinderView::for_role(record, role, today))
            .collect(),
        page: found.page,
        per_page: found.per_page,
        has_more: found.has_more,
    }))
}

fn status_rule() -> String {
    let names: Vec<&str> = CylinderStatus::ALL
        .iter()
        .map(|status| status.as_str())
        .collect();
    format!("must be one of {}", names.join(", "))
}

#[utoipa::path(
    get, path = "/api/v1/cylinders/{id}", tag = "cylinders",
    params(("id" = Uuid, Path, description = "Cylinder id")),
    responses(
        (status = 200, description = "The cylinder", body = CylinderView),
        (status = 404, description = "No such cylinder, or not one of the caller's own", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_cylinder(
    State(state): State<AppState>,
    current: CurrentUser,
    PathId(id): PathId,
) -> Result<Json<CylinderView>, ApiError> {
    let grant = current.cylinder_viewer()?;
    // Customers and drivers asking for a cylinder that is not theirs get
    // 404, not 403, so that ids cannot be probed.
    let record = state
        .store
        .cylinder(id, grant.scope())
        .await?
        .ok_or(ApiError::NotFound("cylinder"))?;
    Ok(Json(CylinderView::for_role(
        record,
        current.user.role,
        today(),
    )))
}

#[utoipa::path(
    patch, path = "/api/v1/cylinders/{id}/status", tag = "cylinders",
    params(("id" = Uuid, Path, description = "Cylinder id")),
    request_body = StatusRequest,
    responses(
        (status = 200, description = "The cylinder in its new status", body = CylinderView),
        (status = 403, description = "Only dispatchers and admins change status", body = ErrorBody),
        (status = 404, description = "No such cylinder", body = ErrorBody),
        (status = 409, description = "The lifecycle does not allow this change; the message names both states", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(cylinder_id = %id))]
pub async fn change_status(
    State(state): State<AppState>,
    current: CurrentUser,
    PathId(id): PathId,
    body: JsonBody,
) -> Result<Json<CylinderView>, ApiError> {
    let grant = current.grant(Action::UpdateStatus, "update cylinder status")?;
    let request: StatusRequest = body.decode()?;
    let notes = parse_notes(request.notes.as_deref())?;
    let today = today();

    let current_record = state
        .store
        .cylinder(id, Scope::All)
        .await?
        .ok_or(ApiError::NotFound("cylinder"))?;
    let lifecycle = LifecycleState {
        status: current_record.status,
        expiry_date: current_record.expiry_date,
        is_tampered: current_record.is_tampered,
    };
    check_transition(lifecycle, request.status, today)?;

    let change = StatusChange {
        cylinder_id: id,
        expected: current_record.status,
        to: request.status,
        notes: notes.into_inner(),
    };
    match state
        .store
        .change_status(change, grant.actor(), Utc::now())
        .await?
    {
        StatusChangeOutcome::Changed(record) => {
            tracing::info!(from = %current_record.status, to = %record.status, "cylinder status changed");
            Ok(Json(CylinderView::for_role(
                record,
                current.user.role,
                today,
            )))
        }
        StatusChangeOutcome::Stale(record) => Err(ApiError::Conflict {
            code: "concurrent_change",
            message: format!(
                "the cylinder changed from {} to {} while this request ran; reload it and try again",
                current_record.status, record.status
            ),
            field: Some("status"),
        }),
        StatusChangeOutcome::NotFound => Err(ApiError::NotFound("cylinder")),
    }
}

fn parse_notes(raw: Option<&str>) -> Result<Notes, ApiError> {
    Ok(raw
        .map(|text| Notes::parse("notes", text))
        .transpose()?
        .unwrap_or_else(Notes::empty))
}

#[utoipa::path(
    post, path = "/api/v1/cylinders/{id}/assign", tag = "cylinders",
    params(("id" = Uuid, Path, description = "Cylinder id")),
    request_body = AssignRequest,
    responses(
        (status = 200, description = "The cylinder with its new custody", body = CylinderView),
        (status = 403, description = "Only dispatchers and admins assign cylinders", body = ErrorBody),
        (status = 404, description = "No such cylinder", body = ErrorBody),
        (status = 409, description = "The cylinder is retired", body = ErrorBody),
        (status = 422, description = "An id does not name an active user of the right role", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(cylinder_id = %id))]
pub async fn assign_cylinder(
    State(state): State<AppState>,
    current: CurrentUser,
    PathId(id): PathId,
    body: JsonBody,
) -> Result<Json<CylinderView>, ApiError> {
    let grant = current.grant(Action::AssignCylinder, "assign cylinders")?;
    let request: AssignRequest = body.decode()?;
    if request.customer_id.is_none() && request.driver_id.is_none() {
        return Err(ApiError::invalid(
            "customer_id",
            "or driver_id must be given; send null to clear one",
        ));
    }
    let notes = parse_notes(request.notes.as_deref())?;

    let existing = state
        .store
        .cylinder(id, Scope::All)
        .await?
        .ok_or(ApiError::NotFound("cylinder"))?;
    let sets_a_party =
        request.customer_id.flatten().is_some() || request.driver_id.flatten().is_some();
    if existing.status == CylinderStatus::Retired && sets_a_party {
        return Err(ApiError::Conflict {
            code: "cylinder_retired",
            message: "a RETIRED cylinder cannot be assigned to anyone".into(),
            field: None,
        });
    }

    let assignment = Assignment {
        cylinder_id: id,
        customer_id: request.customer_id,
        driver_id: request.driver_id,
        notes: notes.into_inner(),
    };
    let record = state
        .store
        .assign_cylinder(assignment, grant.actor(), Utc::now())
        .await?
        .ok_or(ApiError::NotFound("cylinder"))?;
    tracing::info!(customer_id = ?record.customer_id, driver_id = ?record.driver_id, "cylinder assigned");
    Ok(Json(CylinderView::for_role(
        record,
        current.user.role,
        today(),
    )))
}

#[utoipa::path(
    get, path = "/api/v1/cylinders/{id}/history", tag = "cylinders",
    params(("id" = Uuid, Path, description = "Cylinder id"), PageQuery),
    responses(
        (status = 200, description = "History entries, newest first", body = HistoryPage),
        (status = 404, description = "No such cylinder, or not one of the caller's own", body = ErrorBody),
        (status = 422, description = "A query parameter is invalid", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cylinder_history(
    State(state): State<AppState>,
    current: CurrentUser,
    PathId(id): PathId,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let grant = current.grant(Action::ViewHistory, "view cylinder history")?;
    let page = page_request(query.page.as_deref(), query.per_page.as_deref())?;
    state
        .store
        .cylinder(id, grant.scope())
        .await?
        .ok_or(ApiError::NotFound("cylinder"))?;

    let found = state.store.cylinder_history(id, page).await?;
    let role = current.user.role;
    Ok(Json(HistoryPage {
        items: found
            .items
            .into_iter()
            .map(|record| HistoryEntryView::for_role(record, role))
            .collect(),
        page: found.page,
        per_page: found.per_page,
        has_more: found.has_more,
    }))
}
