//! Measures the embedded log's produce → consume latency: one producer and
//! one waiting consumer, one record in flight at a time, so each figure is the
//! time from calling `produce` to the consumer's `next()` returning it.
//!
//! `cargo run -p ganglion-log --example embedded_latency [--release] [records]`
#![allow(clippy::unwrap_used)] // a benchmark may stop at the first error

use std::time::{Duration, Instant};

use ganglion_log::{EmbeddedLog, Log, OutgoingRecord};

#[tokio::main]
async fn main() {
    let records: usize = std::env::args()
        .nth(1)
        .map_or(20_000, |n| n.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).unwrap();
    log.ensure_topic("latency", 4).await.unwrap();
    let mut consumer = log.consumer("bench", &["latency"]).await.unwrap();
    let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        for _ in 0..records {
            let record = consumer.next().await.unwrap();
            let at = Instant::now();
            consumer.commit(&record).await.unwrap();
            received_tx.send(at).unwrap();
        }
    });

    let payload = vec![b'x'; 1024];
    let mut latencies = Vec::with_capacity(records);
    let started = Instant::now();
    for i in 0..records {
        let record = OutgoingRecord {
            key: format!("!room{}:example.org", i % 16).into_bytes(),
            headers: vec![("traceparent".to_owned(), b"00-abc-def-01".to_vec())],
            payload: payload.clone(),
        };
        let sent = Instant::now();
        log.produce("latency", record).await.unwrap();
        let got = received.recv().await.unwrap();
        latencies.push(got.duration_since(sent));
    }
    let elapsed = started.elapsed();
    reader.await.unwrap();

    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let mean = latencies.iter().sum::<Duration>() / records as u32;
    println!("{records} records of 1 KiB, produce -> consumer (one in flight, commit per record):");
    println!(
        "  mean {mean:?}  p50 {:?}  p99 {:?}  max {:?}",
        at(0.5),
        at(0.99),
        at(1.0)
    );
    println!(
        "  round trips per second: {:.0}",
        records as f64 / elapsed.as_secs_f64()
    );
}
