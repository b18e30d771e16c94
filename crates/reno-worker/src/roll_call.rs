//! The workers of a priority counting each other over core NATS: each answers a request on
//! `reno.workers.<priority>`, and a worker that wants to know how many serve the priority asks and
//! counts the answers that come within a moment. A worker that misses the moment is counted at
//! the next call; nothing depends on the count but how partitions are shared.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reno_model::{Priority, subject};
use tokio::task::JoinHandle;
use tracing::warn;

/// How long answers are waited for.
const ANSWERS_WITHIN: Duration = Duration::from_millis(250);

/// Answers every roll call of `priority` until the returned task is aborted.
pub(crate) async fn answer(client: async_nats::Client, priority: Priority) -> JoinHandle<()> {
    let subscription = client.subscribe(subject::worker_roll_call(priority)).await;
    tokio::spawn(async move {
        let mut calls = match subscription {
            Ok(calls) => calls,
            Err(error) => {
                warn!(%error, "cannot answer the workers' roll call; the others will not count this one");
                return;
            }
        };
        while let Some(call) = calls.next().await {
            if let Some(reply) = call.reply {
                let _ = client.publish(reply, Bytes::new()).await;
            }
        }
    })
}

/// The workers serving `priority` now, this one included (at least 1).
pub(crate) async fn count(client: &async_nats::Client, priority: Priority) -> usize {
    let inbox = client.new_inbox();
    let Ok(mut answers) = client.subscribe(inbox.clone()).await else { return 1 };
    if client.publish_with_reply(subject::worker_roll_call(priority), inbox, Bytes::new()).await.is_err() {
        return 1;
    }
    let mut workers = 0;
    let deadline = tokio::time::sleep(ANSWERS_WITHIN);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => break,
            answer = answers.next() => match answer {
                Some(_) => workers += 1,
                None => break,
            },
        }
    }
    workers.max(1)
}
