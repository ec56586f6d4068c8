//! `agent brain device add | list | revoke | rotate`: the brain's device credentials
//! (DESIGN.md "Trust"). Each command opens the brain's store directly, as `brain prune` does, so
//! the operator enrols and revokes devices on the brain's machine; a revocation takes effect on
//! the next request of every brain instance sharing the store, with no restart.

use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use serde_json::json;

use super::brain_store::{StoreArgs, Target};
use super::GlobalArgs;
use crate::brain::auth::{hash_token, new_token};
use crate::brain::convergence::DeviceConvergence;
use crate::brain::store::{unix_seconds, BrainStore, DeviceRecord, PgStore, SqliteStore};
use crate::model::digest::ConvergenceState;
use crate::model::event::format_rfc3339;

/// Device credentials: enrol, list, revoke and rotate the tokens devices sync with
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: DeviceCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    Add(AddArgs),
    List(ListArgs),
    Revoke(NameArgs),
    Rotate(RotateArgs),
}

/// Enrol a device: prints its new token once (only its sha256 is stored)
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// A name for the device (letters, digits, `.`, `_`, `-`), e.g. `laptop`
    pub name: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// List enrolled devices: bound id, created, last seen, revoked, webhook state
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Revoke a device's token: its next request is refused (401), its long-polls end, its
/// webhook is turned off
#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// The device's name, as `device list` shows it
    pub name: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Give a device a new token (printed once) and clear its binding to a device id
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// The device's name, as `device list` shows it
    pub name: String,
    /// Keep the old token working this long (e.g. `1h`, `2d`), while the device is updated;
    /// without it the old token stops at once
    #[arg(long, value_name = "DURATION")]
    pub grace: Option<humantime::Duration>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// The longest grace a rotation may give the old token.
const MAX_GRACE: Duration = Duration::from_secs(90 * 86_400);

pub async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<()> {
    let store_args = match &args.command {
        DeviceCommand::Add(a) => &a.store,
        DeviceCommand::List(a) => &a.store,
        DeviceCommand::Revoke(a) => &a.store,
        DeviceCommand::Rotate(a) => &a.store,
    };
    let target = Target::from_args(store_args, global)?;
    match &target {
        Target::Sqlite(path) => {
            if !matches!(args.command, DeviceCommand::Add(_)) && !path.exists() {
                bail!(
                    "no brain database at {}: enrol a device first (`agent brain device add`)",
                    path.display()
                );
            }
            let store = SqliteStore::open(path)
                .with_context(|| format!("opening {}", target.describe()))?;
            on_store(&store, args.command, global).await
        }
        Target::Postgres(url, options) => {
            let store = PgStore::connect(url, options.clone())
                .await
                .with_context(|| format!("opening {}", target.describe()))?;
            on_store(&store, args.command, global).await
        }
    }
}

async fn on_store<S: BrainStore>(
    store: &S,
    command: DeviceCommand,
    global: &GlobalArgs,
) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Add(args) => {
            check_name(&args.name)?;
            let token = new_token().context("drawing a random token")?;
            store.add_device(&args.name, &hash_token(&token)).await?;
            print_token(global, &args.name, &token, "enrolled")
        }
        DeviceCommand::List(_) => {
            let (point, devices) = crate::brain::convergence::devices(store).await?;
            let now = unix_seconds(SystemTime::now());
            if global.json {
                let list: Vec<_> = devices.iter().map(|d| device_json(d, now)).collect();
                return super::print_json(
                    &json!({"ok": true, "head": point.head, "devices": list}),
                );
            }
            if devices.is_empty() {
                println!("no devices enrolled (`agent brain device add NAME`)");
            }
            for d in &devices {
                print_device(d, now);
            }
            if devices
                .iter()
                .any(|d| d.convergence.state == ConvergenceState::Diverged)
            {
                println!(
                    "a DIVERGED device holds other winners than the brain at the same log \
                     position: run `agent sync --reseed` on it"
                );
            }
            Ok(())
        }
        DeviceCommand::Revoke(args) => {
            if !store.revoke_device(&args.name).await? {
                bail!(
                    "no device named {:?} is enrolled (see `agent brain device list`)",
                    args.name
                );
            }
            if global.json {
                return super::print_json(&json!({"ok": true, "name": args.name, "revoked": true}));
            }
            println!(
                "revoked device {:?}: its next request is refused (401) on every brain sharing this \
                 store, its long-polls end within seconds and its webhook is off",
                args.name
            );
            Ok(())
        }
        DeviceCommand::Rotate(args) => {
            let grace = args.grace.map(Duration::from);
            if grace.is_some_and(|g| g > MAX_GRACE) {
                bail!("--grace is at most 90 days");
            }
            let grace_until = grace
                .filter(|g| !g.is_zero())
                .map(|g| unix_seconds(SystemTime::now() + g));
            let token = new_token().context("drawing a random token")?;
            if !store
                .rotate_device(&args.name, &hash_token(&token), grace_until)
                .await?
            {
                bail!(
                    "no device named {:?} is enrolled (see `agent brain device list`)",
                    args.name
                );
            }
            print_token(global, &args.name, &token, "rotated")?;
            if !global.json {
                match grace_until {
                    Some(until) => {
                        eprintln!("the old token keeps working until {}", format_time(until))
                    }
                    None => eprintln!("the old token no longer works"),
                }
            }
            Ok(())
        }
    }
}

/// Names are typed on command lines and shown in logs: a plain, short word.
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.len() > 64 || !crate::model::event::is_device_id(name) {
        bail!(
            "device name {name:?} must be 1 to 64 letters, digits, `.`, `_` or `-` (e.g. `laptop`)"
        );
    }
    Ok(())
}

/// The token alone on stdout (for a script to capture), what to do with it on stderr.
fn print_token(global: &GlobalArgs, name: &str, token: &str, what: &str) -> anyhow::Result<()> {
    if global.json {
        return super::print_json(&json!({"name": name, "token": token}));
    }
    eprintln!("{what} device {name:?}; its token, shown this once (keep it secret):");
    println!("{token}");
    eprintln!(
        "on that device, put it in a file only you can read and name it in [sync] token_file, \
         or set LIB_DEVICE_TOKEN; its first request binds the token to the device's id"
    );
    Ok(())
}

fn format_time(unix: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    format_rfc3339(t)
}

/// What `device list` says of a device's state.
fn state(d: &DeviceRecord, now: i64) -> String {
    match (d.revoked_at, &d.device_id, d.previous_expires_at) {
        (Some(at), _, _) => format!("revoked {}", format_time(at)),
        (None, None, _) => "not bound yet (no request with its token so far)".to_owned(),
        (None, Some(_), Some(until)) if until > now => {
            format!(
                "active; the previous token works until {}",
                format_time(until)
            )
        }
        (None, Some(_), _) => "active".to_owned(),
    }
}

fn webhook_state(d: &DeviceRecord, now: i64) -> Option<String> {
    let w = d.webhook.as_ref()?;
    let mut text = format!("{}{}", w.url, if w.active { "" } else { " (inactive)" });
    if w.failures > 0 {
        text.push_str(&format!(", {} failed deliveries in a row", w.failures));
        if let Some(until) = w.retry_after.filter(|t| *t > now) {
            text.push_str(&format!(", backing off until {}", format_time(until)));
        }
        if let Some(error) = &w.last_error {
            text.push_str(&format!(": {}", error.escape_debug()));
        }
    }
    Some(text)
}

fn print_device(device: &DeviceConvergence, now: i64) {
    let d = &device.record;
    println!("{}", d.name);
    println!("  state:      {}", state(d, now));
    println!("  replica:    {}", device.convergence);
    if let Some(id) = &d.device_id {
        println!("  device id:  {id}");
    }
    println!("  enrolled:   {}", format_time(d.created_at));
    match d.last_seen_at {
        Some(at) => println!("  last seen:  {}", format_time(at)),
        None => println!("  last seen:  never"),
    }
    if let Some(cursor) = d.last_cursor {
        println!("  cursor:     {cursor}");
    }
    if let Some(webhook) = webhook_state(d, now) {
        println!("  webhook:    {webhook}");
    }
}

fn device_json(device: &DeviceConvergence, now: i64) -> serde_json::Value {
    let d = &device.record;
    let time = |t: Option<i64>| t.map(format_time);
    json!({
        "state": device.convergence.state,
        "lag": device.convergence.lag,
        "name": d.name,
        "device_id": d.device_id,
        "created_at": format_time(d.created_at),
        "last_seen_at": time(d.last_seen_at),
        "revoked": d.revoked_at.is_some(),
        "revoked_at": time(d.revoked_at),
        "previous_token_until": time(d.previous_expires_at.filter(|t| *t > now)),
        "cursor": d.last_cursor,
        "digest": d.digest,
        "pending": d.pending,
        "webhook": d.webhook.as_ref().map(|w| json!({
            "url": w.url,
            "active": w.active,
            "failures": w.failures,
            "last_error": w.last_error,
            "retry_after": time(w.retry_after),
            "backing_off": w.retry_after.is_some_and(|t| t > now),
        })),
    })
}
