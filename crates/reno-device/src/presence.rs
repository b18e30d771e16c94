//! The device's presence: it announces itself online when it connects, after every reconnect and
//! every heartbeat interval, and offline when it closes, so that reno pushes to it only while it is
//! there.

use std::{sync::Arc, time::Duration};

use reno_model::{
    DeviceId, DeviceType, MemberId,
    presence::{Announcement, Status},
    subject,
};
use tokio::{sync::Notify, task::JoinHandle};
use tracing::debug;

/// Announces a device on its connection until stopped.
pub(crate) struct Heartbeat {
    task: JoinHandle<()>,
    subject: String,
}

impl Heartbeat {
    /// Announces at once, then every `interval`, and at once again whenever `reconnected` fires.
    pub(crate) fn start(
        client: async_nats::Client,
        (member, device_type, device_id): (&MemberId, &DeviceType, &DeviceId),
        interval: Duration,
        reconnected: Arc<Notify>,
    ) -> Self {
        let subject = subject::presence_subject(member, device_type, device_id);
        let online = Announcement { status: Status::Online }.encode();
        let announce_to = subject.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Err(error) = client.publish(announce_to.clone(), online.clone().into()).await {
                    debug!(%error, "presence not announced");
                }
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = reconnected.notified() => {}
                }
            }
        });
        Heartbeat { task, subject }
    }

    /// Stops announcing and says goodbye, so reno knows at once rather than after the time-to-live.
    pub(crate) async fn stop(self, client: &async_nats::Client) {
        self.task.abort();
        let offline = Announcement { status: Status::Offline }.encode();
        let _ = client.publish(self.subject.clone(), offline.into()).await;
        let _ = client.flush().await;
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}
