//! The per-user and ephemeral streams: typing, receipts, presence,
//! to-device messages and account data. Each record is applied with its
//! stream position in one transaction; applying a record again changes
//! nothing.

use ganglion_api::proto::topics as topic_pb;
use ganglion_base::sql;

use super::{Storage, StorageError};
use crate::sync_token::Stream;

/// Where a row was written in its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct At {
    pub(crate) partition: u32,
    pub(crate) offset: u64,
}

impl At {
    pub(super) fn from_row(
        row: &sql::Row,
        partition: usize,
        offset: usize,
    ) -> Result<At, sqlx::Error> {
        Ok(At {
            partition: row.try_get::<i64, _>(partition)?.max(0) as u32,
            offset: row.try_get::<i64, _>(offset)?.max(0) as u64,
        })
    }
}

/// Who types in a room now, and when that last changed.
#[derive(Debug, Clone)]
pub(crate) struct TypingRoom {
    pub(crate) room_id: String,
    pub(crate) changed: At,
    pub(crate) users: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct ReceiptRow {
    pub(crate) room_id: String,
    pub(crate) user_id: String,
    pub(crate) receipt_type: String,
    pub(crate) thread_id: String,
    pub(crate) event_id: String,
    pub(crate) ts: i64,
    pub(crate) at: At,
}

#[derive(Debug, Clone)]
pub(crate) struct PresenceRow {
    pub(crate) user_id: String,
    pub(crate) presence: String,
    pub(crate) status_msg: Option<String>,
    pub(crate) last_active_ts: i64,
    pub(crate) currently_active: bool,
    /// Set by the server when the user went quiet.
    pub(crate) automatic: bool,
    pub(crate) at: At,
}

#[derive(Debug, Clone)]
pub(crate) struct ToDeviceRow {
    pub(crate) sender: String,
    pub(crate) event_type: String,
    pub(crate) content: String,
    pub(crate) offset: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct AccountDataRow {
    /// Empty for global account data.
    pub(crate) room_id: String,
    pub(crate) data_type: String,
    pub(crate) content: String,
}

/// The rooms `$1` is joined to, for joins against per-room rows.
pub(super) const JOINED: &str = "SELECT room_id FROM current_state
     WHERE event_type = 'm.room.member' AND state_key = $1 AND membership = 'join'";

/// `column` names `$1` or someone who shares a joined room with `$1`.
pub(super) fn self_or_co_member(column: &str) -> String {
    format!(
        "({column} = $1 OR {column} IN (
             SELECT state_key FROM current_state
             WHERE event_type = 'm.room.member' AND membership = 'join'
               AND room_id IN ({JOINED})))"
    )
}

pub(super) fn i64_of(value: u64) -> i64 {
    value.min(i64::MAX as u64) as i64
}

/// A `to_device` row read as (sender, event_type, content, log_offset).
fn to_device_row(row: &sql::Row) -> Result<ToDeviceRow, StorageError> {
    Ok(ToDeviceRow {
        sender: row.try_get(0)?,
        event_type: row.try_get(1)?,
        content: row.try_get(2)?,
        offset: row.try_get::<i64, _>(3)?.max(0) as u64,
    })
}

impl Storage {
    /// Stores the record's position and commits its transaction.
    pub(super) async fn commit_at(
        mut tx: sql::Transaction,
        stream: Stream,
        at: At,
    ) -> Result<(), StorageError> {
        Self::store_position(&mut tx, stream, at.partition, at.offset).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn apply_typing(
        &self,
        at: At,
        edu: &topic_pb::TypingEdu,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        if edu.typing {
            sql::query(
                "INSERT INTO typing (room_id, user_id, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (room_id, user_id) DO UPDATE SET expires_at = excluded.expires_at",
            )
            .bind(&edu.room_id)
            .bind(&edu.user_id)
            .bind(edu.expires_at_ms)
            .execute(&mut *tx)
            .await?;
        } else {
            sql::query("DELETE FROM typing WHERE room_id = $1 AND user_id = $2")
                .bind(&edu.room_id)
                .bind(&edu.user_id)
                .execute(&mut *tx)
                .await?;
        }
        sql::query(
            "INSERT INTO typing_changes (room_id, log_partition, log_offset) VALUES ($1, $2, $3)
             ON CONFLICT (room_id) DO UPDATE
             SET log_partition = excluded.log_partition, log_offset = excluded.log_offset",
        )
        .bind(&edu.room_id)
        .bind(i64::from(at.partition))
        .bind(i64_of(at.offset))
        .execute(&mut *tx)
        .await?;
        Self::commit_at(tx, Stream::Typing, at).await
    }

    /// Typing in the rooms `user_id` is joined to: every room whose typing
    /// changed at or after `since_offset` (a lower bound over partitions),
    /// with the users whose notice had not lapsed at `now_ms`.
    pub(crate) async fn typing_for(
        &self,
        user_id: &str,
        since_offset: u64,
        now_ms: i64,
    ) -> Result<Vec<TypingRoom>, StorageError> {
        let sql = format!(
            "SELECT c.room_id, c.log_partition, c.log_offset, t.user_id
             FROM typing_changes c LEFT JOIN typing t ON t.room_id = c.room_id AND t.expires_at > $2
             WHERE c.room_id IN ({JOINED}) AND c.log_offset >= $3
             ORDER BY c.room_id"
        );
        let rows = sql::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(now_ms)
            .bind(i64_of(since_offset))
            .fetch_all(&self.db.pool)
            .await?;
        let mut rooms: Vec<TypingRoom> = Vec::new();
        for row in &rows {
            let room_id: String = row.try_get(0)?;
            let typer: Option<String> = row.try_get(3)?;
            if rooms.last().is_none_or(|r| r.room_id != room_id) {
                rooms.push(TypingRoom {
                    room_id,
                    changed: At::from_row(row, 1, 2)?,
                    users: Vec::new(),
                });
            }
            if let (Some(room), Some(typer)) = (rooms.last_mut(), typer) {
                room.users.push(typer);
            }
        }
        Ok(rooms)
    }

    /// Stores a receipt. An unthreaded or threaded `m.read` (public or
    /// private) only moves forward: one for an event older than the
    /// user's current receipt is dropped.
    pub(crate) async fn apply_receipt(
        &self,
        at: At,
        edu: &topic_pb::ReceiptEdu,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let offsets: Vec<(String, i64)> = sql::query_as(
            "SELECT e.event_id, e.log_offset FROM events e WHERE e.event_id = $1
             UNION ALL
             SELECT e.event_id, e.log_offset FROM receipts r JOIN events e ON e.event_id = r.event_id
             WHERE r.room_id = $2 AND r.user_id = $3 AND r.receipt_type = $4 AND r.thread_id = $5",
        )
        .bind(&edu.event_id)
        .bind(&edu.room_id)
        .bind(&edu.user_id)
        .bind(&edu.receipt_type)
        .bind(&edu.thread_id)
        .fetch_all(&mut *tx)
        .await?;
        let new = offsets.iter().find(|(id, _)| *id == edu.event_id);
        let older = match (new, offsets.iter().find(|(id, _)| *id != edu.event_id)) {
            (Some((_, new)), Some((_, old))) => new < old,
            _ => false,
        };
        if !older {
            // What the receipt covers is read: an unthreaded receipt
            // covers every thread, a threaded one its own.
            if let Some((_, read_up_to)) = new {
                let thread_clause = if edu.thread_id.is_empty() {
                    ""
                } else {
                    " AND thread_id = $4"
                };
                let sql = format!(
                    "UPDATE notifications SET unread = 0
                     WHERE user_id = $1 AND room_id = $2 AND log_offset <= $3
                       AND unread = 1{thread_clause}"
                );
                let mut mark = sql::query(sqlx::AssertSqlSafe(sql))
                    .bind(&edu.user_id)
                    .bind(&edu.room_id)
                    .bind(*read_up_to);
                if !edu.thread_id.is_empty() {
                    mark = mark.bind(&edu.thread_id);
                }
                mark.execute(&mut *tx).await?;
                // The room's counts again, from what is left unread (little:
                // the receipt just read the rest; an index finds it).
                sql::query("DELETE FROM notification_counts WHERE user_id = $1 AND room_id = $2")
                    .bind(&edu.user_id)
                    .bind(&edu.room_id)
                    .execute(&mut *tx)
                    .await?;
                sql::query(
                    "INSERT INTO notification_counts
                         (user_id, room_id, thread_id, notifications, highlights)
                     SELECT user_id, room_id, thread_id, COUNT(*),
                            CAST(COALESCE(SUM(highlight), 0) AS BIGINT)
                     FROM notifications WHERE user_id = $1 AND room_id = $2 AND unread = 1
                     GROUP BY user_id, room_id, thread_id",
                )
                .bind(&edu.user_id)
                .bind(&edu.room_id)
                .execute(&mut *tx)
                .await?;
            }
            sql::query(
                "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts,
                                       log_partition, log_offset)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (room_id, user_id, receipt_type, thread_id) DO UPDATE
                 SET event_id = excluded.event_id, ts = excluded.ts,
                     log_partition = excluded.log_partition, log_offset = excluded.log_offset",
            )
            .bind(&edu.room_id)
            .bind(&edu.user_id)
            .bind(&edu.receipt_type)
            .bind(&edu.thread_id)
            .bind(&edu.event_id)
            .bind(edu.ts)
            .bind(i64::from(at.partition))
            .bind(i64_of(at.offset))
            .execute(&mut *tx)
            .await?;
        }
        Self::commit_at(tx, Stream::Receipt, at).await
    }

    /// Receipts in the rooms `user_id` is joined to, written at or after
    /// `since_offset` (a lower bound over partitions); private receipts
    /// only the user's own.
    pub(crate) async fn receipts_for(
        &self,
        user_id: &str,
        since_offset: u64,
    ) -> Result<Vec<ReceiptRow>, StorageError> {
        let sql = format!(
            "SELECT room_id, user_id, receipt_type, thread_id, event_id, ts, log_partition, log_offset
             FROM receipts
             WHERE room_id IN ({JOINED}) AND log_offset >= $2
               AND (receipt_type <> 'm.read.private' OR user_id = $1)"
        );
        let rows = sql::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(i64_of(since_offset))
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(ReceiptRow {
                    room_id: row.try_get(0)?,
                    user_id: row.try_get(1)?,
                    receipt_type: row.try_get(2)?,
                    thread_id: row.try_get(3)?,
                    event_id: row.try_get(4)?,
                    ts: row.try_get(5)?,
                    at: At::from_row(row, 6, 7)?,
                })
            })
            .collect()
    }

    pub(crate) async fn apply_presence(
        &self,
        at: At,
        edu: &topic_pb::PresenceEdu,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        sql::query(
            "INSERT INTO presence (user_id, presence, status_msg, last_active_ts, currently_active,
                                   log_partition, log_offset, automatic)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (user_id) DO UPDATE
             SET presence = excluded.presence, status_msg = excluded.status_msg,
                 last_active_ts = excluded.last_active_ts,
                 currently_active = excluded.currently_active, automatic = excluded.automatic,
                 log_partition = excluded.log_partition, log_offset = excluded.log_offset",
        )
        .bind(&edu.user_id)
        .bind(&edu.presence)
        .bind(edu.status_msg.as_deref())
        .bind(edu.last_active_ts)
        .bind(i64::from(edu.currently_active))
        .bind(i64::from(at.partition))
        .bind(i64_of(at.offset))
        .bind(i64::from(edu.automatic))
        .execute(&mut *tx)
        .await?;
        Self::commit_at(tx, Stream::Presence, at).await
    }

    pub(crate) async fn presence(
        &self,
        user_id: &str,
    ) -> Result<Option<PresenceRow>, StorageError> {
        let row = sql::query(
            "SELECT user_id, presence, status_msg, last_active_ts, currently_active,
                    log_partition, log_offset, automatic
             FROM presence WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref()
            .map(presence_row)
            .transpose()
            .map_err(Into::into)
    }

    /// The presence of `user_id` and of everyone who shares a joined room
    /// with them, written at or after `since_offset` (a lower bound).
    pub(crate) async fn presence_for(
        &self,
        user_id: &str,
        since_offset: u64,
    ) -> Result<Vec<PresenceRow>, StorageError> {
        let sql = format!(
            "SELECT user_id, presence, status_msg, last_active_ts, currently_active,
                    log_partition, log_offset, automatic
             FROM presence
             WHERE log_offset >= $2 AND {}",
            self_or_co_member("user_id")
        );
        let rows = sql::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(i64_of(since_offset))
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(presence_row)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    /// Whether two users share a joined room (or are the same user).
    pub(crate) async fn share_a_room(&self, a: &str, b: &str) -> Result<bool, StorageError> {
        if a == b {
            return Ok(true);
        }
        let sql = format!(
            "SELECT 1 FROM current_state
             WHERE event_type = 'm.room.member' AND state_key = $2 AND membership = 'join'
               AND room_id IN ({JOINED}) LIMIT 1"
        );
        let found: Option<i64> = sql::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(a)
            .bind(b)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(found.is_some())
    }

    /// Stores one record's messages, one row per device; a message seen
    /// before (same sender's transaction) is dropped.
    pub(crate) async fn apply_to_device(
        &self,
        at: At,
        edu: &topic_pb::ToDeviceEdu,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        for message in &edu.messages {
            let content = String::from_utf8_lossy(&message.content_json);
            sql::query(
                "INSERT INTO to_device (user_id, device_id, message_id, sender, event_type, content,
                                        log_partition, log_offset)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (user_id, device_id, message_id) DO NOTHING",
            )
            .bind(&edu.recipient)
            .bind(&message.device_id)
            .bind(&edu.message_id)
            .bind(&edu.sender)
            .bind(&edu.event_type)
            .bind(content.as_ref())
            .bind(i64::from(at.partition))
            .bind(i64_of(at.offset))
            .execute(&mut *tx)
            .await?;
        }
        Self::commit_at(tx, Stream::ToDevice, at).await
    }

    /// Up to `limit` users after `after` (in user ID order) with to-device
    /// messages waiting, each with the highest row ID of theirs now: the
    /// pruning's next batch.
    pub(crate) async fn to_device_recipients(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Vec<(String, i64)>, StorageError> {
        let rows = sql::query(
            "SELECT user_id, MAX(id) FROM to_device WHERE user_id > $1
             GROUP BY user_id ORDER BY user_id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// Deletes `user_id`'s messages up to row `up_to` for every device not
    /// in `live` (a device that is gone never collects them); answers how
    /// many rows went. Rows after `up_to` arrived after `live` was read.
    pub(crate) async fn drop_to_device_of_gone_devices(
        &self,
        user_id: &str,
        live: &[String],
        up_to: i64,
    ) -> Result<u64, StorageError> {
        let devices: Vec<String> = sql::query_scalar(
            "SELECT DISTINCT device_id FROM to_device WHERE user_id = $1 AND id <= $2",
        )
        .bind(user_id)
        .bind(up_to)
        .fetch_all(&self.db.pool)
        .await?;
        let mut dropped = 0;
        for device_id in devices.iter().filter(|d| !live.contains(d)) {
            dropped += sql::query(
                "DELETE FROM to_device WHERE user_id = $1 AND device_id = $2 AND id <= $3",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(up_to)
            .execute(&self.db.pool)
            .await?
            .rows_affected();
        }
        Ok(dropped)
    }

    /// Deletes what the device acknowledged (everything before `acked`),
    /// then reads what remains before `to`, oldest first, at most `limit`.
    pub(crate) async fn to_device_inbox(
        &self,
        user_id: &str,
        device_id: &str,
        acked: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<ToDeviceRow>, StorageError> {
        if acked > 0 {
            sql::query(
                "DELETE FROM to_device WHERE user_id = $1 AND device_id = $2 AND log_offset < $3",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(i64_of(acked))
            .execute(&self.db.pool)
            .await?;
        }
        let rows = sql::query(
            "SELECT sender, event_type, content, log_offset FROM to_device
             WHERE user_id = $1 AND device_id = $2 AND log_offset >= $3 AND log_offset < $4
             ORDER BY log_offset, id LIMIT $5",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(i64_of(acked))
        .bind(i64_of(to))
        .bind(i64::from(limit))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(to_device_row).collect()
    }

    /// A device's to-device messages after log offset `after`, oldest
    /// first, at most `limit`, without deleting any (a dehydrated device's,
    /// read by the login rehydrating it, which may start over).
    pub(crate) async fn to_device_after(
        &self,
        user_id: &str,
        device_id: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<ToDeviceRow>, StorageError> {
        let rows = sql::query(
            "SELECT sender, event_type, content, log_offset FROM to_device
             WHERE user_id = $1 AND device_id = $2 AND log_offset > $3
             ORDER BY log_offset, id LIMIT $4",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(after.map_or(-1, i64_of))
        .bind(i64::from(limit))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(to_device_row).collect()
    }

    pub(crate) async fn apply_account_data(
        &self,
        at: At,
        update: &topic_pb::AccountDataUpdate,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        sql::query(
            "INSERT INTO account_data (user_id, room_id, data_type, content, log_partition, log_offset)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (user_id, room_id, data_type) DO UPDATE
             SET content = excluded.content, log_partition = excluded.log_partition,
                 log_offset = excluded.log_offset",
        )
        .bind(&update.user_id)
        .bind(&update.room_id)
        .bind(&update.data_type)
        .bind(String::from_utf8_lossy(&update.content_json).as_ref())
        .bind(i64::from(at.partition))
        .bind(i64_of(at.offset))
        .execute(&mut *tx)
        .await?;
        Self::commit_at(tx, Stream::AccountData, at).await
    }

    /// The user's account data written in `[from, to)` of their partition.
    pub(crate) async fn account_data_for(
        &self,
        user_id: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<AccountDataRow>, StorageError> {
        let rows = sql::query(
            "SELECT room_id, data_type, content FROM account_data
             WHERE user_id = $1 AND log_offset >= $2 AND log_offset < $3",
        )
        .bind(user_id)
        .bind(i64_of(from))
        .bind(i64_of(to))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AccountDataRow {
                    room_id: row.try_get(0)?,
                    data_type: row.try_get(1)?,
                    content: row.try_get(2)?,
                })
            })
            .collect()
    }
}

fn presence_row(row: &sql::Row) -> Result<PresenceRow, sqlx::Error> {
    Ok(PresenceRow {
        user_id: row.try_get(0)?,
        presence: row.try_get(1)?,
        status_msg: row.try_get(2)?,
        last_active_ts: row.try_get(3)?,
        currently_active: row.try_get::<i64, _>(4)? != 0,
        at: At::from_row(row, 5, 6)?,
        automatic: row.try_get::<i64, _>(7)? != 0,
    })
}
