//! The server's Ed25519 signing key and the federation port's TLS
//! certificate: loaded from the configured paths, or generated in the data
//! directory on first run so the monolith needs no configuration.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ruma::signatures::Ed25519KeyPair;

use crate::config::Config;

/// Why a key or certificate could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key file is not in the format `ed25519 <version> <base64 pkcs8>`.
    #[error("{0}: not a Ganglion signing key (expected `ed25519 <version> <base64>`)")]
    Format(PathBuf),
    /// Generating a certificate failed.
    #[error("generating the TLS certificate: {0}")]
    Certificate(String),
}

/// The server's signing key with its key ID version (the part after `ed25519:`).
pub struct SigningKey {
    pub key_pair: Ed25519KeyPair,
    pub version: String,
    /// The public key, unpadded base64, as published in `/_matrix/key/v2/server`.
    pub public_key_base64: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("version", &self.version)
            .field("public_key", &self.public_key_base64)
            .finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the signing key lives for `config`.
pub fn signing_key_path(config: &Config) -> PathBuf {
    config
        .federation
        .signing_key_path
        .clone()
        .unwrap_or_else(|| config.data_dir.join("signing.key"))
}

/// Writes a new signing key to `path` (which must not exist yet).
pub fn generate_signing_key(path: &Path) -> Result<(), KeyError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let pkcs8 = Ed25519KeyPair::generate();
    let version = crate::random::alphanumeric(6);
    let line = format!(
        "ed25519 a_{version} {}\n",
        base64::engine::general_purpose::STANDARD.encode(pkcs8.as_slice())
    );
    write_private(path, line.as_bytes())
}

pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(contents).map_err(io(path))
}

/// Loads the signing key, generating it first if it does not exist.
pub fn load_or_generate_signing_key(config: &Config) -> Result<SigningKey, KeyError> {
    let path = signing_key_path(config);
    if !path.exists() {
        generate_signing_key(&path)?;
        tracing::info!(path = %path.display(), "generated a new signing key");
    }
    load_signing_key(&path)
}

pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut parts = text.split_whitespace();
    let (Some("ed25519"), Some(version), Some(key), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(KeyError::Format(path.to_owned()));
    };
    let der = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| KeyError::Format(path.to_owned()))?;
    let key_pair = Ed25519KeyPair::from_der(&der, version.to_owned())
        .map_err(|_| KeyError::Format(path.to_owned()))?;
    let public_key_base64 =
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(key_pair.public_key());
    Ok(SigningKey {
        key_pair,
        version: version.to_owned(),
        public_key_base64,
    })
}

/// PEM certificate and key paths for the federation listener, generating a
/// self-signed pair in the data directory when none is configured.
pub fn load_or_generate_tls(config: &Config) -> Result<(PathBuf, PathBuf), KeyError> {
    if let (Some(cert), Some(key)) = (
        &config.federation.tls_certificate_path,
        &config.federation.tls_private_key_path,
    ) {
        return Ok((cert.clone(), key.clone()));
    }
    let cert_path = config.data_dir.join("federation.crt");
    let key_path = config.data_dir.join("federation.key");
    if !cert_path.exists() || !key_path.exists() {
        std::fs::create_dir_all(&config.data_dir).map_err(io(&config.data_dir))?;
        let host = config
            .server_name
            .rsplit_once(':')
            .map(|(h, _)| h.to_owned())
            .unwrap_or_else(|| config.server_name.clone());
        let certified = rcgen::generate_simple_self_signed(vec![host])
            .map_err(|e| KeyError::Certificate(e.to_string()))?;
        let _ = std::fs::remove_file(&key_path);
        write_private(&key_path, certified.key_pair.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, certified.cert.pem()).map_err(io(&cert_path))?;
        tracing::info!(path = %cert_path.display(), "generated a self-signed federation certificate");
    }
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_loads_and_is_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let first = load_or_generate_signing_key(&config).expect("generate");
        let second = load_or_generate_signing_key(&config).expect("load");
        assert_eq!(first.public_key_base64, second.public_key_base64);
        assert!(first.version.starts_with("a_"));
        let (cert, key) = load_or_generate_tls(&config).expect("tls");
        assert!(
            std::fs::read_to_string(cert)
                .expect("cert")
                .contains("BEGIN CERTIFICATE")
        );
        assert!(
            std::fs::read_to_string(key)
                .expect("key")
                .contains("PRIVATE KEY")
        );
    }

    #[test]
    fn garbage_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        std::fs::write(&path, "hello").expect("write");
        assert!(matches!(load_signing_key(&path), Err(KeyError::Format(_))));
    }
}
