//! Login, refresh rotation and reuse detection, logout, token rules.

use cyltrack::domain::Role;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, PASSWORD, TestApp, error_of, on_both_backends};

on_both_backends!(
    login_returns_token_pair,
    wrong_username_and_password_look_alike,
    refresh_rotates_and_reuse_revokes_family,
    logout_revokes_family,
    deactivation_ends_sessions,
    access_and_refresh_not_interchangeable,
    me_requires_valid_token,
);

async fn login_returns_token_pair(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = app.create_user("wanjiru", Role::Driver).await;

    // Usernames are case-insensitive.
    let (status, body) = app.login("Wanjiru", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let access = body["access_token"].as_str().unwrap_or_default();
    assert!(
        body["refresh_token"]
            .as_str()
            .is_some_and(|token| !token.is_empty())
    );

    let (status, me) = app.get("/api/v1/me", access).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["id"], user.id.to_string());
    assert_eq!(me["role"], "DRIVER");
    assert!(me.get("password_hash").is_none());
    app.stop().await;
}

async fn wrong_username_and_password_look_alike(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_user("otieno", Role::Customer).await;

    let (unknown_status, unknown_body) = app.login("nobody", PASSWORD).await;
    let (wrong_status, wrong_body) = app.login("otieno", "not the password").await;
    assert_eq!(unknown_status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown_body, wrong_body);
    assert_eq!(error_of(&wrong_body).0, "invalid_credentials");
    app.stop().await;
}

async fn refresh_rotates_and_reuse_revokes_family(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_user("kamau", Role::Driver).await;
    let (_, first) = app.login("kamau", PASSWORD).await;
    let first_refresh = first["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let refresh = |token: String| {
        let app = &app;
        async move {
            app.send(
                Method::POST,
                "/api/v1/auth/refresh",
                None,
                Some(json!({"refresh_token": token})),
            )
            .await
        }
    };

    let (status, second) = refresh(first_refresh.clone()).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let second_refresh = second["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_ne!(second_refresh, first_refresh);
    let (status, _) = app
        .get(
            "/api/v1/me",
            second["access_token"].as_str().unwrap_or_default(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Presenting the spent token again is reuse: 401, and the token issued
    // in its place stops working too.
    let (status, body) = refresh(first_refresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&body).0, "invalid_refresh_token");
    let (status, _) = refresh(second_refresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A separate login is a separate family and still works.
    let (_, other) = app.login("kamau", PASSWORD).await;
    let (status, _) = refresh(
        other["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

async fn logout_revokes_family(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_user("njeri", Role::Customer).await;
    let (_, tokens) = app.login("njeri", PASSWORD).await;
    let refresh_token = tokens["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let body = json!({"refresh_token": refresh_token});
    let (status, _) = app
        .send(
            Method::POST,
            "/api/v1/auth/logout",
            None,
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .send(Method::POST, "/api/v1/auth/refresh", None, Some(body))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let garbage = json!({"refresh_token": "not-a-token"});
    let (status, _) = app
        .send(Method::POST, "/api/v1/auth/logout", None, Some(garbage))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

async fn deactivation_ends_sessions(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.user_with_token("admin", Role::Admin).await;
    let driver = app.create_user("omar", Role::Driver).await;
    let (_, tokens) = app.login("omar", PASSWORD).await;
    let access = tokens["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let refresh_token = tokens["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let (status, body) = app
        .patch(
            &format!("/api/v1/users/{}", driver.id),
            &admin,
            json!({"is_active": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["is_active"], false);

    let (status, _) = app.get("/api/v1/me", &access).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let refresh = json!({"refresh_token": refresh_token});
    let (status, _) = app
        .send(Method::POST, "/api/v1/auth/refresh", None, Some(refresh))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app.login("omar", PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

async fn access_and_refresh_not_interchangeable(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_user("mwangi", Role::Dispatcher).await;
    let (_, tokens) = app.login("mwangi", PASSWORD).await;
    let access = tokens["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let refresh_token = tokens["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let (status, _) = app.get("/api/v1/me", &refresh_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body = json!({"refresh_token": access});
    let (status, _) = app
        .send(Method::POST, "/api/v1/auth/refresh", None, Some(body))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

async fn me_requires_valid_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = app.send(Method::GET, "/api/v1/me", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&body).0, "authentication_required");

    let (status, body) = app.get("/api/v1/me", "garbage").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&body).0, "invalid_token");

    // A token signed with another key, as a forger would make it.
    let other = TestApp::spawn_with(backend, |variables| {
        variables.insert("JWT_SECRET_KEY".into(), "k".repeat(48));
    })
    .await;
    let (_, foreign) = other.user_with_token("forger", Role::Admin).await;
    let (status, _) = app.get("/api/v1/me", &foreign).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    other.stop().await;
    app.stop().await;
}
