//! The roomserver's tables, one module per group: rooms and their events and
//! the events' states as shared snapshots (`state`), aliases (`aliases`), and the input dedupe and output
//! outbox that make processing exactly-once in effect (`outbox`).

mod directory;
mod migrations;
mod outbox;
mod rooms;
mod state;
#[cfg(test)]
mod tests;

pub(crate) use directory::Member;
pub(crate) use migrations::MIGRATIONS;
pub(crate) use rooms::{
    CurrentStateChange, EventFlags, HeadUpdate, ProcessedInput, RoomRow, RoomWriter, StoredEvent,
};
pub(crate) use state::NidState;

use std::sync::{Arc, Mutex};

use ganglion_base::Database;

use crate::events::Pdu;

#[derive(Clone)]
pub(crate) struct Storage {
    pub(crate) db: Database,
    caches: Arc<state::Caches>,
    /// Events by NID (state events mostly: they are read again and again).
    events: Arc<Mutex<state::Bounded<i64, Arc<Pdu>>>>,
    /// Room NIDs by room ID, as read from committed rows: a room keeps its
    /// NID for good, so a writer needs no statement to find it.
    room_nids: Arc<Mutex<state::Bounded<String, i64>>>,
}

impl Storage {
    /// `names_cached`: event types and state keys kept in memory, each.
    pub(crate) fn new(db: Database, names_cached: usize) -> Storage {
        Storage {
            db,
            caches: Arc::new(state::Caches::new(names_cached)),
            events: Arc::new(Mutex::new(state::Bounded::new(200_000))),
            room_nids: Arc::new(Mutex::new(state::Bounded::new(100_000))),
        }
    }
}

/// A storage failure (transient for the consumer: it retries).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StorageError {
    /// The database reported an error.
    #[error("database")]
    Sqlx(#[from] sqlx::Error),
    /// A stored event could not be read back.
    #[error("corrupt stored event {0}")]
    Corrupt(String),
}

impl StorageError {
    pub(crate) fn is_unique_violation(&self) -> bool {
        matches!(self, StorageError::Sqlx(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

impl From<StorageError> for ganglion_api::ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Sqlx(error) => ganglion_api::ApiError::database("roomserver", &error),
            corrupt => ganglion_api::ApiError::Internal(format!("roomserver storage: {corrupt:?}")),
        }
    }
}
