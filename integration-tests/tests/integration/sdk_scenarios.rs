//! Real client SDKs as drivers: matrix-nio (Python) and matrix-js-sdk
//! (Node) each run one two-user conversation against a fresh monolith and
//! check what their own sync state shows (`integration-tests/sdk/`).
//! `scripts/test.sh` installs both; a missing install fails the test.

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
    let run = tokio::process::Command::new(&program)
        .arg(&script)
        .arg(&server.base_url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the scenario finishes within 120 s")
        .expect("the scenario starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        script.display(),
        output.status
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
