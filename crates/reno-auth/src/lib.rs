//! Device identity for reno: devices prove who they are with a token their operator's identity
//! system signed (EdDSA JWT: member, device type, device id, expiry), and reno's authorization
//! service, answering the edge servers' NATS auth callout, turns a valid token into a NATS user
//! allowed exactly that device's subjects. It talks to NATS only as that callout service.

#![forbid(unsafe_code)]

pub mod callout;
pub mod dev_secrets;
pub mod device_token;
pub mod nats_jwt;

pub use device_token::{DevSigningKey, DeviceIdentity, TokenKeys, TokenRefusal};
