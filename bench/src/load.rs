//! The load generator: concurrent workers posting realistic scans, each
//! latency recorded in an HDR histogram.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::Args;
use crate::report::Stat;
use crate::seed::DRIVER_PASSWORD;
use crate::server::Server;

/// Event-time spacing between two scans of one cylinder, so that neither
/// cloning rule fires on benchmark traffic: real fleets scan a cylinder a
/// few times a day, not several times a second.
const ROUND_SPACING_MINUTES: i64 = 10;
/// Rounds before the event times wrap: 1,000 rounds of 10 minutes span
/// about 7 days, which keeps them in the past and within the 30 days the
/// API accepts.
const MAX_ROUNDS: u64 = 1000;
/// Days between the load's first event time and the start of the
/// benchmark. Seeded history ends before it, so the load's scans arrive in
/// event-time order, as a live fleet's do.
pub const LOAD_START_DAYS_AGO: i64 = 8;

pub async fn log_in_drivers(server: &Server, drivers: u64) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::new();
    for index in 1..=drivers {
        tokens.push(log_in(server, &format!("bench.driver{index}")).await?);
    }
    Ok(tokens)
}

pub async fn log_in(server: &Server, username: &str) -> anyhow::Result<String> {
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/login", server.base_url))
        .json(&serde_json::json!({"username": username, "password": DRIVER_PASSWORD}))
        .send()
        .await?;
    let body: serde_json::Value = response.json().await?;
    let token = body["access_token"]
        .as_str()
        .with_context(|| format!("login of {username} failed: {body}"))?;
    Ok(token.to_string())
}

/// Latency of one kind of read, over several requests.
#[derive(Debug, Clone, Serialize)]
pub struct ReadTiming {
    pub read: &'static str,
    pub requests: usize,
    pub median_ms: f64,
    pub max_ms: f64,
}

/// Times the first page of the reads that staff use most: a cylinder's
/// scans and history, and the tampered and expired lists.
pub async fn measure_reads(server: &Server, ids: &[uuid::Uuid]) -> anyhow::Result<Vec<ReadTiming>> {
    let token = log_in(server, "bench.admin").await?;
    let client = reqwest::Client::new();
    let sample: Vec<uuid::Uuid> = (0..20).map(|index| ids[index * ids.len() / 20]).collect();
    let scans: Vec<String> = sample
        .iter()
        .map(|id| format!("/api/v1/cylinders/{id}/scans"))
        .collect();
    let history: Vec<String> = sample
        .iter()
        .map(|id| format!("/api/v1/cylinders/{id}/history"))
        .collect();
    let tampered = vec!["/api/v1/cylinders?tampered=true".to_string(); 10];
    let expired = vec!["/api/v1/cylinders?expired=true".to_string(); 10];

    let mut timings = Vec::new();
    for (read, paths) in [
        ("first page of a cylinder's scans", scans),
        ("first page of a cylinder's history", history),
        ("cylinders flagged as tampered", tampered),
        ("cylinders past requalification", expired),
    ] {
        let mut millis = Vec::new();
        for path in &paths {
            let sent = Instant::now();
            let response = client
                .get(format!("{}{path}", server.base_url))
                .bearer_auth(&token)
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "GET {path} returned {}",
                response.status()
            );
            let _ = response.bytes().await?;
            millis.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        let stat = Stat::of(millis);
        timings.push(ReadTiming {
            read,
            requests: paths.len(),
            median_ms: stat.median,
            max_ms: stat.max,
        });
    }
    Ok(timings)
}

/// One measured run at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub scans: u64,
    pub errors: u64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// All runs at one concurrency, with their median and range.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub connections: usize,
    pub runs: Vec<Run>,
    pub throughput: Stat,
    pub p50_ms: Stat,
    pub p90_ms: Stat,
    pub p99_ms: Stat,
    pub max_ms: Stat,
}

/// The scans that the load generator sends, numbered across all
/// concurrency levels so that each level goes on where the last stopped.
pub struct Workload {
    address: SocketAddr,
    host: HeaderValue,
    bearers: Vec<HeaderValue>,
    codes: Vec<String>,
    counter: AtomicU64,
    start: chrono::DateTime<chrono::Utc>,
    unknown_percent: u64,
}

impl Workload {
    pub fn new(
        args: &Args,
        server: &Server,
        tokens: &[String],
        codes: &[String],
    ) -> anyhow::Result<Arc<Self>> {
        let bearers = tokens
            .iter()
            .map(|token| HeaderValue::from_str(&format!("Bearer {token}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Self {
            address: server.address,
            host: HeaderValue::from_str(&server.address.to_string())?,
            bearers,
            codes: codes.to_vec(),
            counter: AtomicU64::new(0),
            start: chrono::Utc::now() - chrono::Duration::days(LOAD_START_DAYS_AGO),
            unknown_percent: args.unknown_percent,
        }))
    }

    /// Builds the body of the scan with sequence number `number`: cylinders are
    /// visited in a scattered order, each at its own place near Nairobi,
    /// with a small share of unknown codes.
    fn body(&self, number: u64) -> anyhow::Result<Vec<u8>> {
        let count = self.codes.len() as u64;
        let index = (number.wrapping_mul(2_654_435_761) % count) as usize;
        if number / count == MAX_ROUNDS && number.is_multiple_of(count) {
            eprintln!(
                "warning: event times wrapped after {MAX_ROUNDS} rounds of the fleet; \
                 later scans repeat earlier event times and count as late uploads"
            );
        }
        let round = (number / count) % MAX_ROUNDS;
        let scanned_at =
            self.start + chrono::Duration::minutes(round as i64 * ROUND_SPACING_MINUTES);
        let unknown;
        let code = if number % 100 < self.unknown_percent {
            unknown = format!("CYL-UNKNOWN{number:014X}");
            &unknown
        } else {
            &self.codes[index]
        };
        let body = ScanBody {
            code,
            scan_type: "QR",
            latitude: -1.28 + ((index * 31) % 200) as f64 * 0.0005,
            longitude: 36.82 + ((index * 17) % 200) as f64 * 0.0005,
            accuracy_m: 15.0,
            scanned_at,
            client_scan_id: format!("bench-{number}"),
        };
        Ok(serde_json::to_vec(&body)?)
    }
}

/// The JSON body of one scan, as a phone sends it.
#[derive(Serialize)]
struct ScanBody<'a> {
    code: &'a str,
    scan_type: &'static str,
    latitude: f64,
    longitude: f64,
    accuracy_m: f64,
    scanned_at: chrono::DateTime<chrono::Utc>,
    client_scan_id: String,
}

/// One worker's HTTP/1.1 connection to the server, kept alive across
/// requests the way pgbench keeps one database connection per client. It
/// costs less CPU than the pooled reqwest client it replaced, and the
/// server being measured shares that CPU.
struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    async fn open(address: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        // Ends when the server closes the connection or the sender is dropped.
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    /// Posts one scan, reads the whole response and returns whether the scan
    /// succeeded.
    async fn post_scan(
        &mut self,
        workload: &Workload,
        bearer: &HeaderValue,
        body: Vec<u8>,
    ) -> anyhow::Result<bool> {
        let request = Request::post("/api/v1/scans")
            .header(header::HOST, &workload.host)
            .header(header::AUTHORIZATION, bearer)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok(status.is_success())
    }
}

/// Sends scans for the warm-up time and discards their latencies.
pub async fn warm_up(
    args: &Args,
    workload: &Arc<Workload>,
    connections: usize,
) -> anyhow::Result<()> {
    let warmup = Duration::from_secs(args.warmup);
    drive(workload, connections, warmup).await?;
    Ok(())
}

/// Measures one run of `connections` workers.
pub async fn run_once(
    args: &Args,
    workload: &Arc<Workload>,
    connections: usize,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let duration = Duration::from_secs(args.duration);
    let (histogram, errors) = drive(workload, connections, duration).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let millis = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    Ok(Run {
        scans: histogram.len(),
        errors,
        throughput: histogram.len() as f64 / elapsed,
        p50_ms: millis(0.50),
        p90_ms: millis(0.90),
        p99_ms: millis(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
    })
}

impl Level {
    /// Summarises the runs at one concurrency.
    pub fn of(connections: usize, runs: Vec<Run>) -> Self {
        let stat = |pick: fn(&Run) -> f64| Stat::of(runs.iter().map(pick).collect());
        Self {
            connections,
            throughput: stat(|run| run.throughput),
            p50_ms: stat(|run| run.p50_ms),
            p90_ms: stat(|run| run.p90_ms),
            p99_ms: stat(|run| run.p99_ms),
            max_ms: stat(|run| run.max_ms),
            runs,
        }
    }
}

/// Runs `connections` workers for `duration`, each on its own connection,
/// and merges their latencies, in microseconds, of successful scans. Failed
/// requests are counted, and a worker whose connection broke opens a new one.
async fn drive(
    workload: &Arc<Workload>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let deadline = Instant::now() + duration;
    let mut workers = Vec::new();
    for worker in 0..connections {
        let workload = workload.clone();
        workers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut errors = 0u64;
            let bearer = &workload.bearers[worker % workload.bearers.len()];
            let mut connection = Connection::open(workload.address).await?;
            while Instant::now() < deadline {
                let number = workload.counter.fetch_add(1, Ordering::Relaxed);
                let body = workload.body(number)?;
                let sent = Instant::now();
                match connection.post_scan(&workload, bearer, body).await {
                    Ok(true) => histogram.record(sent.elapsed().as_micros().max(1) as u64)?,
                    Ok(false) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        connection = Connection::open(workload.address).await?;
                    }
                }
            }
            anyhow::Ok((histogram, errors))
        }));
    }
    let mut merged = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for worker in workers {
        let (histogram, worker_errors) = worker.await??;
        merged.add(&histogram)?;
        errors += worker_errors;
    }
    Ok((merged, errors))
}
