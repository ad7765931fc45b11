//! The cylinder registry through the API: registration, codes, lifecycle,
//! custody, filters and history.

use std::collections::HashSet;

use cyltrack::domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, cylinder_body, error_of, on_both_backends};

on_both_backends!(
    register_generates_codes,
    codes_are_unique,
    register_writes_history,
    lifecycle_follows_rules,
    retired_is_final,
    expired_cannot_be_filled,
    assign_checks_roles,
    assign_null_clears,
    list_filters_work,
    list_pages,
    history_pages_newest_first,
    unknown_cylinder_is_404,
);

async fn staff(app: &TestApp) -> String {
    app.user_with_token("dispatcher", Role::Dispatcher).await.1
}

fn id_of(body: &Value) -> String {
    body["id"].as_str().unwrap_or_default().to_string()
}

async fn register_generates_codes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let (status, body) = app
        .post("/api/v1/cylinders", &token, cylinder_body(" jg-13/000123 "))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    assert_eq!(body["serial_number"], "JG-13/000123");
    assert_eq!(body["status"], "IN_STOCK");
    assert_eq!(body["is_tampered"], false);
    assert_eq!(body["is_expired"], false);
    assert_eq!(body["capacity_kg"], 13.0);

    // 128 random bits in Crockford base32 behind the CYL- prefix.
    let qr = body["qr_code"].as_str().unwrap_or_default();
    assert!(qr.starts_with("CYL-"), "{qr}");
    assert_eq!(qr.len(), 30, "{qr}");
    // 96 random bits in upper-case hex, the size of an EPC-96 tag id.
    let rfid = body["rfid_tag"].as_str().unwrap_or_default();
    assert_eq!(rfid.len(), 24, "{rfid}");
    assert!(
        rfid.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()),
        "{rfid}"
    );

    for secret in ["secret_key", "auth_hash", "created_by"] {
        assert!(body.get(secret).is_none(), "response shows {secret}");
    }
    app.stop().await;
}

async fn codes_are_unique(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let mut seen = HashSet::new();
    for index in 0..20 {
        let body = app
            .register_cylinder(&token, &format!("UQ-{index:04}"))
            .await;
        assert!(seen.insert(body["qr_code"].to_string()), "repeated QR code");
        assert!(
            seen.insert(body["rfid_tag"].to_string()),
            "repeated RFID tag"
        );
    }
    app.stop().await;
}

async fn register_writes_history(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let cylinder = app.register_cylinder(&token, "HI-0001").await;

    let (status, history) = app
        .get(
            &format!("/api/v1/cylinders/{}/history", id_of(&cylinder)),
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let items = history["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{history}");
    assert_eq!(items[0]["event_type"], "REGISTERED");
    assert_eq!(items[0]["sequence"], 1);
    assert_eq!(items[0]["actor_role"], "DISPATCHER");
    assert_eq!(items[0]["to_status"], "IN_STOCK");
    assert_eq!(items[0]["details"]["serial_number"], "HI-0001");
    app.stop().await;
}

async fn lifecycle_follows_rules(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let id = id_of(&app.register_cylinder(&token, "LC-0001").await);
    let path = format!("/api/v1/cylinders/{id}/status");

    for next in ["FILLED", "IN_TRANSIT", "DELIVERED", "RETURNED", "IN_STOCK"] {
        let (status, body) = app
            .patch(
                &path,
                &token,
                json!({"status": next, "notes": "round trip"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "to {next}: {body}");
        assert_eq!(body["status"], next);
    }

    // IN_STOCK cannot jump to DELIVERED; the message names both states.
    let (status, body) = app
        .patch(&path, &token, json!({"status": "DELIVERED"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_of(&body).0, "invalid_transition");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("IN_STOCK") && message.contains("DELIVERED"),
        "{message}"
    );

    let (_, history) = app
        .get(&format!("/api/v1/cylinders/{id}/history"), &token)
        .await;
    let items = history["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 6, "{history}");
    assert_eq!(items[0]["event_type"], "STATUS_CHANGED");
    assert_eq!(items[0]["from_status"], "RETURNED");
    assert_eq!(items[0]["to_status"], "IN_STOCK");
    assert_eq!(items[0]["notes"], "round trip");
    app.stop().await;
}

async fn retired_is_final(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let id = id_of(&app.register_cylinder(&token, "RT-0001").await);
    let path = format!("/api/v1/cylinders/{id}/status");
    let (status, _) = app.patch(&path, &token, json!({"status": "RETIRED"})).await;
    assert_eq!(status, StatusCode::OK);

    for next in ["IN_STOCK", "FILLED", "MAINTENANCE", "LOST", "RETIRED"] {
        let (status, body) = app.patch(&path, &token, json!({"status": next})).await;
        assert_eq!(status, StatusCode::CONFLICT, "RETIRED to {next}: {body}");
    }
    let customer = app.create_user("retired.customer", Role::Customer).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/cylinders/{id}/assign"),
            &token,
            json!({"customer_id": customer.id}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    app.stop().await;
}

async fn expired_cannot_be_filled(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let mut body = cylinder_body("EX-0001");
    body["manufacture_date"] = json!("2010-01-01");
    body["expiry_date"] = json!("2020-01-01");
    let (status, cylinder) = app.post("/api/v1/cylinders", &token, body).await;
    assert_eq!(status, StatusCode::CREATED, "{cylinder}");
    assert_eq!(cylinder["is_expired"], true);

    let path = format!("/api/v1/cylinders/{}/status", id_of(&cylinder));
    let (status, body) = app.patch(&path, &token, json!({"status": "FILLED"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_of(&body).0, "requalification_overdue");
    let (status, _) = app
        .patch(&path, &token, json!({"status": "MAINTENANCE"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

async fn assign_checks_roles(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let customer = app.create_user("assign.customer", Role::Customer).await;
    let driver = app.create_user("assign.driver", Role::Driver).await;
    let id = id_of(&app.register_cylinder(&token, "AS-0001").await);
    let path = format!("/api/v1/cylinders/{id}/assign");

    let cases = [
        (json!({"customer_id": driver.id}), "customer_id"),
        (json!({"driver_id": customer.id}), "driver_id"),
        (json!({"driver_id": uuid::Uuid::new_v4()}), "driver_id"),
        (
            json!({"customer_id": customer.id, "driver_id": customer.id}),
            "driver_id",
        ),
    ];
    for (request, field) in cases {
        let (status, body) = app.post(&path, &token, request.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{request}: {body}"
        );
        assert_eq!(error_of(&body).1, field, "{request}: {body}");
    }

    // A rejected assignment changes nothing and leaves no history.
    let (_, cylinder) = app.get(&format!("/api/v1/cylinders/{id}"), &token).await;
    assert!(cylinder["customer_id"].is_null(), "{cylinder}");
    let (_, history) = app
        .get(&format!("/api/v1/cylinders/{id}/history"), &token)
        .await;
    assert_eq!(
        history["items"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );

    let (status, body) = app
        .post(
            &path,
            &token,
            json!({"customer_id": customer.id, "driver_id": driver.id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["customer_id"], customer.id.to_string());
    assert_eq!(body["driver_id"], driver.id.to_string());

    // A deactivated driver cannot take custody.
    let admin = app.user_with_token("assign.admin", Role::Admin).await.1;
    let (status, _) = app
        .patch(
            &format!("/api/v1/users/{}", driver.id),
            &admin,
            json!({"is_active": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let other = id_of(&app.register_cylinder(&token, "AS-0002").await);
    let (status, body) = app
        .post(
            &format!("/api/v1/cylinders/{other}/assign"),
            &token,
            json!({"driver_id": driver.id}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("active"),
        "{body}"
    );
    app.stop().await;
}

async fn assign_null_clears(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let customer = app.create_user("clear.customer", Role::Customer).await;
    let driver = app.create_user("clear.driver", Role::Driver).await;
    let id = id_of(&app.register_cylinder(&token, "CL-0001").await);
    let path = format!("/api/v1/cylinders/{id}/assign");

    let (status, _) = app
        .post(
            &path,
            &token,
            json!({"customer_id": customer.id, "driver_id": driver.id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.post(&path, &token, json!({"driver_id": null})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["driver_id"].is_null(), "{body}");
    assert_eq!(
        body["customer_id"],
        customer.id.to_string(),
        "absent field must stay"
    );

    let (status, body) = app
        .post(&path, &token, json!({"notes": "nothing to change"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    app.stop().await;
}

async fn list_filters_work(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let customer = app.create_user("filter.customer", Role::Customer).await;
    let driver = app.create_user("filter.driver", Role::Driver).await;

    let filled = id_of(&app.register_cylinder(&token, "FL-0001").await);
    app.register_cylinder(&token, "FL-0002").await;
    let mut expired_body = cylinder_body("FL-0003");
    expired_body["manufacture_date"] = json!("2010-01-01");
    expired_body["expiry_date"] = json!("2020-01-01");
    let (status, _) = app.post("/api/v1/cylinders", &token, expired_body).await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, _) = app
        .patch(
            &format!("/api/v1/cylinders/{filled}/status"),
            &token,
            json!({"status": "FILLED"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let assign = json!({"customer_id": customer.id, "driver_id": driver.id});
    let (status, _) = app
        .post(
            &format!("/api/v1/cylinders/{filled}/assign"),
            &token,
            assign,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let serials = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| {
                        item["serial_number"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let cases = [
        (
            "/api/v1/cylinders".to_string(),
            vec!["FL-0001", "FL-0002", "FL-0003"],
        ),
        (
            "/api/v1/cylinders?status=FILLED".to_string(),
            vec!["FL-0001"],
        ),
        (
            "/api/v1/cylinders?status=IN_STOCK".to_string(),
            vec!["FL-0002", "FL-0003"],
        ),
        (
            "/api/v1/cylinders?expired=true".to_string(),
            vec!["FL-0003"],
        ),
        (
            "/api/v1/cylinders?expired=false".to_string(),
            vec!["FL-0001", "FL-0002"],
        ),
        ("/api/v1/cylinders?tampered=true".to_string(), vec![]),
        (
            "/api/v1/cylinders?tampered=false".to_string(),
            vec!["FL-0001", "FL-0002", "FL-0003"],
        ),
        (
            format!("/api/v1/cylinders?customer_id={}", customer.id),
            vec!["FL-0001"],
        ),
        (
            format!("/api/v1/cylinders?driver_id={}", driver.id),
            vec!["FL-0001"],
        ),
        (
            format!("/api/v1/cylinders?driver_id={}&status=IN_STOCK", driver.id),
            vec![],
        ),
    ];
    for (path, expected) in cases {
        let (status, body) = app.get(&path, &token).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(serials(&body), expected, "{path}");
    }
    app.stop().await;
}

async fn list_pages(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    for index in 0..5 {
        app.register_cylinder(&token, &format!("PG-{index:04}"))
            .await;
    }
    let (_, first) = app.get("/api/v1/cylinders?per_page=2", &token).await;
    assert_eq!(first["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(first["has_more"], true);
    assert_eq!(first["items"][0]["serial_number"], "PG-0000");

    let (_, last) = app.get("/api/v1/cylinders?per_page=2&page=3", &token).await;
    assert_eq!(last["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(last["has_more"], false);
    assert_eq!(last["page"], 3);
    assert_eq!(last["items"][0]["serial_number"], "PG-0004");
    app.stop().await;
}

async fn history_pages_newest_first(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let id = id_of(&app.register_cylinder(&token, "HP-0001").await);
    for next in ["FILLED", "IN_STOCK", "FILLED"] {
        let (status, _) = app
            .patch(
                &format!("/api/v1/cylinders/{id}/status"),
                &token,
                json!({"status": next}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, first) = app
        .get(
            &format!("/api/v1/cylinders/{id}/history?per_page=3"),
            &token,
        )
        .await;
    let sequences: Vec<i64> = first["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item["sequence"].as_i64())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(sequences, vec![4, 3, 2]);
    assert_eq!(first["has_more"], true);
    let (_, second) = app
        .get(
            &format!("/api/v1/cylinders/{id}/history?per_page=3&page=2"),
            &token,
        )
        .await;
    assert_eq!(second["items"][0]["sequence"], 1);
    assert_eq!(second["has_more"], false);
    app.stop().await;
}

async fn unknown_cylinder_is_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = staff(&app).await;
    let missing = uuid::Uuid::new_v4();
    for path in [
        format!("/api/v1/cylinders/{missing}"),
        format!("/api/v1/cylinders/{missing}/history"),
    ] {
        let (status, body) = app.get(&path, &token).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(error_of(&body).0, "not_found");
    }
    let (status, _) = app
        .patch(
            &format!("/api/v1/cylinders/{missing}/status"),
            &token,
            json!({"status": "FILLED"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post(
            &format!("/api/v1/cylinders/{missing}/assign"),
            &token,
            json!({"driver_id": null}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}
