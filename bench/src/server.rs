//! The cyltrack server under test, run as its own process so that its
//! memory can be read from /proc.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::Args;
use crate::seed::{Database, JWT_SECRET_KEY, SECRET_KEY};

pub struct Server {
    child: Child,
    pub address: SocketAddr,
    pub base_url: String,
}

/// Hourly limit given to the load's drivers and logins, in requests.
const BENCH_RATE_LIMIT: &str = "1000000000";

impl Server {
    pub async fn start(args: &Args, database: &Database) -> anyhow::Result<Self> {
        // Ask the kernel for a free port, then hand it to the server.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(&args.server)
            .arg("serve")
            .env_clear()
            .env("DATABASE_URL", database.url())
            .env("SECRET_KEY", SECRET_KEY)
            .env("JWT_SECRET_KEY", JWT_SECRET_KEY)
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            // Per-request log lines are not part of the scan path's cost.
            .env("RUST_LOG", "warn")
            // The load drives each driver far past a real driver's hourly
            // scans; the limits stay on, but high enough never to refuse.
            .env("SCAN_RATE_LIMIT_DRIVER", BENCH_RATE_LIMIT)
            .env("API_RATE_LIMIT_DRIVER", BENCH_RATE_LIMIT)
            .env("ANONYMOUS_RATE_LIMIT", BENCH_RATE_LIMIT)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", args.server.display()))?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let server = Self {
            child,
            address,
            base_url: format!("http://{address}"),
        };

        let client = reqwest::Client::new();
        for _ in 0..200 {
            let health = client
                .get(format!("{}/healthz", server.base_url))
                .send()
                .await;
            if health.is_ok_and(|response| response.status().is_success()) {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the server did not become healthy within 10 seconds")
    }

    /// Peak resident memory of the server process so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Stops the server with SIGTERM and waits for it.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}
