//! `agent conflicts resolve KEY --keep ULID|DEVICE`: keeps one version of a file's open
//! conflict by recording, as a change made on this device, an event with that version's
//! payload whose clock dominates every version (the store's `resolve_conflict`). It syncs like
//! any change, and every replica that applies it has the kept version as winner and no conflict.

use serde_json::json;

use super::{short_hash, Devices, GlobalArgs};
use crate::config::Config;
use crate::store::conflict::{ConflictVersion, OpenConflict};
use crate::store::read::VersionSummary;
use crate::store::Store;
use crate::term::escape;

/// Keep one version of a file's conflict, on every device once synced (writes no file)
///
/// Records, as a change made on this device, an event with the chosen version (a delete for a
/// deleted one) whose clock dominates every version: it wins on every device once synced, and
/// the conflict is closed there. No file on disk is written: this device's copy of the file
/// stays as it is, and an edit of it made afterwards wins in turn. Refused when this device
/// knows only the version's hash (it came with a re-seed), not its content.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file's key, as `agent conflicts` prints it: <library>/<path in the library>
    pub key: String,
    /// The version to keep: its ULID, or the device that made it (its id, the start of its id,
    /// or its name)
    #[arg(long, value_name = "ULID|DEVICE")]
    pub keep: String,
}

/// The shortest start of a device id that `--keep` takes for the id.
const MIN_ID_PREFIX: usize = 4;

pub fn run(args: Args, global: &GlobalArgs, config: &Config) -> anyhow::Result<()> {
    let mut store = Store::open_existing(&config.store.path)?;
    let key = super::typed_key(&args.key);
    let conflict = super::show::open_conflict(&store, &key)?;
    let devices = Devices::of(&store)?;
    let kept = choose(&conflict, &args.keep, &devices)?;
    let kept_summary = {
        let mut summary = VersionSummary::from(&kept.version);
        devices.name(&mut summary);
        summary
    };
    // The store checks again, in its transaction, that the version is still one of the
    // conflict's (a pull may have landed since the read above).
    let batch = store.batch()?;
    let event = batch.resolve_conflict(&key, &kept.version.event_ulid)?;
    batch.commit()?;
    let on_disk = store.observed(&key)?.map(|o| o.sha256);
    let disk_differs = match &on_disk {
        Some(sha) => kept.version.deleted || kept.version.sha256.as_deref() != Some(sha.as_str()),
        None => !kept.version.deleted,
    };
    if global.json {
        return crate::cli::print_json(&json!({
            "ok": true,
            "path": key,
            "kept": kept_summary,
            "event": {
                "event_ulid": event.event_ulid,
                "event_type": event.event_type.as_str(),
                "vector_clock": event.vector_clock,
                "created_at": event.created_at,
            },
            "file_written": false,
            "on_this_device": on_disk.is_some(),
            "disk_differs": disk_differs,
        }));
    }
    println!(
        "kept {} of {}: {}",
        escape(&kept.version.event_ulid),
        escape(&key),
        escape(&what(&kept.version, &devices))
    );
    println!(
        "recorded event {} over every version: it syncs like any change, and resolves the \
         conflict on every device",
        escape(&event.event_ulid)
    );
    match (&on_disk, disk_differs) {
        (None, _) => println!("no file on disk was written (this device does not have the file)"),
        (Some(_), false) => {
            println!("no file on disk was written: this device's copy is the kept version")
        }
        (Some(_), true) => println!(
            "no file on disk was written: this device's copy differs from the kept version and \
             stays as it is; an edit of it made from now on wins over the kept version"
        ),
    }
    Ok(())
}

/// The version `keep` names: a ULID (any case), or the device that made it by id, id prefix
/// or name. Unknown or naming several versions: an error listing the choices.
fn choose<'c>(
    conflict: &'c OpenConflict,
    keep: &str,
    devices: &Devices,
) -> anyhow::Result<&'c ConflictVersion> {
    let versions = &conflict.versions;
    if let Some(v) = versions
        .iter()
        .find(|v| v.version.event_ulid.eq_ignore_ascii_case(keep))
    {
        return Ok(v);
    }
    let by_device: Vec<&ConflictVersion> = versions
        .iter()
        .filter(|v| names_device(keep, &v.version.device_id, devices))
        .collect();
    let choices = || {
        versions
            .iter()
            .map(|v| format!("{} ({})", v.version.event_ulid, what(&v.version, devices)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    match by_device.as_slice() {
        [one] => Ok(one),
        [] => anyhow::bail!(
            "no version of {} is {keep:?} (a ULID, or a device's id or name); choose one of: {}",
            conflict.path,
            choices()
        ),
        _ => anyhow::bail!(
            "{keep:?} names more than one version of {}; choose one by its ULID: {}",
            conflict.path,
            choices()
        ),
    }
}

/// Whether `keep` names the device `id`: its id, the start of it, or its name.
fn names_device(keep: &str, id: &str, devices: &Devices) -> bool {
    id == keep
        || (keep.len() >= MIN_ID_PREFIX && id.starts_with(keep))
        || devices.names.get(id).is_some_and(|name| name == keep)
}

/// A version in a few words: what it holds, by whom, when.
fn what(v: &crate::model::merge::Version, devices: &Devices) -> String {
    let holds = if v.deleted {
        "deleted".to_owned()
    } else {
        format!(
            "sha256 {}, {} bytes",
            v.sha256.as_deref().map_or("?", short_hash),
            v.bytes.map_or_else(|| "?".to_owned(), |b| b.to_string())
        )
    };
    format!(
        "{holds}, by {} at {}",
        devices.label(&v.device_id),
        v.created_at
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::merge::Version;
    use crate::model::VectorClock;
    use crate::store::kv::DeviceNames;

    fn version(ulid: &str, device: &str) -> ConflictVersion {
        ConflictVersion {
            version: Version {
                event_ulid: ulid.into(),
                device_id: device.into(),
                clock: VectorClock::from([(device, 1)]),
                deleted: false,
                sha256: Some("ab".repeat(32)),
                bytes: Some(1),
                mtime_unix: None,
                created_at: "2026-11-25T10:00:00Z".into(),
            },
            winner: false,
            payload: None,
        }
    }

    fn conflict() -> (OpenConflict, Devices) {
        let conflict = OpenConflict {
            path: "notes/a.md".into(),
            versions: vec![
                version("01JAAAAAAAAAAAAAAAAAAAAAAA", "5f0c1234-aaaa"),
                version("01JBBBBBBBBBBBBBBBBBBBBBBB", "5f0c9999-bbbb"),
                version("01JCCCCCCCCCCCCCCCCCCCCCCC", "me"),
            ],
        };
        let devices = Devices {
            me: "me".into(),
            names: DeviceNames::from([("5f0c9999-bbbb".to_owned(), "laptop".to_owned())]),
        };
        (conflict, devices)
    }

    fn chosen(keep: &str) -> Result<String, String> {
        let (conflict, devices) = conflict();
        choose(&conflict, keep, &devices)
            .map(|v| v.version.event_ulid.clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn keep_takes_a_ulid_in_any_case_or_a_device_by_id_prefix_or_name() {
        assert_eq!(
            chosen("01jbbbbbbbbbbbbbbbbbbbbbbb").as_deref(),
            Ok("01JBBBBBBBBBBBBBBBBBBBBBBB")
        );
        assert_eq!(
            chosen("laptop").as_deref(),
            Ok("01JBBBBBBBBBBBBBBBBBBBBBBB")
        );
        assert_eq!(
            chosen("5f0c1234").as_deref(),
            Ok("01JAAAAAAAAAAAAAAAAAAAAAAA")
        );
        assert_eq!(chosen("me").as_deref(), Ok("01JCCCCCCCCCCCCCCCCCCCCCCC"));
    }

    #[test]
    fn keep_that_names_no_version_or_several_lists_every_choice() {
        for (keep, says) in [("desk", "no version"), ("5f0c", "more than one")] {
            let err = chosen(keep).expect_err(keep);
            assert!(err.contains(says), "{err}");
            for ulid in ["01JAAAA", "01JBBBB", "01JCCCC"] {
                assert!(err.contains(ulid), "{err}");
            }
            assert!(err.contains("laptop (5f0c9999)"), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
