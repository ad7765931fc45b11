//! Storage conformance: every `Store` method called directly, without
//! HTTP, with the same expectations on SQLite and PostgreSQL.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use cyltrack::domain::{CylinderStatus, Role};
use cyltrack::storage::{
    Actor, Assignment, CylinderFilter, CylinderRecord, DepotRecord, HistoryRecord,
    NewCylinderRecord, NewDepotRecord, NewUserRecord, Page, PageRequest, RefreshOutcome,
    RefreshTokenRecord, Scope, StatusChange, StatusChangeOutcome, Store, StoreError, StoreResult,
    UserChanges, UserFilter, UserRecord,
};
use serde_json::json;
use tempfile::TempDir;
use uuid::Uuid;

use crate::helpers::{Backend, fresh_store, on_both_backends};

on_both_backends!(
    user_created_and_read_back,
    duplicate_username_conflicts,
    user_list_filters_and_pages,
    user_update_changes_given_fields,
    user_update_clears_email,
    unknown_user_is_none,
    deactivation_rejects_refresh_token,
    deactivation_revocation_outlives_reactivation,
    password_change_revokes_refresh_tokens,
    refresh_rotates_exactly_once,
    refresh_reuse_revokes_family,
    expired_refresh_token_rejected,
    unknown_refresh_token_rejected,
    refresh_expiry_exact_to_microsecond,
    revoke_family_stops_rotation,
    depots_listed_by_name,
    duplicate_depot_name_conflicts,
    register_writes_one_history_entry,
    duplicate_serial_conflicts_without_history,
    duplicate_codes_conflict,
    unknown_depot_is_invalid_reference,
    cylinder_lookup_honours_scope,
    cylinder_list_filters_status_tamper,
    cylinder_list_filters_expiry,
    cylinder_list_filters_holders_depot,
    cylinder_list_pages,
    status_change_appends_history,
    stale_status_change_writes_nothing,
    status_change_unknown_cylinder,
    assignment_sets_and_clears_custody,
    assignment_rejects_wrong_role,
    assignment_rejects_inactive_user,
    assignment_rejects_unknown_user,
    assignment_unknown_cylinder_is_none,
    history_newest_first_and_paged,
    timestamps_round_trip_microseconds,
);

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// Opens a fresh, migrated store. The returned directory contains the
/// SQLite file and is deleted when it drops.
async fn open_store(backend: Backend) -> (Arc<dyn Store>, TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("temp dir: {error}"));
    let store = fresh_store(backend, dir.path()).await;
    (store, dir)
}

/// Unwraps a storage result, naming the call in the panic message.
fn ok<T>(result: StoreResult<T>, call: &str) -> T {
    result.unwrap_or_else(|error| panic!("{call} failed: {error}"))
}

/// Returns the current time truncated to microseconds, the precision
/// PostgreSQL stores, so values read back compare equal.
fn now_micros() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros())
        .unwrap_or_else(|| unreachable!("the current time is in range"))
}

fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day)
        .unwrap_or_else(|| panic!("invalid date {year}-{month}-{day}"))
}

fn page(page: u32, per_page: u32) -> PageRequest {
    PageRequest { page, per_page }
}

fn new_user(username: &str, role: Role) -> NewUserRecord {
    NewUserRecord {
        username: username.to_string(),
        full_name: "Test User".to_string(),
        email: None,
        phone: None,
        role,
        password_hash: "hash-of-test-password".to_string(),
    }
}

async fn add_user(store: &dyn Store, username: &str, role: Role) -> UserRecord {
    ok(
        store
            .create_user(new_user(username, role), now_micros())
            .await,
        "create_user",
    )
}

async fn deactivate(store: &dyn Store, id: Uuid) {
    let changes = UserChanges {
        is_active: Some(false),
        ..UserChanges::default()
    };
    let updated = ok(
        store.update_user(id, changes, now_micros()).await,
        "update_user",
    );
    assert!(
        updated.is_some_and(|user| !user.is_active),
        "deactivation should return the inactive user"
    );
}

/// Creates a dispatcher to author cylinder changes, because history rows
/// reference the actor's user row.
async fn add_staff_actor(store: &dyn Store) -> Actor {
    let staff = add_user(store, "dispatcher", Role::Dispatcher).await;
    Actor {
        user_id: staff.id,
        role: staff.role,
    }
}

async fn add_depot(store: &dyn Store, name: &str) -> DepotRecord {
    let depot = NewDepotRecord {
        name: name.to_string(),
        town: "Nakuru".to_string(),
        latitude: -0.3031,
        longitude: 36.08,
    };
    ok(
        store.create_depot(depot, now_micros()).await,
        "create_depot",
    )
}

/// Builds a cylinder whose QR code and RFID tag derive from `serial`, so
/// distinct serials never collide on those columns.
fn new_cylinder(serial: &str, depot_id: Option<Uuid>) -> NewCylinderRecord {
    NewCylinderRecord {
        id: Uuid::new_v4(),
        serial_number: serial.to_string(),
        brand: "Jiko Gas".to_string(),
        capacity_kg: 12.5,
        qr_code: format!("QR-{serial}"),
        rfid_tag: format!("RFID-{serial}"),
        secret_key: vec![7; 32],
        auth_hash: format!("auth-hash-{serial}"),
        manufacture_date: date(2022, 3, 1),
        expiry_date: date(2032, 3, 1),
        depot_id,
    }
}

async fn register(store: &dyn Store, actor: Actor, cylinder: NewCylinderRecord) -> CylinderRecord {
    ok(
        store.register_cylinder(cylinder, actor, now_micros()).await,
        "register_cylinder",
    )
}

async fn set_status(
    store: &dyn Store,
    actor: Actor,
    id: Uuid,
    expected: CylinderStatus,
    to: CylinderStatus,
) -> CylinderRecord {
    let change = StatusChange {
        cylinder_id: id,
        expected,
        to,
        notes: String::new(),
    };
    match ok(
        store.change_status(change, actor, now_micros()).await,
        "change_status",
    ) {
        StatusChangeOutcome::Changed(record) => record,
        other => panic!("status change {expected} -> {to} did not apply: {other:?}"),
    }
}

fn assignment(
    cylinder_id: Uuid,
    customer_id: Option<Option<Uuid>>,
    driver_id: Option<Option<Uuid>>,
) -> Assignment {
    Assignment {
        cylinder_id,
        customer_id,
        driver_id,
        notes: String::new(),
    }
}

async fn assign(
    store: &dyn Store,
    actor: Actor,
    assignment: Assignment,
) -> StoreResult<Option<CylinderRecord>> {
    store.assign_cylinder(assignment, actor, now_micros()).await
}

async fn current(store: &dyn Store, id: Uuid) -> Option<CylinderRecord> {
    ok(store.cylinder(id, Scope::All).await, "cylinder")
}

async fn full_history(store: &dyn Store, id: Uuid) -> Vec<HistoryRecord> {
    ok(
        store
            .cylinder_history(id, page(1, PageRequest::MAX_PER_PAGE))
            .await,
        "cylinder_history",
    )
    .items
}

fn refresh_token(user_id: Uuid, family_id: Uuid, expires_at: DateTime<Utc>) -> RefreshTokenRecord {
    RefreshTokenRecord {
        id: Uuid::new_v4(),
        family_id,
        user_id,
        issued_at: now_micros(),
        expires_at,
    }
}

fn in_one_hour() -> DateTime<Utc> {
    now_micros() + TimeDelta::hours(1)
}

/// Inserts the first token of a new family, as a login does.
async fn login_token(store: &dyn Store, user_id: Uuid) -> RefreshTokenRecord {
    let token = refresh_token(user_id, Uuid::new_v4(), in_one_hour());
    ok(
        store.insert_refresh_token(token.clone()).await,
        "insert_refresh_token",
    );
    token
}

/// Presents `used` for rotation with a fresh successor in its family.
async fn rotate(
    store: &dyn Store,
    used: &RefreshTokenRecord,
) -> (RefreshOutcome, RefreshTokenRecord) {
    let next = refresh_token(used.user_id, used.family_id, in_one_hour());
    let outcome = ok(
        store
            .rotate_refresh_token(used.id, next.clone(), now_micros())
            .await,
        "rotate_refresh_token",
    );
    (outcome, next)
}

fn conflict_field<T>(result: &StoreResult<T>) -> Option<&'static str> {
    match result {
        Err(StoreError::Conflict { field, .. }) => Some(*field),
        _ => None,
    }
}

fn invalid_reference_field<T>(result: &StoreResult<T>) -> Option<&'static str> {
    match result {
        Err(StoreError::InvalidReference { field, .. }) => Some(*field),
        _ => None,
    }
}

fn usernames(page: &Page<UserRecord>) -> Vec<&str> {
    page.items
        .iter()
        .map(|user| user.username.as_str())
        .collect()
}

fn serials(page: &Page<CylinderRecord>) -> Vec<&str> {
    page.items
        .iter()
        .map(|cylinder| cylinder.serial_number.as_str())
        .collect()
}

fn sequences(entries: &[HistoryRecord]) -> Vec<i64> {
    entries.iter().map(|entry| entry.sequence).collect()
}

// ---------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------

async fn user_created_and_read_back(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let now = now_micros();
    let request = NewUserRecord {
        username: "wanjiru".to_string(),
        full_name: "Wanjiru Kamau".to_string(),
        email: Some("wanjiru@example.co.ke".to_string()),
        phone: Some("+254712345678".to_string()),
        role: Role::Driver,
        password_hash: "hash-1".to_string(),
    };

    let created = ok(store.create_user(request, now).await, "create_user");
    assert_eq!(created.username, "wanjiru", "username");
    assert_eq!(created.full_name, "Wanjiru Kamau", "full name");
    assert_eq!(
        created.email.as_deref(),
        Some("wanjiru@example.co.ke"),
        "email"
    );
    assert_eq!(created.phone.as_deref(), Some("+254712345678"), "phone");
    assert_eq!(created.role, Role::Driver, "role");
    assert!(created.is_active, "a new user should be active");
    assert_eq!(created.created_at, now, "created_at");
    assert_eq!(created.updated_at, now, "updated_at of a new user");

    let by_id = ok(store.user(created.id).await, "user");
    assert_eq!(
        by_id.as_ref(),
        Some(&created),
        "user(id) should return the created record"
    );

    let credentials = ok(store.credentials("wanjiru").await, "credentials");
    let credentials = credentials.unwrap_or_else(|| panic!("credentials(wanjiru) returned None"));
    assert_eq!(
        credentials.user, created,
        "credentials should carry the created record"
    );
    assert_eq!(credentials.password_hash, "hash-1", "stored password hash");
}

async fn duplicate_username_conflicts(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let first = add_user(store.as_ref(), "otieno", Role::Customer).await;

    let mut second = new_user("otieno", Role::Driver);
    second.full_name = "Another Otieno".to_string();
    let result = store.create_user(second, now_micros()).await;
    assert_eq!(
        conflict_field(&result),
        Some("username"),
        "duplicate username should conflict on username: {result:?}"
    );
    if let Err(StoreError::Conflict { value, .. }) = &result {
        assert_eq!(
            value, "otieno",
            "the conflict should carry the taken username"
        );
    }

    let all = ok(
        store.list_users(&UserFilter::default(), page(1, 50)).await,
        "list_users",
    );
    assert_eq!(all.items.len(), 1, "the rejected user should not be stored");
    let stored = ok(store.credentials("otieno").await, "credentials").map(|found| found.user);
    assert_eq!(stored, Some(first), "the first user should be unchanged");
}

async fn user_list_filters_and_pages(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    // Created out of order to show that the list sorts by username.
    add_user(store, "driver-a", Role::Driver).await;
    add_user(store, "cust-b", Role::Customer).await;
    add_user(store, "admin-a", Role::Admin).await;
    let inactive = add_user(store, "cust-c", Role::Customer).await;
    add_user(store, "cust-a", Role::Customer).await;
    deactivate(store, inactive.id).await;

    let list = async |filter: UserFilter, request: PageRequest| {
        ok(store.list_users(&filter, request).await, "list_users")
    };

    let all = list(UserFilter::default(), page(1, 50)).await;
    assert_eq!(
        usernames(&all),
        ["admin-a", "cust-a", "cust-b", "cust-c", "driver-a"],
        "unfiltered list sorted by username"
    );
    assert!(!all.has_more, "everything fits on one page");

    let customers = UserFilter {
        role: Some(Role::Customer),
        active: None,
    };
    let page_of_customers = list(customers, page(1, 50)).await;
    assert_eq!(
        usernames(&page_of_customers),
        ["cust-a", "cust-b", "cust-c"],
        "role filter"
    );

    let inactive_users = UserFilter {
        role: None,
        active: Some(false),
    };
    let page_of_inactive = list(inactive_users, page(1, 50)).await;
    assert_eq!(
        usernames(&page_of_inactive),
        ["cust-c"],
        "active=false filter"
    );

    let active_customers = UserFilter {
        role: Some(Role::Customer),
        active: Some(true),
    };
    let page_of_active = list(active_customers, page(1, 50)).await;
    assert_eq!(
        usernames(&page_of_active),
        ["cust-a", "cust-b"],
        "role and active=true together"
    );

    let first = list(UserFilter::default(), page(1, 2)).await;
    assert_eq!(
        usernames(&first),
        ["admin-a", "cust-a"],
        "page 1 of 2 per page"
    );
    assert!(first.has_more, "page 1 of 3 should report more");
    assert_eq!(
        (first.page, first.per_page),
        (1, 2),
        "page echoes the request"
    );

    let second = list(UserFilter::default(), page(2, 2)).await;
    assert_eq!(
        usernames(&second),
        ["cust-b", "cust-c"],
        "page 2 of 2 per page"
    );
    assert!(second.has_more, "page 2 of 3 should report more");

    let third = list(UserFilter::default(), page(3, 2)).await;
    assert_eq!(usernames(&third), ["driver-a"], "page 3 of 2 per page");
    assert!(!third.has_more, "the last page should not report more");

    let beyond = list(UserFilter::default(), page(4, 2)).await;
    assert!(
        beyond.items.is_empty(),
        "a page past the end should be empty"
    );
    assert!(
        !beyond.has_more,
        "a page past the end should not report more"
    );

    let exact = list(UserFilter::default(), page(1, 5)).await;
    assert_eq!(exact.items.len(), 5, "a page exactly as long as the list");
    assert!(
        !exact.has_more,
        "an exactly full page should not report more"
    );
}

async fn user_update_changes_given_fields(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let created_at = now_micros();
    let mut request = new_user("njeri", Role::Customer);
    request.email = Some("njeri@example.co.ke".to_string());
    request.phone = Some("+254700000001".to_string());
    let original = ok(store.create_user(request, created_at).await, "create_user");

    let renamed_at = created_at + TimeDelta::microseconds(1_500_001);
    let rename = UserChanges {
        full_name: Some("Njeri Wambui".to_string()),
        ..UserChanges::default()
    };
    let renamed = ok(
        store.update_user(original.id, rename, renamed_at).await,
        "update_user",
    )
    .unwrap_or_else(|| panic!("update_user returned None for an existing user"));
    assert_eq!(renamed.full_name, "Njeri Wambui", "full name changed");
    assert_eq!(renamed.email, original.email, "email unchanged");
    assert_eq!(renamed.phone, original.phone, "phone unchanged");
    assert_eq!(renamed.role, original.role, "role unchanged");
    assert_eq!(renamed.is_active, original.is_active, "is_active unchanged");
    assert_eq!(renamed.username, original.username, "username unchanged");
    assert_eq!(renamed.created_at, created_at, "created_at unchanged");
    assert_eq!(
        renamed.updated_at, renamed_at,
        "updated_at set to the update time"
    );

    let read_back = ok(store.user(original.id).await, "user");
    assert_eq!(read_back.as_ref(), Some(&renamed), "update should persist");
    let hash = ok(store.credentials("njeri").await, "credentials").map(|found| found.password_hash);
    assert_eq!(
        hash.as_deref(),
        Some("hash-of-test-password"),
        "password hash unchanged"
    );

    let promote = UserChanges {
        role: Some(Role::Dispatcher),
        ..UserChanges::default()
    };
    let promoted = ok(
        store.update_user(original.id, promote, now_micros()).await,
        "update_user",
    )
    .unwrap_or_else(|| panic!("update_user returned None for an existing user"));
    assert_eq!(promoted.role, Role::Dispatcher, "role changed");
    assert_eq!(promoted.full_name, "Njeri Wambui", "earlier change kept");
    assert_eq!(promoted.email, original.email, "email still unchanged");

    let new_password = UserChanges {
        password_hash: Some("hash-2".to_string()),
        ..UserChanges::default()
    };
    ok(
        store
            .update_user(original.id, new_password, now_micros())
            .await,
        "update_user",
    );
    let hash = ok(store.credentials("njeri").await, "credentials").map(|found| found.password_hash);
    assert_eq!(hash.as_deref(), Some("hash-2"), "password hash changed");
}

async fn user_update_clears_email(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let mut request = new_user("amina", Role::Customer);
    request.email = Some("amina@example.co.ke".to_string());
    request.phone = Some("+254700000002".to_string());
    let original = ok(
        store.create_user(request, now_micros()).await,
        "create_user",
    );

    let clear_email = UserChanges {
        email: Some(None),
        ..UserChanges::default()
    };
    let cleared = ok(
        store
            .update_user(original.id, clear_email, now_micros())
            .await,
        "update_user",
    )
    .unwrap_or_else(|| panic!("update_user returned None for an existing user"));
    assert_eq!(cleared.email, None, "Some(None) should clear the email");
    assert_eq!(cleared.phone, original.phone, "phone should be unchanged");

    let read_back = ok(store.user(original.id).await, "user").and_then(|user| user.email);
    assert_eq!(read_back, None, "the cleared email should persist");

    let set_email = UserChanges {
        email: Some(Some("amina@example.com".to_string())),
        ..UserChanges::default()
    };
    let updated = ok(
        store
            .update_user(original.id, set_email, now_micros())
            .await,
        "update_user",
    )
    .and_then(|user| user.email);
    assert_eq!(
        updated.as_deref(),
        Some("amina@example.com"),
        "Some(Some(..)) should set the email"
    );
}

async fn unknown_user_is_none(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    add_user(store.as_ref(), "kamau", Role::Driver).await;
    let unknown = Uuid::new_v4();

    let by_id = ok(store.user(unknown).await, "user");
    assert!(by_id.is_none(), "user(unknown id) should be None");

    let credentials = ok(store.credentials("nobody").await, "credentials");
    assert!(
        credentials.is_none(),
        "credentials(unknown username) should be None"
    );

    let changes = UserChanges {
        full_name: Some("Nobody".to_string()),
        ..UserChanges::default()
    };
    let updated = ok(
        store.update_user(unknown, changes, now_micros()).await,
        "update_user",
    );
    assert!(updated.is_none(), "update_user(unknown id) should be None");
}

// ---------------------------------------------------------------------------
// Refresh tokens
// ---------------------------------------------------------------------------

async fn deactivation_rejects_refresh_token(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let user = add_user(store, "omar", Role::Driver).await;
    let token = login_token(store, user.id).await;

    deactivate(store, user.id).await;

    let (outcome, _) = rotate(store, &token).await;
    assert_ne!(
        outcome,
        RefreshOutcome::Rotated,
        "a deactivated user's token must not rotate"
    );
    // The refresh route logs Reused as a security warning, so a token that
    // was revoked but never spent should not count as reuse.
    assert_eq!(
        outcome,
        RefreshOutcome::Rejected,
        "a deactivated user's token should be Rejected, not reported as reuse"
    );
}

async fn deactivation_revocation_outlives_reactivation(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let user = add_user(store, "halima", Role::Driver).await;
    let token = login_token(store, user.id).await;

    deactivate(store, user.id).await;
    let reactivate = UserChanges {
        is_active: Some(true),
        ..UserChanges::default()
    };
    ok(
        store.update_user(user.id, reactivate, now_micros()).await,
        "update_user",
    );

    let (outcome, _) = rotate(store, &token).await;
    assert_ne!(
        outcome,
        RefreshOutcome::Rotated,
        "a token revoked by deactivation must stay revoked after reactivation"
    );

    let fresh = login_token(store, user.id).await;
    let (outcome, _) = rotate(store, &fresh).await;
    assert_eq!(
        outcome,
        RefreshOutcome::Rotated,
        "a token issued after reactivation should rotate"
    );
}

async fn password_change_revokes_refresh_tokens(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let user = add_user(store, "mwangi", Role::Dispatcher).await;
    let token = login_token(store, user.id).await;

    let new_password = UserChanges {
        password_hash: Some("hash-2".to_string()),
        ..UserChanges::default()
    };
    ok(
        store.update_user(user.id, new_password, now_micros()).await,
        "update_user",
    );

    let (outcome, _) = rotate(store, &token).await;
    assert_ne!(
        outcome,
        RefreshOutcome::Rotated,
        "a token issued before a password change must not rotate"
    );
}

async fn refresh_rotates_exactly_once(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let user = add_user(store, "wafula", Role::Customer).await;
    let first = login_token(store, user.id).await;

    let (outcome, second) = rotate(store, &first).await;
    assert_eq!(
        outcome,
        RefreshOutcome::Rotated,
        "a live token should rotate"
    );

    let (outcome, _) = rotate(store, &second).await;
    assert_eq!(
        outcome,
        RefreshOutcome::Rotated,
        "the stored successor should be live and rotate in turn"
    );
}

async fn refresh_reuse_revokes_family(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let user = add_user(store, "chebet", Role::Customer).await;
    let first = login_token(store, user.id).await;
    let other_login = login_token(store, user.id).await;

    let (outcome, second) = rotate(store, &first).await;
    assert_eq!(outcome, RefreshOutcome::Rotated, "first rotation");

    let (outcome, replacement_on_reuse) = rotate(store, &first).await;
    assert_eq!(
        outcome,
        RefreshOutcome::Reused,
        "presenting a spent token again should be Reused"
    );

    let (outcome, _) = rotate(store, &replacement_on_reuse).await;
    assert_eq!(
        outcome,
        RefreshOutcome::Rejected,
        "reuse should not store the offered successor"
    );

    let (outcome, _) = rotate(store, &other_login).await;
    assert_eq!(
        outcome,
        RefreshOutcome::Rotated,
        "reuse should revoke only its own family"
    );

    let (outcome, _) = rotate(store, &second).await;
    assert_ne!(
        outcome,
        RefreshOutcome::Rotated,
        "the token issued in place of the reused one must not rotate"
    );
    assert_eq!(
        outcome,
        RefreshOutcome::Rejected,
        "the token issued in place of the reused one should be Rejected"
    );
}

async fn expired_refresh_token_rejected(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let user = add_user(store, "akinyi", Role::Customer).await;
    let expired = refresh_token(user.id, Uuid::new_v4(), now_micros() - TimeDelta::hours(1));
    ok(
        store.insert_refresh_token(expired.clone()).await,
        "insert_refresh_token",
    );

    let (outcome, next) = rotate(store, &expired).await;
    assert_eq!(
        outcome,
        RefreshOutcome::Rejected,
        "an expired token should be Rejected"
    );

    let (outcome, _) = rotate(store, &next).await;
    assert_eq!(
        outcome,
        RefreshOutcome::Rejected,
        "rejection should not store the offered successor"
    );
}

async fn unknown_refresh_token_rejected(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let user = add_user(store, "kiprop", Role::Driver).await;
    let never_stored = refresh_token(user.id, Uuid::new_v4(), in_one_hour());

    let (outcome, _) = rotate(store, &never_stored).await;
    assert_eq!(
        outcome,
        RefreshOutcome::Rejected,
        "an unknown token should be Rejected"
    );
}

async fn refresh_expiry_exact_to_microsecond(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let user = add_user(store, "nafula", Role::Customer).await;
    let now = now_micros();

    let at_now = refresh_token(user.id, Uuid::new_v4(), now);
    let just_after = refresh_token(user.id, Uuid::new_v4(), now + TimeDelta::microseconds(1));
    for token in [&at_now, &just_after] {
        ok(
            store.insert_refresh_token(token.clone()).await,
            "insert_refresh_token",
        );
    }

    let successor = refresh_token(user.id, at_now.family_id, in_one_hour());
    let outcome = ok(
        store.rotate_refresh_token(at_now.id, successor, now).await,
        "rotate_refresh_token",
    );
    assert_eq!(
        outcome,
        RefreshOutcome::Rejected,
        "a token expiring at the presentation time should be Rejected"
    );

    let successor = refresh_token(user.id, just_after.family_id, in_one_hour());
    let outcome = ok(
        store
            .rotate_refresh_token(just_after.id, successor, now)
            .await,
        "rotate_refresh_token",
    );
    assert_eq!(
        outcome,
        RefreshOutcome::Rotated,
        "a token expiring one microsecond later should rotate"
    );
}

async fn revoke_family_stops_rotation(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let user = add_user(store, "mutua", Role::Driver).await;
    let revoked = login_token(store, user.id).await;
    let (outcome, revoked_successor) = rotate(store, &revoked).await;
    assert_eq!(
        outcome,
        RefreshOutcome::Rotated,
        "rotation before revocation"
    );
    let other_family = login_token(store, user.id).await;

    ok(
        store
            .revoke_token_family(revoked.family_id, now_micros())
            .await,
        "revoke_token_family",
    );

    let (outcome, next) = rotate(store, &revoked_successor).await;
    assert_ne!(
        outcome,
        RefreshOutcome::Rotated,
        "the live token of a revoked family must not rotate"
    );
    let (outcome, _) = rotate(store, &next).await;
    assert_eq!(
        outcome,
        RefreshOutcome::Rejected,
        "a revoked family should not gain a successor"
    );

    let (outcome, _) = rotate(store, &other_family).await;
    assert_eq!(
        outcome,
        RefreshOutcome::Rotated,
        "another family of the same user should still rotate"
    );

    let unknown_family = store
        .revoke_token_family(Uuid::new_v4(), now_micros())
        .await;
    assert!(
        unknown_family.is_ok(),
        "revoking an unknown family should succeed: {unknown_family:?}"
    );
}

// ---------------------------------------------------------------------------
// Depots
// ---------------------------------------------------------------------------

async fn depots_listed_by_name(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let nakuru = add_depot(store, "Nakuru Depot").await;
    let eldoret = add_depot(store, "Eldoret Depot").await;
    let mombasa = add_depot(store, "Mombasa Depot").await;

    assert_eq!(nakuru.name, "Nakuru Depot", "name");
    assert_eq!(nakuru.town, "Nakuru", "town");
    assert_eq!(nakuru.latitude, -0.3031, "latitude");
    assert_eq!(nakuru.longitude, 36.08, "longitude");

    let depots = ok(store.list_depots().await, "list_depots");
    let names: Vec<&str> = depots.iter().map(|depot| depot.name.as_str()).collect();
    assert_eq!(
        names,
        ["Eldoret Depot", "Mombasa Depot", "Nakuru Depot"],
        "depots sorted by name"
    );
    assert_eq!(
        depots,
        [eldoret, mombasa, nakuru],
        "listed depots should equal the created records"
    );
}

async fn duplicate_depot_name_conflicts(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let first = add_depot(store, "Kisumu Depot").await;

    let duplicate = NewDepotRecord {
        name: "Kisumu Depot".to_string(),
        town: "Kisumu".to_string(),
        latitude: -0.0917,
        longitude: 34.768,
    };
    let result = store.create_depot(duplicate, now_micros()).await;
    assert_eq!(
        conflict_field(&result),
        Some("name"),
        "duplicate depot name should conflict on name: {result:?}"
    );

    let depots = ok(store.list_depots().await, "list_depots");
    assert_eq!(depots, [first], "only the first depot should be stored");
}

// ---------------------------------------------------------------------------
// Cylinders: registration
// ---------------------------------------------------------------------------

async fn register_writes_one_history_entry(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let depot = add_depot(store, "Nakuru Depot").await;
    let request = new_cylinder("CYL-0001", Some(depot.id));
    let now = now_micros();

    let record = ok(
        store.register_cylinder(request.clone(), actor, now).await,
        "register_cylinder",
    );
    assert_eq!(record.id, request.id, "id is the requested one");
    assert_eq!(record.serial_number, "CYL-0001", "serial number");
    assert_eq!(record.brand, "Jiko Gas", "brand");
    assert_eq!(record.capacity_kg, 12.5, "capacity");
    assert_eq!(record.qr_code, "QR-CYL-0001", "QR code");
    assert_eq!(record.rfid_tag, "RFID-CYL-0001", "RFID tag");
    assert_eq!(
        record.status,
        CylinderStatus::InStock,
        "a new cylinder is IN_STOCK"
    );
    assert!(!record.is_tampered, "a new cylinder is not tampered");
    assert_eq!(record.tamper_notes, "", "no tamper notes");
    assert_eq!(
        record.manufacture_date,
        date(2022, 3, 1),
        "manufacture date"
    );
    assert_eq!(record.expiry_date, date(2032, 3, 1), "expiry date");
    assert_eq!(record.depot_id, Some(depot.id), "depot");
    assert_eq!(record.customer_id, None, "no customer");
    assert_eq!(record.driver_id, None, "no driver");
    assert_eq!(record.created_at, now, "created_at");
    assert_eq!(record.updated_at, now, "updated_at");

    let read_back = current(store, record.id).await;
    assert_eq!(
        read_back.as_ref(),
        Some(&record),
        "cylinder(id) returns the record"
    );

    let history = full_history(store, record.id).await;
    assert_eq!(history.len(), 1, "exactly one history entry: {history:?}");
    let entry = &history[0];
    assert_eq!(entry.cylinder_id, record.id, "entry cylinder");
    assert_eq!(entry.sequence, 1, "first entry has sequence 1");
    assert_eq!(entry.event_type, "REGISTERED", "event type");
    assert_eq!(entry.actor_id, Some(actor.user_id), "actor id");
    assert_eq!(entry.actor_role, Some(Role::Dispatcher), "actor role");
    assert_eq!(entry.from_status, None, "no previous status");
    assert_eq!(entry.to_status, Some(CylinderStatus::InStock), "to status");
    assert_eq!(entry.created_at, now, "entry time");
    assert_eq!(
        entry.details["serial_number"],
        json!("CYL-0001"),
        "details record the serial number"
    );
    assert_eq!(
        entry.details["depot_id"],
        json!(depot.id),
        "details record the depot"
    );
}

async fn duplicate_serial_conflicts_without_history(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let original = register(store, actor, new_cylinder("CYL-0001", None)).await;

    let mut duplicate = new_cylinder("CYL-0001", None);
    duplicate.qr_code = "QR-OTHER".to_string();
    duplicate.rfid_tag = "RFID-OTHER".to_string();
    let duplicate_id = duplicate.id;
    let result = store
        .register_cylinder(duplicate, actor, now_micros())
        .await;
    assert_eq!(
        conflict_field(&result),
        Some("serial_number"),
        "duplicate serial should conflict on serial_number: {result:?}"
    );

    let duplicate_history = full_history(store, duplicate_id).await;
    assert!(
        duplicate_history.is_empty(),
        "the rejected cylinder should have no history: {duplicate_history:?}"
    );
    let original_history = full_history(store, original.id).await;
    assert_eq!(
        sequences(&original_history),
        [1],
        "the original should keep its single entry"
    );
    let stored = current(store, duplicate_id).await;
    assert!(
        stored.is_none(),
        "the rejected cylinder should not be stored"
    );
}

async fn duplicate_codes_conflict(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    register(store, actor, new_cylinder("CYL-0001", None)).await;

    let mut same_qr = new_cylinder("CYL-0002", None);
    same_qr.qr_code = "QR-CYL-0001".to_string();
    let result = store.register_cylinder(same_qr, actor, now_micros()).await;
    assert_eq!(
        conflict_field(&result),
        Some("qr_code"),
        "duplicate QR code should conflict on qr_code: {result:?}"
    );

    let mut same_rfid = new_cylinder("CYL-0003", None);
    same_rfid.rfid_tag = "RFID-CYL-0001".to_string();
    let result = store
        .register_cylinder(same_rfid, actor, now_micros())
        .await;
    assert_eq!(
        conflict_field(&result),
        Some("rfid_tag"),
        "duplicate RFID tag should conflict on rfid_tag: {result:?}"
    );

    let all = ok(
        store
            .list_cylinders(&CylinderFilter::default(), Scope::All, page(1, 50))
            .await,
        "list_cylinders",
    );
    assert_eq!(
        serials(&all),
        ["CYL-0001"],
        "only the first cylinder is stored"
    );
}

async fn unknown_depot_is_invalid_reference(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let request = new_cylinder("CYL-0001", Some(Uuid::new_v4()));
    let id = request.id;

    let result = store.register_cylinder(request, actor, now_micros()).await;
    assert_eq!(
        invalid_reference_field(&result),
        Some("depot_id"),
        "an unknown depot should be an invalid depot_id: {result:?}"
    );
    assert!(
        current(store, id).await.is_none(),
        "no cylinder should be stored"
    );
    assert!(
        full_history(store, id).await.is_empty(),
        "no history should be written"
    );
}

// ---------------------------------------------------------------------------
// Cylinders: lookup and list
// ---------------------------------------------------------------------------

/// Four cylinders with different statuses, expiry dates, holders and
/// depots, for the filter tests. The serials sort in creation order.
struct Fleet {
    depot_a: Uuid,
    depot_b: Uuid,
    customer: Uuid,
    driver: Uuid,
    other_customer: Uuid,
    other_driver: Uuid,
    /// The reference date for the expiry filter.
    today: NaiveDate,
    /// CYL-001: IN_STOCK, depot A, not expired, unassigned.
    in_stock: Uuid,
    /// CYL-002: FILLED, depot B, not expired, with the customer.
    with_customer: Uuid,
    /// CYL-003: IN_STOCK, depot A, expired, with the driver.
    expired: Uuid,
    /// CYL-004: FILLED, no depot, expires `today`, with both.
    with_both: Uuid,
}

async fn add_fleet(store: &dyn Store, actor: Actor) -> Fleet {
    let today = date(2025, 6, 1);
    let depot_a = add_depot(store, "Depot A").await.id;
    let depot_b = add_depot(store, "Depot B").await.id;
    let customer = add_user(store, "customer", Role::Customer).await.id;
    let driver = add_user(store, "driver", Role::Driver).await.id;
    let other_customer = add_user(store, "other-customer", Role::Customer).await.id;
    let other_driver = add_user(store, "other-driver", Role::Driver).await.id;

    let in_stock = register(store, actor, new_cylinder("CYL-001", Some(depot_a)))
        .await
        .id;

    let with_customer = register(store, actor, new_cylinder("CYL-002", Some(depot_b)))
        .await
        .id;
    set_status(
        store,
        actor,
        with_customer,
        CylinderStatus::InStock,
        CylinderStatus::Filled,
    )
    .await;
    let assigned = assign(
        store,
        actor,
        assignment(with_customer, Some(Some(customer)), None),
    )
    .await;
    assert!(ok(assigned, "assign_cylinder").is_some(), "assign CYL-002");

    let mut old = new_cylinder("CYL-003", Some(depot_a));
    old.manufacture_date = date(2010, 1, 1);
    old.expiry_date = date(2020, 1, 1);
    let expired = register(store, actor, old).await.id;
    let assigned = assign(store, actor, assignment(expired, None, Some(Some(driver)))).await;
    assert!(ok(assigned, "assign_cylinder").is_some(), "assign CYL-003");

    let mut due_today = new_cylinder("CYL-004", None);
    due_today.expiry_date = today;
    let with_both = register(store, actor, due_today).await.id;
    set_status(
        store,
        actor,
        with_both,
        CylinderStatus::InStock,
        CylinderStatus::Filled,
    )
    .await;
    let both = assignment(with_both, Some(Some(customer)), Some(Some(driver)));
    let assigned = assign(store, actor, both).await;
    assert!(ok(assigned, "assign_cylinder").is_some(), "assign CYL-004");

    Fleet {
        depot_a,
        depot_b,
        customer,
        driver,
        other_customer,
        other_driver,
        today,
        in_stock,
        with_customer,
        expired,
        with_both,
    }
}

async fn list_serials(store: &dyn Store, filter: CylinderFilter, scope: Scope) -> Vec<String> {
    let listed = ok(
        store.list_cylinders(&filter, scope, page(1, 50)).await,
        "list_cylinders",
    );
    assert!(!listed.has_more, "the whole fleet fits on one page");
    listed
        .items
        .into_iter()
        .map(|cylinder| cylinder.serial_number)
        .collect()
}

async fn cylinder_lookup_honours_scope(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let fleet = add_fleet(store, actor).await;
    let found =
        async |id: Uuid, scope: Scope| ok(store.cylinder(id, scope).await, "cylinder").is_some();

    assert!(
        found(fleet.in_stock, Scope::All).await,
        "All sees an unassigned cylinder"
    );
    assert!(
        found(fleet.with_both, Scope::All).await,
        "All sees an assigned cylinder"
    );
    assert!(
        !found(Uuid::new_v4(), Scope::All).await,
        "an unknown id is None even for All"
    );

    assert!(
        found(fleet.with_customer, Scope::Customer(fleet.customer)).await,
        "the customer sees their cylinder"
    );
    assert!(
        found(fleet.with_both, Scope::Customer(fleet.customer)).await,
        "the customer sees a cylinder they share with a driver"
    );
    assert!(
        !found(fleet.in_stock, Scope::Customer(fleet.customer)).await,
        "the customer does not see an unassigned cylinder"
    );
    assert!(
        !found(fleet.expired, Scope::Customer(fleet.customer)).await,
        "the customer does not see a cylinder only a driver holds"
    );
    assert!(
        !found(fleet.with_customer, Scope::Customer(fleet.other_customer)).await,
        "another customer does not see the cylinder"
    );
    assert!(
        !found(fleet.with_both, Scope::Customer(fleet.driver)).await,
        "a driver id in a customer scope sees nothing"
    );

    assert!(
        found(fleet.expired, Scope::Driver(fleet.driver)).await,
        "the driver sees a cylinder in their custody"
    );
    assert!(
        found(fleet.with_both, Scope::Driver(fleet.driver)).await,
        "the driver sees a cylinder they share with a customer"
    );
    assert!(
        !found(fleet.with_customer, Scope::Driver(fleet.driver)).await,
        "the driver does not see a cylinder only a customer holds"
    );
    assert!(
        !found(fleet.expired, Scope::Driver(fleet.other_driver)).await,
        "another driver does not see the cylinder"
    );
    assert!(
        !found(fleet.with_both, Scope::Driver(fleet.customer)).await,
        "a customer id in a driver scope sees nothing"
    );
}

async fn cylinder_list_filters_status_tamper(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    add_fleet(store, actor).await;

    let all = list_serials(store, CylinderFilter::default(), Scope::All).await;
    assert_eq!(
        all,
        ["CYL-001", "CYL-002", "CYL-003", "CYL-004"],
        "no filter lists every cylinder by serial"
    );

    let filled = CylinderFilter {
        status: Some(CylinderStatus::Filled),
        ..CylinderFilter::default()
    };
    let listed = list_serials(store, filled, Scope::All).await;
    assert_eq!(listed, ["CYL-002", "CYL-004"], "status=FILLED");

    let in_stock = CylinderFilter {
        status: Some(CylinderStatus::InStock),
        ..CylinderFilter::default()
    };
    let listed = list_serials(store, in_stock, Scope::All).await;
    assert_eq!(listed, ["CYL-001", "CYL-003"], "status=IN_STOCK");

    let lost = CylinderFilter {
        status: Some(CylinderStatus::Lost),
        ..CylinderFilter::default()
    };
    let listed = list_serials(store, lost, Scope::All).await;
    assert!(listed.is_empty(), "status=LOST matches nothing: {listed:?}");

    // No store method sets the tamper flag yet, so every cylinder is
    // untampered.
    let tampered = CylinderFilter {
        tampered: Some(true),
        ..CylinderFilter::default()
    };
    let listed = list_serials(store, tampered, Scope::All).await;
    assert!(
        listed.is_empty(),
        "tampered=true matches nothing: {listed:?}"
    );

    let untampered = CylinderFilter {
        tampered: Some(false),
        ..CylinderFilter::default()
    };
    let listed = list_serials(store, untampered, Scope::All).await;
    assert_eq!(listed, all, "tampered=false matches every cylinder");
}

async fn cylinder_list_filters_expiry(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let fleet = add_fleet(store, actor).await;

    let expired = CylinderFilter {
        expired: Some(true),
        today: Some(fleet.today),
        ..CylinderFilter::default()
    };
    let listed = list_serials(store, expired, Scope::All).await;
    assert_eq!(listed, ["CYL-003"], "expired=true lists dates before today");

    let current_ones = CylinderFilter {
        expired: Some(false),
        today: Some(fleet.today),
        ..CylinderFilter::default()
    };
    let listed = list_serials(store, current_ones, Scope::All).await;
    assert_eq!(
        listed,
        ["CYL-001", "CYL-002", "CYL-004"],
        "expired=false includes a cylinder that expires today"
    );

    let next_day = CylinderFilter {
        expired: Some(true),
        today: fleet.today.succ_opt(),
        ..CylinderFilter::default()
    };
    let listed = list_serials(store, next_day, Scope::All).await;
    assert_eq!(
        listed,
        ["CYL-003", "CYL-004"],
        "a day later the cylinder due today is expired"
    );
}

async fn cylinder_list_filters_holders_depot(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let fleet = add_fleet(store, actor).await;

    let by_customer = CylinderFilter {
        customer_id: Some(fleet.customer),
        ..CylinderFilter::default()
    };
    let listed = list_serials(store, by_customer, Scope::All).await;
    assert_eq!(listed, ["CYL-002", "CYL-004"], "customer_id filter");

    let by_driver = CylinderFilter {
        driver_id: Some(fleet.driver),
        ..CylinderFilter::default()
    };
    let listed = list_serials(store, by_driver, Scope::All).await;
    assert_eq!(listed, ["CYL-003", "CYL-004"], "driver_id filter");

    let by_depot = CylinderFilter {
        depot_id: Some(fleet.depot_a),
        ..CylinderFilter::default()
    };
    let listed = list_serials(store, by_depot, Scope::All).await;
    assert_eq!(listed, ["CYL-001", "CYL-003"], "depot_id filter");

    let combined = CylinderFilter {
        status: Some(CylinderStatus::Filled),
        customer_id: Some(fleet.customer),
        depot_id: Some(fleet.depot_b),
        ..CylinderFilter::default()
    };
    let listed = list_serials(store, combined, Scope::All).await;
    assert_eq!(listed, ["CYL-002"], "filters combine with AND");

    let listed = list_serials(
        store,
        CylinderFilter::default(),
        Scope::Customer(fleet.customer),
    )
    .await;
    assert_eq!(listed, ["CYL-002", "CYL-004"], "customer scope");

    let filled = CylinderFilter {
        status: Some(CylinderStatus::Filled),
        ..CylinderFilter::default()
    };
    let listed = list_serials(store, filled, Scope::Driver(fleet.driver)).await;
    assert_eq!(listed, ["CYL-004"], "driver scope combines with a filter");

    let other_customer = CylinderFilter {
        customer_id: Some(fleet.other_customer),
        ..CylinderFilter::default()
    };
    let listed = list_serials(store, other_customer, Scope::Driver(fleet.driver)).await;
    assert!(
        listed.is_empty(),
        "a filter cannot widen the scope: {listed:?}"
    );

    let listed = list_serials(
        store,
        CylinderFilter::default(),
        Scope::Driver(fleet.other_driver),
    )
    .await;
    assert!(
        listed.is_empty(),
        "a driver with no cylinders sees none: {listed:?}"
    );
}

async fn cylinder_list_pages(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    add_fleet(store, actor).await;
    let list = async |request: PageRequest| {
        ok(
            store
                .list_cylinders(&CylinderFilter::default(), Scope::All, request)
                .await,
            "list_cylinders",
        )
    };

    let first = list(page(1, 3)).await;
    assert_eq!(
        serials(&first),
        ["CYL-001", "CYL-002", "CYL-003"],
        "page 1 of 3 per page"
    );
    assert!(first.has_more, "page 1 should report more");
    assert_eq!(
        (first.page, first.per_page),
        (1, 3),
        "page echoes the request"
    );

    let second = list(page(2, 3)).await;
    assert_eq!(serials(&second), ["CYL-004"], "page 2 of 3 per page");
    assert!(!second.has_more, "the last page should not report more");

    let exact = list(page(1, 4)).await;
    assert_eq!(exact.items.len(), 4, "a page exactly as long as the list");
    assert!(
        !exact.has_more,
        "an exactly full page should not report more"
    );

    let middle = list(page(2, 1)).await;
    assert_eq!(serials(&middle), ["CYL-002"], "page 2 of 1 per page");
    assert!(middle.has_more, "a middle page should report more");

    let beyond = list(page(3, 3)).await;
    assert!(
        beyond.items.is_empty(),
        "a page past the end should be empty"
    );
    assert!(
        !beyond.has_more,
        "a page past the end should not report more"
    );
}

// ---------------------------------------------------------------------------
// Cylinders: status changes
// ---------------------------------------------------------------------------

async fn status_change_appends_history(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let registered = register(store, actor, new_cylinder("CYL-0001", None)).await;
    let changed_at = registered.created_at + TimeDelta::microseconds(2_000_003);

    let change = StatusChange {
        cylinder_id: registered.id,
        expected: CylinderStatus::InStock,
        to: CylinderStatus::Filled,
        notes: "filled at Nakuru".to_string(),
    };
    let outcome = ok(
        store.change_status(change, actor, changed_at).await,
        "change_status",
    );
    let record = match outcome {
        StatusChangeOutcome::Changed(record) => record,
        other => panic!("expected Changed, got {other:?}"),
    };
    assert_eq!(record.status, CylinderStatus::Filled, "returned status");
    assert_eq!(
        record.updated_at, changed_at,
        "updated_at set to the change time"
    );
    assert_eq!(
        record.created_at, registered.created_at,
        "created_at unchanged"
    );

    let stored = current(store, registered.id).await;
    assert_eq!(stored.as_ref(), Some(&record), "the change should persist");

    let history = full_history(store, registered.id).await;
    assert_eq!(sequences(&history), [2, 1], "two entries, newest first");
    let entry = &history[0];
    assert_eq!(entry.event_type, "STATUS_CHANGED", "event type");
    assert_eq!(
        entry.from_status,
        Some(CylinderStatus::InStock),
        "from status"
    );
    assert_eq!(entry.to_status, Some(CylinderStatus::Filled), "to status");
    assert_eq!(entry.notes, "filled at Nakuru", "notes");
    assert_eq!(entry.actor_id, Some(actor.user_id), "actor id");
    assert_eq!(entry.actor_role, Some(actor.role), "actor role");
    assert_eq!(entry.created_at, changed_at, "entry time");
}

async fn stale_status_change_writes_nothing(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let registered = register(store, actor, new_cylinder("CYL-0001", None)).await;
    let filled = set_status(
        store,
        actor,
        registered.id,
        CylinderStatus::InStock,
        CylinderStatus::Filled,
    )
    .await;

    let change = StatusChange {
        cylinder_id: registered.id,
        expected: CylinderStatus::InStock,
        to: CylinderStatus::Maintenance,
        notes: "based on an old read".to_string(),
    };
    let outcome = ok(
        store.change_status(change, actor, now_micros()).await,
        "change_status",
    );
    let reported = match outcome {
        StatusChangeOutcome::Stale(record) => record,
        other => panic!("expected Stale, got {other:?}"),
    };
    assert_eq!(reported, filled, "Stale should carry the current record");

    let stored = current(store, registered.id).await;
    assert_eq!(
        stored.as_ref(),
        Some(&filled),
        "the cylinder should be unchanged"
    );
    let history = full_history(store, registered.id).await;
    assert_eq!(
        sequences(&history),
        [2, 1],
        "no history entry for a stale change"
    );
}

async fn status_change_unknown_cylinder(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let unknown = Uuid::new_v4();

    let change = StatusChange {
        cylinder_id: unknown,
        expected: CylinderStatus::InStock,
        to: CylinderStatus::Filled,
        notes: String::new(),
    };
    let outcome = ok(
        store.change_status(change, actor, now_micros()).await,
        "change_status",
    );
    assert!(
        matches!(outcome, StatusChangeOutcome::NotFound),
        "an unknown cylinder should be NotFound, got {outcome:?}"
    );
    assert!(
        full_history(store, unknown).await.is_empty(),
        "no history for an unknown cylinder"
    );
}

// ---------------------------------------------------------------------------
// Cylinders: assignment
// ---------------------------------------------------------------------------

async fn assignment_sets_and_clears_custody(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let customer = add_user(store, "amina", Role::Customer).await;
    let driver = add_user(store, "baraka", Role::Driver).await;
    let registered = register(store, actor, new_cylinder("CYL-0001", None)).await;
    let assigned_at = now_micros();

    let mut both = assignment(
        registered.id,
        Some(Some(customer.id)),
        Some(Some(driver.id)),
    );
    both.notes = "delivery run 12".to_string();
    let record = ok(
        store.assign_cylinder(both, actor, assigned_at).await,
        "assign_cylinder",
    )
    .unwrap_or_else(|| panic!("assign_cylinder returned None for an existing cylinder"));
    assert_eq!(record.customer_id, Some(customer.id), "customer set");
    assert_eq!(record.driver_id, Some(driver.id), "driver set");
    assert_eq!(
        record.status, registered.status,
        "status unchanged by assignment"
    );
    assert_eq!(
        record.updated_at, assigned_at,
        "updated_at set to the assignment time"
    );
    let stored = current(store, registered.id).await;
    assert_eq!(
        stored.as_ref(),
        Some(&record),
        "the assignment should persist"
    );

    let history = full_history(store, registered.id).await;
    assert_eq!(
        sequences(&history),
        [2, 1],
        "one ASSIGNED entry after REGISTERED"
    );
    let entry = &history[0];
    assert_eq!(entry.event_type, "ASSIGNED", "event type");
    assert_eq!(entry.notes, "delivery run 12", "notes");
    assert_eq!(entry.from_status, None, "assignment has no from status");
    assert_eq!(entry.to_status, None, "assignment has no to status");
    assert_eq!(
        entry.details["customer_id"],
        json!(customer.id),
        "details customer"
    );
    assert_eq!(
        entry.details["driver_id"],
        json!(driver.id),
        "details driver"
    );

    let clear_customer = assignment(registered.id, Some(None), None);
    let record = ok(
        assign(store, actor, clear_customer).await,
        "assign_cylinder",
    )
    .unwrap_or_else(|| panic!("assign_cylinder returned None for an existing cylinder"));
    assert_eq!(record.customer_id, None, "Some(None) clears the customer");
    assert_eq!(record.driver_id, Some(driver.id), "None leaves the driver");

    let clear_driver = assignment(registered.id, None, Some(None));
    let record = ok(assign(store, actor, clear_driver).await, "assign_cylinder")
        .unwrap_or_else(|| panic!("assign_cylinder returned None for an existing cylinder"));
    assert_eq!(record.driver_id, None, "Some(None) clears the driver");
    let stored = current(store, registered.id).await;
    assert_eq!(stored.as_ref(), Some(&record), "clearing should persist");

    let history = full_history(store, registered.id).await;
    assert_eq!(
        sequences(&history),
        [4, 3, 2, 1],
        "each assignment is recorded"
    );
    assert_eq!(
        history[1].details["customer_id"],
        json!(null),
        "details record the cleared customer"
    );
}

/// Asserts that a rejected assignment changed neither the cylinder nor
/// its history.
async fn assert_unchanged(store: &dyn Store, before: &CylinderRecord, entries: usize, case: &str) {
    let after = current(store, before.id).await;
    assert_eq!(
        after.as_ref(),
        Some(before),
        "{case}: the cylinder should be unchanged"
    );
    let history = full_history(store, before.id).await;
    assert_eq!(
        history.len(),
        entries,
        "{case}: no history entry should be added"
    );
}

async fn assignment_rejects_wrong_role(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let customer = add_user(store, "amina", Role::Customer).await;
    let driver = add_user(store, "baraka", Role::Driver).await;
    let admin = add_user(store, "admin", Role::Admin).await;
    let before = register(store, actor, new_cylinder("CYL-0001", None)).await;

    let driver_as_customer = assignment(before.id, Some(Some(driver.id)), None);
    let result = assign(store, actor, driver_as_customer).await;
    assert_eq!(
        invalid_reference_field(&result),
        Some("customer_id"),
        "a driver as customer should be an invalid customer_id: {result:?}"
    );
    assert_unchanged(store, &before, 1, "driver as customer").await;

    let customer_as_driver = assignment(before.id, None, Some(Some(customer.id)));
    let result = assign(store, actor, customer_as_driver).await;
    assert_eq!(
        invalid_reference_field(&result),
        Some("driver_id"),
        "a customer as driver should be an invalid driver_id: {result:?}"
    );
    assert_unchanged(store, &before, 1, "customer as driver").await;

    let admin_as_driver = assignment(before.id, None, Some(Some(admin.id)));
    let result = assign(store, actor, admin_as_driver).await;
    assert_eq!(
        invalid_reference_field(&result),
        Some("driver_id"),
        "an admin as driver should be an invalid driver_id: {result:?}"
    );
    assert_unchanged(store, &before, 1, "admin as driver").await;

    // The valid customer must not be stored when the driver is rejected.
    let half_valid = assignment(before.id, Some(Some(customer.id)), Some(Some(customer.id)));
    let result = assign(store, actor, half_valid).await;
    assert_eq!(
        invalid_reference_field(&result),
        Some("driver_id"),
        "a customer as driver should be an invalid driver_id: {result:?}"
    );
    assert_unchanged(store, &before, 1, "valid customer with invalid driver").await;
}

async fn assignment_rejects_inactive_user(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let customer = add_user(store, "zawadi", Role::Customer).await;
    let driver = add_user(store, "juma", Role::Driver).await;
    deactivate(store, customer.id).await;
    deactivate(store, driver.id).await;
    let before = register(store, actor, new_cylinder("CYL-0001", None)).await;

    let inactive_customer = assignment(before.id, Some(Some(customer.id)), None);
    let result = assign(store, actor, inactive_customer).await;
    assert_eq!(
        invalid_reference_field(&result),
        Some("customer_id"),
        "an inactive customer should be an invalid customer_id: {result:?}"
    );
    assert_unchanged(store, &before, 1, "inactive customer").await;

    let inactive_driver = assignment(before.id, None, Some(Some(driver.id)));
    let result = assign(store, actor, inactive_driver).await;
    assert_eq!(
        invalid_reference_field(&result),
        Some("driver_id"),
        "an inactive driver should be an invalid driver_id: {result:?}"
    );
    assert_unchanged(store, &before, 1, "inactive driver").await;
}

async fn assignment_rejects_unknown_user(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let before = register(store, actor, new_cylinder("CYL-0001", None)).await;

    let unknown_customer = assignment(before.id, Some(Some(Uuid::new_v4())), None);
    let result = assign(store, actor, unknown_customer).await;
    assert_eq!(
        invalid_reference_field(&result),
        Some("customer_id"),
        "an unknown customer should be an invalid customer_id: {result:?}"
    );
    assert_unchanged(store, &before, 1, "unknown customer").await;

    let unknown_driver = assignment(before.id, None, Some(Some(Uuid::new_v4())));
    let result = assign(store, actor, unknown_driver).await;
    assert_eq!(
        invalid_reference_field(&result),
        Some("driver_id"),
        "an unknown driver should be an invalid driver_id: {result:?}"
    );
    assert_unchanged(store, &before, 1, "unknown driver").await;
}

async fn assignment_unknown_cylinder_is_none(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let customer = add_user(store, "amina", Role::Customer).await;
    let unknown = Uuid::new_v4();

    let result = assign(
        store,
        actor,
        assignment(unknown, Some(Some(customer.id)), None),
    )
    .await;
    let record = ok(result, "assign_cylinder");
    assert!(record.is_none(), "an unknown cylinder should return None");
    assert!(
        full_history(store, unknown).await.is_empty(),
        "no history for an unknown cylinder"
    );
}

// ---------------------------------------------------------------------------
// History and timestamps
// ---------------------------------------------------------------------------

async fn history_newest_first_and_paged(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    let id = register(store, actor, new_cylinder("CYL-0001", None))
        .await
        .id;
    let lifecycle = [
        CylinderStatus::InStock,
        CylinderStatus::Filled,
        CylinderStatus::InTransit,
        CylinderStatus::Delivered,
        CylinderStatus::Returned,
    ];
    for step in lifecycle.windows(2) {
        set_status(store, actor, id, step[0], step[1]).await;
    }
    let other = register(store, actor, new_cylinder("CYL-0002", None))
        .await
        .id;

    let history = full_history(store, id).await;
    assert_eq!(
        sequences(&history),
        [5, 4, 3, 2, 1],
        "sequences newest first"
    );
    assert!(
        history.iter().all(|entry| entry.cylinder_id == id),
        "history should hold only this cylinder's entries"
    );
    assert_eq!(history[4].event_type, "REGISTERED", "oldest entry");
    assert_eq!(
        history[0].to_status,
        Some(CylinderStatus::Returned),
        "newest entry is the last change"
    );
    assert_eq!(
        history[1].from_status,
        Some(CylinderStatus::InTransit),
        "entries keep their own from status"
    );

    let other_history = full_history(store, other).await;
    assert_eq!(
        sequences(&other_history),
        [1],
        "each cylinder numbers its history from 1"
    );

    let paged = async |request: PageRequest| {
        ok(
            store.cylinder_history(id, request).await,
            "cylinder_history",
        )
    };
    let first = paged(page(1, 2)).await;
    assert_eq!(sequences(&first.items), [5, 4], "page 1 of 2 per page");
    assert!(first.has_more, "page 1 should report more");

    let second = paged(page(2, 2)).await;
    assert_eq!(sequences(&second.items), [3, 2], "page 2 of 2 per page");
    assert!(second.has_more, "page 2 should report more");

    let third = paged(page(3, 2)).await;
    assert_eq!(sequences(&third.items), [1], "page 3 of 2 per page");
    assert!(!third.has_more, "the last page should not report more");

    let exact = paged(page(1, 5)).await;
    assert!(
        !exact.has_more,
        "an exactly full page should not report more"
    );

    let unknown = ok(
        store.cylinder_history(Uuid::new_v4(), page(1, 50)).await,
        "cylinder_history",
    );
    assert!(
        unknown.items.is_empty(),
        "an unknown cylinder has no history"
    );
    assert!(!unknown.has_more, "an empty history should not report more");
}

async fn timestamps_round_trip_microseconds(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let store = store.as_ref();
    let actor = add_staff_actor(store).await;
    // Sub-second values with and without trailing zeros, because sqlx 0.9
    // writes SQLite timestamps as RFC 3339 text with 0, 3, 6 or 9
    // fractional digits.
    let samples = [
        now_micros(),
        DateTime::from_timestamp_micros(1_709_251_199_123_456)
            .unwrap_or_else(|| unreachable!("2024-02-29T23:59:59.123456Z is in range")),
        DateTime::from_timestamp_micros(1_709_251_199_100_000)
            .unwrap_or_else(|| unreachable!("2024-02-29T23:59:59.100Z is in range")),
        DateTime::from_timestamp_micros(1_709_251_199_000_001)
            .unwrap_or_else(|| unreachable!("2024-02-29T23:59:59.000001Z is in range")),
    ];

    for (index, moment) in samples.into_iter().enumerate() {
        let username = format!("user-{index}");
        let created = ok(
            store
                .create_user(new_user(&username, Role::Customer), moment)
                .await,
            "create_user",
        );
        let stored = ok(store.user(created.id).await, "user").map(|user| user.created_at);
        assert_eq!(
            stored,
            Some(moment),
            "user created_at round trip for {moment}"
        );

        let depot = NewDepotRecord {
            name: format!("Depot {index}"),
            town: "Thika".to_string(),
            latitude: -1.0333,
            longitude: 37.0693,
        };
        let depot_id = ok(store.create_depot(depot, moment).await, "create_depot").id;
        let depots = ok(store.list_depots().await, "list_depots");
        let stored = depots
            .iter()
            .find(|depot| depot.id == depot_id)
            .map(|depot| depot.created_at);
        assert_eq!(
            stored,
            Some(moment),
            "depot created_at round trip for {moment}"
        );

        let cylinder = new_cylinder(&format!("CYL-{index}"), Some(depot_id));
        let id = ok(
            store.register_cylinder(cylinder, actor, moment).await,
            "register_cylinder",
        )
        .id;
        let stored = current(store, id).await;
        assert_eq!(
            stored.as_ref().map(|cylinder| cylinder.created_at),
            Some(moment),
            "cylinder created_at round trip for {moment}"
        );
        assert_eq!(
            stored.as_ref().map(|cylinder| cylinder.updated_at),
            Some(moment),
            "cylinder updated_at round trip for {moment}"
        );
        let history = full_history(store, id).await;
        assert_eq!(
            history.first().map(|entry| entry.created_at),
            Some(moment),
            "history created_at round trip for {moment}"
        );
    }
}
