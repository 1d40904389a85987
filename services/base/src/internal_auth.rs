//! Authentication of internal gRPC calls between the polylith's services.
//!
//! Every process reads the same secret file (`internal.secret_file`, by
//! default `<data_dir>/internal.secret`): one secret per line. A caller
//! sends the first line as `authorization: Bearer <secret>`; a service
//! accepts any line. The file is read again when it changes (checked at most
//! once every [`RELOAD_INTERVAL`]), so a secret is rotated without a restart
//! or a refused call: add the new secret as a second line everywhere, move
//! it to the first line, then remove the old one, waiting at least twice
//! the reload interval after every process has the file before the next
//! step.
//!
//! Internal gRPC is served on its own listener (`services.<name>.listen`),
//! never on a port that serves HTTP to the outside, and every call without a
//! valid secret is refused with gRPC status `UNAUTHENTICATED` and counted in
//! `ganglion_internal_calls_refused_total`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};

use crate::Config;
use crate::keys::KeyError;

/// The metadata key a caller's secret travels in.
pub const HEADER: &str = "authorization";

/// How often the secret file is looked at for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Internal calls refused for want of a valid secret, by the service refusing.
pub static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::counter_vec(
        "ganglion_internal_calls_refused_total",
        "Internal gRPC calls refused because they carried no valid secret",
        &["service"],
    )
});

/// The shared secrets of internal calls, kept in step with their file.
#[derive(Clone)]
pub struct InternalSecret {
    inner: Arc<Inner>,
}

struct Inner {
    /// None for a secret that lives only in memory (the monolith's).
    path: Option<PathBuf>,
    state: RwLock<State>,
}

/// A file's modification time and length.
type Stamp = (SystemTime, u64);

struct State {
    /// SHA-256 of each accepted secret; the first is also the one sent.
    digests: Vec<[u8; 32]>,
    /// `Bearer <first secret>`, ready to send.
    header: HeaderValue,
    /// The file's modification time and length when last read.
    stamp: Option<Stamp>,
    checked: Instant,
}

impl std::fmt::Debug for InternalSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalSecret")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Where the secret file is for `config`.
pub fn secret_path(config: &Config) -> PathBuf {
    config
        .internal
        .secret_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("internal.secret"))
}

impl InternalSecret {
    /// Reads the secret file, first creating it with a random secret if it
    /// does not exist (processes sharing a data directory then agree: the
    /// file appears whole, and only the first creator's survives).
    pub fn load_or_generate(config: &Config) -> Result<InternalSecret, KeyError> {
        let path = secret_path(config);
        if !path.exists() {
            generate(&path)?;
        }
        let (secrets, stamp) = read(&path)?;
        Ok(InternalSecret {
            inner: Arc::new(Inner {
                path: Some(path),
                state: RwLock::new(State::new(&secrets, stamp)),
            }),
        })
    }

    /// A random secret held only in memory, for a process that serves no
    /// internal calls (the monolith).
    pub fn ephemeral() -> InternalSecret {
        InternalSecret::fixed(vec![random_secret()])
    }

    /// Fixed secrets, the first sent (tests).
    pub fn fixed(secrets: Vec<String>) -> InternalSecret {
        InternalSecret {
            inner: Arc::new(Inner {
                path: None,
                state: RwLock::new(State::new(&secrets, None)),
            }),
        }
    }

    /// The `authorization` value a caller sends.
    pub fn header(&self) -> HeaderValue {
        self.reload_if_changed();
        match self.inner.state.read() {
            Ok(state) => state.header.clone(),
            Err(poisoned) => poisoned.into_inner().header.clone(),
        }
    }

    /// Whether an `authorization` value carries an accepted secret.
    pub fn accepts(&self, presented: Option<&HeaderValue>) -> bool {
        let Some(secret) = presented
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        self.reload_if_changed();
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let state = match self.inner.state.read() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Every accepted digest is compared in full, so the time taken says
        // nothing about how much of a guess was right.
        state
            .digests
            .iter()
            .fold(false, |found, known| found | equal_digests(known, &digest))
    }

    fn reload_if_changed(&self) {
        let Some(path) = &self.inner.path else {
            return;
        };
        {
            let state = match self.inner.state.read() {
                Ok(state) => state,
                Err(poisoned) => poisoned.into_inner(),
            };
            if state.checked.elapsed() < RELOAD_INTERVAL {
                return;
            }
        }
        let mut state = match self.inner.state.write() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.checked.elapsed() < RELOAD_INTERVAL {
            return;
        }
        state.checked = Instant::now();
        let stamp = stamp_of(path);
        if stamp.is_some() && stamp == state.stamp {
            return;
        }
        match read(path) {
            Ok((secrets, stamp)) => {
                *state = State::new(&secrets, stamp);
                tracing::info!(path = %path.display(), secrets = secrets.len(), "internal secrets reloaded");
            }
            Err(error) => {
                tracing::warn!(%error, "keeping the internal secrets held: their file is unusable");
            }
        }
    }
}

impl State {
    fn new(secrets: &[String], stamp: Option<Stamp>) -> State {
        let header = secrets
            .first()
            .and_then(|s| HeaderValue::from_str(&format!("Bearer {s}")).ok())
            .unwrap_or_else(|| HeaderValue::from_static("Bearer"));
        State {
            digests: secrets
                .iter()
                .map(|s| Sha256::digest(s.as_bytes()).into())
                .collect(),
            header,
            stamp,
            checked: Instant::now(),
        }
    }
}

fn equal_digests(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::thread_rng().r#gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn stamp_of(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The secrets in a file: one per non-empty line, each visible ASCII of 16
/// to 256 characters (so it can travel as gRPC metadata).
fn read(path: &Path) -> Result<(Vec<String>, Option<Stamp>), KeyError> {
    let stamp = stamp_of(path);
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let secrets: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    let usable =
        |s: &String| (16..=256).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
    if secrets.is_empty() || !secrets.iter().all(usable) {
        return Err(KeyError::Format(path.to_owned()));
    }
    Ok((secrets, stamp))
}

/// Writes a new random secret to `path` unless another process got there
/// first: the secret is written to a private temporary file and linked into
/// place, which fails if the file exists.
fn generate(path: &Path) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let temporary = dir.join(format!(".internal.secret.{}", random_secret()));
    crate::keys::write_private(&temporary, format!("{}\n", random_secret()).as_bytes())?;
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated the internal secret");
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(io(error)),
    }
}

/// Serves `router` (a service's gRPC API) only to callers with an accepted
/// secret; others get `UNAUTHENTICATED` and are counted.
pub fn require(router: Router, secret: InternalSecret, service: &'static str) -> Router {
    // Exported at 0 from the start, for dashboards and alerts.
    REFUSED.with_label_values(&[service]);
    router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| {
            let secret = secret.clone();
            async move {
                if secret.accepts(request.headers().get(HEADER)) {
                    return next.run(request).await;
                }
                REFUSED.with_label_values(&[service]).inc();
                tracing::warn!(
                    path = %request.uri().path(),
                    "refused an internal call without a valid secret"
                );
                unauthenticated()
            }
        },
    ))
}

/// A gRPC `UNAUTHENTICATED` answer (status 16, in the headers as gRPC
/// clients expect for an error without a body).
fn unauthenticated() -> Response {
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static("16"));
    headers.insert(
        "grpc-message",
        HeaderValue::from_static("no%20valid%20internal%20secret"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(secret: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {secret}")).expect("header")
    }

    #[test]
    fn only_listed_secrets_are_accepted() {
        let secret = InternalSecret::fixed(vec![
            "first-secret-0123456789".into(),
            "second-secret-0123456789".into(),
        ]);
        assert_eq!(secret.header(), bearer("first-secret-0123456789"));
        assert!(secret.accepts(Some(&bearer("first-secret-0123456789"))));
        assert!(secret.accepts(Some(&bearer("second-secret-0123456789"))));
        assert!(!secret.accepts(Some(&bearer("first-secret-012345678"))));
        assert!(!secret.accepts(Some(&HeaderValue::from_static("first-secret-0123456789"))));
        assert!(!secret.accepts(None));
    }

    #[test]
    fn the_file_is_generated_once_and_followed_when_it_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let one = InternalSecret::load_or_generate(&config).expect("generated");
        let two = InternalSecret::load_or_generate(&config).expect("read back");
        assert_eq!(
            one.header(),
            two.header(),
            "a second process finds the same"
        );

        let path = secret_path(&config);
        let old = std::fs::read_to_string(&path).expect("read");
        let old = old.trim();
        std::fs::write(&path, format!("{old}\nnew-secret-0123456789abcdef\n")).expect("write");
        std::thread::sleep(RELOAD_INTERVAL + Duration::from_millis(50));
        assert!(one.accepts(Some(&bearer("new-secret-0123456789abcdef"))));
        assert!(one.accepts(Some(&bearer(old))));
        assert_eq!(one.header(), bearer(old), "still sends the first line");

        // An unusable file keeps what was held.
        std::fs::write(&path, "short\n").expect("write");
        std::thread::sleep(RELOAD_INTERVAL + Duration::from_millis(50));
        assert!(one.accepts(Some(&bearer(old))));

        std::fs::write(&path, "new-secret-0123456789abcdef\n").expect("write");
        std::thread::sleep(RELOAD_INTERVAL + Duration::from_millis(50));
        assert!(!one.accepts(Some(&bearer(old))));
        assert_eq!(one.header(), bearer("new-secret-0123456789abcdef"));
    }
}
