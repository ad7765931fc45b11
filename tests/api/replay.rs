//! The demo's replayed day: the cloning rules catch the one cloned label
//! and nothing else, and the late batch of an offline phone raises no
//! alarm in any upload order.

use std::collections::HashSet;

use chrono::{Duration, Utc};
use cyltrack::demo::replay::{self, ReplayOptions, ReplaySummary};
use cyltrack::domain::scan::ScanResult;
use cyltrack::http::AppState;
use cyltrack::storage::{CylinderFilter, CylinderRecord, PageRequest, ScanRecord, Scope};

use crate::helpers::{Backend, PASSWORD, fresh_store, on_both_backends, test_variables};

/// The fleet size of `cyltrack demo`.
const FLEET: u32 = 300;

const ALL_ROWS: PageRequest = PageRequest {
    page: 1,
    per_page: PageRequest::MAX_PER_PAGE,
};

/// A store with the demo fleet and yesterday replayed on it.
struct ReplayedDay {
    state: AppState,
    summary: ReplaySummary,
    _dir: tempfile::TempDir,
}

async fn replay_yesterday(backend: Backend, options: ReplayOptions) -> ReplayedDay {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("temp dir: {error}"));
    let (config, _) = cyltrack::config::load(&test_variables(dir.path()))
        .unwrap_or_else(|error| panic!("config: {error}"));
    let store = fresh_store(backend, dir.path()).await;
    let state = cyltrack::app::build_state(config, store)
        .await
        .unwrap_or_else(|error| panic!("build state: {error}"));
    cyltrack::demo::load_fleet(&state, PASSWORD, FLEET)
        .await
        .unwrap_or_else(|error| panic!("load fleet: {error:#}"));

    let day = replay::yesterday_in_east_africa(Utc::now());
    let summary = replay::replay_day_with(&state, day, options)
        .await
        .unwrap_or_else(|error| panic!("replay {day}: {error:#}"));
    ReplayedDay {
        state,
        summary,
        _dir: dir,
    }
}

async fn all_cylinders(state: &AppState, filter: &CylinderFilter) -> Vec<CylinderRecord> {
    let mut cylinders = Vec::new();
    let mut page = ALL_ROWS;
    loop {
        let found = state
            .store
            .list_cylinders(filter, Scope::All, page)
            .await
            .unwrap_or_else(|error| panic!("list cylinders: {error}"));
        cylinders.extend(found.items);
        if !found.has_more {
            return cylinders;
        }
        page.page += 1;
    }
}

/// Returns every scan in the store, cylinder by cylinder.
async fn all_scans(state: &AppState) -> Vec<ScanRecord> {
    let mut scans = Vec::new();
    for cylinder in all_cylinders(state, &CylinderFilter::default()).await {
        let found = state
            .store
            .cylinder_scans(cylinder.id, ALL_ROWS)
            .await
            .unwrap_or_else(|error| panic!("scans of {}: {error}", cylinder.serial_number));
        assert!(
            !found.has_more,
            "{} has over 200 scans",
            cylinder.serial_number
        );
        scans.extend(found.items);
    }
    scans
}

async fn replay_catches_only_the_clone(backend: Backend) {
    // `_dir` keeps the SQLite database until the end of the test.
    let ReplayedDay {
        state,
        summary,
        _dir,
    } = replay_yesterday(backend, ReplayOptions::default()).await;
    let printed = summary.to_string();

    // One suspicious scan: the copy of a Mombasa label scanned in Nakuru.
    assert_eq!(summary.suspicious.len(), 1, "{printed}");
    let clone = &summary.suspicious[0];
    assert_eq!(clone.scanner, "akinyi", "{printed}");
    assert_eq!(clone.place, "Nakuru town", "{printed}");
    assert!(
        clone.reason.starts_with("moved "),
        "the movement rule fired: {}",
        clone.reason
    );
    assert!(
        clone.reason.contains("possible cloned label"),
        "{}",
        clone.reason
    );
    let genuine = clone
        .nearest
        .as_ref()
        .unwrap_or_else(|| panic!("no genuine scan next to the clone: {printed}"));
    assert_eq!(genuine.scanner, "driver.omar", "{printed}");
    assert_eq!(genuine.place, "Bamburi, Mombasa", "{printed}");
    let gap = clone.scanned_at - genuine.scanned_at;
    assert!(
        gap > Duration::zero() && gap < Duration::minutes(30),
        "the copy is scanned within half an hour after the genuine label: {gap}"
    );
    assert!(printed.contains(&clone.serial_number), "{printed}");

    // The store agrees: one suspicious scan, one flagged cylinder with one
    // TAMPER_DETECTED entry, one security event.
    let scans = all_scans(&state).await;
    let suspicious: Vec<&ScanRecord> = scans.iter().filter(|scan| scan.is_suspicious).collect();
    assert_eq!(suspicious.len(), 1, "{printed}");
    assert_eq!(suspicious[0].id, clone.scan_id);
    assert_eq!(suspicious[0].cylinder_id, Some(clone.cylinder_id));

    let tampered_filter = CylinderFilter {
        tampered: Some(true),
        ..CylinderFilter::default()
    };
    let tampered = all_cylinders(&state, &tampered_filter).await;
    assert_eq!(tampered.len(), 1, "{printed}");
    assert_eq!(tampered[0].id, clone.cylinder_id);
    assert_eq!(tampered[0].serial_number, clone.serial_number);
    assert!(tampered[0].is_tampered);

    let history = state
        .store
        .cylinder_history(clone.cylinder_id, ALL_ROWS)
        .await
        .unwrap_or_else(|error| panic!("history: {error}"));
    let detected = history
        .items
        .iter()
        .filter(|entry| entry.event_type == "TAMPER_DETECTED")
        .count();
    assert_eq!(detected, 1, "{:?}", history.items);
    let events = state
        .store
        .pending_security_events()
        .await
        .unwrap_or_else(|error| panic!("security events: {error}"));
    assert_eq!(events, 1);

    // The late batch arrived after the outage and raised nothing.
    let late = summary
        .late
        .as_ref()
        .unwrap_or_else(|| panic!("no late batch: {printed}"));
    assert_eq!(late.scanner, "driver.kamau");
    assert_eq!(late.offline_until - late.offline_from, Duration::hours(2));
    assert!(late.scans.len() >= 10, "{printed}");
    for scan in &late.scans {
        assert!(
            !scan.is_suspicious,
            "late scan {} raised an alarm",
            scan.client_scan_id
        );
        assert_ne!(scan.cylinder_id, clone.cylinder_id);
        assert!(
            scan.scanned_at >= late.offline_from && scan.scanned_at < late.offline_until,
            "{} was scanned outside the outage",
            scan.client_scan_id
        );
        assert!(
            scan.received_at >= late.offline_until,
            "{}",
            scan.client_scan_id
        );
        assert!(!scan.client_scan_id.is_empty());
    }
    let ids: HashSet<&str> = late
        .scans
        .iter()
        .map(|scan| scan.client_scan_id.as_str())
        .collect();
    assert_eq!(ids.len(), late.scans.len(), "client scan ids are unique");
    let stored_late = scans
        .iter()
        .filter(|scan| {
            scan.client_scan_id
                .as_deref()
                .is_some_and(|id| ids.contains(id))
        })
        .count();
    assert_eq!(stored_late, late.scans.len());

    // The counts add up to the scans recorded, and no scan is in the
    // future.
    let counted: usize = summary.results.iter().map(|(_, count)| count).sum();
    assert_eq!(counted, summary.scans, "{printed}");
    assert_eq!(scans.len(), summary.scans, "{printed}");
    assert!(
        (150..=500).contains(&summary.scans),
        "a few hundred scans: {printed}"
    );
    assert_eq!(summary.count(ScanResult::Tampered), 1, "{printed}");
    assert_eq!(summary.count(ScanResult::Failed), 0, "{printed}");
    assert_eq!(summary.count(ScanResult::Revoked), 0, "{printed}");
    assert!(summary.count(ScanResult::Valid) > 0, "{printed}");
    // 06:00 to 19:00 East Africa Time (UTC+3) on the replayed day.
    let opening = summary
        .day
        .and_hms_opt(3, 0, 0)
        .unwrap_or_else(|| panic!("03:00 is a valid time"))
        .and_utc();
    let closing = opening + Duration::hours(13);
    for scan in &scans {
        assert!(
            scan.scanned_at >= opening && scan.scanned_at <= closing,
            "scan {} at {} is outside the working day",
            scan.id,
            scan.scanned_at
        );
    }
    assert!(closing <= Utc::now(), "no scan is in the future");
    for result in ScanResult::ALL {
        let stored = scans.iter().filter(|scan| scan.result == result).count();
        assert_eq!(
            stored,
            summary.count(result),
            "{}: {printed}",
            result.as_str()
        );
    }
}

async fn late_batch_order_does_not_matter(backend: Backend) {
    let first = replay_yesterday(backend, ReplayOptions::default()).await;
    let other_options = ReplayOptions {
        late_batch_seed: 0x0123_4567_89AB_CDEF,
    };
    let second = replay_yesterday(backend, other_options).await;

    let order = |day: &ReplayedDay| -> Vec<String> {
        day.summary
            .late
            .as_ref()
            .map(|late| {
                late.scans
                    .iter()
                    .map(|scan| scan.client_scan_id.clone())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (first_order, second_order) = (order(&first), order(&second));
    assert!(!first_order.is_empty());
    assert_ne!(
        first_order, second_order,
        "the batch is uploaded in another order"
    );
    let as_set = |order: &[String]| order.iter().cloned().collect::<HashSet<_>>();
    assert_eq!(as_set(&first_order), as_set(&second_order));

    for day in [&first, &second] {
        let late = day.summary.late.as_ref();
        assert!(late.is_some_and(|late| late.scans.iter().all(|scan| !scan.is_suspicious)));
        assert_eq!(day.summary.suspicious.len(), 1, "{}", day.summary);
    }

    // Both fleets are laid out alike, so the replay picks the same cylinders.
    assert_eq!(
        first.summary.suspicious[0].serial_number,
        second.summary.suspicious[0].serial_number
    );
    assert_eq!(first.summary.results, second.summary.results);

    assert_eq!(flagged_cylinders(&first.state).await, 1);
    assert_eq!(flagged_cylinders(&second.state).await, 1);
}

async fn flagged_cylinders(state: &AppState) -> usize {
    let filter = CylinderFilter {
        tampered: Some(true),
        ..CylinderFilter::default()
    };
    all_cylinders(state, &filter).await.len()
}

on_both_backends!(
    replay_catches_only_the_clone,
    late_batch_order_does_not_matter
);
