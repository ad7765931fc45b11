//! Bad input of every kind. Each request gets its documented 4xx with an
//! `{"error": {"code", "message", "field"?}}` body that names the invalid
//! field and an `x-request-id` header, and none of them writes anything.

use chrono::{Duration, Months, Utc};
use cyltrack::domain::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Backend, PASSWORD, TestApp, count_items, cylinder_body, error_of, on_both_backends,
    sign_access_token,
};

on_both_backends!(
    malformed_json_is_400,
    wrong_types_name_field,
    missing_fields_name_field,
    unknown_fields_name_field,
    bad_text_names_field,
    bad_numbers_name_field,
    bad_dates_name_field,
    unknown_enum_values_rejected,
    enum_wrong_type_names_field,
    repeated_keys_name_field,
    bad_references_name_field,
    wrong_content_type_is_415,
    oversized_body_is_413,
    bad_path_ids_are_422,
    bad_query_values_rejected,
    unknown_query_parameters_rejected,
    bad_bearer_tokens_are_401,
    expired_access_token_is_401,
    unknown_route_is_json_404,
    wrong_method_is_json_405,
    duplicate_serial_is_409,
    duplicate_names_are_409,
);

/// The largest request body the API accepts, in bytes.
const BODY_LIMIT: usize = 64 * 1024;

/// A response: its status, its body and the headers these tests check.
#[derive(Debug, Default)]
struct Reply {
    status: StatusCode,
    /// The raw body, for assertion messages.
    text: String,
    /// The parsed body, `Value::Null` when it is not JSON.
    body: Value,
    request_id: Option<String>,
    www_authenticate: Option<String>,
}

/// Sends a request with exactly `headers` and `body`.
async fn send_raw(
    app: &TestApp,
    method: &Method,
    path: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
) -> Reply {
    let mut request = app.client.request(method.clone(), app.url(path));
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    if let Some(body) = body {
        request = request.body(body);
    }

    let sent = request.send().await;
    assert!(sent.is_ok(), "{method} {path}: request failed: {sent:?}");
    let Ok(response) = sent else {
        return Reply::default();
    };

    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let request_id = header("x-request-id");
    let www_authenticate = header("www-authenticate");

    let text = response.text().await.unwrap_or_default();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        request_id,
        www_authenticate,
    }
}

/// Asserts that `reply` is the error `status` with `code`, naming `field`
/// (or no field), in the documented body and with a request id.
fn assert_error(label: &str, reply: &Reply, status: StatusCode, code: &str, field: Option<&str>) {
    let text = &reply.text;
    assert_eq!(reply.status, status, "{label}: {text}");
    assert_eq!(error_of(&reply.body).0, code, "{label}: {text}");
    let error = &reply.body["error"];
    assert_eq!(
        error.get("field").and_then(Value::as_str),
        field,
        "{label}: {text}"
    );
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{label}: no message in {text}"
    );
    let keys: Vec<&String> = reply
        .body
        .as_object()
        .map(|object| object.keys().collect())
        .unwrap_or_default();
    assert_eq!(keys, ["error"], "{label}: {text}");
    assert!(
        reply.request_id.as_deref().is_some_and(|id| !id.is_empty()),
        "{label}: no x-request-id with {text}"
    );
}

/// One endpoint that takes a JSON body, with a body it accepts.
struct Endpoint {
    name: &'static str,
    method: Method,
    path: String,
    valid: Value,
}

/// A request body that must be rejected with 422 naming `field`.
struct BodyCase {
    label: String,
    method: Method,
    path: String,
    body: String,
    field: &'static str,
}

impl Endpoint {
    fn case(&self, description: &str, body: String, field: &'static str) -> BodyCase {
        BodyCase {
            label: format!("{}: {description}", self.name),
            method: self.method.clone(),
            path: self.path.clone(),
            body,
            field,
        }
    }

    /// Builds a case from the valid body with `key` set to `value`. The
    /// error must name `field`.
    fn with(&self, key: &str, value: Value, field: &'static str) -> BodyCase {
        let mut body = self.valid.clone();
        body[key] = value.clone();
        self.case(&format!("{key} = {value}"), body.to_string(), field)
    }

    /// Builds a case from the valid body with `key` set to `value`. The
    /// error must name `key`.
    fn set(&self, key: &'static str, value: Value) -> BodyCase {
        self.with(key, value, key)
    }

    /// Builds a case from the valid body without the required `key`.
    fn without(&self, key: &'static str) -> BodyCase {
        let mut body = self.valid.clone();
        if let Some(object) = body.as_object_mut() {
            object.remove(key);
        }
        self.case(&format!("without {key}"), body.to_string(), key)
    }
}

/// Every endpoint that takes a JSON body.
struct Endpoints {
    register: Endpoint,
    create_user: Endpoint,
    update_user: Endpoint,
    depot: Endpoint,
    status: Endpoint,
    assign: Endpoint,
    login: Endpoint,
}

impl Endpoints {
    fn all(&self) -> [&Endpoint; 7] {
        [
            &self.register,
            &self.create_user,
            &self.update_user,
            &self.depot,
            &self.status,
            &self.assign,
            &self.login,
        ]
    }
}

/// A server with an admin, a customer, a driver and one registered
/// cylinder.
struct Fixture {
    app: TestApp,
    admin: String,
    admin_id: Uuid,
    customer_id: Uuid,
    driver_id: Uuid,
    cylinder_id: String,
}

impl Fixture {
    async fn start(backend: Backend) -> Self {
        let app = TestApp::spawn(backend).await;
        let (admin_user, admin) = app.user_with_token("admin", Role::Admin).await;
        let customer = app.create_user("amina", Role::Customer).await;
        let driver = app.create_user("baraka", Role::Driver).await;
        let cylinder = app.register_cylinder(&admin, "KG-13/0001").await;
        let cylinder_id = cylinder["id"].as_str().unwrap_or_default().to_string();
        Self {
            app,
            admin,
            admin_id: admin_user.id,
            customer_id: customer.id,
            driver_id: driver.id,
            cylinder_id,
        }
    }

    fn endpoints(&self) -> Endpoints {
        let cylinder = format!("/api/v1/cylinders/{}", self.cylinder_id);
        Endpoints {
            register: Endpoint {
                name: "register cylinder",
                method: Method::POST,
                path: "/api/v1/cylinders".into(),
                valid: cylinder_body("KG-13/0100"),
            },
            create_user: Endpoint {
                name: "create user",
                method: Method::POST,
                path: "/api/v1/users".into(),
                valid: json!({
                    "username": "newuser",
                    "full_name": "New User",
                    "email": "new@example.co.ke",
                    "phone": "+254712345678",
                    "role": "CUSTOMER",
                    "password": "a long new password",
                }),
            },
            update_user: Endpoint {
                name: "update user",
                method: Method::PATCH,
                path: format!("/api/v1/users/{}", self.customer_id),
                valid: json!({"full_name": "Amina Wekesa", "phone": "0712 345 678"}),
            },
            depot: Endpoint {
                name: "create depot",
                method: Method::POST,
                path: "/api/v1/depots".into(),
                valid: json!({
                    "name": "Thika Road",
                    "town": "Nairobi",
                    "latitude": -1.22,
                    "longitude": 36.89,
                }),
            },
            status: Endpoint {
                name: "change status",
                method: Method::PATCH,
                path: format!("{cylinder}/status"),
                valid: json!({"status": "FILLED", "notes": "filled at the plant"}),
            },
            assign: Endpoint {
                name: "assign cylinder",
                method: Method::POST,
                path: format!("{cylinder}/assign"),
                valid: json!({
                    "customer_id": self.customer_id,
                    "driver_id": self.driver_id,
                    "notes": "out for delivery",
                }),
            },
            login: Endpoint {
                name: "login",
                method: Method::POST,
                path: "/api/v1/auth/login".into(),
                valid: json!({"username": "admin", "password": PASSWORD}),
            },
        }
    }

    /// Sends `body` with the admin's token and `content_type`, if any.
    async fn send_body(
        &self,
        method: &Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> Reply {
        let mut headers = vec![("authorization", format!("Bearer {}", self.admin))];
        if let Some(content_type) = content_type {
            headers.push(("content-type", content_type.to_string()));
        }
        send_raw(&self.app, method, path, &headers, Some(body.into())).await
    }

    async fn send_json(&self, method: &Method, path: &str, body: impl Into<Vec<u8>>) -> Reply {
        self.send_body(method, path, Some("application/json"), body)
            .await
    }

    /// Reads everything a rejected request could have written: the
    /// cylinders, users, depots and the fixture cylinder's history.
    async fn snapshot(&self) -> Value {
        let paths = [
            "/api/v1/cylinders?per_page=200".to_string(),
            "/api/v1/users?per_page=200".to_string(),
            "/api/v1/depots".to_string(),
            format!(
                "/api/v1/cylinders/{}/history?per_page=200",
                self.cylinder_id
            ),
        ];
        let mut state = serde_json::Map::new();
        for path in paths {
            let (status, body) = self.app.get(&path, &self.admin).await;
            assert_eq!(status, StatusCode::OK, "snapshot {path}: {body}");
            state.insert(path, body);
        }
        Value::Object(state)
    }

    async fn assert_unchanged(&self, label: &str, before: &Value) {
        let after = self.snapshot().await;
        assert!(&after == before, "{label} wrote something: {after}");
    }

    /// Sends each case and checks for a 422 naming its field, with nothing
    /// written.
    async fn expect_invalid(&self, cases: &[BodyCase]) {
        let before = self.snapshot().await;
        for case in cases {
            let reply = self
                .send_json(&case.method, &case.path, case.body.as_bytes())
                .await;
            assert_error(
                &case.label,
                &reply,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some(case.field),
            );
            self.assert_unchanged(&case.label, &before).await;
        }
    }
}

async fn malformed_json_is_400(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let before = fixture.snapshot().await;

    for endpoint in endpoints.all() {
        let valid = endpoint.valid.to_string();
        let bodies: [(&str, Vec<u8>); 9] = [
            ("truncated", valid.as_bytes()[..valid.len() / 2].to_vec()),
            ("not JSON", b"not json".to_vec()),
            ("trailing garbage", format!("{valid} extra").into_bytes()),
            ("two objects", format!("{valid}{valid}").into_bytes()),
            ("empty", Vec::new()),
            ("whitespace only", b"  \n ".to_vec()),
            ("single quotes", b"{'brand': 'Jiko Gas'}".to_vec()),
            (
                "trailing comma",
                format!("{},}}", &valid[..valid.len() - 1]).into_bytes(),
            ),
            ("invalid UTF-8", b"{\"\xff\xfe\": 1}".to_vec()),
        ];
        for (description, body) in bodies {
            let label = format!("{}: {description}", endpoint.name);
            let reply = fixture
                .send_json(&endpoint.method, &endpoint.path, body)
                .await;
            assert_error(
                &label,
                &reply,
                StatusCode::BAD_REQUEST,
                "malformed_json",
                None,
            );
            fixture.assert_unchanged(&label, &before).await;
        }
    }
    fixture.app.stop().await;
}

async fn wrong_types_name_field(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let cases = [
        endpoints.register.set("capacity_kg", json!("13")),
        endpoints.register.set("capacity_kg", json!(true)),
        endpoints.register.set("serial_number", json!(42)),
        endpoints.register.set("brand", Value::Null),
        endpoints.register.set("brand", json!(["Jiko Gas"])),
        endpoints
            .register
            .set("manufacture_date", json!(20_220_301)),
        endpoints.register.set("depot_id", json!("depot-1")),
        endpoints
            .create_user
            .set("username", json!({"name": "newuser"})),
        endpoints
            .create_user
            .set("password", json!(1_234_567_890_123_u64)),
        endpoints.create_user.set("email", json!(5)),
        endpoints.create_user.set("full_name", Value::Null),
        endpoints.update_user.set("is_active", json!("yes")),
        endpoints.update_user.set("email", json!(5)),
        endpoints.status.set("status", json!({"name": "FILLED"})),
        endpoints.status.set("notes", json!(7)),
        endpoints.assign.set("customer_id", json!("not-a-uuid")),
        endpoints.assign.set("driver_id", json!(12)),
        endpoints.assign.set("notes", json!(false)),
        endpoints.depot.set("latitude", json!("north")),
        endpoints.depot.set("name", json!(1)),
        endpoints.login.set("username", json!(5)),
        endpoints.login.set("password", Value::Null),
    ];
    fixture.expect_invalid(&cases).await;
    fixture.app.stop().await;
}

async fn missing_fields_name_field(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let refresh = Endpoint {
        name: "refresh",
        method: Method::POST,
        path: "/api/v1/auth/refresh".into(),
        valid: json!({}),
    };
    let mut cases = vec![
        endpoints.register.without("serial_number"),
        endpoints.register.without("brand"),
        endpoints.register.without("capacity_kg"),
        endpoints.register.without("manufacture_date"),
        endpoints.register.without("expiry_date"),
        endpoints.create_user.without("username"),
        endpoints.create_user.without("role"),
        endpoints.create_user.without("password"),
        endpoints.status.without("status"),
        endpoints.depot.without("name"),
        endpoints.depot.without("town"),
        endpoints.depot.without("latitude"),
        endpoints.depot.without("longitude"),
        endpoints.login.without("username"),
        endpoints.login.without("password"),
        refresh.case("empty object", "{}".into(), "refresh_token"),
    ];
    // Assigning needs at least one of the two parties.
    cases.push(
        endpoints
            .assign
            .case("empty object", "{}".into(), "customer_id"),
    );
    cases.push(endpoints.assign.case(
        "notes only",
        json!({"notes": "no one"}).to_string(),
        "customer_id",
    ));
    fixture.expect_invalid(&cases).await;
    fixture.app.stop().await;
}

async fn unknown_fields_name_field(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let admin = json!(fixture.admin_id);
    let sneaked = [
        (&endpoints.register, "role", json!("ADMIN")),
        (&endpoints.register, "owner_id", admin.clone()),
        (&endpoints.register, "secret_key", json!("00ff00ff")),
        (&endpoints.register, "is_active", json!(true)),
        (&endpoints.register, "qr_code", json!("QR-FORGED")),
        (&endpoints.register, "is_tampered", json!(false)),
        (&endpoints.register, "status", json!("FILLED")),
        (&endpoints.register, "id", json!(Uuid::new_v4())),
        (&endpoints.create_user, "is_active", json!(false)),
        (&endpoints.create_user, "owner_id", admin.clone()),
        (
            &endpoints.create_user,
            "password_hash",
            json!("$argon2id$forged"),
        ),
        (&endpoints.create_user, "secret_key", json!("00ff00ff")),
        (&endpoints.create_user, "id", json!(Uuid::new_v4())),
        (&endpoints.update_user, "username", json!("renamed")),
        (
            &endpoints.update_user,
            "password_hash",
            json!("$argon2id$forged"),
        ),
        (&endpoints.update_user, "owner_id", admin.clone()),
        (&endpoints.status, "role", json!("ADMIN")),
        (&endpoints.status, "secret_key", json!("00ff00ff")),
        (&endpoints.status, "is_tampered", json!(false)),
        (&endpoints.status, "is_active", json!(true)),
        (&endpoints.status, "owner_id", admin.clone()),
        (&endpoints.assign, "role", json!("ADMIN")),
        (&endpoints.assign, "status", json!("DELIVERED")),
        (&endpoints.assign, "owner_id", admin.clone()),
        (&endpoints.assign, "is_active", json!(true)),
        (&endpoints.depot, "owner_id", admin.clone()),
        (&endpoints.depot, "is_active", json!(true)),
        (&endpoints.login, "role", json!("ADMIN")),
        (&endpoints.login, "is_active", json!(true)),
    ];
    let cases: Vec<BodyCase> = sneaked
        .into_iter()
        .map(|(endpoint, key, value)| {
            let mut body = endpoint.valid.clone();
            body[key] = value;
            endpoint.case(&format!("with {key}"), body.to_string(), key)
        })
        .collect();
    fixture.expect_invalid(&cases).await;
    fixture.app.stop().await;
}

async fn bad_text_names_field(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let long = |length: usize| json!("x".repeat(length));
    let cases = [
        endpoints
            .register
            .set("serial_number", json!("A".repeat(41))),
        endpoints.register.set("serial_number", json!("AB 123")),
        endpoints.register.set("serial_number", json!("AB")),
        endpoints.register.set("serial_number", json!("")),
        endpoints.register.set("serial_number", json!("KG_13#0001")),
        endpoints.register.set("brand", json!("")),
        endpoints.register.set("brand", json!("   ")),
        endpoints.register.set("brand", long(61)),
        endpoints.register.set("brand", json!("K-Gas\u{7}")),
        endpoints.create_user.set("username", json!("ab")),
        endpoints.create_user.set("username", json!("has space")),
        endpoints.create_user.set("username", json!("")),
        endpoints.create_user.set("username", long(151)),
        endpoints.create_user.set("password", json!("123456789")),
        endpoints.create_user.set("password", json!("")),
        endpoints.create_user.set("password", long(257)),
        endpoints.create_user.set("full_name", long(151)),
        endpoints.create_user.set("email", json!("no-at-sign")),
        endpoints.create_user.set("email", json!("ops@localhost")),
        endpoints.create_user.set("phone", json!("12345")),
        endpoints.update_user.set("password", json!("too short")),
        endpoints.update_user.set("full_name", long(151)),
        endpoints.update_user.set("email", json!("x")),
        endpoints.update_user.set("phone", json!("+0712345678")),
        endpoints.status.set("notes", long(1001)),
        endpoints.assign.set("notes", long(1001)),
        endpoints.depot.set("name", json!("")),
        endpoints.depot.set("town", long(101)),
        endpoints.login.set("username", json!("")),
        endpoints.login.set("username", long(151)),
        endpoints.login.set("password", json!("")),
        endpoints.login.set("password", long(257)),
    ];
    fixture.expect_invalid(&cases).await;
    fixture.app.stop().await;
}

async fn bad_numbers_name_field(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let cases = [
        endpoints.register.set("capacity_kg", json!(0)),
        endpoints.register.set("capacity_kg", json!(101)),
        endpoints.register.set("capacity_kg", json!(6.25)),
        endpoints.register.set("capacity_kg", json!(-13)),
        endpoints.register.set("capacity_kg", json!(0.4)),
        endpoints.register.set("capacity_kg", json!(100.05)),
        endpoints.depot.set("latitude", json!(91)),
        endpoints.depot.set("latitude", json!(-90.5)),
        endpoints.depot.set("longitude", json!(181)),
        endpoints.depot.set("longitude", json!(-180.01)),
    ];
    fixture.expect_invalid(&cases).await;
    fixture.app.stop().await;
}

async fn bad_dates_name_field(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let today = Utc::now().date_naive();
    let tomorrow = today + Duration::days(1);
    let sixteen_years = today + Months::new(16 * 12);
    let dates = |manufacture: Value, expiry: Value, description: &str, field| {
        let mut body = endpoints.register.valid.clone();
        body["manufacture_date"] = manufacture;
        body["expiry_date"] = expiry;
        endpoints
            .register
            .case(description, body.to_string(), field)
    };
    let cases = [
        dates(
            json!(tomorrow),
            json!("2032-03-01"),
            "made tomorrow",
            "manufacture_date",
        ),
        dates(
            json!("1949-12-31"),
            json!("2032-03-01"),
            "made before 1950",
            "manufacture_date",
        ),
        dates(
            json!("2022-03-01"),
            json!("2021-03-01"),
            "expires before it was made",
            "expiry_date",
        ),
        dates(
            json!("2022-03-01"),
            json!("2022-03-01"),
            "expires the day it was made",
            "expiry_date",
        ),
        dates(
            json!("2022-03-01"),
            json!(sixteen_years),
            "expires in sixteen years",
            "expiry_date",
        ),
        endpoints
            .register
            .set("manufacture_date", json!("2022-02-30")),
        endpoints
            .register
            .set("manufacture_date", json!("01/03/2022")),
        endpoints.register.set("manufacture_date", json!("")),
        endpoints.register.set("expiry_date", json!("next year")),
        endpoints
            .register
            .set("expiry_date", json!("2032-03-01T00:00:00Z")),
    ];
    fixture.expect_invalid(&cases).await;
    fixture.app.stop().await;
}

async fn unknown_enum_values_rejected(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let cases = [
        endpoints.status.set("status", json!("BROKEN")),
        endpoints.status.set("status", json!("")),
        endpoints.create_user.set("role", json!("ROOT")),
        endpoints.create_user.set("role", json!("SUPERUSER")),
        endpoints.create_user.set("role", json!("")),
        endpoints.update_user.set("role", json!("ROOT")),
    ];
    fixture.expect_invalid(&cases).await;
    fixture.app.stop().await;
}

async fn enum_wrong_type_names_field(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let cases = [
        endpoints.create_user.set("role", json!(3)),
        endpoints.create_user.set("role", Value::Null),
        endpoints.create_user.set("role", json!(true)),
        endpoints.create_user.set("role", json!(["ADMIN"])),
        endpoints.update_user.set("role", json!(1)),
        endpoints.status.set("status", json!(1)),
        endpoints.status.set("status", Value::Null),
        endpoints.status.set("status", json!(["FILLED"])),
    ];
    fixture.expect_invalid(&cases).await;
    fixture.app.stop().await;
}

async fn repeated_keys_name_field(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    // Appends `key` to the valid body a second time.
    let repeated = |endpoint: &Endpoint, key: &'static str, value: Value| {
        let valid = endpoint.valid.to_string();
        let body = format!("{},\"{key}\":{value}}}", &valid[..valid.len() - 1]);
        endpoint.case(&format!("{key} twice"), body, key)
    };
    let cases = [
        repeated(&endpoints.register, "serial_number", json!("KG-13/0101")),
        repeated(&endpoints.create_user, "role", json!("ADMIN")),
        repeated(&endpoints.status, "status", json!("LOST")),
    ];
    fixture.expect_invalid(&cases).await;

    let queries = [
        ("/api/v1/cylinders?page=1&page=2".to_string(), "page"),
        ("/api/v1/users?role=CUSTOMER&role=ADMIN".to_string(), "role"),
    ];
    expect_bad_queries(&fixture, &queries).await;
    fixture.app.stop().await;
}

async fn bad_references_name_field(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let former = fixture.app.create_user("chebet", Role::Customer).await;
    let (status, body) = fixture
        .app
        .patch(
            &format!("/api/v1/users/{}", former.id),
            &fixture.admin,
            json!({"is_active": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "deactivate chebet: {body}");

    let assign = |customer: Option<Uuid>, driver: Option<Uuid>, description: &str, field| {
        let mut body = json!({"notes": "bad reference"});
        if let Some(customer) = customer {
            body["customer_id"] = json!(customer);
        }
        if let Some(driver) = driver {
            body["driver_id"] = json!(driver);
        }
        endpoints.assign.case(description, body.to_string(), field)
    };
    let (admin, customer, driver) = (fixture.admin_id, fixture.customer_id, fixture.driver_id);
    let cases = [
        assign(Some(admin), None, "customer is an admin", "customer_id"),
        assign(Some(driver), None, "customer is a driver", "customer_id"),
        assign(None, Some(customer), "driver is a customer", "driver_id"),
        assign(
            Some(Uuid::new_v4()),
            None,
            "no such customer",
            "customer_id",
        ),
        assign(None, Some(Uuid::new_v4()), "no such driver", "driver_id"),
        assign(Some(former.id), None, "deactivated customer", "customer_id"),
        // The valid half must not be written either.
        assign(
            Some(customer),
            Some(admin),
            "driver is an admin",
            "driver_id",
        ),
        endpoints.register.set("depot_id", json!(Uuid::new_v4())),
    ];
    fixture.expect_invalid(&cases).await;
    fixture.app.stop().await;
}

async fn wrong_content_type_is_415(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let before = fixture.snapshot().await;

    // The bodies are valid, so only the media type is wrong.
    for endpoint in endpoints.all() {
        let body = endpoint.valid.to_string();
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonx"),
            Some("text/json"),
        ] {
            let label = format!("{}: Content-Type {content_type:?}", endpoint.name);
            let reply = fixture
                .send_body(
                    &endpoint.method,
                    &endpoint.path,
                    content_type,
                    body.as_bytes(),
                )
                .await;
            assert_error(
                &label,
                &reply,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                None,
            );
            fixture.assert_unchanged(&label, &before).await;
        }
    }

    // The same bodies as JSON succeed, so the media type was the only fault.
    for endpoint in endpoints.all() {
        let reply = fixture
            .send_body(
                &endpoint.method,
                &endpoint.path,
                Some("application/json; charset=utf-8"),
                endpoint.valid.to_string(),
            )
            .await;
        assert!(
            reply.status.is_success(),
            "{} as JSON: {} {}",
            endpoint.name,
            reply.status,
            reply.text
        );
    }
    fixture.app.stop().await;
}

async fn oversized_body_is_413(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let before = fixture.snapshot().await;

    for endpoint in endpoints.all() {
        let mut body = endpoint.valid.clone();
        body["padding"] = json!("x".repeat(BODY_LIMIT));
        let label = format!("{}: {} bytes", endpoint.name, body.to_string().len());
        let reply = fixture
            .send_json(&endpoint.method, &endpoint.path, body.to_string())
            .await;
        assert_error(
            &label,
            &reply,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        );
        fixture.assert_unchanged(&label, &before).await;
    }

    // At exactly the limit the body is read and validated on its content.
    let status = &endpoints.status;
    let prefix = r#"{"status": "FILLED", "notes": ""#;
    let sized = |length: usize| {
        let notes = "n".repeat(length - prefix.len() - 2);
        format!("{prefix}{notes}\"}}")
    };
    let at_limit = sized(BODY_LIMIT);
    let reply = fixture
        .send_json(&status.method, &status.path, at_limit.clone())
        .await;
    assert_error(
        "body of exactly 64 KiB",
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("notes"),
    );
    let reply = fixture
        .send_json(&status.method, &status.path, sized(BODY_LIMIT + 1))
        .await;
    assert_error(
        "body of 64 KiB and one byte",
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
    fixture
        .assert_unchanged("bodies at the limit", &before)
        .await;
    fixture.app.stop().await;
}

async fn bad_path_ids_are_422(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let before = fixture.snapshot().await;
    let status_body = endpoints.status.valid.to_string();
    let assign_body = endpoints.assign.valid.to_string();
    let user_body = endpoints.update_user.valid.to_string();
    let cases = [
        (
            Method::GET,
            "/api/v1/cylinders/not-a-uuid".to_string(),
            None,
        ),
        (Method::GET, "/api/v1/cylinders/12345".to_string(), None),
        (Method::GET, "/api/v1/cylinders/%FF".to_string(), None),
        (
            Method::GET,
            format!("/api/v1/cylinders/{}x", fixture.cylinder_id),
            None,
        ),
        (
            Method::GET,
            "/api/v1/cylinders/not-a-uuid/history".to_string(),
            None,
        ),
        (
            Method::PATCH,
            "/api/v1/cylinders/not-a-uuid/status".to_string(),
            Some(&status_body),
        ),
        (
            Method::POST,
            "/api/v1/cylinders/not-a-uuid/assign".to_string(),
            Some(&assign_body),
        ),
        (Method::GET, "/api/v1/users/abc".to_string(), None),
        (
            Method::PATCH,
            "/api/v1/users/abc".to_string(),
            Some(&user_body),
        ),
    ];
    for (method, path, body) in cases {
        let label = format!("{method} {path}");
        let reply = match body {
            Some(body) => fixture.send_json(&method, &path, body.as_bytes()).await,
            None => {
                let headers = [("authorization", format!("Bearer {}", fixture.admin))];
                send_raw(&fixture.app, &method, &path, &headers, None).await
            }
        };
        assert_error(
            &label,
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("id"),
        );
        fixture.assert_unchanged(&label, &before).await;
    }
    fixture.app.stop().await;
}

/// Sends GET requests with the admin's token and checks each for a 422
/// naming its parameter.
async fn expect_bad_queries(fixture: &Fixture, cases: &[(String, &str)]) {
    for (path, field) in cases {
        let (status, body) = fixture.app.get(path, &fixture.admin).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
        assert_eq!(
            error_of(&body),
            ("validation_failed".to_string(), (*field).to_string()),
            "{path}: {body}"
        );
    }
}

async fn bad_query_values_rejected(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let history = format!("/api/v1/cylinders/{}/history", fixture.cylinder_id);
    let cases: Vec<(String, &str)> = [
        ("/api/v1/cylinders?per_page=0", "per_page"),
        ("/api/v1/cylinders?per_page=1000", "per_page"),
        ("/api/v1/cylinders?per_page=201", "per_page"),
        ("/api/v1/cylinders?per_page=-1", "per_page"),
        ("/api/v1/cylinders?page=abc", "page"),
        ("/api/v1/cylinders?page=0", "page"),
        ("/api/v1/cylinders?page=1.5", "page"),
        ("/api/v1/cylinders?page=10001", "page"),
        ("/api/v1/cylinders?page=99999999999", "page"),
        ("/api/v1/cylinders?tampered=maybe", "tampered"),
        ("/api/v1/cylinders?tampered=", "tampered"),
        ("/api/v1/cylinders?expired=soon", "expired"),
        ("/api/v1/cylinders?status=BROKEN", "status"),
        ("/api/v1/cylinders?customer_id=abc", "customer_id"),
        ("/api/v1/cylinders?driver_id=42", "driver_id"),
        ("/api/v1/cylinders?depot_id=x", "depot_id"),
        ("/api/v1/users?role=ROOT", "role"),
        ("/api/v1/users?active=maybe", "active"),
        ("/api/v1/users?per_page=0", "per_page"),
        ("/api/v1/users?page=abc", "page"),
    ]
    .into_iter()
    .map(|(path, field)| (path.to_string(), field))
    .chain([
        (format!("{history}?per_page=0"), "per_page"),
        (format!("{history}?per_page=1000"), "per_page"),
        (format!("{history}?page=abc"), "page"),
    ])
    .collect();
    expect_bad_queries(&fixture, &cases).await;
    fixture.app.stop().await;
}

// NOTE: endpoints without query parameters (depots, me, one cylinder, one
// user) ignore the query string and return 200, so they are not listed here.
async fn unknown_query_parameters_rejected(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let history = format!("/api/v1/cylinders/{}/history", fixture.cylinder_id);
    let cases: Vec<(String, &str)> = [
        ("/api/v1/cylinders?owner=me", "owner"),
        ("/api/v1/cylinders?secret_key=1", "secret_key"),
        ("/api/v1/cylinders?sort=serial_number", "sort"),
        ("/api/v1/cylinders?status=FILLED&limit=5", "limit"),
        ("/api/v1/users?is_admin=true", "is_admin"),
        ("/api/v1/users?password_hash=x", "password_hash"),
    ]
    .into_iter()
    .map(|(path, field)| (path.to_string(), field))
    .chain([
        (format!("{history}?status=FILLED"), "status"),
        (format!("{history}?offset=10"), "offset"),
    ])
    .collect();
    expect_bad_queries(&fixture, &cases).await;
    fixture.app.stop().await;
}

async fn bad_bearer_tokens_are_401(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let (_, tokens) = fixture.app.login("admin", PASSWORD).await;
    let refresh = tokens["refresh_token"].as_str().unwrap_or_default();
    let access = &fixture.admin;
    let before = fixture.snapshot().await;

    let cases: [(&str, Option<String>, &str); 11] = [
        ("no header", None, "authentication_required"),
        ("garbage", Some("Bearer garbage".into()), "invalid_token"),
        (
            "Basic scheme",
            Some("Basic YWRtaW46YSBsb25nIHRlc3QgcGFzc3dvcmQ=".into()),
            "invalid_token",
        ),
        (
            "Basic scheme with a valid token",
            Some(format!("Basic {access}")),
            "invalid_token",
        ),
        (
            "Token scheme",
            Some(format!("Token {access}")),
            "invalid_token",
        ),
        ("no scheme", Some(access.clone()), "invalid_token"),
        ("scheme only", Some("Bearer".into()), "invalid_token"),
        ("empty token", Some("Bearer ".into()), "invalid_token"),
        (
            "altered signature",
            Some(format!("Bearer {access}x")),
            "invalid_token",
        ),
        (
            "refresh token",
            Some(format!("Bearer {refresh}")),
            "invalid_token",
        ),
        (
            "over-long token",
            Some(format!("Bearer {}", "a".repeat(5000))),
            "invalid_token",
        ),
    ];
    let register = cylinder_body("KG-13/0200").to_string();
    for (description, authorization, code) in cases {
        let mut headers = vec![("content-type", "application/json".to_string())];
        if let Some(authorization) = authorization {
            headers.push(("authorization", authorization));
        }
        let requests = [
            (Method::GET, "/api/v1/me", None),
            (
                Method::POST,
                "/api/v1/cylinders",
                Some(register.as_bytes().to_vec()),
            ),
        ];
        for (method, path, body) in requests {
            let label = format!("{description}: {method} {path}");
            let reply = send_raw(&fixture.app, &method, path, &headers, body).await;
            assert_error(&label, &reply, StatusCode::UNAUTHORIZED, code, None);
            assert_eq!(
                reply.www_authenticate.as_deref(),
                Some("Bearer"),
                "{label}: {}",
                reply.text
            );
        }
        fixture.assert_unchanged(description, &before).await;
    }
    fixture.app.stop().await;
}

async fn expired_access_token_is_401(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let now = Utc::now();

    // A token signed the same way now is accepted, so the key matches.
    let fresh = sign_access_token(fixture.admin_id, now);
    let (status, body) = fixture.app.get("/api/v1/me", &fresh).await;
    assert_eq!(status, StatusCode::OK, "fresh token: {body}");

    let before = fixture.snapshot().await;
    let cases = [
        (
            "expired an hour ago",
            sign_access_token(fixture.admin_id, now - Duration::hours(2)),
        ),
        (
            "not valid for another hour",
            sign_access_token(fixture.admin_id, now + Duration::hours(1)),
        ),
        (
            "for an unknown user",
            sign_access_token(Uuid::new_v4(), now),
        ),
    ];
    let register = cylinder_body("KG-13/0300").to_string();
    for (description, token) in cases {
        let headers = [
            ("authorization", format!("Bearer {token}")),
            ("content-type", "application/json".to_string()),
        ];
        let requests = [
            (Method::GET, "/api/v1/me", None),
            (
                Method::POST,
                "/api/v1/cylinders",
                Some(register.as_bytes().to_vec()),
            ),
        ];
        for (method, path, body) in requests {
            let label = format!("{description}: {method} {path}");
            let reply = send_raw(&fixture.app, &method, path, &headers, body).await;
            assert_error(
                &label,
                &reply,
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                None,
            );
        }
        fixture.assert_unchanged(description, &before).await;
    }
    fixture.app.stop().await;
}

async fn unknown_route_is_json_404(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let before = fixture.snapshot().await;
    let body = cylinder_body("KG-13/0400").to_string();
    let cases = [
        (Method::GET, "/api/v1/nope".to_string()),
        (Method::GET, "/api/v2/cylinders".to_string()),
        (Method::GET, "/api/v1/cylinders/".to_string()),
        (
            Method::GET,
            format!("/api/v1/cylinders/{}/unknown", fixture.cylinder_id),
        ),
        (Method::POST, "/api/v1/cylinder".to_string()),
        (Method::GET, "/".to_string()),
    ];
    for (method, path) in cases {
        for token in [Some(fixture.admin.as_str()), None] {
            let label = format!("{method} {path} with token {}", token.is_some());
            let mut headers = vec![("content-type", "application/json".to_string())];
            if let Some(token) = token {
                headers.push(("authorization", format!("Bearer {token}")));
            }
            let reply = send_raw(
                &fixture.app,
                &method,
                &path,
                &headers,
                Some(body.clone().into_bytes()),
            )
            .await;
            assert_error(&label, &reply, StatusCode::NOT_FOUND, "not_found", None);
        }
    }
    fixture.assert_unchanged("unknown routes", &before).await;
    fixture.app.stop().await;
}

async fn wrong_method_is_json_405(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let before = fixture.snapshot().await;
    let cylinder = format!("/api/v1/cylinders/{}", fixture.cylinder_id);
    let cases = [
        (Method::DELETE, "/api/v1/cylinders".to_string(), None),
        (Method::DELETE, cylinder.clone(), None),
        (
            Method::PUT,
            cylinder.clone(),
            Some(cylinder_body("KG-13/0001").to_string()),
        ),
        (
            Method::PUT,
            format!("{cylinder}/status"),
            Some(endpoints.status.valid.to_string()),
        ),
        (Method::GET, format!("{cylinder}/assign"), None),
        (
            Method::DELETE,
            format!("/api/v1/users/{}", fixture.customer_id),
            None,
        ),
        (Method::GET, "/api/v1/auth/login".to_string(), None),
    ];
    for (method, path, body) in cases {
        let label = format!("{method} {path}");
        let reply = match body {
            Some(body) => fixture.send_json(&method, &path, body).await,
            None => {
                let headers = [("authorization", format!("Bearer {}", fixture.admin))];
                send_raw(&fixture.app, &method, &path, &headers, None).await
            }
        };
        assert_error(
            &label,
            &reply,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            None,
        );
        fixture.assert_unchanged(&label, &before).await;
    }
    fixture.app.stop().await;
}

async fn duplicate_serial_is_409(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let history = format!("/api/v1/cylinders/{}/history", fixture.cylinder_id);
    let before = fixture.snapshot().await;

    // Serial numbers are stored trimmed and in upper case, so each of these
    // is the fixture's KG-13/0001.
    for serial in ["KG-13/0001", "kg-13/0001", "  Kg-13/0001  "] {
        let label = format!("serial {serial:?}");
        let reply = fixture
            .send_json(
                &Method::POST,
                "/api/v1/cylinders",
                cylinder_body(serial).to_string(),
            )
            .await;
        assert_error(
            &label,
            &reply,
            StatusCode::CONFLICT,
            "duplicate",
            Some("serial_number"),
        );
        fixture.assert_unchanged(&label, &before).await;
    }
    let cylinders = count_items(&fixture.app, "/api/v1/cylinders", &fixture.admin).await;
    assert_eq!(cylinders, 1, "cylinders after duplicates");
    let entries = count_items(&fixture.app, &history, &fixture.admin).await;
    assert_eq!(entries, 1, "history rows after duplicates");
    fixture.app.stop().await;
}

async fn duplicate_names_are_409(backend: Backend) {
    let fixture = Fixture::start(backend).await;
    let endpoints = fixture.endpoints();
    let reply = fixture
        .send_json(
            &endpoints.depot.method,
            &endpoints.depot.path,
            endpoints.depot.valid.to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "depot: {}", reply.text);
    let before = fixture.snapshot().await;

    let mut taken_username = endpoints.create_user.valid.clone();
    taken_username["username"] = json!("Amina");
    let cases = [
        (&endpoints.create_user, taken_username, "username"),
        (&endpoints.depot, endpoints.depot.valid.clone(), "name"),
    ];
    for (endpoint, body, field) in cases {
        let label = format!("{}: {body}", endpoint.name);
        let reply = fixture
            .send_json(&endpoint.method, &endpoint.path, body.to_string())
            .await;
        assert_error(
            &label,
            &reply,
            StatusCode::CONFLICT,
            "duplicate",
            Some(field),
        );
        fixture.assert_unchanged(&label, &before).await;
    }
    fixture.app.stop().await;
}
