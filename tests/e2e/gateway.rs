//! The HTTP gateway against a running reno: events from services with the same validation and dedup
//! as NATS, bad requests refused with a JSON reason and nothing stored, legacy pull with the device
//! token giving the very pages NATS pull gives, presence, and the checked-in OpenAPI document
//! holding for every operation.

use reno_model::Value;
use serde_json::{Value as Json, json};

use crate::support::*;

fn json_body(body: &[u8]) -> Json {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

fn post_event(port: u16, token: &str, content_type: &str, body: &[u8]) -> (u16, Json) {
    let auth = format!("Bearer {token}");
    let (status, body) =
        http(port, "POST", "/v1/events", &[("Authorization", &auth), ("Content-Type", content_type)], body)
            .unwrap();
    (status, json_body(&body))
}

/// Events the priority streams ever stored.
async fn ever_stored(stack: &Stack) -> u64 {
    let mut total = 0;
    for stream in ["RENO_HIGH", "RENO_NORMAL", "RENO_LOW"] {
        total += stack.ever_stored(stream).await;
    }
    total
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test]
async fn services_post_events_and_bad_ones_are_refused_with_nothing_stored() {
    let mut stack = Stack::start().await;
    stack.start_all().await;
    let port = stack.start_gateway().await;
    let token = stack.service_token();
    let mut tv = stack.device("hana", "tv", 0).await;

    let event = json!({"id": "http-1", "type": "my_list_updated", "member": "hana", "occurred_at_ms": now_ms(), "payload": {"added": "t9"}});
    let (status, answer) = post_event(port, &token, "application/json", event.to_string().as_bytes());
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        (answer["stream"].as_str(), answer["duplicate"].as_bool()),
        (Some("RENO_NORMAL"), Some(false))
    );
    let notification = next_notification(&mut tv).await;
    assert_eq!(notification.id.as_str(), "http-1");
    assert_eq!(notification.payload, Value::Map(vec![(text("added"), text("t9"))]));
    // The same event again is a duplicate, as on NATS; as CBOR it is the same event.
    let cbor = crate::support::event("my_list_updated", "hana", text("cbor"));
    let (status, answer) = post_event(port, &token, "application/cbor", &cbor.encode());
    assert_eq!((status, answer["duplicate"].as_bool()), (202, Some(false)), "{answer}");
    let (status, answer) = post_event(port, &token, "application/cbor", &cbor.encode());
    assert_eq!((status, answer["duplicate"].as_bool()), (202, Some(true)), "{answer}");

    let stored = ever_stored(&stack).await;
    let big = crate::support::event("my_list_updated", "hana", text(&"x".repeat(70_000)));
    let mut wrong_target = crate::support::event("diagnostics_requested", "hana", Value::Null);
    wrong_target.targets = Some(vec![device("browser")]);
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("no token", "", event.to_string().into_bytes(), 401, "unauthorized"),
        ("a wrong token", "nope", event.to_string().into_bytes(), 401, "unauthorized"),
        ("an unknown type", "application/json", json!({"id": "x1", "type": "title_watched", "member": "hana", "occurred_at_ms": 1}).to_string().into_bytes(), 400, "unknown_type"),
        ("a member with '.'", "application/json", json!({"id": "x2", "type": "plan_changed", "member": "a.b", "occurred_at_ms": 1}).to_string().into_bytes(), 400, "malformed"),
        ("an unknown field", "application/json", json!({"id": "x3", "type": "plan_changed", "member": "hana", "occurred_at_ms": 1, "priority": "high"}).to_string().into_bytes(), 400, "malformed"),
        ("broken JSON", "application/json", b"{\"id\": ".to_vec(), 400, "malformed"),
        ("not CBOR", "application/cbor", b"\xff\xfe".to_vec(), 400, "malformed"),
        ("an oversized event", "application/cbor", big.encode(), 413, "too_large"),
        ("a target outside the type's", "application/cbor", wrong_target.encode(), 400, "bad_target"),
        ("a deep payload", "application/cbor", crate::support::event("plan_changed", "hana", (0..20).fold(Value::Null, |inner, _| Value::Array(vec![inner]))).encode(), 400, "too_deep"),
        ("another content type", "text/plain", b"hello".to_vec(), 415, "unsupported_media_type"),
    ];
    for (what, content_type, body, status, code) in cases {
        let presented = match what {
            "no token" => None,
            "a wrong token" => Some("nope".to_owned()),
            _ => Some(token.clone()),
        };
        let mut headers = vec![];
        let auth;
        if let Some(presented) = presented {
            auth = format!("Bearer {presented}");
            headers.push(("Authorization", auth.as_str()));
        }
        let content_type =
            if content_type.is_empty() || content_type == "nope" { "application/json" } else { content_type };
        headers.push(("Content-Type", content_type));
        let (got, answer) = http(port, "POST", "/v1/events", &headers, &body).unwrap();
        let answer = json_body(&answer);
        assert_eq!((got, answer["code"].as_str()), (status, Some(code)), "{what}: {answer}");
        assert!(!answer["message"].as_str().unwrap_or_default().is_empty(), "{what}: the message says why");
    }
    let stored_after = ever_stored(&stack).await;
    assert_eq!(stored_after, stored, "nothing refused was stored");
}

#[tokio::test]
async fn legacy_pull_gives_the_pages_of_nats_pull_for_the_tokens_own_member_only() {
    let mut stack = Stack::start().await;
    let worker = stack.start_all().await;
    let port = stack.start_gateway().await;
    for index in 0..5u32 {
        stack
            .publisher()
            .publish(&crate::support::event("my_list_updated", "ines", Value::Integer(index.into())))
            .await
            .unwrap();
    }
    stack
        .publisher()
        .publish(&crate::support::event("my_list_updated", "other", text("not ines'")))
        .await
        .unwrap();
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 6).await;

    let token = stack.token("ines", "tv", "legacy-1", 3600);
    let auth = format!("Bearer {token}");
    let (status, body) =
        http(port, "GET", "/v1/pull?cursor=0&limit=3", &[("Authorization", &auth)], b"").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let page = json_body(&body);
    let nats_page = stack.pull_page("ines", "tv", 0, 3).await;
    let seqs: Vec<u64> =
        page["notifications"].as_array().unwrap().iter().map(|n| n["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, nats_page.notifications.iter().map(|n| n.seq).collect::<Vec<_>>());
    assert_eq!(page["next_cursor"].as_u64(), Some(nats_page.next_cursor));
    assert_eq!(
        page["epoch"].as_str(),
        Some(nats_page.epoch.to_string().as_str()),
        "the epoch as decimal text"
    );
    assert_eq!(page["more"].as_bool(), Some(true));
    // The next page from the position the first gave.
    let next = format!(
        "/v1/pull?cursor={}&epoch={}&cursor_time_ms={}&limit=10",
        page["next_cursor"],
        page["epoch"].as_str().unwrap(),
        page["next_cursor_time_ms"]
    );
    let (status, body) = http(port, "GET", &next, &[("Authorization", &auth)], b"").unwrap();
    let rest = json_body(&body);
    assert_eq!(
        (status, rest["notifications"].as_array().unwrap().len(), rest["resync"].as_bool()),
        (200, 2, Some(false))
    );
    assert!(rest["notifications"].as_array().unwrap().iter().all(|n| n["member"] == "ines"));
    // CBOR on request: the page the device SDK reads.
    let (_, cbor) =
        http(port, "GET", "/v1/pull", &[("Authorization", &auth), ("Accept", "application/cbor")], b"")
            .unwrap();
    assert_eq!(reno_model::PullPage::decode(&cbor).unwrap().notifications.len(), 5);

    // No token, an expired one, another member's query parameters: nothing of anyone.
    let expired = format!("Bearer {}", stack.token("ines", "tv", "legacy-1", -120));
    for headers in [vec![], vec![("Authorization", expired.as_str())]] {
        let (status, body) = http(port, "GET", "/v1/pull", &headers, b"").unwrap();
        assert_eq!((status, json_body(&body)["code"].as_str()), (401, Some("unauthorized")));
    }
    let (status, body) =
        http(port, "GET", "/v1/pull?member=other", &[("Authorization", &auth)], b"").unwrap();
    assert_eq!(
        (status, json_body(&body)["code"].as_str()),
        (400, Some("bad_request")),
        "no member in the query"
    );
}

#[tokio::test]
async fn presence_and_health_answer_and_the_openapi_document_holds() {
    let mut stack = Stack::start().await;
    stack.start_all().await;
    let port = stack.start_gateway().await;
    let _tv = stack.device("jo", "tv", 0).await;
    let service = format!("Bearer {}", stack.service_token());
    let (status, body) = http(port, "GET", "/v1/presence/jo", &[("Authorization", &service)], b"").unwrap();
    let presence = json_body(&body);
    assert_eq!((status, presence["devices"][0]["device_type"].as_str()), (200, Some("tv")), "{presence}");
    assert_eq!(http(port, "GET", "/v1/presence/jo", &[], b"").unwrap().0, 401);
    assert_eq!(http(port, "GET", "/v1/presence/a.b", &[("Authorization", &service)], b"").unwrap().0, 400);
    assert_eq!(http_get(port, "/readyz").unwrap().0, 200);
    assert_eq!(http_get(port, "/nothing-here").unwrap().0, 404);

    // Every operation of docs/openapi.json, called as documented, answers with a status it documents
    // and a body with the required fields of that status's schema.
    let document: Json = serde_json::from_str(
        &std::fs::read_to_string(reno_testkit::repo_root().join("docs/openapi.json")).unwrap(),
    )
    .unwrap();
    let device_auth = format!("Bearer {}", stack.token("jo", "tv", "doc-1", 3600));
    let mut checked = 0;
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let concrete = path.replace("{member}", "jo");
            let secured = operation["security"]
                .as_array()
                .and_then(|schemes| schemes.first())
                .and_then(|scheme| scheme.as_object())
                .and_then(|scheme| scheme.keys().next().cloned());
            let auth = match secured.as_deref() {
                Some("service") => Some(service.as_str()),
                Some("device") => Some(device_auth.as_str()),
                _ => None,
            };
            let example = &operation["requestBody"]["content"]["application/json"]["example"];
            let body = if example.is_null() { vec![] } else { example.to_string().into_bytes() };
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(auth) = auth {
                headers.push(("Authorization", auth));
            }
            let (status, answer) = http(port, &method.to_uppercase(), &concrete, &headers, &body).unwrap();
            let documented = &operation["responses"][status.to_string()];
            assert!(!documented.is_null(), "{method} {path} answered {status}, which it does not document");
            check_schema(
                &document,
                &documented["content"]["application/json"]["schema"],
                &answer,
                &format!("{method} {path} {status}"),
            );
            if auth.is_some() {
                let (status, answer) = http(
                    port,
                    &method.to_uppercase(),
                    &concrete,
                    &[("Content-Type", "application/json")],
                    &body,
                )
                .unwrap();
                assert_eq!(status, 401, "{method} {path} without a token");
                check_schema(
                    &document,
                    &operation["responses"]["401"]["content"]["application/json"]["schema"],
                    &answer,
                    "401",
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 5, "every operation was called");
}

/// The body has the required properties of `schema` (following one `$ref`), when the schema says any.
fn check_schema(document: &Json, schema: &Json, body: &[u8], what: &str) {
    let schema = match schema["$ref"].as_str() {
        Some(reference) => {
            &document["components"]["schemas"][reference.trim_start_matches("#/components/schemas/")]
        }
        None => schema,
    };
    let Some(required) = schema["required"].as_array() else { return };
    let value = json_body(body);
    for field in required {
        assert!(
            !value[field.as_str().unwrap()].is_null() || value.get(field.as_str().unwrap()).is_some(),
            "{what}: no {field} in {value}"
        );
    }
}
