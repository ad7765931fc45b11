//! Per-request limits from `ServerLimits`: the body size, the time to a
//! response and the number of requests served at once. The limits on the
//! request head are hyper's, set where connections are accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::config::ServerLimits;

/// The shortest time between two log lines about rejected requests, so
/// that an overload does not also flood the log.
const OVERLOAD_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Wraps every route and fallback of `router` in the limits. A request
/// beyond the concurrency limit gets 503 before any other check, and one
/// that takes longer than the request timeout gets 408. Bodies larger than
/// the limit get 413 from the extractors that read them.
pub fn apply(router: Router, limits: &ServerLimits) -> Router {
    let concurrency = Arc::new(Concurrency::new(limits.max_concurrent_requests));
    router
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            enforce_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            concurrency,
            enforce_concurrency,
        ))
}

/// The permits for requests in flight, and a count of the requests
/// rejected since the last log line about them.
struct Concurrency {
    permits: Semaphore,
    limit: usize,
    rejected: AtomicU64,
    started: Instant,
    /// When the next log line is due, in milliseconds since `started`.
    next_report_ms: AtomicU64,
}

impl Concurrency {
    fn new(limit: usize) -> Self {
        Self {
            permits: Semaphore::new(limit),
            limit,
            rejected: AtomicU64::new(0),
            started: Instant::now(),
            next_report_ms: AtomicU64::new(0),
        }
    }

    /// Counts a rejected request, and logs the count at most once per
    /// `OVERLOAD_REPORT_INTERVAL`.
    fn record_rejection(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let now_ms = self.started.elapsed().as_millis() as u64;
        let due_ms = self.next_report_ms.load(Ordering::Relaxed);
        let next_ms = now_ms + OVERLOAD_REPORT_INTERVAL.as_millis() as u64;
        let is_due = now_ms >= due_ms
            && self
                .next_report_ms
                .compare_exchange(due_ms, next_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if is_due {
            tracing::warn!(
                rejected = self.rejected.swap(0, Ordering::Relaxed),
                max_concurrent_requests = self.limit,
                "rejected requests with 503: MAX_CONCURRENT_REQUESTS requests are in flight"
            );
        }
    }
}

/// Returns 503 at once when every permit is taken, instead of queueing the
/// request. The permit is held until the response head is ready.
async fn enforce_concurrency(
    State(concurrency): State<Arc<Concurrency>>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = concurrency.permits.try_acquire() else {
        concurrency.record_rejection();
        return ApiError::Overloaded.into_response();
    };
    next.run(request).await
}

/// Returns 408 when the handler has not produced a response within
/// `timeout`, for example because the client sends the body too slowly. The
/// handler's future is dropped, so an open transaction rolls back.
async fn enforce_timeout(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                timeout_s = timeout.as_secs(),
                "the request timed out before its response was ready"
            );
            ApiError::RequestTimeout(timeout).into_response()
        }
    }
}
