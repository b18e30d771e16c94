//! The device-token setting of the `device_token` target and its seeds: a development signing key
//! made from a fixed seed (so that the checked-in seeds stay valid), the key set reno verifies
//! against, and the moment tokens are verified at.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer, SigningKey};
use reno_auth::{DevSigningKey, DeviceIdentity, TokenKeys, device_token};
use reno_model::{DeviceId, DeviceType, MemberId};

/// When every token is verified, in seconds since the Unix epoch.
pub const NOW: u64 = 1_800_000_000;
/// The id of the key that signs; the key set also holds a second key, which signs nothing.
pub const KID: &str = "k1";
/// The audience tokens must name.
pub const AUDIENCE: &str = device_token::DEFAULT_AUDIENCE;

const SEED: [u8; 32] = *b"reno-fuzz-device-token-key-seed!";
const OTHER_SEED: [u8; 32] = *b"reno-fuzz-other-key-signs-nothin";

/// The development key, read through reno-auth's own JWK reader.
pub fn dev_key() -> DevSigningKey {
    key_from_seed(KID, SEED)
}

/// The key set the target verifies against: the development key and one more, as during a rotation.
pub fn token_keys() -> TokenKeys {
    let public = [dev_key().public_jwk(), key_from_seed("k2", OTHER_SEED).public_jwk()];
    TokenKeys::from_jwks(&device_token::jwks(&public), AUDIENCE).expect("the development key set reads")
}

fn key_from_seed(kid: &str, seed: [u8; 32]) -> DevSigningKey {
    let d = URL_SAFE_NO_PAD.encode(seed);
    let jwk = format!(r#"{{"kty": "OKP", "crv": "Ed25519", "kid": "{kid}", "x": "", "d": "{d}"}}"#);
    DevSigningKey::from_jwk(&jwk).expect("a fixed private JWK reads")
}

/// The signature the development key gives `signed` (`<header>.<claims>`), base64url: Ed25519
/// signs deterministically, so a token the key signed carries exactly this.
pub fn signature(signed: &str) -> String {
    URL_SAFE_NO_PAD.encode(SigningKey::from_bytes(&SEED).sign(signed.as_bytes()).to_bytes())
}

/// A token of `header` and `claims` (any bytes), signed by the development key.
pub fn sign(header: &[u8], claims: &[u8]) -> String {
    let signed = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let signature = signature(&signed);
    format!("{signed}.{signature}")
}

/// An identity with these tokens, expiring at `expires_at`.
pub fn identity(member: &str, device_type: &str, device_id: &str, expires_at: u64) -> DeviceIdentity {
    DeviceIdentity {
        member: MemberId::new(member).expect("a valid member"),
        device_type: DeviceType::new(device_type).expect("a valid device type"),
        device_id: DeviceId::new(device_id).expect("a valid device id"),
        expires_at,
    }
}
