//! One write transaction over consumed `roomserver.output` records: each
//! `apply_*` (in `events.rs` and `history.rs`) adds a record's changes,
//! [`Batch::consumed`] notes the record, and [`Batch::commit`] stores the
//! positions reached with the data. A consumer that is behind applies
//! hundreds of records per commit; reads made through the batch see what
//! its earlier records wrote.

use std::collections::HashMap;

use ganglion_base::database::Engine;

use super::{Storage, StorageError};
use crate::sync_token::Stream;

pub(crate) struct Batch {
    pub(super) tx: sqlx::Transaction<'static, sqlx::Any>,
    pub(super) engine: Engine,
    /// The last offset consumed per stream and partition.
    consumed: HashMap<(Stream, u32), u64>,
}

impl Storage {
    /// Starts a batch of records' changes.
    pub(crate) async fn batch(&self) -> Result<Batch, StorageError> {
        Ok(Batch {
            tx: self.db.pool.begin().await?,
            engine: self.db.engine,
            consumed: HashMap::new(),
        })
    }
}

impl Batch {
    /// Notes that the record at `offset` is part of this batch.
    pub(crate) fn consumed(&mut self, stream: Stream, partition: u32, offset: u64) {
        let last = self.consumed.entry((stream, partition)).or_insert(offset);
        *last = (*last).max(offset);
    }

    /// Stores the positions reached and commits: all of the batch, or
    /// (on error) none of it.
    pub(crate) async fn commit(mut self) -> Result<(), StorageError> {
        for ((stream, partition), offset) in &self.consumed {
            Storage::store_position(&mut self.tx, *stream, *partition, *offset).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}
