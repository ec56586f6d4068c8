//! `agent conflicts`: concurrent edits that lost, each beside the version that won.

use serde_json::json;

use super::GlobalArgs;
use crate::config::Config;
use crate::store::read::VersionSummary;
use crate::store::Store;
use crate::term::escape;

/// List concurrent edits that lost to another device's version, with both versions
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args, global: &GlobalArgs, config: &Config) -> anyhow::Result<()> {
    let store = Store::open_existing(&config.store.path)?;
    let conflicts = store.conflicts()?;
    if global.json {
        return super::print_json(&json!({ "ok": true, "conflicts": conflicts }));
    }
    if conflicts.is_empty() {
        println!("no conflicts");
        return Ok(());
    }
    for c in &conflicts {
        // Every field comes from some device: escaped for the terminal.
        println!("{}", escape(&c.path));
        println!("    won:  {}", escape(&describe(&c.winner)));
        println!("    lost: {}", escape(&describe(&c.loser)));
    }
    println!(
        "{} conflict(s); an edit made after seeing them resolves them",
        conflicts.len()
    );
    Ok(())
}

fn describe(v: &VersionSummary) -> String {
    let what = if v.deleted {
        "deleted".to_owned()
    } else {
        format!(
            "sha256 {} ({} bytes)",
            v.sha256.as_deref().map_or("?", |s| &s[..s.len().min(12)]),
            v.bytes.unwrap_or(0)
        )
    };
    format!(
        "{what} by device {} at {}",
        v.device_id.as_deref().unwrap_or("?"),
        v.at.as_deref().unwrap_or("?")
    )
}
