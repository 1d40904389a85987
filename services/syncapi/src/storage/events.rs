use sqlx::Row;

use super::{Storage, StorageError};

/// An event as consumed from `roomserver.output`.
pub(crate) struct NewEvent<'a> {
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) room_id: &'a str,
    pub(crate) event_id: &'a str,
    pub(crate) event_type: &'a str,
    pub(crate) state_key: Option<&'a str>,
    pub(crate) sender: &'a str,
    pub(crate) membership: Option<&'a str>,
    pub(crate) json: &'a str,
    pub(crate) device_id: &'a str,
    pub(crate) transaction_id: &'a str,
    /// (type, state_key, event_id) entries the event removed from / added to current state.
    pub(crate) state_removed: Vec<(String, String, String, String)>,
    /// (type, state key, event ID, membership or empty).
    pub(crate) state_added: Vec<(String, String, String, String)>,
}

/// A user's membership of a room, as of the latest event consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Membership {
    pub(crate) room_id: String,
    pub(crate) membership: String,
    /// Offset of the membership event in the room's partition.
    pub(crate) offset: u64,
    pub(crate) partition: u32,
}

fn membership_row(row: &sqlx::any::AnyRow) -> Result<Membership, sqlx::Error> {
    Ok(Membership {
        room_id: row.try_get(0)?,
        membership: row.try_get(1)?,
        offset: row.try_get::<i64, _>(2)?.max(0) as u64,
        partition: row.try_get::<i64, _>(3)?.max(0) as u32,
    })
}

/// An event as served.
#[derive(Debug, Clone)]
pub(crate) struct EventRow {
    pub(crate) offset: u64,
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) state_key: Option<String>,
    pub(crate) json: String,
    pub(crate) device_id: String,
    pub(crate) transaction_id: String,
}

const EVENT_COLUMNS: &str =
    "e.log_offset, e.event_id, e.event_type, e.state_key, e.json, e.device_id, e.transaction_id";

fn event_row(row: &sqlx::any::AnyRow) -> Result<EventRow, sqlx::Error> {
    Ok(EventRow {
        offset: row.try_get::<i64, _>(0)?.max(0) as u64,
        event_id: row.try_get(1)?,
        event_type: row.try_get(2)?,
        state_key: row.try_get(3)?,
        json: row.try_get(4)?,
        device_id: row.try_get(5)?,
        transaction_id: row.try_get(6)?,
    })
}

impl Storage {
    /// Stores an event, applies its state change and advances the consumed
    /// position, in one transaction. A redelivered event changes nothing.
    pub(crate) async fn apply_event(&self, event: &NewEvent<'_>) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO events (log_partition, log_offset, room_id, event_id, event_type, state_key,
                                 sender, json, device_id, transaction_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(i64::from(event.partition))
        .bind(event.offset as i64)
        .bind(event.room_id)
        .bind(event.event_id)
        .bind(event.event_type)
        .bind(event.state_key)
        .bind(event.sender)
        .bind(event.json)
        .bind(event.device_id)
        .bind(event.transaction_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if inserted {
            for (event_type, state_key, event_id, _) in &event.state_removed {
                sqlx::query(
                    "DELETE FROM current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3 AND event_id = $4",
                )
                .bind(event.room_id)
                .bind(event_type)
                .bind(state_key)
                .bind(event_id)
                .execute(&mut *tx)
                .await?;
            }
            for (event_type, state_key, event_id, entry_membership) in &event.state_added {
                // An entry state resolution brought back carries its own
                // membership; older producers left it out for the event's own.
                let membership = if !entry_membership.is_empty() {
                    Some(entry_membership.as_str())
                } else if event_id == event.event_id {
                    event.membership
                } else {
                    None
                };
                sqlx::query(
                    "INSERT INTO current_state (room_id, event_type, state_key, event_id, membership, log_offset)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (room_id, event_type, state_key) DO UPDATE
                     SET event_id = excluded.event_id, membership = excluded.membership, log_offset = excluded.log_offset",
                )
                .bind(event.room_id)
                .bind(event_type)
                .bind(state_key)
                .bind(event_id)
                .bind(membership)
                .bind(event.offset as i64)
                .execute(&mut *tx)
                .await?;
            }
        }
        Self::store_position(&mut tx, event.partition, event.offset).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the stored copy of a redacted event and advances the
    /// consumed position, in one transaction.
    pub(crate) async fn apply_redaction(
        &self,
        partition: u32,
        offset: u64,
        event_id: &str,
        redacted_json: &str,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("UPDATE events SET json = $1 WHERE event_id = $2")
            .bind(redacted_json)
            .bind(event_id)
            .execute(&mut *tx)
            .await?;
        Self::store_position(&mut tx, partition, offset).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Advances the consumed position past a record with nothing to store.
    pub(crate) async fn advance_position(
        &self,
        partition: u32,
        offset: u64,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        Self::store_position(&mut tx, partition, offset).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn store_position(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        partition: u32,
        offset: u64,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO positions (log_partition, next_offset) VALUES ($1, $2)
             ON CONFLICT (log_partition) DO UPDATE SET next_offset = excluded.next_offset
             WHERE positions.next_offset < excluded.next_offset",
        )
        .bind(i64::from(partition))
        .bind(offset as i64 + 1)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The next offset to consume, per partition, as stored.
    pub(crate) async fn positions(&self) -> Result<Vec<(u32, u64)>, StorageError> {
        let rows = sqlx::query("SELECT log_partition, next_offset FROM positions")
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get::<i64, _>(0)?.max(0) as u32,
                    row.try_get::<i64, _>(1)?.max(0) as u64,
                ))
            })
            .collect()
    }

    /// The user's rooms, with the membership event's position and the
    /// room's partition of `roomserver.output`.
    pub(crate) async fn memberships(&self, user_id: &str) -> Result<Vec<Membership>, StorageError> {
        let rows = sqlx::query(
            "SELECT s.room_id, s.membership, s.log_offset, e.log_partition
             FROM current_state s JOIN events e ON e.event_id = s.event_id
             WHERE s.state_key = $1 AND s.event_type = 'm.room.member' AND s.membership IS NOT NULL",
        )
        .bind(user_id)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(membership_row).collect::<Result<_, _>>()?)
    }

    /// The user's membership of one room, if any.
    pub(crate) async fn membership(
        &self,
        user_id: &str,
        room_id: &str,
    ) -> Result<Option<Membership>, StorageError> {
        let row = sqlx::query(
            "SELECT s.room_id, s.membership, s.log_offset, e.log_partition
             FROM current_state s JOIN events e ON e.event_id = s.event_id
             WHERE s.room_id = $1 AND s.state_key = $2 AND s.event_type = 'm.room.member'
               AND s.membership IS NOT NULL",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.as_ref().map(membership_row).transpose()?)
    }

    /// The room's partition of `roomserver.output`, if any of its events was
    /// seen. Serving reads the partition with the membership instead; the
    /// storage tests use this to check where events were recorded.
    #[cfg(test)]
    pub(crate) async fn room_partition(&self, room_id: &str) -> Result<Option<u32>, StorageError> {
        let partition: Option<i64> =
            sqlx::query_scalar("SELECT log_partition FROM events WHERE room_id = $1 LIMIT 1")
                .bind(room_id)
                .fetch_optional(&self.db.pool)
                .await?;
        Ok(partition.map(|p| p.max(0) as u32))
    }

    /// Events of a room with `from <= offset < to`, newest first (`backwards`)
    /// or oldest first, at most `limit`.
    pub(crate) async fn room_events(
        &self,
        room_id: &str,
        from: u64,
        to: u64,
        limit: u32,
        backwards: bool,
    ) -> Result<Vec<EventRow>, StorageError> {
        let order = if backwards { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND e.log_offset >= $2 AND e.log_offset < $3
             ORDER BY e.log_offset {order} LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(room_id)
            .bind(from.min(i64::MAX as u64) as i64)
            .bind(to.min(i64::MAX as u64) as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.db.pool)
            .await?;
        Ok(rows.iter().map(event_row).collect::<Result<_, _>>()?)
    }

    /// The room's current state events.
    pub(crate) async fn room_state(&self, room_id: &str) -> Result<Vec<EventRow>, StorageError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM current_state s JOIN events e ON e.event_id = s.event_id
             WHERE s.room_id = $1 ORDER BY e.log_offset"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(room_id)
            .fetch_all(&self.db.pool)
            .await?;
        Ok(rows.iter().map(event_row).collect::<Result<_, _>>()?)
    }
}
