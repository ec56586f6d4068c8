//! `agent init`: create the database and the device id, and print them.

use serde_json::json;

use super::GlobalArgs;
use crate::config::Config;
use crate::store::Store;

/// Create the database and this device's id (safe to run again: it changes nothing then)
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args, global: &GlobalArgs, config: &Config) -> anyhow::Result<()> {
    let store = Store::open(&config.store.path)?;
    if global.json {
        return super::print_json(&json!({
            "ok": true,
            "device_id": store.device_id(),
            "database": store.path(),
            "schema_version": crate::store::SCHEMA_VERSION,
        }));
    }
    println!("database  {}", store.path().display());
    println!("device    {}", store.device_id());
    if config.libraries.is_empty() {
        println!("no libraries configured yet: `agent library add PATH` keeps one, or `agent scan PATH` indexes a folder once");
    }
    Ok(())
}
