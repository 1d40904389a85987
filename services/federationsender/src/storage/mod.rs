//! The federationsender's tables: which servers are in each room (from
//! the membership changes on `roomserver.output`), the queue of PDUs per
//! destination, and each destination's retry state.

mod migrations;
mod queues;

pub(crate) use migrations::MIGRATIONS;
#[cfg(test)]
pub(crate) use queues::Applied;
pub(crate) use queues::{MemberChange, OutputEvent, QueuedPdu};

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
