//! reno's authorization service: answers the NATS auth callout of the edge servers. A device sends
//! its token as the NATS auth token; the edge asks this service (`$SYS.REQ.USER.AUTH`, in the auth
//! account bridged to the hub) and gets back a user JWT placing the device in the devices account
//! with exactly its own subjects, expiring with its token. Requests and answers are encrypted with
//! curve keys (xkey) when the server offers one.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt;
use nkeys::{KeyPair, XKey};
use reno_model::subject;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::{
    device_token::{DeviceIdentity, TokenKeys},
    nats_jwt,
};

/// Where the servers send callout requests.
pub const CALLOUT_SUBJECT: &str = "$SYS.REQ.USER.AUTH";
/// The queue group of every copy of the service.
const QUEUE_GROUP: &str = "reno-auth";
/// Counter of callout requests by result: `allowed`, or why not.
pub const REQUESTS_METRIC: &str = "reno_auth_requests_total";
/// Histogram of seconds spent answering one request.
pub const LATENCY_METRIC: &str = "reno_auth_request_seconds";
/// Requests answered at once.
const MAX_CONCURRENT: usize = 256;
/// How long a callout response is valid for the server.
const RESPONSE_LIFETIME_SECS: u64 = 10;

/// What the service needs.
pub struct CalloutConfig {
    /// The operator's public keys for device tokens.
    pub token_keys: TokenKeys,
    /// The account key named as `issuer` in the edges' `auth_callout`: signs every answer.
    pub issuer: KeyPair,
    /// The curve key named as `xkey` in the edges' `auth_callout`, if requests are encrypted.
    pub xkey: Option<XKey>,
    /// The account devices are placed in (`DEVICES`).
    pub account: String,
    /// The longest a device connection lives before it must connect (and show a token) again.
    pub max_connection: Duration,
}

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum CalloutError {
    #[error("cannot subscribe to {CALLOUT_SUBJECT}: {0}")]
    Subscribe(async_nats::SubscribeError),
}

/// Answers callout requests on `client` until `shutdown` completes.
pub async fn run(
    client: async_nats::Client,
    config: CalloutConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CalloutError> {
    let mut requests = client
        .queue_subscribe(CALLOUT_SUBJECT, QUEUE_GROUP.to_owned())
        .await
        .map_err(CalloutError::Subscribe)?;
    // Said once the server has the subscription: from then on, devices can connect. (Without a
    // connection the client subscribes again when it is back.)
    if let Err(error) = client.flush().await {
        warn!(%error, "the callout subscription is not confirmed yet");
    }
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
    info!(subject = CALLOUT_SUBJECT, account = config.account, "authorization service started");
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let request = tokio::select! {
            () = &mut shutdown => break,
            request = requests.next() => match request {
                Some(request) => request,
                None => break,
            },
        };
        let (client, config) = (client.clone(), config.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let Some(reply) = request.reply.clone() else { return };
            let server_xkey = request.headers.as_ref().and_then(|headers| headers.get("Nats-Server-Xkey"));
            let answer = answer(&config, &request.payload, server_xkey.map(|key| key.as_str()), now());
            match answer {
                Ok((bytes, result)) => {
                    metrics::counter!(REQUESTS_METRIC, "result" => result).increment(1);
                    if let Err(error) = client.publish(reply, bytes.into()).await {
                        warn!(%error, "cannot send the callout answer");
                    }
                }
                Err(error) => {
                    // Not a request a server sent: nothing to answer; the server times out.
                    metrics::counter!(REQUESTS_METRIC, "result" => "bad_request").increment(1);
                    warn!(%error, "callout request dropped");
                }
            }
            metrics::histogram!(LATENCY_METRIC).record(started.elapsed().as_secs_f64());
            drop(permit);
        });
    }
    let _ = requests.unsubscribe().await;
    let _ = permits.acquire_many(MAX_CONCURRENT as u32).await;
    let _ = client.flush().await;
    info!("authorization service stopped");
    Ok(())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// Why a request could not be answered at all.
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
    #[error("the request is encrypted but no xkey is configured")]
    NoXkey,
    #[error("not an authorization request: {0}")]
    Request(String),
}

/// The answer to one request (encrypted for the server when it sent its xkey), with the result
/// label for metrics: `allowed`, or the refusal's code.
pub fn answer(
    config: &CalloutConfig,
    payload: &[u8],
    server_xkey: Option<&str>,
    now: u64,
) -> Result<(Vec<u8>, &'static str), BadRequest> {
    let server_key = match server_xkey {
        Some(key) => {
            let ours = config.xkey.as_ref().ok_or(BadRequest::NoXkey)?;
            Some((ours, XKey::from_public_key(key).map_err(|error| BadRequest::Decrypt(error.to_string()))?))
        }
        None => None,
    };
    let plain = match &server_key {
        Some((ours, theirs)) => {
            ours.open(payload, theirs).map_err(|error| BadRequest::Decrypt(error.to_string()))?
        }
        None => payload.to_vec(),
    };
    let token = std::str::from_utf8(&plain).map_err(|_| BadRequest::Request("not UTF-8".into()))?;
    let request = nats_jwt::decode(token, 'N').map_err(|error| BadRequest::Request(error.to_string()))?;
    let field = |path: &[&str]| {
        path.iter()
            .try_fold(&request, |value, key| value.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    if field(&["aud"]) != "nats-authorization-request" || field(&["nats", "type"]) != "authorization_request"
    {
        return Err(BadRequest::Request("its audience or type is not an authorization request".into()));
    }
    let (user_nkey, server_id) = (field(&["nats", "user_nkey"]), field(&["nats", "server_id", "id"]));
    if server_id != field(&["iss"]) {
        return Err(BadRequest::Request("it is not signed by the server it names".into()));
    }
    let device_token = field(&["nats", "connect_opts", "auth_token"]);

    let mut response = json!({
        "sub": user_nkey,
        "aud": server_id,
        "exp": now + RESPONSE_LIFETIME_SECS,
        "nats": { "type": "authorization_response", "version": 2 },
    });
    let result = match config.token_keys.verify(&device_token, now) {
        Ok(identity) => {
            debug!(member = %identity.member, device_type = %identity.device_type, device_id = %identity.device_id, "device allowed");
            let user = user_claims(&identity, &user_nkey, &config.account, now, config.max_connection);
            response["nats"]["jwt"] = json!(nats_jwt::encode(user, &config.issuer, now));
            "allowed"
        }
        Err(refusal) => {
            info!(reason = %refusal, client = field(&["nats", "client_info", "host"]), "device refused");
            // The device learns only that it is not authorized.
            response["nats"]["error"] = json!("not authorized");
            refusal.code()
        }
    };
    let signed = nats_jwt::encode(response, &config.issuer, now).into_bytes();
    let bytes = match &server_key {
        Some((ours, theirs)) => {
            ours.seal(&signed, theirs).map_err(|error| BadRequest::Decrypt(error.to_string()))?
        }
        None => signed,
    };
    Ok((bytes, result))
}

/// The NATS user a device becomes: in the devices account, allowed exactly its own subjects, until
/// its token expires (or `max_connection` from now, if sooner).
pub fn user_claims(
    identity: &DeviceIdentity,
    user_nkey: &str,
    account: &str,
    now: u64,
    max_connection: Duration,
) -> Value {
    let (member, device_type, device_id) = (&identity.member, &identity.device_type, &identity.device_id);
    let push = subject::push_subject(member, device_type);
    let inbox = format!("{}.>", subject::device_inbox_prefix(member, device_type, device_id));
    json!({
        "sub": user_nkey,
        "aud": account,
        "name": format!("{member}/{device_type}/{device_id}"),
        "exp": identity.expires_at.min(now + max_connection.as_secs()),
        "nats": {
            "pub": { "allow": [
                subject::pull_subject(member, device_type),
                subject::presence_subject(member, device_type, device_id),
            ] },
            // Its own pushes and replies, and no queue subscription even on those.
            "sub": {
                "allow": [push.clone(), inbox.clone()],
                "deny": [format!("{push} *"), format!("{inbox} *")],
            },
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        },
    })
}

#[cfg(test)]
mod tests {
    use reno_model::{DeviceId, DeviceType, MemberId};

    use super::*;
    use crate::device_token::{DevSigningKey, jwks};

    const NOW: u64 = 1_800_000_000;

    fn request(server: &KeyPair, token: &str) -> String {
        let claims = json!({
            "aud": "nats-authorization-request",
            "sub": "ACALLOUT",
            "exp": NOW + 2,
            "nats": {
                "type": "authorization_request",
                "version": 2,
                "user_nkey": "UDEVICE",
                "server_id": { "id": server.public_key(), "name": "edge1" },
                "connect_opts": { "auth_token": token },
                "client_info": { "host": "127.0.0.1" },
            },
        });
        nats_jwt::encode(claims, server, NOW)
    }

    fn config(key: &DevSigningKey, xkey: Option<XKey>) -> CalloutConfig {
        CalloutConfig {
            token_keys: TokenKeys::from_jwks(&jwks(&[key.public_jwk()]), "reno").unwrap(),
            issuer: KeyPair::new_account(),
            xkey,
            account: "DEVICES".into(),
            max_connection: Duration::from_secs(24 * 3600),
        }
    }

    fn identity() -> DeviceIdentity {
        DeviceIdentity {
            member: MemberId::new("m1").unwrap(),
            device_type: DeviceType::new("tv").unwrap(),
            device_id: DeviceId::new("d1").unwrap(),
            expires_at: NOW + 600,
        }
    }

    #[test]
    fn a_valid_token_becomes_a_user_with_only_its_own_subjects() {
        let key = DevSigningKey::generate("k1");
        let config = config(&key, None);
        let server = KeyPair::new_server();
        let token = key.mint(&identity(), "reno", NOW);
        let (bytes, result) = answer(&config, request(&server, &token).as_bytes(), None, NOW).unwrap();
        assert_eq!(result, "allowed");
        let response = nats_jwt::decode(std::str::from_utf8(&bytes).unwrap(), 'A').unwrap();
        assert_eq!(response["iss"], config.issuer.public_key());
        assert_eq!(
            (response["sub"].as_str(), response["aud"].as_str()),
            (Some("UDEVICE"), Some(server.public_key().as_str()))
        );
        let user = nats_jwt::decode(response["nats"]["jwt"].as_str().unwrap(), 'A').unwrap();
        assert_eq!(user["aud"], "DEVICES");
        assert_eq!(user["exp"], NOW + 600);
        assert_eq!(user["nats"]["pub"]["allow"], json!(["reno.pull.m1.tv", "reno.presence.m1.tv.d1"]));
        assert_eq!(user["nats"]["sub"]["allow"], json!(["reno.ntf.m1.tv", "_INBOX.m1.tv.d1.>"]));
    }

    #[test]
    fn a_refused_token_gets_an_error_and_no_user() {
        let key = DevSigningKey::generate("k1");
        let config = config(&key, None);
        let server = KeyPair::new_server();
        let stranger = DevSigningKey::generate("k1").mint(&identity(), "reno", NOW);
        let (bytes, result) = answer(&config, request(&server, &stranger).as_bytes(), None, NOW).unwrap();
        assert_eq!(result, "bad_signature");
        let response = nats_jwt::decode(std::str::from_utf8(&bytes).unwrap(), 'A').unwrap();
        assert_eq!(response["nats"]["error"], "not authorized");
        assert!(response["nats"].get("jwt").is_none());
    }

    #[test]
    fn requests_and_answers_are_encrypted_when_the_server_asks() {
        let key = DevSigningKey::generate("k1");
        let ours = XKey::new();
        let ours_public = XKey::from_public_key(&ours.public_key()).unwrap();
        let config = config(&key, Some(ours));
        let (server, server_xkey) = (KeyPair::new_server(), XKey::new());
        let sealed = server_xkey
            .seal(request(&server, &key.mint(&identity(), "reno", NOW)).as_bytes(), &ours_public)
            .unwrap();
        let (bytes, result) = answer(&config, &sealed, Some(&server_xkey.public_key()), NOW).unwrap();
        assert_eq!(result, "allowed");
        let opened = server_xkey.open(&bytes, &ours_public).unwrap();
        assert!(nats_jwt::decode(std::str::from_utf8(&opened).unwrap(), 'A').is_ok());
        // A request that was not signed by the server it names is not answered.
        let forged = nats_jwt::encode(
            json!({"aud": "nats-authorization-request", "nats": {"type": "authorization_request", "server_id": {"id": "NOTHIM"}}}),
            &server,
            NOW,
        );
        assert!(answer(&config, forged.as_bytes(), None, NOW).is_err());
    }

    #[test]
    fn a_connection_never_outlives_the_longest_allowed() {
        let user = user_claims(&identity(), "U", "DEVICES", NOW, Duration::from_secs(60));
        assert_eq!(user["exp"], NOW + 60);
    }
}
