//! The merge rule of DESIGN.md, as one pure function used by the agent (`lib_files`) and the brain
//! (`entities`): event plus current state in, new state out. The stores only persist what it decides.
//!
//! The state of an entity is its `seen_vc` and its *siblings*: the applied versions that no other
//! applied version dominates. The winner is the sibling with the greatest rank
//! `(clock sum, device_id, event_ulid)`. Because domination implies a greater sum, the greatest rank
//! over *all* applied versions is always a sibling, so keeping siblings is enough, and the result
//! depends only on the set of applied events, never on the order they arrived in.

use serde::{Deserialize, Serialize};

use super::clock::VectorClock;

/// One version of an entity: what the merge rule needs of an event (no file content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub event_ulid: String,
    pub device_id: String,
    pub clock: VectorClock,
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_unix: Option<i64>,
    #[serde(default)]
    pub created_at: String,
}

impl Version {
    /// The total order that picks the winner. The clock sum is a Lamport timestamp, so the order
    /// respects causality; device id and ULID break ties identically on every replica.
    pub fn rank(&self) -> (u128, &str, &str) {
        (self.clock.sum(), &self.device_id, &self.event_ulid)
    }

    pub fn beats(&self, other: &Version) -> bool {
        self.rank() > other.rank()
    }
}

/// The merged state of one entity on one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityState {
    /// Pointwise maximum of the clocks of every event applied to this entity.
    pub seen_vc: VectorClock,
    /// Applied versions no other applied version dominates, best rank first: `siblings[0]` is the
    /// winner. Never empty.
    pub siblings: Vec<Version>,
}

impl EntityState {
    pub fn winner(&self) -> &Version {
        // apply() never builds an empty state; `from_parts` refuses one.
        &self.siblings[0]
    }

    /// Rebuilds a state read from storage, restoring the invariants apply() relies on.
    pub fn from_parts(seen_vc: VectorClock, mut siblings: Vec<Version>) -> Option<EntityState> {
        if siblings.is_empty() {
            return None;
        }
        sort_by_rank(&mut siblings);
        Some(EntityState { seen_vc, siblings })
    }

    /// Siblings that lost to the winner with other bytes (or a delete against bytes): the open
    /// conflicts. Siblings holding the winner's bytes are agreement, not conflict.
    pub fn conflicts(&self) -> impl Iterator<Item = &Version> {
        let winner = self.winner();
        self.siblings[1..]
            .iter()
            .filter(move |v| v.deleted != winner.deleted || v.sha256 != winner.sha256)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The event's ULID is one of the siblings already: nothing changes.
    Duplicate,
    Applied {
        state: EntityState,
        /// The incoming version is the new winner: the caller writes its payload.
        winner_changed: bool,
    },
}

/// Applies one version to an entity's state. The version is taken, not copied: it is most often
/// the new winner, and a copy per file was a few percent of a scan's writer.
pub fn apply(current: Option<&EntityState>, incoming: Version) -> Outcome {
    let Some(current) = current else {
        return Outcome::Applied {
            state: EntityState {
                seen_vc: incoming.clock.clone(),
                siblings: vec![incoming],
            },
            winner_changed: true,
        };
    };
    if current
        .siblings
        .iter()
        .any(|s| s.event_ulid == incoming.event_ulid)
    {
        return Outcome::Duplicate;
    }
    let mut seen_vc = current.seen_vc.clone();
    seen_vc.merge(&incoming.clock);

    // A version some sibling dominates is not a sibling itself (it was seen and superseded). If no
    // sibling dominates it, nothing applied does: every applied version is below some sibling.
    let superseded = current
        .siblings
        .iter()
        .any(|s| s.clock.dominates(&incoming.clock));
    let incoming_ulid;
    let mut siblings: Vec<Version> = if superseded {
        incoming_ulid = incoming.event_ulid;
        current.siblings.clone()
    } else {
        let mut kept: Vec<Version> = current
            .siblings
            .iter()
            .filter(|s| !incoming.clock.dominates(&s.clock))
            .cloned()
            .collect();
        incoming_ulid = incoming.event_ulid.clone();
        kept.push(incoming);
        kept
    };
    sort_by_rank(&mut siblings);
    let winner_changed = siblings[0].event_ulid == incoming_ulid;
    Outcome::Applied {
        state: EntityState { seen_vc, siblings },
        winner_changed,
    }
}

/// Whether applying a version may have changed an entity's open conflicts, so that the stored
/// ones must be rewritten: when it had several siblings before (one may be gone, or the winner
/// changed) or has several now (one may be new). A lone sibling before and after has none to
/// store, and most applications are that: skipping them keeps the conflicts table out of the
/// common write. The agent (`lib_files`) and the brain (`entities`) both decide it here.
pub fn conflicts_may_change(before: Option<&EntityState>, after: &EntityState) -> bool {
    before.is_some_and(|s| s.siblings.len() > 1) || after.siblings.len() > 1
}

fn sort_by_rank(siblings: &mut [Version]) {
    siblings.sort_by(|a, b| b.rank().cmp(&a.rank()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ulid: &str, device: &str, clock: VectorClock, sha: Option<&str>) -> Version {
        Version {
            event_ulid: ulid.into(),
            device_id: device.into(),
            clock,
            deleted: sha.is_none(),
            sha256: sha.map(str::to_owned),
            bytes: sha.map(|_| 1),
            mtime_unix: None,
            created_at: String::new(),
        }
    }

    fn applied(state: Option<&EntityState>, version: &Version) -> EntityState {
        match apply(state, version.clone()) {
            Outcome::Applied { state, .. } => state,
            Outcome::Duplicate => panic!("unexpected duplicate {}", version.event_ulid),
        }
    }

    #[test]
    fn an_edit_after_seeing_a_version_wins_and_closes_it() {
        let a1 = v("1", "a", VectorClock::from([("a", 1)]), Some("x"));
        let b1 = v("2", "b", VectorClock::from([("a", 1), ("b", 1)]), Some("y"));
        let s = applied(Some(&applied(None, &a1)), &b1);
        assert_eq!(s.winner().event_ulid, "2");
        assert_eq!(s.siblings.len(), 1);
        assert_eq!(s.conflicts().count(), 0);
    }

    #[test]
    fn concurrent_edits_keep_the_loser_as_a_conflict_in_any_order() {
        let a = v("1", "a", VectorClock::from([("a", 2)]), Some("x"));
        let b = v("2", "b", VectorClock::from([("b", 2)]), Some("y"));
        let ab = applied(Some(&applied(None, &a)), &b);
        let ba = applied(Some(&applied(None, &b)), &a);
        assert_eq!(ab, ba);
        // Equal sums: the greater device id wins.
        assert_eq!(ab.winner().device_id, "b");
        let conflicts: Vec<_> = ab.conflicts().map(|c| c.event_ulid.as_str()).collect();
        assert_eq!(conflicts, ["1"]);
    }

    #[test]
    fn concurrent_versions_with_the_same_bytes_are_not_a_conflict() {
        let a = v("1", "a", VectorClock::from([("a", 1)]), Some("x"));
        let b = v("2", "b", VectorClock::from([("b", 1)]), Some("x"));
        let s = applied(Some(&applied(None, &a)), &b);
        assert_eq!(s.siblings.len(), 2);
        assert_eq!(s.conflicts().count(), 0);
    }

    #[test]
    fn an_older_upsert_never_resurrects_a_delete() {
        let up = v("1", "a", VectorClock::from([("a", 1)]), Some("x"));
        let del = v("2", "b", VectorClock::from([("a", 1), ("b", 1)]), None);
        let s = applied(Some(&applied(None, &del)), &up);
        assert!(s.winner().deleted);
        assert_eq!(s.siblings.len(), 1);
        let Outcome::Applied { winner_changed, .. } = apply(Some(&s), up.clone()) else {
            panic!("a superseded version is applied, not a duplicate")
        };
        assert!(!winner_changed);
    }

    #[test]
    fn a_concurrent_delete_that_loses_is_a_conflict() {
        let up = v("1", "b", VectorClock::from([("b", 5)]), Some("x"));
        let del = v("2", "a", VectorClock::from([("a", 1)]), None);
        let s = applied(Some(&applied(None, &up)), &del);
        assert!(!s.winner().deleted);
        assert_eq!(s.conflicts().next().map(|c| c.deleted), Some(true));
    }

    #[test]
    fn reapplying_a_sibling_is_a_duplicate() {
        let a = v("1", "a", VectorClock::from([("a", 1)]), Some("x"));
        let s = applied(None, &a);
        assert_eq!(apply(Some(&s), a.clone()), Outcome::Duplicate);
    }

    #[test]
    fn conflicts_are_rewritten_only_around_several_siblings() {
        let a = v("1", "a", VectorClock::from([("a", 1)]), Some("x"));
        let b = v("2", "b", VectorClock::from([("b", 1)]), Some("y"));
        let c = v("3", "a", VectorClock::from([("a", 2), ("b", 1)]), Some("z"));
        let lone = applied(None, &a);
        assert!(!conflicts_may_change(None, &lone), "a first version");
        let two = applied(Some(&lone), &b);
        assert!(conflicts_may_change(Some(&lone), &two), "a sibling appears");
        let resolved = applied(Some(&two), &c);
        assert_eq!(resolved.siblings.len(), 1);
        assert!(
            conflicts_may_change(Some(&two), &resolved),
            "the siblings are gone: their conflicts must be cleared"
        );
        let next = applied(
            Some(&resolved),
            &v("4", "a", VectorClock::from([("a", 3), ("b", 1)]), Some("w")),
        );
        assert!(
            !conflicts_may_change(Some(&resolved), &next),
            "a lone sibling replaced"
        );
    }

    #[test]
    fn seen_vc_merges_every_applied_clock() {
        let a = v("1", "a", VectorClock::from([("a", 3), ("c", 1)]), Some("x"));
        let b = v("2", "b", VectorClock::from([("a", 1), ("b", 4)]), Some("y"));
        let s = applied(Some(&applied(None, &a)), &b);
        assert_eq!(s.seen_vc, VectorClock::from([("a", 3), ("b", 4), ("c", 1)]));
    }
}
