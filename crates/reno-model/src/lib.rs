//! The event model of reno, with no IO: the envelope services publish, the notification devices
//! receive, a member's history as stored, the event-type registry, the subject scheme and the CBOR
//! codec with its limits. Everything that decides whether an event is valid and where it goes lives
//! here, tested without a server.

#![forbid(unsafe_code)]

pub mod codec;
pub mod envelope;
pub mod history;
pub mod notification;
pub mod presence;
pub mod registry;
pub mod subject;
pub mod token;

pub use envelope::{Envelope, InvalidEvent, Route};
pub use notification::{Notification, Position, PullPage, PullRequest};
pub use registry::{Priority, Registry, RegistryError, TypeSpec};
pub use token::{CollapseKey, DeviceId, DeviceType, EventId, EventType, MemberId, TokenError};

/// Re-exported so that users of the model can build payloads without naming ciborium themselves.
pub use ciborium::Value;
