//! The merge rule (`model::merge::apply`, DESIGN.md "Clocks and the merge rule") over small
//! arbitrary sets of versions: few devices, small clocks (and a few huge entries), few sha values,
//! deletes. Applied in the given order, reversed, deletes first, and shuffled with re-deliveries,
//! the state must be identical; after every step it must be exactly what the *set* of applied
//! versions decides: siblings are the maximal versions, the winner the greatest rank, `seen_vc`
//! the pointwise maximum, and a dominated version (an older upsert after a delete) changes nothing.
#![no_main]

use arbitrary::Arbitrary;
use lib_agent::model::merge::{apply, EntityState, Outcome, Version};
use lib_agent::model::VectorClock;
use libfuzzer_sys::fuzz_target;

const DEVICES: [&str; 3] = ["dev-a", "dev-b", "dev-c"];
const MAX_VERSIONS: usize = 16;

#[derive(Debug, Arbitrary)]
struct GenVersion {
    device: u8,
    clock: [u8; 3],
    /// `None`: a delete.
    sha: Option<u8>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    versions: Vec<GenVersion>,
    shuffle_seed: u64,
    /// Re-deliveries: (which version, where in the shuffled order).
    dups: Vec<(u8, u8)>,
}

/// Mostly 0..=3; now and then a huge entry, so sums leave the small range.
fn clock_value(b: u8) -> u64 {
    match b {
        0..=239 => u64::from(b % 4),
        _ => u64::MAX - u64::from(b - 240),
    }
}

fn version(n: usize, g: &GenVersion) -> Version {
    let mut clock = VectorClock::new();
    for (device, b) in DEVICES.iter().zip(g.clock) {
        clock.set(device, clock_value(b));
    }
    let sha = g.sha.map(|s| format!("{:x}", s % 3).repeat(64));
    Version {
        // Unique per version: a ULID names one event (the brain refuses a reuse).
        event_ulid: format!("{n:026}"),
        device_id: DEVICES[usize::from(g.device) % DEVICES.len()].to_owned(),
        clock,
        deleted: sha.is_none(),
        bytes: g.sha.map(u64::from),
        sha256: sha,
        mtime_unix: None,
        created_at: String::new(),
    }
}

/// What the merge rule decides for a *set* of applied versions, checked against `state`.
fn check_state(state: &EntityState, applied: &[&Version]) {
    assert!(!state.siblings.is_empty(), "a state without siblings");
    let mut seen = VectorClock::new();
    for v in applied {
        seen.merge(&v.clock);
    }
    assert_eq!(state.seen_vc, seen, "seen_vc is not the pointwise max");

    let mut maximal: Vec<&str> = applied
        .iter()
        .filter(|v| !applied.iter().any(|o| o.clock.dominates(&v.clock)))
        .map(|v| v.event_ulid.as_str())
        .collect();
    maximal.sort_unstable();
    let mut siblings: Vec<&str> = state.siblings.iter().map(|s| s.event_ulid.as_str()).collect();
    siblings.sort_unstable();
    assert_eq!(siblings, maximal, "siblings are not the maximal versions");
    for s in &state.siblings {
        let original = applied.iter().find(|v| v.event_ulid == s.event_ulid);
        assert_eq!(original, Some(&s), "a sibling differs from the version applied");
    }
    for pair in state.siblings.windows(2) {
        assert!(pair[0].beats(&pair[1]), "siblings not in rank order");
    }

    let best = applied
        .iter()
        .max_by(|a, b| a.rank().cmp(&b.rank()))
        .expect("applied is not empty");
    assert_eq!(state.winner().event_ulid, best.event_ulid, "the winner is not the max rank");
    for v in applied {
        assert!(
            !v.clock.dominates(&state.winner().clock),
            "the winner {} is dominated by {}",
            state.winner().event_ulid,
            v.event_ulid
        );
    }

    let winner = state.winner();
    let conflicts: Vec<&str> = state.conflicts().map(|c| c.event_ulid.as_str()).collect();
    let want: Vec<&str> = state.siblings[1..]
        .iter()
        .filter(|s| s.deleted != winner.deleted || s.sha256 != winner.sha256)
        .map(|s| s.event_ulid.as_str())
        .collect();
    assert_eq!(conflicts, want, "conflicts are not the siblings with other bytes");

    // What the stores write and read back is the same state.
    let mut stored = state.siblings.clone();
    stored.reverse();
    assert_eq!(
        EntityState::from_parts(state.seen_vc.clone(), stored).as_ref(),
        Some(state),
        "from_parts changed the state"
    );
    let json = serde_json::to_string(state).expect("a state serialises");
    let back: EntityState = serde_json::from_str(&json).expect("a state parses back");
    assert_eq!(&back, state, "JSON round trip changed the state");
}

/// Applies `order` one version at a time, checking every step.
fn apply_all(order: &[&Version]) -> Option<EntityState> {
    let mut state: Option<EntityState> = None;
    let mut applied: Vec<&Version> = Vec::new();
    for &v in order {
        let again = applied.iter().any(|a| a.event_ulid == v.event_ulid);
        let dominated = applied.iter().any(|a| a.clock.dominates(&v.clock));
        let is_sibling = state
            .as_ref()
            .is_some_and(|s| s.siblings.iter().any(|x| x.event_ulid == v.event_ulid));
        match apply(state.as_ref(), v.clone()) {
            Outcome::Duplicate => {
                assert!(is_sibling, "Duplicate for {}, which is no sibling", v.event_ulid);
            }
            Outcome::Applied {
                state: next,
                winner_changed,
            } => {
                assert!(!is_sibling, "a sibling ({}) applied twice", v.event_ulid);
                assert_eq!(
                    winner_changed,
                    next.winner().event_ulid == v.event_ulid,
                    "winner_changed does not say whether the incoming version won"
                );
                if let Some(before) = &state {
                    if !winner_changed {
                        assert_eq!(next.winner(), before.winner(), "the winner moved silently");
                    }
                    if again {
                        assert_eq!(&next, before, "a re-delivery changed the state");
                    }
                    if dominated {
                        // An older upsert after a delete (or any superseded version): no effect
                        // but on seen_vc, which already holds its clock.
                        assert!(!winner_changed, "a dominated version {} won", v.event_ulid);
                        assert_eq!(&next, before, "a dominated version changed the state");
                    }
                }
                if !again {
                    applied.push(v);
                }
                check_state(&next, &applied);
                state = Some(next);
            }
        }
    }
    state
}

fuzz_target!(|input: Input| {
    let versions: Vec<Version> = input
        .versions
        .iter()
        .take(MAX_VERSIONS)
        .enumerate()
        .map(|(n, g)| version(n, g))
        .collect();
    let given: Vec<&Version> = versions.iter().collect();
    let expected = apply_all(&given);
    assert_eq!(expected.is_some(), !versions.is_empty());

    let reversed: Vec<&Version> = versions.iter().rev().collect();
    assert_eq!(apply_all(&reversed), expected, "reversed order differs");

    // Deletes first, then the upserts they may have seen: none may bring the file back.
    let mut deletes_first = given.clone();
    deletes_first.sort_by_key(|v| !v.deleted);
    assert_eq!(apply_all(&deletes_first), expected, "deletes-first order differs");

    let mut shuffled = given.clone();
    let mut rng = input.shuffle_seed;
    for i in (1..shuffled.len()).rev() {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        shuffled.swap(i, (rng >> 33) as usize % (i + 1));
    }
    if !versions.is_empty() {
        for &(which, at) in input.dups.iter().take(MAX_VERSIONS) {
            let v = &versions[usize::from(which) % versions.len()];
            shuffled.insert(usize::from(at) % (shuffled.len() + 1), v);
        }
    }
    assert_eq!(apply_all(&shuffled), expected, "shuffled order with re-deliveries differs");
});
