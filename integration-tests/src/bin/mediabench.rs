//! The media benchmark: Ganglion's monolith and Synapse (the test suite's,
//! on SQLite) started in one run, each measured the same way, figures
//! printed side by side:
//! - upload and download throughput of 1 MB files (ten of each) and of one
//!   100 MB file, streamed from and to memory on loopback;
//! - Ganglion's peak resident memory above idle while the 100 MB upload
//!   streams in (Synapse's too, for reference);
//! - thumbnailing a 12-megapixel JPEG: upload until the first 320×240
//!   thumbnail is served (Synapse makes its thumbnails while it answers the
//!   upload; Ganglion after), and Ganglion making one size to measure.
//!
//! `TEST_GANGLION_BIN=target/release/ganglion target/release/mediabench`
//! (build both with `cargo build --release -p ganglion -p ganglion-integration-tests`).

use std::time::{Duration, Instant};

use futures::StreamExt;
use ganglion_integration_tests::client::Client;
use ganglion_integration_tests::process::{Monolith, rss_kib};
use ganglion_integration_tests::synapse::Synapse;
use serde_json::json;

const MB: usize = 1_000_000;
/// Both servers take uploads up to this size for the run.
const LIMIT: usize = 200 * 1024 * 1024;

struct Server {
    name: &'static str,
    client: Client,
    pid: u32,
}

/// One side's figures.
#[derive(Default)]
struct Figures {
    upload_1mb: f64,
    download_1mb: f64,
    upload_100mb: f64,
    download_100mb: f64,
    rss_idle_mb: f64,
    rss_peak_upload_mb: f64,
    thumbnail_after_upload_ms: f64,
    thumbnail_to_measure_ms: Option<f64>,
}

fn rss_mb(pid: u32) -> f64 {
    rss_kib(pid).unwrap_or(0) as f64 / 1024.0
}

async fn upload(server: &Server, body: reqwest::Body, length: usize, content_type: &str) -> String {
    // Declared even when streamed: Synapse refuses uploads without it.
    let response = server
        .client
        .http
        .post(format!(
            "{}/_matrix/media/v3/upload",
            server.client.base_url
        ))
        .bearer_auth(&server.client.access_token)
        .header("content-type", content_type)
        .header("content-length", length)
        .body(body)
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .expect("upload sent");
    let status = response.status();
    let value: serde_json::Value = response.json().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "{} upload: {status} {value}",
        server.name
    );
    value["content_uri"].as_str().unwrap_or_default().to_owned()
}

/// Downloads `mxc` (or its thumbnail, with `query`) and counts its bytes.
async fn fetch(server: &Server, kind: &str, mxc: &str, query: &str) -> usize {
    let url = format!(
        "{}/_matrix/client/v1/media/{kind}/{}{query}",
        server.client.base_url,
        mxc.trim_start_matches("mxc://")
    );
    let response = server
        .client
        .http
        .get(url)
        .bearer_auth(&server.client.access_token)
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .expect("download sent");
    assert!(
        response.status().is_success(),
        "{} {kind}: {}",
        server.name,
        response.status()
    );
    let mut bytes = 0;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        bytes += chunk.expect("a chunk").len();
    }
    bytes
}

/// `size` bytes in 1 MiB chunks, made as they are sent.
fn streamed(size: usize) -> reqwest::Body {
    let mut left = size;
    let chunks = std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(1024 * 1024);
        left -= n;
        Some(Ok::<_, std::io::Error>(vec![0x5a_u8; n]))
    });
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

/// A 4000×3000 JPEG (12 megapixels) of a gradient.
fn photo() -> Vec<u8> {
    let image = image::RgbImage::from_fn(4000, 3000, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("jpeg");
    out.into_inner()
}

async fn measure(server: &Server, photo: &[u8], ganglion: bool) -> Figures {
    let mut figures = Figures {
        rss_idle_mb: rss_mb(server.pid),
        ..Figures::default()
    };
    // Ten 1 MB files up, then down.
    let started = Instant::now();
    let mut small = Vec::new();
    for i in 0..10 {
        let body = vec![i as u8; MB];
        small.push(upload(server, body.into(), MB, "application/octet-stream").await);
    }
    figures.upload_1mb = 10.0 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for mxc in &small {
        assert_eq!(fetch(server, "download", mxc, "").await, MB);
    }
    figures.download_1mb = 10.0 / started.elapsed().as_secs_f64();

    // 100 MB up, sampling the server's resident memory meanwhile.
    let pid = server.pid;
    let (peak_tx, peak_rx) = tokio::sync::oneshot::channel::<f64>();
    let watcher = tokio::spawn(async move {
        let mut peak = 0.0_f64;
        let mut stop = peak_rx;
        loop {
            peak = peak.max(rss_mb(pid));
            tokio::select! {
                _ = &mut stop => return peak,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    });
    let started = Instant::now();
    let big = upload(
        server,
        streamed(100 * MB),
        100 * MB,
        "application/octet-stream",
    )
    .await;
    figures.upload_100mb = 100.0 / started.elapsed().as_secs_f64();
    let _ = peak_tx.send(0.0);
    figures.rss_peak_upload_mb = watcher.await.unwrap_or(0.0);
    let started = Instant::now();
    assert_eq!(fetch(server, "download", &big, "").await, 100 * MB);
    figures.download_100mb = 100.0 / started.elapsed().as_secs_f64();

    // A 12-megapixel photo: upload until its first thumbnail is served.
    let started = Instant::now();
    let mxc = upload(server, photo.to_vec().into(), photo.len(), "image/jpeg").await;
    assert!(
        fetch(
            server,
            "thumbnail",
            &mxc,
            "?width=320&height=240&method=scale"
        )
        .await
            > 0
    );
    figures.thumbnail_after_upload_ms = started.elapsed().as_secs_f64() * 1000.0;
    if ganglion {
        // A size not kept: made on the spot from the 12 MP original.
        let started = Instant::now();
        assert!(
            fetch(
                server,
                "thumbnail",
                &mxc,
                "?width=1000&height=750&method=scale"
            )
            .await
                > 0
        );
        figures.thumbnail_to_measure_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    }
    figures
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    println!("making a 12-megapixel JPEG");
    let photo = photo();
    println!("  {} bytes", photo.len());

    let synapse = Synapse::start_with(
        &dir.path().join("synapse"),
        json!({"max_upload_size": format!("{LIMIT}")}),
    )
    .await;
    let synapse_side = Server {
        name: "synapse",
        client: synapse.register("bench", "bench-password-1").await,
        pid: synapse.pid().unwrap_or(0),
    };
    println!("measuring Synapse");
    let theirs = measure(&synapse_side, &photo, false).await;
    drop(synapse);

    std::fs::create_dir_all(dir.path().join("ganglion"))?;
    let mut env = Monolith::default_env(&dir.path().join("ganglion"));
    env.push((
        "GANGLION_MEDIA__MAX_UPLOAD_BYTES".to_owned(),
        LIMIT.to_string(),
    ));
    let monolith = Monolith::start_with(&dir.path().join("ganglion"), env).await;
    let ganglion_side = Server {
        name: "ganglion",
        client: Client::register(&monolith.base_url, "bench", "bench-password-1").await,
        pid: monolith.process.pid().unwrap_or(0),
    };
    println!("measuring the Ganglion monolith");
    let ours = measure(&ganglion_side, &photo, true).await;

    println!();
    println!("| media | Synapse | Ganglion monolith |");
    println!("|---|---|---|");
    let row = |what: &str, a: String, b: String| println!("| {what} | {a} | {b} |");
    row(
        "upload, 1 MB files",
        format!("{:.1} files/s", theirs.upload_1mb),
        format!("{:.1} files/s", ours.upload_1mb),
    );
    row(
        "download, 1 MB files",
        format!("{:.1} files/s", theirs.download_1mb),
        format!("{:.1} files/s", ours.download_1mb),
    );
    row(
        "upload, 100 MB",
        format!("{:.1} MB/s", theirs.upload_100mb),
        format!("{:.1} MB/s", ours.upload_100mb),
    );
    row(
        "download, 100 MB",
        format!("{:.1} MB/s", theirs.download_100mb),
        format!("{:.1} MB/s", ours.download_100mb),
    );
    row(
        "resident memory: idle → peak during the 100 MB upload",
        format!(
            "{:.1} → {:.1} MB",
            theirs.rss_idle_mb, theirs.rss_peak_upload_mb
        ),
        format!(
            "{:.1} → {:.1} MB",
            ours.rss_idle_mb, ours.rss_peak_upload_mb
        ),
    );
    row(
        "12 MP JPEG: upload until its 320×240 thumbnail is served",
        format!("{:.0} ms", theirs.thumbnail_after_upload_ms),
        format!("{:.0} ms", ours.thumbnail_after_upload_ms),
    );
    row(
        "12 MP JPEG: one 1000×750 thumbnail made to measure",
        "—".to_owned(),
        ours.thumbnail_to_measure_ms
            .map_or("—".to_owned(), |ms| format!("{ms:.0} ms")),
    );
    drop(monolith);
    Ok(())
}
