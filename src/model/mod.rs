//! What the agent and the brain share: vector clocks and the merge rule, the event, entity keys,
//! the wire bodies and the webhook signature.
//! Everything here is pure: no I/O, so both ends and the tests use exactly the same rules.

pub mod clock;
pub mod digest;
pub mod event;
pub mod key;
pub mod merge;
pub mod webhook_signature;
pub mod wire;

pub use clock::{Causality, VectorClock};
pub use event::{Event, EventType, FilePayload};
pub use merge::{EntityState, Outcome, Version};
