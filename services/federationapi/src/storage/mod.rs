//! The federationapi's tables: remote servers' signing keys, as fetched
//! (directly or through notaries) and verified, with their validity, and
//! the inbound transactions answered.

mod migrations;
pub(crate) mod server_keys;
mod transactions;

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
        ganglion_api::ApiError::database("federationapi", &error)
    }
}

impl From<StorageError> for ganglion_base::MatrixError {
    fn from(StorageError::Sqlx(error): StorageError) -> Self {
        ganglion_base::database::matrix_error("federationapi", &error)
    }
}
