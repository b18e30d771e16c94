//! Writes the seed corpus under `fuzz/corpus/<target>/` and the dictionary `fuzz/reno.dict`:
//! messages made by reno-model's own encoders, valid ones and a few malformed ones, each named for
//! what it is. Run it again after a message changes shape (`scripts/fuzz seed`); it replaces the
//! seeds it writes and leaves other files alone.

use std::{fs, path::Path};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reno_fuzz::dev_token::{self, AUDIENCE, NOW};
use reno_model::{
    CollapseKey, DeviceType, Envelope, EventId, EventType, MemberId, Notification, PullPage, PullRequest,
    Value,
    codec::{self, MAX_NESTING},
    history::{Entry, MemberHistory},
};
use serde_json::json;

fn main() -> std::io::Result<()> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = fuzz.join("corpus");
    for (target, seeds) in [
        ("envelope", envelope_seeds()),
        ("notification", notification_seeds()),
        ("pull_request", pull_request_seeds()),
        ("pull_page", pull_page_seeds()),
        ("subject", text_seeds(SUBJECTS)),
        ("position", text_seeds(POSITIONS)),
        ("device_token", device_token_seeds()),
        ("member_history", member_history_seeds()),
    ] {
        let folder = corpus.join(target);
        fs::create_dir_all(&folder)?;
        for (name, bytes) in &seeds {
            fs::write(folder.join(name), bytes)?;
        }
        println!("{target}: {} seeds", seeds.len());
    }
    fs::write(fuzz.join("reno.dict"), dictionary())?;
    Ok(())
}

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn text(value: &str) -> Value {
    Value::Text(value.to_owned())
}

fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(entries.iter().map(|(key, value)| (text(key), value.clone())).collect())
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::Integer(1.into()), |inner, _| Value::Array(vec![inner]))
}

fn envelope(event_type: &str) -> Envelope {
    Envelope {
        id: EventId::new("0b7f1d2e-4c1a-4f7e-9a51-3c2f8e6d9b10").unwrap(),
        event_type: EventType::new(event_type).unwrap(),
        member: MemberId::new("m1").unwrap(),
        occurred_at_ms: 1_795_600_000_123,
        payload: map(&[("plan", text("premium"))]),
        targets: None,
        collapse_key: None,
    }
}

/// A payload with one value of every CBOR kind the codec reads.
fn every_kind() -> Value {
    Value::Array(vec![
        Value::Integer(0.into()),
        Value::Integer(u64::MAX.into()),
        Value::Integer((-1).into()),
        Value::Integer(i64::MIN.into()),
        Value::Bytes(vec![0, 1, 0xff]),
        Value::Float(1.5),
        Value::Float(f64::NAN),
        Value::Text("é✓".into()),
        Value::Bool(true),
        Value::Null,
        Value::Tag(1, Box::new(Value::Integer(1_795_600_000.into()))),
        map(&[("k", Value::Array(vec![]))]),
    ])
}

/// An envelope's map by hand, for shapes the typed encoder cannot make.
fn raw_envelope(extra: &[(&str, Value)]) -> Vec<u8> {
    let mut entries = vec![
        ("id", text("e1")),
        ("type", text("plan_changed")),
        ("member", text("m1")),
        ("occurred_at_ms", Value::Integer(1.into())),
    ];
    for (key, value) in extra {
        entries.retain(|(existing, _)| existing != key);
        entries.push((key, value.clone()));
    }
    codec::encode(&map(&entries))
}

fn envelope_seeds() -> Seeds {
    let targeted = Envelope {
        targets: Some(vec![DeviceType::new("mobile").unwrap(), DeviceType::new("tv").unwrap()]),
        ..envelope("my_list_updated")
    };
    let keyed = Envelope {
        collapse_key: Some(CollapseKey::new("row-7").unwrap()),
        ..envelope("recommendations_refreshed")
    };
    let bad_target = Envelope {
        targets: Some(vec![DeviceType::new("browser").unwrap()]),
        ..envelope("diagnostics_requested")
    };
    let bad_key =
        Envelope { collapse_key: Some(CollapseKey::new("k").unwrap()), ..envelope("my_list_updated") };
    let valid = envelope("plan_changed").encode();
    let mut trailing = valid.clone();
    trailing.push(0);
    vec![
        ("valid-plan-changed", valid.clone()),
        ("valid-no-payload", raw_envelope(&[])),
        ("valid-targets", targeted.encode()),
        ("valid-collapse-key", keyed.encode()),
        ("valid-every-kind", Envelope { payload: every_kind(), ..envelope("viewing_activity") }.encode()),
        (
            "valid-deepest-payload",
            Envelope { payload: nested(MAX_NESTING - 1), ..envelope("plan_changed") }.encode(),
        ),
        ("route-unknown-type", envelope("title_watched").encode()),
        ("route-bad-target", bad_target.encode()),
        ("route-bad-collapse-key", bad_key.encode()),
        ("route-empty-targets", raw_envelope(&[("targets", Value::Array(vec![]))])),
        ("bad-too-deep", Envelope { payload: nested(MAX_NESTING), ..envelope("plan_changed") }.encode()),
        ("bad-truncated", valid[..valid.len() / 2].to_vec()),
        ("bad-trailing-byte", trailing),
        ("bad-unknown-key", raw_envelope(&[("priority", text("high"))])),
        ("bad-float-time", raw_envelope(&[("occurred_at_ms", Value::Float(1.0))])),
        ("bad-negative-time", raw_envelope(&[("occurred_at_ms", Value::Integer((-1).into()))])),
        ("bad-member-wildcard", raw_envelope(&[("member", text("m1.*"))])),
        ("bad-not-a-map", codec::encode(&Value::Array(vec![text("e1")]))),
    ]
}

fn notification(seq: u64, collapse_key: Option<&str>) -> Notification {
    let event = envelope(if collapse_key.is_some() { "plan_changed" } else { "my_list_updated" });
    let mut notification =
        Notification::from_event(&event, &DeviceType::new("tv").unwrap(), 1_795_600_000_125);
    notification.seq = seq;
    notification.collapse_key = collapse_key.map(|key| CollapseKey::new(key).unwrap());
    notification
}

fn notification_seeds() -> Seeds {
    let mut missing_seq = map(&[]);
    if let Value::Map(entries) = codec::decode::<Value>(&notification(2, None).encode(), usize::MAX).unwrap()
    {
        missing_seq = Value::Map(entries.into_iter().filter(|(key, _)| key != &text("seq")).collect());
    }
    vec![
        ("valid", notification(2, None).encode()),
        ("valid-collapsing", notification(6, Some("plan_changed")).encode()),
        ("valid-every-kind", Notification { payload: every_kind(), ..notification(9, None) }.encode()),
        ("bad-missing-seq", codec::encode(&missing_seq)),
        ("bad-envelope-not-notification", envelope("plan_changed").encode()),
    ]
}

fn pull_request_seeds() -> Seeds {
    vec![
        ("valid-new-device", PullRequest::default().encode()),
        (
            "valid-full",
            PullRequest {
                cursor: 17,
                limit: Some(100),
                epoch: Some(1_795_599_990_000_000_000),
                cursor_time_ms: Some(1_795_600_004_211),
            }
            .encode(),
        ),
        (
            "valid-limit-max",
            PullRequest { cursor: u64::MAX, limit: Some(u32::MAX), ..PullRequest::default() }.encode(),
        ),
        ("bad-empty", Vec::new()),
        (
            "bad-unknown-key",
            codec::encode(&map(&[("cursor", Value::Integer(0.into())), ("since", Value::Integer(1.into()))])),
        ),
        (
            "bad-limit-too-big",
            codec::encode(&map(&[
                ("cursor", Value::Integer(0.into())),
                ("limit", Value::Integer((1u64 << 33).into())),
            ])),
        ),
        ("bad-float-cursor", codec::encode(&map(&[("cursor", Value::Float(1.0))]))),
    ]
}

fn pull_page_seeds() -> Seeds {
    let page = PullPage {
        notifications: vec![
            notification(2, None),
            notification(6, Some("plan_changed")),
            notification(9, None),
        ],
        next_cursor: 10,
        more: true,
        resync: false,
        epoch: 1_795_599_990_000_000_000,
        next_cursor_time_ms: Some(1_795_600_004_216),
    };
    let empty = PullPage {
        notifications: vec![],
        more: false,
        resync: true,
        next_cursor_time_ms: None,
        ..page.clone()
    };
    let valid = page.encode();
    vec![
        ("valid", valid.clone()),
        ("valid-empty-resync", empty.encode()),
        ("bad-truncated", valid[..valid.len() - 3].to_vec()),
        ("bad-notification-is-envelope", {
            let mut bad = codec::decode::<Value>(&empty.encode(), usize::MAX).unwrap();
            if let Value::Map(entries) = &mut bad {
                entries[0].1 = Value::Array(vec![
                    codec::decode(&envelope("plan_changed").encode(), usize::MAX).unwrap(),
                ]);
            }
            codec::encode(&bad)
        }),
    ]
}

const SUBJECTS: &[(&str, &str)] = &[
    ("event", "reno.evt.plan_changed.m1"),
    ("event-uuid-member", "reno.evt.plan_changed.0b7f1d2e-4c1a-4f7e-9a51-3c2f8e6d9b10"),
    ("event-extra-level", "reno.evt.plan_changed.m1.x"),
    ("event-wildcard", "reno.evt.plan_changed.*"),
    ("event-full-wildcard", "reno.evt.>"),
    ("pull", "reno.pull.m1.tv"),
    ("pull-short", "reno.pull.m1"),
    ("token-longest", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    ("token-too-long", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    ("token-non-ascii", "mémbre"),
    ("token-space", "a b"),
    ("token-control", "a\u{0}b"),
];

const POSITIONS: &[(&str, &str)] = &[
    ("cursor", "7"),
    ("cursor-epoch", "7:1795599990000000000"),
    ("full", "17:1795599990000000000:1795600004211"),
    ("no-epoch", "17::9"),
    ("max", "18446744073709551615:18446744073709551615:18446744073709551615"),
    ("overflow", "18446744073709551616"),
    ("too-many-parts", "7:3:9:1"),
    ("empty", ""),
    ("negative", "-1"),
];

/// Tokens the development key minted, valid and not, and junk; then inputs whose first byte makes
/// the target sign the rest as the claims (0, 1) or the header (2) of a token.
fn device_token_seeds() -> Seeds {
    let key = dev_token::dev_key();
    let mint = |member: &str, device_type: &str, expires_at: u64| {
        key.mint(&dev_token::identity(member, device_type, "d1", expires_at), AUDIENCE, NOW).into_bytes()
    };
    let valid = String::from_utf8(mint("m1", "tv", NOW + 3600)).unwrap();
    let (header, rest) = valid.split_once('.').unwrap();
    let (claims_part, signature) = rest.split_once('.').unwrap();
    // Claims that pass, for `member`, with `changes` made to them.
    let claims = |member: &str, changes: serde_json::Value| {
        let mut claims = json!({"aud": AUDIENCE, "member": member, "device_type": "tv", "device_id": "d1"});
        claims["exp"] = json!(NOW + 60);
        for (claim, value) in changes.as_object().unwrap() {
            claims[claim] = value.clone();
        }
        claims
    };
    let encode = |value: serde_json::Value| URL_SAFE_NO_PAD.encode(value.to_string());
    let mut flipped = signature.to_owned().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let raw =
        |selector: u8, value: serde_json::Value| [vec![selector], value.to_string().into_bytes()].concat();
    vec![
        ("valid", valid.clone().into_bytes()),
        ("valid-uuid-member", mint("0b7f1d2e-4c1a-4f7e-9a51-3c2f8e6d9b10", "mobile", NOW + 60)),
        ("valid-within-leeway", mint("m1", "browser", NOW - 10)),
        ("expired", mint("m1", "tv", NOW - 3600)),
        (
            "wrong-audience",
            key.mint(&dev_token::identity("m1", "tv", "d1", NOW + 60), "other", NOW).into_bytes(),
        ),
        ("tampered-claims", format!("{header}.{}.{signature}", encode(claims("m2", json!({})))).into_bytes()),
        (
            "tampered-signature",
            format!("{header}.{claims_part}.{}", String::from_utf8(flipped).unwrap()).into_bytes(),
        ),
        (
            "alg-none",
            format!("{}.{}.", encode(json!({"alg": "none"})), encode(claims("m1", json!({})))).into_bytes(),
        ),
        ("junk-two-parts", b"a.b".to_vec()),
        ("junk-empty", Vec::new()),
        ("junk-bytes", vec![0xff, 0x00, b'.', 0xc3, b'.', 0x28]),
        ("sign-claims-valid", raw(0, claims("m1", json!({})))),
        ("sign-claims-no-kid-audiences", raw(1, claims("m1", json!({"aud": ["x", AUDIENCE], "exp": NOW})))),
        ("sign-claims-not-yet-valid", raw(0, claims("m1", json!({"nbf": NOW + 3600})))),
        ("sign-claims-member-wildcard", raw(0, claims("m1.*", json!({})))),
        ("sign-claims-float-exp", raw(0, claims("m1", json!({"exp": 1.9e9})))),
        ("sign-header-ed25519", raw(2, json!({"alg": "Ed25519", "typ": "JWT"}))),
        ("sign-header-other-key", raw(2, json!({"alg": "EdDSA", "kid": "k2"}))),
        ("sign-header-unknown-key", raw(2, json!({"alg": "EdDSA", "kid": "k9"}))),
        ("sign-header-crit", raw(2, json!({"alg": "EdDSA", "crit": ["b64"]}))),
        ("sign-header-hs256", raw(2, json!({"alg": "HS256", "kid": "k1"}))),
    ]
}

fn history_entry(seq: u64, targets: &[&str], collapse_key: Option<&str>) -> Entry {
    Entry {
        seq,
        written_ms: 1_795_600_000_000 + seq * 1000,
        targets: targets.iter().map(|target| DeviceType::new(*target).unwrap()).collect(),
        source: format!("RENO_NORMAL:{seq}"),
        id: EventId::new(format!("e{seq}")).unwrap(),
        event_type: EventType::new(if collapse_key.is_some() { "plan_changed" } else { "my_list_updated" })
            .unwrap(),
        occurred_at_ms: 1_795_600_000_000 + seq * 1000 - 2,
        published_at_ms: 1_795_600_000_000 + seq * 1000 - 1,
        payload: map(&[("row", Value::Integer(seq.into()))]),
        collapse_key: collapse_key.map(|key| CollapseKey::new(key).unwrap()),
    }
}

fn member_history_seeds() -> Seeds {
    let history = MemberHistory {
        entries: vec![
            history_entry(3, &["tv", "mobile"], None),
            history_entry(7, &["tv"], Some("plan_changed")),
            history_entry(9, &["browser", "mobile", "tv"], None),
            history_entry(0, &["tv"], None),
        ],
        pruned: [(DeviceType::new("tv").unwrap(), 2)].into_iter().collect(),
        created: 1,
        lost_before: 0,
    };
    let valid = history.encode();
    let mut trailing = valid.clone();
    trailing.push(0);
    let with_payload = |payload: Value| {
        let entries = vec![Entry { payload, ..history_entry(4, &["tv"], None) }];
        MemberHistory { entries, ..MemberHistory::default() }.encode()
    };
    let reversed =
        MemberHistory { entries: history.entries.iter().rev().cloned().collect(), ..history.clone() };
    let full = MemberHistory {
        entries: (1..=12).map(|seq| history_entry(seq, &["tv", "mobile"], None)).collect(),
        ..MemberHistory::default()
    };
    let mut raw = codec::decode::<Value>(&valid, usize::MAX).unwrap();
    if let Value::Map(entries) = &mut raw {
        entries.push((text("epoch"), Value::Integer(1.into())));
    }
    vec![
        ("valid", valid.clone()),
        ("valid-empty", MemberHistory::default().encode()),
        ("valid-lost-before", MemberHistory { lost_before: 2, ..history.clone() }.encode()),
        ("valid-full", full.encode()),
        ("valid-out-of-order", reversed.encode()),
        ("valid-every-kind", with_payload(every_kind())),
        // The deepest payload the history reads: one level deeper than an envelope carries.
        ("valid-deepest-payload", with_payload(nested(MAX_NESTING))),
        ("bad-too-deep", with_payload(nested(MAX_NESTING + 1))),
        ("bad-truncated", valid[..valid.len() / 2].to_vec()),
        ("bad-trailing-byte", trailing),
        ("bad-unknown-key", codec::encode(&raw)),
        ("bad-not-a-map", codec::encode(&Value::Array(vec![]))),
    ]
}

fn text_seeds(seeds: &[(&'static str, &str)]) -> Seeds {
    seeds.iter().map(|(name, value)| (*name, value.as_bytes().to_vec())).collect()
}

/// libFuzzer's dictionary: every key of reno's messages as CBOR text, and the subject prefixes.
fn dictionary() -> String {
    let keys = [
        "id",
        "type",
        "member",
        "occurred_at_ms",
        "payload",
        "targets",
        "collapse_key",
        "seq",
        "device_type",
        "published_at_ms",
        "cursor",
        "limit",
        "epoch",
        "cursor_time_ms",
        "notifications",
        "next_cursor",
        "more",
        "resync",
        "next_cursor_time_ms",
        "entries",
        "pruned",
        "created",
        "written_ms",
        "source",
    ];
    let mut lines = String::from("# Written by `scripts/fuzz seed` (fuzz/examples/seed.rs).\n");
    for key in keys {
        let escaped: String = codec::encode(&key).iter().map(|byte| format!("\\x{byte:02x}")).collect();
        lines.push_str(&format!("key_{key}=\"{escaped}\"\n"));
    }
    lines.push_str("evt=\"reno.evt.\"\npull=\"reno.pull.\"\n");
    // Device tokens: JSON of their header and claims, and `{"` as base64url.
    for word in [
        "alg",
        "EdDSA",
        "Ed25519",
        "kid",
        "crit",
        "aud",
        "exp",
        "nbf",
        "member",
        "device_type",
        "device_id",
        "reno",
        "k1",
        "k2",
    ] {
        lines.push_str(&format!("jwt_{word}=\"\\x22{word}\\x22\"\n"));
    }
    lines.push_str("jwt_open=\"eyJ\"\n");
    lines
}
