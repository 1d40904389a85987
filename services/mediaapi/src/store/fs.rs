//! The filesystem store: blobs under `<dir>/blobs/ab/cd/<hash>`, written
//! to `<dir>/staging/` first and renamed into place once whole, so a
//! reader never sees half a blob. With fsync durability, a blob is on disk
//! before the upload that wrote it is answered.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{Blob, BlobHash, BlobStore, ByteStream, StoreError, Stored, Tally, staging_name};

/// Staging files older than this were left by a process that died while
/// writing them (replicas share the directory, so younger ones may be
/// another's upload in progress).
const STALE_STAGING: Duration = Duration::from_secs(24 * 3600);

pub(crate) struct FsStore {
    root: PathBuf,
    fsync: bool,
}

fn backend(error: std::io::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

/// A staging file, removed when dropped unless it was renamed into place
/// (an upload that fails or is cancelled leaves nothing behind).
struct Staging(Option<PathBuf>);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl FsStore {
    /// Opens (creating) the store in `root` and removes stale staging files.
    pub(crate) fn open(root: PathBuf, fsync: bool) -> Result<FsStore, StoreError> {
        let staging = root.join("staging");
        std::fs::create_dir_all(&staging).map_err(backend)?;
        std::fs::create_dir_all(root.join("blobs")).map_err(backend)?;
        if let Ok(entries) = std::fs::read_dir(&staging) {
            let now = SystemTime::now();
            for entry in entries.flatten() {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|modified| now.duration_since(modified).ok())
                    .is_some_and(|age| age > STALE_STAGING);
                if stale {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(FsStore { root, fsync })
    }

    fn path_of(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.as_str();
        self.root
            .join("blobs")
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(hex)
    }
}

/// Flushes a directory's entries (a rename into it) to disk.
async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}

#[async_trait::async_trait]
impl BlobStore for FsStore {
    async fn put(&self, mut bytes: ByteStream, limit: u64) -> Result<Stored, StoreError> {
        let path = self.root.join("staging").join(staging_name());
        let mut file = tokio::fs::File::create(&path).await.map_err(backend)?;
        let mut staging = Staging(Some(path.clone()));
        let mut tally = Tally::new(limit);
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk.map_err(StoreError::Body)?;
            tally.take(&chunk)?;
            file.write_all(&chunk).await.map_err(backend)?;
        }
        file.flush().await.map_err(backend)?;
        if self.fsync {
            file.sync_all().await.map_err(backend)?;
        }
        drop(file);
        let stored = tally.finish();
        let target = self.path_of(&stored.hash);
        if tokio::fs::try_exists(&target).await.map_err(backend)? {
            // The same bytes are stored already; the staging copy goes.
            return Ok(stored);
        }
        let parent = target.parent().map(Path::to_owned).unwrap_or_default();
        tokio::fs::create_dir_all(&parent).await.map_err(backend)?;
        tokio::fs::rename(&path, &target).await.map_err(backend)?;
        staging.0 = None;
        if self.fsync {
            sync_dir(&parent).await.map_err(backend)?;
        }
        Ok(stored)
    }

    async fn get(&self, hash: &BlobHash) -> Result<Option<Blob>, StoreError> {
        let file = match tokio::fs::File::open(self.path_of(hash)).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(backend(error)),
        };
        let size = file.metadata().await.map_err(backend)?.len();
        Ok(Some(Blob {
            size,
            bytes: tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024).boxed(),
        }))
    }

    async fn delete(&self, hash: &BlobHash) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path_of(hash)).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(backend(error)),
        }
    }
}
