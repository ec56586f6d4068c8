//! `agent explain PATH|KEY [--json]`: what the agent knows of one path, and why (see
//! [`crate::explain`]); with a brain configured, also whether the brain's entity matches.

use std::time::Duration;

use serde::Serialize;

use super::GlobalArgs;
use crate::config::Config;
use crate::explain::{self, describe_hit, Decision, Explanation};
use crate::model::wire::SnapshotEntity;
use crate::store::history::{EventState, LocalEvent};
use crate::store::Store;
use crate::sync::BrainClient;
use crate::term::escape;

/// Explain one path: the library and the rule that decided (glob, or ignore file:line:pattern),
/// whether its folder is watched, its state on disk against what was observed, the text kept,
/// the shared view's winner and conflicts, this device's events for it, and the brain's entity
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A path on disk (absolute, or relative to here), or an entity key (`<library>/<path>`)
    #[arg(value_name = "PATH|KEY")]
    pub target: String,
    /// Do not ask the brain
    #[arg(long)]
    pub offline: bool,
}

/// The brain's view of the entity.
#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum BrainView {
    /// No brain configured, or `--offline`.
    NotAsked {
        why: String,
    },
    Unreachable {
        error: String,
    },
    /// The brain has no entity for the key.
    Absent,
    Entity {
        /// The brain's winner is the shared view's winner here.
        matches: bool,
        event_ulid: String,
        device_id: String,
        sha256: Option<String>,
        deleted: bool,
        created_at: String,
    },
}

#[derive(Debug, Serialize)]
struct Output {
    ok: bool,
    #[serde(flatten)]
    explanation: Explanation,
    brain: BrainView,
}

/// The snapshot pages read looking for one key, at most: the key is near the start of the first.
const SNAPSHOT_PAGES: usize = 4;
const SNAPSHOT_PAGE: usize = 200;
const BRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: Args, global: &GlobalArgs, config: &Config) -> anyhow::Result<()> {
    let cwd = std::env::current_dir()?;
    let target = explain::locate(config, &args.target, &cwd)?;
    // Rules can be asked about before the first scan: no database is made for a question.
    let store = if config.store.path.exists() {
        Some(Store::open_existing(&config.store.path)?)
    } else {
        None
    };
    let explanation = explain::explain(config, store.as_ref(), &target)?;
    let brain = if args.offline {
        BrainView::NotAsked {
            why: "--offline".into(),
        }
    } else {
        ask_brain(config, store.as_ref(), &explanation)
    };
    let output = Output {
        ok: true,
        explanation,
        brain,
    };
    if global.json {
        super::print_json(&output)?;
    } else {
        let names = store
            .as_ref()
            .and_then(|s| s.device_names().ok())
            .unwrap_or_default();
        print_text(&output, &names);
    }
    Ok(())
}

/// The brain's current entity for the key, from its snapshot (which pages by key), compared
/// with the shared view's winner here.
fn ask_brain(config: &Config, store: Option<&Store>, explanation: &Explanation) -> BrainView {
    let Some(url) = &config.sync.brain_url else {
        return BrainView::NotAsked {
            why: "no brain is configured".into(),
        };
    };
    let Some(store) = store else {
        return BrainView::NotAsked {
            why: "no database yet: this device has no identity to ask with".into(),
        };
    };
    let client = match BrainClient::from_config(url, &config.sync, store.device_id()) {
        Ok(client) => client,
        Err(e) => {
            return BrainView::Unreachable {
                error: e.to_string(),
            }
        }
    };
    match find_entity(&client, &explanation.key) {
        Err(e) => BrainView::Unreachable {
            error: e.to_string(),
        },
        Ok(None) => BrainView::Absent,
        Ok(Some(entity)) => {
            let ours = explanation
                .shared
                .as_ref()
                .and_then(|s| s.event_ulid.as_deref());
            BrainView::Entity {
                matches: ours == Some(entity.event_ulid.as_str()),
                deleted: entity.deleted_at.is_some(),
                sha256: entity.payload.sha256,
                event_ulid: entity.event_ulid,
                device_id: entity.device_id,
                created_at: entity.created_at,
            }
        }
    }
}

/// Pages the snapshot from just before `key` (the key less its last character sorts before it,
/// and few keys fall between them) until the key or a key after it.
fn find_entity(
    client: &BrainClient,
    key: &str,
) -> Result<Option<SnapshotEntity>, crate::sync::ClientError> {
    let mut after = match key.char_indices().last() {
        Some((i, _)) => key[..i].to_owned(),
        None => String::new(),
    };
    for _ in 0..SNAPSHOT_PAGES {
        let page = client.snapshot_within(&after, SNAPSHOT_PAGE, BRAIN_TIMEOUT)?;
        for entity in page.entities {
            match entity.entity_key.as_str().cmp(key) {
                std::cmp::Ordering::Less => after = entity.entity_key,
                std::cmp::Ordering::Equal => return Ok(Some(entity)),
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
        if !page.has_more {
            return Ok(None);
        }
    }
    Ok(None)
}

fn device(names: &crate::store::kv::DeviceNames, id: &str) -> String {
    match names.get(id) {
        Some(name) => format!("{} ({})", escape(name), escape(id)),
        None => escape(id).into_owned(),
    }
}

/// The text output; what came from files, the store or the brain is escaped for the terminal.
fn print_text(out: &Output, names: &crate::store::kv::DeviceNames) {
    let e = &out.explanation;
    let show = |p: &std::path::Path| escape(&p.display().to_string()).into_owned();
    println!("{}", escape(&e.key));
    if let Some(path) = &e.path {
        println!("  path      {}", show(path));
    }
    println!(
        "  library   {}",
        e.library
            .as_deref()
            .map_or("not configured on this device".into(), escape)
    );
    let rule = match &e.decision {
        Decision::Indexed {
            include,
            reincluded_by,
        } => {
            let mut s = format!("indexed: matches include {:?}", escape(include));
            if let Some(hit) = reincluded_by {
                s.push_str(&format!(", re-included by {}", escape(&describe_hit(hit))));
            }
            s
        }
        Decision::NotIncluded { include } => format!(
            "not indexed: no include glob matches ({})",
            include
                .iter()
                .map(|g| format!("{:?}", escape(g)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Decision::Excluded { exclude } => {
            format!("not indexed: excluded by {:?}", escape(exclude))
        }
        Decision::Ignored { by }
            if by.matched.as_path() != e.path.as_deref().unwrap_or(by.matched.as_path()) =>
        {
            format!(
                "not indexed: the folder {} is ignored by {}",
                show(&by.matched),
                escape(&describe_hit(by))
            )
        }
        Decision::Ignored { by } => {
            format!("not indexed: ignored by {}", escape(&describe_hit(by)))
        }
        Decision::Folder => "a folder: its files are explained one by one".into(),
        Decision::NotConfigured => {
            "unknown here: its library is not configured on this device".into()
        }
    };
    println!("  rule      {rule}");
    println!(
        "  watched   {}: {}",
        if e.watch.watched { "yes" } else { "no" },
        escape(&e.watch.why)
    );
    if let Some(disk) = &e.disk {
        let now = match disk.bytes {
            Some(bytes) => format!("{} ({bytes} bytes)", disk.kind),
            None => disk.kind.to_owned(),
        };
        let observed = match &disk.observed {
            Some(o) => format!("; observed {} bytes, sha256 {}", o.bytes, escape(&o.sha256)),
            None => "; not observed here".into(),
        };
        println!("  disk      {now}{observed}");
        println!("            {}", escape(&disk.why));
    }
    match &e.text {
        Some(t) if t.truncated => println!(
            "  text      {} bytes kept, cut at max_content_bytes ({})",
            t.bytes, t.max_content_bytes
        ),
        Some(t) => println!("  text      {} bytes kept", t.bytes),
        None if e.shared.is_some() => println!("  text      none kept (a binary file, or no text)"),
        None => {}
    }
    match &e.shared {
        None => println!("  shared    no entity in the shared view"),
        Some(s) => {
            let what = if s.deleted_at.is_some() {
                format!(
                    "deleted at {}",
                    escape(s.deleted_at.as_deref().unwrap_or("?"))
                )
            } else {
                format!(
                    "sha256 {}, {} bytes",
                    escape(s.sha256.as_deref().unwrap_or("?")),
                    s.bytes.unwrap_or(0)
                )
            };
            println!("  winner    {what}");
            println!(
                "            from {}, event {}, clock {}, made {}",
                device(names, s.device_id.as_deref().unwrap_or("?")),
                escape(s.event_ulid.as_deref().unwrap_or("?")),
                escape(s.vector_clock.as_deref().unwrap_or("{}")),
                escape(
                    s.event_created_at
                        .as_deref()
                        .or(s.indexed_at.as_deref())
                        .unwrap_or("?")
                )
            );
            match &s.siblings {
                None => println!("  siblings  none: the winner dominates every version applied"),
                Some(json) => println!("  siblings  {}", escape(json)),
            }
        }
    }
    if e.conflict.is_empty() {
        println!("  conflict  none");
    } else {
        println!(
            "  conflict  open, {} versions (`agent conflicts show`):",
            e.conflict.len()
        );
        for v in &e.conflict {
            println!(
                "            {} {} from {}, {}",
                if v.winner { "*" } else { "-" },
                escape(&v.event_ulid),
                device(names, &v.device_id),
                if v.deleted {
                    "deleted".to_owned()
                } else {
                    format!("sha256 {}", escape(v.sha256.as_deref().unwrap_or("?")))
                }
            );
        }
    }
    print_events("outbox", &e.outbox, names);
    print_events("inbox", &e.inbox, names);
    let brain = match &out.brain {
        BrainView::NotAsked { why } => format!("not asked: {}", escape(why)),
        BrainView::Unreachable { error } => format!("could not ask: {}", escape(error)),
        BrainView::Absent => "has no entity for this key".into(),
        BrainView::Entity {
            matches,
            event_ulid,
            device_id,
            ..
        } => format!(
            "{}: winner {} from {}",
            if *matches {
                "matches"
            } else {
                "differs from the winner here"
            },
            escape(event_ulid),
            device(names, device_id)
        ),
    };
    println!("  brain     {brain}");
}

fn print_events(label: &str, events: &[LocalEvent], names: &crate::store::kv::DeviceNames) {
    if events.is_empty() {
        println!("  {label:<9} none");
        return;
    }
    println!(
        "  {label:<9} {}",
        crate::term::count(events.len() as u64, "event", "events")
    );
    for ev in events {
        let state = match ev.state {
            EventState::Pending => "pending".to_owned(),
            EventState::Pushed => format!("pushed {}", escape(ev.at.as_deref().unwrap_or(""))),
            EventState::Parked => format!(
                "PARKED {}: {}",
                escape(ev.at.as_deref().unwrap_or("")),
                escape(ev.detail.as_deref().unwrap_or(""))
            ),
            EventState::Received => "received, not applied yet".to_owned(),
            EventState::Applied => format!("applied {}", escape(ev.at.as_deref().unwrap_or(""))),
        };
        println!(
            "            {} {} from {}, {}",
            escape(&ev.event_type),
            escape(&ev.event_ulid),
            device(names, &ev.device_id),
            state
        );
    }
}
