//! A real Synapse (matrix-synapse from `integration-tests/synapse/.venv`,
//! pinned in `integration-tests/synapse/requirements.txt`) for Ganglion to
//! federate with: one TLS listener on loopback serving the client, federation
//! and key APIs, a self-signed certificate, loopback federation allowed, rate
//! limits out of the way.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::client::Client;
use crate::process::free_port;

/// How long Synapse gets to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long Synapse gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The venv `scripts/test.sh` installs Synapse into.
pub fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("synapse/.venv")
}

/// The venv's Python, or a panic telling how to install it.
fn python() -> PathBuf {
    let python = venv().join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh, which installs Synapse from \
         integration-tests/synapse/requirements.txt",
        python.display()
    );
    python
}

/// A running Synapse, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Synapse {
    /// `localhost:<port>`: an explicit port, so no .well-known or SRV lookup.
    pub server_name: String,
    /// `https://localhost:<port>`: the client, federation and key APIs.
    pub base_url: String,
    pub port: u16,
    pub dir: PathBuf,
    /// From spawning the process to its first 200 from `/versions`.
    pub startup: Duration,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Synapse {
    /// Configures a Synapse in `dir` (config, keys, SQLite database, logs)
    /// and starts it; returns once its client API answers.
    pub async fn start(dir: &Path) -> Synapse {
        Synapse::start_with(dir, json!({})).await
    }

    /// [`Synapse::start`] with `overrides`' top-level keys replacing those
    /// of the configuration (for example `{"federation": {...}}`).
    pub async fn start_with(dir: &Path, overrides: Value) -> Synapse {
        let python = python();
        let port = free_port();
        let server_name = format!("localhost:{port}");
        let base_url = format!("https://localhost:{port}");
        std::fs::create_dir_all(dir).expect("synapse dir");
        let config = write_config(dir, port, &server_name, overrides);

        let stdout = std::fs::File::create(dir.join("stdout.log")).expect("stdout log");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr log");
        let began = Instant::now();
        let child = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn synapse");
        let mut synapse = Synapse {
            server_name,
            base_url,
            port,
            dir: dir.to_owned(),
            startup: Duration::ZERO,
            child: Some(child),
            http: http_client(port),
        };
        synapse.wait_ready(began).await;
        synapse.startup = began.elapsed();
        synapse
    }

    async fn wait_ready(&mut self, began: Instant) {
        let url = format!("{}/_matrix/client/versions", self.base_url);
        while began.elapsed() < START_TIMEOUT {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("synapse exited ({status}):\n{}", self.logs());
            }
            if let Ok(response) = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && response.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "synapse did not answer {url} within {START_TIMEOUT:?}:\n{}",
            self.logs()
        );
    }

    /// An HTTP client that trusts this Synapse's self-signed certificate
    /// (it accepts any certificate) and resolves `localhost` to 127.0.0.1.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// Registers `localpart` through the `m.login.dummy` flow.
    pub async fn register(&self, localpart: &str, password: &str) -> Client {
        Client::register_with(self.http(), &self.base_url, localpart, password).await
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The tails of Synapse's log and of its stderr, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, lines) in [("homeserver.log", 60), ("stderr.log", 40)] {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- synapse {name} ---\n"));
            out.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// Waits (up to `within`) until Synapse's log has a line containing
    /// one of `needles`; false if none came.
    pub async fn until_logged(&self, needles: &[&str], within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let text = std::fs::read_to_string(self.dir.join("homeserver.log")).unwrap_or_default();
            if needles.iter().any(|needle| text.contains(needle)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts it again (after [`Synapse::stop`]) on the same name, port,
    /// keys and database; returns once its client API answers.
    pub async fn restart(&mut self) {
        self.stop();
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(name))
                .expect("log file")
        };
        let began = Instant::now();
        let child = Command::new(python())
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(self.dir.join("homeserver.yaml"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(open("stdout.log"))
            .stderr(open("stderr.log"))
            .spawn()
            .expect("spawn synapse");
        self.child = Some(child);
        self.wait_ready(began).await;
    }

    /// SIGTERM, a wait for it to exit, then SIGKILL if it has not.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        self.stop();
    }
}

fn http_client(port: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        // Synapse listens on 127.0.0.1 only; without this, `localhost`
        // may be tried on ::1 first.
        .resolve("localhost", SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .build()
        .expect("http client")
}

fn secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn path_string(path: &Path) -> String {
    path.display().to_string()
}

/// Writes the certificate, signing key, log config and homeserver config
/// into `dir`; returns the homeserver config's path. The configs are JSON,
/// which YAML reads as it is.
fn write_config(dir: &Path, port: u16, server_name: &str, overrides: Value) -> PathBuf {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("self-signed certificate");
    let cert_path = dir.join("tls.crt");
    let key_path = dir.join("tls.key");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write certificate");
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).expect("write key");

    // Synapse's signing key file: `ed25519 <version> <unpadded base64 seed>`.
    let seed: [u8; 32] = rand::random();
    let signing_key_path = dir.join("signing.key");
    std::fs::write(
        &signing_key_path,
        format!(
            "ed25519 a_test {}\n",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(seed)
        ),
    )
    .expect("write signing key");

    let log_config_path = dir.join("log.config");
    let log_config = json!({
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"
            }
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": path_string(&dir.join("homeserver.log")),
                "encoding": "utf8"
            }
        },
        "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": false
    });
    write_json(&log_config_path, &log_config);

    // Out of the way of any test: 10k per second, bursts of 100k.
    let high = json!({"per_second": 10000, "burst_count": 100000});
    let mut config = json!({
        "server_name": server_name,
        "public_baseurl": format!("https://{server_name}/"),
        "pid_file": path_string(&dir.join("homeserver.pid")),
        "listeners": [{
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": true,
            "x_forwarded": false,
            // `federation` serves `/_matrix/key` too.
            "resources": [{"names": ["client", "federation"], "compress": false}]
        }],
        "tls_certificate_path": path_string(&cert_path),
        "tls_private_key_path": path_string(&key_path),
        "federation_verify_certificates": false,
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        // Loopback is on the default deny list; let federation reach it.
        "ip_range_whitelist": ["127.0.0.1/32", "::1/128"],
        "database": {
            "name": "sqlite3",
            "args": {"database": path_string(&dir.join("homeserver.db"))}
        },
        "log_config": path_string(&log_config_path),
        "media_store_path": path_string(&dir.join("media_store")),
        "signing_key_path": path_string(&signing_key_path),
        "macaroon_secret_key": secret(),
        "form_secret": secret(),
        "registration_shared_secret": secret(),
        "report_stats": false,
        "enable_metrics": false,
        "enable_registration": true,
        "enable_registration_without_verification": true,
        "bcrypt_rounds": 4,
        "use_presence": true,
        "allow_public_rooms_over_federation": true,
        // Without rules Synapse refuses every room directory publication.
        "room_list_publication_rules": [{"action": "allow"}],
        // A transaction that could not be delivered (its destination was
        // down) is tried again within a second or so, not after 4, 16 and
        // then 60 seconds: a test restarting a server waits for seconds,
        // not minutes. After ten tries the destination is marked down and
        // caught up with once it is heard from again.
        "federation": {"max_long_retry_delay": "1s"},
    });
    let rate_limits = json!({
        "rc_message": high,
        "rc_registration": high,
        "rc_registration_token_validity": high,
        "rc_login": {"address": high, "account": high, "failed_attempts": high},
        "rc_admin_redaction": high,
        "rc_joins": {"local": high, "remote": high},
        "rc_joins_per_room": high,
        "rc_key_requests": high,
        "rc_3pid_validation": high,
        "rc_invites": {"per_room": high, "per_user": high, "per_issuer": high},
        "rc_third_party_invite": high,
        "rc_media_create": high,
        "rc_presence": {"per_user": high},
        "rc_delayed_event_mgmt": high,
        "rc_room_creation": high,
        "rc_reports": high,
        "rc_user_directory": high,
        "rc_profile": high,
        "rc_federation": {
            "window_size": 1000,
            "sleep_limit": 100000,
            "sleep_delay": 1,
            "reject_limit": 100000,
            "concurrent": 1000
        },
        "federation_rr_transactions_per_room_per_second": 10000
    });
    if let (Some(config), Value::Object(rate_limits)) = (config.as_object_mut(), rate_limits) {
        config.extend(rate_limits);
    }
    if let (Some(config), Value::Object(overrides)) = (config.as_object_mut(), overrides) {
        config.extend(overrides);
    }
    let config_path = dir.join("homeserver.yaml");
    write_json(&config_path, &config);
    config_path
}

fn write_json(path: &Path, value: &Value) {
    let text = serde_json::to_string_pretty(value).expect("json");
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
