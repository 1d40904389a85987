//! What simplified sliding sync (MSC4186) reads beyond `/sync`: every room
//! of a user with what its lists sort and filter by, in one query, and the
//! per-connection state, one immutable row per answered `pos`.

use super::{Storage, StorageError};
use ganglion_base::sql;

/// A room of the user's, as the lists see it.
#[derive(Debug, Clone)]
pub(crate) struct SlidingRoom {
    pub(crate) room_id: String,
    pub(crate) membership: String,
    /// Offset of the membership event in the room's partition.
    pub(crate) member_offset: u64,
    pub(crate) partition: u32,
    /// Recency: the local row of the room's latest bump event or of the
    /// user's membership, whichever is later (comparable across rooms).
    pub(crate) bump_stamp: u64,
    pub(crate) encrypted: bool,
    /// `m.room.create`'s `content.type`, if any.
    pub(crate) room_type: Option<String>,
    /// Who sent the user's membership (the inviter of an invite).
    pub(crate) membership_sender: String,
}

impl Storage {
    /// Every room the user has a membership of (any kind).
    pub(crate) async fn sliding_rooms(
        &self,
        user_id: &str,
    ) -> Result<Vec<SlidingRoom>, StorageError> {
        let rows = sql::query(
            "SELECT s.room_id, s.membership, s.log_offset, e.log_partition, e.id, b.bump,
                    EXISTS (SELECT 1 FROM current_state x
                            WHERE x.room_id = s.room_id AND x.event_type = 'm.room.encryption'),
                    ce.json, e.sender
             FROM current_state s
             JOIN events e ON e.event_id = s.event_id
             LEFT JOIN room_bumps b ON b.room_id = s.room_id
             LEFT JOIN current_state cs
                    ON cs.room_id = s.room_id AND cs.event_type = 'm.room.create' AND cs.state_key = ''
             LEFT JOIN events ce ON ce.event_id = cs.event_id
             WHERE s.state_key = $1 AND s.event_type = 'm.room.member' AND s.membership IS NOT NULL",
        )
        .bind(user_id)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let member_row = row.try_get::<i64, _>(4)?.max(0) as u64;
                let bump = row.try_get::<Option<i64>, _>(5)?.unwrap_or(0).max(0) as u64;
                let encrypted = match row.try_get::<bool, _>(6) {
                    Ok(flag) => flag,
                    Err(_) => row.try_get::<i64, _>(6)? != 0,
                };
                let create: Option<String> = row.try_get(7)?;
                let room_type = create
                    .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
                    .and_then(|e| e["content"]["type"].as_str().map(str::to_owned));
                Ok(SlidingRoom {
                    room_id: row.try_get(0)?,
                    membership: row.try_get(1)?,
                    member_offset: row.try_get::<i64, _>(2)?.max(0) as u64,
                    partition: row.try_get::<i64, _>(3)?.max(0) as u32,
                    bump_stamp: bump.max(member_row),
                    encrypted,
                    room_type,
                    membership_sender: row.try_get(8)?,
                })
            })
            .collect()
    }

    /// One piece of the user's account data now (`room_id` empty: global).
    pub(crate) async fn account_data_of(
        &self,
        user_id: &str,
        room_id: &str,
        data_type: &str,
    ) -> Result<Option<String>, StorageError> {
        Ok(sql::query_scalar(
            "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND data_type = $3",
        )
        .bind(user_id)
        .bind(room_id)
        .bind(data_type)
        .fetch_optional(&self.db.pool)
        .await?)
    }

    /// The state a connection was answered with at `pos_id`, if it is still kept.
    pub(crate) async fn connection_state(
        &self,
        (user_id, device_id, conn_id): (&str, &str, &str),
        pos_id: i64,
    ) -> Result<Option<String>, StorageError> {
        Ok(sql::query_scalar(
            "SELECT state FROM sliding_connections
             WHERE id = $1 AND user_id = $2 AND device_id = $3 AND conn_id = $4",
        )
        .bind(pos_id)
        .bind(user_id)
        .bind(device_id)
        .bind(conn_id)
        .fetch_optional(&self.db.pool)
        .await?)
    }

    /// Forgets a connection's states before `pos_id` (the client has moved
    /// past them); with `None`, all of them (the client starts afresh).
    pub(crate) async fn forget_connection_states(
        &self,
        (user_id, device_id, conn_id): (&str, &str, &str),
        before: Option<i64>,
    ) -> Result<(), StorageError> {
        sql::query(
            "DELETE FROM sliding_connections
             WHERE user_id = $1 AND device_id = $2 AND conn_id = $3 AND id < $4",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(conn_id)
        .bind(before.unwrap_or(i64::MAX))
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Stores a connection's new state; its ID goes into the next `pos`.
    pub(crate) async fn save_connection_state(
        &self,
        (user_id, device_id, conn_id): (&str, &str, &str),
        state: &str,
    ) -> Result<i64, StorageError> {
        Ok(sql::query_scalar(
            "INSERT INTO sliding_connections (user_id, device_id, conn_id, state)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(conn_id)
        .bind(state)
        .fetch_one(&self.db.pool)
        .await?)
    }
}
