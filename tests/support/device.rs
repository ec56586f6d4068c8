//! A device driven through the library API: its own SQLite store and one library folder, `notes`,
//! in a temporary folder; scanned, pushed and pulled by the same calls `agent scan` and `agent sync`
//! make.

use std::path::Path;

use lib_agent::config::{Config, Overrides};
use lib_agent::index::scan::{self, ScanOptions};
use lib_agent::store::Store;
use lib_agent::sync::{self, BrainClient, ClientError};
use rusqlite::Connection;

use super::brain::SECRET;
use super::brain_blocking::BlockingBrain;

pub struct Device {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub store: Store,
}

impl Device {
    /// A device with no brain configured; its library holds `.keep`, so that emptying the rest
    /// of the folder is not taken for an unmounted disk.
    pub fn new() -> Device {
        let device = Device::configured("");
        std::fs::write(device.dir.path().join("notes/.keep"), "").expect("write");
        device
    }

    /// A device configured as a user configures one for a brain at `brain_url`: the URL in the
    /// file, the CA file and the secret from the (injected) environment. Its library is empty.
    pub fn for_brain(brain_url: &str, ca_file: Option<&Path>) -> Device {
        let ca = ca_file.map(|p| p.to_str().expect("UTF-8 path").to_owned());
        let env = move |var: &str| match var {
            "LIB_BRAIN_CA_FILE" => ca.clone(),
            "LIB_SYNC_SECRET" => Some(SECRET.to_owned()),
            _ => None,
        };
        Device::configured_with(&format!("[sync]\nbrain_url = {brain_url:?}\n"), &env)
    }

    fn configured(extra: &str) -> Device {
        Device::configured_with(extra, &|_| None)
    }

    fn configured_with(extra: &str, env: &dyn Fn(&str) -> Option<String>) -> Device {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("notes")).expect("mkdir");
        let toml = format!(
            "[store]\npath = {:?}\n[[library]]\nname = \"notes\"\npath = {:?}\n{extra}",
            dir.path().join("agent.db"),
            dir.path().join("notes")
        );
        let config =
            Config::from_toml_str(&toml, None, env, &Overrides::default()).expect("config");
        let store = Store::open(&config.store.path).expect("store");
        Device { dir, config, store }
    }

    pub fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.dir.path().join("notes").join(rel), text).expect("write");
    }

    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.dir.path().join("notes").join(rel)).expect("rm");
    }

    pub fn scan(&mut self) {
        scan::scan(&mut self.store, &self.config, &ScanOptions::default()).expect("scan");
    }

    pub fn write_and_scan(&mut self, rel: &str, text: &str) {
        self.write(rel, text);
        self.scan();
    }

    /// Pushes, then pulls, through a client of `brain` with the shared secret.
    pub fn sync(&mut self, brain: &BlockingBrain) {
        let client = brain.client();
        sync::push(&mut self.store, &client, 200).expect("push");
        sync::pull(&mut self.store, &client, 200, None).expect("pull");
    }

    /// A client built from this device's `[sync]` configuration, as `agent sync` builds it.
    pub fn client(&self) -> Result<BrainClient, ClientError> {
        let url = self.config.sync.brain_url.as_deref().expect("brain_url");
        BrainClient::from_config(url, &self.config.sync, self.store.device_id())
    }

    /// Its database, opened beside the store as `sqlite3` would open it.
    pub fn db(&self) -> Connection {
        Connection::open(self.dir.path().join("agent.db")).expect("db")
    }

    /// The shared view: (device of the winner, sha256 or None for a tombstone).
    pub fn winner(&self, key: &str) -> (String, Option<String>) {
        self.db()
            .query_row(
                "SELECT device_id, sha256 FROM lib_files WHERE path = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("row")
    }

    pub fn shared_rows(&self) -> Vec<(String, Option<String>, Option<String>, String)> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT path, sha256, content, event_ulid FROM lib_files ORDER BY path")
            .expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// The event ULIDs of the losers of its open conflicts.
    pub fn conflicts(&self) -> Vec<String> {
        self.store
            .conflicts()
            .expect("conflicts")
            .into_iter()
            .map(|c| c.loser.event_ulid.unwrap_or_default())
            .collect()
    }

    /// Events in its outbox not yet acknowledged by the brain.
    pub fn pending(&self) -> i64 {
        self.store.counts().expect("counts").outbox_pending
    }

    pub fn device_id(&self) -> String {
        self.store.device_id().to_owned()
    }
}
