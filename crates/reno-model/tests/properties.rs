//! Properties of the model's public API, each checked against a small model written here: tokens
//! (what is accepted is exactly 1 to 64 safe characters), encode-decode round trips of every message
//! for arbitrary valid values, and the codec's limits (too deep is `TooDeep`, too large is `TooLarge`
//! before any parsing).

use proptest::{collection::vec, prelude::*};
use reno_model::{
    CollapseKey, DeviceType, Envelope, EventId, EventType, InvalidEvent, MemberId, Notification, Position,
    PullPage, PullRequest, Value,
    codec::{self, DecodeError, MAX_EVENT_BYTES, MAX_NESTING},
    notification::{MAX_NOTIFICATION_BYTES, MAX_PAGE_BYTES},
    subject,
    token::{MAX_TOKEN_LEN, check_token},
};

/// The token rule of docs/protocol.md, from scratch.
fn is_token(text: &str) -> bool {
    (1..=MAX_TOKEN_LEN).contains(&text.len())
        && text.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

fn token_text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}"
}

/// Strings that are tokens, nearly tokens (one character off, or one too long), or anything at all.
fn any_text() -> impl Strategy<Value = String> {
    let unsafe_char = prop_oneof![
        Just('.'),
        Just('*'),
        Just('>'),
        Just(' '),
        Just('\t'),
        Just('\u{0}'),
        Just('/'),
        Just('@'),
        Just(':'),
        Just('é'),
        Just('\u{2028}'),
        any::<char>(),
    ];
    prop_oneof![
        token_text(),
        (token_text(), any::<prop::sample::Index>(), unsafe_char).prop_map(|(text, at, bad)| {
            let mut chars: Vec<char> = text.chars().collect();
            chars.insert(at.index(chars.len() + 1), bad);
            chars.into_iter().collect()
        }),
        "[A-Za-z0-9_-]{65,80}",
        any::<String>(),
    ]
}

fn token<T: std::fmt::Debug>(
    make: fn(String) -> Result<T, reno_model::TokenError>,
) -> impl Strategy<Value = T> {
    token_text().prop_map(move |text| make(text).expect("a token"))
}

/// Any CBOR value reno carries in a payload, a few levels deep. Floats are never NaN (NaN is not
/// equal to itself, so a round trip could not be told by `==`), and tags 2 and 3 are left out: CBOR
/// bignums up to 16 bytes read back as plain integers (the same number, another `Value`).
fn value() -> impl Strategy<Value = Value> {
    use prop::num::f64;
    let scalar = prop_oneof![
        any::<u64>().prop_map(|n| Value::Integer(n.into())),
        (-(1i128 << 64)..0).prop_map(|n| Value::Integer(n.try_into().expect("within CBOR's range"))),
        vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
        (f64::POSITIVE | f64::NEGATIVE | f64::NORMAL | f64::SUBNORMAL | f64::ZERO | f64::INFINITE)
            .prop_map(Value::Float),
        ".{0,12}".prop_map(Value::Text),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    scalar.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((inner.clone(), inner.clone()), 0..4).prop_map(Value::Map),
            (prop_oneof![0u64..2, 4u64..u64::MAX], inner)
                .prop_map(|(tag, value)| Value::Tag(tag, Box::new(value))),
        ]
    })
}

prop_compose! {
    fn envelope()(
        id in token(EventId::new),
        event_type in token(EventType::new),
        member in token(MemberId::new),
        occurred_at_ms in any::<u64>(),
        payload in value(),
        targets in prop::option::of(vec(token(DeviceType::new), 0..4)),
        collapse_key in prop::option::of(token(CollapseKey::new)),
    ) -> Envelope {
        Envelope { id, event_type, member, occurred_at_ms, payload, targets, collapse_key }
    }
}

prop_compose! {
    fn notification()(
        seq in any::<u64>(),
        id in token(EventId::new),
        event_type in token(EventType::new),
        member in token(MemberId::new),
        device_type in token(DeviceType::new),
        occurred_at_ms in any::<u64>(),
        published_at_ms in any::<u64>(),
        payload in value(),
        collapse_key in prop::option::of(token(CollapseKey::new)),
    ) -> Notification {
        Notification { seq, id, event_type, member, device_type, occurred_at_ms, published_at_ms, payload, collapse_key }
    }
}

fn pull_request() -> impl Strategy<Value = PullRequest> {
    (any::<u64>(), any::<Option<u32>>(), any::<Option<u64>>(), any::<Option<u64>>()).prop_map(
        |(cursor, limit, epoch, cursor_time_ms)| PullRequest { cursor, limit, epoch, cursor_time_ms },
    )
}

prop_compose! {
    fn pull_page()(
        notifications in vec(notification(), 0..4),
        next_cursor in any::<u64>(),
        more in any::<bool>(),
        resync in any::<bool>(),
        epoch in any::<u64>(),
        next_cursor_time_ms in any::<Option<u64>>(),
    ) -> PullPage {
        PullPage { notifications, next_cursor, more, resync, epoch, next_cursor_time_ms }
    }
}

/// One level of nesting: an array, a map (the inner value as key or as value) or a tag.
#[derive(Debug, Clone, Copy)]
enum Level {
    Array,
    MapValue,
    MapKey,
    Tag(u64),
}

fn levels(depth: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<Level>> {
    let level = prop_oneof![
        Just(Level::Array),
        Just(Level::MapValue),
        Just(Level::MapKey),
        prop_oneof![0u64..2, 4u64..1_000_000].prop_map(Level::Tag),
    ];
    vec(level, depth)
}

/// `leaf` wrapped in `levels`, the first level outermost.
fn wrap(leaf: Value, levels: &[Level]) -> Value {
    levels.iter().rev().fold(leaf, |inner, level| match level {
        Level::Array => Value::Array(vec![Value::Null, inner]),
        Level::MapValue => Value::Map(vec![(Value::Text("k".into()), inner)]),
        Level::MapKey => Value::Map(vec![(inner, Value::Null)]),
        Level::Tag(tag) => Value::Tag(*tag, Box::new(inner)),
    })
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(|n| Value::Integer(n.into())),
        ".{0,8}".prop_map(Value::Text),
        Just(Value::Null)
    ]
}

/// A `minimal` envelope whose payload is a byte string sized so that the whole encodes to exactly
/// `size` bytes, if one does (a byte string's length header grows by steps).
fn envelope_of_size(minimal: &Envelope, size: usize) -> Option<Envelope> {
    let base = Envelope { payload: Value::Bytes(Vec::new()), ..minimal.clone() }.encode().len();
    (0..=8).find_map(|header_growth| {
        let length = size.checked_sub(base + header_growth)?;
        let candidate = Envelope { payload: Value::Bytes(vec![7; length]), ..minimal.clone() };
        (candidate.encode().len() == size).then_some(candidate)
    })
}

/// `size` bytes that are not a message: whatever the first bytes are, the rest is zeros.
fn garbage(prefix: &[u8], size: usize) -> Vec<u8> {
    let mut bytes = prefix.to_vec();
    bytes.resize(size, 0);
    bytes
}

/// What a decoder with limit `max` says to `over` bytes too many.
fn too_large<T>(max: usize, over: usize) -> Result<T, DecodeError> {
    Err(DecodeError::TooLarge { size: max + over, max })
}

proptest! {
    #[test]
    fn every_string_of_safe_characters_is_a_token(text in token_text()) {
        prop_assert!(check_token("member id", &text).is_ok());
        prop_assert_eq!(String::from(MemberId::new(text.clone()).unwrap()), text.clone());
        prop_assert_eq!(String::from(EventType::new(text.clone()).unwrap()), text.clone());
        prop_assert_eq!(String::from(DeviceType::new(text.clone()).unwrap()), text.clone());
        prop_assert_eq!(String::from(EventId::new(text.clone()).unwrap()), text.clone());
        prop_assert_eq!(String::from(CollapseKey::new(text.clone()).unwrap()), text.clone());
    }

    #[test]
    fn only_strings_of_safe_characters_are_tokens(text in any_text()) {
        let expected = is_token(&text);
        prop_assert_eq!(check_token("member id", &text).is_ok(), expected);
        prop_assert_eq!(MemberId::new(text.clone()).is_ok(), expected);
        prop_assert_eq!(EventType::new(text.clone()).is_ok(), expected);
        prop_assert_eq!(DeviceType::new(text.clone()).is_ok(), expected);
        prop_assert_eq!(EventId::new(text.clone()).is_ok(), expected);
        prop_assert_eq!(CollapseKey::new(text.clone()).is_ok(), expected);
        // Inside a message a token is read through serde, with the same rule.
        let from_cbor = codec::decode::<MemberId>(&codec::encode(&text), usize::MAX);
        prop_assert_eq!(from_cbor.is_ok(), expected);
    }

    #[test]
    fn envelopes_round_trip(envelope in envelope()) {
        let bytes = envelope.encode();
        prop_assert_eq!(Envelope::decode(&bytes), Ok(envelope.clone()));
        let subject = subject::event_subject(&envelope.event_type, &envelope.member);
        prop_assert_eq!(Envelope::decode_from(&subject, &bytes), Ok(envelope));
    }

    #[test]
    fn notifications_round_trip(notification in notification()) {
        prop_assert_eq!(Notification::decode(&notification.encode()), Ok(notification));
    }

    #[test]
    fn notifications_of_routed_events_round_trip(envelope in envelope(), device_type in token(DeviceType::new)) {
        let notification = Notification::from_event(&envelope, &device_type, 17);
        prop_assert_eq!(Notification::decode(&notification.encode()), Ok(notification));
    }

    #[test]
    fn pull_requests_round_trip(request in pull_request()) {
        prop_assert_eq!(PullRequest::decode(&request.encode()), Ok(request));
    }

    #[test]
    fn pull_pages_round_trip(page in pull_page()) {
        prop_assert_eq!(PullPage::decode(&page.encode()), Ok(page));
    }

    #[test]
    fn positions_read_back_as_written(
        cursor in any::<u64>(),
        epoch in any::<Option<u64>>(),
        cursor_time_ms in any::<Option<u64>>(),
    ) {
        let position = Position { cursor, epoch, cursor_time_ms };
        prop_assert_eq!(position.to_string().parse::<Position>(), Ok(position));
        // The request a position makes carries it whole.
        let request = position.request(7);
        prop_assert_eq!((request.cursor, request.epoch, request.cursor_time_ms), (cursor, epoch, cursor_time_ms));
        // And the page that ends there hands it back.
        let page = PullPage {
            notifications: vec![],
            next_cursor: cursor,
            more: false,
            resync: false,
            epoch: epoch.unwrap_or(0),
            next_cursor_time_ms: cursor_time_ms,
        };
        prop_assert_eq!(page.next_position(), Position { epoch: Some(epoch.unwrap_or(0)), ..position });
    }

    #[test]
    fn a_value_within_the_nesting_limit_is_read(levels in levels(0..=MAX_NESTING), leaf in scalar()) {
        let value = wrap(leaf, &levels);
        prop_assert_eq!(codec::decode::<Value>(&codec::encode(&value), usize::MAX), Ok(value));
    }

    #[test]
    fn a_value_deeper_than_the_nesting_limit_is_too_deep(
        levels in levels(MAX_NESTING + 1..=MAX_NESTING + 40),
        leaf in scalar(),
    ) {
        let bytes = codec::encode(&wrap(leaf, &levels));
        prop_assert_eq!(codec::decode::<Value>(&bytes, usize::MAX), Err(DecodeError::TooDeep));
    }

    #[test]
    fn a_payload_fits_one_level_below_the_message(
        envelope in envelope(),
        levels in levels(0..=MAX_NESTING + 8),
        leaf in scalar(),
    ) {
        // The envelope's map is the first level (docs/protocol.md: 16 levels, counting the map).
        let deep = Envelope { payload: wrap(leaf, &levels), ..envelope };
        let decoded = Envelope::decode(&deep.encode());
        if levels.len() < MAX_NESTING {
            prop_assert_eq!(decoded, Ok(deep));
        } else {
            prop_assert_eq!(decoded, Err(InvalidEvent::Decode(DecodeError::TooDeep)));
        }
    }

    #[test]
    fn an_envelope_is_read_up_to_the_size_limit(
        envelope in envelope(),
        size in MAX_EVENT_BYTES - 64..=MAX_EVENT_BYTES + 64,
    ) {
        let Some(sized) = envelope_of_size(&envelope, size) else { return Ok(()) };
        let decoded = Envelope::decode(&sized.encode());
        if size <= MAX_EVENT_BYTES {
            prop_assert_eq!(decoded, Ok(sized));
        } else {
            prop_assert_eq!(decoded, Err(InvalidEvent::Decode(DecodeError::TooLarge { size, max: MAX_EVENT_BYTES })));
        }
    }

    #[test]
    fn anything_over_the_size_limit_is_too_large_before_parsing(
        prefix in vec(any::<u8>(), 0..32),
        over in 1usize..64,
    ) {
        let event = garbage(&prefix, MAX_EVENT_BYTES + over);
        prop_assert_eq!(Envelope::decode(&event), Err(InvalidEvent::Decode(DecodeError::TooLarge { size: event.len(), max: MAX_EVENT_BYTES })));
        prop_assert_eq!(Notification::decode(&garbage(&prefix, MAX_NOTIFICATION_BYTES + over)), too_large(MAX_NOTIFICATION_BYTES, over));
        prop_assert_eq!(PullRequest::decode(&garbage(&prefix, 1024 + over)), too_large(1024, over));
        prop_assert_eq!(PullPage::decode(&garbage(&prefix, MAX_PAGE_BYTES + 1024 + over)), too_large(MAX_PAGE_BYTES + 1024, over));
    }
}

/// Found by the fuzz target `envelope` (its input is in fuzz/corpus/envelope/): a CBOR bignum (tag
/// 2 or 3) of 5 to 8 bytes reads as an integer and is written back as a plain 9-byte integer, so
/// re-encoding a payload can make it up to 2/7 larger. An envelope within the 64 KiB limit as sent
/// but over it as reno writes it again is refused as too large, so that no notification made from
/// an accepted event is over the notification limit.
#[test]
fn an_envelope_over_the_limit_once_rewritten_is_refused() {
    let mut bytes = vec![0xa5];
    for (key, value) in [("id", "e1"), ("type", "plan_changed"), ("member", "m1")] {
        bytes.extend(codec::encode(&key));
        bytes.extend(codec::encode(&value));
    }
    bytes.extend(codec::encode(&"occurred_at_ms"));
    bytes.extend(codec::encode(&1u64));
    bytes.extend(codec::encode(&"payload"));
    // An array of 5-byte positive bignums: 7 bytes each on the wire, 9 once written back.
    let bignum = [0xc2, 0x45, 0x01, 0, 0, 0, 0];
    let count = (MAX_EVENT_BYTES - bytes.len() - 3) / bignum.len();
    bytes.extend([0x99, (count >> 8) as u8, count as u8]);
    for _ in 0..count {
        bytes.extend(bignum);
    }
    assert!(bytes.len() <= MAX_EVENT_BYTES);
    let refused = Envelope::decode(&bytes).expect_err("over the limit once written again");
    assert!(matches!(refused, reno_model::InvalidEvent::Decode(DecodeError::TooLarge { .. })), "{refused}");
    // Fewer of them, within the limit even once rewritten: accepted, and its notification reads back.
    let within = &bytes[..bytes.len() - bignum.len() * (count / 3)];
    let mut shorter = within.to_vec();
    let kept = count - count / 3;
    let header = shorter.len() - kept * bignum.len() - 3;
    shorter[header + 1] = (kept >> 8) as u8;
    shorter[header + 2] = kept as u8;
    let envelope = Envelope::decode(&shorter).expect("within the limit once rewritten");
    let device_type = DeviceType::new("tv").expect("a token");
    let notification = Notification::from_event(&envelope, &device_type, 1).encode();
    assert!(notification.len() <= MAX_NOTIFICATION_BYTES, "{} bytes", notification.len());
    assert!(Notification::decode(&notification).is_ok());
}

/// Found by the fuzz target `envelope`: an envelope may nest its payload 15 levels deep (its own
/// map is the 16th), and a pull page puts the notification two levels further down (the page's map
/// and its `notifications` array). A page is read with two more levels, so every notification of
/// an accepted event can be pulled.
#[test]
fn a_payload_as_deep_as_an_envelope_allows_can_be_pulled() {
    let payload = wrap(Value::Null, &[Level::Array; MAX_NESTING - 2]);
    let envelope = Envelope {
        id: EventId::new("e1").expect("a token"),
        event_type: EventType::new("plan_changed").expect("a token"),
        member: MemberId::new("m1").expect("a token"),
        occurred_at_ms: 1,
        payload,
        targets: None,
        collapse_key: None,
    };
    let envelope = Envelope::decode(&envelope.encode()).expect("an envelope within the nesting limit");
    let notification = Notification::from_event(&envelope, &DeviceType::new("tv").expect("a token"), 1);
    assert!(Notification::decode(&notification.encode()).is_ok(), "a push reads back");
    let page = PullPage {
        notifications: vec![notification],
        next_cursor: 1,
        more: false,
        resync: false,
        epoch: 1,
        next_cursor_time_ms: None,
    };
    assert_eq!(PullPage::decode(&page.encode()), Ok(page));
}
