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

/// A free loopback port, never the same twice in this test process: tests
/// run in parallel, and a port released by one check could otherwise be
/// handed to two servers (one would fail to bind while the other answered
/// The settings of a server named `localhost:<federation port>` (a free
/// port) that may reach servers on loopback with self-signed certificates
/// (Synapse and the fake servers in the tests): (its name, the settings).
pub fn federating_env() -> (String, Vec<(String, String)>) {
    let federation_port = free_port();
    let server_name = format!("localhost:{federation_port}");
    let env = vec![
        ("GANGLION_SERVER_NAME".to_owned(), server_name.clone()),
        (
            "GANGLION_FEDERATION__LISTEN".to_owned(),
            format!("127.0.0.1:{federation_port}"),
        ),
        (
            "GANGLION_FEDERATION__VERIFY_CERTIFICATES".to_owned(),
            "false".to_owned(),
        ),
        (
            "GANGLION_FEDERATION__IP_RANGE_ALLOWLIST".to_owned(),
            r#"["127.0.0.1/32", "::1/128"]"#.to_owned(),
        ),
    ];
    (server_name, env)
}

/// its health checks).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
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
        // A benchmark comparing two builds names the binary in `env`.
        let binary = env
            .iter()
            .find(|(key, _)| key == "TEST_GANGLION_BIN")
            .map(|(_, path)| PathBuf::from(path))
            .unwrap_or_else(ganglion_binary);
        let mut command = Command::new(binary);
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

    /// SIGTERM, then waits for the process to exit on its own (a graceful
    /// drain); the exit status, or `None` if it was still running at
    /// `timeout` (it is then killed).
    pub async fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        None
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
pub async fn wait_healthy(url: &str, process: &mut Process, timeout: Duration) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        // A process that exited (e.g. could not bind) must not pass on
        // another server's answers.
        if let Some(child) = process.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "{} exited ({status}):\n{}",
                process.name,
                process.log_tail()
            );
        }
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
    status_kib(pid, "VmRSS:")
}

/// The anonymous part of a process's resident memory in KiB (Linux): its
/// heap and stacks, without the pages of its binary and libraries, which
/// are clean, shared with the page cache, and vary with the binary's code
/// layout from build to build.
pub fn anonymous_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time a process has used (user and system, all its threads), from
/// `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    static TICKS_PER_SECOND: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks_per_second = *TICKS_PER_SECOND.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 14th and 15th fields, the 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// A monolith with its own data directory and ports.
pub struct Monolith {
    pub process: Process,
    /// The client listener.
    pub base_url: String,
    /// The operator listener (`/healthz`, `/readyz`, `/metrics`).
    pub operator_url: String,
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
}

impl Monolith {
    pub async fn start(dir: &Path) -> Monolith {
        Self::start_with(dir, Self::default_env(dir)).await
    }

    /// The environment of a test monolith: its own data directory and
    /// ports, rate limits out of the way, quiet logs.
    pub fn default_env(dir: &Path) -> Vec<(String, String)> {
        vec![
            (
                "GANGLION_DATA_DIR".to_owned(),
                dir.join("data").display().to_string(),
            ),
            (
                "GANGLION_CLIENT__LISTEN".to_owned(),
                format!("127.0.0.1:{}", free_port()),
            ),
            (
                "GANGLION_FEDERATION__LISTEN".to_owned(),
                format!("127.0.0.1:{}", free_port()),
            ),
            (
                "GANGLION_OPERATOR__LISTEN".to_owned(),
                format!("127.0.0.1:{}", free_port()),
            ),
            // Rate limits are tested on their own (bad_input.rs).
            (
                "GANGLION_RATE_LIMITS__ENABLED".to_owned(),
                "false".to_owned(),
            ),
            (
                "GANGLION_TELEMETRY__LOG_FILTER".to_owned(),
                // Another filter for a look inside (benchmarks, debugging).
                std::env::var("TEST_GANGLION_LOG_FILTER")
                    .unwrap_or_else(|_| "warn,ganglion=info".to_owned()),
            ),
        ]
    }

    /// A monolith named `localhost:<federation port>` that may reach
    /// servers on loopback with self-signed certificates (Synapse and the
    /// fake server in the tests): (the monolith, its server name).
    pub async fn federating(dir: &Path) -> (Monolith, String) {
        let (server_name, federating) = federating_env();
        let mut env = Monolith::default_env(dir);
        env.retain(|(k, _)| k != "GANGLION_FEDERATION__LISTEN");
        env.extend(federating);
        (Monolith::start_with(dir, env).await, server_name)
    }

    pub async fn start_with(dir: &Path, mut env: Vec<(String, String)>) -> Monolith {
        if !env.iter().any(|(k, _)| k == "GANGLION_OPERATOR__LISTEN") {
            env.push((
                "GANGLION_OPERATOR__LISTEN".to_owned(),
                format!("127.0.0.1:{}", free_port()),
            ));
        }
        let setting = |key: &str| {
            env.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let base_url = format!("http://{}", setting("GANGLION_CLIENT__LISTEN"));
        let operator_url = format!("http://{}", setting("GANGLION_OPERATOR__LISTEN"));
        let mut process = Process::spawn("monolith", &["monolith"], &env, dir);
        wait_healthy(
            &format!("{operator_url}/healthz"),
            &mut process,
            Duration::from_secs(30),
        )
        .await;
        Monolith {
            process,
            base_url,
            operator_url,
            env,
            dir: dir.to_owned(),
        }
    }

    /// Kills the process with SIGKILL (start it again with [`Monolith::restart`]).
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Starts the process again on the same data and addresses.
    pub async fn restart(&mut self) {
        let env = self.env.clone();
        let mut process = Process::spawn("monolith", &["monolith"], &env, &self.dir);
        wait_healthy(
            &format!("{}/healthz", self.operator_url),
            &mut process,
            Duration::from_secs(30),
        )
        .await;
        self.process = process;
    }

    /// Kills the process with SIGKILL and starts it again on the same data.
    pub async fn kill9_and_restart(&mut self) {
        self.process.kill9();
        let env = self.env.clone();
        let mut process = Process::spawn("monolith", &["monolith"], &env, &self.dir);
        wait_healthy(
            &format!("{}/healthz", self.operator_url),
            &mut process,
            Duration::from_secs(30),
        )
        .await;
        self.process = process;
    }
}

/// Every service in its own process, talking gRPC and Kafka, each on its own
/// PostgreSQL database, behind the gateway.
pub struct Polylith {
    pub base_url: String,
    pub processes: Vec<Process>,
    env: Vec<(String, String)>,
    dir: PathBuf,
    /// Extra replicas: (process name, their listeners).
    replicas: Vec<(String, Listeners)>,
    /// How each process was started, to start it again the same way.
    specs: Vec<Spec>,
    _tansu: ganglion_log::testing::Tansu,
}

/// Where one polylith process listens (`host:port` each).
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    /// Internal gRPC (authenticated).
    pub grpc: String,
    /// Public HTTP routes, for the gateway.
    pub http: String,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub operator: String,
}

impl Listeners {
    /// Free ports for a process to come.
    pub fn fresh() -> Listeners {
        let port = || format!("127.0.0.1:{}", free_port());
        Listeners {
            grpc: port(),
            http: port(),
            operator: port(),
        }
    }

    /// This process as an entry of `services.<name>.replicas` (an inline
    /// TOML table, as the environment takes it).
    pub fn replica_entry(&self, name: &str) -> String {
        format!(
            r#"{{name="{name}", address="http://{}", http_address="http://{}", operator_address="http://{}"}}"#,
            self.grpc, self.http, self.operator
        )
    }

    /// The settings that put `service` on these listeners.
    pub fn env(&self, service: &str) -> Vec<(String, String)> {
        let upper = service.to_uppercase();
        vec![
            (
                format!("GANGLION_SERVICES__{upper}__LISTEN"),
                self.grpc.clone(),
            ),
            (
                format!("GANGLION_SERVICES__{upper}__HTTP_LISTEN"),
                self.http.clone(),
            ),
            (
                format!("GANGLION_SERVICES__{upper}__OPERATOR_LISTEN"),
                self.operator.clone(),
            ),
        ]
    }
}

/// How a polylith process was started.
#[derive(Clone)]
struct Spec {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Its operator listener (`host:port`).
    operator: String,
}

/// The services the polylith test runs, in start order.
pub const POLYLITH_SERVICES: [&str; 8] = [
    "userapi",
    "keyserver",
    "roomserver",
    "syncapi",
    "federationapi",
    "federationsender",
    "mediaapi",
    "clientapi",
];

impl Polylith {
    /// The test broker's process ID.
    pub fn broker_pid(&self) -> u32 {
        self._tansu.pid()
    }

    /// `database_urls` gives each service of [`POLYLITH_SERVICES`] its database.
    pub async fn start(dir: &Path, database_urls: &[(&str, String)]) -> Polylith {
        Self::start_with(dir, database_urls, Vec::new()).await
    }

    /// As [`Polylith::start`], with further environment for every process.
    pub async fn start_with(
        dir: &Path,
        database_urls: &[(&str, String)],
        extra_env: Vec<(String, String)>,
    ) -> Polylith {
        let tansu = ganglion_log::testing::Tansu::start().await;
        Self::start_on_broker(dir, database_urls, extra_env, tansu).await
    }

    /// As [`Polylith::start_with`], on a broker started beforehand (e.g. a
    /// durable one, to restart).
    pub async fn start_on_broker(
        dir: &Path,
        database_urls: &[(&str, String)],
        extra_env: Vec<(String, String)>,
        tansu: ganglion_log::testing::Tansu,
    ) -> Polylith {
        let gateway_port = free_port();
        let mut env = vec![
            (
                "GANGLION_DATA_DIR".to_owned(),
                dir.join("data").display().to_string(),
            ),
            ("GANGLION_LOG__BACKEND".to_owned(), "kafka".to_owned()),
            ("GANGLION_LOG__KAFKA_BROKERS".to_owned(), tansu.brokers()),
            // tansu holds each fetch for the whole wait: keep hops short.
            (
                "GANGLION_LOG__KAFKA_FETCH_WAIT_MAX_MS".to_owned(),
                "2".to_owned(),
            ),
            (
                "GANGLION_CLIENT__LISTEN".to_owned(),
                format!("127.0.0.1:{gateway_port}"),
            ),
            (
                "GANGLION_OPERATOR__LISTEN".to_owned(),
                format!("127.0.0.1:{}", free_port()),
            ),
            (
                "GANGLION_FEDERATION__LISTEN".to_owned(),
                format!("127.0.0.1:{}", free_port()),
            ),
            // Rate limits are tested on their own (bad_input.rs).
            (
                "GANGLION_RATE_LIMITS__ENABLED".to_owned(),
                "false".to_owned(),
            ),
            (
                "GANGLION_TELEMETRY__LOG_FILTER".to_owned(),
                "warn,ganglion=info".to_owned(),
            ),
        ];
        for service in [
            "userapi",
            "roomserver",
            "syncapi",
            "clientapi",
            "federationapi",
            "federationsender",
            "keyserver",
            "mediaapi",
        ] {
            env.extend(Listeners::fresh().env(service));
        }
        env.extend(extra_env);
        for (service, url) in database_urls {
            env.push((
                format!(
                    "GANGLION_SERVICES__{}__DATABASE_URL",
                    service.to_uppercase()
                ),
                url.clone(),
            ));
        }
        let mut polylith = Polylith {
            base_url: format!("http://127.0.0.1:{gateway_port}"),
            processes: Vec::new(),
            env,
            dir: dir.to_owned(),
            replicas: Vec::new(),
            specs: Vec::new(),
            _tansu: tansu,
        };
        for service in POLYLITH_SERVICES {
            let process = polylith.spawn(service).await;
            polylith.specs.push(Spec {
                name: service.to_owned(),
                args: vec![service.to_owned()],
                env: polylith.env.clone(),
                operator: polylith.listeners(service).operator,
            });
            polylith.processes.push(process);
        }
        let mut gateway = Process::spawn("gateway", &["gateway"], &polylith.env, dir);
        wait_healthy(
            &format!("{}/healthz", polylith.gateway_operator_url()),
            &mut gateway,
            Duration::from_secs(30),
        )
        .await;
        polylith.specs.push(Spec {
            name: "gateway".to_owned(),
            args: vec!["gateway".to_owned()],
            env: polylith.env.clone(),
            operator: polylith
                .gateway_operator_url()
                .trim_start_matches("http://")
                .to_owned(),
        });
        polylith.processes.push(gateway);
        polylith
    }

    /// Starts another gateway on a port of its own; its base URL.
    pub async fn add_gateway(&mut self) -> String {
        let port = free_port();
        let operator = format!("127.0.0.1:{}", free_port());
        let mut env = self.env.clone();
        env.push((
            "GANGLION_CLIENT__LISTEN".to_owned(),
            format!("127.0.0.1:{port}"),
        ));
        env.push(("GANGLION_OPERATOR__LISTEN".to_owned(), operator.clone()));
        let name = format!(
            "gateway#{}",
            self.processes
                .iter()
                .filter(|p| p.name.starts_with("gateway"))
                .count()
                + 1
        );
        let mut process = Process::spawn(&name, &["gateway"], &env, &self.dir);
        wait_healthy(
            &format!("http://{operator}/healthz"),
            &mut process,
            Duration::from_secs(30),
        )
        .await;
        self.specs.push(Spec {
            name,
            args: vec!["gateway".to_owned()],
            env,
            operator,
        });
        self.processes.push(process);
        format!("http://127.0.0.1:{port}")
    }

    /// Waits until every process answers `/readyz` with 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        for Spec { name, operator, .. } in &self.specs {
            loop {
                let said = match client.get(format!("http://{operator}/readyz")).send().await {
                    Ok(answer) if answer.status().is_success() => break,
                    Ok(answer) => answer.text().await.unwrap_or_default(),
                    Err(error) => error.to_string(),
                };
                assert!(
                    Instant::now() < deadline,
                    "{name} is not ready ({said}):\n{}",
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The Kafka broker (tansu) every process talks to.
    pub fn broker(&self) -> &ganglion_log::testing::Tansu {
        &self._tansu
    }

    /// The Kafka broker, to restart.
    pub fn broker_mut(&mut self) -> &mut ganglion_log::testing::Tansu {
        &mut self._tansu
    }

    /// The names of the running processes, in start order.
    pub fn process_names(&self) -> Vec<String> {
        self.processes.iter().map(|p| p.name.clone()).collect()
    }

    /// Replaces a process as a rolling upgrade does: SIGTERM, waits for it
    /// to drain and exit (it must exit 0), starts it again the same way and
    /// waits until it is ready (`/readyz`). How long it took.
    pub async fn restart_gracefully(&mut self, name: &str) -> Duration {
        let started = Instant::now();
        self.stop_gracefully(name).await;
        self.start_again(name).await;
        started.elapsed()
    }

    /// SIGTERM, and waits for the process to drain and exit 0.
    pub async fn stop_gracefully(&mut self, name: &str) {
        let process = self
            .processes
            .iter_mut()
            .find(|p| p.name == name)
            .expect("the process runs");
        let status = process.terminate(Duration::from_secs(40)).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{name} did not drain and exit cleanly ({status:?}):\n{}",
            process.log_tail()
        );
    }

    /// Starts a stopped or killed process again as it was first started,
    /// and waits until it is ready. How long that took.
    pub async fn start_again(&mut self, name: &str) -> Duration {
        let started = Instant::now();
        let index = self
            .processes
            .iter()
            .position(|p| p.name == name)
            .expect("a process of that name");
        let spec = self
            .specs
            .iter()
            .find(|spec| spec.name == name)
            .cloned()
            .expect("how it was started");
        let args: Vec<&str> = spec.args.iter().map(String::as_str).collect();
        let operator = spec.operator;
        let mut process = Process::spawn(name, &args, &spec.env, &self.dir);
        wait_healthy(
            &format!("http://{operator}/readyz"),
            &mut process,
            Duration::from_secs(60),
        )
        .await;
        self.processes[index] = process;
        started.elapsed()
    }

    /// The listeners of `service`'s first process.
    pub fn listeners(&self, service: &str) -> Listeners {
        let setting = |suffix: &str| {
            let key = format!("GANGLION_SERVICES__{}__{suffix}", service.to_uppercase());
            // The last setting wins, as it does for the process.
            self.env
                .iter()
                .rev()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        Listeners {
            grpc: setting("LISTEN"),
            http: setting("HTTP_LISTEN"),
            operator: setting("OPERATOR_LISTEN"),
        }
    }

    /// The gateway's operator listener.
    pub fn gateway_operator_url(&self) -> String {
        let listen = self
            .env
            .iter()
            .find(|(k, _)| k == "GANGLION_OPERATOR__LISTEN")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        format!("http://{listen}")
    }

    /// The environment every process of this polylith is started with.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    async fn spawn(&self, service: &str) -> Process {
        let mut process = Process::spawn(service, &[service], &self.env, &self.dir);
        wait_healthy(
            &format!("http://{}/healthz", self.listeners(service).operator),
            &mut process,
            Duration::from_secs(30),
        )
        .await;
        process
    }

    /// Starts another replica of `service` (its own listen address, the same
    /// database and consumer group); its process is named `<service>#<n>`.
    pub async fn add_replica(&mut self, service: &str) -> String {
        self.add_replica_with(service, Vec::new()).await
    }

    /// As [`Polylith::add_replica`], with environment of its own (a view's
    /// replica gets its own database this way).
    pub async fn add_replica_with(
        &mut self,
        service: &str,
        extra_env: Vec<(String, String)>,
    ) -> String {
        self.add_replica_at(service, Listeners::fresh(), extra_env)
            .await
    }

    /// As [`Polylith::add_replica_with`], on listeners chosen beforehand
    /// (a replica listed in the configuration, or one coming back).
    pub async fn add_replica_at(
        &mut self,
        service: &str,
        listeners: Listeners,
        extra_env: Vec<(String, String)>,
    ) -> String {
        let n = self
            .processes
            .iter()
            .filter(|p| p.name == service || p.name.starts_with(&format!("{service}#")))
            .count()
            + 1;
        let name = format!("{service}#{n}");
        let own = listeners.env(service);
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| {
                !own.iter().any(|(mine, _)| mine == k)
                    && !extra_env.iter().any(|(extra, _)| extra == k)
            })
            .cloned()
            .collect();
        env.extend(own);
        env.extend(extra_env);
        let mut process = Process::spawn(&name, &[service], &env, &self.dir);
        wait_healthy(
            &format!("http://{}/healthz", listeners.operator),
            &mut process,
            Duration::from_secs(30),
        )
        .await;
        self.specs.push(Spec {
            name: name.clone(),
            args: vec![service.to_owned()],
            env,
            operator: listeners.operator.clone(),
        });
        self.processes.push(process);
        self.replicas.push((name.clone(), listeners));
        name
    }

    /// The listeners of a replica started by [`Polylith::add_replica`].
    pub fn replica_listeners(&self, name: &str) -> Listeners {
        self.replicas
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    }

    /// SIGKILLs a process for good.
    pub fn kill9(&mut self, name: &str) {
        if let Some(process) = self.processes.iter_mut().find(|p| p.name == name) {
            process.kill9();
        }
    }

    /// SIGKILLs one service's process and starts it again.
    pub async fn kill9_and_restart(&mut self, service: &str) {
        let index = self
            .processes
            .iter()
            .position(|p| p.name == service)
            .expect("service is running");
        self.processes[index].kill9();
        let process = self.spawn(service).await;
        self.processes[index] = process;
    }

    /// The log tails of every process, for failure messages.
    pub fn logs(&self) -> String {
        self.processes
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.name, p.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
