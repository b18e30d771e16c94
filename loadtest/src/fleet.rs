//! Many devices held at once: each a `reno_device::Device` over wss to the edge, with a token minted
//! from the development key, handing every notification it gets to one collector. Also the probe
//! the publisher puts in each payload (member, per-member index, send time) and reads back.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use futures::StreamExt;
use reno_auth::{DevSigningKey, DeviceIdentity};
use reno_device::{Device, DeviceConfig, DeviceEvent};
use reno_model::{DeviceId, DeviceType, MemberId, Notification, Value};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::stats::now_us;

/// The name of member `index`.
pub fn member_name(index: u32) -> String {
    format!("m{index}")
}

/// What the publisher puts in each payload, so that a receiver can tell which event it got and when
/// it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The member's index.
    pub member: u32,
    /// The event's position among the events of its member, in publish order.
    pub index: u32,
    /// The publisher's clock at send time, microseconds since the Unix epoch.
    pub sent_us: u64,
}

impl Probe {
    /// The payload: the probe plus `padding` bytes of text.
    pub fn payload(&self, padding: &str) -> Value {
        let entry = |key: &str, value: Value| (Value::Text(key.to_owned()), value);
        Value::Map(vec![
            entry("m", Value::Integer(self.member.into())),
            entry("k", Value::Integer(self.index.into())),
            entry("t", Value::Integer(self.sent_us.into())),
            entry("pad", Value::Text(padding.to_owned())),
        ])
    }

    /// Reads the probe back from a notification's payload.
    pub fn read(payload: &Value) -> Option<Probe> {
        let Value::Map(entries) = payload else { return None };
        let field = |name: &str| {
            entries.iter().find_map(|(key, value)| match (key, value) {
                (Value::Text(key), Value::Integer(number)) if key == name => u64::try_from(*number).ok(),
                _ => None,
            })
        };
        Some(Probe {
            member: u32::try_from(field("m")?).ok()?,
            index: u32::try_from(field("k")?).ok()?,
            sent_us: field("t")?,
        })
    }
}

/// One notification as a device (or the hub subscriber) received it.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// The device's index, or [`HUB_SUBSCRIBER`].
    pub device: u32,
    pub probe: Probe,
    pub received_us: u64,
}

/// The device index of arrivals at the subscriber on the hub.
pub const HUB_SUBSCRIBER: u32 = u32::MAX;

/// Which member and device type device `index` is.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSpec {
    pub member: u32,
    pub device_type: usize,
}

/// Mints device tokens from a topology's development key.
pub struct TokenMint {
    key: DevSigningKey,
}

impl TokenMint {
    pub fn from_secrets(secrets: &Path) -> Result<Self> {
        let path = secrets.join("device-token-key.jwk");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(TokenMint { key: DevSigningKey::from_jwk(&text).context("the development token key")? })
    }

    /// A token for one device, valid for two hours.
    pub fn mint(&self, member: &MemberId, device_type: &DeviceType, device_id: &DeviceId) -> String {
        let now = crate::stats::now_us() / 1_000_000;
        let identity = DeviceIdentity {
            member: member.clone(),
            device_type: device_type.clone(),
            device_id: device_id.clone(),
            expires_at: now + 7200,
        };
        self.key.mint(&identity, "reno", now)
    }
}

/// The devices of a run, each read by its own task.
pub struct Fleet {
    readers: Vec<JoinHandle<()>>,
    /// Devices that could not connect, with the first error.
    pub failed: u64,
    pub first_error: Option<String>,
}

impl Fleet {
    /// Connects a device for every spec to the edge at `url`, `parallel` at a time, and starts
    /// reading each into `arrivals`. Each device catches up (pulls) whenever `catch_up` changes.
    pub async fn connect(
        url: &str,
        secrets: &Path,
        specs: &[DeviceSpec],
        device_types: &[DeviceType],
        parallel: usize,
        arrivals: mpsc::UnboundedSender<Arrival>,
        catch_up: watch::Receiver<u64>,
    ) -> Result<Fleet> {
        let mint = Arc::new(TokenMint::from_secrets(secrets)?);
        let ca = secrets.join("ca.pem");
        let configs: Vec<DeviceConfig> = specs
            .iter()
            .map(|spec| {
                let member = MemberId::new(member_name(spec.member)).expect("a member token");
                let device_type = device_types[spec.device_type].clone();
                let device_id = DeviceId::new(nuid::next().to_string()).expect("a device id token");
                let mut config = DeviceConfig::new(url, member.clone(), device_type.clone());
                config.token = Some(mint.mint(&member, &device_type, &device_id));
                config.device_id = Some(device_id);
                config.root_certificates = Some(ca.clone());
                config
            })
            .collect();
        let mut connecting = futures::stream::iter(configs.into_iter().enumerate())
            .map(|(index, config)| async move { (index, Device::connect(config).await) })
            .buffer_unordered(parallel.max(1));
        let mut fleet = Fleet { readers: Vec::new(), failed: 0, first_error: None };
        while let Some((index, connected)) = connecting.next().await {
            match connected {
                Ok(device) => fleet.readers.push(tokio::spawn(read(
                    index as u32,
                    device,
                    arrivals.clone(),
                    catch_up.clone(),
                ))),
                Err(error) => {
                    fleet.failed += 1;
                    fleet.first_error.get_or_insert_with(|| error.to_string());
                }
            }
        }
        Ok(fleet)
    }

    pub fn connected(&self) -> usize {
        self.readers.len()
    }

    /// Stops reading and drops every device's connection.
    pub fn stop(self) {
        for reader in self.readers {
            reader.abort();
        }
    }
}

/// Hands every notification the device gets to the collector, until stopped; pulls when asked.
async fn read(
    device_index: u32,
    mut device: Device,
    arrivals: mpsc::UnboundedSender<Arrival>,
    mut catch_up: watch::Receiver<u64>,
) {
    let mut asks_open = true;
    loop {
        let event = if asks_open {
            tokio::select! {
                event = device.next() => event,
                changed = catch_up.changed() => {
                    match changed {
                        Ok(()) => { let _ = device.catch_up().await; }
                        Err(_) => asks_open = false,
                    }
                    continue;
                }
            }
        } else {
            device.next().await
        };
        match event {
            Ok(DeviceEvent::Notification(notification)) => {
                let received_us = now_us();
                if let Some(probe) = Probe::read(&notification.payload) {
                    let _ = arrivals.send(Arrival { device: device_index, probe, received_us });
                }
            }
            Ok(DeviceEvent::Resync) => {}
            Err(reno_device::DeviceError::Closed) => return,
            // A failed pull leaves the device usable; it retries on the next call.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A subscriber on the hub itself (reno's account) to every push: the path without the edge.
pub async fn hub_subscriber(
    client: &async_nats::Client,
    arrivals: mpsc::UnboundedSender<Arrival>,
) -> Result<JoinHandle<()>> {
    let mut pushes = client.subscribe("reno.ntf.>").await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        while let Some(message) = pushes.next().await {
            let received_us = now_us();
            if let Some(probe) = Notification::decode(&message.payload)
                .ok()
                .and_then(|notification| Probe::read(&notification.payload))
            {
                let _ = arrivals.send(Arrival { device: HUB_SUBSCRIBER, probe, received_us });
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_survives_the_payload() {
        let probe = Probe { member: 7, index: 41, sent_us: 1_795_600_000_123_456 };
        assert_eq!(Probe::read(&probe.payload("xxxx")), Some(probe));
        assert_eq!(Probe::read(&Value::Null), None);
    }
}
