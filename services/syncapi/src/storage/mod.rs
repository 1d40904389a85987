//! The syncapi's own copy of what it serves: timeline events (lean: one row
//! per event, positioned by its log offset), current state per room with
//! memberships, the ephemeral and per-user streams (typing, receipts,
//! presence, to-device, account data), who changed device keys last when,
//! the log positions consumed per stream, and filters.

mod batch;
mod device_lists;
mod directory;
mod ephemeral;
mod events;
mod filters;
mod history;
mod migrations;
mod positions;
pub(crate) mod search;
mod sliding;
#[cfg(test)]
mod tests;

pub(crate) use batch::Batch;
pub(crate) use device_lists::MemberChange;
pub(crate) use ephemeral::{At, PresenceRow, ToDeviceRow};
pub(crate) use events::{
    EventRow, Membership, NewEvent, NotificationCount, NotificationsFrom, StateRef,
};
pub(crate) use history::HistoryEvent;
pub(crate) use migrations::MIGRATIONS;
pub(crate) use sliding::SlidingRoom;

use ganglion_base::Database;

#[derive(Clone)]
pub(crate) struct Storage {
    pub(crate) db: Database,
    /// What committed batches left known of rooms' state, for the next
    /// batch to start from (see [`batch::RoomCache`]).
    rooms: std::sync::Arc<std::sync::Mutex<batch::RoomCache>>,
}

impl Storage {
    pub(crate) fn new(db: Database) -> Storage {
        Storage {
            db,
            rooms: Default::default(),
        }
    }
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StorageError {
    /// The database reported an error.
    #[error("database")]
    Sqlx(#[from] sqlx::Error),
}

impl From<StorageError> for ganglion_base::MatrixError {
    fn from(StorageError::Sqlx(error): StorageError) -> Self {
        ganglion_base::database::matrix_error("syncapi", &error)
    }
}
