//! What an attacker holding a valid device token for one member can do on an edge: nothing beyond its
//! own notifications. Every attempt below must be refused and receive nothing; the test counts the
//! attempt kinds it tried and how many succeeded (none may).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::Event;
use futures::StreamExt;
use reno_model::Notification;

use crate::support::*;

/// How long an attempt is given to show a leak before it counts as receiving nothing.
const LEAK_WINDOW: Duration = Duration::from_millis(400);

/// A device connection that records what the server says to it (permission violations).
struct Attacker {
    client: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Attacker {
    async fn connect(stack: &Stack, identity: (&str, &str, &str)) -> Attacker {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = errors.clone();
        let token = stack.token(identity.0, identity.1, identity.2, 3600);
        let prefix = format!("_INBOX.{}.{}.{}", identity.0, identity.1, identity.2);
        let client = async_nats::ConnectOptions::new()
            .token(token)
            .custom_inbox_prefix(prefix)
            .add_root_certificates(stack.cluster.secrets.path("ca.pem"))
            .event_callback(move |event| {
                let seen = seen.clone();
                async move {
                    if let Event::ServerError(error) = event {
                        seen.lock().unwrap().push(error.to_string().to_lowercase());
                    }
                }
            })
            .connect(stack.cluster.edge_url(0))
            .await
            .expect("a valid token connects");
        Attacker { client, errors }
    }

    /// Whether the server refused something on `subject` (case-insensitively, as servers lower it).
    async fn refused(&self, subject: &str) -> bool {
        let wanted = format!("\"{}\"", subject.to_lowercase());
        let mut refused = false;
        for _ in 0..40 {
            let _ = self.client.flush().await;
            refused = self
                .errors
                .lock()
                .unwrap()
                .iter()
                .any(|error| error.contains("permissions violation") && error.contains(&wanted));
            if refused {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        refused
    }
}

/// Whether `subscriber` gets anything within the leak window.
async fn receives(subscriber: &mut async_nats::Subscriber) -> bool {
    tokio::time::timeout(LEAK_WINDOW, subscriber.next()).await.is_ok_and(|message| message.is_some())
}

#[tokio::test]
async fn a_valid_token_for_one_member_reaches_nothing_else() {
    let mut stack = Stack::start().await;
    let worker = stack.start_all().await;
    // Bob is another member with a tv online; Alice's own second device is d2.
    let mut bob = stack.device("bob", "tv", 0).await;
    let alice = Attacker::connect(&stack, ("alice", "tv", "d1")).await;
    let mut tried = Vec::new();
    let mut succeeded = Vec::new();
    let mut outcome = |what: &str, leaked: bool| {
        tried.push(what.to_owned());
        if leaked {
            succeeded.push(what.to_owned());
        }
    };

    // Subscriptions outside its own subjects: refused, and nothing arrives while pushes for others
    // and replies to others flow.
    let forbidden = [
        ("B's push subject", "reno.ntf.bob.tv", None),
        ("everything", ">", None),
        ("every member's pushes", "reno.ntf.*.>", None),
        ("its own member's other device type", "reno.ntf.alice.mobile", None),
        ("a queue subscription to B's subject", "reno.ntf.bob.tv", Some("steal")),
        ("a queue subscription to its own subject", "reno.ntf.alice.tv", Some("steal")),
        ("the JetStream API", "$JS.API.>", None),
        ("the KV subjects", "$KV.>", None),
        ("every inbox", "_INBOX.>", None),
        ("another device's inbox", "_INBOX.alice.tv.d2.>", None),
        ("B's inbox", "_INBOX.bob.>", None),
        ("the system account", "$SYS.>", None),
        ("the callout requests", "$SYS.REQ.USER.AUTH", None),
        ("the pull requests", "reno.pull.*.*", None),
        ("the presence announcements", "reno.presence.>", None),
        ("the events", "reno.evt.>", None),
    ];
    let mut subscribers = Vec::new();
    for (what, subject, queue) in forbidden {
        let subscriber = match queue {
            Some(queue) => alice.client.queue_subscribe(subject, queue.to_owned()).await.unwrap(),
            None => alice.client.subscribe(subject).await.unwrap(),
        };
        let refused = alice.refused(subject).await;
        subscribers.push((what, subscriber, refused));
    }
    // Traffic the forbidden subscriptions would see: pushes to Bob and to Alice's mobile, a pull by
    // Bob, a JetStream API call, an event.
    let for_bob = event("my_list_updated", "bob", text("bob's"));
    stack.publisher().publish(&for_bob).await.unwrap();
    assert_eq!(next_notification(&mut bob).await.id, for_bob.id);
    let mut mobile_only = event("my_list_updated", "alice", text("mobile only"));
    mobile_only.targets = Some(vec![device("mobile")]);
    stack.publisher().publish(&mobile_only).await.unwrap();
    bob.catch_up().await.unwrap();
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 2).await;
    for (what, mut subscriber, refused) in subscribers {
        let leaked = receives(&mut subscriber).await;
        outcome(&format!("subscribe to {what}"), !refused || leaked);
    }

    // Publishing outside its own two subjects: refused, and nothing arrives.
    let stored_before = stack.stored("RENO_HIGH").await;
    alice
        .client
        .publish(
            "reno.evt.plan_changed.alice",
            event("plan_changed", "alice", text("forged")).encode().into(),
        )
        .await
        .unwrap();
    let refused = alice.refused("reno.evt.plan_changed.alice").await;
    outcome("publish an event", !refused || stack.stored("RENO_HIGH").await != stored_before);

    let pull = reno_model::PullRequest { cursor: 0, limit: Some(10), epoch: None, cursor_time_ms: None };
    let answer =
        tokio::time::timeout(LEAK_WINDOW * 3, alice.client.request("reno.pull.bob.tv", pull.encode().into()))
            .await;
    let refused = alice.refused("reno.pull.bob.tv").await;
    outcome("pull B's history", !refused || matches!(answer, Ok(Ok(_))));

    let bob_inbox = stack
        .device_client(
            stack.cluster.edge_url(0),
            ("bob", "tv", "db"),
            Some(stack.token("bob", "tv", "db", 3600)),
        )
        .await
        .unwrap();
    let mut bob_replies = bob_inbox.subscribe("_INBOX.bob.tv.db.>").await.unwrap();
    bob_inbox.flush().await.unwrap();
    let forged = reno_model::PullPage {
        notifications: vec![],
        next_cursor: 1_000_000,
        more: false,
        resync: true,
        epoch: 1,
        next_cursor_time_ms: None,
    };
    alice.client.publish("_INBOX.bob.tv.db.forged", forged.encode().into()).await.unwrap();
    let refused = alice.refused("_INBOX.bob.tv.db.forged").await;
    outcome("publish a forged pull reply to B", !refused || receives(&mut bob_replies).await);

    let mut spy = stack.client.subscribe("reno.ntf.bob.tv").await.unwrap();
    stack.client.flush().await.unwrap();
    let fake = Notification::from_event(&event("plan_changed", "bob", text("fake")), &device("tv"), 1);
    alice.client.publish("reno.ntf.bob.tv", fake.encode().into()).await.unwrap();
    let refused = alice.refused("reno.ntf.bob.tv").await;
    outcome("push to B", !refused || receives(&mut spy).await);

    alice.client.publish("reno.presence.bob.tv.db", b"x".to_vec().into()).await.unwrap();
    let refused = alice.refused("reno.presence.bob.tv.db").await;
    outcome("announce B's presence", !refused);

    // Connecting without a valid token.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let key = reno_auth::DevSigningKey::from_jwk(
        &std::fs::read_to_string(stack.cluster.secrets.path("device-token-key.jwk")).unwrap(),
    )
    .unwrap();
    let stranger = reno_auth::DevSigningKey::generate("dev-1");
    let identity = |member: &str, expires_at: u64| reno_auth::DeviceIdentity {
        member: reno_model::MemberId::new(member).unwrap(),
        device_type: device("tv"),
        device_id: reno_model::DeviceId::new("d9").unwrap(),
        expires_at,
    };
    let valid = key.mint(&identity("alice", now + 3600), "reno", now);
    let (head, rest) = valid.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let forge_claims = |member: &str| {
        use base64::Engine;
        let claims = serde_json::json!({"aud": "reno", "member": member, "device_type": "tv", "device_id": "d9", "exp": now + 3600});
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string())
    };
    let unsigned_head = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#)
    };
    let tokens = [
        ("an expired token", Some(key.mint(&identity("alice", now - 120), "reno", now - 3600))),
        ("a tampered token", Some(format!("{head}.{}.{signature}", forge_claims("bob")))),
        ("an unsigned token", Some(format!("{unsigned_head}.{}.", forge_claims("bob")))),
        ("a token signed by another key", Some(stranger.mint(&identity("alice", now + 3600), "reno", now))),
        ("a member with '.'", Some(format!("{head}.{}.{signature}", forge_claims("bob.tv")))),
        ("a member with '*'", Some(format!("{head}.{}.{signature}", forge_claims("*")))),
        ("a member with '>'", Some(format!("{head}.{}.{signature}", forge_claims(">")))),
        ("a member with a space", Some(format!("{head}.{}.{signature}", forge_claims("bo b")))),
        ("no token at all", None),
    ];
    for (what, token) in tokens {
        let connected = tokio::time::timeout(
            Duration::from_secs(10),
            stack.device_client(stack.cluster.edge_url(0), ("alice", "tv", "d9"), token),
        )
        .await;
        outcome(&format!("connect with {what}"), matches!(connected, Ok(Ok(_))));
    }

    // And the same device still works: the attempts did not cost it its connection.
    let mut own = alice.client.subscribe("reno.ntf.alice.tv").await.unwrap();
    alice.client.flush().await.unwrap();
    stack.announce("alice", "tv").await;
    let mine = event("my_list_updated", "alice", text("mine"));
    stack.publisher().publish(&mine).await.unwrap();
    let delivered = within("alice's own push", own.next()).await.unwrap();
    assert_eq!(Notification::decode(&delivered.payload).unwrap().id, mine.id);

    println!("attack kinds tried: {}, succeeded: {}", tried.len(), succeeded.len());
    assert!(tried.len() >= 30, "only {} kinds tried", tried.len());
    assert!(succeeded.is_empty(), "these attempts succeeded: {succeeded:?}");
}
