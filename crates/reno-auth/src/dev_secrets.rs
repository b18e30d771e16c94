//! Everything a local run or a test topology needs that would be secret in production, generated
//! into one folder: nkeys for reno's users and the edges' leaf connections, the callout issuer and
//! its curve key, a development CA with a certificate for `localhost`/`127.0.0.1`, and a
//! device-token signing key with its public key set. An operator brings its own in production.
//! Generating is idempotent: files that exist are kept.

use std::{
    io,
    path::{Path, PathBuf},
};

use nkeys::{KeyPair, XKey};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose,
};

use crate::device_token::{DevSigningKey, jwks};

/// The nkey users of the topology: (file stem, what it is for). Seeds are `<stem>.nk`.
const USERS: &[(&str, &str)] = &[
    ("reno", "reno's own processes, in the RENO account"),
    ("publisher", "a backend service that may only publish events"),
    ("authsvc", "the authorization service, in the AUTH account"),
    ("leaf_devices", "an edge's leaf connection for the DEVICES account"),
    ("leaf_auth", "an edge's leaf connection for the AUTH account (callout requests)"),
    ("sys", "the system account"),
    ("edge_admin", "an edge's local AUTH user (the callout's auth_users)"),
];
// Also written: `service-token`, a token services present to the HTTP gateway.

/// The secrets of one topology, in `dir`.
#[derive(Debug, Clone)]
pub struct DevSecrets {
    pub dir: PathBuf,
}

/// Creates `dir` and every secret missing from it. Paths in what it writes are absolute: the
/// nats-server configs read them from the environment, where a relative path does not parse.
pub fn generate(dir: &Path) -> io::Result<DevSecrets> {
    std::fs::create_dir_all(dir)?;
    let secrets = DevSecrets { dir: dir.canonicalize()? };
    for (user, _) in USERS {
        write_new(&secrets.path(&format!("{user}.nk")), || {
            KeyPair::new_user().seed().expect("a new key has a seed")
        })?;
    }
    write_new(&secrets.path("callout_issuer.nk"), || {
        KeyPair::new_account().seed().expect("a new key has a seed")
    })?;
    write_new(&secrets.path("callout_xkey.xk"), || XKey::new().seed().expect("a new key has a seed"))?;
    if !secrets.path("server-key.pem").exists() {
        write_certificates(&secrets)?;
    }
    if !secrets.path("device-token-key.jwk").exists() {
        let key = DevSigningKey::generate("dev-1");
        std::fs::write(secrets.path("device-token-keys.jwks"), jwks(&[key.public_jwk()]))?;
        write_private(&secrets.path("device-token-key.jwk"), &key.private_jwk())?;
    }
    write_new(&secrets.path("service-token"), || {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes).expect("the system has randomness");
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    })?;
    std::fs::write(secrets.path("nats.env"), secrets.nats_env_file())?;
    Ok(secrets)
}

impl DevSecrets {
    /// A file in the secrets folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The seed in `<name>.nk` (or `.xk`).
    pub fn seed(&self, file: &str) -> io::Result<String> {
        Ok(std::fs::read_to_string(self.path(file))?.trim().to_owned())
    }

    /// The environment the nats-server configs in `nats/` read: public keys (`RENO_PUB_*`), the
    /// leaf connections' seeds and the edge's TLS files.
    pub fn nats_env(&self) -> io::Result<Vec<(String, String)>> {
        let mut env = Vec::new();
        for (user, _) in USERS {
            let key = KeyPair::from_seed(&self.seed(&format!("{user}.nk"))?).map_err(io::Error::other)?;
            env.push((format!("RENO_PUB_{}", user.to_ascii_uppercase()), key.public_key()));
        }
        let issuer = KeyPair::from_seed(&self.seed("callout_issuer.nk")?).map_err(io::Error::other)?;
        env.push(("RENO_PUB_CALLOUT_ISSUER".into(), issuer.public_key()));
        let xkey = XKey::from_seed(&self.seed("callout_xkey.xk")?).map_err(io::Error::other)?;
        env.push(("RENO_PUB_CALLOUT_XKEY".into(), xkey.public_key()));
        env.push(("RENO_LEAF_DEVICES_SEED".into(), self.seed("leaf_devices.nk")?));
        env.push(("RENO_LEAF_AUTH_SEED".into(), self.seed("leaf_auth.nk")?));
        env.push(("RENO_TLS_CERT".into(), self.path("server-chain.pem").display().to_string()));
        env.push(("RENO_TLS_KEY".into(), self.path("server-key.pem").display().to_string()));
        Ok(env)
    }

    fn nats_env_file(&self) -> String {
        let mut text =
            String::from("# The environment of the nats-server configs in nats/ for this topology.\n");
        for (name, value) in self.nats_env().unwrap_or_default() {
            text.push_str(&format!("{name}={value}\n"));
        }
        text
    }

    /// A reno config file's sections pointing at these secrets (nats credentials, the
    /// authorization service, the development token key).
    pub fn reno_config(&self) -> String {
        let path = |name: &str| self.path(name).display().to_string();
        format!(
            "[nats]\nnkey_seed_file = {reno:?}\n\n[auth]\ntoken_keys_file = {jwks:?}\nnkey_seed_file = {authsvc:?}\n\
             issuer_seed_file = {issuer:?}\nxkey_seed_file = {xkey:?}\ndev_token_key_file = {key:?}\n\n\
             [gateway]\nservice_tokens_file = {service:?}\n",
            reno = path("reno.nk"),
            jwks = path("device-token-keys.jwks"),
            authsvc = path("authsvc.nk"),
            issuer = path("callout_issuer.nk"),
            xkey = path("callout_xkey.xk"),
            key = path("device-token-key.jwk"),
            service = path("service-token"),
        )
    }
}

/// A development CA and a server certificate for `localhost`, `127.0.0.1` and `::1` signed by it;
/// the server's file holds the chain (server, then CA) so that a browser trusting the CA's key
/// alone accepts it.
fn write_certificates(secrets: &DevSecrets) -> io::Result<()> {
    let rcgen = |error: rcgen::Error| io::Error::other(error.to_string());
    let ca_key = rcgen::KeyPair::generate().map_err(rcgen)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "reno development CA");
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(rcgen)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = rcgen::KeyPair::generate().map_err(rcgen)?;
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let mut server_params = CertificateParams::new(names).map_err(rcgen)?;
    server_params.distinguished_name.push(DnType::CommonName, "reno development server");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &issuer).map_err(rcgen)?;

    std::fs::write(secrets.path("ca.pem"), ca_cert.pem())?;
    std::fs::write(secrets.path("server-chain.pem"), format!("{}{}", server_cert.pem(), ca_cert.pem()))?;
    write_private(&secrets.path("server-key.pem"), &server_key.serialize_pem())
}

fn write_new(path: &Path, make: impl FnOnce() -> String) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    write_private(path, &make())
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_everything_once_and_keeps_it() {
        let dir = std::env::temp_dir().join(format!("reno-secrets-{}", std::process::id()));
        let secrets = generate(&dir).unwrap();
        let env = secrets.nats_env().unwrap();
        assert!(env.iter().any(|(name, value)| name == "RENO_PUB_RENO" && value.starts_with('U')));
        assert!(env.iter().any(|(name, value)| name == "RENO_PUB_CALLOUT_ISSUER" && value.starts_with('A')));
        assert!(env.iter().any(|(name, value)| name == "RENO_PUB_CALLOUT_XKEY" && value.starts_with('X')));
        let seed = secrets.seed("reno.nk").unwrap();
        let chain = std::fs::read_to_string(secrets.path("server-chain.pem")).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        generate(&dir).unwrap();
        assert_eq!(secrets.seed("reno.nk").unwrap(), seed, "kept, not regenerated");
        let keys = std::fs::read_to_string(secrets.path("device-token-keys.jwks")).unwrap();
        assert!(crate::TokenKeys::from_jwks(&keys, "reno").is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
