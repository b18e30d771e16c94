//! A pull page as a device reads it: `PullPage::decode`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reno_fuzz::{assert_payload_depth, assert_round_trip, is_token};
use reno_model::{PullPage, codec::DecodeError, notification::MAX_PAGE_BYTES};

fuzz_target!(|data: &[u8]| {
    let decoded = PullPage::decode(data);
    if data.len() > MAX_PAGE_BYTES + 1024 {
        assert!(matches!(decoded, Err(DecodeError::TooLarge { .. })));
    }
    let Ok(page) = decoded else { return };
    for notification in &page.notifications {
        for token in [
            notification.id.as_str(),
            notification.event_type.as_str(),
            notification.member.as_str(),
            notification.device_type.as_str(),
        ] {
            assert!(is_token(token), "{token:?} was accepted as a token");
        }
        if let Some(key) = &notification.collapse_key {
            assert!(is_token(key.as_str()));
        }
        // A page is read with two more levels than a notification (its own map and array), so
        // that any page of valid notifications reads back: a payload in it may be as deep as in a
        // notification (the notification's map above it), and no deeper.
        assert_payload_depth(&notification.payload, 1);
    }
    let position = page.next_position();
    assert_eq!(
        (position.cursor, position.epoch, position.cursor_time_ms),
        (page.next_cursor, Some(page.epoch), page.next_cursor_time_ms)
    );
    assert_round_trip(&page, data, PullPage::encode, PullPage::decode);
});
