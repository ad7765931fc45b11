//! The Redis-backed rate limiter against a real Redis server, and the
//! fallback to local counts when Redis cannot be reached.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::SecretString;
use uuid::Uuid;

use crate::helpers::{Backend, TestApp};
use cyltrack::ratelimit::{Bucket, Rate, RateLimiter};

/// Variable holding the URL of a Redis server the tests may write to. The
/// tests whose names end in `_redis` are skipped when it is unset.
pub const REDIS_URL_VARIABLE: &str = "CYLTRACK_TEST_REDIS_URL";

fn redis_url() -> Option<String> {
    std::env::var(REDIS_URL_VARIABLE)
        .ok()
        .filter(|url| !url.is_empty())
}

/// Returns a key prefix of its own for each test, so that tests running at the
/// same time never share a count.
fn fresh_prefix() -> String {
    format!("cyltrack-test-{}:", Uuid::new_v4().simple())
}

fn limiter(url: &str, prefix: &str) -> RateLimiter {
    RateLimiter::with_redis(&SecretString::from(url.to_string()), prefix)
        .unwrap_or_else(|error| panic!("limiter: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiters_share_counts_redis() {
    let Some(url) = redis_url() else {
        eprintln!("skipped: {REDIS_URL_VARIABLE} is not set");
        return;
    };
    let prefix = fresh_prefix();
    let first = limiter(&url, &prefix);
    let second = limiter(&url, &prefix);
    assert!(first.is_shared());
    let scans = [Bucket::new("scan:driver", Rate::per_hour(100))];

    for index in 0..100 {
        let limiter = if index % 2 == 0 { &first } else { &second };
        assert_eq!(limiter.acquire(&scans).await, Ok(()), "scan {index}");
    }
    // The 101st waits one refill interval, 36 s, less the time spent.
    let wait = first.acquire(&scans).await.err().unwrap_or_default();
    assert!(
        wait > Duration::from_secs(30) && wait <= Duration::from_secs(36),
        "{wait:?}"
    );
    let again = second.acquire(&scans).await.err().unwrap_or_default();
    assert!(
        again <= wait,
        "a refused request must not count: {again:?} > {wait:?}"
    );

    // A released request is free again, once.
    second.release(&scans[0]).await;
    assert_eq!(first.acquire(&scans).await, Ok(()));
    assert!(second.acquire(&scans).await.is_err());

    // Peek counts nothing; charge counts past the limit; reset deletes the bucket.
    let failures = [Bucket::new(
        "login:someone",
        Rate {
            count: 1,
            period: Duration::from_secs(60),
        },
    )];
    assert_eq!(first.peek(&failures).await, Ok(()));
    first.charge(&failures).await;
    assert!(second.peek(&failures).await.is_err());
    second.reset("login:someone").await;
    assert_eq!(first.peek(&failures).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_limit_redis() {
    let Some(url) = redis_url() else {
        eprintln!("skipped: {REDIS_URL_VARIABLE} is not set");
        return;
    };
    let prefix = fresh_prefix();
    let configure = |variables: &mut cyltrack::config::Variables| {
        variables.insert("REDIS_URL".into(), url.clone());
        variables.insert("REDIS_KEY_PREFIX".into(), prefix.clone());
        variables.insert("ANONYMOUS_RATE_LIMIT".into(), "4".into());
    };
    let first = TestApp::spawn_with(Backend::Sqlite, configure).await;
    let second = TestApp::spawn_with(Backend::Sqlite, configure).await;

    for (index, app) in [&first, &second, &first, &second].into_iter().enumerate() {
        let (status, body) = app.login("someone", "wrong password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "login {index}: {body}");
    }
    for app in [&first, &second] {
        let (status, body) = app.login("someone", "wrong password").await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "the fifth login anywhere: {body}"
        );
    }
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_counts_locally() {
    // Nothing listens on port 1 of the loopback address.
    let app = TestApp::spawn_with(Backend::Sqlite, |variables| {
        variables.insert("REDIS_URL".into(), "redis://127.0.0.1:1/0".into());
        variables.insert("ANONYMOUS_RATE_LIMIT".into(), "2".into());
    })
    .await;
    for index in 0..2 {
        let (status, body) = app.login("someone", "wrong password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "login {index}: {body}");
    }
    let (status, body) = app.login("someone", "wrong password").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let (status, _) = app.send(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}
