//! Device tokens. The operator's own identity system issues each device a JWT signed with EdDSA
//! (Ed25519) that names its member, device type and device id and expires; reno verifies it against
//! the operator's public keys (a JWKS, several keys at once so that they can rotate) and never holds
//! the operator's private key. Generating a key and minting a token are for development only.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use reno_model::{DeviceId, DeviceType, MemberId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The audience a device token must name unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "reno";
/// How far the identity system's clock and reno's may disagree, for `exp` and `nbf`.
pub const CLOCK_LEEWAY_SECS: u64 = 30;
/// The longest token accepted, encoded: far above any honest token, well below a NATS CONNECT line.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Who a verified token says the device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub member: MemberId,
    pub device_type: DeviceType,
    pub device_id: DeviceId,
    /// When the token expires, in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Why a token was refused. The reason goes to reno's log and metrics, never to the device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("no token")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm {0:?} is not accepted; only EdDSA (Ed25519)")]
    Algorithm(String),
    #[error("no configured key has id {0:?}")]
    UnknownKey(String),
    #[error("the signature does not verify with any configured key")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("the audience is not {0:?}")]
    Audience(String),
    #[error("claim {claim} is not accepted: {problem}")]
    Claim { claim: &'static str, problem: String },
}

impl TokenRefusal {
    /// A short stable label for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            TokenRefusal::Missing => "missing",
            TokenRefusal::Malformed(_) => "malformed",
            TokenRefusal::Algorithm(_) => "algorithm",
            TokenRefusal::UnknownKey(_) => "unknown_key",
            TokenRefusal::BadSignature => "bad_signature",
            TokenRefusal::Expired => "expired",
            TokenRefusal::NotYetValid => "not_yet_valid",
            TokenRefusal::Audience(_) => "audience",
            TokenRefusal::Claim { .. } => "bad_claim",
        }
    }
}

/// Why a key set could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a JWKS: {0}")]
    Json(String),
    #[error("key {index}: {problem}")]
    Key { index: usize, problem: String },
    #[error("the key set holds no key")]
    Empty,
}

/// One key as a JSON Web Key (RFC 8037: `kty` OKP, `crv` Ed25519); `d` only in a private key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    pub x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

/// The operator's public keys, and what a token must say to be accepted.
#[derive(Debug, Clone)]
pub struct TokenKeys {
    /// Each key with its id, if it has one.
    keys: Vec<(Option<String>, VerifyingKey)>,
    /// The `aud` a token must name.
    audience: String,
}

impl TokenKeys {
    /// Reads a JWKS (`{"keys": [...]}`); every key must be an Ed25519 public key.
    pub fn from_jwks(text: &str, audience: &str) -> Result<Self, KeyError> {
        let jwks: Jwks = serde_json::from_str(text).map_err(|error| KeyError::Json(error.to_string()))?;
        let mut keys = Vec::new();
        for (index, jwk) in jwks.keys.into_iter().enumerate() {
            let problem = |problem: &str| KeyError::Key { index, problem: problem.to_owned() };
            if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
                return Err(problem("only Ed25519 keys (kty OKP, crv Ed25519) are accepted"));
            }
            let bytes: [u8; 32] = URL_SAFE_NO_PAD
                .decode(&jwk.x)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| problem("x is not 32 bytes of base64url"))?;
            let key =
                VerifyingKey::from_bytes(&bytes).map_err(|_| problem("x is not an Ed25519 public key"))?;
            keys.push((jwk.kid, key));
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(TokenKeys { keys, audience: audience.to_owned() })
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<DeviceIdentity, TokenRefusal> {
        if token.is_empty() {
            return Err(TokenRefusal::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenRefusal::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(header_part), Some(claims_part), Some(signature_part), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenRefusal::Malformed("not three parts"));
        };
        let header = json_part(header_part, "header")?;
        let algorithm = header.get("alg").and_then(Value::as_str).unwrap_or_default();
        // Only EdDSA: a token naming "none", an HMAC or RSA algorithm is refused before any key is
        // touched, so no key can be used as something it is not.
        if algorithm != "EdDSA" && algorithm != "Ed25519" {
            return Err(TokenRefusal::Algorithm(algorithm.chars().take(20).collect()));
        }
        if header.get("crit").is_some() {
            return Err(TokenRefusal::Malformed("critical header extensions are not supported"));
        }
        let signature: [u8; 64] = URL_SAFE_NO_PAD
            .decode(signature_part)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(TokenRefusal::Malformed("signature"))?;
        let signature = Signature::from_bytes(&signature);
        let signed = format!("{header_part}.{claims_part}");
        let candidates: Vec<&VerifyingKey> = match header.get("kid").and_then(Value::as_str) {
            Some(kid) => {
                let key = self.keys.iter().find(|(id, _)| id.as_deref() == Some(kid));
                vec![&key.ok_or_else(|| TokenRefusal::UnknownKey(kid.chars().take(64).collect()))?.1]
            }
            None => self.keys.iter().map(|(_, key)| key).collect(),
        };
        if !candidates.iter().any(|key| key.verify_strict(signed.as_bytes(), &signature).is_ok()) {
            return Err(TokenRefusal::BadSignature);
        }
        let claims = json_part(claims_part, "claims")?;
        self.check_claims(&claims, now)
    }

    fn check_claims(&self, claims: &Value, now: u64) -> Result<DeviceIdentity, TokenRefusal> {
        let expires_at = claims.get("exp").and_then(Value::as_u64).ok_or(TokenRefusal::Claim {
            claim: "exp",
            problem: "missing or not a whole number of seconds".into(),
        })?;
        if now >= expires_at.saturating_add(CLOCK_LEEWAY_SECS) {
            return Err(TokenRefusal::Expired);
        }
        if let Some(not_before) = claims.get("nbf").and_then(Value::as_u64)
            && now.saturating_add(CLOCK_LEEWAY_SECS) < not_before
        {
            return Err(TokenRefusal::NotYetValid);
        }
        let audience_matches = match claims.get("aud") {
            Some(Value::String(audience)) => *audience == self.audience,
            Some(Value::Array(audiences)) => {
                audiences.iter().any(|audience| audience.as_str() == Some(&self.audience))
            }
            _ => false,
        };
        if !audience_matches {
            return Err(TokenRefusal::Audience(self.audience.clone()));
        }
        let text = |claim: &'static str| {
            claims
                .get(claim)
                .and_then(Value::as_str)
                .ok_or(TokenRefusal::Claim { claim, problem: "missing or not text".into() })
        };
        let invalid = |claim: &'static str| {
            move |error: reno_model::TokenError| TokenRefusal::Claim {
                claim,
                problem: error.problem.to_owned(),
            }
        };
        Ok(DeviceIdentity {
            member: MemberId::new(text("member")?).map_err(invalid("member"))?,
            device_type: DeviceType::new(text("device_type")?).map_err(invalid("device_type"))?,
            device_id: DeviceId::new(text("device_id")?).map_err(invalid("device_id"))?,
            expires_at,
        })
    }
}

fn json_part(part: &str, what: &'static str) -> Result<Value, TokenRefusal> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenRefusal::Malformed(what))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| TokenRefusal::Malformed(what))?;
    if !value.is_object() {
        return Err(TokenRefusal::Malformed(what));
    }
    Ok(value)
}

/// A development signing key: what an operator's identity system holds, never reno in production.
#[derive(Debug, Clone)]
pub struct DevSigningKey {
    kid: String,
    key: SigningKey,
}

impl DevSigningKey {
    /// A new random key with id `kid`.
    pub fn generate(kid: &str) -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the system has randomness");
        DevSigningKey { kid: kid.to_owned(), key: SigningKey::from_bytes(&seed) }
    }

    /// Reads a private JWK (with `d`), as written by [`DevSigningKey::private_jwk`].
    pub fn from_jwk(text: &str) -> Result<Self, KeyError> {
        let jwk: Jwk = serde_json::from_str(text).map_err(|error| KeyError::Json(error.to_string()))?;
        let problem = |problem: &str| KeyError::Key { index: 0, problem: problem.to_owned() };
        let seed: [u8; 32] = jwk
            .d
            .as_deref()
            .and_then(|d| URL_SAFE_NO_PAD.decode(d).ok())
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| problem("d is not 32 bytes of base64url: not a private Ed25519 key"))?;
        Ok(DevSigningKey { kid: jwk.kid.unwrap_or_default(), key: SigningKey::from_bytes(&seed) })
    }

    /// The private key as a JWK, to keep in a file only the token minter reads.
    pub fn private_jwk(&self) -> String {
        let mut jwk = self.public_jwk();
        jwk.d = Some(URL_SAFE_NO_PAD.encode(self.key.to_bytes()));
        serde_json::to_string_pretty(&jwk).expect("a JWK serializes")
    }

    /// The public half, as a JWK for a key set.
    pub fn public_jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: Some(self.kid.clone()),
            x: URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes()),
            d: None,
        }
    }

    /// Mints a token for `identity` (its `expires_at` is the token's `exp`), issued at `now`.
    pub fn mint(&self, identity: &DeviceIdentity, audience: &str, now: u64) -> String {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid});
        let claims = json!({
            "iss": "reno-dev",
            "aud": audience,
            "sub": format!("{}/{}/{}", identity.member, identity.device_type, identity.device_id),
            "member": identity.member.as_str(),
            "device_type": identity.device_type.as_str(),
            "device_id": identity.device_id.as_str(),
            "iat": now,
            "exp": identity.expires_at,
        });
        let encode =
            |value: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("JSON serializes"));
        let signed = format!("{}.{}", encode(&header), encode(&claims));
        let signature = self.key.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }
}

/// A key set (JWKS) of public keys.
pub fn jwks(keys: &[Jwk]) -> String {
    serde_json::to_string_pretty(&json!({ "keys": keys })).expect("a JWKS serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn identity(member: &str) -> DeviceIdentity {
        DeviceIdentity {
            member: MemberId::new(member).unwrap(),
            device_type: DeviceType::new("tv").unwrap(),
            device_id: DeviceId::new("d1").unwrap(),
            expires_at: NOW + 3600,
        }
    }

    fn forge(header: Value, claims: Value, key: &SigningKey) -> String {
        let encode = |value: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap());
        let signed = format!("{}.{}", encode(&header), encode(&claims));
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(key.sign(signed.as_bytes()).to_bytes()))
    }

    #[test]
    fn a_token_from_either_configured_key_is_accepted() {
        let (old, new) = (DevSigningKey::generate("k1"), DevSigningKey::generate("k2"));
        let keys = TokenKeys::from_jwks(&jwks(&[old.public_jwk(), new.public_jwk()]), "reno").unwrap();
        for key in [&old, &new] {
            let token = key.mint(&identity("m1"), "reno", NOW);
            assert_eq!(keys.verify(&token, NOW).unwrap(), identity("m1"));
        }
        let again = DevSigningKey::from_jwk(&old.private_jwk()).unwrap();
        assert_eq!(
            keys.verify(&again.mint(&identity("m2"), "reno", NOW), NOW).unwrap().member.as_str(),
            "m2"
        );
    }

    #[test]
    fn what_an_attacker_can_send_is_refused() {
        let key = DevSigningKey::generate("k1");
        let stranger = DevSigningKey::generate("k1");
        let keys = TokenKeys::from_jwks(&jwks(&[key.public_jwk()]), "reno").unwrap();
        let valid = key.mint(&identity("m1"), "reno", NOW);
        let claims = |member: &str, exp: u64| json!({"aud": "reno", "member": member, "device_type": "tv", "device_id": "d1", "exp": exp});
        let header = json!({"alg": "EdDSA", "kid": "k1"});
        let (head, rest) = valid.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let tampered =
            format!("{head}.{}.{signature}", URL_SAFE_NO_PAD.encode(claims("m2", NOW + 60).to_string()));
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims("m1", NOW + 60).to_string())
        );
        let cases = [
            (String::new(), "missing"),
            ("a.b".to_owned(), "malformed"),
            ("x".repeat(5000), "malformed"),
            (tampered, "bad_signature"),
            (unsigned, "algorithm"),
            (forge(json!({"alg": "HS256"}), claims("m1", NOW + 60), &key.key), "algorithm"),
            (stranger.mint(&identity("m1"), "reno", NOW), "bad_signature"),
            (forge(json!({"alg": "EdDSA", "kid": "k9"}), claims("m1", NOW + 60), &key.key), "unknown_key"),
            (forge(header.clone(), claims("m1", NOW - 60), &key.key), "expired"),
            (key.mint(&identity("m1"), "other", NOW), "audience"),
            (forge(header.clone(), claims("m1.x", NOW + 60), &key.key), "bad_claim"),
            (forge(header.clone(), claims("m*", NOW + 60), &key.key), "bad_claim"),
            (forge(header.clone(), claims(">", NOW + 60), &key.key), "bad_claim"),
            (forge(header.clone(), claims("a b", NOW + 60), &key.key), "bad_claim"),
            (forge(json!({"alg": "EdDSA", "crit": ["b64"]}), claims("m1", NOW + 60), &key.key), "malformed"),
        ];
        for (token, code) in cases {
            let refusal = keys.verify(&token, NOW).unwrap_err();
            assert_eq!(refusal.code(), code, "{refusal} for {token:.60}");
        }
        assert!(keys.verify(&valid, NOW).is_ok());
        assert_eq!(keys.verify(&valid, NOW + 3600 + CLOCK_LEEWAY_SECS).unwrap_err(), TokenRefusal::Expired);
    }

    #[test]
    fn key_sets_must_hold_ed25519_public_keys() {
        assert_eq!(TokenKeys::from_jwks(r#"{"keys": []}"#, "reno").unwrap_err(), KeyError::Empty);
        let rsa = r#"{"keys": [{"kty": "RSA", "crv": "", "x": ""}]}"#;
        assert!(TokenKeys::from_jwks(rsa, "reno").unwrap_err().to_string().contains("only Ed25519"));
    }
}
