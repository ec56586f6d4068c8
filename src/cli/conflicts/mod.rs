//! `agent conflicts`: concurrent edits that lost, each beside the version that won; `show` prints
//! one file's versions with their text (or a diff), `resolve` keeps one of them.
//!
//! What is printed comes from the events (their device, time, ULID and hashes), never from when
//! this replica happened to apply them, so every replica that applied the same events prints the
//! same list: `--json` is byte for byte the same on every device with the same device names.

mod resolve;
mod show;

use serde_json::json;

use super::GlobalArgs;
use crate::config::Config;
use crate::store::kv::DeviceNames;
use crate::store::read::VersionSummary;
use crate::store::Store;
use crate::term::escape;

/// List concurrent edits that lost to another device's version, with both versions
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    Show(show::Args),
    Resolve(resolve::Args),
}

pub fn run(args: Args, global: &GlobalArgs, config: &Config) -> anyhow::Result<()> {
    match args.action {
        None => list(global, config),
        Some(Action::Show(args)) => show::run(args, global, config),
        Some(Action::Resolve(args)) => resolve::run(args, global, config),
    }
}

fn list(global: &GlobalArgs, config: &Config) -> anyhow::Result<()> {
    let store = Store::open_existing(&config.store.path)?;
    let mut conflicts = store.conflicts()?;
    let devices = Devices::of(&store)?;
    for c in &mut conflicts {
        devices.name(&mut c.winner);
        devices.name(&mut c.loser);
    }
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
        println!("    won:  {}", escape(&describe(&c.winner, &devices)));
        println!("    lost: {}", escape(&describe(&c.loser, &devices)));
    }
    println!(
        "{}; `agent conflicts show KEY` prints each version's text, `agent conflicts resolve KEY \
         --keep ULID|DEVICE` keeps one, and an edit made after seeing them resolves them too",
        crate::term::count(conflicts.len() as u64, "conflict", "conflicts")
    );
    Ok(())
}

fn describe(v: &VersionSummary, devices: &Devices) -> String {
    let what = if v.deleted {
        "deleted".to_owned()
    } else {
        format!(
            "sha256 {} ({} bytes)",
            v.sha256.as_deref().map_or("?", short_hash),
            v.bytes.unwrap_or(0)
        )
    };
    format!(
        "{what} by {} at {}, {}",
        v.device_id
            .as_deref()
            .map_or_else(|| "an unknown device".to_owned(), |id| devices.label(id)),
        v.at.as_deref().unwrap_or("?"),
        v.event_ulid.as_deref().unwrap_or("?")
    )
}

/// A key as the user typed it, as the store keeps keys: NFC-normalised (a name typed or pasted
/// on macOS may arrive decomposed).
fn typed_key(typed: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    typed.nfc().collect()
}

/// The first 12 hex digits of a hash: enough to tell versions apart on a screen.
fn short_hash(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// How devices are named in the output: the brain's names where this device learnt them.
struct Devices {
    me: String,
    names: DeviceNames,
}

/// How much of a device id is shown beside its name.
const ID_PREFIX: usize = 8;

impl Devices {
    fn of(store: &Store) -> anyhow::Result<Devices> {
        Ok(Devices {
            me: store.device_id().to_owned(),
            names: store.device_names()?,
        })
    }

    /// "this device", "NAME (id-prefix)" where the name is known, the id otherwise.
    fn label(&self, id: &str) -> String {
        if id == self.me {
            return "this device".to_owned();
        }
        match self.names.get(id) {
            Some(name) => format!("{name} ({})", id.get(..ID_PREFIX).unwrap_or(id)),
            None => id.to_owned(),
        }
    }

    /// Fills a version's `device_name` from the names this device knows.
    fn name(&self, v: &mut VersionSummary) {
        v.device_name = v
            .device_id
            .as_deref()
            .and_then(|id| self.names.get(id))
            .cloned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_this_device_or_its_name_with_its_id_prefix_or_its_id() {
        let devices = Devices {
            me: "me-0000-1111".into(),
            names: DeviceNames::from([
                ("5f0c1234-aaaa".to_owned(), "laptop".to_owned()),
                ("me-0000-1111".to_owned(), "desk".to_owned()),
            ]),
        };
        assert_eq!(devices.label("me-0000-1111"), "this device");
        assert_eq!(devices.label("5f0c1234-aaaa"), "laptop (5f0c1234)");
        assert_eq!(devices.label("9ab1"), "9ab1");
    }

    #[test]
    fn a_key_typed_decomposed_finds_the_stored_composed_key() {
        assert_eq!(typed_key("notes/cafe\u{301}.md"), "notes/caf\u{e9}.md");
    }
}
