//! The benchmark report: printed as a table and written as JSON so that
//! runs can be compared.

use serde::Serialize;

use crate::floor::Floor;
use crate::load::{Level, ReadTiming};
use crate::{Args, Backend};

/// Median and range of one measure over the runs.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let median = if values.is_empty() {
            0.0
        } else if values.len() % 2 == 1 {
            values[values.len() / 2]
        } else {
            (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0
        };
        Self {
            median,
            min: values.first().copied().unwrap_or_default(),
            max: values.last().copied().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub backend: Backend,
    pub cylinders: u64,
    pub history: u64,
    pub drivers: u64,
    pub duration_seconds: u64,
    pub runs: usize,
    pub seed_seconds: f64,
    pub started_at: String,
    pub machine: Machine,
    pub levels: Vec<Level>,
    pub floors: Vec<Floor>,
    /// Service throughput divided by the floor at the same concurrency.
    pub ratios: Vec<(usize, f64)>,
    /// Each service run divided by the floor run right after it, per
    /// concurrency: less affected by the machine's drift than `ratios`.
    pub paired_ratios: Vec<PairedRatio>,
    /// First-page read latencies, measured after seeding and before the load.
    pub reads: Vec<ReadTiming>,
    pub server_peak_rss_mib: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct PairedRatio {
    pub connections: usize,
    pub ratio: Stat,
}

impl PairedRatio {
    fn of(level: &Level, floor: &Floor) -> Option<Self> {
        let ratios: Vec<f64> = level
            .runs
            .iter()
            .zip(&floor.runs)
            .filter(|(_, floor)| **floor > 0.0)
            .map(|(run, floor)| run.throughput / floor)
            .collect();
        (!ratios.is_empty()).then(|| Self {
            connections: level.connections,
            ratio: Stat::of(ratios),
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
}

impl Machine {
    fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split(':').nth(1))
            .map(|model| model.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(1),
            cpu_model,
            memory_gib: memory_kib / 1024.0 / 1024.0,
        }
    }
}

impl Report {
    pub fn new(
        args: &Args,
        started_at: chrono::DateTime<chrono::Utc>,
        seed_seconds: f64,
        levels: Vec<Level>,
        floors: Vec<Floor>,
        reads: Vec<ReadTiming>,
        peak_rss_kib: Option<u64>,
    ) -> Self {
        // Floors are measured level by level, so the nth floor belongs to
        // the nth level even when a connection count repeats.
        let ratios = levels
            .iter()
            .zip(&floors)
            .filter(|(_, floor)| floor.throughput.median > 0.0)
            .map(|(level, floor)| {
                (
                    level.connections,
                    level.throughput.median / floor.throughput.median,
                )
            })
            .collect();
        let paired_ratios = levels
            .iter()
            .zip(&floors)
            .filter_map(|(level, floor)| PairedRatio::of(level, floor))
            .collect();
        Self {
            backend: args.backend,
            cylinders: args.cylinders,
            history: args.history,
            drivers: args.drivers,
            duration_seconds: args.duration,
            runs: args.runs,
            seed_seconds,
            started_at: started_at.to_rfc3339(),
            machine: Machine::read(),
            levels,
            floors,
            ratios,
            paired_ratios,
            reads,
            server_peak_rss_mib: peak_rss_kib.map(|kib| kib as f64 / 1024.0),
        }
    }
}

pub fn describe_level(level: &Level) -> String {
    format!(
        "{:>3} connections: {:>7.0} scans/s ({:.0} to {:.0}), p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        level.connections,
        level.throughput.median,
        level.throughput.min,
        level.throughput.max,
        level.p50_ms.median,
        level.p90_ms.median,
        level.p99_ms.median,
        level.max_ms.median,
    )
}

/// Prints the summary table and writes the JSON file.
pub fn write(args: &Args, report: &Report) -> anyhow::Result<()> {
    println!(
        "\n{:?}, {} cylinders, {} historical scans, {} s x {} runs (median, range)",
        report.backend, report.cylinders, report.history, report.duration_seconds, report.runs
    );
    println!(
        "| connections | service scans/s | floor scans/s | ratio | paired ratio | p50 ms | p90 ms | p99 ms | max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (index, level) in report.levels.iter().enumerate() {
        let floor = report.floors.get(index);
        let floor_text = floor
            .map(|floor| format!("{:.0}", floor.throughput.median))
            .unwrap_or_else(|| "-".into());
        let ratio = floor
            .filter(|floor| floor.throughput.median > 0.0)
            .map(|floor| {
                format!(
                    "{:.0}%",
                    level.throughput.median / floor.throughput.median * 100.0
                )
            })
            .unwrap_or_else(|| "-".into());
        let paired = floor
            .and_then(|floor| PairedRatio::of(level, floor))
            .map(|paired| {
                format!(
                    "{:.0}% ({:.0}-{:.0}%)",
                    paired.ratio.median * 100.0,
                    paired.ratio.min * 100.0,
                    paired.ratio.max * 100.0
                )
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "| {} | {:.0} ({:.0}-{:.0}) | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} |",
            level.connections,
            level.throughput.median,
            level.throughput.min,
            level.throughput.max,
            floor_text,
            ratio,
            paired,
            level.p50_ms.median,
            level.p90_ms.median,
            level.p99_ms.median,
            level.max_ms.median
        );
    }
    if let Some(rss) = report.server_peak_rss_mib {
        println!("server peak resident memory: {rss:.1} MiB");
    }

    std::fs::create_dir_all(&args.out)?;
    let name = format!(
        "{}-{:?}-{}c-{}h.json",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        report.backend,
        report.cylinders,
        report.history
    )
    .to_lowercase();
    let path = args.out.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(report)?)?;
    println!("results written to {}", path.display());
    Ok(())
}
