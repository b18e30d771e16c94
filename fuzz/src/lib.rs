//! What the fuzz targets check, shared: the token rule written out on its own (not by calling
//! `reno_model::token::check_token`, which is under test), the nesting depth of a CBOR value, and that
//! a decoded message re-encodes to bytes its decoder reads back as the same message; and the
//! development key set of the device-token target (`dev_token`).

use reno_model::{Value, codec::MAX_NESTING};

pub mod dev_token;

/// The token rule of docs/protocol.md, from scratch: 1 to 64 ASCII letters, digits, `-` or `_`.
pub fn is_token(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// Levels of arrays, maps and tags in a value, as the decoder's nesting limit counts them in the
/// value's own encoding (0 for a scalar). A bignum (tag 2 or 3 on a byte string of at most 16
/// bytes) is one number to the decoder, read in one step, so it adds no level; on a longer byte
/// string the tag is read as a tag, one level.
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Map(entries) => {
            1 + entries.iter().map(|(key, item)| depth(key).max(depth(item))).max().unwrap_or(0)
        }
        Value::Tag(2 | 3, inner) if matches!(&**inner, Value::Bytes(bytes) if bytes.len() <= 16) => 0,
        Value::Tag(_, inner) => 1 + depth(inner),
        _ => 0,
    }
}

/// Checks that a payload read `levels_above` levels down (the message's own map, and for a page its
/// array and the notification's map) kept within the nesting limit.
pub fn assert_payload_depth(payload: &Value, levels_above: usize) {
    assert!(
        depth(payload) + levels_above <= MAX_NESTING,
        "a payload {} levels deep was accepted {levels_above} levels down",
        depth(payload)
    );
}

/// Checks a message that `decode` accepted from `input`: it re-encodes to bytes that read back as
/// the very same message (comparing bytes rather than values keeps a NaN in a payload equal to
/// itself). Re-encoding may grow a message whose input used a short form (a bignum read as an
/// integer comes back as a plain integer); then the re-encoded bytes may be over the decoder's size
/// limit, and only then may it refuse them. (`Envelope::decode` itself refuses an envelope whose
/// re-encoding would be over the limit, so that no message reno builds from it is.) One more round
/// may still change the bytes once: a bignum tag on an indefinite-length byte string is read as a
/// tag, written back with a definite length, and then read as the integer it is (the same number,
/// written differently; every message reno sends has had that round, so devices see the integer).
/// From the second round on the bytes must not change. Returns the re-encoded bytes.
pub fn assert_round_trip<T, E: std::fmt::Debug>(
    message: &T,
    input: &[u8],
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<T, E>,
) -> Vec<u8> {
    let encoded = encode(message);
    match decode(&encoded) {
        Ok(again) => {
            let twice = encode(&again);
            if twice != encoded {
                let settled = decode(&twice).map(|message| encode(&message));
                assert!(
                    matches!(&settled, Ok(bytes) if *bytes == twice),
                    "a re-encoded message reads back as another message, round after round"
                );
            }
        }
        Err(error) => assert!(
            encoded.len() > input.len(),
            "a message re-encoded to {} bytes from {} is refused: {error:?}",
            encoded.len(),
            input.len()
        ),
    }
    encoded
}
