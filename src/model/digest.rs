//! The replica digest (DESIGN.md "Convergence you can check"): an order-independent fingerprint
//! of a shared view, the XOR over every entity of
//! `sha256(entity_key, 0x00, winner ULID, 0x00, winner sha256 in lower-case hex or "deleted")`.
//! Two replicas that applied the same events hold the same winners, so the same digest; XOR makes
//! it O(1) to keep per change (take the old winner's leaf out, put the new one's in) and lets a
//! full pass over the rows, in any order, re-derive it.
//!
//! Every replica computes it here: the agent over `lib_files`, the brain over `entities`.

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::merge::Version;

/// The digest of a shared view. Zero is the empty view's.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ReplicaDigest([u8; 32]);

impl ReplicaDigest {
    pub const EMPTY: ReplicaDigest = ReplicaDigest([0; 32]);

    /// One entity's part of the digest: its key and its winner. `sha256` is `None` for a
    /// tombstone (and for an upsert that carried none, which counts as the empty string).
    pub fn leaf(entity_key: &str, winner_ulid: &str, deleted: bool, sha256: Option<&str>) -> Self {
        let mut h = Sha256::new();
        h.update(entity_key.as_bytes());
        h.update([0]);
        h.update(winner_ulid.as_bytes());
        h.update([0]);
        if deleted {
            h.update(b"deleted");
        } else {
            // Lower-case, as the definition says: a brain that stored an upper-case hash
            // (validation accepts hex of either case) still agrees with the devices.
            h.update(sha256.unwrap_or("").to_ascii_lowercase().as_bytes());
        }
        ReplicaDigest(h.finalize().into())
    }

    /// The leaf of an entity whose winner is `winner`.
    pub fn of_winner(entity_key: &str, winner: &Version) -> Self {
        Self::leaf(
            entity_key,
            &winner.event_ulid,
            winner.deleted,
            winner.sha256.as_deref(),
        )
    }

    /// Adds a leaf, or takes it out: XOR is its own inverse.
    pub fn toggle(&mut self, leaf: ReplicaDigest) {
        for (a, b) in self.0.iter_mut().zip(leaf.0) {
            *a ^= b;
        }
    }

    /// `self` with the winner of `entity_key` changed from `old` (none: a new entity) to `new`.
    pub fn replace(&mut self, entity_key: &str, old: Option<&Version>, new: &Version) {
        if let Some(old) = old {
            self.toggle(Self::of_winner(entity_key, old));
        }
        self.toggle(Self::of_winner(entity_key, new));
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::EMPTY
    }

    /// 64 lower-case hex digits: the wire and storage form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads the wire form; `None` unless it is exactly 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(ReplicaDigest(bytes))
    }
}

impl fmt::Debug for ReplicaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicaDigest({})", self.to_hex())
    }
}

impl fmt::Display for ReplicaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What a device says of its replica with every pull (`x-lib-digest`, `x-lib-pending`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaReport {
    pub digest: ReplicaDigest,
    /// Its events the brain has not acknowledged.
    pub pending: i64,
}

/// The header that carries a device's replica digest on a pull.
pub const DIGEST_HEADER: &str = "x-lib-digest";
/// The header that carries how many of its events the brain has not acknowledged.
pub const PENDING_HEADER: &str = "x-lib-pending";

/// How a device's replica compares with the brain's, as a pull's answer, `GET /devices`,
/// `agent brain device list` and `agent status` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvergenceState {
    /// At the head, nothing pending, the same digest as the brain's.
    Converged,
    /// Events to pull, or events of its own not yet acknowledged: not comparable yet.
    Behind,
    /// At the head, nothing pending, and another digest: a bug or a damaged replica.
    Diverged,
    /// At the head and nothing pending, but it sent no digest (a LIB v1.1 client).
    Unknown,
    /// The device has not pulled since it was enrolled.
    #[serde(rename = "never seen")]
    NeverSeen,
}

impl ConvergenceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConvergenceState::Converged => "converged",
            ConvergenceState::Behind => "behind",
            ConvergenceState::Diverged => "diverged",
            ConvergenceState::Unknown => "unknown",
            ConvergenceState::NeverSeen => "never seen",
        }
    }

    pub const ALL: [ConvergenceState; 5] = [
        ConvergenceState::Converged,
        ConvergenceState::Behind,
        ConvergenceState::Diverged,
        ConvergenceState::Unknown,
        ConvergenceState::NeverSeen,
    ];
}

/// A device's convergence: its state and how many events of the log it has still to pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Convergence {
    pub state: ConvergenceState,
    pub lag: i64,
}

impl Convergence {
    /// Compares what a device reported (the cursor its pull started from, its digest, its
    /// unacknowledged events) with the brain's replica at log position `head`. Digests are
    /// compared only at the head with nothing pending: before that they differ for good reasons.
    pub fn compare(
        head: i64,
        brain: &ReplicaDigest,
        cursor: i64,
        digest: Option<&ReplicaDigest>,
        pending: Option<i64>,
    ) -> Convergence {
        let lag = head.saturating_sub(cursor).max(0);
        let state = if lag > 0 || pending.unwrap_or(0) > 0 {
            ConvergenceState::Behind
        } else {
            match digest {
                None => ConvergenceState::Unknown,
                Some(d) if d == brain => ConvergenceState::Converged,
                Some(_) => ConvergenceState::Diverged,
            }
        };
        Convergence { state, lag }
    }

    /// A device that has not pulled yet.
    pub fn never_seen(head: i64) -> Convergence {
        Convergence {
            state: ConvergenceState::NeverSeen,
            lag: head.max(0),
        }
    }
}

impl fmt::Display for Convergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            ConvergenceState::Behind if self.lag > 0 => {
                write!(
                    f,
                    "{} event{} behind",
                    self.lag,
                    if self.lag == 1 { "" } else { "s" }
                )
            }
            ConvergenceState::Behind => f.write_str("behind (events of its own not yet pushed)"),
            ConvergenceState::Diverged => f.write_str("DIVERGED"),
            other => f.write_str(other.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(leaves: &[(&str, &str, bool, Option<&str>)]) -> ReplicaDigest {
        let mut d = ReplicaDigest::EMPTY;
        for (k, u, del, sha) in leaves {
            d.toggle(ReplicaDigest::leaf(k, u, *del, *sha));
        }
        d
    }

    #[test]
    fn the_digest_does_not_depend_on_the_order_of_entities() {
        let a = ("n/a", "01A", false, Some("aa"));
        let b = ("n/b", "01B", true, None);
        let c = ("n/c", "01C", false, Some("cc"));
        assert_eq!(digest_of(&[a, b, c]), digest_of(&[c, a, b]));
        assert_ne!(digest_of(&[a, b]), digest_of(&[a, b, c]));
    }

    #[test]
    fn a_leaf_is_the_sha256_of_key_ulid_and_hash_separated_by_nul() {
        let leaf = ReplicaDigest::leaf("n/a", "01A", false, Some("ab"));
        let expected = hex::encode(Sha256::digest(b"n/a\x0001A\x00ab"));
        assert_eq!(leaf.to_hex(), expected);
        let tomb = ReplicaDigest::leaf("n/a", "01A", true, Some("ab"));
        let expected = hex::encode(Sha256::digest(b"n/a\x0001A\x00deleted"));
        assert_eq!(tomb.to_hex(), expected, "a tombstone's hash is `deleted`");
        assert_eq!(
            ReplicaDigest::leaf("n/a", "01A", false, Some("AB")),
            leaf,
            "hex in either case is the same hash"
        );
    }

    #[test]
    fn replacing_a_winner_equals_deriving_from_scratch() {
        let mut kept = digest_of(&[
            ("n/a", "01A", false, Some("aa")),
            ("n/b", "01B", false, None),
        ]);
        let old = Version {
            event_ulid: "01A".into(),
            device_id: "d".into(),
            clock: Default::default(),
            deleted: false,
            sha256: Some("aa".into()),
            bytes: None,
            mtime_unix: None,
            created_at: String::new(),
        };
        let new = Version {
            event_ulid: "01Z".into(),
            deleted: true,
            sha256: None,
            ..old.clone()
        };
        kept.replace("n/a", Some(&old), &new);
        assert_eq!(
            kept,
            digest_of(&[("n/b", "01B", false, None), ("n/a", "01Z", true, None)])
        );
    }

    #[test]
    fn the_hex_form_round_trips_and_refuses_anything_else() {
        let d = digest_of(&[("n/a", "01A", false, Some("aa"))]);
        assert_eq!(ReplicaDigest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(ReplicaDigest::from_hex("abc"), None);
        assert_eq!(ReplicaDigest::from_hex(&"g".repeat(64)), None);
        assert_eq!(ReplicaDigest::EMPTY.to_hex(), "0".repeat(64));
    }

    #[test]
    fn digests_are_compared_only_at_the_head_with_nothing_pending() {
        let brain = digest_of(&[("n/a", "01A", false, Some("aa"))]);
        let other = ReplicaDigest::EMPTY;
        let c = |cursor, digest: Option<&ReplicaDigest>, pending| {
            Convergence::compare(10, &brain, cursor, digest, pending)
        };
        assert_eq!(
            c(10, Some(&brain), Some(0)).state,
            ConvergenceState::Converged
        );
        assert_eq!(
            c(10, Some(&other), Some(0)).state,
            ConvergenceState::Diverged
        );
        assert_eq!(
            c(7, Some(&other), Some(0)),
            Convergence {
                state: ConvergenceState::Behind,
                lag: 3
            }
        );
        assert_eq!(
            c(10, Some(&other), Some(2)),
            Convergence {
                state: ConvergenceState::Behind,
                lag: 0
            },
            "its own events in flight: not comparable yet"
        );
        assert_eq!(c(10, None, None).state, ConvergenceState::Unknown);
        assert_eq!(
            c(12, Some(&brain), Some(0)).lag,
            0,
            "a cursor past the head is no lag"
        );
    }
}
