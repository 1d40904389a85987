use super::{Storage, StorageError};
use ganglion_base::sql;

/// An output record committed with its events but not yet confirmed in the log.
pub(crate) struct OutboxRecord {
    pub(crate) seq: i64,
    pub(crate) room_id: String,
    pub(crate) payload: Vec<u8>,
}

impl Storage {
    /// The event IDs a request produced, if it was already processed.
    pub(crate) async fn processed_input(
        &self,
        request_id: &str,
    ) -> Result<Option<(String, Vec<String>)>, StorageError> {
        let row =
            sql::query("SELECT room_id, event_ids FROM processed_inputs WHERE request_id = $1")
                .bind(request_id)
                .fetch_optional(&self.db.pool)
                .await?;
        Ok(match row {
            Some(row) => {
                let ids: String = row.try_get(1)?;
                Some((
                    row.try_get(0)?,
                    serde_json::from_str(&ids).unwrap_or_default(),
                ))
            }
            None => None,
        })
    }

    /// Which of `request_ids` were processed already (redelivered inputs).
    pub(crate) async fn processed_among(
        &self,
        request_ids: &[&str],
    ) -> Result<std::collections::HashSet<String>, StorageError> {
        let mut done = std::collections::HashSet::new();
        for chunk in request_ids.chunks(500) {
            let sql = format!(
                "SELECT request_id FROM processed_inputs WHERE request_id IN ({})",
                ganglion_base::database::params(self.db.engine, 1, chunk.len())
            );
            let mut query = sql::query_scalar::<String>(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            done.extend(query.fetch_all(&self.db.pool).await?);
        }
        Ok(done)
    }

    /// Output records still to publish, oldest first.
    pub(crate) async fn pending_outputs(&self) -> Result<Vec<OutboxRecord>, StorageError> {
        let rows = sql::query("SELECT seq, room_id, payload FROM output_outbox ORDER BY seq")
            .fetch_all(&self.db.pool)
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok(OutboxRecord {
                    seq: row.try_get(0)?,
                    room_id: row.try_get(1)?,
                    payload: row.try_get(2)?,
                })
            })
            .collect()
    }

    /// A room's outputs still in the outbox, oldest first.
    pub(crate) async fn pending_outputs_of(
        &self,
        room_id: &str,
    ) -> Result<Vec<(i64, Vec<u8>)>, StorageError> {
        let rows =
            sql::query("SELECT seq, payload FROM output_outbox WHERE room_id = $1 ORDER BY seq")
                .bind(room_id)
                .fetch_all(&self.db.pool)
                .await?;
        rows.into_iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// Clears one published output.
    pub(crate) async fn delete_output(&self, seq: i64) -> Result<(), StorageError> {
        sql::query("DELETE FROM output_outbox WHERE seq = $1")
            .bind(seq)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }
}
