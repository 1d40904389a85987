//! Starting and stopping real `ganglion` processes (and a tansu broker).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `ganglion` binary next to the test binary (`target/<profile>/ganglion`).
pub fn ganglion_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TEST_GANGLION_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let binary = dir.join("ganglion");
    assert!(
        binary.exists(),
        "{} is missing: build it first (`cargo build -p ganglion`; the test command does)",
        binary.display()
    );
    binary
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process killed when dropped.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, args: &[&str], env: &[(String, String)], log_dir: &Path) -> Process {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut command = Command::new(ganglion_binary());
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn ganglion");
        Process {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The tail of the process's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `url` answers 200, or panics with the process's log.
pub async fn wait_healthy(url: &str, process: &Process, timeout: Duration) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{} did not become healthy at {url}:\n{}",
        process.name,
        process.log_tail()
    );
}

/// Resident memory of a process in KiB (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A monolith with its own data directory and ports.
pub struct Monolith {
    pub process: Process,
    pub base_url: String,
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
}

impl Monolith {
    pub async fn start(dir: &Path) -> Monolith {
        let port = free_port();
        let env = vec![
            (
                "GANGLION_DATA_DIR".to_owned(),
                dir.join("data").display().to_string(),
            ),
            (
                "GANGLION_CLIENT__LISTEN".to_owned(),
                format!("127.0.0.1:{port}"),
            ),
            (
                "GANGLION_FEDERATION__LISTEN".to_owned(),
                format!("127.0.0.1:{}", free_port()),
            ),
            (
                "GANGLION_CLIENT__RATE_LIMIT_PER_SECOND".to_owned(),
                "1000".to_owned(),
            ),
            (
                "GANGLION_CLIENT__RATE_LIMIT_BURST".to_owned(),
                "1000".to_owned(),
            ),
            (
                "GANGLION_TELEMETRY__LOG_FILTER".to_owned(),
                "warn,ganglion=info".to_owned(),
            ),
        ];
        Self::start_with(dir, env).await
    }

    pub async fn start_with(dir: &Path, env: Vec<(String, String)>) -> Monolith {
        let port = env
            .iter()
            .find(|(k, _)| k == "GANGLION_CLIENT__LISTEN")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let process = Process::spawn("monolith", &["monolith"], &env, dir);
        let base_url = format!("http://{port}");
        wait_healthy(
            &format!("{base_url}/healthz"),
            &process,
            Duration::from_secs(30),
        )
        .await;
        Monolith {
            process,
            base_url,
            env,
            dir: dir.to_owned(),
        }
    }

    /// Kills the process with SIGKILL and starts it again on the same data.
    pub async fn kill9_and_restart(&mut self) {
        self.process.kill9();
        let env = self.env.clone();
        let process = Process::spawn("monolith", &["monolith"], &env, &self.dir);
        wait_healthy(
            &format!("{}/healthz", self.base_url),
            &process,
            Duration::from_secs(30),
        )
        .await;
        self.process = process;
    }
}
