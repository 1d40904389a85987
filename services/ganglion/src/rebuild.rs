//! `ganglion rebuild <view> --into <database>`: a view's database built
//! afresh from the log, beside the live one.

use anyhow::Context;
use ganglion_base::Config;
use ganglion_base::internal_auth::InternalSecret;
use tokio::sync::watch;

use crate::wiring::{federation_client, keys_client, open_log, telemetry, users_client};

/// `ganglion rebuild <view> --into <database>`: a fresh copy of a view's
/// database (the syncapi's, or the federationsender's joined hosts),
/// consumed from the start of the log (or from where an interrupted
/// rebuild of the same database stopped), with progress on stderr. It ends
/// once every partition is consumed up to the log's end as it stood when
/// the rebuild began (for the federationsender: up to where its live
/// consumer group stood); switching to the new database is the operator's.
pub(crate) async fn rebuild(mut config: Config, service: &str, into: &str) -> anyhow::Result<()> {
    if !VIEWS.contains(&service) {
        anyhow::bail!(
            "rebuild knows these views: {} (not {service})",
            VIEWS.join(", ")
        );
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
    let log = open_log(&config, &format!("rebuild-{service}"))?;
    if service == "federationsender" {
        let rebuild = ganglion_federationsender::rebuild(&config, log).await?;
        show_progress(service, into, || async { Ok(rebuild.progress()) }).await?;
        return Ok(rebuild.finish().await?);
    }
    let secret = InternalSecret::load_or_generate(&config).context("the internal secret")?;
    let (stop, shutdown) = watch::channel(false);
    let started = ganglion_syncapi::start(
        &config,
        log,
        users_client(&config, &secret)?,
        keys_client(&config, &secret)?,
        federation_client(&config, &secret)?,
        "rebuild",
        shutdown,
    )
    .await?;
    let view = started.api;
    show_progress(service, into, || async { Ok(view.progress().await?) }).await?;
    let _ = stop.send(true);
    Ok(())
}

/// The views `rebuild` knows.
const VIEWS: [&str; 2] = ["syncapi", "federationsender"];

/// Polls `progress` (per partition: records consumed, the log's end) until
/// every partition reaches the end it had at the first poll, on stderr: a
/// bar with rate and time left on a terminal, a line every five seconds
/// (and a structured log event) otherwise.
async fn show_progress<F, Fut>(service: &str, into: &str, progress: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<(u64, u64)>>>,
{
    use std::io::IsTerminal;
    let targets: Vec<u64> = progress().await?.into_iter().map(|(_, end)| end).collect();
    let total: u64 = targets.iter().sum();
    let began = std::time::Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    loop {
        let (done, caught_up) = reached(&progress().await?, &targets);
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
            return Ok(());
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
