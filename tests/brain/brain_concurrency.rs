//! Two brain processes on one PostgreSQL database, 8 writers and 2 long-polling readers: every
//! reader sees every event exactly once, in id order, with no gap. This is the lost-update race of
//! a log whose ids commit out of order; the brain serialises id assignment so it cannot happen.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::support::brain::*;

const WRITERS: usize = 8;
const EVENTS: usize = 20_000;
const BATCH: usize = 250;
const READERS: usize = 2;

/// `agent brain serve` as a child process, killed when dropped.
struct BrainProcess {
    child: Child,
    addr: SocketAddr,
    _home: tempfile::TempDir,
}

impl Drop for BrainProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BrainProcess {
    fn start(url: &str, schema: &str) -> BrainProcess {
        let home = tempfile::tempdir().unwrap();
        let config = home.path().join("agent.toml");
        std::fs::write(&config, "").unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
            .args([
                "--config",
                config.to_str().unwrap(),
                "brain",
                "serve",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--database-url", url, "--schema", schema])
            .env("LIB_SYNC_SECRET", SECRET)
            .env_remove("LIB_BRAIN_DATABASE_URL")
            .env_remove("LIB_SQLITE_PATH")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the agent binary starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("brain did not say where it listens: {line:?}"))
            .parse()
            .unwrap();
        BrainProcess {
            child,
            addr,
            _home: home,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_brains_eight_writers_two_long_polling_readers_see_every_event_once_in_order() {
    require_postgres!();
    let fixture = Fixture::postgres().await; // creates the schema, drops it at the end
    let AnyStore::Postgres(store) = &fixture.store else {
        unreachable!()
    };
    let brains = [
        BrainProcess::start(&pg_url(), store.schema()),
        BrainProcess::start(&pg_url(), store.schema()),
    ];
    let clients: Vec<Arc<Http>> = brains.iter().map(|b| Arc::new(Http::new(b.addr))).collect();

    let run = async {
        let mut readers = Vec::new();
        for r in 0..READERS {
            let http = clients[r % clients.len()].clone();
            readers.push(tokio::spawn(async move {
                let mut after = 0i64;
                let mut seen = Vec::with_capacity(EVENTS);
                while seen.len() < EVENTS {
                    let reply = http
                        .get(&format!("/pull?after_id={after}&limit=500&wait_ms=5000"))
                        .await;
                    assert_eq!(reply.status, 200, "{}", reply.text);
                    for event in reply.body["events"].as_array().unwrap() {
                        let id = event["id"].as_i64().unwrap();
                        assert!(
                            id > after,
                            "reader {r}: id {id} after {after}: out of order"
                        );
                        after = id;
                        seen.push((id, event["event_ulid"].as_str().unwrap().to_owned()));
                    }
                    assert_eq!(reply.body["next_after_id"], after);
                }
                seen
            }));
        }
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let http = clients[w % clients.len()].clone();
            writers.push(tokio::spawn(async move {
                let device = format!("dev-{w}");
                let mut written = Vec::new();
                for round in 0..EVENTS / WRITERS / BATCH {
                    let batch = many(&device, BATCH, 1 + (round * BATCH) as u64);
                    assert_eq!(http.ingest_ok(&batch).await.0, BATCH as u64);
                    written.extend(batch.into_iter().map(|e| e.event_ulid));
                }
                written
            }));
        }
        let mut written = HashSet::new();
        for w in writers {
            written.extend(w.await.unwrap());
        }
        assert_eq!(written.len(), EVENTS);
        for r in readers {
            let seen = r.await.unwrap();
            assert_eq!(seen.len(), EVENTS, "a reader saw {} events", seen.len());
            let ids: Vec<i64> = seen.iter().map(|(id, _)| *id).collect();
            assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids have a gap");
            let ulids: HashSet<&String> = seen.iter().map(|(_, u)| u).collect();
            assert_eq!(ulids.len(), EVENTS, "an event was seen twice");
            assert!(ulids.iter().all(|u| written.contains(*u)));
        }
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the concurrency test timed out");
}
