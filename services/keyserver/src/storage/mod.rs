//! The keyserver's tables: device keys, one-time keys, fallback keys,
//! cross-signing keys and signatures, key backups.

pub(crate) mod backups;
pub(crate) mod cross_signing;
pub(crate) mod keys;
mod migrations;

pub(crate) use migrations::MIGRATIONS;

use ganglion_base::Database;

#[derive(Clone)]
pub(crate) struct Storage {
    pub(crate) db: Database,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StorageError {
    #[error("database")]
    Sqlx(#[from] sqlx::Error),
}

impl From<StorageError> for ganglion_api::ApiError {
    fn from(StorageError::Sqlx(error): StorageError) -> Self {
        ganglion_api::ApiError::database("keyserver", &error)
    }
}
