//! The pull service: devices ask `reno.pull.<member>.<device_type>` for what they missed since a
//! cursor and get one page of their history in order, with the next cursor and an explicit resync
//! signal when the cursor is older than the retained history (or from a history that was reset).
//! A NATS service (request/reply, micro API): run as many copies as needed, they share a queue group.
//!
//! May touch: NATS, `RENO_HISTORY` read-only (one direct get per page) and the pull subjects; and,
//! while `reno trace` follows a member, `reno.trace.<member>`.

#![forbid(unsafe_code)]

mod history;
mod service;

pub use history::{HistoryError, HistoryReader};
pub use service::{PullServiceError, needs, run};
