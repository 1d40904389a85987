//! The userapi's tables: accounts, devices (with their access tokens) and
//! account data (with its outbox to `userapi.account_data`).

mod account_data;
mod accounts;
mod devices;
mod migrations;
mod pushers;

pub(crate) use account_data::Pending;
pub(crate) use accounts::ProfileField;
pub(crate) use devices::Tokens;
pub(crate) use migrations::MIGRATIONS;
pub(crate) use pushers::{Failing, Pusher, Queued, RoomField};

use ganglion_base::Database;

/// The userapi database with its queries, one group per table.
#[derive(Clone)]
pub(crate) struct Storage {
    pub(crate) db: Database,
}

/// A storage failure; all are transient from the caller's point of view
/// except a unique-key violation, which callers map to a Matrix error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StorageError {
    /// The database reported an error.
    #[error("database")]
    Sqlx(#[from] sqlx::Error),
    /// The registration token is unknown, used up or expired.
    #[error("the registration token is not valid")]
    TokenRefused,
    /// A guest upgrade named an account that is not a guest's.
    #[error("not a guest account")]
    NotAGuest,
}

impl StorageError {
    pub(crate) fn is_unique_violation(&self) -> bool {
        match self {
            StorageError::Sqlx(sqlx::Error::Database(e)) => e.is_unique_violation(),
            _ => false,
        }
    }
}

impl From<StorageError> for ganglion_api::ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::TokenRefused => {
                ganglion_api::ApiError::Forbidden("Invalid registration token".into())
            }
            StorageError::NotAGuest => ganglion_api::ApiError::UserInUse,
            StorageError::Sqlx(error) => ganglion_api::ApiError::database("userapi", &error),
        }
    }
}
