//! Scan-path benchmark of cyltrack: seeds a fleet, drives
//! `POST /api/v1/scans` over HTTP on loopback, and measures on the same
//! database the floor that no HTTP service can beat (pgbench running the
//! scan's logical work as one SQL statement, or the same work as one SQLite
//! transaction in a tight loop). See docs/BENCHMARKS.md.

mod floor;
mod load;
mod report;
mod seed;
mod server;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Benchmarks the cyltrack scan path against the database floor.
#[derive(Debug, Parser)]
#[command(name = "cyltrack-bench")]
pub struct Args {
    /// Database backend to measure.
    #[arg(long, value_enum, default_value = "postgres")]
    pub backend: Backend,
    /// URL of a PostgreSQL database with the right to create databases;
    /// the benchmark creates and drops its own database there. The server
    /// and pgbench connect with the same parameters. The default turns TLS
    /// off, which on loopback protects nothing and costs both sides CPU.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    )]
    pub postgres_admin_url: String,
    /// Cylinders in the seeded fleet, at least 1.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub cylinders: u64,
    /// Historical scans seeded before the run, one second apart and
    /// wrapping after 90 days, ending a day before the load's first event
    /// time.
    #[arg(long, default_value_t = 0)]
    pub history: u64,
    /// Drivers whose tokens the load generator uses, at least 1.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub drivers: u64,
    /// Concurrent connections to measure, comma-separated, each at least 1.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,32", value_parser = at_least_one)]
    pub concurrency: Vec<usize>,
    /// Measured seconds per run, at least 1.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: u64,
    /// Warm-up seconds before each concurrency level.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Runs per concurrency level, at least 1; the report gives their
    /// median and range.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub runs: usize,
    /// Share of scans that present an unknown code, in percent (0 to 100).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub unknown_percent: u64,
    /// The cyltrack binary to start; build it with `cargo build --release`.
    #[arg(long, default_value = "target/release/cyltrack")]
    pub server: PathBuf,
    /// Folder for the JSON results.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Skip the floor measurement.
    #[arg(long)]
    pub no_floor: bool,
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// Parses a connection count, which must be at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(count) => Ok(count),
        Err(error) => Err(error.to_string()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started_at = chrono::Utc::now();
    anyhow::ensure!(
        args.server.is_file(),
        "{} is not a file; run `cargo build --release` first or pass --server with the path of the cyltrack binary",
        args.server.display()
    );
    anyhow::ensure!(
        !args.concurrency.is_empty(),
        "--concurrency must name at least one level"
    );

    let database = seed::Database::create(&args)
        .await
        .context("cannot create the benchmark database")?;
    // Ctrl-C stops the run, and the database is still dropped. The server
    // and pgbench are killed when their handles drop with the run.
    let result = tokio::select! {
        result = run(&args, started_at, &database) => result,
        () = interrupted() => {
            let _ = std::fs::remove_file(floor::script_path());
            Err(anyhow::anyhow!("interrupted; no results were written"))
        }
    };
    if args.keep {
        eprintln!("kept the benchmark database: {}", database.url());
    } else {
        database.drop_database(&args).await;
    }
    let report = result?;
    report::write(&args, &report)?;
    Ok(())
}

/// Completes when the user presses Ctrl-C. If the signal cannot be
/// watched, it never completes, and the run goes on as before.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn run(
    args: &Args,
    started_at: chrono::DateTime<chrono::Utc>,
    database: &seed::Database,
) -> anyhow::Result<report::Report> {
    let seeded = seed::seed(args, database).await.context("seeding failed")?;
    eprintln!(
        "seeded {} cylinders, {} drivers, {} historical scans in {:.1} s",
        args.cylinders, args.drivers, args.history, seeded.seconds
    );

    let server = server::Server::start(args, database)
        .await
        .context("cannot start the server")?;
    let tokens = load::log_in_drivers(&server, args.drivers)
        .await
        .context("cannot log the drivers in")?;
    let reads = load::measure_reads(&server, &seeded.ids)
        .await
        .context("cannot time the reads")?;
    for read in &reads {
        eprintln!(
            "{}: median {:.2} ms, max {:.2} ms over {} requests",
            read.read, read.median_ms, read.max_ms, read.requests
        );
    }
    let workload = load::Workload::new(args, &server, &tokens, &seeded.codes)?;
    // The machine's speed drifts over minutes, so each service run is
    // followed at once by a floor run, and the two are compared in pairs.
    let mut levels = Vec::new();
    let mut floors = Vec::new();
    for &connections in &args.concurrency {
        database.settle(args).await;
        load::warm_up(args, &workload, connections).await?;
        let mut runs = Vec::new();
        let mut floor_runs = Vec::new();
        for _ in 0..args.runs {
            database.settle(args).await;
            runs.push(load::run_once(args, &workload, connections).await?);
            if !args.no_floor {
                database.settle(args).await;
                let floor = floor::run_once(args, database, &seeded, connections)
                    .await
                    .context("floor measurement failed")?;
                floor_runs.push(floor);
            }
        }
        let level = load::Level::of(connections, runs);
        eprintln!("{}", report::describe_level(&level));
        levels.push(level);
        if !args.no_floor {
            let floor = floor::Floor::of(args, connections, floor_runs);
            eprintln!(
                "floor at {connections} connections: {:.0} scans/s",
                floor.throughput.median
            );
            floors.push(floor);
        }
    }
    let peak_rss_kib = server.peak_rss_kib();
    server.stop().await;

    Ok(report::Report::new(
        args,
        started_at,
        seeded.seconds,
        levels,
        floors,
        reads,
        peak_rss_kib,
    ))
}
