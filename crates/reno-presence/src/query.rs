//! Asking who is online: the devices of one member, read from the bucket (for `reno presence` and
//! the gateway; the worker uses the view instead). One request lists the member's keys (the
//! server's per-subject index), then one direct get per device.

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use futures::TryStreamExt;
use reno_model::{DeviceId, DeviceType, MemberId, presence::PresenceEntry, subject};

/// One online device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineDevice {
    pub device_type: DeviceType,
    pub device_id: DeviceId,
    /// When it last announced itself, milliseconds since the Unix epoch.
    pub seen_ms: u64,
}

/// The devices of `member` that are online now, sorted by device type and id.
pub async fn online_devices(
    jetstream: &jetstream::Context,
    member: &MemberId,
) -> Result<Vec<OnlineDevice>, async_nats::Error> {
    let stream = jetstream.get_stream_no_info(format!("KV_{}", subject::PRESENCE_BUCKET)).await?;
    let prefix = format!("$KV.{}.", subject::PRESENCE_BUCKET);
    let subjects: Vec<(String, usize)> =
        stream.info_with_subjects(format!("{prefix}{member}.>")).await?.try_collect().await?;
    let mut devices = Vec::new();
    for (stored_subject, _) in subjects {
        let message = match stream.direct_get_last_for_subject(stored_subject.clone()).await {
            Ok(message) => message,
            // Expired between the listing and the get.
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => continue,
            Err(error) => return Err(error.into()),
        };
        // Delete markers and expiry markers carry headers; a live entry carries the CBOR entry.
        let marker = message.headers.get("KV-Operation").is_some()
            || message.headers.get("Nats-Marker-Reason").is_some();
        let key = stored_subject.strip_prefix(&prefix).unwrap_or_default();
        if !marker
            && let Some((_, device_type, device_id)) = subject::parse_presence_key(key)
            && let Ok(presence) = PresenceEntry::decode(&message.payload)
        {
            devices.push(OnlineDevice { device_type, device_id, seen_ms: presence.seen_ms });
        }
    }
    devices.sort_by(|a, b| (&a.device_type, &a.device_id).cmp(&(&b.device_type, &b.device_id)));
    Ok(devices)
}
