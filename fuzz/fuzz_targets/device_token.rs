//! A device token as reno's authorization service reads it from a device's CONNECT:
//! `TokenKeys::verify` against a development key set. The input is tried twice: as the token itself
//! (text, lossily), and as the header or the claims of a token the development key signs, so that
//! the fuzzer also reaches what is read after the signature. Whatever is accepted must be a token
//! the key signed, byte for byte, with an EdDSA header and an audience, expiry and identity that
//! hold (the token rule written out again in `fuzz/src/lib.rs`).

#![no_main]

use std::sync::LazyLock;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use reno_auth::{
    DeviceIdentity, TokenKeys, TokenRefusal,
    device_token::{CLOCK_LEEWAY_SECS, MAX_TOKEN_BYTES},
};
use reno_fuzz::{
    dev_token::{self, AUDIENCE, KID, NOW},
    is_token,
};
use serde_json::Value;

static KEYS: LazyLock<TokenKeys> = LazyLock::new(dev_token::token_keys);

/// The header of the development key's own tokens, and one that names no key.
const HEADER: &str = r#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#;
const HEADER_NO_KID: &str = r#"{"alg":"EdDSA"}"#;
/// Claims that pass at [`NOW`].
const CLAIMS: &str =
    r#"{"aud":"reno","member":"m1","device_type":"tv","device_id":"d1","iat":1800000000,"exp":1800003600}"#;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text, KEYS.verify(&text, NOW));

    // The first byte chooses which part the rest is.
    let Some((selector, raw)) = data.split_first() else { return };
    let token = match selector % 4 {
        0 => dev_token::sign(HEADER.as_bytes(), raw),
        1 => dev_token::sign(HEADER_NO_KID.as_bytes(), raw),
        _ => dev_token::sign(raw, CLAIMS.as_bytes()),
    };
    let verdict = KEYS.verify(&token, NOW);
    // The development key signed it: the signature fails only for a header naming the other key.
    if verdict == Err(TokenRefusal::BadSignature) {
        let kid = header_kid(raw);
        assert!(selector % 4 >= 2 && kid.is_some_and(|kid| kid != KID), "{token:?} failed its signature");
    }
    check(&token, verdict);
});

fn check(token: &str, verdict: Result<DeviceIdentity, TokenRefusal>) {
    if token.is_empty() {
        assert_eq!(verdict, Err(TokenRefusal::Missing));
    }
    // The size is held before anything is parsed.
    if token.len() > MAX_TOKEN_BYTES {
        assert_eq!(verdict, Err(TokenRefusal::Malformed("too long")));
    }
    if let Ok(identity) = verdict {
        check_accepted(token, &identity);
    }
}

/// An accepted token is one the development key signed, byte for byte, and says what it must.
fn check_accepted(token: &str, identity: &DeviceIdentity) {
    assert!(token.len() <= MAX_TOKEN_BYTES);
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        panic!("a token of {} parts was accepted: {token:?}", parts.len())
    };
    let signed = format!("{header}.{claims}");
    assert_eq!(signature, dev_token::signature(&signed), "a token the key did not sign was accepted");

    let header = json(header);
    assert!(matches!(header["alg"].as_str(), Some("EdDSA" | "Ed25519")), "accepted with header {header}");
    assert!(header.get("crit").is_none(), "accepted with header {header}");
    assert!(header["kid"].as_str().is_none_or(|kid| kid == KID), "accepted with header {header}");

    let claims = json(claims);
    assert_eq!(claims["exp"].as_u64(), Some(identity.expires_at), "claims {claims}");
    assert!(NOW < identity.expires_at.saturating_add(CLOCK_LEEWAY_SECS), "accepted expired: {claims}");
    if let Some(not_before) = claims["nbf"].as_u64() {
        assert!(not_before <= NOW + CLOCK_LEEWAY_SECS, "accepted before its time: {claims}");
    }
    let audience = match &claims["aud"] {
        Value::String(audience) => audience == AUDIENCE,
        Value::Array(audiences) => audiences.iter().any(|audience| audience == AUDIENCE),
        _ => false,
    };
    assert!(audience, "accepted for another audience: {claims}");
    for (claim, value) in [
        ("member", identity.member.as_str()),
        ("device_type", identity.device_type.as_str()),
        ("device_id", identity.device_id.as_str()),
    ] {
        assert!(is_token(value), "{claim} {value:?} was accepted as a token");
        assert_eq!(claims[claim].as_str(), Some(value), "claims {claims}");
    }
}

/// A part of an accepted token, read on its own.
fn json(part: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD.decode(part).expect("an accepted token's parts are base64url");
    serde_json::from_slice(&bytes).expect("an accepted token's parts are JSON")
}

/// The key a header names, if it is JSON naming one.
fn header_kid(header: &[u8]) -> Option<String> {
    let header: Value = serde_json::from_slice(header).ok()?;
    Some(header.get("kid")?.as_str()?.to_owned())
}
