//! CBOR on the wire (RFC 8949), read with hard limits: a size cap checked before parsing and a
//! nesting cap enforced while parsing, so that no input can make a reader allocate or recurse without
//! bound. Every message reno sends or reads goes through here.

use serde::{Serialize, de::DeserializeOwned};

/// The largest event envelope accepted, encoded, in bytes.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// The deepest nesting of arrays and maps accepted anywhere in a message, the envelope's own levels
/// included (so an event's payload may nest about 14 levels deep).
pub const MAX_NESTING: usize = 16;

/// Why bytes could not be read as the expected message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is {size} bytes; at most {max} are accepted")]
    TooLarge { size: usize, max: usize },
    #[error("message nests deeper than {MAX_NESTING} levels of arrays and maps")]
    TooDeep,
    #[error("message is not valid CBOR of the expected shape: {0}")]
    Malformed(String),
}

/// The size of a message once encoded, without keeping the bytes.
pub fn encoded_len<T: Serialize>(message: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0 += data.len();
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    ciborium::into_writer(message, &mut counter).expect("counting cannot fail");
    counter.0
}

/// Encodes a message as CBOR.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256);
    ciborium::into_writer(message, &mut bytes).expect("CBOR encoding into a Vec cannot fail");
    bytes
}

/// Decodes a CBOR message of at most `max_bytes`, refusing deep nesting and unknown shapes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_bytes: usize) -> Result<T, DecodeError> {
    decode_nested(bytes, max_bytes, MAX_NESTING)
}

/// [`decode`] for a message that holds an event's payload `extra_levels` deeper than an envelope
/// does (a pull page: its map, its array, the notification's map), so that whatever nesting an
/// envelope may have, the messages built from it read back.
pub fn decode_nested<T: DeserializeOwned>(
    bytes: &[u8],
    max_bytes: usize,
    max_nesting: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge { size: bytes.len(), max: max_bytes });
    }
    let mut reader = bytes;
    let message = ciborium::de::from_reader_with_recursion_limit(&mut reader, max_nesting).map_err(
        |error| match error {
            ciborium::de::Error::RecursionLimitExceeded => DecodeError::TooDeep,
            ciborium::de::Error::Io(error) => DecodeError::Malformed(format!("truncated ({error})")),
            ciborium::de::Error::Syntax(offset) => {
                DecodeError::Malformed(format!("syntax error at byte {offset}"))
            }
            ciborium::de::Error::Semantic(_, message) => DecodeError::Malformed(message),
        },
    )?;
    if !reader.is_empty() {
        return Err(DecodeError::Malformed(format!("{} bytes left over after the message", reader.len())));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciborium::Value;

    fn nested(depth: usize) -> Value {
        (0..depth).fold(Value::Integer(1.into()), |inner, _| Value::Array(vec![inner]))
    }

    #[test]
    fn round_trips_and_refuses_trailing_bytes() {
        let bytes = encode(&vec![1u8, 2, 3]);
        assert_eq!(decode::<Vec<u8>>(&bytes, 100).unwrap(), [1, 2, 3]);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode::<Vec<u8>>(&longer, 100), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn refuses_oversized_input_before_parsing() {
        let bytes = encode(&"x".repeat(200));
        assert_eq!(decode::<String>(&bytes, 100), Err(DecodeError::TooLarge { size: bytes.len(), max: 100 }));
    }

    #[test]
    fn refuses_deep_nesting() {
        assert!(decode::<Value>(&encode(&nested(MAX_NESTING - 2)), 1000).is_ok());
        assert_eq!(decode::<Value>(&encode(&nested(MAX_NESTING + 1)), 1000), Err(DecodeError::TooDeep));
        // A hostile input: a million nested array headers in a small buffer.
        let hostile = vec![0x81u8; 60_000];
        assert_eq!(decode::<Value>(&hostile, MAX_EVENT_BYTES), Err(DecodeError::TooDeep));
    }

    #[test]
    fn refuses_garbage_and_truncation() {
        assert!(matches!(decode::<Value>(&[0xff, 0x00], 100), Err(DecodeError::Malformed(_))));
        let bytes = encode(&"hello");
        assert!(matches!(decode::<String>(&bytes[..3], 100), Err(DecodeError::Malformed(_))));
    }
}
