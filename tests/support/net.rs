//! Addresses for servers a test starts. A server the test starts in this process binds port 0 and
//! reports its address; [`reserved_addr`] is for the rest: an address a test must name before its
//! server exists (an agent configured with a brain that is still down, a webhook listener's public
//! URL) or that must survive a restart (a brain process killed and started again).

use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};

/// Below the kernel's ephemeral range (`ip_local_port_range`, 32768..=60999 by default), which
/// port-0 binds and the source ports of outgoing connections are drawn from: so between the
/// check and the use, only another test of this scheme could take a port, and each test process
/// draws from its own slice.
const FIRST: u16 = 20_000;
const SLICE: u16 = 200;
const SLICES: u16 = 60;

static NEXT: AtomicU16 = AtomicU16::new(0);

/// A loopback address that no one held a moment ago, outside the ephemeral range.
pub fn reserved_addr() -> String {
    let slice = (std::process::id() % u32::from(SLICES)) as u16;
    for _ in 0..SLICE {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % SLICE;
        let port = FIRST + slice * SLICE + offset;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return format!("127.0.0.1:{port}");
        }
    }
    panic!(
        "no free port in 127.0.0.1:{}..+{SLICE}",
        FIRST + slice * SLICE
    )
}

/// The port of [`reserved_addr`].
pub fn reserved_port() -> u16 {
    let addr = reserved_addr();
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}
