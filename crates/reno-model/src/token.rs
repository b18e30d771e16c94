//! Subject tokens: every name that ends up inside a NATS subject or a KV key (member id, event type,
//! device type, event id, collapse key) is one of these, validated on the way in. A token is 1 to 64
//! ASCII letters, digits, `-` or `_`: nothing that could add a subject level (`.`), a wildcard (`*`,
//! `>`), white space or a control character. This is a security boundary, not a nicety.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 64;

/// Why a string is not a safe token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{kind} {value:?} is not accepted: {problem}; use 1 to {MAX_TOKEN_LEN} ASCII letters, digits, '-' or '_'"
)]
pub struct TokenError {
    /// Which kind of token was being read ("member id", "event type", ...).
    pub kind: &'static str,
    /// The offending value, cut to a readable length.
    pub value: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// Checks that `value` is a safe token; `kind` names it in the error.
pub fn check_token(kind: &'static str, value: &str) -> Result<(), TokenError> {
    let problem = if value.is_empty() {
        Some("it is empty")
    } else if value.len() > MAX_TOKEN_LEN {
        Some("it is too long")
    } else if value.contains('.') {
        Some("it contains '.'")
    } else if value.contains(['*', '>']) {
        Some("it contains a wildcard")
    } else if value.chars().any(char::is_whitespace) {
        Some("it contains white space")
    } else if !value.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_') {
        Some("it contains a character outside the accepted set")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(TokenError { kind, value: value.chars().take(80).collect(), problem }),
    }
}

macro_rules! token_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// What this token is called in error messages.
            pub const KIND: &'static str = $kind;

            /// Validates `value` as this kind of token.
            pub fn new(value: impl Into<String>) -> Result<Self, TokenError> {
                let value = value.into();
                check_token($kind, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = TokenError;
            fn try_from(value: String) -> Result<Self, TokenError> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = TokenError;
            fn from_str(value: &str) -> Result<Self, TokenError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(token: $name) -> String {
                token.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }
    };
}

token_type!(
    /// The member (account) an event is about; every device of the member sees it.
    MemberId,
    "member id"
);
token_type!(
    /// An event type from the registry, such as `plan_changed`.
    EventType,
    "event type"
);
token_type!(
    /// A kind of device (`mobile`, `tv`, ...) as listed in the registry.
    DeviceType,
    "device type"
);
token_type!(
    /// The publisher's unique id of one event (of one type and member); sent, scoped by type and
    /// member, as `Nats-Msg-Id`.
    EventId,
    "event id"
);
token_type!(
    /// Events of a collapsing type with the same collapse key replace each other in history.
    CollapseKey,
    "collapse key"
);
token_type!(
    /// One device of a member, as the operator's identity system names it in the device's token;
    /// unique within the member.
    DeviceId,
    "device id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_tokens() {
        for value in ["m1", "member-42", "plan_changed", "A", &"x".repeat(MAX_TOKEN_LEN)] {
            assert!(MemberId::new(value).is_ok(), "{value}");
        }
    }

    #[test]
    fn rejects_what_could_escape_a_subject() {
        let cases = [
            ("", "it is empty"),
            ("a.b", "it contains '.'"),
            ("*", "it contains a wildcard"),
            ("a>", "it contains a wildcard"),
            ("a b", "it contains white space"),
            ("a\tb", "it contains white space"),
            ("a\u{0}b", "it contains a character outside the accepted set"),
            ("mémbre", "it contains a character outside the accepted set"),
            ("a/b", "it contains a character outside the accepted set"),
        ];
        for (value, problem) in cases {
            let error = MemberId::new(value).unwrap_err();
            assert_eq!(error.problem, problem, "{value:?}");
        }
        let too_long = "x".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(MemberId::new(too_long).unwrap_err().problem, "it is too long");
    }

    #[test]
    fn error_says_what_is_accepted() {
        let message = EventType::new("plan.changed").unwrap_err().to_string();
        assert_eq!(
            message,
            "event type \"plan.changed\" is not accepted: it contains '.'; \
             use 1 to 64 ASCII letters, digits, '-' or '_'"
        );
    }
}
