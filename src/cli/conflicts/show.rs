//! `agent conflicts show KEY [--diff]`: every version of one file's open conflict (the winner,
//! then each loser) with its device, time, ULID, hash, size and text, or each loser's text as a
//! unified diff against the winner's.

use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::{Devices, GlobalArgs};
use crate::config::Config;
use crate::store::conflict::{ConflictVersion, OpenConflict, Text};
use crate::store::read::VersionSummary;
use crate::store::Store;
use crate::term::{escape, escape_text};

/// Print each version of one file's conflict: device, time, ULID, sha256, size and text
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file's key, as `agent conflicts` prints it: <library>/<path in the library>
    pub key: String,
    /// Print each losing version's text as a unified diff against the winner's
    #[arg(long)]
    pub diff: bool,
}

/// A diff of two long texts stops looking for the smallest diff after this long and gives a
/// correct but larger one: a conflict of two 256 KiB texts must not hang the command.
const DIFF_TIMEOUT: Duration = Duration::from_secs(2);

pub fn run(args: Args, global: &GlobalArgs, config: &Config) -> anyhow::Result<()> {
    let store = Store::open_existing(&config.store.path)?;
    let conflict = open_conflict(&store, &super::typed_key(&args.key))?;
    let devices = Devices::of(&store)?;
    let winner = &conflict.versions[0];
    if global.json {
        let versions: Vec<VersionJson> = conflict
            .versions
            .iter()
            .map(|v| VersionJson::of(v, winner, args.diff, &devices))
            .collect();
        return crate::cli::print_json(
            &json!({ "ok": true, "path": conflict.path, "versions": versions }),
        );
    }
    if args.diff {
        print_diffs(&conflict);
    } else {
        print_versions(&conflict, &devices);
    }
    Ok(())
}

/// The open conflict of `key`, or an error that says there is none.
pub(super) fn open_conflict(store: &Store, key: &str) -> anyhow::Result<OpenConflict> {
    store
        .open_conflict(key)?
        .ok_or_else(|| anyhow::anyhow!("{key} has no open conflict (`agent conflicts` lists them)"))
}

/// A version in `--json`: its summary, whether it won, and its text with what became of it.
#[derive(Debug, Serialize)]
struct VersionJson<'a> {
    winner: bool,
    #[serde(flatten)]
    summary: VersionSummary,
    /// "kept", "deleted", "not_text" (a binary file) or "not_kept" (only its hash is known).
    text_state: &'static str,
    text: Option<&'a str>,
    /// With `--diff`, for a loser whose text and the winner's are both known.
    #[serde(skip_serializing_if = "Option::is_none")]
    diff: Option<String>,
}

impl<'a> VersionJson<'a> {
    fn of(v: &'a ConflictVersion, winner: &ConflictVersion, diff: bool, devices: &Devices) -> Self {
        let mut summary = VersionSummary::from(&v.version);
        devices.name(&mut summary);
        let text = v.text();
        VersionJson {
            winner: v.winner,
            summary,
            text_state: match text {
                Text::Kept(_) => "kept",
                Text::Deleted => "deleted",
                Text::NotText => "not_text",
                Text::NotKept => "not_kept",
            },
            text: match text {
                Text::Kept(t) => Some(t),
                _ => None,
            },
            diff: (diff && !v.winner)
                .then(|| unified_diff(winner, v).ok())
                .flatten(),
        }
    }
}

fn role(v: &ConflictVersion) -> &'static str {
    if v.winner {
        "winning"
    } else {
        "losing"
    }
}

/// What a version's text is, in words, when it cannot be shown.
fn missing_text(text: Text<'_>) -> &'static str {
    match text {
        Text::Kept(_) => "its text is shown",
        Text::Deleted => "deleted: no text",
        Text::NotText => "no text: not a text file, or its text could not be extracted",
        Text::NotKept => {
            "its text is not kept on this device: only its hash is known (it came with a \
             re-seed from the brain's snapshot)"
        }
    }
}

fn print_versions(conflict: &OpenConflict, devices: &Devices) {
    println!(
        "{}: the winning version and {}",
        escape(&conflict.path),
        crate::term::count(
            conflict.versions.len() as u64 - 1,
            "conflicting version",
            "conflicting versions"
        )
    );
    for v in &conflict.versions {
        let version = &v.version;
        println!();
        println!(
            "{} by {} at {}",
            if v.winner { "WON " } else { "LOST" },
            escape(&devices.label(&version.device_id)),
            escape(&version.created_at)
        );
        println!("    ulid    {}", escape(&version.event_ulid));
        if !version.deleted {
            println!(
                "    sha256  {}",
                escape(version.sha256.as_deref().unwrap_or("?"))
            );
            println!(
                "    bytes   {}",
                version
                    .bytes
                    .map_or_else(|| "?".to_owned(), |b| b.to_string())
            );
        }
        match v.text() {
            Text::Kept(text) => {
                println!("    text:");
                // Each line behind a bar: where the text starts and ends stays plain, blank
                // lines and a missing final newline included.
                for line in escape_text(text).lines() {
                    println!("    | {line}");
                }
            }
            other => println!("    {}", missing_text(other)),
        }
    }
}

/// Each loser's text as a unified diff against the winner's; a comment line (`#`, which patch
/// tools skip) for a loser that has none.
fn print_diffs(conflict: &OpenConflict) {
    let winner = &conflict.versions[0];
    for loser in &conflict.versions[1..] {
        match unified_diff(winner, loser) {
            Ok(diff) if diff.is_empty() => println!(
                "# {} {}: the same text as the winner's (the files differ where the text does \
                 not show)",
                escape(&conflict.path),
                escape(&loser.version.event_ulid)
            ),
            Ok(diff) => print!("{}", escape_text(&diff)),
            Err(why) => println!(
                "# no diff for {} {}: {why}",
                escape(&conflict.path),
                escape(&loser.version.event_ulid)
            ),
        }
    }
}

/// The loser's text as a unified diff from the winner's, headed by their ULIDs (the same on
/// every replica). A deleted version counts as no text at all; a version without known text has
/// no diff, and the reason is the error.
fn unified_diff(winner: &ConflictVersion, loser: &ConflictVersion) -> Result<String, String> {
    let text_of = |v: &ConflictVersion| match v.text() {
        Text::Kept(t) => Ok(t.to_owned()),
        Text::Deleted => Ok(String::new()),
        Text::NotText => Err(format!(
            "the {} version has no text (not a text file)",
            role(v)
        )),
        Text::NotKept => Err(format!(
            "this device knows only the hash of the {} version, not its text",
            role(v)
        )),
    };
    let (old, new) = (text_of(winner)?, text_of(loser)?);
    let label = |v: &ConflictVersion, what: &str| {
        let deleted = if v.version.deleted { ", deleted" } else { "" };
        format!("{} ({what}{deleted})", v.version.event_ulid)
    };
    let diff = similar::TextDiff::configure()
        .timeout(DIFF_TIMEOUT)
        .diff_lines(old.as_str(), new.as_str());
    Ok(diff
        .unified_diff()
        .header(&label(winner, "won"), &label(loser, "lost"))
        .to_string())
}
