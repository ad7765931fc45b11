//! The access matrix, walked end to end: every role, and an anonymous
//! caller, against every endpoint, with the status each must get.
//!
//! | Action             | Customer | Driver | Dispatcher | Admin |
//! |--------------------|----------|--------|------------|-------|
//! | Scan a cylinder    | yes      | yes    | yes        | yes   |
//! | View own cylinders | yes      | yes    | yes        | yes   |
//! | View all cylinders | no       | no     | yes        | yes   |
//! | Register           | no       | no     | yes        | yes   |
//! | Update status      | no       | no     | yes        | yes   |
//! | Assign             | no       | no     | yes        | yes   |
//! | View history       | own only | own    | yes        | yes   |
//! | Manage users       | no       | no     | no         | yes   |

use cyltrack::domain::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Backend, TestApp, cylinder_body, on_both_backends};

on_both_backends!(
    matrix_walk,
    customer_sees_only_own_cylinders,
    driver_sees_only_custody
);

/// Records that the matrix requests act on.
struct Fixture {
    admin_token: String,
    /// Assigned to the test customer and in the test driver's custody.
    own_cylinder: String,
    /// Associated with no user.
    other_cylinder: String,
    customer_id: Uuid,
    driver_id: Uuid,
}

/// Each endpoint and the status expected for anonymous, customer, driver,
/// dispatcher and admin callers, in that order.
const CASES: &[(&str, [u16; 5])] = &[
    ("GET /api/v1/me", [401, 200, 200, 200, 200]),
    ("GET /api/v1/cylinders (own)", [401, 200, 200, 200, 200]),
    ("GET /api/v1/cylinders/{own}", [401, 200, 200, 200, 200]),
    ("GET /api/v1/cylinders/{other}", [401, 404, 404, 200, 200]),
    (
        "GET /api/v1/cylinders?customer_id={other}",
        [401, 403, 403, 200, 200],
    ),
    ("POST /api/v1/cylinders", [401, 403, 403, 201, 201]),
    (
        "PATCH /api/v1/cylinders/{id}/status",
        [401, 403, 403, 200, 200],
    ),
    (
        "POST /api/v1/cylinders/{id}/assign",
        [401, 403, 403, 200, 200],
    ),
    (
        "GET /api/v1/cylinders/{own}/history",
        [401, 200, 200, 200, 200],
    ),
    (
        "GET /api/v1/cylinders/{other}/history",
        [401, 404, 404, 200, 200],
    ),
    ("POST /api/v1/scans", [401, 201, 201, 201, 201]),
    ("POST /api/v1/scans/verify-token", [401, 200, 200, 200, 200]),
    (
        "GET /api/v1/cylinders/{own}/scans",
        [401, 200, 200, 200, 200],
    ),
    (
        "GET /api/v1/cylinders/{other}/scans",
        [401, 404, 404, 200, 200],
    ),
    (
        "POST /api/v1/cylinders/{id}/tamper",
        [401, 403, 403, 200, 200],
    ),
    (
        "POST /api/v1/cylinders/{id}/reissue-codes",
        [401, 403, 403, 200, 200],
    ),
    ("GET /api/v1/users", [401, 403, 403, 200, 200]),
    ("GET /api/v1/users/{id}", [401, 403, 403, 200, 200]),
    ("POST /api/v1/users", [401, 403, 403, 403, 201]),
    ("PATCH /api/v1/users/{id}", [401, 403, 403, 403, 200]),
    ("GET /api/v1/depots", [401, 403, 403, 200, 200]),
    ("POST /api/v1/depots", [401, 403, 403, 403, 201]),
];

async fn matrix_walk(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let fixture = build_fixture(&app).await;

    let mut tokens: Vec<Option<String>> = vec![None];
    for name in ["matrix.customer", "matrix.driver"] {
        let (status, body) = app.login(name, crate::helpers::PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        tokens.push(body["access_token"].as_str().map(str::to_string));
    }
    tokens.push(Some(
        app.user_with_token("matrix.dispatcher", Role::Dispatcher)
            .await
            .1,
    ));
    tokens.push(Some(fixture.admin_token.clone()));
    let callers = ["anonymous", "customer", "driver", "dispatcher", "admin"];

    for (case, expected) in CASES {
        for (index, token) in tokens.iter().enumerate() {
            let (status, body) = perform(&app, &fixture, case, index, token.as_deref()).await;
            assert_eq!(
                status.as_u16(),
                expected[index],
                "{case} as {}: {body}",
                callers[index]
            );
        }
    }
    app.stop().await;
}

async fn build_fixture(app: &TestApp) -> Fixture {
    let (_, admin_token) = app.user_with_token("matrix.admin", Role::Admin).await;
    let customer = app.create_user("matrix.customer", Role::Customer).await;
    let driver = app.create_user("matrix.driver", Role::Driver).await;

    let own = app.register_cylinder(&admin_token, "MX-OWN-1").await;
    let own_id = own["id"].as_str().unwrap_or_default().to_string();
    let assign = json!({"customer_id": customer.id, "driver_id": driver.id});
    let (status, body) = app
        .post(
            &format!("/api/v1/cylinders/{own_id}/assign"),
            &admin_token,
            assign,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let other = app.register_cylinder(&admin_token, "MX-OTHER-1").await;

    Fixture {
        admin_token,
        own_cylinder: own_id,
        other_cylinder: other["id"].as_str().unwrap_or_default().to_string(),
        customer_id: customer.id,
        driver_id: driver.id,
    }
}

/// Sends the request named by `case` as the caller with index `caller`.
/// Requests that change data act on records made for this caller alone, so
/// that one caller's success cannot change the next caller's outcome.
async fn perform(
    app: &TestApp,
    fixture: &Fixture,
    case: &str,
    caller: usize,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let fresh_cylinder = || async {
        let serial = format!(
            "MX-{}",
            Uuid::new_v4().simple().to_string()[..12].to_uppercase()
        );
        let body = app.register_cylinder(&fixture.admin_token, &serial).await;
        let text = |key: &str| body[key].as_str().unwrap_or_default().to_string();
        (text("id"), text("qr_code"))
    };
    let (method, path, body) = match case {
        "GET /api/v1/me" => (Method::GET, "/api/v1/me".to_string(), None),
        "GET /api/v1/cylinders (own)" => (Method::GET, "/api/v1/cylinders".to_string(), None),
        "GET /api/v1/cylinders/{own}" => (
            Method::GET,
            format!("/api/v1/cylinders/{}", fixture.own_cylinder),
            None,
        ),
        "GET /api/v1/cylinders/{other}" => (
            Method::GET,
            format!("/api/v1/cylinders/{}", fixture.other_cylinder),
            None,
        ),
        "GET /api/v1/cylinders?customer_id={other}" => {
            // Only staff may filter by another user's id.
            (
                Method::GET,
                format!("/api/v1/cylinders?customer_id={}", Uuid::new_v4()),
                None,
            )
        }
        "POST /api/v1/cylinders" => (
            Method::POST,
            "/api/v1/cylinders".to_string(),
            Some(cylinder_body(&format!("MX-NEW-{caller}"))),
        ),
        "POST /api/v1/scans" => {
            let (_, qr_code) = fresh_cylinder().await;
            (
                Method::POST,
                "/api/v1/scans".to_string(),
                Some(json!({"code": qr_code, "scan_type": "QR"})),
            )
        }
        "POST /api/v1/scans/verify-token" => (
            Method::POST,
            "/api/v1/scans/verify-token".to_string(),
            Some(json!({"token": "not-a-token"})),
        ),
        "GET /api/v1/cylinders/{own}/scans" => (
            Method::GET,
            format!("/api/v1/cylinders/{}/scans", fixture.own_cylinder),
            None,
        ),
        "GET /api/v1/cylinders/{other}/scans" => (
            Method::GET,
            format!("/api/v1/cylinders/{}/scans", fixture.other_cylinder),
            None,
        ),
        "POST /api/v1/cylinders/{id}/tamper" => {
            let (id, _) = fresh_cylinder().await;
            let body = json!({"is_tampered": true, "notes": "label peeling, sent for inspection"});
            (
                Method::POST,
                format!("/api/v1/cylinders/{id}/tamper"),
                Some(body),
            )
        }
        "POST /api/v1/cylinders/{id}/reissue-codes" => {
            let (id, _) = fresh_cylinder().await;
            (
                Method::POST,
                format!("/api/v1/cylinders/{id}/reissue-codes"),
                Some(json!({"reason": "damaged label"})),
            )
        }
        "PATCH /api/v1/cylinders/{id}/status" => {
            let (id, _) = fresh_cylinder().await;
            (
                Method::PATCH,
                format!("/api/v1/cylinders/{id}/status"),
                Some(json!({"status": "FILLED"})),
            )
        }
        "POST /api/v1/cylinders/{id}/assign" => {
            let (id, _) = fresh_cylinder().await;
            (
                Method::POST,
                format!("/api/v1/cylinders/{id}/assign"),
                Some(json!({"driver_id": fixture.driver_id})),
            )
        }
        "GET /api/v1/cylinders/{own}/history" => (
            Method::GET,
            format!("/api/v1/cylinders/{}/history", fixture.own_cylinder),
            None,
        ),
        "GET /api/v1/cylinders/{other}/history" => (
            Method::GET,
            format!("/api/v1/cylinders/{}/history", fixture.other_cylinder),
            None,
        ),
        "GET /api/v1/users" => (Method::GET, "/api/v1/users".to_string(), None),
        "GET /api/v1/users/{id}" => (
            Method::GET,
            format!("/api/v1/users/{}", fixture.customer_id),
            None,
        ),
        "POST /api/v1/users" => (
            Method::POST,
            "/api/v1/users".to_string(),
            Some(
                json!({"username": format!("made.by.{caller}"), "role": "CUSTOMER", "password": "another long password"}),
            ),
        ),
        "PATCH /api/v1/users/{id}" => (
            Method::PATCH,
            format!("/api/v1/users/{}", fixture.customer_id),
            Some(json!({"full_name": format!("Renamed {caller}")})),
        ),
        "GET /api/v1/depots" => (Method::GET, "/api/v1/depots".to_string(), None),
        "POST /api/v1/depots" => (
            Method::POST,
            "/api/v1/depots".to_string(),
            Some(
                json!({"name": format!("Depot {caller}"), "town": "Nakuru", "latitude": -0.3031, "longitude": 36.08}),
            ),
        ),
        other => panic!("no request for case {other}"),
    };
    app.send(method, &path, token, body).await
}

async fn customer_sees_only_own_cylinders(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let fixture = build_fixture(&app).await;
    let (_, body) = app.login("matrix.customer", crate::helpers::PASSWORD).await;
    let token = body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let (status, list) = app.get("/api/v1/cylinders", &token).await;
    assert_eq!(status, StatusCode::OK);
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["id"], fixture.own_cylinder.as_str());

    // A customer gets neither the codes nor the other parties with custody.
    for hidden in [
        "qr_code",
        "rfid_tag",
        "tamper_notes",
        "driver_id",
        "customer_id",
        "secret_key",
        "auth_hash",
    ] {
        assert!(
            items[0].get(hidden).is_none(),
            "customer sees {hidden}: {}",
            items[0]
        );
    }

    let (_, staff_list) = app.get("/api/v1/cylinders", &fixture.admin_token).await;
    assert_eq!(
        staff_list["items"].as_array().map(Vec::len),
        Some(2),
        "{staff_list}"
    );
    assert!(staff_list["items"][0]["qr_code"].is_string());
    assert!(staff_list["items"][0].get("secret_key").is_none());
    app.stop().await;
}

async fn driver_sees_only_custody(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let fixture = build_fixture(&app).await;
    let (_, body) = app.login("matrix.driver", crate::helpers::PASSWORD).await;
    let token = body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let (_, list) = app.get("/api/v1/cylinders", &token).await;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["customer_id"], fixture.customer_id.to_string());
    assert!(items[0].get("qr_code").is_none());

    // Moving the cylinder to another driver takes it out of this driver's view.
    let other_driver = app.create_user("matrix.driver2", Role::Driver).await;
    let reassign = json!({"driver_id": other_driver.id});
    let (status, _) = app
        .post(
            &format!("/api/v1/cylinders/{}/assign", fixture.own_cylinder),
            &fixture.admin_token,
            reassign,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .get(
            &format!("/api/v1/cylinders/{}", fixture.own_cylinder),
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

on_both_backends!(forbidden_before_body_checked, own_id_filter_allowed);

async fn forbidden_before_body_checked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, driver) = app.user_with_token("early.driver", Role::Driver).await;
    let id = Uuid::new_v4();
    let cases = [
        (Method::POST, "/api/v1/cylinders".to_string()),
        (Method::PATCH, format!("/api/v1/cylinders/{id}/status")),
        (Method::POST, format!("/api/v1/cylinders/{id}/assign")),
        (Method::POST, format!("/api/v1/cylinders/{id}/tamper")),
        (
            Method::POST,
            format!("/api/v1/cylinders/{id}/reissue-codes"),
        ),
        (Method::POST, "/api/v1/users".to_string()),
        (Method::PATCH, format!("/api/v1/users/{id}")),
        (Method::POST, "/api/v1/depots".to_string()),
    ];
    // An empty, a wrong-typed and a non-JSON body: the role is judged first.
    for body in [json!({}), json!({"status": 1}), json!("text")] {
        for (method, path) in &cases {
            let (status, response) = app
                .send(method.clone(), path, Some(&driver), Some(body.clone()))
                .await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{method} {path} with {body}: {response}"
            );
        }
    }
    app.stop().await;
}

async fn own_id_filter_allowed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let fixture = build_fixture(&app).await;
    let (_, body) = app.login("matrix.customer", crate::helpers::PASSWORD).await;
    let token = body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let (status, list) = app
        .get(
            &format!("/api/v1/cylinders?customer_id={}", fixture.customer_id),
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    let (status, _) = app
        .get(
            &format!("/api/v1/cylinders?driver_id={}", fixture.driver_id),
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.stop().await;
}
