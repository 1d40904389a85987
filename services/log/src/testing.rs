//! Test support: a real Kafka-protocol broker (tansu) on a local port, for
//! the log's conformance suite and the end-to-end tests of the polylith.
//! Everything here panics on failure, as test fixtures do.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long tansu may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A tansu broker with in-memory storage, stopped (SIGINT) when dropped.
pub struct Tansu {
    child: Child,
    pub port: u16,
    /// tansu's output: kept when a test fails, removed otherwise.
    log_path: PathBuf,
}

impl Tansu {
    /// Starts a broker on a free port.
    pub async fn start() -> Tansu {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free local port")
            .port();
        Tansu::start_on(port).await
    }

    /// Starts a broker on `port` (e.g. to replace a stopped one).
    pub async fn start_on(port: u16) -> Tansu {
        let binary = find_tansu().unwrap_or_else(|| {
            panic!(
                "`tansu` is not installed (not on PATH, not in ~/.cargo/bin): these tests need a \
                 real broker. The test command installs it; by hand: `cargo install --locked \
                 tansu@0.6.0 --no-default-features --features dynostore`."
            )
        });
        let url = format!("tcp://127.0.0.1:{port}");
        let log_path =
            std::env::temp_dir().join(format!("tansu-{}-{port}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).expect("tansu log file");
        let mut child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("tansu log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", binary.display()));
        let deadline = Instant::now() + START_DEADLINE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "tansu exited ({status}) before listening; its log is at {}",
                    log_path.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on port {port} within {START_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Tansu {
            child,
            port,
            log_path,
        }
    }

    /// The bootstrap address for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Freezes (`true`) or thaws the broker: while frozen it answers no
    /// requests, as a broker behind a network partition.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Stops the broker (its in-memory data is gone).
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return; // already stopped (and reaped: its pid may be reused)
        }
        // tansu shuts down on SIGINT (it ignores SIGTERM for seconds); `kill`
        // sends it without unsafe code.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

fn find_tansu() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let in_cargo = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin"));
    on_path
        .into_iter()
        .chain(in_cargo)
        .map(|dir| dir.join("tansu"))
        .find(|candidate| candidate.is_file())
}
