//! What `device_lists` is made of: the users whose device keys changed
//! (from `keyserver.key_changes`) and the membership changes that start or
//! end sharing a room.

use ganglion_api::proto::topics as topic_pb;
use ganglion_base::sql;

use super::ephemeral::{JOINED, i64_of, self_or_co_member};
use super::{At, Storage, StorageError};
use crate::sync_token::Stream;

/// A membership change in a room, as recorded in the state history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberChange {
    pub(crate) room_id: String,
    pub(crate) user_id: String,
    /// `None` when the member event left the state (a rejected or
    /// resolved-away membership).
    pub(crate) membership: Option<String>,
    /// Offset in the room's partition of `roomserver.output`.
    pub(crate) offset: u64,
}

impl Storage {
    /// Records that a user's device keys changed at `at` (only the latest
    /// change per user is kept: a window asks "since when", never "what").
    pub(crate) async fn apply_key_change(
        &self,
        at: At,
        change: &topic_pb::DeviceKeyChange,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        if change.seen_by.is_empty() {
            sql::query(
                "INSERT INTO device_key_changes (user_id, log_partition, log_offset)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (user_id) DO UPDATE
                 SET log_partition = excluded.log_partition, log_offset = excluded.log_offset",
            )
            .bind(&change.user_id)
            .bind(i64::from(at.partition))
            .bind(i64_of(at.offset))
            .execute(&mut *tx)
            .await?;
        } else {
            // The viewer's own signature of the user's keys: theirs alone.
            sql::query(
                "INSERT INTO private_key_changes (viewer, user_id, log_partition, log_offset)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (viewer, user_id) DO UPDATE
                 SET log_partition = excluded.log_partition, log_offset = excluded.log_offset",
            )
            .bind(&change.seen_by)
            .bind(&change.user_id)
            .bind(i64::from(at.partition))
            .bind(i64_of(at.offset))
            .execute(&mut *tx)
            .await?;
        }
        // A deleted device never collects its to-device messages.
        if change.deleted && !change.device_id.is_empty() {
            sql::query("DELETE FROM to_device WHERE user_id = $1 AND device_id = $2")
                .bind(&change.user_id)
                .bind(&change.device_id)
                .execute(&mut *tx)
                .await?;
        }
        Self::commit_at(tx, Stream::KeyChanges, at).await
    }

    /// Users whose device keys last changed at or after `since_offset` (a
    /// lower bound over partitions) and who are `user_id` or share a joined
    /// room with them, and those whose keys `user_id` signed since.
    pub(crate) async fn key_changes_for(
        &self,
        user_id: &str,
        since_offset: u64,
    ) -> Result<Vec<(String, At)>, StorageError> {
        let sql = format!(
            "SELECT user_id, log_partition, log_offset FROM device_key_changes
             WHERE log_offset >= $2 AND {}
             UNION ALL
             SELECT user_id, log_partition, log_offset FROM private_key_changes
             WHERE viewer = $1 AND log_offset >= $2",
            self_or_co_member("user_id")
        );
        let rows = sql::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(i64_of(since_offset))
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, At::from_row(row, 1, 2)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Membership changes at or after `since_offset` in every room
    /// `user_id` has a membership in (joined, left, invited...).
    pub(crate) async fn member_changes_for(
        &self,
        user_id: &str,
        since_offset: u64,
    ) -> Result<Vec<MemberChange>, StorageError> {
        let rows = sql::query(
            "SELECT h.room_id, h.state_key, h.membership, h.log_offset FROM state_history h
             WHERE h.event_type = 'm.room.member' AND h.log_offset >= $2
               AND h.room_id IN (SELECT room_id FROM current_state
                                 WHERE event_type = 'm.room.member' AND state_key = $1)
             ORDER BY h.log_offset",
        )
        .bind(user_id)
        .bind(i64_of(since_offset))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(MemberChange {
                    room_id: row.try_get(0)?,
                    user_id: row.try_get(1)?,
                    membership: row.try_get(2)?,
                    offset: row.try_get::<i64, _>(3)?.max(0) as u64,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Everyone who shares a joined room with `user_id` now.
    pub(crate) async fn users_sharing_a_room(
        &self,
        user_id: &str,
    ) -> Result<std::collections::HashSet<String>, StorageError> {
        let sql = format!(
            "SELECT DISTINCT state_key FROM current_state
             WHERE event_type = 'm.room.member' AND membership = 'join' AND room_id IN ({JOINED})"
        );
        let users: Vec<String> = sql::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_all(&self.db.pool)
            .await?;
        Ok(users.into_iter().collect())
    }
}
