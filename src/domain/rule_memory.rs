//! The rule memory: the event times of a cylinder's latest scans and its
//! latest located scan, kept on the cylinder's row for the cloning rules.
//! A scan that arrives in event-time order, which is nearly every scan, is
//! judged from this memory alone, without reading the cylinder's scans. A
//! scan uploaded late, or one in a burst longer than the memory, is judged
//! from the scans table.
//!
//! The memory is exact, never a guess. It returns a rule's inputs only when
//! it contains all of them, and otherwise returns nothing, so that the
//! caller reads the table.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::scan::{Coordinates, LocatedScan, RuleInputs};

/// Event times kept per cylinder. Enough for the rapid-scan rule at its
/// default limit many times over; a longer burst falls back to the table.
pub const KEPT_SCAN_TIMES: usize = 16;

/// The latest located scan of a cylinder, by event time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LastFix {
    pub scan_id: Uuid,
    pub scan: LocatedScan,
}

/// Stored memory that cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptMemory(pub String);

/// A cylinder's memory for the cloning rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleMemory {
    /// Every scan of the cylinder with an event time after this instant is
    /// in `times`. `None` means every scan since the cylinder was
    /// registered.
    complete_after: Option<DateTime<Utc>>,
    /// Event times, oldest first.
    times: Vec<DateTime<Utc>>,
    last_fix: Option<LastFix>,
}

impl RuleMemory {
    /// Reads the memory from its stored form, in which `times` contains
    /// microseconds since the Unix epoch, separated by spaces.
    pub fn from_stored(
        complete_after: Option<DateTime<Utc>>,
        times: &str,
        last_fix: Option<LastFix>,
    ) -> Result<Self, CorruptMemory> {
        let mut parsed = Vec::new();
        for word in times.split_ascii_whitespace() {
            let time = word
                .parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_micros)
                .ok_or_else(|| CorruptMemory(format!("scan time {word:?} is not a timestamp")))?;
            parsed.push(time);
        }
        if !parsed.is_sorted() {
            return Err(CorruptMemory("scan times are out of order".into()));
        }
        Ok(Self {
            complete_after,
            times: parsed,
            last_fix,
        })
    }

    /// Returns the stored form of the event times, as
    /// [`RuleMemory::from_stored`] reads it.
    pub fn stored_times(&self) -> String {
        let mut stored = String::with_capacity(self.times.len() * 17);
        for time in &self.times {
            if !stored.is_empty() {
                stored.push(' ');
            }
            stored.push_str(&time.timestamp_micros().to_string());
        }
        stored
    }

    pub fn complete_after(&self) -> Option<DateTime<Utc>> {
        self.complete_after
    }

    pub fn last_fix(&self) -> Option<&LastFix> {
        self.last_fix.as_ref()
    }

    /// Returns the rules' inputs for a scan at `at` when the memory contains
    /// all of them: every scan within `window` of `at`, and no located scan
    /// after `at`. Returns `None` when the scans table must be read instead.
    pub fn inputs(&self, at: DateTime<Utc>, window: Duration) -> Option<RuleInputs> {
        // Scans strictly inside (at - window, at + window) are all listed
        // when that interval starts at or after the completeness bound.
        let covered = self.complete_after.is_none_or(|bound| at - window >= bound);
        let in_order = self.last_fix.is_none_or(|fix| at >= fix.scan.at);
        if !covered || !in_order {
            return None;
        }
        let times = self
            .times
            .iter()
            .copied()
            .filter(|time| (*time - at).abs() < window)
            .collect();
        let neighbours = self.last_fix.iter().map(|fix| fix.scan).collect();
        Some(RuleInputs { times, neighbours })
    }

    /// Remembers a new scan of the cylinder.
    pub fn record(&mut self, scan_id: Uuid, at: DateTime<Utc>, position: Option<Coordinates>) {
        // A scan at or before the bound is not listed, and the list stays
        // complete for the times after the bound.
        if self.complete_after.is_none_or(|bound| at > bound) {
            let index = self.times.partition_point(|time| *time <= at);
            self.times.insert(index, at);
            while self.times.len() > KEPT_SCAN_TIMES {
                let dropped = self.times.remove(0);
                self.complete_after = Some(dropped);
            }
        }

        if let Some(position) = position
            && self.last_fix.is_none_or(|fix| at >= fix.scan.at)
        {
            self.last_fix = Some(LastFix {
                scan_id,
                scan: LocatedScan { at, position },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000, 0).expect("a valid time")
    }

    fn minutes(count: i64) -> Duration {
        Duration::minutes(count)
    }

    fn nairobi() -> Coordinates {
        Coordinates {
            latitude: -1.2864,
            longitude: 36.8172,
            accuracy_m: Some(20.0),
        }
    }

    #[test]
    fn new_cylinder_has_no_inputs_to_read() {
        let memory = RuleMemory::default();

        assert_eq!(
            memory.inputs(start(), minutes(5)),
            Some(RuleInputs::default())
        );
    }

    #[test]
    fn scans_in_order_are_judged_from_memory() {
        let mut memory = RuleMemory::default();
        memory.record(Uuid::nil(), start(), Some(nairobi()));
        memory.record(Uuid::nil(), start() + minutes(2), None);

        let inputs = memory
            .inputs(start() + minutes(4), minutes(5))
            .expect("in memory");

        assert_eq!(inputs.times, vec![start(), start() + minutes(2)]);
        assert_eq!(inputs.neighbours.len(), 1);
        assert_eq!(inputs.neighbours[0].at, start());
    }

    #[test]
    fn times_outside_the_window_are_left_out() {
        let mut memory = RuleMemory::default();
        memory.record(Uuid::nil(), start(), None);
        memory.record(Uuid::nil(), start() + minutes(5), None);

        let inputs = memory
            .inputs(start() + minutes(10), minutes(5))
            .expect("in memory");

        assert!(inputs.times.is_empty());
    }

    #[test]
    fn scan_before_fix_needs_table() {
        let mut memory = RuleMemory::default();
        memory.record(Uuid::nil(), start(), Some(nairobi()));

        assert_eq!(memory.inputs(start() - minutes(1), minutes(5)), None);
        assert!(memory.inputs(start(), minutes(5)).is_some());
    }

    #[test]
    fn late_scan_keeps_fix() {
        let mut memory = RuleMemory::default();
        let fix_id = Uuid::from_u128(1);
        memory.record(fix_id, start(), Some(nairobi()));
        memory.record(Uuid::from_u128(2), start() - minutes(3), Some(nairobi()));

        assert_eq!(memory.last_fix().map(|fix| fix.scan_id), Some(fix_id));
        let inputs = memory
            .inputs(start() + minutes(1), minutes(5))
            .expect("in memory");
        assert_eq!(inputs.times, vec![start() - minutes(3), start()]);
    }

    #[test]
    fn overflow_moves_the_bound_to_the_dropped_time() {
        let mut memory = RuleMemory::default();
        for index in 0..=KEPT_SCAN_TIMES as i64 {
            memory.record(Uuid::nil(), start() + minutes(index), None);
        }

        assert_eq!(memory.complete_after(), Some(start()));
        assert_eq!(memory.times.len(), KEPT_SCAN_TIMES);
        // A window that reaches back to the dropped scan needs the table.
        assert_eq!(memory.inputs(start() + minutes(4), minutes(5)), None);
        // One that starts at the dropped scan does not.
        let inputs = memory
            .inputs(start() + minutes(5), minutes(5))
            .expect("in memory");
        assert_eq!(inputs.times.len(), 9);
    }

    #[test]
    fn bound_excludes_older_scans() {
        let mut memory = RuleMemory::from_stored(Some(start()), "", None).expect("valid");
        memory.record(Uuid::nil(), start(), None);
        memory.record(Uuid::nil(), start() - minutes(1), None);
        memory.record(Uuid::nil(), start() + minutes(1), None);

        assert_eq!(memory.times, vec![start() + minutes(1)]);
        assert_eq!(memory.complete_after(), Some(start()));
    }

    #[test]
    fn stored_form_round_trips() {
        let mut memory = RuleMemory::default();
        let precise = start() + Duration::microseconds(123_456);
        memory.record(Uuid::nil(), precise, None);
        memory.record(Uuid::nil(), start(), None);

        let stored = memory.stored_times();
        let read = RuleMemory::from_stored(None, &stored, None).expect("valid");

        assert_eq!(read, memory);
        assert_eq!(
            RuleMemory::from_stored(None, "", None),
            Ok(RuleMemory::default())
        );
    }

    #[test]
    fn corrupt_stored_times_are_refused() {
        assert!(RuleMemory::from_stored(None, "12 x", None).is_err());
        assert!(RuleMemory::from_stored(None, "20 10", None).is_err());
        assert!(RuleMemory::from_stored(None, "99999999999999999999", None).is_err());
    }
}
