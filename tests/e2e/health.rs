//! Every long-running process answers its scheduler: `/livez` while it runs, `/readyz` only while it
//! is connected to NATS and everything it needs exists, with the reason when not.

use crate::support::*;

/// Polls `/readyz` until it answers `status`, and returns the body.
async fn readyz(stack: &Stack, process: usize, status: u16) -> String {
    let port = stack.admin_port(process);
    let mut body = String::new();
    eventually(&format!("/readyz answers {status}"), || {
        let answer = http_get(port, "/readyz");
        let matched = matches!(&answer, Some((got, _)) if *got == status);
        if let Some((_, text)) = answer {
            body = text;
        }
        std::future::ready(matched)
    })
    .await;
    body
}

#[tokio::test]
async fn a_worker_is_ready_only_while_what_it_needs_exists() {
    let mut stack = Stack::start().await;
    let worker = stack.start_worker(&["--priority", "high"]);
    let pull = stack.start_pull_service().await;
    readyz(&stack, worker, 200).await;
    readyz(&stack, pull, 200).await;
    // Ready means it can work; wait until it does, so that what follows is a loss while working.
    stack.wait_until_pulling("RENO_HIGH", 1).await;
    assert_eq!(http_get(stack.admin_port(worker), "/livez").unwrap().0, 200);

    // The history disappears under both: neither can do its work, and each says why.
    stack.jetstream.delete_key_value(reno_model::subject::HISTORY_BUCKET).await.unwrap();
    for process in [worker, pull] {
        let body = readyz(&stack, process, 503).await;
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["ready"], false);
        let problems = answer["problems"].to_string();
        assert!(problems.contains("bucket RENO_HISTORY is missing"), "{problems}");
        assert_eq!(http_get(stack.admin_port(process), "/livez").unwrap().0, 200, "still alive");
    }
    // Provisioning again brings it back.
    stack.provision(&[]);
    readyz(&stack, worker, 200).await;
}
