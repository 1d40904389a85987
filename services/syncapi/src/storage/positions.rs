//! The consumed log positions, per stream and partition, stored in the same
//! transaction as the data each record produced.

use super::{Storage, StorageError};
use crate::sync_token::Stream;
use ganglion_base::sql;

impl Storage {
    /// Advances the consumed position past a record with nothing to store.
    pub(crate) async fn advance_position(
        &self,
        stream: Stream,
        partition: u32,
        offset: u64,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        Self::store_position(&mut tx, stream, partition, offset).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that everything up to and including `offset` was consumed.
    pub(crate) async fn store_position(
        conn: &mut sql::Connection,
        stream: Stream,
        partition: u32,
        offset: u64,
    ) -> Result<(), StorageError> {
        sql::query(
            "INSERT INTO stream_positions (stream, log_partition, next_offset) VALUES ($1, $2, $3)
             ON CONFLICT (stream, log_partition) DO UPDATE SET next_offset = excluded.next_offset
             WHERE stream_positions.next_offset < excluded.next_offset",
        )
        .bind(stream.name())
        .bind(i64::from(partition))
        .bind(offset as i64 + 1)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// The next offset to consume, per stream and partition, as stored.
    pub(crate) async fn positions(&self) -> Result<Vec<(Stream, u32, u64)>, StorageError> {
        let rows = sql::query("SELECT stream, log_partition, next_offset FROM stream_positions")
            .fetch_all(&self.db.pool)
            .await?;
        let mut positions = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get(0)?;
            // A stream a newer build consumed: not ours to resume.
            let Some(stream) = Stream::from_name(&name) else {
                continue;
            };
            positions.push((
                stream,
                row.try_get::<i64, _>(1)?.max(0) as u32,
                row.try_get::<i64, _>(2)?.max(0) as u64,
            ));
        }
        Ok(positions)
    }
}
