//! `cyltrack demo`: a server on a fresh SQLite database with a sample fleet
//! of depots, staff, drivers, customers and cylinders around Nairobi and
//! Mombasa.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{Datelike, Duration, NaiveDate, Utc};
use uuid::Uuid;

use crate::app;
use crate::auth::create_account;
use crate::config::Variables;
use crate::domain::cylinder::NewCylinder;
use crate::domain::user::NewUser;
use crate::domain::value::{
    Brand, CapacityKg, Email, FullName, Password, Phone, SerialNumber, Username,
};
use crate::domain::{CylinderStatus, Role};
use crate::http::AppState;
use crate::storage::{Actor, Assignment, NewDepotRecord, StatusChange, StatusChangeOutcome, Store};

pub mod replay;

/// Depots of the demo: name, town, latitude, longitude.
const DEPOTS: [(&str, &str, f64, f64); 4] = [
    ("Industrial Area Depot", "Nairobi", -1.3090, 36.8510),
    ("Embakasi Depot", "Nairobi", -1.3190, 36.8990),
    ("Changamwe Depot", "Mombasa", -4.0260, 39.6310),
    ("Nyali Depot", "Mombasa", -4.0220, 39.7200),
];

/// Demo accounts: username, full name, role, phone.
const PEOPLE: [(&str, &str, Role, &str); 13] = [
    ("admin", "Grace Wanjiku", Role::Admin, "+254711000001"),
    (
        "dispatch.nairobi",
        "Peter Otieno",
        Role::Dispatcher,
        "+254711000002",
    ),
    (
        "dispatch.mombasa",
        "Amina Hassan",
        Role::Dispatcher,
        "+254711000003",
    ),
    ("driver.kamau", "John Kamau", Role::Driver, "+254722000001"),
    (
        "driver.njoroge",
        "Samuel Njoroge",
        Role::Driver,
        "+254722000002",
    ),
    ("driver.omar", "Omar Said", Role::Driver, "+254722000003"),
    (
        "driver.mwangi",
        "David Mwangi",
        Role::Driver,
        "+254722000004",
    ),
    (
        "mama.njeri",
        "Njeri Kariuki",
        Role::Customer,
        "+254733000001",
    ),
    (
        "kibanda.hotel",
        "Kibanda Hotel, Westlands",
        Role::Customer,
        "+254733000002",
    ),
    ("akinyi", "Akinyi Odhiambo", Role::Customer, "+254733000003"),
    (
        "pwani.restaurant",
        "Pwani Restaurant, Nyali",
        Role::Customer,
        "+254733000004",
    ),
    ("fatuma", "Fatuma Ali", Role::Customer, "+254733000005"),
    (
        "shule.ya.msingi",
        "Kilifi Road Primary School",
        Role::Customer,
        "+254733000006",
    ),
];

const BRANDS: [&str; 3] = ["Jiko Gas", "Pwani Gas", "Safari LPG"];

/// Creates the demo folder and database, loads the fleet, replays
/// yesterday's scans on it, prints the logins and what the replay found,
/// and serves until Ctrl-C.
pub async fn run(dir: Option<PathBuf>, listen: SocketAddr, cylinders: u32) -> anyhow::Result<()> {
    // Bind first, so that a busy port leaves no half-made demo folder.
    let (listener, bound) = app::bind(listen)
        .await
        .with_context(|| format!("pass a free address to --listen instead of {listen}"))?;
    let dir = prepare_dir(dir)?;
    let config = crate::cli::load_config(&demo_variables(&dir, listen))?;
    let store = app::open_store(&config).await?;
    let state = app::build_state(config, store).await?;

    let password = demo_password()?;
    let fleet = load_fleet(&state, &password, cylinders).await?;
    let yesterday = replay::yesterday_in_east_africa(Utc::now());
    let started = std::time::Instant::now();
    let replayed = replay::replay_day(&state, yesterday)
        .await
        .with_context(|| format!("cannot replay {yesterday} on the demo fleet"))?;
    tracing::info!(
        day = %yesterday,
        scans = replayed.scans,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "replayed a day of scans on the demo fleet"
    );
    print_welcome(&dir, bound, &password, &fleet, &replayed);
    app::serve(state, listener, app::shutdown_signal()).await
}

fn prepare_dir(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let Some(dir) = dir else {
        let temporary = tempfile::Builder::new()
            .prefix("cyltrack-demo-")
            .tempdir()
            .context("cannot create a temporary folder")?;
        return Ok(temporary.keep());
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the folder {}", dir.display()))?;
    if dir.join("cyltrack.db").exists() {
        bail!(
            "{} already contains a cyltrack.db; pass an empty folder to --dir, or leave --dir out",
            dir.display()
        );
    }
    Ok(dir)
}

/// Returns the process variables with the database, secrets file and listen
/// address pointed at the demo. DEBUG is on because the demo is not a deployment.
fn demo_variables(dir: &Path, listen: SocketAddr) -> Variables {
    let mut variables: Variables = std::env::vars().collect();
    variables.insert("DEBUG".into(), "true".into());
    variables.insert(
        "DATABASE_URL".into(),
        format!("sqlite://{}", dir.join("cyltrack.db").display()),
    );
    variables.insert(
        "SECRETS_FILE".into(),
        dir.join("secrets.env").display().to_string(),
    );
    variables.insert("LISTEN_ADDR".into(), listen.to_string());
    for name in ["SECRET_KEY", "JWT_SECRET_KEY", "JWT_PREVIOUS_SECRET_KEYS"] {
        variables.remove(name);
    }
    variables
}

/// Generates a random password for all demo accounts, so that no demo
/// password is written in the source.
fn demo_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 9];
    crate::domain::codes::fill_random(&mut bytes)?;
    Ok(format!("demo-{}", hex::encode(bytes)))
}

/// Summary of the loaded demo data, for the welcome text.
pub struct Fleet {
    pub depots: usize,
    pub cylinders: usize,
    pub logins: Vec<(String, Role)>,
}

/// Small deterministic generator, so that every demo fleet looks the same
/// apart from its random codes.
struct Sequence(u64);

impl Sequence {
    fn next(&mut self, bound: u64) -> u64 {
        // xorshift64*: plenty for picking sample data.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}

/// Loads depots, accounts and `count` cylinders in varied states.
pub async fn load_fleet(state: &AppState, password: &str, count: u32) -> anyhow::Result<Fleet> {
    let store: &dyn Store = state.store.as_ref();
    let now = Utc::now();

    let mut depot_ids = Vec::new();
    for (name, town, latitude, longitude) in DEPOTS {
        let depot = NewDepotRecord {
            name: name.into(),
            town: town.into(),
            latitude,
            longitude,
        };
        depot_ids.push(store.create_depot(depot, now).await?.id);
    }

    let mut accounts: Vec<(Uuid, Role)> = Vec::new();
    let mut logins = Vec::new();
    for (username, full_name, role, phone) in PEOPLE {
        let new_user = NewUser {
            username: Username::parse("username", username)?,
            full_name: FullName::parse("full_name", full_name)?,
            email: Some(Email::parse(
                "email",
                &format!("{username}@demo.cyltrack.co.ke"),
            )?),
            phone: Some(Phone::parse("phone", phone)?),
            role,
            password: Password::parse("password", password.to_string())?,
        };
        let user = create_account(store, new_user).await?;
        accounts.push((user.id, role));
        logins.push((username.to_string(), role));
    }
    let ids_of = |wanted: Role| -> Vec<Uuid> {
        accounts
            .iter()
            .filter(|(_, role)| *role == wanted)
            .map(|(id, _)| *id)
            .collect()
    };
    let (drivers, customers) = (ids_of(Role::Driver), ids_of(Role::Customer));
    let dispatcher = Actor {
        user_id: ids_of(Role::Dispatcher)
            .first()
            .copied()
            .unwrap_or(Uuid::nil()),
        role: Role::Dispatcher,
    };

    let mut sequence = Sequence(0x9E37_79B9_7F4A_7C15);
    let today = now.date_naive();
    for index in 0..count {
        let cylinder = sample_cylinder(&mut sequence, index, &depot_ids, today)?;
        let record = crate::http::register_cylinder(state, &cylinder, dispatcher).await?;
        let driver = drivers[sequence.next(drivers.len() as u64) as usize];
        let customer = customers[sequence.next(customers.len() as u64) as usize];
        move_through_day(
            store,
            &mut sequence,
            record.id,
            record.expiry_date < today,
            dispatcher,
            driver,
            customer,
        )
        .await?;
    }

    Ok(Fleet {
        depots: depot_ids.len(),
        cylinders: count as usize,
        logins,
    })
}

fn sample_cylinder(
    sequence: &mut Sequence,
    index: u32,
    depots: &[Uuid],
    today: NaiveDate,
) -> anyhow::Result<NewCylinder> {
    let capacity = if sequence.next(3) == 0 { 6.0 } else { 13.0 };
    let brand = BRANDS[sequence.next(BRANDS.len() as u64) as usize];
    let prefix: String = brand.chars().filter(char::is_ascii_uppercase).collect();
    let years_old = 1 + sequence.next(14) as i64;
    let manufacture_date = today - Duration::days(years_old * 365 + sequence.next(365) as i64);
    // Cylinders are requalified every 10 years here, so those made more
    // than 10 years ago without a recent test show as expired.
    let expiry_date = manufacture_date
        .with_year(manufacture_date.year() + 10)
        .unwrap_or(manufacture_date + Duration::days(3652));
    Ok(NewCylinder {
        serial_number: SerialNumber::parse(
            "serial_number",
            &format!("{prefix}-{capacity:02}-{:06}", 100_000 + index),
        )?,
        brand: Brand::parse("brand", brand)?,
        capacity_kg: CapacityKg::parse("capacity_kg", capacity)?,
        manufacture_date,
        expiry_date,
        depot_id: Some(depots[sequence.next(depots.len() as u64) as usize]),
    })
}

/// Moves a new cylinder along a typical path, so that the fleet shows every
/// common status: some stay in stock, some are out with drivers or at
/// customers, expired ones go to maintenance.
async fn move_through_day(
    store: &dyn Store,
    sequence: &mut Sequence,
    cylinder_id: Uuid,
    expired: bool,
    actor: Actor,
    driver: Uuid,
    customer: Uuid,
) -> anyhow::Result<()> {
    use CylinderStatus::*;
    let path: &[CylinderStatus] = if expired {
        &[Maintenance]
    } else {
        match sequence.next(10) {
            0..=1 => &[],
            2..=3 => &[Filled],
            4 => &[Filled, InTransit],
            5..=8 => &[Filled, InTransit, Delivered],
            _ => &[Filled, InTransit, Delivered, Returned],
        }
    };

    let mut current = InStock;
    for &next in path {
        if next == InTransit {
            let assignment = Assignment {
                cylinder_id,
                customer_id: None,
                driver_id: Some(Some(driver)),
                notes: "Loaded for delivery".into(),
            };
            store.assign_cylinder(assignment, actor, Utc::now()).await?;
        }
        if next == Delivered {
            let assignment = Assignment {
                cylinder_id,
                customer_id: Some(Some(customer)),
                driver_id: None,
                notes: String::new(),
            };
            store.assign_cylinder(assignment, actor, Utc::now()).await?;
        }
        let change = StatusChange {
            cylinder_id,
            expected: current,
            to: next,
            notes: String::new(),
        };
        match store.change_status(change, actor, Utc::now()).await? {
            StatusChangeOutcome::Changed(_) => current = next,
            other => {
                bail!("demo fleet: cylinder {cylinder_id} could not move to {next}: {other:?}")
            }
        }
    }
    Ok(())
}

fn print_welcome(
    dir: &Path,
    address: SocketAddr,
    password: &str,
    fleet: &Fleet,
    replayed: &replay::ReplaySummary,
) {
    println!();
    println!("cyltrack demo is running at http://{address}");
    println!("  data folder: {}", dir.display());
    println!(
        "  fleet: {} depots, {} cylinders",
        fleet.depots, fleet.cylinders
    );
    println!("  API description: http://{address}/api/openapi.json");
    println!();
    println!("Yesterday on the demo fleet, replayed through the cloning rules:");
    println!("{replayed}");
    println!();
    println!("Logins (every account uses the password {password}):");
    for (username, role) in &fleet.logins {
        println!("  {username:<20} {role}");
    }
    println!();
    println!("Try it:");
    println!(
        "  curl -s http://{address}/api/v1/auth/login -H 'content-type: application/json' \\\n       -d '{{\"username\":\"dispatch.nairobi\",\"password\":\"{password}\"}}'"
    );
    println!("Press Ctrl-C to stop.");
}
