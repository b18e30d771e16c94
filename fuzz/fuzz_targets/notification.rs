//! A notification as a device reads it from a push: `Notification::decode`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reno_fuzz::{assert_payload_depth, assert_round_trip, is_token};
use reno_model::{Notification, codec::DecodeError, notification::MAX_NOTIFICATION_BYTES};

fuzz_target!(|data: &[u8]| {
    let decoded = Notification::decode(data);
    if data.len() > MAX_NOTIFICATION_BYTES {
        assert!(matches!(decoded, Err(DecodeError::TooLarge { .. })));
    }
    let Ok(notification) = decoded else { return };
    check_notification(&notification);
    assert_round_trip(&notification, data, Notification::encode, Notification::decode);
});

fn check_notification(notification: &Notification) {
    let tokens = [
        notification.id.as_str(),
        notification.event_type.as_str(),
        notification.member.as_str(),
        notification.device_type.as_str(),
    ];
    for token in tokens.into_iter().chain(notification.collapse_key.as_ref().map(|key| key.as_str())) {
        assert!(is_token(token), "{token:?} was accepted as a token");
    }
    assert_payload_depth(&notification.payload, 1);
}
