//! Scanning through the API: every verdict, code and field validation,
//! idempotent retries, the two cloning rules judged in event-time order,
//! the scan auth token, and what each role may see of a scan.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use cyltrack::domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Backend, TestApp, count_items, cylinder_body, error_of, on_both_backends, sign_access_token,
};

on_both_backends!(
    valid_scan_issues_token,
    unknown_code_fails,
    flagged_cylinder_scans_tampered,
    expired_cylinder_scans_expired,
    reissued_codes_are_revoked,
    retired_cylinder_is_revoked,
    scanner_input_is_normalised,
    invalid_code_records_nothing,
    invalid_fields_are_named,
    zero_zero_is_no_location,
    retry_returns_first_response,
    sixth_rapid_scan_flags,
    late_burst_after_long_history_flags,
    rebuilt_memory_judges_history,
    impossible_journey_flags,
    plausible_journeys_pass,
    shuffled_batch_raises_nothing,
    customer_view_hides_fields,
    secret_never_in_responses,
    verify_token_rejects_forgeries,
    scan_list_respects_viewer,
    concurrent_retries_record_once,
    concurrent_scans_judged_serially,
    deactivated_scanner_records_nothing,
    changed_role_token_records_nothing,
    token_without_role_scans,
);

/// Latitude and longitude in degrees.
type Place = (f64, f64);

const NAIROBI: Place = (-1.2864, 36.8172);
const MOMBASA: Place = (-4.0435, 39.6682);
const THIKA: Place = (-1.0333, 37.0693);
/// About 76 km north-west of Nairobi.
const NAIVASHA: Place = (-0.7167, 36.4333);
const MURANGA: Place = (-0.7210, 37.1526);
const NYERI: Place = (-0.4201, 36.9476);

const SCANS: &str = "/api/v1/scans";
const VERIFY_TOKEN: &str = "/api/v1/scans/verify-token";

async fn staff(app: &TestApp) -> String {
    app.user_with_token("dispatcher", Role::Dispatcher).await.1
}

fn text_of(body: &Value, key: &str) -> String {
    body[key].as_str().unwrap_or_default().to_string()
}

/// Formats the time `seconds` before now as RFC 3339.
fn seconds_ago(seconds: i64) -> String {
    (Utc::now() - Duration::seconds(seconds)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn minutes_ago(minutes: i64) -> String {
    seconds_ago(minutes * 60)
}

fn parse_time(body: &Value, key: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(body[key].as_str()?)
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

fn qr_scan(cylinder: &Value) -> Value {
    json!({"code": cylinder["qr_code"], "scan_type": "QR"})
}

fn rfid_scan(cylinder: &Value) -> Value {
    json!({"code": cylinder["rfid_tag"], "scan_type": "RFID"})
}

/// Builds a QR scan request of `cylinder` at `place`, with a 15 m fix, at
/// `scanned_at`.
fn located_scan(cylinder: &Value, place: Place, scanned_at: &str) -> Value {
    json!({
        "code": cylinder["qr_code"],
        "scan_type": "QR",
        "latitude": place.0,
        "longitude": place.1,
        "accuracy_m": 15.0,
        "scanned_at": scanned_at,
    })
}

/// Posts a scan and asserts that it was recorded (201).
async fn scan_recorded(app: &TestApp, token: &str, request: Value) -> Value {
    let (status, body) = app.post(SCANS, token, request.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{request}: {body}");
    body
}

fn items(body: &Value) -> Vec<Value> {
    body["items"].as_array().cloned().unwrap_or_default()
}

/// Lists the cylinder's scans as the holder of `token` may see them,
/// asserting a 200.
async fn scan_items(app: &TestApp, token: &str, cylinder_id: &str) -> Vec<Value> {
    let path = format!("/api/v1/cylinders/{cylinder_id}/scans?per_page=200");
    let (status, body) = app.get(&path, token).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    items(&body)
}

/// Lists the event types of the cylinder's history, newest first.
async fn history_events(app: &TestApp, token: &str, cylinder_id: &str) -> Vec<String> {
    let path = format!("/api/v1/cylinders/{cylinder_id}/history?per_page=200");
    let (status, body) = app.get(&path, token).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    items(&body)
        .iter()
        .map(|item| text_of(item, "event_type"))
        .collect()
}

async fn get_cylinder(app: &TestApp, token: &str, cylinder_id: &str) -> Value {
    let path = format!("/api/v1/cylinders/{cylinder_id}");
    let (status, body) = app.get(&path, token).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

async fn set_tamper(
    app: &TestApp,
    token: &str,
    cylinder_id: &str,
    flag: bool,
) -> (StatusCode, Value) {
    app.post(
        &format!("/api/v1/cylinders/{cylinder_id}/tamper"),
        token,
        json!({"is_tampered": flag, "notes": "label inspected at the depot"}),
    )
    .await
}

async fn reissue(app: &TestApp, token: &str, cylinder_id: &str) -> Value {
    let path = format!("/api/v1/cylinders/{cylinder_id}/reissue-codes");
    let (status, body) = app
        .post(
            &path,
            token,
            json!({"reason": "label copied at a rogue refiller"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

async fn valid_scan_issues_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "VT-0001").await;
    let id = text_of(&cylinder, "id");

    let body = scan_recorded(&app, &token, qr_scan(&cylinder)).await;
    assert_eq!(body["result"], "VALID", "{body}");
    assert_eq!(body["is_suspicious"], false, "{body}");
    assert!(body["suspicious_reason"].is_null(), "{body}");
    assert_eq!(body["cylinder"]["id"], cylinder["id"], "{body}");
    assert!(
        Uuid::parse_str(&text_of(&body, "scan_id")).is_ok(),
        "{body}"
    );
    let auth_token = text_of(&body, "auth_token");
    assert!(!auth_token.is_empty(), "{body}");
    let expires_at = parse_time(&body, "auth_token_expires_at");
    assert!(expires_at.is_some_and(|time| time > Utc::now()), "{body}");

    // Another user, such as the customer taking delivery, checks the token.
    let driver = app.user_with_token("token.driver", Role::Driver).await.1;
    let (status, verified) = app
        .post(VERIFY_TOKEN, &driver, json!({"token": auth_token}))
        .await;
    assert_eq!(status, StatusCode::OK, "{verified}");
    assert_eq!(verified["valid"], true, "{verified}");
    assert_eq!(verified["scan_id"], body["scan_id"], "{verified}");
    assert_eq!(verified["cylinder_id"], cylinder["id"], "{verified}");
    assert_eq!(
        parse_time(&verified, "expires_at"),
        expires_at,
        "{verified} vs {body}"
    );

    let events = history_events(&app, &token, &id).await;
    assert_eq!(events, ["SCANNED", "REGISTERED"], "{events:?}");
    app.stop().await;
}

async fn unknown_code_fails(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    app.register_cylinder(&token, "UK-0001").await;

    let unknown = [
        json!({"code": "CYL-0123456789ABCDEFGHJKMNPQRS", "scan_type": "QR"}),
        json!({"code": "00112233445566778899AABB", "scan_type": "RFID"}),
    ];
    for request in unknown {
        let body = scan_recorded(&app, &token, request.clone()).await;
        assert_eq!(body["result"], "FAILED", "{request}: {body}");
        assert!(body["cylinder"].is_null(), "{request}: {body}");
        assert!(body.get("auth_token").is_none(), "{request}: {body}");
        assert_eq!(body["is_suspicious"], false, "{request}: {body}");
        assert!(
            text_of(&body, "message").contains("counterfeit"),
            "{request}: {body}"
        );
    }
    app.stop().await;
}

async fn flagged_cylinder_scans_tampered(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "TF-0001").await;
    let id = text_of(&cylinder, "id");

    let (status, flagged) = set_tamper(&app, &token, &id, true).await;
    assert_eq!(status, StatusCode::OK, "{flagged}");
    assert_eq!(flagged["is_tampered"], true, "{flagged}");
    assert_eq!(
        flagged["tamper_notes"], "label inspected at the depot",
        "{flagged}"
    );
    let (status, again) = set_tamper(&app, &token, &id, true).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(error_of(&again).0, "tamper_flag_unchanged", "{again}");
    let (status, body) = app
        .post(
            &format!("/api/v1/cylinders/{id}/tamper"),
            &token,
            json!({"is_tampered": false, "notes": "  "}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_of(&body).1, "notes", "{body}");

    for request in [qr_scan(&cylinder), rfid_scan(&cylinder)] {
        let body = scan_recorded(&app, &token, request.clone()).await;
        assert_eq!(body["result"], "TAMPERED", "{request}: {body}");
        assert_eq!(body["is_suspicious"], false, "{request}: {body}");
        assert!(body.get("auth_token").is_none(), "{request}: {body}");
        assert_eq!(body["cylinder"]["is_tampered"], true, "{request}: {body}");
    }

    let events = history_events(&app, &token, &id).await;
    assert_eq!(
        events,
        ["SCANNED", "SCANNED", "TAMPER_FLAGGED", "REGISTERED"],
        "{events:?}"
    );
    app.stop().await;
}

async fn expired_cylinder_scans_expired(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let mut request = cylinder_body("EX-0001");
    request["manufacture_date"] = json!("2010-01-01");
    request["expiry_date"] = json!("2020-01-01");
    let (status, cylinder) = app.post("/api/v1/cylinders", &token, request).await;
    assert_eq!(status, StatusCode::CREATED, "{cylinder}");

    let body = scan_recorded(&app, &token, qr_scan(&cylinder)).await;
    assert_eq!(body["result"], "EXPIRED", "{body}");
    assert!(body.get("auth_token").is_none(), "{body}");
    assert_eq!(body["cylinder"]["is_expired"], true, "{body}");
    assert!(text_of(&body, "message").contains("2020-01-01"), "{body}");
    app.stop().await;
}

async fn reissued_codes_are_revoked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let old = app.register_cylinder(&token, "RV-0001").await;
    let id = text_of(&old, "id");

    let new = reissue(&app, &token, &id).await;
    assert_ne!(new["qr_code"], old["qr_code"], "{new}");
    assert_ne!(new["rfid_tag"], old["rfid_tag"], "{new}");
    assert!(text_of(&new, "qr_code").starts_with("CYL-"), "{new}");

    for request in [qr_scan(&old), rfid_scan(&old)] {
        let body = scan_recorded(&app, &token, request.clone()).await;
        assert_eq!(body["result"], "REVOKED", "{request}: {body}");
        assert_eq!(body["cylinder"]["id"], old["id"], "{request}: {body}");
        assert!(body.get("auth_token").is_none(), "{request}: {body}");
    }
    for request in [qr_scan(&new), rfid_scan(&new)] {
        let body = scan_recorded(&app, &token, request.clone()).await;
        assert_eq!(body["result"], "VALID", "{request}: {body}");
        assert_eq!(body["cylinder"]["id"], old["id"], "{request}: {body}");
        assert!(body.get("auth_token").is_some(), "{request}: {body}");
    }

    let events = history_events(&app, &token, &id).await;
    assert_eq!(events.len(), 6, "{events:?}");
    assert_eq!(events[4], "CODES_REISSUED", "{events:?}");
    app.stop().await;
}

async fn retired_cylinder_is_revoked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "RT-0001").await;
    let id = text_of(&cylinder, "id");
    let (status, retired) = app
        .patch(
            &format!("/api/v1/cylinders/{id}/status"),
            &token,
            json!({"status": "RETIRED"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{retired}");

    for request in [qr_scan(&cylinder), rfid_scan(&cylinder)] {
        let body = scan_recorded(&app, &token, request.clone()).await;
        assert_eq!(body["result"], "REVOKED", "{request}: {body}");
        assert_eq!(body["cylinder"]["status"], "RETIRED", "{request}: {body}");
        assert!(body.get("auth_token").is_none(), "{request}: {body}");
    }

    // A retired cylinder gets no new labels either.
    let (status, body) = app
        .post(
            &format!("/api/v1/cylinders/{id}/reissue-codes"),
            &token,
            json!({"reason": "worn label"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    app.stop().await;
}

async fn scanner_input_is_normalised(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "NM-0001").await;
    let qr = text_of(&cylinder, "qr_code");
    let rfid = text_of(&cylinder, "rfid_tag");

    let requests = [
        json!({"code": format!(" \t{}\r\n", rfid.to_ascii_lowercase()), "scan_type": "RFID"}),
        json!({"code": format!("{qr}\r\n"), "scan_type": "QR"}),
    ];
    for request in requests {
        let body = scan_recorded(&app, &token, request.clone()).await;
        assert_eq!(body["result"], "VALID", "{request}: {body}");
        assert_eq!(body["cylinder"]["id"], cylinder["id"], "{request}: {body}");
    }
    app.stop().await;
}

async fn invalid_code_records_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "IC-0001").await;
    let id = text_of(&cylinder, "id");
    let qr = text_of(&cylinder, "qr_code");
    let rfid = text_of(&cylinder, "rfid_tag");

    let cases = [
        (format!("{} {}", &qr[..10], &qr[10..]), "QR"),
        // U+0421 CYRILLIC CAPITAL LETTER ES looks like the Latin C.
        (qr.replacen('C', "\u{0421}", 1), "QR"),
        (format!("{}\u{0007}{}", &qr[..10], &qr[10..]), "QR"),
        (format!("G{}", &rfid[1..]), "RFID"),
    ];
    for (code, scan_type) in cases {
        let request = json!({"code": code, "scan_type": scan_type});
        let (status, body) = app.post(SCANS, &token, request.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{request}: {body}"
        );
        assert_eq!(
            error_of(&body),
            ("validation_failed".to_string(), "code".to_string()),
            "{request}: {body}"
        );
    }

    let scans = count_items(&app, &format!("/api/v1/cylinders/{id}/scans"), &token).await;
    assert_eq!(scans, 0, "a rejected code must record no scan");
    let events = history_events(&app, &token, &id).await;
    assert_eq!(events, ["REGISTERED"], "{events:?}");
    app.stop().await;
}

async fn invalid_fields_are_named(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "IF-0001").await;
    let id = text_of(&cylinder, "id");

    let cases: Vec<(Value, &str)> = vec![
        (json!({"latitude": 91.0, "longitude": 36.8}), "latitude"),
        (json!({"latitude": -90.5, "longitude": 36.8}), "latitude"),
        (json!({"latitude": -1.28, "longitude": 181.0}), "longitude"),
        (json!({"longitude": 36.8}), "latitude"),
        (json!({"latitude": -1.28}), "longitude"),
        (
            json!({"latitude": -1.28, "longitude": 36.8, "accuracy_m": -5.0}),
            "accuracy_m",
        ),
        (
            json!({"latitude": -1.28, "longitude": 36.8, "accuracy_m": 100_001.0}),
            "accuracy_m",
        ),
        (json!({"scanned_at": minutes_ago(-10)}), "scanned_at"),
        (
            json!({"scanned_at": minutes_ago(40 * 24 * 60)}),
            "scanned_at",
        ),
        (json!({"client_scan_id": "has space"}), "client_scan_id"),
        (json!({"client_scan_id": ""}), "client_scan_id"),
        (json!({"client_scan_id": "x".repeat(101)}), "client_scan_id"),
        (json!({"client_scan_id": "sc\u{00e4}n-1"}), "client_scan_id"),
        (json!({"address": "a".repeat(301)}), "address"),
    ];
    for (fields, field) in cases {
        let mut request = qr_scan(&cylinder);
        for (key, value) in fields.as_object().cloned().unwrap_or_default() {
            request[key] = value;
        }
        let (status, body) = app.post(SCANS, &token, request.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{request}: {body}"
        );
        assert_eq!(error_of(&body).1, field, "{request}: {body}");
    }

    let scans = count_items(&app, &format!("/api/v1/cylinders/{id}/scans"), &token).await;
    assert_eq!(scans, 0, "a rejected scan must record nothing");
    let events = history_events(&app, &token, &id).await;
    assert_eq!(events, ["REGISTERED"], "{events:?}");
    app.stop().await;
}

async fn zero_zero_is_no_location(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "ZZ-0001").await;
    let id = text_of(&cylinder, "id");

    // 0,0 is what a phone without a fix reports. If it counted as a place,
    // the next scan 400 km away a minute later would look like a clone.
    let no_fix = scan_recorded(
        &app,
        &token,
        located_scan(&cylinder, (0.0, 0.0), &minutes_ago(2)),
    )
    .await;
    assert_eq!(no_fix["result"], "VALID", "{no_fix}");
    let far = scan_recorded(
        &app,
        &token,
        located_scan(&cylinder, (0.0, 3.6), &minutes_ago(1)),
    )
    .await;
    assert_eq!(far["is_suspicious"], false, "{far}");
    assert_eq!(far["result"], "VALID", "{far}");

    let scans = scan_items(&app, &token, &id).await;
    assert_eq!(scans.len(), 2, "{scans:?}");
    let stored_no_fix = scans.iter().find(|item| item["id"] == no_fix["scan_id"]);
    assert!(
        stored_no_fix.is_some_and(|item| item.get("latitude").is_none()),
        "0,0 must be stored as no location: {scans:?}"
    );
    let stored_far = scans.iter().find(|item| item["id"] == far["scan_id"]);
    assert!(
        stored_far.is_some_and(|item| item["latitude"] == 0.0 && item["longitude"] == 3.6),
        "a latitude of 0 alone is a real place: {scans:?}"
    );
    let current = get_cylinder(&app, &token, &id).await;
    assert_eq!(current["is_tampered"], false, "{current}");
    app.stop().await;
}

async fn retry_returns_first_response(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "RR-0001").await;
    let id = text_of(&cylinder, "id");
    let mut request = located_scan(&cylinder, NAIROBI, &minutes_ago(3));
    request["client_scan_id"] = json!("phone-7:scan.0001");

    let (status, first) = app.post(SCANS, &token, request.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, retry) = app.post(SCANS, &token, request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{retry}");
    assert_eq!(retry, first, "a retry must return the first response");
    let scans = count_items(&app, &format!("/api/v1/cylinders/{id}/scans"), &token).await;
    assert_eq!(scans, 1, "a retry must record nothing");

    // A client scan id is scoped to one scanner, so another user's scan with
    // the same id is a new scan.
    let customer = app
        .user_with_token("retry.customer", Role::Customer)
        .await
        .1;
    let (status, other) = app.post(SCANS, &customer, request.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    assert_ne!(other["scan_id"], first["scan_id"], "{other}");
    let scans = count_items(&app, &format!("/api/v1/cylinders/{id}/scans"), &token).await;
    assert_eq!(scans, 2, "another scanner's scan must be recorded");
    app.stop().await;
}

async fn sixth_rapid_scan_flags(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "RP-0001").await;
    let id = text_of(&cylinder, "id");

    for seconds in [240, 180, 120, 60, 30] {
        let mut request = qr_scan(&cylinder);
        request["scanned_at"] = json!(seconds_ago(seconds));
        let body = scan_recorded(&app, &token, request).await;
        assert_eq!(body["result"], "VALID", "{seconds} s ago: {body}");
        assert_eq!(body["is_suspicious"], false, "{seconds} s ago: {body}");
    }

    let sixth = scan_recorded(&app, &token, qr_scan(&cylinder)).await;
    assert_eq!(sixth["is_suspicious"], true, "{sixth}");
    assert_eq!(sixth["result"], "TAMPERED", "{sixth}");
    assert!(!text_of(&sixth, "suspicious_reason").is_empty(), "{sixth}");
    assert!(
        sixth["warnings"]
            .as_array()
            .is_some_and(|warnings| !warnings.is_empty()),
        "{sixth}"
    );
    assert!(sixth.get("auth_token").is_none(), "{sixth}");
    let current = get_cylinder(&app, &token, &id).await;
    assert_eq!(current["is_tampered"], true, "{current}");
    assert_eq!(
        current["tamper_notes"], sixth["suspicious_reason"],
        "{current}"
    );
    let events = history_events(&app, &token, &id).await;
    assert_eq!(events[0], "TAMPER_DETECTED", "{events:?}");

    let (status, cleared) = set_tamper(&app, &token, &id, false).await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!(cleared["is_tampered"], false, "{cleared}");
    let events = history_events(&app, &token, &id).await;
    assert_eq!(events[0], "TAMPER_CLEARED", "{events:?}");
    let (status, again) = set_tamper(&app, &token, &id, false).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(error_of(&again).0, "tamper_flag_unchanged", "{again}");

    // After clearing, a scan from an hour ago, far from the burst, is VALID.
    let mut request = qr_scan(&cylinder);
    request["scanned_at"] = json!(minutes_ago(60));
    let body = scan_recorded(&app, &token, request).await;
    assert_eq!(body["result"], "VALID", "{body}");
    app.stop().await;
}

/// Checks that a scan uploaded late into a burst that the rule memory no
/// longer contains is still judged against the whole history.
async fn late_burst_after_long_history_flags(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "RP-0002").await;

    // Five scans within two minutes, which is allowed, then twenty spread
    // six minutes apart, more than the memory keeps.
    let burst = [12_000, 11_970, 11_940, 11_910, 11_880];
    let spread = (0..20).map(|index| 11_400 - index * 360);
    for seconds in burst.into_iter().chain(spread) {
        let mut request = qr_scan(&cylinder);
        request["scanned_at"] = json!(seconds_ago(seconds));
        let body = scan_recorded(&app, &token, request).await;
        assert_eq!(body["is_suspicious"], false, "{seconds} s ago: {body}");
    }

    // A sixth scan of the burst, uploaded late, is one too many.
    let mut request = qr_scan(&cylinder);
    request["scanned_at"] = json!(seconds_ago(11_950));
    let late = scan_recorded(&app, &token, request).await;
    assert_eq!(late["is_suspicious"], true, "{late}");
    assert_eq!(late["result"], "TAMPERED", "{late}");
    app.stop().await;
}

/// Cylinders scanned before the rule memory existed get it rebuilt from
/// their scans, by migration 0003 or by `REBUILD_RULE_MEMORY`. Without
/// that, their memory would claim that they had no scans.
async fn rebuilt_memory_judges_history(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let journey = app.register_cylinder(&token, "RM-0001").await;
    let burst = app.register_cylinder(&token, "RM-0002").await;
    scan_recorded(
        &app,
        &token,
        located_scan(&journey, NAIROBI, &minutes_ago(30)),
    )
    .await;
    for seconds in [240, 180, 120, 60, 30] {
        let mut request = qr_scan(&burst);
        request["scanned_at"] = json!(seconds_ago(seconds));
        scan_recorded(&app, &token, request).await;
    }

    // Every cylinder's memory as the columns' defaults leave it, then
    // rebuilt from the scans.
    let pool = app.database.pool().await;
    pool.execute(
        "UPDATE cylinders SET recent_scans = '', recent_scans_after = NULL, last_fix_scan_id = NULL, \
         last_fix_at = NULL, last_fix_latitude = NULL, last_fix_longitude = NULL, last_fix_accuracy_m = NULL",
    )
    .await
    .expect("reset the rule memory");
    let rebuild = match backend {
        Backend::Sqlite => cyltrack::storage::sqlite::REBUILD_RULE_MEMORY,
        Backend::Postgres => cyltrack::storage::postgres::REBUILD_RULE_MEMORY,
    };
    for statement in rebuild {
        pool.execute(statement)
            .await
            .expect("rebuild the rule memory");
    }
    pool.close().await;

    let moved = scan_recorded(
        &app,
        &token,
        located_scan(&journey, MOMBASA, &minutes_ago(1)),
    )
    .await;
    assert_eq!(moved["is_suspicious"], true, "{moved}");
    let sixth = scan_recorded(&app, &token, qr_scan(&burst)).await;
    assert_eq!(sixth["is_suspicious"], true, "{sixth}");
    app.stop().await;
}

async fn impossible_journey_flags(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;

    // Nairobi, then Mombasa 40 minutes later, is 440 km at over 600 km/h.
    let cylinder = app.register_cylinder(&token, "IJ-0001").await;
    let id = text_of(&cylinder, "id");
    let first = scan_recorded(
        &app,
        &token,
        located_scan(&cylinder, NAIROBI, &minutes_ago(41)),
    )
    .await;
    assert_eq!(first["is_suspicious"], false, "{first}");
    let second = scan_recorded(
        &app,
        &token,
        located_scan(&cylinder, MOMBASA, &minutes_ago(1)),
    )
    .await;
    assert_eq!(second["is_suspicious"], true, "{second}");
    assert_eq!(second["result"], "TAMPERED", "{second}");
    assert!(
        text_of(&second, "suspicious_reason").contains("km"),
        "{second}"
    );
    let current = get_cylinder(&app, &token, &id).await;
    assert_eq!(current["is_tampered"], true, "{current}");
    let events = history_events(&app, &token, &id).await;
    assert_eq!(events[0], "TAMPER_DETECTED", "{events:?}");

    // The same pair arriving in reverse order, as from a phone that was
    // offline, is judged by event time and caught on the late scan.
    let late = app.register_cylinder(&token, "IJ-0002").await;
    let recent = scan_recorded(&app, &token, located_scan(&late, MOMBASA, &minutes_ago(1))).await;
    assert_eq!(recent["is_suspicious"], false, "{recent}");
    let uploaded =
        scan_recorded(&app, &token, located_scan(&late, NAIROBI, &minutes_ago(41))).await;
    assert_eq!(uploaded["is_suspicious"], true, "{uploaded}");
    assert_eq!(uploaded["result"], "TAMPERED", "{uploaded}");

    // Over 50 km within 5 minutes is suspicious even when coarse fixes
    // would explain the distance to the speed rule.
    let coarse = app.register_cylinder(&token, "IJ-0003").await;
    let mut request = located_scan(&coarse, NAIROBI, &minutes_ago(4));
    request["accuracy_m"] = json!(50_000.0);
    let body = scan_recorded(&app, &token, request).await;
    assert_eq!(body["is_suspicious"], false, "{body}");
    let mut request = located_scan(&coarse, NAIVASHA, &minutes_ago(1));
    request["accuracy_m"] = json!(50_000.0);
    let body = scan_recorded(&app, &token, request).await;
    assert_eq!(body["is_suspicious"], true, "{body}");
    app.stop().await;
}

async fn plausible_journeys_pass(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;

    // Nairobi to Thika, 40 km, in an hour.
    let thika = app.register_cylinder(&token, "PJ-0001").await;
    for (place, minutes) in [(NAIROBI, 61), (THIKA, 1)] {
        let body = scan_recorded(
            &app,
            &token,
            located_scan(&thika, place, &minutes_ago(minutes)),
        )
        .await;
        assert_eq!(body["is_suspicious"], false, "{body}");
        assert_eq!(body["result"], "VALID", "{body}");
    }

    // An overnight truck from Nairobi to Mombasa, 8 hours.
    let coast = app.register_cylinder(&token, "PJ-0002").await;
    for (place, minutes) in [(NAIROBI, 490), (MOMBASA, 10)] {
        let body = scan_recorded(
            &app,
            &token,
            located_scan(&coast, place, &minutes_ago(minutes)),
        )
        .await;
        assert_eq!(body["is_suspicious"], false, "{body}");
    }

    // Four scans ten seconds apart, the fix wandering by up to 400 m.
    let jitter = app.register_cylinder(&token, "PJ-0003").await;
    let fixes = [
        (NAIROBI, 40),
        ((NAIROBI.0 + 0.0020, NAIROBI.1 - 0.0010), 30),
        ((NAIROBI.0 - 0.0015, NAIROBI.1 + 0.0030), 20),
        ((NAIROBI.0 + 0.0005, NAIROBI.1 + 0.0008), 10),
    ];
    for (place, seconds) in fixes {
        let mut request = located_scan(&jitter, place, &seconds_ago(seconds));
        request["accuracy_m"] = json!(25.0);
        let body = scan_recorded(&app, &token, request).await;
        assert_eq!(body["is_suspicious"], false, "{body}");
        assert_eq!(body["result"], "VALID", "{body}");
    }

    for cylinder in [&thika, &coast, &jitter] {
        let current = get_cylinder(&app, &token, &text_of(cylinder, "id")).await;
        assert_eq!(current["is_tampered"], false, "{current}");
    }
    app.stop().await;
}

/// Shuffles `values` by Fisher-Yates with a seeded xorshift64 generator,
/// so a failure repeats with the same order.
fn shuffled<T>(mut values: Vec<T>, mut seed: u64) -> Vec<T> {
    for index in (1..values.len()).rev() {
        // xorshift64
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let other = (seed % (index as u64 + 1)) as usize;
        values.swap(index, other);
    }
    values
}

async fn shuffled_batch_raises_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let driver = app.user_with_token("batch.driver", Role::Driver).await.1;
    let cylinders = [
        app.register_cylinder(&token, "BT-0001").await,
        app.register_cylinder(&token, "BT-0002").await,
        app.register_cylinder(&token, "BT-0003").await,
    ];

    // A delivery run that started 7 hours ago loads three cylinders at the
    // Nairobi depot, drops one each at Thika, Murang'a and Nyeri, and brings
    // the first back empty. Each entry is (cylinder, place, minutes after
    // the start). None is a scan without a fix, and (0, 0) a lost fix.
    let start = 7 * 60;
    let route: Vec<(usize, Option<Place>, i64)> = vec![
        (0, Some(NAIROBI), 0),
        (1, Some(NAIROBI), 1),
        (2, Some((NAIROBI.0 + 0.0004, NAIROBI.1)), 2),
        (0, Some((NAIROBI.0, NAIROBI.1 + 0.0006)), 12),
        (1, None, 12),
        (2, Some(NAIROBI), 13),
        (0, Some(THIKA), 70),
        (1, Some((THIKA.0 + 0.0010, THIKA.1)), 71),
        (2, Some(THIKA), 72),
        (0, Some((THIKA.0, THIKA.1 + 0.0020)), 74),
        (1, Some(MURANGA), 140),
        (2, None, 141),
        (1, Some((MURANGA.0 - 0.0008, MURANGA.1)), 143),
        (2, Some((0.0, 0.0)), 220),
        (2, Some(NYERI), 222),
        (0, Some(THIKA), 300),
        (0, Some(NAIROBI), 385),
    ];
    let mut batch = Vec::new();
    for (index, (cylinder, place, minute)) in route.iter().enumerate() {
        let mut request = qr_scan(&cylinders[*cylinder]);
        request["scanned_at"] = json!(minutes_ago(start - minute));
        request["client_scan_id"] = json!(format!("trip-42:{index:03}"));
        if let Some((latitude, longitude)) = place {
            request["latitude"] = json!(latitude);
            request["longitude"] = json!(longitude);
            request["accuracy_m"] = json!(12.0);
        }
        batch.push(request);
    }
    let batch = shuffled(batch, 0x5eed_cafe_f00d);

    for request in &batch {
        let body = scan_recorded(&app, &driver, request.clone()).await;
        assert_eq!(body["is_suspicious"], false, "{request}: {body}");
        assert_eq!(body["result"], "VALID", "{request}: {body}");
    }
    // The phone did not see the responses and uploads the batch again.
    for request in &batch {
        let (status, body) = app.post(SCANS, &driver, request.clone()).await;
        assert_eq!(status, StatusCode::OK, "{request}: {body}");
        assert_eq!(body["is_suspicious"], false, "{request}: {body}");
    }

    for (index, cylinder) in cylinders.iter().enumerate() {
        let id = text_of(cylinder, "id");
        let current = get_cylinder(&app, &token, &id).await;
        assert_eq!(current["is_tampered"], false, "{current}");
        let events = history_events(&app, &token, &id).await;
        assert!(
            !events.iter().any(|event| event == "TAMPER_DETECTED"),
            "{events:?}"
        );

        let scans = scan_items(&app, &token, &id).await;
        let expected = route.iter().filter(|entry| entry.0 == index).count();
        assert_eq!(scans.len(), expected, "{scans:?}");
        let times: Vec<Option<DateTime<Utc>>> = scans
            .iter()
            .map(|item| parse_time(item, "scanned_at"))
            .collect();
        assert!(
            times.windows(2).all(|pair| pair[0] >= pair[1]),
            "scans must be listed newest first: {times:?}"
        );
    }
    app.stop().await;
}

async fn customer_view_hides_fields(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let (customer_user, customer) = app.user_with_token("view.customer", Role::Customer).await;
    let (driver_user, driver) = app.user_with_token("view.driver", Role::Driver).await;
    let cylinder = app.register_cylinder(&token, "CV-0001").await;
    let id = text_of(&cylinder, "id");
    let (status, assigned) = app
        .post(
            &format!("/api/v1/cylinders/{id}/assign"),
            &token,
            json!({"customer_id": customer_user.id, "driver_id": driver_user.id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{assigned}");

    let hidden_from_customer = [
        "qr_code",
        "rfid_tag",
        "tamper_notes",
        "customer_id",
        "driver_id",
    ];
    let valid = scan_recorded(&app, &customer, qr_scan(&cylinder)).await;
    assert_eq!(valid["result"], "VALID", "{valid}");
    assert!(valid.get("auth_token").is_some(), "{valid}");
    assert_eq!(valid["cylinder"]["id"], cylinder["id"], "{valid}");
    for field in hidden_from_customer {
        assert!(
            valid["cylinder"].get(field).is_none(),
            "customer sees {field}: {valid}"
        );
    }

    let (status, flagged) = set_tamper(&app, &token, &id, true).await;
    assert_eq!(status, StatusCode::OK, "{flagged}");
    let tampered = scan_recorded(&app, &customer, qr_scan(&cylinder)).await;
    assert_eq!(tampered["result"], "TAMPERED", "{tampered}");
    for field in hidden_from_customer {
        assert!(
            tampered["cylinder"].get(field).is_none(),
            "customer sees {field}: {tampered}"
        );
    }

    let by_driver = scan_recorded(&app, &driver, qr_scan(&cylinder)).await;
    for field in ["qr_code", "rfid_tag", "tamper_notes"] {
        assert!(
            by_driver["cylinder"].get(field).is_none(),
            "driver sees {field}: {by_driver}"
        );
    }
    assert_eq!(
        by_driver["cylinder"]["customer_id"],
        customer_user.id.to_string(),
        "{by_driver}"
    );

    let by_staff = scan_recorded(&app, &token, qr_scan(&cylinder)).await;
    for field in hidden_from_customer {
        assert!(
            by_staff["cylinder"].get(field).is_some(),
            "staff miss {field}: {by_staff}"
        );
    }
    app.stop().await;
}

/// Encodes `bytes` as standard base64 with padding, so the secret can be
/// looked for in that form too.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let group = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let bits = (u32::from(group[0]) << 16) | (u32::from(group[1]) << 8) | u32::from(group[2]);
        for position in 0..4 {
            if position <= chunk.len() {
                let sextet = (bits >> (18 - 6 * position)) & 0x3f;
                text.push(char::from(ALPHABET[sextet as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// Collects every object key in `value`, at any depth.
fn keys_of(value: &Value, keys: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                keys.push(key.clone());
                keys_of(inner, keys);
            }
        }
        Value::Array(list) => list.iter().for_each(|inner| keys_of(inner, keys)),
        _ => {}
    }
}

/// Reads the cylinder secret that keys the auth token of `scan_id` from the
/// store.
async fn secret_of_scan(app: &TestApp, scan_id: &str) -> Vec<u8> {
    let scan_id = Uuid::parse_str(scan_id)
        .unwrap_or_else(|error| panic!("invalid scan id {scan_id}: {error}"));
    let stored = app
        .store
        .scan_for_token(scan_id)
        .await
        .unwrap_or_else(|error| panic!("reading scan {scan_id} failed: {error}"));
    stored
        .and_then(|scan| scan.token_key)
        .unwrap_or_else(|| panic!("scan {scan_id} has no token key"))
}

async fn secret_never_in_responses(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let (customer_user, customer) = app.user_with_token("secret.customer", Role::Customer).await;
    let mut responses = Vec::new();

    let cylinder = app.register_cylinder(&token, "SK-0001").await;
    let id = text_of(&cylinder, "id");
    responses.push(cylinder.clone());
    let (_, assigned) = app
        .post(
            &format!("/api/v1/cylinders/{id}/assign"),
            &token,
            json!({"customer_id": customer_user.id}),
        )
        .await;
    responses.push(assigned);

    let mut request = located_scan(&cylinder, NAIROBI, &minutes_ago(2));
    request["client_scan_id"] = json!("secret-check-1");
    let by_staff = scan_recorded(&app, &token, request.clone()).await;
    let (_, retry) = app.post(SCANS, &token, request).await;
    let by_customer = scan_recorded(&app, &customer, qr_scan(&cylinder)).await;
    let (_, verified) = app
        .post(
            VERIFY_TOKEN,
            &customer,
            json!({"token": by_customer["auth_token"]}),
        )
        .await;
    let old_secret = secret_of_scan(&app, &text_of(&by_staff, "scan_id")).await;
    responses.extend([by_staff, retry, by_customer, verified]);

    let new = reissue(&app, &token, &id).await;
    let after = scan_recorded(&app, &token, qr_scan(&new)).await;
    let new_secret = secret_of_scan(&app, &text_of(&after, "scan_id")).await;
    assert_ne!(old_secret, new_secret, "reissue must change the secret");
    responses.extend([new, after]);

    for path in [
        format!("/api/v1/cylinders/{id}"),
        format!("/api/v1/cylinders/{id}/history"),
        format!("/api/v1/cylinders/{id}/scans"),
        "/api/v1/cylinders".to_string(),
    ] {
        for viewer in [&token, &customer] {
            let (status, body) = app.get(&path, viewer).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            responses.push(body);
        }
    }

    for secret in [&old_secret, &new_secret] {
        assert!(secret.len() >= 16, "secret of {} bytes", secret.len());
        let forms = [
            hex::encode(secret),
            hex::encode_upper(secret),
            base64(secret),
            base64(secret)
                .trim_end_matches('=')
                .replace('+', "-")
                .replace('/', "_"),
        ];
        for response in &responses {
            let text = response.to_string();
            for form in &forms {
                assert!(!text.contains(form.as_str()), "secret {form} in {text}");
            }
        }
    }
    for response in &responses {
        let mut keys = Vec::new();
        keys_of(response, &mut keys);
        for secret_key in ["secret_key", "auth_hash", "token_key", "secret"] {
            assert!(
                !keys.iter().any(|key| key == secret_key),
                "{secret_key} in {response}"
            );
        }
    }
    app.stop().await;
}

async fn verify_token_rejects_forgeries(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "VF-0001").await;
    let id = text_of(&cylinder, "id");
    let body = scan_recorded(&app, &token, qr_scan(&cylinder)).await;
    let genuine = text_of(&body, "auth_token");
    assert!(!genuine.is_empty(), "{body}");

    let (status, verified) = app
        .post(VERIFY_TOKEN, &token, json!({"token": genuine}))
        .await;
    assert_eq!(status, StatusCode::OK, "{verified}");
    assert_eq!(verified["valid"], true, "{verified}");

    // One hex digit of the tag changed.
    let mut forged = genuine.clone();
    let last = forged.pop().unwrap_or('0');
    forged.push(if last == '0' { '1' } else { '0' });
    // The scan id of the token, with a later issue time and the old tag.
    let parts: Vec<&str> = genuine.split('.').collect();
    let issued: i64 = parts
        .get(1)
        .and_then(|text| text.parse().ok())
        .unwrap_or_default();
    let stretched = format!(
        "{}.{}.{}",
        parts.first().unwrap_or(&""),
        issued + 3600,
        parts.get(2).unwrap_or(&"")
    );
    let garbage = [
        forged,
        stretched,
        "not-a-token".to_string(),
        format!("{}.{}", Uuid::new_v4().simple(), "1".repeat(64)),
        format!("{}.0.{}", Uuid::new_v4().simple(), "ab".repeat(32)),
    ];
    for candidate in garbage {
        let (status, verified) = app
            .post(VERIFY_TOKEN, &token, json!({"token": candidate}))
            .await;
        assert_eq!(status, StatusCode::OK, "{candidate}: {verified}");
        assert_eq!(verified["valid"], false, "{candidate}: {verified}");
        assert!(verified.get("reason").is_some(), "{candidate}: {verified}");
        assert!(verified.get("scan_id").is_none(), "{candidate}: {verified}");
    }

    // Reissuing the codes replaces the secret, so earlier tokens stop
    // verifying.
    reissue(&app, &token, &id).await;
    let (status, verified) = app
        .post(VERIFY_TOKEN, &token, json!({"token": genuine}))
        .await;
    assert_eq!(status, StatusCode::OK, "{verified}");
    assert_eq!(verified["valid"], false, "{verified}");

    let too_long = "a".repeat(201);
    for empty in ["", "   ", too_long.as_str()] {
        let (status, body) = app
            .post(VERIFY_TOKEN, &token, json!({"token": empty}))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{empty:?}: {body}"
        );
        assert_eq!(error_of(&body).1, "token", "{empty:?}: {body}");
    }
    app.stop().await;
}

/// Posts a scan with a User-Agent header, as a phone app would.
async fn scan_with_agent(app: &TestApp, token: &str, request: &Value) -> Value {
    let response = app
        .client
        .post(app.url(SCANS))
        .bearer_auth(token)
        .header(reqwest::header::USER_AGENT, "CylScan/2.3 (Android 14)")
        .json(request)
        .send()
        .await
        .unwrap_or_else(|error| panic!("scan request failed: {error}"));
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::CREATED, "{request}: {body}");
    body
}

async fn scan_list_respects_viewer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let (owner_user, owner) = app.user_with_token("list.owner", Role::Customer).await;
    let stranger = app.user_with_token("list.stranger", Role::Customer).await.1;
    let cylinder = app.register_cylinder(&token, "SL-0001").await;
    let id = text_of(&cylinder, "id");
    let other = app.register_cylinder(&token, "SL-0002").await;
    let (status, assigned) = app
        .post(
            &format!("/api/v1/cylinders/{id}/assign"),
            &token,
            json!({"customer_id": owner_user.id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{assigned}");

    let mut by_staff_request = located_scan(&cylinder, NAIROBI, &minutes_ago(30));
    by_staff_request["address"] = json!("Industrial Area depot, Nairobi");
    let by_staff = scan_with_agent(&app, &token, &by_staff_request).await;
    let mut by_owner_request = located_scan(&cylinder, THIKA, &minutes_ago(1));
    by_owner_request["address"] = json!("Home, Thika");
    let by_owner = scan_with_agent(&app, &owner, &by_owner_request).await;

    let staff_view = scan_items(&app, &token, &id).await;
    assert_eq!(staff_view.len(), 2, "{staff_view:?}");
    for item in &staff_view {
        assert_eq!(item["ip_address"], "127.0.0.1", "{item}");
        assert!(item["latitude"].is_f64(), "{item}");
        assert!(item.get("user_agent").is_some(), "{item}");
        assert!(item.get("scanned_code").is_some(), "{item}");
    }

    let owner_view = scan_items(&app, &owner, &id).await;
    assert_eq!(owner_view.len(), 2, "{owner_view:?}");
    let own = owner_view
        .iter()
        .find(|item| item["id"] == by_owner["scan_id"]);
    assert!(
        own.is_some_and(|item| item["latitude"] == THIKA.0 && item["longitude"] == THIKA.1),
        "the owner must see their own location: {owner_view:?}"
    );
    assert!(
        own.is_some_and(|item| item["address"] == "Home, Thika"),
        "{owner_view:?}"
    );
    let staffs = owner_view
        .iter()
        .find(|item| item["id"] == by_staff["scan_id"]);
    for field in [
        "latitude",
        "longitude",
        "accuracy_m",
        "address",
        "scanner_id",
    ] {
        assert!(
            staffs.is_some_and(|item| item.get(field).is_none()),
            "the owner sees {field} of another scanner: {owner_view:?}"
        );
    }
    for item in &owner_view {
        for field in ["ip_address", "user_agent", "scanned_code"] {
            assert!(item.get(field).is_none(), "the owner sees {field}: {item}");
        }
    }

    for (viewer, path) in [
        (&stranger, format!("/api/v1/cylinders/{id}/scans")),
        (
            &owner,
            format!("/api/v1/cylinders/{}/scans", text_of(&other, "id")),
        ),
    ] {
        let (status, body) = app.get(&path, viewer).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    app.stop().await;
}

/// Sends `requests` at once, each from its own task, and returns the
/// statuses and bodies in completion order.
async fn post_concurrently(
    app: &TestApp,
    token: &str,
    requests: Vec<Value>,
) -> Vec<(StatusCode, Value)> {
    let mut tasks = tokio::task::JoinSet::new();
    for request in requests {
        let client = app.client.clone();
        let url = app.url(SCANS);
        let token = token.to_string();
        tasks.spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .json(&request)
                .send()
                .await
                .unwrap_or_else(|error| panic!("scan request failed: {error}"));
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.unwrap_or_else(|error| panic!("scan task failed: {error}")));
    }
    results
}

async fn concurrent_retries_record_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "CR-0001").await;
    let id = text_of(&cylinder, "id");
    let mut request = qr_scan(&cylinder);
    request["client_scan_id"] = json!("flaky-network:0001");

    // A phone on a bad connection resends the scan before the first
    // response arrives.
    let results = post_concurrently(&app, &token, vec![request; 6]).await;
    let created = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{results:?}");
    let replayed = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count();
    assert_eq!(replayed, 5, "{results:?}");
    let first = &results[0].1;
    for (_, body) in &results {
        assert_eq!(body, first, "every retry must return the first response");
    }

    let scans = count_items(&app, &format!("/api/v1/cylinders/{id}/scans"), &token).await;
    assert_eq!(scans, 1, "concurrent retries must record one scan");
    let events = history_events(&app, &token, &id).await;
    assert_eq!(events, ["SCANNED", "REGISTERED"], "{events:?}");
    app.stop().await;
}

async fn concurrent_scans_judged_serially(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "CS-0001").await;
    let id = text_of(&cylinder, "id");

    // Eight scans at once. Each is judged after the ones before it, so the
    // 6th, 7th and 8th each complete more than 5 within 5 minutes.
    let results = post_concurrently(&app, &token, vec![qr_scan(&cylinder); 8]).await;
    for (status, body) in &results {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
    }
    let suspicious = results
        .iter()
        .filter(|(_, body)| body["is_suspicious"] == true)
        .count();
    assert_eq!(suspicious, 3, "{results:?}");

    let current = get_cylinder(&app, &token, &id).await;
    assert_eq!(current["is_tampered"], true, "{current}");
    let events = history_events(&app, &token, &id).await;
    let detected = events
        .iter()
        .filter(|event| *event == "TAMPER_DETECTED")
        .count();
    assert_eq!(detected, 3, "{events:?}");
    let scans = count_items(&app, &format!("/api/v1/cylinders/{id}/scans"), &token).await;
    assert_eq!(scans, 8, "every concurrent scan must be recorded");
    app.stop().await;
}

/// Changes the user `user_id` with `changes` as an admin.
async fn change_user(app: &TestApp, user_id: Uuid, changes: Value) {
    let (_, admin) = app.user_with_token("admin", Role::Admin).await;
    let path = format!("/api/v1/users/{user_id}");
    let (status, body) = app.patch(&path, &admin, changes).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn deactivated_scanner_records_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "DS-0001").await;
    let id = text_of(&cylinder, "id");
    let (driver, driver_token) = app.user_with_token("otieno", Role::Driver).await;
    scan_recorded(&app, &driver_token, qr_scan(&cylinder)).await;

    change_user(&app, driver.id, json!({"is_active": false})).await;
    let (status, body) = app.post(SCANS, &driver_token, qr_scan(&cylinder)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = app
        .post(
            SCANS,
            &driver_token,
            json!({"code": "CYL-UNKNOWN-0001", "scan_type": "QR"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "unknown code: {body}");

    let scans = count_items(&app, &format!("/api/v1/cylinders/{id}/scans"), &token).await;
    assert_eq!(scans, 1, "only the scan before deactivation is recorded");
    let events = history_events(&app, &token, &id).await;
    assert_eq!(events, ["SCANNED", "REGISTERED"], "{events:?}");
    app.stop().await;
}

async fn changed_role_token_records_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "RC-0001").await;
    let id = text_of(&cylinder, "id");
    let (driver, driver_token) = app.user_with_token("wanjiru", Role::Driver).await;

    // A driver who becomes a customer keeps a token with the driver role.
    change_user(&app, driver.id, json!({"role": "CUSTOMER"})).await;
    let (status, body) = app.post(SCANS, &driver_token, qr_scan(&cylinder)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let scans = count_items(&app, &format!("/api/v1/cylinders/{id}/scans"), &token).await;
    assert_eq!(scans, 0, "the stale token recorded a scan");

    // Signing in again gives a token with the new role.
    let (status, body) = app.login("wanjiru", crate::helpers::PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fresh = text_of(&body, "access_token");
    let scanned = scan_recorded(&app, &fresh, qr_scan(&cylinder)).await;
    assert_eq!(scanned["result"], "VALID", "{scanned}");
    let scans = scan_items(&app, &token, &id).await;
    assert_eq!(scans.len(), 1, "{scans:?}");
    assert_eq!(scans[0]["scanner_role"], "CUSTOMER", "{scans:?}");
    app.stop().await;
}

async fn token_without_role_scans(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "TR-0001").await;
    let id = text_of(&cylinder, "id");
    let driver = app.create_user("kiprop", Role::Driver).await;

    // A token issued before tokens carried roles is confirmed against the
    // account, and the scan is recorded with the account's role.
    let old_token = sign_access_token(driver.id, Utc::now());
    let scanned = scan_recorded(&app, &old_token, qr_scan(&cylinder)).await;
    assert_eq!(scanned["result"], "VALID", "{scanned}");
    let scans = scan_items(&app, &token, &id).await;
    assert_eq!(scans.len(), 1, "{scans:?}");
    assert_eq!(scans[0]["scanner_role"], "DRIVER", "{scans:?}");

    change_user(&app, driver.id, json!({"is_active": false})).await;
    let (status, body) = app.post(SCANS, &old_token, qr_scan(&cylinder)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    app.stop().await;
}
