//! Test support: a real Kafka-protocol broker (tansu) on a local port, for
//! the log's conformance suite and the end-to-end tests of the polylith,
//! and a real S3-compatible server (moto), for the durable broker and the
//! media store.
//! Everything here panics on failure, as test fixtures do.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long tansu may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A tansu broker, stopped (SIGINT) when dropped: in memory, or durable
/// (its data in an S3 bucket served by moto, which outlives the broker's
/// restarts).
pub struct Tansu {
    child: Child,
    pub port: u16,
    /// tansu's output: kept when a test fails, removed otherwise.
    log_path: PathBuf,
    /// The S3 server of a durable broker.
    moto: Option<Moto>,
}

impl Tansu {
    /// Starts a broker on a free port.
    pub async fn start() -> Tansu {
        Tansu::start_on(free_port()).await
    }

    /// Starts a broker on `port` (e.g. to replace a stopped one).
    pub async fn start_on(port: u16) -> Tansu {
        let (child, log_path) = spawn_tansu(port, None).await;
        Tansu {
            child,
            port,
            log_path,
            moto: None,
        }
    }

    /// Starts a broker on a free port whose topics, records and committed
    /// offsets survive [`Tansu::restart`]: tansu's S3 storage on a moto
    /// server of its own (moto is a Python package the test command
    /// provides).
    pub async fn start_durable() -> Tansu {
        let moto = Moto::start(Moto::TANSU_BUCKET).await;
        let port = free_port();
        let (child, log_path) = spawn_tansu(port, Some(&moto)).await;
        Tansu {
            child,
            port,
            log_path,
            moto: Some(moto),
        }
    }

    /// Whether its data outlives it (kept in moto's S3).
    pub fn is_durable(&self) -> bool {
        self.moto.is_some()
    }

    /// Stops the broker as an operator does (SIGINT) and starts it again on
    /// the same port with the same storage. Only a durable broker keeps
    /// its data.
    pub async fn restart(&mut self) {
        self.stop();
        let (child, log_path) = spawn_tansu(self.port, self.moto.as_ref()).await;
        self.child = child;
        self.log_path = log_path;
    }

    /// The bootstrap address for clients.
    /// The broker's process ID, to read what it costs.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

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

    /// Stops the broker (SIGINT). An in-memory broker's data is gone.
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free local port")
        .port()
}

/// Starts tansu on `port`, storing in memory or, given `moto`, in its
/// bucket; returns once it listens.
async fn spawn_tansu(port: u16, moto: Option<&Moto>) -> (Child, PathBuf) {
    let binary = find_tansu().unwrap_or_else(|| {
        panic!(
            "`tansu` is not installed (not on PATH, not in ~/.cargo/bin): these tests need a \
             real broker. The test command installs it; by hand: `cargo install --locked \
             tansu@0.6.0 --no-default-features --features dynostore`."
        )
    });
    let url = format!("tcp://127.0.0.1:{port}");
    static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let log_path = std::env::temp_dir().join(format!(
        "tansu-{}-{port}-{}.log",
        std::process::id(),
        STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let log = std::fs::File::create(&log_path).expect("tansu log file");
    let mut command = Command::new(&binary);
    command.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ]);
    match moto {
        None => {
            command.args(["--storage-engine", "memory://tansu/"]);
        }
        Some(moto) => {
            // object_store reads these; without credentials it would ask a
            // cloud metadata service.
            command
                .args(["--storage-engine", &format!("s3://{}/", Moto::TANSU_BUCKET)])
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("AWS_DEFAULT_REGION", "us-east-1")
                .env("AWS_ENDPOINT_URL", moto.endpoint())
                .env("AWS_ALLOW_HTTP", "true");
        }
    }
    let mut child = command
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
    // A broker that lost the port to another one exits (with status 0)
    // after binding failed: it must still be running.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "tansu exited ({status}) right after starting; its log is at {}",
            log_path.display()
        );
    }
    (child, log_path)
}

/// An S3 server (moto) on a free port with one bucket, killed when
/// dropped (its data lives in its memory). It takes any credentials.
pub struct Moto {
    child: Child,
    pub port: u16,
    bucket: String,
}

impl Moto {
    /// The bucket of a durable tansu.
    const TANSU_BUCKET: &str = "tansu";

    /// Starts moto with an empty bucket named `bucket`.
    pub async fn start(bucket: &str) -> Moto {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (the test command installs moto)");
        let mut moto = Moto {
            child,
            port,
            bucket: bucket.to_owned(),
        };
        let deadline = Instant::now() + START_DEADLINE;
        // Creating the bucket is also the wait for the server: tansu does
        // not create it.
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto exited ({status}): is the Python package moto[server] installed?");
            }
            if moto.create_bucket().is_ok() {
                return moto;
            }
            assert!(
                Instant::now() < deadline,
                "moto did not answer on port {port} within {START_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its URL (plain HTTP on loopback).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `PUT /<bucket>` (moto takes unsigned requests).
    fn create_bucket(&self) -> std::io::Result<()> {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "PUT /{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.bucket, self.port
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
            Ok(())
        } else {
            Err(std::io::Error::other(
                answer.lines().next().unwrap_or_default().to_owned(),
            ))
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
