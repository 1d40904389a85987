//! Where media bytes live: a blob store behind one trait, content-addressed
//! (a blob's name is the SHA-256 of its bytes, so identical uploads are
//! stored once). Two stores pass the same conformance suite (`tests.rs`):
//! a directory on the local filesystem (`fs.rs`, the default) and an
//! S3-compatible bucket through the `object_store` crate (`s3.rs`).
//!
//! Bytes stream through: a blob is written as it arrives and read as it is
//! sent, never held whole in memory.

mod fs;
mod s3;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use ganglion_base::Config;
use ganglion_base::config::MediaStoreKind;
use sha2::Digest;

pub(crate) use fs::FsStore;
pub(crate) use s3::S3Store;

/// A blob's name: the lowercase hex SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BlobHash(String);

impl BlobHash {
    /// A name read back from the database: 64 lowercase hex digits or
    /// nothing (a tampered row must not name a path outside the store).
    pub(crate) fn parse(hex: &str) -> Option<BlobHash> {
        (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| BlobHash(hex.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    fn of(digest: sha2::Sha256) -> BlobHash {
        BlobHash(
            digest
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }
}

/// Bytes arriving (an upload's body) or leaving (a download).
pub(crate) type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A blob written.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) hash: BlobHash,
    pub(crate) size: u64,
    /// Its first bytes (up to [`HEAD_BYTES`]), for sniffing its type.
    pub(crate) head: Bytes,
}

/// A blob read: its size and its bytes, streamed.
pub(crate) struct Blob {
    pub(crate) size: u64,
    pub(crate) bytes: ByteStream,
}

/// How many leading bytes of a blob [`Stored::head`] keeps.
pub(crate) const HEAD_BYTES: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// More than the limit arrived; nothing was kept.
    #[error("more than {0} bytes")]
    TooLarge(u64),
    /// The bytes could not be read from the client.
    #[error("reading the upload: {0}")]
    Body(std::io::Error),
    /// The store failed.
    #[error("blob store: {0}")]
    Backend(String),
}

/// A content-addressed blob store.
#[async_trait::async_trait]
pub(crate) trait BlobStore: Send + Sync {
    /// Writes what `bytes` yields, at most `limit` bytes (past it: nothing
    /// is kept, [`StoreError::TooLarge`]), and names it by its hash. When a
    /// blob of that hash exists already, the new copy is dropped.
    async fn put(&self, bytes: ByteStream, limit: u64) -> Result<Stored, StoreError>;
    /// The blob named `hash`, if the store has it.
    async fn get(&self, hash: &BlobHash) -> Result<Option<Blob>, StoreError>;
    /// Removes the blob named `hash` (nothing if it is not there).
    #[allow(
        dead_code,
        reason = "media deletion by operators comes next; the conformance suite covers it"
    )]
    async fn delete(&self, hash: &BlobHash) -> Result<(), StoreError>;
}

/// The store the configuration names.
pub(crate) fn open(config: &Config) -> Result<Arc<dyn BlobStore>, StoreError> {
    Ok(match config.media.store {
        MediaStoreKind::Fs => Arc::new(FsStore::open(
            config.media_dir(),
            config.durability == ganglion_base::config::Durability::Fsync,
        )?),
        MediaStoreKind::S3 => Arc::new(S3Store::open(&config.media.s3)?),
    })
}

/// Hashes, counts and keeps the head of bytes as they pass.
struct Tally {
    digest: sha2::Sha256,
    size: u64,
    head: Vec<u8>,
    limit: u64,
}

impl Tally {
    fn new(limit: u64) -> Tally {
        Tally {
            digest: sha2::Sha256::new(),
            size: 0,
            head: Vec::new(),
            limit,
        }
    }

    /// Takes a chunk in: [`StoreError::TooLarge`] once past the limit.
    fn take(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(StoreError::TooLarge(self.limit));
        }
        self.digest.update(chunk);
        if self.head.len() < HEAD_BYTES {
            let room = HEAD_BYTES - self.head.len();
            self.head.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        Ok(())
    }

    fn finish(self) -> Stored {
        Stored {
            hash: BlobHash::of(self.digest),
            size: self.size,
            head: Bytes::from(self.head),
        }
    }
}

/// A random name for a blob being written.
fn staging_name() -> String {
    ganglion_base::random::alphanumeric(24)
}
