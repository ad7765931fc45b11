//! Scan verification rules: parsing scanned codes and coordinates, the
//! great-circle distance, and the two cloning rules (rapid scans and
//! impossible movement), evaluated in event-time order.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::cylinder::CylinderStatus;
use super::value::InvalidValue;

/// The kind of reader that read a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScanType {
    Qr,
    Rfid,
}

impl ScanType {
    pub fn as_str(self) -> &'static str {
        match self {
            ScanType::Qr => "QR",
            ScanType::Rfid => "RFID",
        }
    }

    pub fn parse(text: &str) -> Option<ScanType> {
        match text {
            "QR" => Some(ScanType::Qr),
            "RFID" => Some(ScanType::Rfid),
            _ => None,
        }
    }
}

/// The verdict on a scanned code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScanResult {
    /// A known code on a cylinder in service.
    Valid,
    /// No cylinder has this code: a possible counterfeit.
    Failed,
    /// The cylinder is flagged as tampered.
    Tampered,
    /// The requalification date has passed: the cylinder must not be filled
    /// or delivered.
    Expired,
    /// The code was disabled, or the cylinder is retired.
    Revoked,
}

impl ScanResult {
    pub const ALL: [ScanResult; 5] = [
        ScanResult::Valid,
        ScanResult::Failed,
        ScanResult::Tampered,
        ScanResult::Expired,
        ScanResult::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScanResult::Valid => "VALID",
            ScanResult::Failed => "FAILED",
            ScanResult::Tampered => "TAMPERED",
            ScanResult::Expired => "EXPIRED",
            ScanResult::Revoked => "REVOKED",
        }
    }

    pub fn parse(text: &str) -> Option<ScanResult> {
        ScanResult::ALL
            .into_iter()
            .find(|result| result.as_str() == text)
    }
}

/// A scanned code after normalisation: surrounding whitespace and the CR/LF
/// that keyboard-wedge scanners send are trimmed, and letters are upper
/// case, so that RFID hex and QR codes compare case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCode(String);

/// Maximum length of a scanned code, in characters.
const MAX_CODE_CHARS: usize = 64;

impl ScanCode {
    /// Parses `raw` as a code of `scan_type`. QR codes may contain A-Z, 0-9
    /// and '-'; RFID tag ids are 8 to 64 hex digits. Anything else, such as a
    /// control character, an embedded space or a look-alike letter from
    /// another script, is invalid input rather than a counterfeit.
    pub fn parse(
        field: &'static str,
        raw: &str,
        scan_type: ScanType,
    ) -> Result<Self, InvalidValue> {
        let trimmed = raw.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r' || c == '\n');
        if trimmed.is_empty() {
            return Err(InvalidValue::new(field, "must not be empty"));
        }
        if trimmed.chars().count() > MAX_CODE_CHARS {
            return Err(InvalidValue::new(
                field,
                format!("must be at most {MAX_CODE_CHARS} characters"),
            ));
        }
        let code = trimmed.to_ascii_uppercase();
        match scan_type {
            ScanType::Qr => {
                if !code
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-')
                {
                    return Err(InvalidValue::new(
                        field,
                        "must contain only letters A-Z, digits 0-9 and '-' for a QR scan",
                    ));
                }
            }
            ScanType::Rfid => {
                if code.len() < 8 || !code.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(InvalidValue::new(
                        field,
                        "must be 8 to 64 hexadecimal digits for an RFID scan",
                    ));
                }
            }
        }
        Ok(Self(code))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A position fix in decimal degrees (WGS 84), with its accuracy radius in
/// metres when the device reported one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coordinates {
    pub latitude: f64,
    pub longitude: f64,
    pub accuracy_m: Option<f64>,
}

/// Largest accuracy radius accepted, in metres. A coarser fix carries no
/// useful position.
const MAX_ACCURACY_M: f64 = 100_000.0;

impl Coordinates {
    /// Validates an optional fix. Both coordinates or neither must be given.
    /// A fix of exactly 0,0 is what many phones report without a location, so
    /// it is treated as no location rather than a point in the Gulf of
    /// Guinea.
    pub fn parse(
        latitude: Option<f64>,
        longitude: Option<f64>,
        accuracy_m: Option<f64>,
    ) -> Result<Option<Self>, InvalidValue> {
        if let Some(accuracy) = accuracy_m
            && (!accuracy.is_finite() || !(0.0..=MAX_ACCURACY_M).contains(&accuracy))
        {
            return Err(InvalidValue::new(
                "accuracy_m",
                format!("must be a number of metres from 0 to {MAX_ACCURACY_M}"),
            ));
        }
        let (latitude, longitude) = match (latitude, longitude) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(InvalidValue::new(
                    "longitude",
                    "is required when latitude is given",
                ));
            }
            (None, Some(_)) => {
                return Err(InvalidValue::new(
                    "latitude",
                    "is required when longitude is given",
                ));
            }
            (Some(latitude), Some(longitude)) => (latitude, longitude),
        };
        if !latitude.is_finite() || !(-90.0..=90.0).contains(&latitude) {
            return Err(InvalidValue::new(
                "latitude",
                "must be a number of degrees from -90 to 90",
            ));
        }
        if !longitude.is_finite() || !(-180.0..=180.0).contains(&longitude) {
            return Err(InvalidValue::new(
                "longitude",
                "must be a number of degrees from -180 to 180",
            ));
        }
        if latitude == 0.0 && longitude == 0.0 {
            return Ok(None);
        }
        Ok(Some(Self {
            latitude,
            longitude,
            accuracy_m,
        }))
    }
}

/// Mean Earth radius in kilometres (IUGG), the usual radius for haversine.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Great-circle distance between two points in kilometres, by the haversine
/// formula. It is exact on a sphere, well-conditioned for short distances,
/// and has no special cases at the antimeridian or the poles. The
/// intermediate value is clamped to [0, 1] so that rounding cannot produce
/// NaN for antipodal points.
pub fn distance_km(from: &Coordinates, to: &Coordinates) -> f64 {
    let (lat1, lat2) = (from.latitude.to_radians(), to.latitude.to_radians());
    let half_dlat = (lat2 - lat1) / 2.0;
    let half_dlon = (to.longitude - from.longitude).to_radians() / 2.0;
    let a = half_dlat.sin().powi(2) + lat1.cos() * lat2.cos() * half_dlon.sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.clamp(0.0, 1.0).sqrt().asin()
}

/// Thresholds of the cloning rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TamperPolicy {
    /// Scans of one cylinder allowed within `rapid_window`; one more is
    /// suspicious.
    pub rapid_limit: u32,
    pub rapid_window: Duration,
    /// Two scans closer in time than this and farther apart than
    /// `short_gap_km` are suspicious.
    pub short_gap: Duration,
    pub short_gap_km: f64,
    /// Fastest plausible average speed of a cylinder between two scans.
    pub max_speed_kmh: f64,
    /// Distance that is always attributed to GPS error, in kilometres,
    /// before the reported accuracy radii are added.
    pub noise_km: f64,
}

impl Default for TamperPolicy {
    fn default() -> Self {
        Self {
            rapid_limit: 5,
            rapid_window: Duration::minutes(5),
            short_gap: Duration::minutes(5),
            short_gap_km: 50.0,
            // A loaded LPG truck on Kenyan trunk roads averages well under
            // 100 km/h; 150 km/h leaves room for a car or a fast stretch.
            max_speed_kmh: 150.0,
            noise_km: 3.0,
        }
    }
}

/// A located scan, the input of the movement rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocatedScan {
    pub at: DateTime<Utc>,
    pub position: Coordinates,
}

/// The inputs of both cloning rules for one scan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleInputs {
    /// Event times of the cylinder's other scans within the rapid-scan
    /// window of the scan's time.
    pub times: Vec<DateTime<Utc>>,
    /// The cylinder's located scans just before and just after the scan's
    /// time, when there are any.
    pub neighbours: Vec<LocatedScan>,
}

/// Applies both cloning rules to a scan at `at` and returns the reason when
/// one fires: first the rapid-scan rule, then the movement rule against
/// each located neighbour in event-time order.
pub fn cloning_reason(
    policy: &TamperPolicy,
    at: DateTime<Utc>,
    position: Option<Coordinates>,
    inputs: &RuleInputs,
) -> Option<String> {
    if is_rapid(policy, at, &inputs.times) {
        return Some(format!(
            "scanned more than {} times within {} minutes: possible cloned label",
            policy.rapid_limit,
            policy.rapid_window.num_minutes()
        ));
    }

    let this = LocatedScan {
        at,
        position: position?,
    };
    inputs.neighbours.iter().find_map(|other| {
        let (first, second) = if other.at <= at {
            (other, &this)
        } else {
            (&this, other)
        };
        impossible_movement(policy, first, second)
    })
}

/// Returns true when a scan at `at` completes more than `rapid_limit` scans
/// of one cylinder within any window of `rapid_window` that contains it.
/// `others` are the cylinder's other scans near `at`, in any order, so a scan
/// uploaded late is judged by when it happened, not when it arrived.
pub fn is_rapid(policy: &TamperPolicy, at: DateTime<Utc>, others: &[DateTime<Utc>]) -> bool {
    let mut times: Vec<DateTime<Utc>> = others
        .iter()
        .copied()
        .filter(|time| (*time - at).abs() < policy.rapid_window)
        .collect();
    times.push(at);
    times.sort();

    let limit = policy.rapid_limit as usize;
    // Slide a window over the sorted times: any run of limit + 1 scans
    // that spans less than the window and includes `at` is too many.
    times.windows(limit + 1).any(|run| {
        let (first, last) = (run[0], run[limit]);
        last - first < policy.rapid_window && first <= at && at <= last
    })
}

/// Checks the movement between two located scans. Returns a reason when it
/// is impossible: more than `short_gap_km` within `short_gap`, or, beyond
/// GPS error, faster than `max_speed_kmh` on average.
pub fn impossible_movement(
    policy: &TamperPolicy,
    first: &LocatedScan,
    second: &LocatedScan,
) -> Option<String> {
    let distance = distance_km(&first.position, &second.position);
    let gap = (second.at - first.at).abs();

    if gap < policy.short_gap && distance > policy.short_gap_km {
        return Some(format!(
            "scanned {distance:.0} km apart within {}: possible cloned label",
            describe_gap(gap)
        ));
    }

    let accuracy_km = (first.position.accuracy_m.unwrap_or(0.0)
        + second.position.accuracy_m.unwrap_or(0.0))
        / 1000.0;
    let travelled = distance - policy.noise_km - accuracy_km;
    if travelled <= 0.0 {
        return None;
    }
    // A gap of zero is treated as one second, so that two scans at the same
    // instant in different towns still give a finite, huge speed.
    let hours = (gap.num_milliseconds().max(1000) as f64) / 3_600_000.0;
    let speed = travelled / hours;
    if speed > policy.max_speed_kmh {
        return Some(format!(
            "moved {distance:.0} km in {} ({speed:.0} km/h): possible cloned label",
            describe_gap(gap)
        ));
    }
    None
}

/// What the verdict on a scan depends on, for a code that names a cylinder.
#[derive(Debug, Clone, Copy)]
pub struct ScanFacts {
    pub status: CylinderStatus,
    pub expiry_date: NaiveDate,
    pub is_tampered: bool,
    /// The scanned code was disabled when the cylinder's labels were
    /// reissued.
    pub code_revoked: bool,
}

/// The outcome of a scan, as the response reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub result: ScanResult,
    pub message: String,
    pub warnings: Vec<String>,
}

/// Days before the requalification date from which scans carry a warning.
const REQUALIFICATION_WARNING_DAYS: i64 = 30;

/// Decides the result of a scan. `facts` is `None` when no cylinder has the
/// code, and `suspicious` is the reason when a cloning rule fired on this
/// scan, which flags the cylinder as tampered.
pub fn verdict(facts: Option<&ScanFacts>, suspicious: Option<&str>, today: NaiveDate) -> Verdict {
    let Some(facts) = facts else {
        return Verdict {
            result: ScanResult::Failed,
            message:
                "No cylinder has this code. It may be counterfeit: do not fill, sell or accept it, \
                      and report it to the brand."
                    .into(),
            warnings: Vec::new(),
        };
    };

    let mut warnings = Vec::new();
    if let Some(reason) = suspicious {
        warnings.push(format!(
            "Suspicious scan: {reason}. The security team has been alerted."
        ));
    }
    if facts.status == CylinderStatus::Lost {
        warnings.push("This cylinder was reported lost; tell the depot where you found it.".into());
    }
    let days_left = (facts.expiry_date - today).num_days();
    if (0..=REQUALIFICATION_WARNING_DAYS).contains(&days_left) {
        warnings.push(format!("Requalification is due on {}.", facts.expiry_date));
    }

    let (result, message) = if facts.code_revoked {
        (ScanResult::Revoked, "This code was disabled and replaced. Do not accept the cylinder; report it to the brand.".to_string())
    } else if facts.status == CylinderStatus::Retired {
        (
            ScanResult::Revoked,
            "This cylinder is retired and must not be in use. Do not fill or accept it."
                .to_string(),
        )
    } else if facts.is_tampered || suspicious.is_some() {
        (
            ScanResult::Tampered,
            "This cylinder is flagged as tampered. Do not fill, deliver or use it.".to_string(),
        )
    } else if facts.expiry_date < today {
        (
            ScanResult::Expired,
            format!(
                "Requalification was due on {}. The cylinder must not be filled or delivered.",
                facts.expiry_date
            ),
        )
    } else {
        (
            ScanResult::Valid,
            "Genuine cylinder, in service.".to_string(),
        )
    };
    Verdict {
        result,
        message,
        warnings,
    }
}

/// Describes a time gap for people: "40 seconds", "1 minute", "22 minutes".
fn describe_gap(gap: Duration) -> String {
    let seconds = gap.num_seconds();
    let (amount, unit) = if seconds < 60 {
        (seconds, "second")
    } else {
        (gap.num_minutes(), "minute")
    };
    if amount == 1 {
        format!("1 {unit}")
    } else {
        format!("{amount} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(latitude: f64, longitude: f64) -> Coordinates {
        Coordinates {
            latitude,
            longitude,
            accuracy_m: None,
        }
    }

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_796_000_000, 0).unwrap_or_default() + Duration::minutes(minutes)
    }

    fn seconds(value: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_796_000_000 + value, 0).unwrap_or_default()
    }

    const NAIROBI: (f64, f64) = (-1.2864, 36.8172);
    const MOMBASA: (f64, f64) = (-4.0435, 39.6682);
    const THIKA: (f64, f64) = (-1.0333, 37.0693);

    #[test]
    fn distance_known_city_pairs() {
        let nairobi = point(NAIROBI.0, NAIROBI.1);
        let mombasa = point(MOMBASA.0, MOMBASA.1);
        let thika = point(THIKA.0, THIKA.1);
        // Straight-line distances; the roads are longer.
        assert!(
            (distance_km(&nairobi, &mombasa) - 440.0).abs() < 5.0,
            "{}",
            distance_km(&nairobi, &mombasa)
        );
        assert!(
            (distance_km(&nairobi, &thika) - 39.5).abs() < 2.0,
            "{}",
            distance_km(&nairobi, &thika)
        );
        assert_eq!(distance_km(&nairobi, &nairobi), 0.0);
    }

    #[test]
    fn distance_across_antimeridian_and_poles() {
        let west = point(0.0, 179.9);
        let east = point(0.0, -179.9);
        let across = distance_km(&west, &east);
        assert!((across - 22.24).abs() < 0.1, "{across}");

        let north = point(90.0, 0.0);
        let north_other = point(90.0, 120.0);
        assert!(distance_km(&north, &north_other).abs() < 1e-6);

        let antipode = distance_km(&point(10.0, 20.0), &point(-10.0, -160.0));
        assert!(antipode.is_finite());
        assert!(
            (antipode - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1.0,
            "{antipode}"
        );
    }

    #[test]
    fn rapid_five_fine_sixth_suspicious() {
        let policy = TamperPolicy::default();
        let earlier: Vec<_> = (0..4).map(at).collect();
        assert!(
            !is_rapid(&policy, at(4), &earlier),
            "5 scans in 5 minutes are fine"
        );
        let five: Vec<_> = (0..5).map(at).collect();
        assert!(
            is_rapid(&policy, seconds(4 * 60 + 59), &five),
            "the 6th within 5 minutes is suspicious"
        );
        assert!(
            !is_rapid(&policy, at(5), &five),
            "the 6th after exactly 5 minutes is fine"
        );
    }

    #[test]
    fn rapid_judges_late_scans_by_event_time() {
        let policy = TamperPolicy::default();
        // Hourly scans arriving in any order are never rapid.
        let hourly: Vec<_> = (0..10).map(|hour| at(hour * 60)).collect();
        assert!(!is_rapid(&policy, at(150), &hourly));
        // A late scan that makes six within five minutes is caught.
        let burst: Vec<_> = (0..5).map(|minute| at(100 + minute)).collect();
        assert!(is_rapid(&policy, seconds(100 * 60 + 150), &burst));
    }

    #[test]
    fn rapid_limit_is_configurable() {
        let policy = TamperPolicy {
            rapid_limit: 2,
            rapid_window: Duration::minutes(1),
            ..TamperPolicy::default()
        };
        assert!(!is_rapid(&policy, seconds(30), &[seconds(0)]));
        assert!(is_rapid(&policy, seconds(30), &[seconds(0), seconds(10)]));
    }

    #[test]
    fn short_gap_boundary_at_fifty_km() {
        // Only the short-gap rule, with the speed rule disabled.
        let policy = TamperPolicy {
            max_speed_kmh: f64::INFINITY,
            ..TamperPolicy::default()
        };
        let origin = point(0.0, 36.0);
        // One degree of longitude at the equator is 111.2 km.
        let near = point(0.0, 36.0 + 49.9 / 111.195);
        let far = point(0.0, 36.0 + 50.1 / 111.195);
        let first = LocatedScan {
            at: at(0),
            position: origin,
        };
        let near_scan = LocatedScan {
            at: at(4),
            position: near,
        };
        let far_scan = LocatedScan {
            at: at(4),
            position: far,
        };
        assert_eq!(impossible_movement(&policy, &first, &near_scan), None);
        assert!(impossible_movement(&policy, &first, &far_scan).is_some());
        let later = LocatedScan {
            at: at(5),
            position: far,
        };
        assert_eq!(
            impossible_movement(&policy, &first, &later),
            None,
            "not within 5 minutes"
        );
    }

    #[test]
    fn speed_rule_catches_long_gap_clone() {
        let policy = TamperPolicy::default();
        let nairobi = LocatedScan {
            at: at(0),
            position: point(NAIROBI.0, NAIROBI.1),
        };
        let mombasa = LocatedScan {
            at: at(40),
            position: point(MOMBASA.0, MOMBASA.1),
        };
        assert!(
            impossible_movement(&policy, &nairobi, &mombasa).is_some(),
            "Nairobi to Mombasa in 40 minutes"
        );
        let thika = LocatedScan {
            at: at(60),
            position: point(THIKA.0, THIKA.1),
        };
        assert_eq!(
            impossible_movement(&policy, &nairobi, &thika),
            None,
            "Nairobi to Thika in an hour"
        );
        let overnight = LocatedScan {
            at: at(8 * 60),
            position: point(MOMBASA.0, MOMBASA.1),
        };
        assert_eq!(
            impossible_movement(&policy, &nairobi, &overnight),
            None,
            "an 8-hour drive to Mombasa"
        );
    }

    #[test]
    fn gps_noise_is_not_movement() {
        let policy = TamperPolicy::default();
        let here = LocatedScan {
            at: seconds(0),
            position: point(NAIROBI.0, NAIROBI.1),
        };
        // 1.5 km of jitter two seconds later.
        let jitter = LocatedScan {
            at: seconds(2),
            position: point(NAIROBI.0 + 0.0135, NAIROBI.1),
        };
        assert_eq!(impossible_movement(&policy, &here, &jitter), None);
        // A coarse cell fix of 8 km accuracy explains a larger jump.
        let coarse = LocatedScan {
            at: seconds(5),
            position: Coordinates {
                latitude: NAIROBI.0 + 0.08,
                longitude: NAIROBI.1,
                accuracy_m: Some(8000.0),
            },
        };
        assert_eq!(impossible_movement(&policy, &here, &coarse), None);
        // Order of the two scans does not matter.
        assert_eq!(impossible_movement(&policy, &coarse, &here), None);
    }

    #[test]
    fn antimeridian_neighbours_are_not_alarming() {
        let policy = TamperPolicy::default();
        let west = LocatedScan {
            at: at(0),
            position: point(-16.5, 179.99),
        };
        let east = LocatedScan {
            at: at(10),
            position: point(-16.5, -179.99),
        };
        assert_eq!(impossible_movement(&policy, &west, &east), None);
        let pole = LocatedScan {
            at: at(0),
            position: point(89.9999, 10.0),
        };
        let pole_other = LocatedScan {
            at: at(1),
            position: point(89.9999, -170.0),
        };
        assert_eq!(impossible_movement(&policy, &pole, &pole_other), None);
    }

    #[test]
    fn scan_code_normalisation() {
        let qr = ScanCode::parse("code", "  cyl-0abc\r\n", ScanType::Qr);
        assert_eq!(
            qr.map(|code| code.as_str().to_string()),
            Ok("CYL-0ABC".to_string())
        );
        let rfid = ScanCode::parse("code", "\t0a1b2c3d4e5f\n", ScanType::Rfid);
        assert_eq!(
            rfid.map(|code| code.as_str().to_string()),
            Ok("0A1B2C3D4E5F".to_string())
        );

        let rejected = [
            ("CYL-AB CD", ScanType::Qr),
            ("CYL-\u{0410}BCD", ScanType::Qr),
            ("CYL-AB\u{0007}", ScanType::Qr),
            ("", ScanType::Qr),
            ("   ", ScanType::Qr),
            ("0A1B2C3G", ScanType::Rfid),
            ("0A1B", ScanType::Rfid),
        ];
        for (raw, scan_type) in rejected {
            assert!(
                ScanCode::parse("code", raw, scan_type).is_err(),
                "{raw:?} must be rejected"
            );
        }
        assert!(ScanCode::parse("code", &"A".repeat(65), ScanType::Qr).is_err());
    }

    #[test]
    fn coordinates_validation() {
        assert_eq!(Coordinates::parse(None, None, None), Ok(None));
        assert_eq!(
            Coordinates::parse(Some(0.0), Some(0.0), Some(10.0)),
            Ok(None),
            "0,0 is no location"
        );
        assert!(
            Coordinates::parse(Some(-1.28), Some(36.82), Some(15.0)).is_ok_and(|fix| fix.is_some())
        );
        let invalid = [
            (Some(90.5), Some(0.0), None, "latitude"),
            (Some(0.0), Some(-180.5), None, "longitude"),
            (Some(f64::NAN), Some(0.0), None, "latitude"),
            (Some(1.0), None, None, "longitude"),
            (None, Some(1.0), None, "latitude"),
            (Some(1.0), Some(1.0), Some(-5.0), "accuracy_m"),
            (Some(1.0), Some(1.0), Some(f64::INFINITY), "accuracy_m"),
        ];
        for (latitude, longitude, accuracy, field) in invalid {
            let result = Coordinates::parse(latitude, longitude, accuracy);
            assert_eq!(
                result.map_err(|error| error.field),
                Err(field),
                "{latitude:?} {longitude:?} {accuracy:?}"
            );
        }
    }

    fn facts(status: CylinderStatus) -> ScanFacts {
        ScanFacts {
            status,
            expiry_date: NaiveDate::from_ymd_opt(2030, 1, 1).unwrap_or_default(),
            is_tampered: false,
            code_revoked: false,
        }
    }

    #[test]
    fn verdict_for_each_result() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 4).unwrap_or_default();
        assert_eq!(verdict(None, None, today).result, ScanResult::Failed);
        assert_eq!(
            verdict(Some(&facts(CylinderStatus::Filled)), None, today).result,
            ScanResult::Valid
        );
        let tampered = ScanFacts {
            is_tampered: true,
            ..facts(CylinderStatus::Filled)
        };
        assert_eq!(
            verdict(Some(&tampered), None, today).result,
            ScanResult::Tampered
        );
        let cloned = verdict(
            Some(&facts(CylinderStatus::Filled)),
            Some("moved 440 km"),
            today,
        );
        assert_eq!(cloned.result, ScanResult::Tampered);
        assert!(
            cloned
                .warnings
                .iter()
                .any(|warning| warning.contains("440 km"))
        );
        let expired = ScanFacts {
            expiry_date: today.pred_opt().unwrap_or_default(),
            ..facts(CylinderStatus::Filled)
        };
        assert_eq!(
            verdict(Some(&expired), None, today).result,
            ScanResult::Expired
        );
        let revoked = ScanFacts {
            code_revoked: true,
            ..facts(CylinderStatus::Filled)
        };
        assert_eq!(
            verdict(Some(&revoked), None, today).result,
            ScanResult::Revoked
        );
        assert_eq!(
            verdict(Some(&facts(CylinderStatus::Retired)), None, today).result,
            ScanResult::Revoked
        );
    }

    #[test]
    fn verdict_warns_before_requalification() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 4).unwrap_or_default();
        let soon = ScanFacts {
            expiry_date: today + Duration::days(10),
            ..facts(CylinderStatus::Filled)
        };
        let outcome = verdict(Some(&soon), None, today);
        assert_eq!(outcome.result, ScanResult::Valid);
        assert_eq!(outcome.warnings.len(), 1);
        let lost = verdict(Some(&facts(CylinderStatus::Lost)), None, today);
        assert!(lost.warnings.iter().any(|warning| warning.contains("lost")));
    }
}
