//! Subjects and tokens as they arrive from the network: `subject::parse_event_subject` (as
//! published, and as a priority stream stores it with a partition token),
//! `subject::parse_pull_subject`, `token::check_token` and each token type's `new` (and its serde
//! path, which envelopes and notifications use). Whatever is accepted must be 1 to 64 of
//! `[A-Za-z0-9_-]`, and everything of that shape must be accepted.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reno_fuzz::is_token;
use reno_model::{CollapseKey, DeviceType, EventId, EventType, MemberId, codec, subject, token::check_token};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_tokens(&text);
    check_event_subject(&text);
    check_pull_subject(&text);
});

fn check_tokens(text: &str) {
    let expected = is_token(text);
    assert_eq!(check_token("member id", text).is_ok(), expected, "check_token({text:?})");
    assert_eq!(MemberId::new(text).map(String::from).ok().as_deref(), expected.then_some(text));
    assert_eq!(EventType::new(text).map(String::from).ok().as_deref(), expected.then_some(text));
    assert_eq!(DeviceType::new(text).map(String::from).ok().as_deref(), expected.then_some(text));
    assert_eq!(EventId::new(text).map(String::from).ok().as_deref(), expected.then_some(text));
    assert_eq!(CollapseKey::new(text).map(String::from).ok().as_deref(), expected.then_some(text));
    // Inside a message, a token is read through serde (`try_from = "String"`).
    let from_cbor = codec::decode::<MemberId>(&codec::encode(&text), usize::MAX);
    assert_eq!(from_cbor.is_ok(), expected, "{from_cbor:?}");
}

/// Exactly `<prefix>.<a>.<b>` with two tokens, read independently of the code under test.
fn two_tokens_after<'a>(text: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = text.strip_prefix(prefix)?.strip_prefix('.')?;
    let (first, second) = rest.split_once('.')?;
    (is_token(first) && is_token(second)).then_some((first, second))
}

/// `reno.evt.<partition>.<a>.<b>`, as a priority stream stores an event: the partition in decimal
/// without leading zeros, below 1024; the rest as published.
fn stored_event_tokens(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix("reno.evt.")?;
    let (partition, published) = rest.split_once('.')?;
    let canonical = partition == "0"
        || (!partition.starts_with('0') && partition.bytes().all(|byte| byte.is_ascii_digit()));
    let below = partition.len() <= 4 && partition.parse::<u32>().is_ok_and(|number| number < 1024);
    if !(canonical && below) {
        return None;
    }
    two_tokens_after(&format!("x.{published}"), "x").map(|_| {
        let (first, second) = published.split_once('.').expect("two tokens");
        (first, second)
    })
}

fn check_event_subject(text: &str) {
    let parsed = subject::parse_event_subject(text);
    let stored = stored_event_tokens(text);
    let expected = two_tokens_after(text, "reno.evt").or(stored);
    match (&parsed, expected) {
        (Ok((event_type, member)), Some((type_text, member_text))) => {
            assert_eq!((event_type.as_str(), member.as_str()), (type_text, member_text));
            // The subject as the service published it, with the partition token taken out.
            assert_eq!(subject::event_subject(event_type, member), subject::published_event_subject(text));
        }
        (Err(error), None) => assert_eq!(error.code(), "bad_subject"),
        _ => panic!("parse_event_subject({text:?}) = {parsed:?}"),
    }
}

fn check_pull_subject(text: &str) {
    let parsed = subject::parse_pull_subject(text);
    let expected = two_tokens_after(text, "reno.pull");
    match (&parsed, expected) {
        (Some((member, device_type)), Some((member_text, device_text))) => {
            assert_eq!((member.as_str(), device_type.as_str()), (member_text, device_text));
            assert_eq!(subject::pull_subject(member, device_type), text);
        }
        (None, None) => {}
        _ => panic!("parse_pull_subject({text:?}) = {parsed:?}"),
    }
}
