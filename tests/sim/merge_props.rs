//! Property tests of the merge rule (DESIGN.md "Clocks and the merge rule"): the winner order is a
//! total order that respects causality, and a replica's state depends only on the *set* of events
//! it applied, never on their order or on duplicates.

use lib_agent::model::merge::{apply, EntityState, Outcome, Version};
use lib_agent::model::VectorClock;
use proptest::prelude::*;

const DEVICES: [&str; 3] = ["dev-a", "dev-b", "dev-c"];

fn clock_strategy() -> impl Strategy<Value = VectorClock> {
    prop::collection::vec(0u64..4, DEVICES.len()).prop_map(|values| {
        let mut clock = VectorClock::new();
        for (device, value) in DEVICES.iter().zip(values) {
            clock.set(device, value);
        }
        clock
    })
}

fn version_strategy() -> impl Strategy<Value = Version> {
    (
        clock_strategy(),
        0usize..DEVICES.len(),
        0u32..1000,
        prop::option::of(0u8..3),
    )
        .prop_map(|(clock, device, ulid, sha)| Version {
            event_ulid: format!("{ulid:026}"),
            device_id: DEVICES[device].to_owned(),
            clock,
            deleted: sha.is_none(),
            sha256: sha.map(|s| format!("{s:064}")),
            bytes: sha.map(u64::from),
            mtime_unix: None,
            created_at: String::new(),
        })
}

/// Events as devices really make them: each device edits after seeing some of the others' events,
/// so clocks carry real causal history (including deletes that supersede upserts).
fn history_strategy() -> impl Strategy<Value = Vec<Version>> {
    prop::collection::vec(
        (
            0usize..DEVICES.len(),
            prop::option::of(0u8..3),
            any::<u64>(),
        ),
        1..12,
    )
    .prop_map(|steps| {
        let mut made: Vec<Version> = Vec::new();
        let mut seq = [0u64; DEVICES.len()];
        for (n, (device, sha, seen_mask)) in steps.into_iter().enumerate() {
            // The device has seen an arbitrary subset of what was made so far.
            let mut clock = VectorClock::new();
            for (i, v) in made.iter().enumerate() {
                if v.device_id == DEVICES[device] || seen_mask & (1 << (i % 64)) != 0 {
                    clock.merge(&v.clock);
                }
            }
            seq[device] = seq[device].max(clock.get(DEVICES[device])) + 1;
            clock.set(DEVICES[device], seq[device]);
            made.push(Version {
                event_ulid: format!("{n:026}"),
                device_id: DEVICES[device].to_owned(),
                clock,
                deleted: sha.is_none(),
                sha256: sha.map(|s| format!("{s:064}")),
                bytes: sha.map(u64::from),
                mtime_unix: None,
                created_at: String::new(),
            });
        }
        made
    })
}

fn apply_all<'a>(versions: impl IntoIterator<Item = &'a Version>) -> Option<EntityState> {
    let mut state: Option<EntityState> = None;
    for v in versions {
        if let Outcome::Applied { state: next, .. } = apply(state.as_ref(), v.clone()) {
            state = Some(next);
        }
    }
    state
}

fn unique_ulids(versions: &[Version]) -> Vec<Version> {
    let mut seen = std::collections::HashSet::new();
    versions
        .iter()
        .filter(|v| seen.insert(v.event_ulid.clone()))
        .cloned()
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_winner_order_is_total_and_antisymmetric(a in version_strategy(), b in version_strategy()) {
        prop_assume!(a.event_ulid != b.event_ulid);
        prop_assert!(a.beats(&b) != b.beats(&a), "exactly one of two distinct versions wins");
    }

    #[test]
    fn the_winner_order_is_transitive(a in version_strategy(), b in version_strategy(), c in version_strategy()) {
        if a.beats(&b) && b.beats(&c) {
            prop_assert!(a.beats(&c));
        }
    }

    #[test]
    fn a_dominating_version_always_wins(a in version_strategy(), b in version_strategy()) {
        if a.clock.dominates(&b.clock) {
            prop_assert!(a.beats(&b));
        }
    }

    #[test]
    fn any_order_with_duplicates_gives_the_same_state(
        history in history_strategy(),
        order in any::<prop::sample::Index>(),
        dups in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        seed in any::<u64>(),
    ) {
        let expected = apply_all(&history);
        // A permutation (by a seeded shuffle) plus re-deliveries of random events anywhere.
        let mut shuffled: Vec<Version> = history.clone();
        let mut rng = seed;
        for i in (1..shuffled.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (rng >> 33) as usize % (i + 1));
        }
        for d in &dups {
            let v = d.get(&history).clone();
            shuffled.insert(order.index(shuffled.len() + 1), v);
        }
        prop_assert_eq!(apply_all(&shuffled), expected);
    }

    #[test]
    fn random_clocks_converge_too(mut versions in prop::collection::vec(version_strategy(), 1..10)) {
        versions = unique_ulids(&versions);
        let forward = apply_all(&versions);
        let backward = apply_all(versions.iter().rev());
        prop_assert_eq!(forward, backward);
    }

    #[test]
    fn the_winner_is_the_greatest_applied_version_and_no_applied_version_dominates_it(
        history in history_strategy(),
    ) {
        let state = apply_all(&history).expect("at least one event");
        let best = history.iter().max_by(|a, b| a.rank().cmp(&b.rank())).expect("non-empty");
        prop_assert_eq!(&state.winner().event_ulid, &best.event_ulid);
        for v in &history {
            prop_assert!(!v.clock.dominates(&state.winner().clock));
        }
        // Siblings are exactly the versions no other applied version dominates.
        let mut maximal: Vec<&str> = history
            .iter()
            .filter(|v| !history.iter().any(|o| o.clock.dominates(&v.clock)))
            .map(|v| v.event_ulid.as_str())
            .collect();
        maximal.sort();
        let mut siblings: Vec<&str> = state.siblings.iter().map(|v| v.event_ulid.as_str()).collect();
        siblings.sort();
        prop_assert_eq!(siblings, maximal);
    }

    #[test]
    fn a_delete_is_never_undone_by_an_older_upsert(history in history_strategy()) {
        for del in history.iter().filter(|v| v.deleted) {
            let older: Vec<&Version> =
                history.iter().filter(|v| !v.deleted && del.clock.dominates(&v.clock)).collect();
            // The delete first, then every upsert it had seen: still deleted.
            let mut state = apply_all([del]);
            for up in &older {
                if let Outcome::Applied { state: next, winner_changed } = apply(state.as_ref(), (*up).clone()) {
                    prop_assert!(!winner_changed);
                    state = Some(next);
                }
            }
            prop_assert!(state.expect("applied").winner().deleted);
        }
    }

    #[test]
    fn conflicts_are_siblings_with_other_bytes_than_the_winner(history in history_strategy()) {
        let state = apply_all(&history).expect("at least one event");
        let winner = state.winner().clone();
        for c in state.conflicts() {
            prop_assert!(c.event_ulid != winner.event_ulid);
            prop_assert!(c.deleted != winner.deleted || c.sha256 != winner.sha256);
            prop_assert!(!winner.clock.dominates(&c.clock));
        }
    }
}
