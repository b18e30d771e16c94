//! NATS JWTs (nats-io/jwt v2): JSON claims signed with an nkey (`alg: ed25519-nkey`), the format of
//! an auth callout's request (signed by the server), its response, and the user JWT inside it (both
//! signed by the callout issuer's account key).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use nkeys::KeyPair;
use serde_json::{Value, json};

/// Why a NATS JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatsJwtError {
    #[error("not a NATS JWT: {0}")]
    Malformed(String),
    #[error("signed by {issuer}, which is not a {expected} key")]
    WrongIssuerKind { issuer: String, expected: char },
    #[error("the signature does not verify")]
    BadSignature,
}

/// The header every NATS JWT carries, base64url-encoded.
fn header() -> String {
    URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#)
}

/// Signs `claims` with `signer`, which becomes the issuer (`iss`); `iat` is `now` (Unix seconds) and
/// `jti` a hash of the claims (nats-io/jwt uses SHA-512/256; the server only needs a unique id).
pub fn encode(mut claims: Value, signer: &KeyPair, now: u64) -> String {
    let object = claims.as_object_mut().expect("claims are a JSON object");
    object.insert("iss".into(), json!(signer.public_key()));
    object.insert("iat".into(), json!(now));
    object.remove("jti");
    let digest = claims_hash(&serde_json::to_vec(&claims).expect("claims serialize"));
    claims.as_object_mut().expect("an object").insert("jti".into(), json!(digest));
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
    let signing_input = format!("{}.{payload}", header());
    let signature = signer.sign(signing_input.as_bytes()).expect("an nkey with a seed signs");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Reads a NATS JWT and checks its signature against its own issuer, which must be a key of
/// `issuer_kind` (`N` server, `A` account, `U` user). Whether that issuer is trusted is the
/// caller's question.
pub fn decode(token: &str, issuer_kind: char) -> Result<Value, NatsJwtError> {
    let malformed = |what: &str| NatsJwtError::Malformed(what.to_owned());
    let mut parts = token.trim().split('.');
    let (Some(header_part), Some(payload_part), Some(signature_part), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("it does not have three parts"));
    };
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_part).map_err(|_| malformed("header"))?)
            .map_err(|_| malformed("header"))?;
    if header.get("alg").and_then(Value::as_str) != Some("ed25519-nkey") {
        return Err(malformed("its alg is not ed25519-nkey"));
    }
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload_part).map_err(|_| malformed("claims"))?)
            .map_err(|_| malformed("claims"))?;
    let issuer = claims.get("iss").and_then(Value::as_str).ok_or_else(|| malformed("it has no iss"))?;
    if !issuer.starts_with(issuer_kind) {
        return Err(NatsJwtError::WrongIssuerKind { issuer: issuer.to_owned(), expected: issuer_kind });
    }
    let key = KeyPair::from_public_key(issuer).map_err(|_| malformed("its iss is not an nkey"))?;
    let signature = URL_SAFE_NO_PAD.decode(signature_part).map_err(|_| malformed("signature"))?;
    key.verify(format!("{header_part}.{payload_part}").as_bytes(), &signature)
        .map_err(|_| NatsJwtError::BadSignature)?;
    Ok(claims)
}

/// The first 32 bytes of SHA-512 of `bytes`, in unpadded base32: the form of a NATS JWT's `jti`.
fn claims_hash(bytes: &[u8]) -> String {
    use ed25519_dalek::Digest;
    let digest = ed25519_dalek::Sha512::digest(bytes);
    base32(&digest[..32])
}

/// RFC 4648 base32 without padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_encoded_decodes_and_verifies() {
        let account = KeyPair::new_account();
        let token = encode(json!({"sub": "UABC", "nats": {"type": "user"}}), &account, 1_700_000_000);
        let claims = decode(&token, 'A').unwrap();
        assert_eq!(claims["iss"], account.public_key());
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["nats"]["type"], "user");
        assert!(claims["jti"].as_str().is_some_and(|jti| jti.len() == 52));
        assert_eq!(
            decode(&token, 'N').unwrap_err(),
            NatsJwtError::WrongIssuerKind { issuer: account.public_key(), expected: 'N' }
        );
    }

    #[test]
    fn a_tampered_or_foreign_token_is_refused() {
        let account = KeyPair::new_account();
        let token = encode(json!({"sub": "UABC"}), &account, 1);
        let (head, rest) = token.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let forged_claims =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"UEVIL","iss":"{}"}}"#, account.public_key()));
        let forged = format!("{head}.{forged_claims}.{signature}");
        assert_eq!(decode(&forged, 'A').unwrap_err(), NatsJwtError::BadSignature);
        assert!(matches!(decode("a.b", 'A'), Err(NatsJwtError::Malformed(_))));
        let none_alg = format!("{}.{forged_claims}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#));
        assert!(matches!(decode(&none_alg, 'A'), Err(NatsJwtError::Malformed(_))));
    }

    #[test]
    fn base32_matches_rfc_4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
    }
}
