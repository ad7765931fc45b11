//! A day of operations on the demo fleet, replayed through the real scan
//! path. Trucks load cylinders at the depots, drive the highways from
//! Nairobi to Thika, Nakuru and Mombasa and around Mombasa, deliver
//! cylinders and collect empties. Customers check their cylinders at home
//! and the depots count their stock at the end of the day. One label is
//! cloned, and one driver's phone loses signal for two hours on the Thika
//! road and uploads its queued scans late, in shuffled order.
//!
//! Every scan goes through [`Store::record_scan`] with the configured
//! tamper policy, so the real cloning rules judge the day.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use anyhow::{Context, bail};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use uuid::Uuid;

use super::Sequence;
use crate::domain::CylinderStatus;
use crate::domain::scan::{Coordinates, ScanCode, ScanResult, ScanType, distance_km};
use crate::http::AppState;
use crate::storage::{
    Actor, CylinderFilter, CylinderRecord, DepotRecord, PageRequest, ScanDraft, ScanInput,
    ScanOutcome, ScanRecord, Scope, Store, UserFilter,
};

/// East Africa Time is UTC+3 all year.
const EAST_AFRICA_OFFSET: Duration = Duration::hours(3);

/// Maximum age of a replayed scan, in days. The HTTP handler rejects scans
/// uploaded later than that.
const MAX_SCAN_AGE_DAYS: i64 = 30;

/// User agent of every replayed scan, so that staff can tell replayed
/// scans from real ones.
const USER_AGENT: &str = "cyltrack demo replay";

/// Seed of the GPS jitter and of the seconds between scans. It is fixed so
/// that every replay of a day is the same.
const JITTER_SEED: u64 = 0x2545_F491_4F6C_DD1D;

/// A point in decimal degrees (WGS 84).
#[derive(Debug, Clone, Copy)]
struct Place {
    latitude: f64,
    longitude: f64,
}

const fn place(latitude: f64, longitude: f64) -> Place {
    Place {
        latitude,
        longitude,
    }
}

// Approximate coordinates of town centres and highway junctions, rounded
// to about a hundred metres.

// The A2 Thika Superhighway from Nairobi to Thika.
const PANGANI: Place = place(-1.2680, 36.8390);
const ROYSAMBU: Place = place(-1.2186, 36.8889);
const KAHAWA: Place = place(-1.1800, 36.9270);
const RUIRU: Place = place(-1.1466, 36.9609);
const JUJA: Place = place(-1.1022, 37.0144);
const THIKA: Place = place(-1.0333, 37.0693);

// The A104 from Nairobi through Limuru and Naivasha to Nakuru.
const WESTLANDS: Place = place(-1.2676, 36.8108);
const KANGEMI: Place = place(-1.2650, 36.7460);
const LIMURU: Place = place(-1.1136, 36.6422);
const NAIVASHA: Place = place(-0.7167, 36.4333);
const GILGIL: Place = place(-0.4969, 36.3194);
const NAKURU: Place = place(-0.3031, 36.0800);

// The A109 from Nairobi through Athi River and Voi to Mombasa.
const MLOLONGO: Place = place(-1.3905, 36.9427);
const ATHI_RIVER: Place = place(-1.4560, 36.9790);
const MACHAKOS_JUNCTION: Place = place(-1.5400, 37.0650);
const SULTAN_HAMUD: Place = place(-2.0167, 37.3667);
const EMALI: Place = place(-2.0833, 37.4667);
const KIBWEZI: Place = place(-2.4167, 37.9667);
const MTITO_ANDEI: Place = place(-2.6900, 38.1667);
const VOI: Place = place(-3.3961, 38.5561);
const MACKINNON_ROAD: Place = place(-3.7330, 39.0330);
const MARIAKANI: Place = place(-3.8667, 39.4667);
const MIRITINI: Place = place(-3.9930, 39.5830);

// Mombasa, from Changamwe over the island and north along the Kilifi road.
const MAKUPA: Place = place(-4.0400, 39.6550);
const OLD_TOWN: Place = place(-4.0610, 39.6790);
const NYALI: Place = place(-4.0330, 39.7080);
const BAMBURI: Place = place(-3.9990, 39.7230);
const MTWAPA: Place = place(-3.9420, 39.7460);

/// A delivery stop: `past_km` kilometres beyond route point `waypoint`
/// (0 is the depot, 1 the first town) along the next segment.
struct Stop {
    label: &'static str,
    waypoint: usize,
    past_km: f64,
    /// Full cylinders handed over, one scan each; fewer when the depot
    /// has fewer in service.
    deliver: usize,
    /// Empties picked up, one scan each.
    collect: usize,
    /// Time at the stop besides scanning: unloading, payment, a meal.
    minutes: i64,
}

const fn stop(
    label: &'static str,
    waypoint: usize,
    past_km: f64,
    deliver: usize,
    collect: usize,
    minutes: i64,
) -> Stop {
    Stop {
        label,
        waypoint,
        past_km,
        deliver,
        collect,
        minutes,
    }
}

/// A stretch without signal: it starts when the truck leaves stop
/// `after_stop` and lasts `minutes`. Scans in it are queued on the phone
/// and uploaded when it ends.
struct Outage {
    after_stop: usize,
    minutes: i64,
}

/// One truck's day.
struct Trip {
    driver: &'static str,
    /// Name of the depot where the truck loads.
    depot: &'static str,
    /// Name of the depot where the trip ends; `None` drives back to `depot`.
    destination: Option<&'static str>,
    road: &'static str,
    towns: &'static [Place],
    /// Road distance divided by the straight-line distance between route
    /// points.
    winding: f64,
    /// Average driving speed, in km/h.
    speed_kmh: f64,
    /// East Africa Time of the first loading scan.
    start: (u32, u32),
    /// Full cylinders loaded at the depot.
    load: usize,
    stops: &'static [Stop],
    outage: Option<Outage>,
}

/// The trucks of the day. Each takes its cylinders in this order, so
/// `driver.kamau`, whose phone goes offline, loads before `driver.njoroge`
/// at the same depot.
const TRIPS: [Trip; 4] = [
    Trip {
        driver: "driver.mwangi",
        depot: "Embakasi Depot",
        destination: Some("Changamwe Depot"),
        road: "the A109 to Mombasa",
        towns: &[
            MLOLONGO,
            ATHI_RIVER,
            MACHAKOS_JUNCTION,
            SULTAN_HAMUD,
            EMALI,
            KIBWEZI,
            MTITO_ANDEI,
            VOI,
            MACKINNON_ROAD,
            MARIAKANI,
            MIRITINI,
        ],
        winding: 1.05,
        speed_kmh: 65.0,
        start: (6, 0),
        load: 24,
        stops: &[
            stop("Sultan Hamud, Mombasa Road", 4, 0.3, 2, 0, 10),
            stop("Emali, Mombasa Road", 5, 0.2, 2, 0, 10),
            stop("Mtito Andei, Mombasa Road", 7, 0.0, 2, 0, 45),
            stop("Voi, Mombasa Road", 8, 0.4, 2, 0, 10),
            stop("Mariakani, Mombasa Road", 10, 0.0, 2, 0, 10),
        ],
        outage: None,
    },
    Trip {
        driver: "driver.kamau",
        depot: "Industrial Area Depot",
        destination: None,
        road: "the Thika road",
        towns: &[PANGANI, ROYSAMBU, KAHAWA, RUIRU, JUJA, THIKA],
        winding: 1.15,
        speed_kmh: 45.0,
        start: (7, 0),
        load: 16,
        stops: &[
            stop("Roysambu, Thika Road", 2, 0.3, 2, 1, 10),
            stop("Kahawa Wendani, Thika Road", 3, 0.8, 2, 1, 12),
            stop("Ruiru town", 4, 0.0, 2, 1, 12),
            stop("Ruiru Bypass junction", 4, 2.5, 2, 1, 10),
            stop("Juja town", 5, 0.0, 2, 1, 12),
            stop("Juja Farm, Thika Road", 5, 3.0, 1, 1, 10),
            stop("Thika town", 6, 0.0, 3, 2, 15),
            stop("Makongeni, Thika", 6, 1.5, 2, 1, 10),
        ],
        outage: Some(Outage {
            after_stop: 0,
            minutes: 120,
        }),
    },
    Trip {
        driver: "driver.njoroge",
        depot: "Industrial Area Depot",
        destination: None,
        road: "the A104 to Nakuru",
        towns: &[WESTLANDS, KANGEMI, LIMURU, NAIVASHA, GILGIL, NAKURU],
        winding: 1.2,
        speed_kmh: 55.0,
        start: (6, 30),
        load: 14,
        stops: &[
            stop("Kibanda Hotel, Westlands", 1, 0.2, 2, 1, 10),
            stop("Limuru, Nakuru Road", 3, 0.5, 2, 1, 10),
            stop("Naivasha town", 4, 0.0, 3, 1, 15),
            stop("Karagita, Naivasha", 4, 4.0, 1, 1, 10),
            stop("Gilgil town", 5, 0.0, 2, 1, 10),
            stop("Nakuru town", 6, 0.0, 3, 2, 60),
        ],
        outage: None,
    },
    Trip {
        driver: "driver.omar",
        depot: "Changamwe Depot",
        destination: None,
        road: "the Mombasa city round",
        towns: &[MAKUPA, OLD_TOWN, NYALI, BAMBURI, MTWAPA],
        winding: 1.3,
        speed_kmh: 40.0,
        start: (7, 30),
        load: 18,
        stops: &[
            stop("Makupa, Mombasa", 1, 0.0, 2, 1, 15),
            stop("Old Town, Mombasa", 2, 0.0, 2, 1, 15),
            stop("Pwani Restaurant, Nyali", 3, 0.0, 3, 1, 15),
            stop("Bamburi, Mombasa", 4, 0.0, 3, 1, 15),
            stop("Kilifi Road Primary School, Mtwapa", 5, 0.0, 4, 2, 20),
            stop("Mtwapa town", 5, 1.5, 2, 1, 15),
        ],
        outage: None,
    },
];

/// A customer who scans, at home, the first cylinder delivered at a stop.
struct HomeCheck {
    customer: &'static str,
    stop: &'static str,
    /// Minutes after the delivery scan.
    after_minutes: i64,
    label: &'static str,
}

const HOME_CHECKS: [HomeCheck; 5] = [
    HomeCheck {
        customer: "mama.njeri",
        stop: "Ruiru town",
        after_minutes: 20,
        label: "Home, Ruiru",
    },
    HomeCheck {
        customer: "kibanda.hotel",
        stop: "Kibanda Hotel, Westlands",
        after_minutes: 90,
        label: "Kibanda Hotel kitchen, Westlands",
    },
    HomeCheck {
        customer: "fatuma",
        stop: "Old Town, Mombasa",
        after_minutes: 60,
        label: "Home, Old Town, Mombasa",
    },
    HomeCheck {
        customer: "pwani.restaurant",
        stop: "Pwani Restaurant, Nyali",
        after_minutes: 45,
        label: "Pwani Restaurant kitchen, Nyali",
    },
    HomeCheck {
        customer: "shule.ya.msingi",
        stop: "Kilifi Road Primary School, Mtwapa",
        after_minutes: 120,
        label: "School kitchen, Kilifi Road, Mtwapa",
    },
];

/// The cloned label: the first cylinder delivered at `genuine_stop`
/// carries the genuine label, and `customer` scans a copy of its QR code
/// in `place`, `after_minutes` after the genuine delivery scan.
struct ClonedLabel {
    genuine_stop: &'static str,
    customer: &'static str,
    place: Place,
    label: &'static str,
    after_minutes: i64,
}

const CLONED_LABEL: ClonedLabel = ClonedLabel {
    genuine_stop: "Bamburi, Mombasa",
    customer: "akinyi",
    place: NAKURU,
    label: "Nakuru town",
    after_minutes: 22,
};

/// A dispatcher's end-of-day count of what a depot still holds, with a
/// handheld RFID reader, 30 seconds a cylinder.
struct StockCheck {
    dispatcher: &'static str,
    depot: &'static str,
    start: (u32, u32),
    max: usize,
}

const STOCK_CHECKS: [StockCheck; 2] = [
    StockCheck {
        dispatcher: "dispatch.mombasa",
        depot: "Nyali Depot",
        start: (17, 0),
        max: 40,
    },
    StockCheck {
        dispatcher: "dispatch.nairobi",
        depot: "Embakasi Depot",
        start: (17, 30),
        max: 40,
    },
];

/// Choices of a replay that do not change what happens during the day.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions {
    /// Seed of the order in which the offline phone uploads its queue.
    pub late_batch_seed: u64,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            late_batch_seed: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

/// The outcome of a replay: the count of each result, the suspicious scans
/// and the late batch.
#[derive(Debug, Clone)]
pub struct ReplaySummary {
    pub day: NaiveDate,
    /// Scans recorded.
    pub scans: usize,
    /// Scans per result, in the order of [`ScanResult::ALL`].
    pub results: Vec<(ScanResult, usize)>,
    /// Scans on which a cloning rule fired, in the order they were recorded.
    pub suspicious: Vec<SuspiciousScan>,
    /// The scans that the offline phone uploaded after the outage.
    pub late: Option<LateBatch>,
}

/// A scan on which a cloning rule fired.
#[derive(Debug, Clone)]
pub struct SuspiciousScan {
    pub scan_id: Uuid,
    pub cylinder_id: Uuid,
    pub serial_number: String,
    pub scanner: String,
    pub scanned_at: DateTime<Utc>,
    pub place: String,
    pub reason: String,
    /// The located scan of the same cylinder that is nearest in event time,
    /// which is the one the movement rule compares with.
    pub nearest: Option<NearestScan>,
}

/// The other scan of a suspicious pair.
#[derive(Debug, Clone)]
pub struct NearestScan {
    pub scan_id: Uuid,
    pub scanner: String,
    pub scanned_at: DateTime<Utc>,
    pub place: String,
}

/// The queued scans of a phone that was offline.
#[derive(Debug, Clone)]
pub struct LateBatch {
    pub scanner: String,
    pub road: &'static str,
    pub offline_from: DateTime<Utc>,
    pub offline_until: DateTime<Utc>,
    /// In upload order.
    pub scans: Vec<LateScan>,
}

#[derive(Debug, Clone)]
pub struct LateScan {
    pub scan_id: Uuid,
    pub client_scan_id: String,
    pub cylinder_id: Uuid,
    pub scanned_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub result: ScanResult,
    pub is_suspicious: bool,
}

impl ReplaySummary {
    /// Returns the number of scans with `result`.
    pub fn count(&self, result: ScanResult) -> usize {
        self.results
            .iter()
            .find(|(each, _)| *each == result)
            .map_or(0, |(_, count)| *count)
    }
}

/// Formats a time as hours and minutes in East Africa Time.
fn east_africa_clock(at: DateTime<Utc>) -> String {
    (at + EAST_AFRICA_OFFSET).format("%H:%M").to_string()
}

impl fmt::Display for ReplaySummary {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts: Vec<String> = self
            .results
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(result, count)| format!("{count} {}", result.as_str()))
            .collect();
        let counts = if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        };
        write!(
            formatter,
            "Replayed {} scans of {}, 06:00 to 19:00 East Africa Time: {counts}.",
            self.scans, self.day
        )?;
        if let Some(late) = &self.late {
            write!(formatter, "\n  {late}")?;
        }
        match self.suspicious.len() {
            0 => write!(formatter, "\n  No scan was suspicious.")?,
            1 => write!(formatter, "\n  1 suspicious scan:")?,
            count => write!(formatter, "\n  {count} suspicious scans:")?,
        }
        for scan in &self.suspicious {
            write!(formatter, "\n    {scan}")?;
        }
        Ok(())
    }
}

impl fmt::Display for LateBatch {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} offline scans by {} arrived late: the phone had no signal on {} from {} to {} \
             and then uploaded its queue in shuffled order.",
            self.scans.len(),
            self.scanner,
            self.road,
            east_africa_clock(self.offline_from),
            east_africa_clock(self.offline_until),
        )?;
        match self.scans.iter().filter(|scan| scan.is_suspicious).count() {
            0 => write!(formatter, " None of them raised an alarm."),
            alarms => write!(formatter, " {alarms} of them raised an alarm."),
        }
    }
}

impl fmt::Display for SuspiciousScan {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(nearest) = &self.nearest else {
            return write!(
                formatter,
                "{} scanned at {} by {}. Reason: {}",
                self.serial_number, self.place, self.scanner, self.reason
            );
        };
        let this = (&self.place, &self.scanner);
        let other = (&nearest.place, &nearest.scanner);
        let (first, second) = if nearest.scanned_at <= self.scanned_at {
            (other, this)
        } else {
            (this, other)
        };
        let minutes = (self.scanned_at - nearest.scanned_at).num_minutes().abs();
        write!(
            formatter,
            "{} scanned at {} by {} and at {} by {}, {minutes} minutes apart. Reason: {}",
            self.serial_number, first.0, first.1, second.0, second.1, self.reason
        )
    }
}

/// Returns yesterday's date in East Africa Time.
pub fn yesterday_in_east_africa(now: DateTime<Utc>) -> NaiveDate {
    let today = (now + EAST_AFRICA_OFFSET).date_naive();
    today.pred_opt().unwrap_or(today)
}

/// Replays `day` on the demo fleet with the default options.
pub async fn replay_day(state: &AppState, day: NaiveDate) -> anyhow::Result<ReplaySummary> {
    replay_day_with(state, day, ReplayOptions::default()).await
}

/// Replays `day` on the demo fleet that [`super::load_fleet`] loaded into
/// `state`'s store. The day must be at most 30 days ago and over, because
/// the HTTP handler would reject scans from the future or older than that.
/// Cylinders are picked in serial number order, so every replay of a fleet
/// scans the same cylinders.
pub async fn replay_day_with(
    state: &AppState,
    day: NaiveDate,
    options: ReplayOptions,
) -> anyhow::Result<ReplaySummary> {
    let store: &dyn Store = state.store.as_ref();
    let now = Utc::now();
    let first = east_africa(day, 6, 0)?;
    let last = east_africa(day, 19, 0)?;
    if last > now {
        bail!("cannot replay {day}: the day is not over in East Africa Time; pick an earlier day");
    }
    if first < now - Duration::days(MAX_SCAN_AGE_DAYS) {
        bail!(
            "cannot replay {day}: scans more than {MAX_SCAN_AGE_DAYS} days old are rejected; pick a later day"
        );
    }

    let fleet = DemoFleet::read(store).await?;
    let plan = plan_day(day, &fleet, options)?;
    if let Some(late_scan) = plan.scans.iter().find(|scan| scan.received_at > now) {
        bail!(
            "cannot replay {day}: a scan would arrive at {}, after now; pick an earlier day",
            late_scan.received_at
        );
    }
    record(state, day, &fleet, plan).await
}

/// Returns the UTC instant of a wall-clock time in East Africa Time.
fn east_africa(day: NaiveDate, hour: u32, minute: u32) -> anyhow::Result<DateTime<Utc>> {
    let local = day
        .and_hms_opt(hour, minute, 0)
        .with_context(|| format!("invalid time {hour:02}:{minute:02}"))?;
    Ok(local.and_utc() - EAST_AFRICA_OFFSET)
}

/// The demo fleet, read from the store.
struct DemoFleet {
    depots: Vec<DepotRecord>,
    users: HashMap<String, Actor>,
    /// In serial number order.
    cylinders: Vec<CylinderRecord>,
}

impl DemoFleet {
    async fn read(store: &dyn Store) -> anyhow::Result<Self> {
        let depots = store.list_depots().await?;

        let mut users = HashMap::new();
        let mut page = PageRequest {
            page: 1,
            per_page: PageRequest::MAX_PER_PAGE,
        };
        loop {
            let found = store.list_users(&UserFilter::default(), page).await?;
            for user in found.items {
                let actor = Actor {
                    user_id: user.id,
                    role: user.role,
                };
                users.insert(user.username, actor);
            }
            if !found.has_more {
                break;
            }
            page.page += 1;
        }

        let mut cylinders = Vec::new();
        let mut page = PageRequest {
            page: 1,
            per_page: PageRequest::MAX_PER_PAGE,
        };
        loop {
            let found = store
                .list_cylinders(&CylinderFilter::default(), Scope::All, page)
                .await?;
            cylinders.extend(found.items);
            if !found.has_more {
                break;
            }
            page.page += 1;
        }
        cylinders.sort_by(|a, b| a.serial_number.cmp(&b.serial_number));

        Ok(Self {
            depots,
            users,
            cylinders,
        })
    }

    fn depot(&self, name: &str) -> anyhow::Result<&DepotRecord> {
        self.depots
            .iter()
            .find(|depot| depot.name == name)
            .with_context(|| {
                format!("the demo depot '{name}' is missing; load the demo fleet first")
            })
    }

    fn actor(&self, username: &str) -> anyhow::Result<Actor> {
        self.users.get(username).copied().with_context(|| {
            format!("the demo user '{username}' is missing; load the demo fleet first")
        })
    }
}

/// Hands out each cylinder to at most one trip or stock count, so that the
/// scans of one cylinder never come from two trucks.
struct Allocator {
    /// Cylinder indexes per depot id, in serial number order.
    by_depot: HashMap<Uuid, Vec<usize>>,
    is_taken: Vec<bool>,
}

impl Allocator {
    fn new(cylinders: &[CylinderRecord]) -> Self {
        let mut by_depot: HashMap<Uuid, Vec<usize>> = HashMap::new();
        for (index, cylinder) in cylinders.iter().enumerate() {
            if let Some(depot) = cylinder.depot_id {
                by_depot.entry(depot).or_default().push(index);
            }
        }
        Self {
            by_depot,
            is_taken: vec![false; cylinders.len()],
        }
    }

    /// Returns the cylinders of `depot` not yet taken, in serial number
    /// order.
    fn free(&self, depot: Uuid) -> Vec<usize> {
        self.by_depot
            .get(&depot)
            .map(|list| {
                list.iter()
                    .copied()
                    .filter(|&index| !self.is_taken[index])
                    .collect()
            })
            .unwrap_or_default()
    }

    fn mark_taken(&mut self, chosen: &[usize]) {
        for &index in chosen {
            self.is_taken[index] = true;
        }
    }
}

/// A scan as planned, before it is recorded.
#[derive(Debug, Clone)]
struct PlannedScan {
    scanner: &'static str,
    cylinder: usize,
    scan_type: ScanType,
    address: String,
    latitude: f64,
    longitude: f64,
    accuracy_m: f64,
    scanned_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
    client_scan_id: Option<String>,
    /// True for scans that the offline phone queued.
    late: bool,
}

struct Plan {
    /// In the order they reach the server.
    scans: Vec<PlannedScan>,
    late: Option<LatePlan>,
}

struct LatePlan {
    scanner: &'static str,
    road: &'static str,
    offline_from: DateTime<Utc>,
    offline_until: DateTime<Utc>,
}

/// A polyline of route points with the straight-line distance of each
/// from the start.
struct Route {
    points: Vec<(f64, f64)>,
    from_start_km: Vec<f64>,
}

impl Route {
    fn new(points: Vec<(f64, f64)>) -> Self {
        let mut from_start_km = vec![0.0];
        for pair in points.windows(2) {
            let step = distance_km(&fix(pair[0]), &fix(pair[1]));
            from_start_km.push(from_start_km.last().copied().unwrap_or(0.0) + step);
        }
        Self {
            points,
            from_start_km,
        }
    }

    fn length_km(&self) -> f64 {
        self.from_start_km.last().copied().unwrap_or(0.0)
    }

    /// Distance from the start of `past_km` beyond route point `waypoint`.
    fn km_of(&self, waypoint: usize, past_km: f64) -> f64 {
        let base = self
            .from_start_km
            .get(waypoint)
            .copied()
            .unwrap_or_else(|| self.length_km());
        (base + past_km).min(self.length_km())
    }

    /// Interpolates the position `km` from the start, linearly between the
    /// two route points around it.
    fn position_at(&self, km: f64) -> (f64, f64) {
        let km = km.clamp(0.0, self.length_km());
        for (index, pair) in self.points.windows(2).enumerate() {
            let (start, end) = (self.from_start_km[index], self.from_start_km[index + 1]);
            if km <= end {
                let fraction = if end > start {
                    (km - start) / (end - start)
                } else {
                    0.0
                };
                let (from, to) = (pair[0], pair[1]);
                return (
                    from.0 + (to.0 - from.0) * fraction,
                    from.1 + (to.1 - from.1) * fraction,
                );
            }
        }
        self.points.last().copied().unwrap_or((0.0, 0.0))
    }
}

fn fix((latitude, longitude): (f64, f64)) -> Coordinates {
    Coordinates {
        latitude,
        longitude,
        accuracy_m: None,
    }
}

/// A truck's place along its route and its clock.
struct Truck<'a> {
    route: &'a Route,
    km: f64,
    clock: DateTime<Utc>,
    winding: f64,
    speed_kmh: f64,
}

impl Truck<'_> {
    fn drive_to(&mut self, km: f64) {
        let road_km = (km - self.km).abs() * self.winding;
        let seconds = (road_km / self.speed_kmh * 3600.0).round() as i64;
        self.clock += Duration::seconds(seconds);
        self.km = km;
    }

    fn position(&self) -> (f64, f64) {
        self.route.position_at(self.km)
    }
}

/// A cylinder handed over at a stop, with when and where.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    cylinder: usize,
    at: DateTime<Utc>,
    position: (f64, f64),
}

/// Builds the day's scans from `fleet` alone. `options` changes only the
/// upload order of the late batch.
fn plan_day(day: NaiveDate, fleet: &DemoFleet, options: ReplayOptions) -> anyhow::Result<Plan> {
    let mut planner = Planner {
        day,
        fleet,
        allocator: Allocator::new(&fleet.cylinders),
        jitter: Sequence(JITTER_SEED),
        scans: Vec::new(),
        delivered: HashMap::new(),
        late: None,
    };
    for trip in &TRIPS {
        planner.plan_trip(trip)?;
    }
    for check in &HOME_CHECKS {
        planner.plan_home_check(check)?;
    }
    planner.plan_cloned_label(&CLONED_LABEL)?;
    for check in &STOCK_CHECKS {
        planner.plan_stock_check(check)?;
    }

    let Planner {
        mut scans, late, ..
    } = planner;
    number_phone_scans(&mut scans, day);
    Ok(Plan {
        scans: upload_order(scans, options.late_batch_seed),
        late,
    })
}

struct Planner<'a> {
    day: NaiveDate,
    fleet: &'a DemoFleet,
    allocator: Allocator,
    /// GPS error and the seconds between scans.
    jitter: Sequence,
    scans: Vec<PlannedScan>,
    /// The cylinders handed over at each stop, by stop label.
    delivered: HashMap<&'static str, Vec<Delivery>>,
    late: Option<LatePlan>,
}

impl Planner<'_> {
    /// Returns true for a cylinder that may appear in the day at all.
    fn usable(&self, index: usize) -> bool {
        let cylinder = &self.fleet.cylinders[index];
        !cylinder.is_tampered
            && !matches!(
                cylinder.status,
                CylinderStatus::Retired | CylinderStatus::Lost
            )
    }

    /// Returns true for a cylinder that may be filled and delivered on the
    /// day. Empties and stock may be past their requalification date, and
    /// then scan as EXPIRED, but no truck loads such a cylinder.
    fn in_service(&self, index: usize) -> bool {
        let cylinder = &self.fleet.cylinders[index];
        self.usable(index)
            && cylinder.expiry_date >= self.day
            && cylinder.status != CylinderStatus::Maintenance
    }

    /// Takes up to `count` cylinders of `depot` that `accept` allows.
    fn take(&mut self, depot: Uuid, count: usize, accept: fn(&Self, usize) -> bool) -> Vec<usize> {
        let candidates = self.allocator.free(depot);
        let chosen: Vec<usize> = candidates
            .into_iter()
            .filter(|&index| accept(self, index))
            .take(count)
            .collect();
        self.allocator.mark_taken(&chosen);
        chosen
    }

    /// Plans a scan by `scanner` at `position` with a few metres of GPS
    /// error.
    fn scan(
        &mut self,
        scanner: &'static str,
        cylinder: usize,
        address: &str,
        position: (f64, f64),
        scanned_at: DateTime<Utc>,
    ) {
        // Up to 25 m in each direction; a degree of latitude is 111.32 km.
        let north_m = self.jitter.next(51) as f64 - 25.0;
        let east_m = self.jitter.next(51) as f64 - 25.0;
        let latitude = position.0 + north_m / 111_320.0;
        let longitude = position.1 + east_m / (111_320.0 * position.0.to_radians().cos());
        self.scans.push(PlannedScan {
            scanner,
            cylinder,
            scan_type: ScanType::Qr,
            address: address.to_string(),
            latitude,
            longitude,
            accuracy_m: 5.0 + self.jitter.next(26) as f64,
            scanned_at,
            received_at: scanned_at,
            client_scan_id: None,
            late: false,
        });
    }

    /// Returns the time a driver takes for the next scan: a minute or a
    /// little more.
    fn next_scan_gap(&mut self) -> Duration {
        Duration::seconds(60 + self.jitter.next(30) as i64)
    }

    /// Plans one truck's day: loading at the depot, the stops along the
    /// route and unloading at the end, with the late batch if the phone
    /// loses signal.
    fn plan_trip(&mut self, trip: &Trip) -> anyhow::Result<()> {
        self.fleet.actor(trip.driver)?;
        let depot = self.fleet.depot(trip.depot)?;
        let start = (depot.latitude, depot.longitude);
        let mut points = vec![start];
        points.extend(
            trip.towns
                .iter()
                .map(|town| (town.latitude, town.longitude)),
        );
        let end_depot = match trip.destination {
            Some(name) => {
                let end = self.fleet.depot(name)?;
                points.push((end.latitude, end.longitude));
                end
            }
            None => depot,
        };
        let route = Route::new(points);
        let mut truck = Truck {
            route: &route,
            km: 0.0,
            clock: east_africa(self.day, trip.start.0, trip.start.1)?,
            winding: trip.winding,
            speed_kmh: trip.speed_kmh,
        };
        let first_scan = self.scans.len();

        // Loaded in serial number order and delivered in the same order.
        let mut load: VecDeque<usize> = self.take(depot.id, trip.load, Self::in_service).into();
        let loading_bay = format!("Loading bay, {}", depot.name);
        for &cylinder in &load {
            self.scan(trip.driver, cylinder, &loading_bay, start, truck.clock);
            truck.clock += self.next_scan_gap();
        }
        truck.clock += Duration::minutes(5);

        let demands: Vec<usize> = trip.stops.iter().map(|stop| stop.deliver).collect();
        let shares = share_out(load.len(), &demands);
        let mut empties = Vec::new();
        let mut offline = None;
        for (index, (stop, &share)) in trip.stops.iter().zip(&shares).enumerate() {
            truck.drive_to(route.km_of(stop.waypoint, stop.past_km));
            let stop_position = truck.position();
            for _ in 0..share {
                let Some(cylinder) = load.pop_front() else {
                    break;
                };
                self.scan(
                    trip.driver,
                    cylinder,
                    stop.label,
                    stop_position,
                    truck.clock,
                );
                let delivery = Delivery {
                    cylinder,
                    at: truck.clock,
                    position: stop_position,
                };
                self.delivered.entry(stop.label).or_default().push(delivery);
                truck.clock += self.next_scan_gap();
            }
            // Empties go back to the depot where the trip ends.
            for cylinder in self.take(end_depot.id, stop.collect, Self::usable) {
                self.scan(
                    trip.driver,
                    cylinder,
                    stop.label,
                    stop_position,
                    truck.clock,
                );
                empties.push(cylinder);
                truck.clock += self.next_scan_gap();
            }
            truck.clock += Duration::minutes(stop.minutes);
            if let Some(outage) = &trip.outage
                && outage.after_stop == index
            {
                offline = Some((truck.clock, truck.clock + Duration::minutes(outage.minutes)));
            }
        }

        // Unload the empties and any full cylinders left over.
        let unload_km = if trip.destination.is_some() {
            route.length_km()
        } else {
            0.0
        };
        truck.drive_to(unload_km);
        let unloading_bay = format!("Unloading bay, {}", end_depot.name);
        let end = (end_depot.latitude, end_depot.longitude);
        for cylinder in load.into_iter().chain(empties) {
            self.scan(trip.driver, cylinder, &unloading_bay, end, truck.clock);
            truck.clock += self.next_scan_gap();
        }

        if let Some((from, until)) = offline {
            let mut queued = 0;
            for scan in &mut self.scans[first_scan..] {
                if scan.scanned_at >= from && scan.scanned_at < until {
                    scan.late = true;
                    scan.received_at = until;
                    queued += 1;
                }
            }
            if queued == 0 {
                return Ok(());
            }
            self.late = Some(LatePlan {
                scanner: trip.driver,
                road: trip.road,
                offline_from: from,
                offline_until: until,
            });
        }
        Ok(())
    }

    fn plan_home_check(&mut self, check: &HomeCheck) -> anyhow::Result<()> {
        self.fleet.actor(check.customer)?;
        let Some(delivery) = self.first_delivery(check.stop) else {
            return Ok(());
        };
        // A few hundred metres from where the truck stopped.
        let home = (delivery.position.0 + 0.0020, delivery.position.1 - 0.0015);
        let at = delivery.at + Duration::minutes(check.after_minutes);
        self.scan(check.customer, delivery.cylinder, check.label, home, at);
        Ok(())
    }

    fn plan_cloned_label(&mut self, clone: &ClonedLabel) -> anyhow::Result<()> {
        self.fleet.actor(clone.customer)?;
        let Some(delivery) = self.first_delivery(clone.genuine_stop) else {
            return Ok(());
        };
        let place = (clone.place.latitude, clone.place.longitude);
        let at = delivery.at + Duration::minutes(clone.after_minutes);
        self.scan(clone.customer, delivery.cylinder, clone.label, place, at);
        Ok(())
    }

    fn plan_stock_check(&mut self, check: &StockCheck) -> anyhow::Result<()> {
        self.fleet.actor(check.dispatcher)?;
        let depot = self.fleet.depot(check.depot)?;
        let mut clock = east_africa(self.day, check.start.0, check.start.1)?;
        let label = format!("Stock count, {}", depot.name);
        let position = (depot.latitude, depot.longitude);
        for cylinder in self.take(depot.id, check.max, Self::usable) {
            self.scan(check.dispatcher, cylinder, &label, position, clock);
            if let Some(scan) = self.scans.last_mut() {
                scan.scan_type = ScanType::Rfid;
            }
            clock += Duration::seconds(30);
        }
        Ok(())
    }

    fn first_delivery(&self, stop: &str) -> Option<Delivery> {
        self.delivered
            .get(stop)
            .and_then(|list| list.first())
            .copied()
    }
}

/// Shares `load` cylinders among stops that request `demands`: one to
/// each stop in turn, so that a small fleet still reaches every stop.
/// A stop never gets more than it requests.
fn share_out(load: usize, demands: &[usize]) -> Vec<usize> {
    let mut shares = vec![0; demands.len()];
    let mut left = load;
    while left > 0 {
        let mut handed = false;
        for (share, &demand) in shares.iter_mut().zip(demands) {
            if left > 0 && *share < demand {
                *share += 1;
                left -= 1;
                handed = true;
            }
        }
        if !handed {
            break;
        }
    }
    shares
}

/// Gives each QR scan from a phone the id that its app would send: the
/// scanner, the day and a counter in event order.
fn number_phone_scans(scans: &mut [PlannedScan], day: NaiveDate) {
    let mut order: Vec<usize> = (0..scans.len()).collect();
    order.sort_by_key(|&index| (scans[index].scanned_at, index));
    let mut counters: HashMap<&'static str, u32> = HashMap::new();
    for index in order {
        let scan = &mut scans[index];
        if scan.scan_type != ScanType::Qr {
            continue;
        }
        let counter = counters.entry(scan.scanner).or_insert(0);
        *counter += 1;
        scan.client_scan_id = Some(format!(
            "{}:{}:{:04}",
            scan.scanner,
            day.format("%Y%m%d"),
            counter
        ));
    }
}

/// Orders the scans as they reach the server: each online scan when it
/// happens, and the late batch in one go when the outage ends, shuffled
/// by `seed`, one second apart.
fn upload_order(scans: Vec<PlannedScan>, seed: u64) -> Vec<PlannedScan> {
    let (mut batch, mut online): (Vec<_>, Vec<_>) = scans.into_iter().partition(|scan| scan.late);
    batch.sort_by_key(|scan| scan.scanned_at);
    // xorshift never leaves 0, so 0 gets a fixed nonzero seed.
    let mut sequence = Sequence(if seed == 0 { JITTER_SEED } else { seed });
    for index in (1..batch.len()).rev() {
        let other = sequence.next(index as u64 + 1) as usize;
        batch.swap(index, other);
    }
    for (position, scan) in batch.iter_mut().enumerate() {
        scan.received_at += Duration::seconds(position as i64);
    }

    online.extend(batch);
    // A stable sort keeps the shuffled order within the batch.
    online.sort_by_key(|scan| scan.received_at);
    online
}

/// Records the planned scans in upload order and summarises the verdicts.
async fn record(
    state: &AppState,
    day: NaiveDate,
    fleet: &DemoFleet,
    plan: Plan,
) -> anyhow::Result<ReplaySummary> {
    let store: &dyn Store = state.store.as_ref();
    let respond = |draft: &ScanDraft<'_>| {
        serde_json::json!({
            "scan_id": draft.scan_id,
            "result": draft.verdict.result,
            "message": draft.verdict.message,
            "cylinder": draft.cylinder.map(|cylinder| serde_json::json!({
                "id": cylinder.id,
                "serial_number": cylinder.serial_number,
            })),
            "is_suspicious": draft.suspicious_reason.is_some(),
            "suspicious_reason": draft.suspicious_reason,
            "warnings": draft.verdict.warnings,
            "scanned_at": draft.scanned_at,
        })
        .to_string()
    };

    let mut counts: HashMap<ScanResult, usize> = HashMap::new();
    let mut suspicious = Vec::new();
    let mut late_scans = Vec::new();
    for planned in &plan.scans {
        let cylinder = &fleet.cylinders[planned.cylinder];
        let raw_code = match planned.scan_type {
            ScanType::Qr => cylinder.qr_code.as_str(),
            ScanType::Rfid => cylinder.rfid_tag.as_str(),
        };
        let code = ScanCode::parse("code", raw_code, planned.scan_type)?;
        let position = Coordinates::parse(
            Some(planned.latitude),
            Some(planned.longitude),
            Some(planned.accuracy_m),
        )?;
        let input = ScanInput {
            id: Uuid::new_v4(),
            scanner: fleet.actor(planned.scanner)?,
            scan_type: planned.scan_type,
            code: code.as_str().to_string(),
            raw_code: raw_code.to_string(),
            position,
            address: Some(planned.address.clone()),
            ip_address: None,
            user_agent: Some(USER_AGENT.to_string()),
            scanned_at: planned.scanned_at,
            received_at: planned.received_at,
            client_scan_id: planned.client_scan_id.clone(),
        };
        let recorded = match store
            .record_scan(input, &state.config.tamper, &respond)
            .await?
        {
            ScanOutcome::Recorded(recorded) => recorded,
            ScanOutcome::Replayed(_) => bail!(
                "{} already sent the scan {}: this day was replayed into this database before; replay it into a fresh one",
                planned.scanner,
                planned.client_scan_id.as_deref().unwrap_or("-")
            ),
            ScanOutcome::ScannerRejected => bail!(
                "{} is not an active user with their planned role in this database, so their scans cannot be recorded",
                planned.scanner
            ),
        };

        *counts.entry(recorded.result).or_default() += 1;
        if recorded.is_suspicious {
            suspicious.push(describe_suspicious(store, recorded.id, cylinder, fleet).await?);
        }
        if planned.late {
            late_scans.push(LateScan {
                scan_id: recorded.id,
                client_scan_id: planned.client_scan_id.clone().unwrap_or_default(),
                cylinder_id: cylinder.id,
                scanned_at: planned.scanned_at,
                received_at: planned.received_at,
                result: recorded.result,
                is_suspicious: recorded.is_suspicious,
            });
        }
    }

    Ok(ReplaySummary {
        day,
        scans: plan.scans.len(),
        results: ScanResult::ALL
            .into_iter()
            .map(|result| (result, counts.get(&result).copied().unwrap_or(0)))
            .collect(),
        suspicious,
        late: plan.late.map(|late| LateBatch {
            scanner: late.scanner.to_string(),
            road: late.road,
            offline_from: late.offline_from,
            offline_until: late.offline_until,
            scans: late_scans,
        }),
    })
}

/// Describes a suspicious scan from what the store recorded: its place,
/// its reason and the nearest located scan of the same cylinder.
async fn describe_suspicious(
    store: &dyn Store,
    scan_id: Uuid,
    cylinder: &CylinderRecord,
    fleet: &DemoFleet,
) -> anyhow::Result<SuspiciousScan> {
    let page = PageRequest {
        page: 1,
        per_page: PageRequest::MAX_PER_PAGE,
    };
    let scans = store.cylinder_scans(cylinder.id, page).await?.items;
    let this = scans
        .iter()
        .find(|scan| scan.id == scan_id)
        .with_context(|| {
            format!("the suspicious scan {scan_id} is missing from its cylinder's scans")
        })?;
    let nearest = scans
        .iter()
        .filter(|other| other.id != scan_id && other.latitude.is_some())
        .min_by_key(|other| (other.scanned_at - this.scanned_at).abs())
        .map(|other| NearestScan {
            scan_id: other.id,
            scanner: username_of(fleet, other),
            scanned_at: other.scanned_at,
            place: other.address.clone().unwrap_or_default(),
        });
    Ok(SuspiciousScan {
        scan_id,
        cylinder_id: cylinder.id,
        serial_number: cylinder.serial_number.clone(),
        scanner: username_of(fleet, this),
        scanned_at: this.scanned_at,
        place: this.address.clone().unwrap_or_default(),
        reason: this.suspicious_reason.clone().unwrap_or_default(),
        nearest,
    })
}

fn username_of(fleet: &DemoFleet, scan: &ScanRecord) -> String {
    fleet
        .users
        .iter()
        .find(|(_, actor)| actor.user_id == scan.scanner_id)
        .map_or_else(|| scan.scanner_id.to_string(), |(name, _)| name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_interpolates_between_waypoints() {
        let route = Route::new(vec![
            (THIKA.latitude, THIKA.longitude),
            (JUJA.latitude, JUJA.longitude),
            (RUIRU.latitude, RUIRU.longitude),
        ]);
        let thika_juja = distance_km(&fix(route.points[0]), &fix(route.points[1]));
        assert!((route.km_of(1, 0.0) - thika_juja).abs() < 1e-9);
        let middle = route.position_at(thika_juja / 2.0);
        assert!((middle.0 - (THIKA.latitude + JUJA.latitude) / 2.0).abs() < 1e-9);
        assert!((middle.1 - (THIKA.longitude + JUJA.longitude) / 2.0).abs() < 1e-9);
        let beyond = route.position_at(route.length_km() + 10.0);
        assert_eq!(beyond, (RUIRU.latitude, RUIRU.longitude));
    }

    #[test]
    fn share_out_reaches_every_stop() {
        assert_eq!(share_out(16, &[2, 2, 3]), vec![2, 2, 3]);
        assert_eq!(share_out(5, &[2, 2, 3]), vec![2, 2, 1]);
        assert_eq!(share_out(2, &[2, 2, 3]), vec![1, 1, 0]);
        assert_eq!(share_out(0, &[2, 2]), vec![0, 0]);
    }

    #[test]
    fn truck_speeds_are_realistic() {
        for trip in &TRIPS {
            assert!(
                (40.0..=70.0).contains(&trip.speed_kmh),
                "{}: {} km/h",
                trip.driver,
                trip.speed_kmh
            );
        }
    }

    #[test]
    fn yesterday_follows_east_africa_time() {
        let late_evening_utc = DateTime::parse_from_rfc3339("2026-05-03T22:30:00Z")
            .map(|at| at.with_timezone(&Utc))
            .unwrap();
        // 01:30 on 4 May in Nairobi, so yesterday is 3 May.
        assert_eq!(
            yesterday_in_east_africa(late_evening_utc),
            NaiveDate::from_ymd_opt(2026, 5, 3).unwrap()
        );
    }
}
