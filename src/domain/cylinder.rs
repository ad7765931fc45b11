//! The cylinder lifecycle and the rules for registering a cylinder.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::value::{Brand, CapacityKg, InvalidValue, SerialNumber};

/// The stage of a cylinder's life. `RETIRED` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CylinderStatus {
    /// Empty, at a depot.
    InStock,
    /// Filled with LPG, at a depot or filling plant.
    Filled,
    /// On a truck.
    InTransit,
    /// With a customer.
    Delivered,
    /// Collected back from a customer, empty or partly full.
    Returned,
    /// Out of service for inspection, repair or requalification.
    Maintenance,
    /// Missing; it can come back when it is found.
    Lost,
    /// Scrapped. No further change is allowed.
    Retired,
}

/// A status change that the lifecycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("a cylinder cannot go from {from} to {to}")]
    NotAllowed {
        from: CylinderStatus,
        to: CylinderStatus,
    },
    #[error(
        "the cylinder's requalification was due on {due}, so it cannot be set to {to} \
         until it is requalified"
    )]
    RequalificationOverdue { due: NaiveDate, to: CylinderStatus },
    #[error(
        "the cylinder is flagged as tampered, so it cannot be set to {to}; \
         clear the tamper flag after an investigation first"
    )]
    Tampered { to: CylinderStatus },
}

impl CylinderStatus {
    pub const ALL: [CylinderStatus; 8] = [
        CylinderStatus::InStock,
        CylinderStatus::Filled,
        CylinderStatus::InTransit,
        CylinderStatus::Delivered,
        CylinderStatus::Returned,
        CylinderStatus::Maintenance,
        CylinderStatus::Lost,
        CylinderStatus::Retired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CylinderStatus::InStock => "IN_STOCK",
            CylinderStatus::Filled => "FILLED",
            CylinderStatus::InTransit => "IN_TRANSIT",
            CylinderStatus::Delivered => "DELIVERED",
            CylinderStatus::Returned => "RETURNED",
            CylinderStatus::Maintenance => "MAINTENANCE",
            CylinderStatus::Lost => "LOST",
            CylinderStatus::Retired => "RETIRED",
        }
    }

    /// Parses the wire form, ignoring case.
    pub fn parse(text: &str) -> Option<CylinderStatus> {
        CylinderStatus::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(text))
    }

    /// Returns the statuses reachable from this one in a single step.
    pub fn successors(self) -> &'static [CylinderStatus] {
        use CylinderStatus::*;
        match self {
            InStock => &[Filled, InTransit, Maintenance, Lost, Retired],
            Filled => &[InStock, InTransit, Delivered, Maintenance, Lost],
            InTransit => &[InStock, Filled, Delivered, Returned, Lost],
            Delivered => &[Returned, Lost],
            Returned => &[InStock, InTransit, Maintenance, Lost, Retired],
            Maintenance => &[InStock, Lost, Retired],
            Lost => &[InStock, Returned, Retired],
            Retired => &[],
        }
    }

    /// Returns true for statuses in which the cylinder contains gas on its
    /// way to a customer, which an expired or tampered cylinder must not.
    fn puts_gas_in_service(self) -> bool {
        matches!(self, CylinderStatus::Filled | CylinderStatus::Delivered)
    }
}

impl std::fmt::Display for CylinderStatus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The facts about a cylinder that decide whether it may change status.
#[derive(Debug, Clone, Copy)]
pub struct LifecycleState {
    pub status: CylinderStatus,
    pub expiry_date: NaiveDate,
    pub is_tampered: bool,
}

/// Checks a status change against the lifecycle, the requalification date
/// and the tamper flag.
pub fn check_transition(
    state: LifecycleState,
    to: CylinderStatus,
    today: NaiveDate,
) -> Result<(), TransitionError> {
    let from = state.status;
    if !from.successors().contains(&to) {
        return Err(TransitionError::NotAllowed { from, to });
    }
    if to.puts_gas_in_service() && state.expiry_date < today {
        return Err(TransitionError::RequalificationOverdue {
            due: state.expiry_date,
            to,
        });
    }
    if to.puts_gas_in_service() && state.is_tampered {
        return Err(TransitionError::Tampered { to });
    }
    Ok(())
}

/// A cylinder to register, parsed from a request. Codes and secrets are
/// added by the registry, not by the caller.
#[derive(Debug, Clone)]
pub struct NewCylinder {
    pub serial_number: SerialNumber,
    pub brand: Brand,
    pub capacity_kg: CapacityKg,
    pub manufacture_date: NaiveDate,
    /// The next requalification due date.
    pub expiry_date: NaiveDate,
    pub depot_id: Option<Uuid>,
}

/// The earliest manufacture date accepted. Older cylinders exist, but a
/// date before this is far more likely a typing error.
const EARLIEST_MANUFACTURE_YEAR: i32 = 1950;

/// Maximum time ahead that a requalification date may be set, in years.
/// NOTE: this bound is a guess at the longest inspection interval a brand
/// uses; it only catches typing errors such as 2205 for 2025.
const MAX_YEARS_TO_REQUALIFICATION: i32 = 15;

impl NewCylinder {
    /// Validates the dates of a registration against `today`.
    pub fn check_dates(
        manufacture_date: NaiveDate,
        expiry_date: NaiveDate,
        today: NaiveDate,
    ) -> Result<(), InvalidValue> {
        use chrono::Datelike;

        if manufacture_date > today {
            return Err(InvalidValue::new(
                "manufacture_date",
                "must not be in the future",
            ));
        }
        if manufacture_date.year() < EARLIEST_MANUFACTURE_YEAR {
            return Err(InvalidValue::new(
                "manufacture_date",
                format!("must not be before {EARLIEST_MANUFACTURE_YEAR}"),
            ));
        }
        if expiry_date <= manufacture_date {
            return Err(InvalidValue::new(
                "expiry_date",
                "must be after manufacture_date",
            ));
        }
        let latest = today
            .with_year(today.year() + MAX_YEARS_TO_REQUALIFICATION)
            .unwrap_or(NaiveDate::MAX);
        if expiry_date > latest {
            return Err(InvalidValue::new(
                "expiry_date",
                format!("must be at most {MAX_YEARS_TO_REQUALIFICATION} years from today"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(year: i32, month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(year, month, day).unwrap_or(NaiveDate::MIN)
    }

    fn state(status: CylinderStatus) -> LifecycleState {
        LifecycleState {
            status,
            expiry_date: date(2030, 1, 1),
            is_tampered: false,
        }
    }

    #[test]
    fn retired_is_final() {
        let today = date(2026, 12, 1);
        for to in CylinderStatus::ALL {
            let result = check_transition(state(CylinderStatus::Retired), to, today);
            assert!(result.is_err(), "RETIRED -> {to} must be rejected");
        }
    }

    #[test]
    fn same_status_is_not_a_transition() {
        let today = date(2026, 12, 1);
        for status in CylinderStatus::ALL {
            assert!(
                check_transition(state(status), status, today).is_err(),
                "{status}"
            );
        }
    }

    #[test]
    fn normal_delivery_round_trip() {
        use CylinderStatus::*;
        let today = date(2026, 12, 1);
        let path = [InStock, Filled, InTransit, Delivered, Returned, InStock];
        for pair in path.windows(2) {
            assert_eq!(check_transition(state(pair[0]), pair[1], today), Ok(()));
        }
    }

    #[test]
    fn expired_cylinder_cannot_be_filled() {
        let today = date(2026, 12, 1);
        let expired = LifecycleState {
            expiry_date: date(2026, 11, 30),
            ..state(CylinderStatus::InStock)
        };
        assert_eq!(
            check_transition(expired, CylinderStatus::Filled, today),
            Err(TransitionError::RequalificationOverdue {
                due: date(2026, 11, 30),
                to: CylinderStatus::Filled
            })
        );
        assert_eq!(
            check_transition(expired, CylinderStatus::Maintenance, today),
            Ok(())
        );
    }

    #[test]
    fn tampered_cylinder_cannot_be_delivered() {
        let today = date(2026, 12, 1);
        let tampered = LifecycleState {
            is_tampered: true,
            ..state(CylinderStatus::InTransit)
        };
        assert_eq!(
            check_transition(tampered, CylinderStatus::Delivered, today),
            Err(TransitionError::Tampered {
                to: CylinderStatus::Delivered
            })
        );
    }

    #[test]
    fn registration_dates_checked() {
        let today = date(2026, 12, 1);
        let ok = NewCylinder::check_dates(date(2020, 1, 1), date(2030, 1, 1), today);
        assert_eq!(ok, Ok(()));
        let future = NewCylinder::check_dates(date(2027, 1, 1), date(2030, 1, 1), today);
        assert_eq!(future.map_err(|e| e.field), Err("manufacture_date"));
        let reversed = NewCylinder::check_dates(date(2020, 1, 1), date(2019, 1, 1), today);
        assert_eq!(reversed.map_err(|e| e.field), Err("expiry_date"));
        let far = NewCylinder::check_dates(date(2020, 1, 1), date(2045, 1, 1), today);
        assert_eq!(far.map_err(|e| e.field), Err("expiry_date"));
    }
}
