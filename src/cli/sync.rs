//! `agent sync`: one push and/or pull now, with the LIB v1.1 summary.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use super::GlobalArgs;
use crate::config::Config;
use crate::store::Store;
use crate::sync::state::{self, Outcome, Step};
use crate::sync::{self, BrainClient};

/// Push the outbox to the brain and/or pull and apply what other devices changed, once, now
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only push (with neither flag: push, then pull)
    #[arg(long)]
    pub push: bool,
    /// Only pull
    #[arg(long)]
    pub pull: bool,
    /// Put the events the brain refused (parked, see `agent status`) back in the queue first,
    /// once what made it refuse them is fixed
    #[arg(long)]
    pub retry_parked: bool,
    /// Replace this device's shared view with the brain's snapshot, then apply again the
    /// changes of this device the brain has not acknowledged: the repair of a replica the brain
    /// reports DIVERGED (after the push, before the pull). Files on disk are not touched
    #[arg(long, conflicts_with = "push")]
    pub reseed: bool,
}

pub fn run(args: Args, global: &GlobalArgs, config: &Config) -> anyhow::Result<()> {
    let Some(url) = &config.sync.brain_url else {
        bail!("no brain configured: set [sync] brain_url in the config file, or LIB_BRAIN_URL");
    };
    let mut store = Store::open(&config.store.path)?;
    let client = BrainClient::from_config(url, &config.sync, store.device_id())?;
    if args.retry_parked {
        let batch = store.batch()?;
        let requeued = batch.unpark_all()?;
        batch.commit()?;
        eprintln!(
            "agent: {} back in the queue",
            crate::term::count(requeued as u64, "parked event", "parked events")
        );
    }
    let (do_push, do_pull) = if args.push || args.pull {
        (args.push, args.pull)
    } else {
        (true, true)
    };
    let batch = config.sync.batch_size;
    let bars = !global.json;
    let pushed = if do_push {
        let bar = CatchUp::new(bars, "push", store.unacknowledged()?.max(0) as u64);
        let result =
            sync::push_with_progress(&mut store, &client, batch, &|p| bar.update(p.pushed, None));
        bar.finish();
        save(
            &mut store,
            url,
            Step::Push,
            Outcome::of(&result, |p| p.requests > 0),
        );
        Some(result?)
    } else {
        None
    };
    let reseeded = if args.reseed {
        // The replacement is one long write transaction: a running agent would wait on it past
        // its busy timeout. Holding the run lock keeps `agent run` off meanwhile.
        let _lock = crate::daemon::RunLock::acquire(store.path()).map_err(|e| match e {
            crate::daemon::DaemonError::AlreadyRunning { .. } => anyhow::anyhow!(
                "{e} (`systemctl --user stop lib-agent`), re-seed, then start it again: the \
                 re-seed replaces the shared view in one long transaction"
            ),
            other => other.into(),
        })?;
        let result = sync::replace_from_snapshot(&mut store, &client, batch);
        if let Err(e) = &result {
            save(&mut store, url, Step::Pull, Outcome::Failed(e));
        }
        Some(result?)
    } else {
        None
    };
    let pulled = if do_pull {
        // The total comes with the brain's first answer (its `convergence.lag`).
        let bar = CatchUp::new(bars, "pull", 0);
        let result = sync::pull_with_progress(&mut store, &client, batch, None, &|p, total| {
            bar.update(p.pulled, total)
        });
        bar.finish();
        save(&mut store, url, Step::Pull, Outcome::of(&result, |_| true));
        Some(result?)
    } else {
        None
    };
    if do_pull {
        sync::learn_device_names(&mut store, &client);
    }
    // LIB v1.1's sync made the backfill itself; here the first scan makes it (`agent scan`, or
    // `agent run` at start), and sync delivers it. So `backfilled` counts the initial_sync events
    // this push delivered to the brain, and `already_done` says that no adopted row still waits
    // for its backfill.
    let backfilled = pushed.as_ref().map_or(0, |p| p.initial_sync);
    let backfill_waiting = store.backfill_pending()?;
    if global.json {
        let mut summary = json!({
            "ok": true,
            "push": pushed,
            "pull": pulled,
            "backfill": {
                "backfilled": backfilled,
                "already_done": !backfill_waiting,
            },
        });
        if let Some(reseed) = &reseeded {
            summary["reseed"] = serde_json::to_value(reseed)?;
        }
        return super::print_json(&summary);
    }
    if let Some(p) = &pushed {
        println!(
            "pushed {} ({} new to the brain){}",
            crate::term::count(p.pushed, "event", "events"),
            p.result.inserted_events,
            if p.parked > 0 {
                format!("; {} refused and parked (see `agent status`)", p.parked)
            } else {
                String::new()
            }
        );
    }
    if let Some(r) = &reseeded {
        println!(
            "re-seeded: the shared view replaced by the brain's snapshot ({}, log position {}); \
             {} made since (here, or pulled past it) applied again{}",
            crate::term::count(r.entities, "entity", "entities"),
            r.watermark,
            crate::term::count(r.reapplied, "event", "events"),
            if r.refused > 0 {
                format!("; {} invalid, skipped (see `agent status`)", r.refused)
            } else {
                String::new()
            }
        );
    }
    if let Some(p) = pulled.as_ref().filter(|p| p.bootstrapped > 0) {
        println!(
            "bootstrapped from the brain's snapshot: {} (instead of replaying its log)",
            crate::term::count(p.bootstrapped, "file", "files")
        );
    }
    if let Some(p) = &pulled {
        println!(
            "pulled {}, applied {}; cursor {}{}",
            crate::term::count(p.pulled, "event", "events"),
            p.applied,
            p.new_after_id,
            if p.refused > 0 {
                format!("; {} invalid, skipped (see `agent status`)", p.refused)
            } else {
                String::new()
            }
        );
    }
    if let Some(c) = pulled.as_ref().and_then(|p| p.convergence) {
        println!("this device against the brain: {c}");
        if c.state == crate::model::digest::ConvergenceState::Diverged {
            println!("  repair: `agent sync --reseed` replaces the shared view with the brain's");
        }
    }
    if backfilled > 0 {
        println!(
            "delivered the backfill of rows adopted from LIB: {backfilled} initial_sync events"
        );
    }
    if backfill_waiting {
        println!(
            "rows adopted from LIB wait for their backfill: run `agent scan` (or `agent run`)"
        );
    }
    Ok(())
}

/// Records the outcome for `agent status`. Sync itself went as `outcome` says: failing to save
/// the record only warns.
fn save(store: &mut Store, url: &str, step: Step, outcome: Outcome<'_>) {
    if let Err(e) = state::record(store, url, None, step, outcome) {
        tracing::warn!("cannot save the sync state for `agent status`: {e}");
    }
}

/// A catch-up bar on stderr, only on a terminal (and never with `--json`): events done of the
/// total (the outbox backlog for a push, the brain's lag for a pull), the rate and the time left.
struct CatchUp {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
}

impl CatchUp {
    fn new(wanted: bool, what: &str, total: u64) -> CatchUp {
        let bar = (wanted && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix}: [{bar:30}] {human_pos}/{human_len} events, {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(what.to_owned());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        CatchUp {
            bar,
            started: Instant::now(),
        }
    }

    /// `done` events so far, of `total` when it is known now.
    fn update(&self, done: u64, total: Option<u64>) {
        let Some(bar) = &self.bar else { return };
        let total = total.unwrap_or(bar.length().unwrap_or(0)).max(done);
        bar.set_length(total);
        bar.set_position(done);
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let left = total.saturating_sub(done) as f64 / rate.max(1.0);
        bar.set_message(format!(
            "{}/s, ETA {}",
            crate::term::thousands(rate as u64),
            humantime::format_duration(Duration::from_secs(left as u64))
        ));
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
