//! The blob store conformance suite: every store passes the same checks,
//! the filesystem in a scratch directory and S3 against a real
//! S3-compatible server (moto, started here; the test command installs it).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use sha2::Digest;

use super::{BlobHash, BlobStore, ByteStream, FsStore, S3Store, StoreError};

fn stream_of(chunks: Vec<Vec<u8>>) -> ByteStream {
    futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c)))).boxed()
}

fn hash_of(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn read_all(store: &dyn BlobStore, hash: &BlobHash) -> Option<(u64, Vec<u8>)> {
    let blob = store.get(hash).await.expect("get")?;
    let mut bytes = Vec::new();
    let mut stream = blob.bytes;
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.expect("a chunk"));
    }
    Some((blob.size, bytes))
}

/// Bytes that differ from test to test and store to store.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

async fn conformance(store: Arc<dyn BlobStore>, seed: u8) {
    // A blob in several chunks: named by its SHA-256, read back whole.
    let small = pattern(10_000, seed);
    let chunks = small.chunks(3_000).map(<[u8]>::to_vec).collect();
    let stored = store.put(stream_of(chunks), 1 << 20).await.expect("put");
    assert_eq!(stored.hash.as_str(), hash_of(&small));
    assert_eq!(stored.size, small.len() as u64);
    assert_eq!(&stored.head[..], &small[..super::HEAD_BYTES]);
    let (size, read) = read_all(&*store, &stored.hash).await.expect("stored");
    assert_eq!(
        (size, read.as_slice()),
        (small.len() as u64, small.as_slice())
    );

    // The same bytes again: the same name, still readable.
    let again = store
        .put(stream_of(vec![small.clone()]), 1 << 20)
        .await
        .expect("put again");
    assert_eq!(again.hash, stored.hash);
    assert_eq!(
        read_all(&*store, &stored.hash).await.expect("stored").1,
        small
    );

    // Past the limit: refused, nothing kept.
    let big = pattern(5_000, seed ^ 1);
    let refused = store
        .put(
            stream_of(big.chunks(1_000).map(<[u8]>::to_vec).collect()),
            4_999,
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::TooLarge(4_999))),
        "{refused:?}"
    );
    let would_be = BlobHash::parse(&hash_of(&big)).expect("a hash");
    assert!(read_all(&*store, &would_be).await.is_none());
    // Exactly at the limit: taken.
    store
        .put(stream_of(vec![big.clone()]), 5_000)
        .await
        .expect("at the limit");
    assert_eq!(read_all(&*store, &would_be).await.expect("stored").1, big);

    // A body that fails half way: an error, nothing kept.
    let broken = pattern(2_000, seed ^ 2);
    let failing = futures::stream::iter(vec![
        Ok(Bytes::from(broken[..1_000].to_vec())),
        Err(std::io::Error::other("the client went away")),
    ])
    .boxed();
    let failed = store.put(failing, 1 << 20).await;
    assert!(matches!(failed, Err(StoreError::Body(_))), "{failed:?}");
    let partial = BlobHash::parse(&hash_of(&broken[..1_000])).expect("a hash");
    assert!(read_all(&*store, &partial).await.is_none());

    // Empty content is content too.
    let empty = store.put(stream_of(vec![]), 10).await.expect("empty");
    assert_eq!(empty.size, 0);
    assert_eq!(
        read_all(&*store, &empty.hash).await.expect("stored"),
        (0, vec![])
    );

    // Larger than one S3 part (5 MiB), in 64 KiB chunks.
    let large = pattern(12 * 1024 * 1024 + 17, seed ^ 3);
    let stored_large = store
        .put(
            stream_of(large.chunks(64 * 1024).map(<[u8]>::to_vec).collect()),
            64 << 20,
        )
        .await
        .expect("a large blob");
    assert_eq!(stored_large.hash.as_str(), hash_of(&large));
    let (size, read) = read_all(&*store, &stored_large.hash).await.expect("stored");
    assert_eq!(size, large.len() as u64);
    assert!(read == large, "the large blob read back differs");

    // Deleting: gone, and deleting again is no error.
    store.delete(&stored.hash).await.expect("delete");
    assert!(read_all(&*store, &stored.hash).await.is_none());
    store.delete(&stored.hash).await.expect("delete again");

    // A name never stored.
    let unknown = BlobHash::parse(&hash_of(b"never stored")).expect("a hash");
    assert!(read_all(&*store, &unknown).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filesystem_store_conforms() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let store = Arc::new(FsStore::open(dir.path().to_owned(), true).expect("open"));
    conformance(store, 7).await;
    // No staging file is left behind by the refused, failed and
    // duplicate uploads.
    let staging: Vec<_> = std::fs::read_dir(dir.path().join("staging"))
        .expect("staging")
        .collect();
    assert!(staging.is_empty(), "left in staging: {staging:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_store_conforms() {
    let moto = ganglion_log::testing::Moto::start("media").await;
    let dir = tempfile::tempdir().expect("a scratch directory");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "moto-secret\n").expect("secret file");
    let config = ganglion_base::config::S3Config {
        bucket: "media".to_owned(),
        endpoint: Some(moto.endpoint()),
        region: "us-east-1".to_owned(),
        access_key_id: Some("moto".to_owned()),
        secret_access_key_file: Some(secret),
        prefix: "ganglion/".to_owned(),
        allow_http: true,
    };
    let store = Arc::new(S3Store::open(&config).expect("open"));
    conformance(store, 11).await;
}

#[test]
fn a_hash_from_the_database_names_nothing_outside_the_store() {
    assert!(BlobHash::parse(&hash_of(b"x")).is_some());
    for bad in [
        "../../etc/passwd",
        "",
        &"A".repeat(64),
        &format!("{}/", &"a".repeat(63)),
        &"a".repeat(65),
    ] {
        assert!(BlobHash::parse(bad).is_none(), "{bad:?}");
    }
}
