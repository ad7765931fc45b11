//! SQL and use-case code shared by both backends. Both accept `$n`
//! placeholders, `RETURNING` and the same column types through sqlx, so
//! each statement is written once. [`impl_store!`] instantiates the use
//! cases for one backend's concrete pool type, which keeps the two backends
//! in lockstep without generic trait bounds over every column type.

use super::StoreError;

pub(super) const USER_COLUMNS: &str =
    "id, username, full_name, email, phone, role, is_active, created_at, updated_at, password_hash";

pub(super) const CYLINDER_COLUMNS: &str = "id, serial_number, brand, capacity_kg, qr_code, rfid_tag, status, \
     is_tampered, tamper_notes, manufacture_date, expiry_date, depot_id, customer_id, driver_id, \
     created_at, updated_at";

pub(super) const INSERT_USER: &str = "INSERT INTO users \
     (id, username, full_name, email, phone, role, is_active, created_at, updated_at, password_hash) \
     VALUES ($1, $2, $3, $4, $5, $6, TRUE, $7, $7, $8) \
     RETURNING id, username, full_name, email, phone, role, is_active, created_at, updated_at, password_hash";

pub(super) const SELECT_USER_BY_ID: &str = "SELECT id, username, full_name, email, phone, role, is_active, \
     created_at, updated_at, password_hash FROM users WHERE id = $1";

pub(super) const SELECT_USER_BY_USERNAME: &str = "SELECT id, username, full_name, email, phone, role, \
     is_active, created_at, updated_at, password_hash FROM users WHERE username = $1";

/// Applies each change only when its flag parameter is true, so one
/// statement covers every combination of fields.
pub(super) const UPDATE_USER: &str = "UPDATE users SET \
     full_name = CASE WHEN $2 THEN $3 ELSE full_name END, \
     email = CASE WHEN $4 THEN $5 ELSE email END, \
     phone = CASE WHEN $6 THEN $7 ELSE phone END, \
     role = CASE WHEN $8 THEN $9 ELSE role END, \
     is_active = CASE WHEN $10 THEN $11 ELSE is_active END, \
     password_hash = CASE WHEN $12 THEN $13 ELSE password_hash END, \
     updated_at = $14 \
     WHERE id = $1 \
     RETURNING id, username, full_name, email, phone, role, is_active, created_at, updated_at, password_hash";

pub(super) const REVOKE_USER_TOKENS: &str =
    "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL";

pub(super) const INSERT_REFRESH_TOKEN: &str = "INSERT INTO refresh_tokens \
     (id, family_id, user_id, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5)";

/// Spends a refresh token if it is live; zero rows affected means it was
/// used, revoked, expired or never existed.
pub(super) const SPEND_REFRESH_TOKEN: &str = "UPDATE refresh_tokens SET used_at = $2 \
     WHERE id = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2 \
     AND user_id IN (SELECT id FROM users WHERE is_active = TRUE)";

/// Returns the family of a refresh token and whether the token was already
/// spent. A token that was revoked without being spent, by a logout or a
/// deactivation, is not a reuse.
pub(super) const REFRESH_TOKEN_FAMILY: &str =
    "SELECT family_id, used_at IS NOT NULL FROM refresh_tokens WHERE id = $1";

pub(super) const REVOKE_FAMILY: &str =
    "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL";

pub(super) const INSERT_DEPOT: &str = "INSERT INTO depots (id, name, town, latitude, longitude, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, name, town, latitude, longitude, created_at";

pub(super) const SELECT_DEPOTS: &str =
    "SELECT id, name, town, latitude, longitude, created_at FROM depots ORDER BY name";

pub(super) const INSERT_CYLINDER: &str = "INSERT INTO cylinders \
     (id, serial_number, brand, capacity_kg, qr_code, rfid_tag, secret_key, auth_hash, status, \
      is_tampered, tamper_notes, manufacture_date, expiry_date, depot_id, created_by, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'IN_STOCK', FALSE, '', $9, $10, $11, $12, $13, $13) \
     RETURNING id, serial_number, brand, capacity_kg, qr_code, rfid_tag, status, is_tampered, tamper_notes, \
     manufacture_date, expiry_date, depot_id, customer_id, driver_id, created_at, updated_at";

pub(super) const UPDATE_STATUS: &str = "UPDATE cylinders SET status = $3, updated_at = $4 \
     WHERE id = $1 AND status = $2 \
     RETURNING id, serial_number, brand, capacity_kg, qr_code, rfid_tag, status, is_tampered, tamper_notes, \
     manufacture_date, expiry_date, depot_id, customer_id, driver_id, created_at, updated_at";

pub(super) const UPDATE_ASSIGNMENT: &str = "UPDATE cylinders SET \
     customer_id = CASE WHEN $2 THEN $3 ELSE customer_id END, \
     driver_id = CASE WHEN $4 THEN $5 ELSE driver_id END, \
     updated_at = $6 \
     WHERE id = $1 \
     RETURNING id, serial_number, brand, capacity_kg, qr_code, rfid_tag, status, is_tampered, tamper_notes, \
     manufacture_date, expiry_date, depot_id, customer_id, driver_id, created_at, updated_at";

pub(super) const SELECT_USER_ROLE: &str = "SELECT role, is_active FROM users WHERE id = $1";

pub(super) const SELECT_DEPOT_EXISTS: &str = "SELECT COUNT(*) FROM depots WHERE id = $1";

/// Reserves the next position in a cylinder's history and returns it with
/// the hash of the entry before it. The row lock this update takes orders
/// concurrent appends to one cylinder.
pub(super) const RESERVE_HISTORY_POSITION: &str = "UPDATE cylinders SET history_count = history_count + 1 \
     WHERE id = $1 RETURNING history_count, last_history_hash";

pub(super) const INSERT_HISTORY: &str = "INSERT INTO cylinder_history \
     (id, cylinder_id, sequence, event_type, actor_id, actor_role, from_status, to_status, notes, details, \
      created_at, prev_hash, entry_hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

pub(super) const SET_HISTORY_HEAD: &str =
    "UPDATE cylinders SET last_history_hash = $2 WHERE id = $1";

pub(super) const SELECT_HISTORY: &str = "SELECT id, cylinder_id, sequence, event_type, actor_id, actor_role, \
     from_status, to_status, notes, details, created_at, prev_hash, entry_hash FROM cylinder_history \
     WHERE cylinder_id = $1 ORDER BY sequence DESC LIMIT $2 OFFSET $3";

pub(super) const SELECT_CHAIN: &str = "SELECT id, cylinder_id, sequence, event_type, actor_id, actor_role, \
     from_status, to_status, notes, details, created_at, prev_hash, entry_hash FROM cylinder_history \
     WHERE cylinder_id = $1 ORDER BY sequence";

/// Turns a unique-constraint violation into [`StoreError::Conflict`],
/// naming the first of `fields` that appears in the constraint's name or
/// message. Every other error passes through unchanged.
pub(super) fn conflict_or(error: sqlx::Error, fields: &[(&'static str, &str)]) -> StoreError {
    let described = match &error {
        sqlx::Error::Database(database) if database.is_unique_violation() => {
            let constraint = database.constraint().unwrap_or_default().to_string();
            Some(format!("{constraint} {}", database.message()))
        }
        _ => None,
    };
    let Some(described) = described else {
        return StoreError::Database(error);
    };
    fields
        .iter()
        .find(|(field, _)| described.contains(field))
        .map(|(field, value)| StoreError::Conflict {
            field,
            value: (*value).to_string(),
        })
        .unwrap_or(StoreError::Database(error))
}

/// Implements [`super::Store`] for `$store`, whose `pool` field is a
/// `sqlx::Pool<$db>`, which has `begin_write`, and whose module has a
/// `MIGRATOR` static.
macro_rules! impl_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::storage::Store for $store {
            async fn migrate(&self) -> $crate::storage::StoreResult<()> {
                MIGRATOR.run(&self.pool).await?;
                Ok(())
            }

            async fn pending_migrations(&self) -> $crate::storage::StoreResult<usize> {
                // Any error reading the migrations table counts every
                // migration as pending, so that running them reports the
                // real problem.
                let query = "SELECT version FROM _sqlx_migrations WHERE success";
                let applied: Vec<(i64,)> = match sqlx::query_as(query).fetch_all(&self.pool).await {
                    Ok(rows) => rows,
                    Err(_) => return Ok(MIGRATOR.iter().count()),
                };
                let pending = MIGRATOR
                    .iter()
                    .filter(|migration| !applied.iter().any(|(version,)| *version == migration.version))
                    .count();
                Ok(pending)
            }

            async fn close(&self) {
                self.close_writer().await;
                self.pool.close().await;
            }

            async fn ping(&self) -> $crate::storage::StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            #[tracing::instrument(skip_all, fields(username = %user.username))]
            async fn create_user(
                &self,
                user: $crate::storage::NewUserRecord,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::storage::StoreResult<$crate::storage::UserRecord> {
                use $crate::storage::shared::*;
                let row: $crate::storage::models::UserRow = sqlx::query_as(INSERT_USER)
                    .bind(uuid::Uuid::new_v4())
                    .bind(&user.username)
                    .bind(&user.full_name)
                    .bind(&user.email)
                    .bind(&user.phone)
                    .bind(user.role.as_str())
                    .bind(now)
                    .bind(&user.password_hash)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|error| conflict_or(error, &[("username", &user.username)]))?;
                row.into_record()
            }

            async fn user(&self, id: uuid::Uuid) -> $crate::storage::StoreResult<Option<$crate::storage::UserRecord>> {
                let row: Option<$crate::storage::models::UserRow> =
                    sqlx::query_as($crate::storage::shared::SELECT_USER_BY_ID)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                row.map(|row| row.into_record()).transpose()
            }

            async fn credentials(&self, username: &str) -> $crate::storage::StoreResult<Option<$crate::storage::Credentials>> {
                let row: Option<$crate::storage::models::UserRow> =
                    sqlx::query_as($crate::storage::shared::SELECT_USER_BY_USERNAME)
                        .bind(username)
                        .fetch_optional(&self.pool)
                        .await?;
                row.map(|row| row.into_credentials()).transpose()
            }

            async fn list_users(
                &self,
                filter: &$crate::storage::UserFilter,
                page: $crate::storage::PageRequest,
            ) -> $crate::storage::StoreResult<$crate::storage::Page<$crate::storage::UserRecord>> {
                let mut query = sqlx::QueryBuilder::<$db>::new("SELECT ");
                query.push($crate::storage::shared::USER_COLUMNS).push(" FROM users WHERE TRUE");
                if let Some(role) = filter.role {
                    query.push(" AND role = ").push_bind(role.as_str());
                }
                if let Some(active) = filter.active {
                    query.push(" AND is_active = ").push_bind(active);
                }
                query.push(" ORDER BY username LIMIT ").push_bind(page.fetch_limit());
                query.push(" OFFSET ").push_bind(page.offset());
                let rows: Vec<$crate::storage::models::UserRow> =
                    query.build_query_as().fetch_all(&self.pool).await?;
                let records = rows.into_iter().map(|row| row.into_record()).collect::<Result<Vec<_>, _>>()?;
                Ok($crate::storage::Page::from_rows(records, page))
            }

            #[tracing::instrument(skip_all, fields(user_id = %id))]
            async fn update_user(
                &self,
                id: uuid::Uuid,
                changes: $crate::storage::UserChanges,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::storage::StoreResult<Option<$crate::storage::UserRecord>> {
                use $crate::storage::shared::*;
                let mut tx = self.begin_write().await?;
                let row: Option<$crate::storage::models::UserRow> = sqlx::query_as(UPDATE_USER)
                    .bind(id)
                    .bind(changes.full_name.is_some())
                    .bind(changes.full_name.clone().unwrap_or_default())
                    .bind(changes.email.is_some())
                    .bind(changes.email.clone().flatten())
                    .bind(changes.phone.is_some())
                    .bind(changes.phone.clone().flatten())
                    .bind(changes.role.is_some())
                    .bind(changes.role.map(|role| role.as_str()).unwrap_or_default())
                    .bind(changes.is_active.is_some())
                    .bind(changes.is_active.unwrap_or(true))
                    .bind(changes.password_hash.is_some())
                    .bind(changes.password_hash.clone().unwrap_or_default())
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                // A deactivated user, or one whose password was reset, must
                // sign in again everywhere.
                if changes.is_active == Some(false) || changes.password_hash.is_some() {
                    sqlx::query(REVOKE_USER_TOKENS).bind(id).bind(now).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                row.into_record().map(Some)
            }

            async fn insert_refresh_token(&self, token: $crate::storage::RefreshTokenRecord) -> $crate::storage::StoreResult<()> {
                sqlx::query($crate::storage::shared::INSERT_REFRESH_TOKEN)
                    .bind(token.id)
                    .bind(token.family_id)
                    .bind(token.user_id)
                    .bind(token.issued_at)
                    .bind(token.expires_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            #[tracing::instrument(skip_all, fields(token_id = %used))]
            async fn rotate_refresh_token(
                &self,
                used: uuid::Uuid,
                next: $crate::storage::RefreshTokenRecord,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::storage::StoreResult<$crate::storage::RefreshOutcome> {
                use $crate::storage::shared::*;
                use $crate::storage::RefreshOutcome;
                let mut tx = self.begin_write().await?;

                let spent = sqlx::query(SPEND_REFRESH_TOKEN).bind(used).bind(now).execute(&mut *tx).await?;
                if spent.rows_affected() == 1 {
                    sqlx::query(INSERT_REFRESH_TOKEN)
                        .bind(next.id)
                        .bind(next.family_id)
                        .bind(next.user_id)
                        .bind(next.issued_at)
                        .bind(next.expires_at)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    return Ok(RefreshOutcome::Rotated);
                }

                let family: Option<(uuid::Uuid, bool)> =
                    sqlx::query_as(REFRESH_TOKEN_FAMILY).bind(used).fetch_optional(&mut *tx).await?;
                let outcome = match family {
                    Some((family_id, true)) => {
                        sqlx::query(REVOKE_FAMILY).bind(family_id).bind(now).execute(&mut *tx).await?;
                        RefreshOutcome::Reused
                    }
                    _ => RefreshOutcome::Rejected,
                };
                tx.commit().await?;
                Ok(outcome)
            }

            async fn revoke_token_family(&self, family: uuid::Uuid, now: chrono::DateTime<chrono::Utc>) -> $crate::storage::StoreResult<()> {
                sqlx::query($crate::storage::shared::REVOKE_FAMILY)
                    .bind(family)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn create_depot(
                &self,
                depot: $crate::storage::NewDepotRecord,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::storage::StoreResult<$crate::storage::DepotRecord> {
                use $crate::storage::shared::*;
                let row: $crate::storage::models::DepotRow = sqlx::query_as(INSERT_DEPOT)
                    .bind(uuid::Uuid::new_v4())
                    .bind(&depot.name)
                    .bind(&depot.town)
                    .bind(depot.latitude)
                    .bind(depot.longitude)
                    .bind(now)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|error| conflict_or(error, &[("name", &depot.name)]))?;
                Ok(row.into_record())
            }

            async fn list_depots(&self) -> $crate::storage::StoreResult<Vec<$crate::storage::DepotRecord>> {
                let rows: Vec<$crate::storage::models::DepotRow> =
                    sqlx::query_as($crate::storage::shared::SELECT_DEPOTS).fetch_all(&self.pool).await?;
                Ok(rows.into_iter().map(|row| row.into_record()).collect())
            }

            #[tracing::instrument(skip_all, fields(serial = %cylinder.serial_number))]
            async fn register_cylinder(
                &self,
                cylinder: $crate::storage::NewCylinderRecord,
                actor: $crate::storage::Actor,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::storage::StoreResult<$crate::storage::CylinderRecord> {
                use $crate::storage::shared::*;
                use $crate::storage::{HistoryEvent, NewHistoryEntry};
                let mut tx = self.begin_write().await?;

                if let Some(depot_id) = cylinder.depot_id {
                    let (count,): (i64,) = sqlx::query_as(SELECT_DEPOT_EXISTS).bind(depot_id).fetch_one(&mut *tx).await?;
                    if count == 0 {
                        return Err($crate::storage::StoreError::InvalidReference {
                            field: "depot_id",
                            rule: format!("must name an existing depot; {depot_id} does not"),
                        });
                    }
                }

                let row: $crate::storage::models::CylinderRow = sqlx::query_as(INSERT_CYLINDER)
                    .bind(cylinder.id)
                    .bind(&cylinder.serial_number)
                    .bind(&cylinder.brand)
                    .bind(cylinder.capacity_kg)
                    .bind(&cylinder.qr_code)
                    .bind(&cylinder.rfid_tag)
                    .bind(&cylinder.secret_key)
                    .bind(&cylinder.auth_hash)
                    .bind(cylinder.manufacture_date)
                    .bind(cylinder.expiry_date)
                    .bind(cylinder.depot_id)
                    .bind(actor.user_id)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|error| {
                        conflict_or(
                            error,
                            &[
                                ("serial_number", &cylinder.serial_number),
                                ("qr_code", &cylinder.qr_code),
                                ("rfid_tag", &cylinder.rfid_tag),
                            ],
                        )
                    })?;
                let record = row.into_record()?;

                let entry = NewHistoryEntry {
                    cylinder_id: record.id,
                    event: HistoryEvent::Registered,
                    actor: Some(actor),
                    from_status: None,
                    to_status: Some(record.status),
                    notes: String::new(),
                    details: serde_json::json!({
                        "serial_number": record.serial_number,
                        "brand": record.brand,
                        "capacity_kg": record.capacity_kg,
                        "manufacture_date": record.manufacture_date,
                        "expiry_date": record.expiry_date,
                        "depot_id": record.depot_id,
                    }),
                };
                self.append_history(&mut tx, entry, now).await?;
                tx.commit().await?;
                Ok(record)
            }

            async fn cylinder(
                &self,
                id: uuid::Uuid,
                scope: $crate::storage::Scope,
            ) -> $crate::storage::StoreResult<Option<$crate::storage::CylinderRecord>> {
                let mut query = sqlx::QueryBuilder::<$db>::new("SELECT ");
                query.push($crate::storage::shared::CYLINDER_COLUMNS).push(" FROM cylinders WHERE id = ");
                query.push_bind(id);
                Self::push_scope(&mut query, scope);
                let row: Option<$crate::storage::models::CylinderRow> =
                    query.build_query_as().fetch_optional(&self.pool).await?;
                row.map(|row| row.into_record()).transpose()
            }

            async fn list_cylinders(
                &self,
                filter: &$crate::storage::CylinderFilter,
                scope: $crate::storage::Scope,
                page: $crate::storage::PageRequest,
            ) -> $crate::storage::StoreResult<$crate::storage::Page<$crate::storage::CylinderRecord>> {
                let mut query = sqlx::QueryBuilder::<$db>::new("SELECT ");
                query.push($crate::storage::shared::CYLINDER_COLUMNS).push(" FROM cylinders WHERE TRUE");
                Self::push_scope(&mut query, scope);
                if let Some(status) = filter.status {
                    query.push(" AND status = ").push_bind(status.as_str());
                }
                if let Some(tampered) = filter.tampered {
                    query.push(" AND is_tampered = ").push_bind(tampered);
                }
                if let Some(expired) = filter.expired {
                    let today = filter.today.unwrap_or_else(|| chrono::Utc::now().date_naive());
                    query.push(if expired { " AND expiry_date < " } else { " AND expiry_date >= " });
                    query.push_bind(today);
                }
                if let Some(customer_id) = filter.customer_id {
                    query.push(" AND customer_id = ").push_bind(customer_id);
                }
                if let Some(driver_id) = filter.driver_id {
                    query.push(" AND driver_id = ").push_bind(driver_id);
                }
                if let Some(depot_id) = filter.depot_id {
                    query.push(" AND depot_id = ").push_bind(depot_id);
                }
                query.push(" ORDER BY serial_number LIMIT ").push_bind(page.fetch_limit());
                query.push(" OFFSET ").push_bind(page.offset());
                let rows: Vec<$crate::storage::models::CylinderRow> =
                    query.build_query_as().fetch_all(&self.pool).await?;
                let records = rows.into_iter().map(|row| row.into_record()).collect::<Result<Vec<_>, _>>()?;
                Ok($crate::storage::Page::from_rows(records, page))
            }

            #[tracing::instrument(skip_all, fields(cylinder_id = %change.cylinder_id, to = %change.to))]
            async fn change_status(
                &self,
                change: $crate::storage::StatusChange,
                actor: $crate::storage::Actor,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::storage::StoreResult<$crate::storage::StatusChangeOutcome> {
                use $crate::storage::shared::*;
                use $crate::storage::{HistoryEvent, NewHistoryEntry, Scope, StatusChangeOutcome};
                let mut tx = self.begin_write().await?;

                let row: Option<$crate::storage::models::CylinderRow> = sqlx::query_as(UPDATE_STATUS)
                    .bind(change.cylinder_id)
                    .bind(change.expected.as_str())
                    .bind(change.to.as_str())
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    tx.rollback().await?;
                    return Ok(match self.cylinder(change.cylinder_id, Scope::All).await? {
                        Some(current) => StatusChangeOutcome::Stale(current),
                        None => StatusChangeOutcome::NotFound,
                    });
                };
                let record = row.into_record()?;

                let entry = NewHistoryEntry {
                    cylinder_id: record.id,
                    event: HistoryEvent::StatusChanged,
                    actor: Some(actor),
                    from_status: Some(change.expected),
                    to_status: Some(change.to),
                    notes: change.notes,
                    details: serde_json::json!({}),
                };
                self.append_history(&mut tx, entry, now).await?;
                tx.commit().await?;
                Ok(StatusChangeOutcome::Changed(record))
            }

            #[tracing::instrument(skip_all, fields(cylinder_id = %assignment.cylinder_id))]
            async fn assign_cylinder(
                &self,
                assignment: $crate::storage::Assignment,
                actor: $crate::storage::Actor,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::storage::StoreResult<Option<$crate::storage::CylinderRecord>> {
                use $crate::domain::Role;
                use $crate::storage::shared::*;
                use $crate::storage::{HistoryEvent, NewHistoryEntry};
                let mut tx = self.begin_write().await?;

                let parties = [
                    ("customer_id", Role::Customer, assignment.customer_id.flatten()),
                    ("driver_id", Role::Driver, assignment.driver_id.flatten()),
                ];
                for (field, wanted, user_id) in parties {
                    let Some(user_id) = user_id else { continue };
                    let found: Option<(String, bool)> =
                        sqlx::query_as(SELECT_USER_ROLE).bind(user_id).fetch_optional(&mut *tx).await?;
                    let rule = match found {
                        None => Some(format!("must name an existing user; {user_id} does not")),
                        Some((_, false)) => Some(format!("must name an active user; {user_id} is deactivated")),
                        Some((role, true)) if role != wanted.as_str() => {
                            Some(format!("must name a user with role {wanted}; {user_id} is a {role}"))
                        }
                        Some(_) => None,
                    };
                    if let Some(rule) = rule {
                        return Err($crate::storage::StoreError::InvalidReference { field, rule });
                    }
                }

                let row: Option<$crate::storage::models::CylinderRow> = sqlx::query_as(UPDATE_ASSIGNMENT)
                    .bind(assignment.cylinder_id)
                    .bind(assignment.customer_id.is_some())
                    .bind(assignment.customer_id.flatten())
                    .bind(assignment.driver_id.is_some())
                    .bind(assignment.driver_id.flatten())
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let record = row.into_record()?;

                let entry = NewHistoryEntry {
                    cylinder_id: record.id,
                    event: HistoryEvent::Assigned,
                    actor: Some(actor),
                    from_status: None,
                    to_status: None,
                    notes: assignment.notes,
                    details: serde_json::json!({
                        "customer_id": record.customer_id,
                        "driver_id": record.driver_id,
                    }),
                };
                self.append_history(&mut tx, entry, now).await?;
                tx.commit().await?;
                Ok(Some(record))
            }

            async fn cylinder_history(
                &self,
                id: uuid::Uuid,
                page: $crate::storage::PageRequest,
            ) -> $crate::storage::StoreResult<$crate::storage::Page<$crate::storage::HistoryRecord>> {
                let rows: Vec<$crate::storage::models::HistoryRow> =
                    sqlx::query_as($crate::storage::shared::SELECT_HISTORY)
                        .bind(id)
                        .bind(page.fetch_limit())
                        .bind(page.offset())
                        .fetch_all(&self.pool)
                        .await?;
                let records = rows.into_iter().map(|row| row.into_record()).collect::<Result<Vec<_>, _>>()?;
                Ok($crate::storage::Page::from_rows(records, page))
            }

            async fn scan_by_client_id(
                &self,
                scanner_id: uuid::Uuid,
                client_scan_id: &str,
            ) -> $crate::storage::StoreResult<Option<$crate::storage::RecordedScan>> {
                self.stored_scan($crate::storage::scans::SCAN_BY_CLIENT_ID, scanner_id, Some(client_scan_id)).await
            }

            async fn scan_for_token(&self, scan_id: uuid::Uuid) -> $crate::storage::StoreResult<Option<$crate::storage::RecordedScan>> {
                self.stored_scan($crate::storage::scans::SCAN_BY_ID, scan_id, None).await
            }

            #[tracing::instrument(skip_all, fields(scan_id = %scan.id, scanner_id = %scan.scanner.user_id))]
            async fn record_scan(
                &self,
                scan: $crate::storage::ScanInput,
                policy: &$crate::domain::scan::TamperPolicy,
                respond: $crate::storage::ScanResponder<'_>,
            ) -> $crate::storage::StoreResult<$crate::storage::ScanOutcome> {
                self.record_scan_in_transaction(scan, policy, respond).await
            }

            async fn cylinder_scans(
                &self,
                id: uuid::Uuid,
                page: $crate::storage::PageRequest,
            ) -> $crate::storage::StoreResult<$crate::storage::Page<$crate::storage::ScanRecord>> {
                let rows: Vec<$crate::storage::models::ScanRow> = sqlx::query_as($crate::storage::scans::LIST_SCANS)
                    .bind(id)
                    .bind(page.fetch_limit())
                    .bind(page.offset())
                    .fetch_all(&self.pool)
                    .await?;
                let records = rows.into_iter().map(|row| row.into_record()).collect::<Result<Vec<_>, _>>()?;
                Ok($crate::storage::Page::from_rows(records, page))
            }

            #[tracing::instrument(skip_all, fields(cylinder_id = %id, flagged))]
            async fn set_tamper_flag(
                &self,
                id: uuid::Uuid,
                flagged: bool,
                notes: String,
                actor: $crate::storage::Actor,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::storage::StoreResult<$crate::storage::TamperFlagOutcome> {
                use $crate::storage::{HistoryEvent, NewHistoryEntry, Scope, TamperFlagOutcome};
                let mut tx = self.begin_write().await?;

                let row: Option<$crate::storage::models::CylinderRow> = sqlx::query_as($crate::storage::scans::SET_TAMPER_FLAG)
                    .bind(id)
                    .bind(flagged)
                    .bind(&notes)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    tx.rollback().await?;
                    return Ok(match self.cylinder(id, Scope::All).await? {
                        Some(current) => TamperFlagOutcome::Unchanged(current),
                        None => TamperFlagOutcome::NotFound,
                    });
                };
                let record = row.into_record()?;

                let entry = NewHistoryEntry {
                    cylinder_id: id,
                    event: if flagged { HistoryEvent::TamperFlagged } else { HistoryEvent::TamperCleared },
                    actor: Some(actor),
                    from_status: None,
                    to_status: None,
                    notes,
                    details: serde_json::json!({ "is_tampered": flagged }),
                };
                self.append_history(&mut tx, entry, now).await?;
                tx.commit().await?;
                Ok(TamperFlagOutcome::Changed(record))
            }

            #[tracing::instrument(skip_all, fields(cylinder_id = %reissue.cylinder_id))]
            async fn reissue_codes(
                &self,
                reissue: $crate::storage::CodeReissue,
                actor: $crate::storage::Actor,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::storage::StoreResult<Option<$crate::storage::CylinderRecord>> {
                use $crate::storage::scans::*;
                use $crate::storage::shared::conflict_or;
                use $crate::storage::{HistoryEvent, NewHistoryEntry};
                let mut tx = self.begin_write().await?;

                let old: Option<(String, String)> =
                    sqlx::query_as(LOCK_CODES).bind(reissue.cylinder_id).bind(now).fetch_optional(&mut *tx).await?;
                let Some((old_qr, old_rfid)) = old else {
                    return Ok(None);
                };
                for (code, scan_type) in [(&old_qr, "QR"), (&old_rfid, "RFID")] {
                    sqlx::query(INSERT_REVOKED_CODE)
                        .bind(code)
                        .bind(scan_type)
                        .bind(reissue.cylinder_id)
                        .bind(now)
                        .bind(actor.user_id)
                        .bind(&reissue.reason)
                        .execute(&mut *tx)
                        .await?;
                }
                let row: $crate::storage::models::CylinderRow = sqlx::query_as(SET_CODES)
                    .bind(reissue.cylinder_id)
                    .bind(&reissue.qr_code)
                    .bind(&reissue.rfid_tag)
                    .bind(&reissue.secret_key)
                    .bind(&reissue.auth_hash)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|error| conflict_or(error, &[("qr_code", &reissue.qr_code), ("rfid_tag", &reissue.rfid_tag)]))?;
                let record = row.into_record()?;

                let entry = NewHistoryEntry {
                    cylinder_id: record.id,
                    event: HistoryEvent::CodesReissued,
                    actor: Some(actor),
                    from_status: None,
                    to_status: None,
                    notes: reissue.reason,
                    details: serde_json::json!({ "revoked_qr_code": old_qr, "revoked_rfid_tag": old_rfid }),
                };
                self.append_history(&mut tx, entry, now).await?;
                tx.commit().await?;
                Ok(Some(record))
            }

            async fn chain_heads(
                &self,
                after: Option<uuid::Uuid>,
                limit: i64,
            ) -> $crate::storage::StoreResult<Vec<$crate::storage::ChainHead>> {
                use $crate::storage::scans::*;
                let heads = match after {
                    None => sqlx::query_as(CHAIN_HEADS_FIRST).bind(limit).fetch_all(&self.pool).await?,
                    Some(after) => sqlx::query_as(CHAIN_HEADS_AFTER).bind(after).bind(limit).fetch_all(&self.pool).await?,
                };
                Ok(heads)
            }

            async fn chain_entries(
                &self,
                cylinder_id: uuid::Uuid,
            ) -> $crate::storage::StoreResult<Vec<$crate::domain::audit::StoredEntry>> {
                let rows: Vec<$crate::storage::models::HistoryRow> =
                    sqlx::query_as($crate::storage::shared::SELECT_CHAIN).bind(cylinder_id).fetch_all(&self.pool).await?;
                Ok(rows.into_iter().map(|row| row.into_stored()).collect())
            }

            async fn scan_links(&self, cylinder_id: uuid::Uuid) -> $crate::storage::StoreResult<Vec<$crate::storage::ScanLink>> {
                Ok(sqlx::query_as($crate::storage::scans::SCAN_LINKS).bind(cylinder_id).fetch_all(&self.pool).await?)
            }

            async fn pending_security_events(&self) -> $crate::storage::StoreResult<i64> {
                let (count,): (i64,) =
                    sqlx::query_as($crate::storage::scans::PENDING_SECURITY_EVENTS).fetch_one(&self.pool).await?;
                Ok(count)
            }

            async fn record_security_event(
                &self,
                kind: &str,
                details: &serde_json::Value,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::storage::StoreResult<()> {
                sqlx::query($crate::storage::scans::INSERT_SECURITY_EVENT)
                    .bind(uuid::Uuid::new_v4())
                    .bind(kind)
                    .bind(Option::<uuid::Uuid>::None)
                    .bind(Option::<uuid::Uuid>::None)
                    .bind(details.to_string())
                    .bind(at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }

        impl $store {
            /// Restricts a cylinder query to what `scope` may see.
            fn push_scope(query: &mut sqlx::QueryBuilder<$db>, scope: $crate::storage::Scope) {
                match scope {
                    $crate::storage::Scope::All => {}
                    $crate::storage::Scope::Customer(id) => {
                        query.push(" AND customer_id = ").push_bind(id);
                    }
                    $crate::storage::Scope::Driver(id) => {
                        query.push(" AND driver_id = ").push_bind(id);
                    }
                }
            }

            /// Appends a history entry inside the caller's transaction, as
            /// the next link of the cylinder's hash chain.
            async fn append_history(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                entry: $crate::storage::NewHistoryEntry,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::storage::StoreResult<()> {
                use $crate::storage::shared::*;

                let reserved: (i64, String) =
                    sqlx::query_as(RESERVE_HISTORY_POSITION).bind(entry.cylinder_id).fetch_one(&mut **tx).await?;
                self.write_history_entry(tx, entry, reserved, now).await
            }

            /// Writes a history entry at a position already reserved in the
            /// same transaction, given as the new history count and the hash
            /// of the entry before it, and moves the chain head to it.
            async fn write_history_entry(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                entry: $crate::storage::NewHistoryEntry,
                reserved: (i64, String),
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::storage::StoreResult<()> {
                let prepared = $crate::storage::PreparedEntry::new(&self.chain_key, entry, reserved, now);
                Self::insert_prepared_entry(tx, &prepared).await?;
                Ok(())
            }

            /// Inserts a hashed history entry and moves the chain head to it.
            async fn insert_prepared_entry(
                tx: &mut sqlx::Transaction<'static, $db>,
                entry: &$crate::storage::PreparedEntry,
            ) -> Result<(), sqlx::Error> {
                use $crate::storage::shared::*;
                sqlx::query(INSERT_HISTORY)
                    .bind(entry.id)
                    .bind(entry.cylinder_id)
                    .bind(entry.sequence)
                    .bind(entry.event_type)
                    .bind(entry.actor_id)
                    .bind(entry.actor_role)
                    .bind(entry.from_status)
                    .bind(entry.to_status)
                    .bind(&entry.notes)
                    .bind(&entry.details)
                    .bind(entry.created_at)
                    .bind(&entry.prev_hash)
                    .bind(&entry.entry_hash)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query(SET_HISTORY_HEAD)
                    .bind(entry.cylinder_id)
                    .bind(&entry.entry_hash)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }
        }
    };
}

pub(super) use impl_store;
