//! Real client SDKs as drivers: matrix-nio (Python) and matrix-js-sdk
//! (Node) each run one two-user conversation against a fresh monolith and
//! check what their own sync state shows; matrix-rust-sdk runs the
//! end-to-end encryption scenario, across federation with Synapse too
//! (`integration-tests/sdk/`). `scripts/test.sh` installs and builds them;
//! a missing one fails the test.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ganglion_integration_tests::process::Monolith;

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk")
}

/// Runs a scenario script against a fresh monolith; fails with its output
/// unless it exits 0.
async fn run_scenario(program: PathBuf, script: PathBuf, installed: PathBuf) {
    assert!(
        installed.exists(),
        "{} is missing: run scripts/test.sh (it installs the client SDKs)",
        installed.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let what = script.display().to_string();
    run_driver(
        &program,
        &[script.as_os_str(), OsStr::new(&server.base_url)],
        Duration::from_secs(120),
        &what,
        String::new,
    )
    .await;
}

/// Runs one driver program with its arguments; prints what it printed and
/// fails with its output and `more_logs()` unless it exits 0 within `limit`.
async fn run_driver(
    program: &Path,
    args: &[&OsStr],
    limit: Duration,
    what: &str,
    more_logs: impl FnOnce() -> String,
) {
    let run = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{what} finishes within {limit:?}"))
        .unwrap_or_else(|e| panic!("{what} starts: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}\n{}",
        output.status,
        more_logs()
    );
}

#[tokio::test]
async fn matrix_nio_scenario() {
    let nio = sdk_dir().join("nio");
    let python = nio.join(".venv/bin/python");
    run_scenario(python.clone(), nio.join("scenario.py"), python).await;
}

#[tokio::test]
async fn matrix_js_sdk_scenario() {
    let js = sdk_dir().join("js");
    run_scenario(
        PathBuf::from("node"),
        js.join("scenario.mjs"),
        js.join("node_modules/matrix-js-sdk"),
    )
    .await;
}

/// The encryption scenario's driver (`integration-tests/sdk/rust`), as
/// `scripts/test.sh` builds it; `E2EE_SCENARIO_BIN` names another.
fn e2ee_driver() -> PathBuf {
    std::env::var_os("E2EE_SCENARIO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/e2ee-scenario")
        })
}

/// matrix-rust-sdk with its crypto: two users with two devices each set up
/// cross-signing, verify their devices and each other, talk encrypted; a
/// third device restores the room keys from the key backup (recovery) and
/// reads the history; a Synapse user joins, is verified and talks too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rust_sdk_encryption_scenario_with_synapse() {
    let driver = e2ee_driver();
    assert!(
        driver.exists(),
        "{} is missing: run scripts/test.sh (it builds the driver)",
        driver.display()
    );
    let (synapse, ours, _our_name, _dirs) = crate::federation_queries::with_synapse().await;
    for (user, password) in [("alice", "pw-alice-e2ee"), ("bob", "pw-bob-e2ee")] {
        ganglion_integration_tests::client::Client::register(&ours.base_url, user, password).await;
    }
    synapse.register("sam", "pw-sam-e2ee").await;
    let synapse_url = format!("https://127.0.0.1:{}", synapse.port);
    run_driver(
        &driver,
        &[
            OsStr::new(&ours.base_url),
            OsStr::new(&synapse_url),
            OsStr::new("sam"),
            OsStr::new("pw-sam-e2ee"),
        ],
        Duration::from_secs(300),
        "the encryption scenario",
        || crate::federation_queries::logs_with_synapse(&synapse, &ours),
    )
    .await;
}
