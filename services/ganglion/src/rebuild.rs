//! `ganglion rebuild <view> --into <database>`: a view's database built
//! afresh from the log, beside the live one.

use anyhow::Context;
use ganglion_base::Config;
use ganglion_base::internal_auth::InternalSecret;
use tokio::sync::watch;

use crate::wiring::{federation_client, keys_client, open_log, telemetry, users_client};

/// `ganglion rebuild <view> --into <database>`: a fresh copy of a view's
/// database, consumed from the start of the log (or from where an
/// interrupted rebuild of the same database stopped), with progress on
/// stderr: a bar with rate and time left on a terminal, a line every five
/// seconds otherwise. It ends once every partition is consumed up to the
/// log's end as it stood when the rebuild began.
pub(crate) async fn rebuild(mut config: Config, service: &str, into: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if service != "syncapi" {
        anyhow::bail!("rebuild knows these views: syncapi (not {service})");
    }
    if !(into.starts_with("postgres://") || into.starts_with("sqlite:")) {
        anyhow::bail!("--into: a postgres:// URL or sqlite:<path>");
    }
    let _telemetry = telemetry(&config, "rebuild")?;
    // A new SQLite file is created, not only opened.
    let into = if into.starts_with("sqlite:") && !into.contains('?') {
        format!("{into}?mode=rwc")
    } else {
        into.to_owned()
    };
    let into = into.as_str();
    config
        .services
        .entry(service.to_owned())
        .or_default()
        .database_url = Some(into.to_owned());
    let secret = InternalSecret::load_or_generate(&config).context("the internal secret")?;
    let (stop, shutdown) = watch::channel(false);
    let started = ganglion_syncapi::start(
        &config,
        open_log(&config, "rebuild-syncapi")?,
        users_client(&config, &secret)?,
        keys_client(&config, &secret)?,
        federation_client(&config, &secret)?,
        "rebuild",
        shutdown,
    )
    .await?;
    let view = started.api;
    let targets: Vec<u64> = view
        .progress()
        .await?
        .into_iter()
        .map(|(_, end)| end)
        .collect();
    let total: u64 = targets.iter().sum();
    let began = std::time::Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    loop {
        let (done, caught_up) = reached(&view.progress().await?, &targets);
        let seconds = began.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / seconds;
        let left = if rate > 0.0 {
            (total.saturating_sub(done)) as f64 / rate
        } else {
            f64::INFINITY
        };
        if caught_up {
            if terminal {
                eprintln!();
            }
            eprintln!(
                "rebuild of {service}: caught up, {done} records in {seconds:.1} s ({rate:.0} records/s), into {into}"
            );
            break;
        }
        if terminal {
            let width = 30;
            let filled = if total == 0 {
                width
            } else {
                (done as usize * width) / total as usize
            };
            eprint!(
                "\r[{}{}] {done}/{total} records, {rate:.0}/s, {left:.0} s left ",
                "#".repeat(filled),
                ".".repeat(width - filled.min(width)),
            );
        } else if last_line.elapsed() >= std::time::Duration::from_secs(5) {
            tracing::info!(service, done, total, rate, left_s = left, "rebuilding");
            eprintln!(
                "rebuild of {service}: {done}/{total} records, {rate:.0}/s, {left:.0} s left"
            );
            last_line = std::time::Instant::now();
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let _ = stop.send(true);
    Ok(())
}

/// Records consumed towards `targets` (each partition counted up to its
/// target), and whether every partition reached its target.
fn reached(progress: &[(u64, u64)], targets: &[u64]) -> (u64, bool) {
    let mut done = 0;
    let mut all = true;
    for ((consumed, _), target) in progress.iter().zip(targets) {
        done += (*consumed).min(*target);
        all &= consumed >= target;
    }
    (done, all)
}
