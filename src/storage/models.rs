//! Records as the storage layer reads and writes them, and the raw rows
//! that both backends decode before the text columns become enums.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::StoreError;
use crate::domain::{CylinderStatus, Role};

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
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

/// A user with the stored password hash, for login only.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: UserRecord,
    pub password_hash: String,
}

#[derive(Debug, Clone)]
pub struct NewUserRecord {
    pub username: String,
    pub full_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub role: Role,
    pub password_hash: String,
}

/// Changes to a user; `None` leaves a field as it is. For `email` and
/// `phone`, `Some(None)` clears the value.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub full_name: Option<String>,
    pub email: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RefreshTokenRecord {
    pub id: Uuid,
    pub family_id: Uuid,
    pub user_id: Uuid,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DepotRecord {
    pub id: Uuid,
    pub name: String,
    pub town: String,
    pub latitude: f64,
    pub longitude: f64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewDepotRecord {
    pub name: String,
    pub town: String,
    pub latitude: f64,
    pub longitude: f64,
}

/// A cylinder without its secret, which only the scan path reads.
#[derive(Debug, Clone, PartialEq)]
pub struct CylinderRecord {
    pub id: Uuid,
    pub serial_number: String,
    pub brand: String,
    pub capacity_kg: f64,
    pub qr_code: String,
    pub rfid_tag: String,
    pub status: CylinderStatus,
    pub is_tampered: bool,
    pub tamper_notes: String,
    pub manufacture_date: NaiveDate,
    pub expiry_date: NaiveDate,
    pub depot_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub driver_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewCylinderRecord {
    pub id: Uuid,
    pub serial_number: String,
    pub brand: String,
    pub capacity_kg: f64,
    pub qr_code: String,
    pub rfid_tag: String,
    pub secret_key: Vec<u8>,
    pub auth_hash: String,
    pub manufacture_date: NaiveDate,
    pub expiry_date: NaiveDate,
    pub depot_id: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub struct StatusChange {
    pub cylinder_id: Uuid,
    pub expected: CylinderStatus,
    pub to: CylinderStatus,
    pub notes: String,
}

/// New custody of a cylinder. `None` leaves a party unchanged and
/// `Some(None)` clears it.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub cylinder_id: Uuid,
    pub customer_id: Option<Option<Uuid>>,
    pub driver_id: Option<Option<Uuid>>,
    pub notes: String,
}

/// Kinds of history entries. Later capabilities add scan and tamper events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryEvent {
    Registered,
    StatusChanged,
    Assigned,
}

impl HistoryEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryEvent::Registered => "REGISTERED",
            HistoryEvent::StatusChanged => "STATUS_CHANGED",
            HistoryEvent::Assigned => "ASSIGNED",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRecord {
    pub id: Uuid,
    pub cylinder_id: Uuid,
    /// Position in the cylinder's history, from 1.
    pub sequence: i64,
    pub event_type: String,
    pub actor_id: Option<Uuid>,
    pub actor_role: Option<Role>,
    pub from_status: Option<CylinderStatus>,
    pub to_status: Option<CylinderStatus>,
    pub notes: String,
    pub details: Value,
    pub created_at: DateTime<Utc>,
}

/// A history entry to append.
#[derive(Debug, Clone)]
pub struct NewHistoryEntry {
    pub cylinder_id: Uuid,
    pub event: HistoryEvent,
    pub actor: Option<super::Actor>,
    pub from_status: Option<CylinderStatus>,
    pub to_status: Option<CylinderStatus>,
    pub notes: String,
    pub details: Value,
}

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    pub id: Uuid,
    pub username: String,
    pub full_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub role: String,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub password_hash: String,
}

fn parse_role(text: &str) -> Result<Role, StoreError> {
    Role::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown role '{text}'")))
}

fn parse_status(text: &str) -> Result<CylinderStatus, StoreError> {
    CylinderStatus::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown cylinder status '{text}'")))
}

impl UserRow {
    pub fn into_credentials(self) -> Result<Credentials, StoreError> {
        let user = UserRecord {
            id: self.id,
            username: self.username,
            full_name: self.full_name,
            email: self.email,
            phone: self.phone,
            role: parse_role(&self.role)?,
            is_active: self.is_active,
            created_at: self.created_at,
            updated_at: self.updated_at,
        };
        Ok(Credentials {
            user,
            password_hash: self.password_hash,
        })
    }

    pub fn into_record(self) -> Result<UserRecord, StoreError> {
        self.into_credentials().map(|credentials| credentials.user)
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct CylinderRow {
    pub id: Uuid,
    pub serial_number: String,
    pub brand: String,
    pub capacity_kg: f64,
    pub qr_code: String,
    pub rfid_tag: String,
    pub status: String,
    pub is_tampered: bool,
    pub tamper_notes: String,
    pub manufacture_date: NaiveDate,
    pub expiry_date: NaiveDate,
    pub depot_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub driver_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CylinderRow {
    pub fn into_record(self) -> Result<CylinderRecord, StoreError> {
        Ok(CylinderRecord {
            id: self.id,
            serial_number: self.serial_number,
            brand: self.brand,
            capacity_kg: self.capacity_kg,
            qr_code: self.qr_code,
            rfid_tag: self.rfid_tag,
            status: parse_status(&self.status)?,
            is_tampered: self.is_tampered,
            tamper_notes: self.tamper_notes,
            manufacture_date: self.manufacture_date,
            expiry_date: self.expiry_date,
            depot_id: self.depot_id,
            customer_id: self.customer_id,
            driver_id: self.driver_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct HistoryRow {
    pub id: Uuid,
    pub cylinder_id: Uuid,
    pub sequence: i64,
    pub event_type: String,
    pub actor_id: Option<Uuid>,
    pub actor_role: Option<String>,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub notes: String,
    pub details: sqlx::types::Json<Value>,
    pub created_at: DateTime<Utc>,
}

impl HistoryRow {
    pub fn into_record(self) -> Result<HistoryRecord, StoreError> {
        Ok(HistoryRecord {
            id: self.id,
            cylinder_id: self.cylinder_id,
            sequence: self.sequence,
            event_type: self.event_type,
            actor_id: self.actor_id,
            actor_role: self.actor_role.as_deref().map(parse_role).transpose()?,
            from_status: self.from_status.as_deref().map(parse_status).transpose()?,
            to_status: self.to_status.as_deref().map(parse_status).transpose()?,
            notes: self.notes,
            details: self.details.0,
            created_at: self.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct DepotRow {
    pub id: Uuid,
    pub name: String,
    pub town: String,
    pub latitude: f64,
    pub longitude: f64,
    pub created_at: DateTime<Utc>,
}

impl DepotRow {
    pub fn into_record(self) -> DepotRecord {
        DepotRecord {
            id: self.id,
            name: self.name,
            town: self.town,
            latitude: self.latitude,
            longitude: self.longitude,
            created_at: self.created_at,
        }
    }
}
