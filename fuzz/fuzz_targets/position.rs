//! A saved position as the device command reads it (`reno device --from`): `Position::from_str`,
//! with `Display` as its inverse.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reno_model::Position;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(position) = text.parse::<Position>() {
        // Only digits (u64's parser also takes a leading '+') and at most two separators.
        assert!(text.bytes().all(|byte| byte.is_ascii_digit() || byte == b':' || byte == b'+'), "{text:?}");
        assert!(text.matches(':').count() <= 2, "{text:?}");
        let written = position.to_string();
        assert_eq!(written.parse::<Position>(), Ok(position), "{text:?} was written as {written:?}");
    }
    // The other way round: every position, written out, reads back as itself.
    if let Some(position) = position_from(data) {
        let written = position.to_string();
        assert_eq!(written.parse::<Position>(), Ok(position), "{position:?} was written as {written:?}");
    }
});

/// A position made of the input's first 25 bytes: three numbers and which of the two optional
/// parts are known.
fn position_from(data: &[u8]) -> Option<Position> {
    let number = |at: usize| Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?));
    let known = *data.get(24)?;
    Some(Position {
        cursor: number(0)?,
        epoch: (known & 1 != 0).then_some(number(8)?),
        cursor_time_ms: (known & 2 != 0).then_some(number(16)?),
    })
}
