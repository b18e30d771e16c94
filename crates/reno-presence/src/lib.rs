//! Presence: which devices of a member are online, by device type and device id. Devices announce
//! themselves on `reno.presence.<member>.<device_type>.<device_id>` when they connect, every heartbeat
//! interval, and when they close; the tracker keeps one entry per online device in the KV bucket
//! `RENO_PRESENCE`, which forgets a device that stopped announcing itself after the presence
//! time-to-live. The view follows the bucket locally, so that the worker's online gate costs no
//! round trip per event. Talks to NATS only: its announcements and its bucket.

#![forbid(unsafe_code)]

mod query;
mod tracker;
mod view;

pub use query::{OnlineDevice, online_devices};
pub use tracker::{TrackerConfig, TrackerError, run};
pub use view::PresenceView;
