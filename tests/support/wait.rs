//! The one way a test waits for something another thread or process does.

use std::time::{Duration, Instant};

/// How long a test waits for anything before it fails: long enough for a loaded CI machine, short
/// enough that a hang is a failure, not a stuck run.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `done` until it holds and returns how long that took; panics naming `what` when it has
/// not held within `limit`. Polling (every 10 ms) rather than sleeping a fixed time keeps the
/// tests fast when the machine is fast and correct when it is slow.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
