//! The S3 store: blobs as objects `<prefix>blobs/<hash>` of an
//! S3-compatible bucket, through the `object_store` crate. An upload
//! streams into a multipart upload at `<prefix>staging/<random>` (parts of
//! 5 MiB, so memory stays bounded), then is copied to its hash's name and
//! the staging object removed.

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

use super::{Blob, BlobHash, BlobStore, ByteStream, StoreError, Stored, Tally, staging_name};

pub(crate) struct S3Store {
    bucket: Box<dyn ObjectStore>,
    prefix: String,
}

fn backend(error: object_store::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

/// Parts in flight at once while an upload streams in.
const PARTS_IN_FLIGHT: usize = 2;

impl S3Store {
    pub(crate) fn open(config: &ganglion_base::config::S3Config) -> Result<S3Store, StoreError> {
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_allow_http(config.allow_http);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(key_id) = &config.access_key_id {
            builder = builder.with_access_key_id(key_id);
        }
        if let Some(file) = &config.secret_access_key_file {
            let secret = std::fs::read_to_string(file).map_err(|e| {
                StoreError::Backend(format!(
                    "media.s3.secret_access_key_file {}: {e}",
                    file.display()
                ))
            })?;
            builder = builder.with_secret_access_key(secret.trim_end_matches(['\n', '\r']));
        }
        Ok(S3Store {
            bucket: Box::new(builder.build().map_err(backend)?),
            prefix: config.prefix.clone(),
        })
    }

    fn path_of(&self, hash: &BlobHash) -> Path {
        Path::from(format!("{}blobs/{}", self.prefix, hash.as_str()))
    }
}

#[async_trait::async_trait]
impl BlobStore for S3Store {
    async fn put(&self, mut bytes: ByteStream, limit: u64) -> Result<Stored, StoreError> {
        let staging = Path::from(format!("{}staging/{}", self.prefix, staging_name()));
        let upload = self.bucket.put_multipart(&staging).await.map_err(backend)?;
        let mut writer = WriteMultipart::new(upload);
        let mut tally = Tally::new(limit);
        let streamed: Result<(), StoreError> = async {
            while let Some(chunk) = bytes.next().await {
                let chunk = chunk.map_err(StoreError::Body)?;
                tally.take(&chunk)?;
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(backend)?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(error) = streamed {
            let _ = writer.abort().await;
            return Err(error);
        }
        writer.finish().await.map_err(backend)?;
        let stored = tally.finish();
        let target = self.path_of(&stored.hash);
        let exists = match self.bucket.head(&target).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(error) => return Err(backend(error)),
        };
        if !exists {
            self.bucket.copy(&staging, &target).await.map_err(backend)?;
        }
        if let Err(error) = self.bucket.delete(&staging).await {
            tracing::warn!(%error, "could not remove a staging object");
        }
        Ok(stored)
    }

    async fn get(&self, hash: &BlobHash) -> Result<Option<Blob>, StoreError> {
        match self.bucket.get(&self.path_of(hash)).await {
            Ok(result) => Ok(Some(Blob {
                size: result.meta.size,
                bytes: result
                    .into_stream()
                    .map(|chunk| chunk.map_err(std::io::Error::other))
                    .boxed(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(backend(error)),
        }
    }

    async fn delete(&self, hash: &BlobHash) -> Result<(), StoreError> {
        match self.bucket.delete(&self.path_of(hash)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(backend(error)),
        }
    }
}
