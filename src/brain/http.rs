//! Serving HTTP with bounded connections (DESIGN.md "Trust", connections): the accept loop of the
//! brain, with header, body and idle timeouts and a cap on open connections.

use std::time::Duration;

/// Timeouts and caps of client connections; every one has a default a careful operator would pick.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// A request's headers must arrive within this.
    pub header_timeout: Duration,
    /// A request's body must arrive within this once its headers did.
    pub body_timeout: Duration,
    /// A kept-alive connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Open connections at most; one more is answered 503 at once and closed.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            max_connections: 1024,
        }
    }
}
