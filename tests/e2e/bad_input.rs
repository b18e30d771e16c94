//! The bad-input matrix: every kind of bad input at every entry point (NATS publish, HTTP ingest,
//! NATS pull, HTTP pull, device connect). Each gets a clear refusal or a dead letter with its reason;
//! nothing crashes, the worker's memory stays bounded, and what was accepted before is still there.
//! The test prints how many cases it tried.

use ciborium::Value as Cbor;
use reno_model::{PullRequest, Value, codec};

use crate::support::*;

/// A valid envelope's CBOR map, to break in one place.
fn envelope_map(id: Cbor, event_type: &str, member: &str) -> Vec<(Cbor, Cbor)> {
    vec![
        (Cbor::Text("id".into()), id),
        (Cbor::Text("type".into()), Cbor::Text(event_type.into())),
        (Cbor::Text("member".into()), Cbor::Text(member.into())),
        (Cbor::Text("occurred_at_ms".into()), Cbor::Integer(1_795_600_000_000u64.into())),
    ]
}

fn map(entries: Vec<(Cbor, Cbor)>) -> Vec<u8> {
    codec::encode(&Cbor::Map(entries))
}

/// Bad event bodies: what each is, and its bytes. `member` is valid unless the case is about it.
fn bad_events() -> Vec<(String, Vec<u8>)> {
    let valid = event("my_list_updated", "nina", text("valid")).encode();
    let text_id = |id: &str| Cbor::Text(id.into());
    let with = |extra: (Cbor, Cbor)| {
        let mut entries = envelope_map(text_id("e1"), "my_list_updated", "nina");
        entries.push(extra);
        map(entries)
    };
    let nested = |depth: usize| (0..depth).fold(Cbor::Null, |inner, _| Cbor::Array(vec![inner]));
    let nested_maps = |depth: usize| {
        (0..depth).fold(Cbor::Null, |inner, _| Cbor::Map(vec![(Cbor::Text("k".into()), inner)]))
    };
    let mut cases = vec![
        ("empty body".to_owned(), vec![]),
        ("not CBOR".to_owned(), b"\xff\xfe\xfd garbage".to_vec()),
        ("JSON instead of CBOR".to_owned(), br#"{"id":"e1","type":"my_list_updated"}"#.to_vec()),
        ("a CBOR text, not a map".to_owned(), codec::encode(&"hello")),
        ("an indefinite array never closed".to_owned(), vec![0x9f, 0x01, 0x02]),
        ("trailing bytes".to_owned(), [valid.clone(), vec![0x00]].concat()),
        ("deeply nested arrays".to_owned(), with((Cbor::Text("payload".into()), nested(40)))),
        ("deeply nested maps".to_owned(), with((Cbor::Text("payload".into()), nested_maps(40)))),
        ("a million nested array headers".to_owned(), [vec![0xa5], vec![0x81; 60_000]].concat()),
        (
            "a huge array of tiny items".to_owned(),
            with((Cbor::Text("payload".into()), Cbor::Array(vec![Cbor::Null; 70_000]))),
        ),
        (
            "an oversized payload".to_owned(),
            with((Cbor::Text("payload".into()), Cbor::Bytes(vec![7; 70_000]))),
        ),
        (
            "a length header far beyond the body".to_owned(),
            vec![0xa5, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
        ("an unknown field".to_owned(), with((Cbor::Text("priority".into()), Cbor::Text("high".into())))),
        (
            "a missing field".to_owned(),
            map(envelope_map(text_id("e1"), "my_list_updated", "nina")[..3].to_vec()),
        ),
        (
            "an id that is a number".to_owned(),
            map(envelope_map(Cbor::Integer(7.into()), "my_list_updated", "nina")),
        ),
        ("an empty id".to_owned(), map(envelope_map(text_id(""), "my_list_updated", "nina"))),
        (
            "a 65-character id".to_owned(),
            map(envelope_map(text_id(&"x".repeat(65)), "my_list_updated", "nina")),
        ),
        ("an id with a wildcard".to_owned(), map(envelope_map(text_id("e*"), "my_list_updated", "nina"))),
        ("an id with '>'".to_owned(), map(envelope_map(text_id("e>"), "my_list_updated", "nina"))),
        (
            "an id with a control character".to_owned(),
            map(envelope_map(text_id("e\u{1}"), "my_list_updated", "nina")),
        ),
        ("an id with non-ASCII".to_owned(), map(envelope_map(text_id("é"), "my_list_updated", "nina"))),
        ("an id with a dot".to_owned(), map(envelope_map(text_id("e.1"), "my_list_updated", "nina"))),
        ("a negative time".to_owned(), {
            let mut entries = envelope_map(text_id("e1"), "my_list_updated", "nina");
            entries[3].1 = Cbor::Integer((-5).into());
            map(entries)
        }),
        ("a float time".to_owned(), {
            let mut entries = envelope_map(text_id("e1"), "my_list_updated", "nina");
            entries[3].1 = Cbor::Float(1.5);
            map(entries)
        }),
        ("empty targets".to_owned(), with((Cbor::Text("targets".into()), Cbor::Array(vec![])))),
        (
            "a target outside the type's".to_owned(),
            with((Cbor::Text("targets".into()), Cbor::Array(vec![Cbor::Text("fridge".into())]))),
        ),
        (
            "a collapse key on a type that does not collapse".to_owned(),
            with((Cbor::Text("collapse_key".into()), Cbor::Text("k".into()))),
        ),
        (
            "a member that differs from the subject".to_owned(),
            map(envelope_map(text_id("e1"), "my_list_updated", "other")),
        ),
        (
            "a type that differs from the subject".to_owned(),
            map(envelope_map(text_id("e1"), "plan_changed", "nina")),
        ),
    ];
    for (cut, what) in [
        (1usize, "truncated after 1 byte"),
        (valid.len() / 2, "truncated in the middle"),
        (valid.len() - 1, "truncated by 1 byte"),
    ] {
        cases.push((what.to_owned(), valid[..cut].to_vec()));
    }
    cases
}

/// Bad subjects for a raw NATS publish: refused by the server (no stream) or dead-lettered.
const BAD_SUBJECTS: [&str; 5] = [
    "reno.evt.my_list_updated.*",
    "reno.evt.my_list_updated.a.b",
    "reno.evt.no_such_type.nina",
    "reno.evt.my_list_updated",
    "reno.evt.my_list_updated.n\u{e9}",
];

#[tokio::test]
async fn heavy_every_kind_of_bad_input_at_every_entry_point_is_refused_or_dead_lettered() {
    let mut stack = Stack::start().await;
    let worker = stack.start_all().await;
    let gateway = stack.start_gateway().await;
    let service = format!("Bearer {}", stack.service_token());
    // Accepted before the barrage: still there after it.
    let kept = event("my_list_updated", "nina", text("accepted before"));
    stack.publisher().publish(&kept).await.unwrap();
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 1).await;
    let mut cases = 0;

    // 1. NATS publish: each bad body is stored (the stream captures the subject) and dead-lettered
    //    with a reason, or refused at the door.
    let bodies = bad_events();
    let mut stored = 0u64;
    for (what, body) in &bodies {
        let ack = stack
            .jetstream
            .publish("reno.evt.my_list_updated.nina", body.clone().into())
            .await
            .unwrap()
            .await;
        assert!(ack.is_ok(), "{what}: a body of any shape is stored for a worker to judge: {ack:?}");
        stored += 1;
        cases += 1;
    }
    for subject in BAD_SUBJECTS {
        let published = stack.jetstream.publish(subject, kept.encode().into()).await;
        match published {
            Ok(ack) => match ack.await {
                Ok(_) => stored += 1,
                Err(error) => assert!(error.to_string().contains("no stream"), "{subject}: {error}"),
            },
            // The client itself refuses a subject that is not one (white space, non-ASCII, ...).
            Err(error) => assert!(!error.to_string().is_empty(), "{subject}"),
        }
        cases += 1;
    }
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "dead_lettered")], stored).await;
    let mut dead = stack.jetstream.get_stream(reno_model::subject::DEAD_LETTER_STREAM).await.unwrap();
    let last = dead.info().await.unwrap().state.last_sequence;
    assert_eq!(last, stored, "every stored bad event has a dead letter");
    for sequence in 1..=last {
        let letter = dead.get_raw_message(sequence).await.unwrap();
        let reason = letter.headers.get("Reno-Reason").map(|value| value.to_string()).unwrap_or_default();
        let code = letter.headers.get("Reno-Reason-Code").map(|value| value.to_string()).unwrap_or_default();
        assert!(!reason.is_empty() && !code.is_empty(), "dead letter {sequence} says why");
        assert!(letter.payload.len() <= 64 * 1024, "dead letter {sequence} keeps at most 64 KiB");
    }

    // 2. HTTP ingest: the same bodies as CBOR, JSON shapes, and wrong content types: a 4xx with a
    //    code and a message, nothing stored.
    let before = stack.ever_stored("RENO_NORMAL").await + stack.ever_stored("RENO_HIGH").await;
    let post = |content_type: &str, body: &[u8]| {
        http(
            gateway,
            "POST",
            "/v1/events",
            &[("Authorization", &service), ("Content-Type", content_type)],
            body,
        )
        .unwrap()
    };
    let refused = |what: &str, (status, body): (u16, Vec<u8>)| {
        let answer: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{what}: not JSON"));
        assert!((400..500).contains(&status), "{what}: {status} {answer}");
        assert!(
            answer["code"].is_string() && answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {answer}"
        );
    };
    for (what, body) in &bodies {
        // Over HTTP there is no subject to disagree with: such an envelope is another valid event.
        if what.contains("differs from the subject") {
            continue;
        }
        refused(what, post("application/cbor", body));
        cases += 1;
    }
    let json_cases = [
        ("an empty JSON body", "".to_owned()),
        ("JSON null", "null".to_owned()),
        ("a JSON array", "[1,2,3]".to_owned()),
        (
            "deep JSON",
            format!(
                "{{\"id\":\"e1\",\"type\":\"my_list_updated\",\"member\":\"nina\",\"occurred_at_ms\":1,\"payload\":{}1{}}}",
                "[".repeat(40),
                "]".repeat(40)
            ),
        ),
        (
            "a huge JSON array",
            format!(
                "{{\"id\":\"e1\",\"type\":\"my_list_updated\",\"member\":\"nina\",\"occurred_at_ms\":1,\"payload\":[{}0]}}",
                "0,".repeat(100_000)
            ),
        ),
        (
            "a JSON string as time",
            r#"{"id":"e1","type":"my_list_updated","member":"nina","occurred_at_ms":"now"}"#.to_owned(),
        ),
        (
            "a JSON member with a space",
            r#"{"id":"e1","type":"my_list_updated","member":"ni na","occurred_at_ms":1}"#.to_owned(),
        ),
        (
            "an unknown JSON type",
            r#"{"id":"e1","type":"no_such_type","member":"nina","occurred_at_ms":1}"#.to_owned(),
        ),
    ];
    for (what, body) in json_cases {
        refused(what, post("application/json", body.as_bytes()));
        cases += 1;
    }
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "application/octet-stream", ""] {
        refused(content_type, post(content_type, &kept.encode()));
        cases += 1;
    }
    let after = stack.ever_stored("RENO_NORMAL").await + stack.ever_stored("RENO_HIGH").await;
    assert_eq!(after, before, "nothing refused over HTTP was stored");

    // 3. NATS pull: bad requests and bad subjects get a 400 service error that says what is accepted.
    let pull_cases: Vec<(&str, String, Vec<u8>)> = vec![
        ("a garbage request", "reno.pull.nina.tv".into(), b"\xff\x00".to_vec()),
        (
            "an unknown field",
            "reno.pull.nina.tv".into(),
            map(vec![
                (Cbor::Text("cursor".into()), Cbor::Integer(0.into())),
                (Cbor::Text("everyone".into()), Cbor::Bool(true)),
            ]),
        ),
        (
            "a negative cursor",
            "reno.pull.nina.tv".into(),
            map(vec![(Cbor::Text("cursor".into()), Cbor::Integer((-1).into()))]),
        ),
        (
            "a text cursor",
            "reno.pull.nina.tv".into(),
            map(vec![(Cbor::Text("cursor".into()), Cbor::Text("0".into()))]),
        ),
        ("an oversized request", "reno.pull.nina.tv".into(), vec![0x41; 4096]),
        (
            "deep nesting",
            "reno.pull.nina.tv".into(),
            codec::encode(&(0..40).fold(Cbor::Null, |inner, _| Cbor::Array(vec![inner]))),
        ),
    ];
    for (what, subject, body) in pull_cases {
        let reply = within(what, stack.client.request(subject, body.into())).await.unwrap();
        let headers = reply.headers.expect("a service error");
        assert_eq!(
            headers.get("Nats-Service-Error-Code").map(|code| code.to_string()).as_deref(),
            Some("400"),
            "{what}"
        );
        assert!(!headers.get("Nats-Service-Error").unwrap().as_str().is_empty());
        cases += 1;
    }
    // A pull subject with a wildcard or a space cannot reach the service at all: the client refuses
    // to publish it, or nobody answers.
    for subject in ["reno.pull.*.tv", "reno.pull.nina.>", "reno.pull.ni na.tv"] {
        let answered = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            stack.client.request(subject, PullRequest::default().encode().into()),
        )
        .await;
        assert!(!matches!(answered, Ok(Ok(ref reply)) if reply.headers.is_none()), "{subject} got a page");
        cases += 1;
    }

    // 4. HTTP pull: bad queries get a 400, a bad token a 401.
    let device = format!("Bearer {}", stack.token("nina", "tv", "legacy", 3600));
    for query in ["cursor=-1", "cursor=abc", "epoch=ten", "limit=lots", "member=other", "cursor=1&cursor=2"] {
        let (status, body) =
            http(gateway, "GET", &format!("/v1/pull?{query}"), &[("Authorization", &device)], b"").unwrap();
        assert_eq!(status, 400, "{query}: {}", String::from_utf8_lossy(&body));
        cases += 1;
    }
    for token in ["garbage", &"x".repeat(10_000), "é", ""] {
        let auth = format!("Bearer {token}");
        let (status, _) = http(gateway, "GET", "/v1/pull", &[("Authorization", &auth)], b"").unwrap();
        assert_eq!(status, 401, "a bad device token");
        cases += 1;
    }

    // 5. Device connect with tokens that are not tokens.
    for token in ["garbage", &"y".repeat(10_000), "a.b.c", "\u{e9}\u{e9}"] {
        let connected = stack
            .device_client(stack.cluster.edge_url(0), ("nina", "tv", "bad"), Some(token.to_owned()))
            .await;
        assert!(connected.is_err(), "connected with {token:.20}");
        cases += 1;
    }

    // Nothing crashed, nothing accepted was lost, the pipeline still delivers, memory is bounded.
    for index in 0..2 {
        assert!(stack.process_mut(index).try_wait().unwrap().is_none(), "process {index} is still running");
    }
    let page = stack.pull_page("nina", "tv", 0, 100).await;
    assert!(
        page.notifications.iter().any(|notification| notification.id == kept.id),
        "accepted before is kept"
    );
    let after = event("my_list_updated", "nina", Value::Integer(1.into()));
    stack.publisher().publish(&after).await.unwrap();
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 2).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", stack.process(worker).id())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
        .unwrap();
    assert!(rss_kb < 256 * 1024, "the worker holds {rss_kb} KiB after the barrage");
    println!("bad-input cases tried: {cases}");
    assert!(cases >= 80, "only {cases} cases");
}
