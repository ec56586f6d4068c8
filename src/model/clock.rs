//! Vector clocks: one counter per device, compared pointwise.
//!
//! The clock decides causality (did one version see the other?); the total order that picks a winner
//! lives in `merge.rs` and builds on `sum()`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// At most this many entries in a clock (DESIGN.md "Trust"): a clock travels in every event and
/// spreads, through `seen_vc`, into every later event on its key.
pub const MAX_CLOCK_ENTRIES: usize = 256;
/// The greatest clock entry, 2^53: the largest integer every JSON reader (JavaScript's, LIB v1.1's
/// PL/pgSQL `jsonb` arithmetic) holds exactly, and far from `u64::MAX`, so `+ 1` never wraps.
pub const MAX_CLOCK_VALUE: u64 = 1 << 53;

/// How two clocks relate. `Equal` and `Concurrent` are different answers: LIB v1.1 returned `0` for
/// both, which is how it lost edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// `self` happened before `other` (`other` dominates).
    Before,
    /// `self` dominates `other`.
    After,
    Equal,
    Concurrent,
}

/// Device id to sequence number. A missing entry means 0. Kept sorted so the JSON form is canonical.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BTreeMap<String, u64>")]
pub struct VectorClock(BTreeMap<String, u64>);

impl From<BTreeMap<String, u64>> for VectorClock {
    fn from(mut entries: BTreeMap<String, u64>) -> Self {
        entries.retain(|_, v| *v > 0);
        VectorClock(entries)
    }
}

impl VectorClock {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, device: &str) -> u64 {
        self.0.get(device).copied().unwrap_or(0)
    }

    /// Sets one entry; a zero entry is dropped, so `{a: 0}` and `{}` are the same clock.
    pub fn set(&mut self, device: &str, value: u64) {
        if value == 0 {
            self.0.remove(device);
        } else {
            self.0.insert(device.to_owned(), value);
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// The number of (non-zero) entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(|v| *v == 0)
    }

    /// Sum of all entries: a Lamport timestamp. u128 so that no clock can overflow it.
    pub fn sum(&self) -> u128 {
        self.0.values().map(|v| u128::from(*v)).sum()
    }

    /// Pointwise maximum, in place.
    pub fn merge(&mut self, other: &VectorClock) {
        for (device, value) in &other.0 {
            if *value > self.get(device) {
                self.0.insert(device.clone(), *value);
            }
        }
    }

    pub fn compare(&self, other: &VectorClock) -> Causality {
        let mut self_greater = false;
        let mut other_greater = false;
        for (device, value) in &self.0 {
            match value.cmp(&other.get(device)) {
                std::cmp::Ordering::Greater => self_greater = true,
                std::cmp::Ordering::Less => other_greater = true,
                std::cmp::Ordering::Equal => {}
            }
        }
        for (device, value) in &other.0 {
            if !self.0.contains_key(device) && *value > 0 {
                other_greater = true;
            }
        }
        match (self_greater, other_greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (true, true) => Causality::Concurrent,
        }
    }

    /// True when `self` strictly dominates `other`.
    pub fn dominates(&self, other: &VectorClock) -> bool {
        self.compare(other) == Causality::After
    }

    pub fn to_json(&self) -> String {
        // A BTreeMap<String, u64> always serialises.
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".to_owned())
    }
}

impl fmt::Display for VectorClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl<const N: usize> From<[(&str, u64); N]> for VectorClock {
    fn from(entries: [(&str, u64); N]) -> Self {
        let mut clock = VectorClock::new();
        for (device, value) in entries {
            clock.set(device, value);
        }
        clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_gives_four_distinct_answers() {
        let a = VectorClock::from([("a", 5)]);
        let b = VectorClock::from([("a", 3)]);
        assert_eq!(a.compare(&b), Causality::After);
        assert_eq!(b.compare(&a), Causality::Before);
        assert_eq!(a.compare(&a.clone()), Causality::Equal);
        let c = VectorClock::from([("a", 5), ("b", 2)]);
        let d = VectorClock::from([("a", 3), ("b", 7)]);
        assert_eq!(c.compare(&d), Causality::Concurrent);
        assert_eq!(d.compare(&c), Causality::Concurrent);
    }

    #[test]
    fn missing_entries_count_as_zero() {
        let a = VectorClock::from([("a", 1)]);
        let b = VectorClock::from([("a", 1), ("b", 1)]);
        assert_eq!(a.compare(&b), Causality::Before);
        assert_eq!(VectorClock::from([("a", 0)]), VectorClock::new());
        assert_eq!(
            VectorClock::new().compare(&VectorClock::from([("x", 0)])),
            Causality::Equal
        );
    }

    #[test]
    fn merge_is_pointwise_max_and_sum_adds_entries() {
        let mut a = VectorClock::from([("a", 5), ("b", 1)]);
        a.merge(&VectorClock::from([("a", 3), ("b", 7), ("c", 2)]));
        assert_eq!(a, VectorClock::from([("a", 5), ("b", 7), ("c", 2)]));
        assert_eq!(a.sum(), 14);
        assert_eq!(
            VectorClock::from([("a", u64::MAX), ("b", u64::MAX)]).sum(),
            2 * u128::from(u64::MAX)
        );
    }

    #[test]
    fn json_is_canonical() {
        let a: VectorClock = serde_json::from_str(r#"{"b": 2, "a": 1, "z": 0}"#).unwrap();
        assert_eq!(a.to_json(), r#"{"a":1,"b":2}"#);
        assert!(serde_json::from_str::<VectorClock>(r#"{"a": -1}"#).is_err());
    }
}
