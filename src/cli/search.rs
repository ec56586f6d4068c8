//! `agent search`: ranked full-text search over the shared view.

use serde_json::json;

use super::GlobalArgs;
use crate::config::Config;
use crate::store::Store;
use crate::term::escape;

/// After the key of a hit this device does not have on its disk: the shared view holds every
/// device's files, and opening this one needs the device that has it.
const NOT_ON_THIS_DEVICE: &str = "  [not on this device]";

/// Search file names and text of every indexed file (all words must match; the last may be a prefix)
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Words to look for; a query that starts with '-' goes after `--`: `agent search -- -x`
    #[arg(required = true, num_args = 1..)]
    pub query: Vec<String>,
    /// At most this many results
    #[arg(long, short = 'n', default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
}

pub fn run(args: Args, global: &GlobalArgs, config: &Config) -> anyhow::Result<()> {
    let store = Store::open_existing(&config.store.path)?;
    let query = args.query.join(" ");
    let hits = store.search(&query, args.limit as usize)?;
    if global.json {
        return super::print_json(&json!({ "ok": true, "query": query, "results": hits }));
    }
    if hits.is_empty() {
        eprintln!("no matches for {query:?}");
        return Ok(());
    }
    for hit in hits {
        // Keys and snippets come from files and other devices: escaped for the terminal.
        let elsewhere = if hit.on_this_device {
            ""
        } else {
            NOT_ON_THIS_DEVICE
        };
        println!("{}{elsewhere}", escape(&hit.path));
        let snippet = hit.snippet.split_whitespace().collect::<Vec<_>>().join(" ");
        if !snippet.is_empty() {
            println!("    {}", escape(&snippet));
        }
    }
    Ok(())
}
