//! Pushers, the notifications queued for them, and the push view of
//! `roomserver.output` (who is in each room, and what of the room a push
//! shows).

use ganglion_base::sql;

use super::{Storage, StorageError};

/// A pusher as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pusher {
    pub(crate) id: i64,
    pub(crate) user_id: String,
    pub(crate) device_id: String,
    pub(crate) app_id: String,
    pub(crate) pushkey: String,
    pub(crate) kind: String,
    pub(crate) app_display_name: String,
    pub(crate) device_display_name: String,
    pub(crate) profile_tag: Option<String>,
    pub(crate) lang: String,
    /// The pusher's `data`, a JSON object.
    pub(crate) data: String,
    /// When the pushkey was set, in seconds.
    pub(crate) pushkey_ts: i64,
}

/// A pusher's delivery state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Failing {
    pub(crate) since_ms: Option<i64>,
    pub(crate) last_error: Option<String>,
    pub(crate) attempts: i64,
}

/// A notification waiting for its pusher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Queued {
    pub(crate) id: i64,
    pub(crate) event_id: String,
    /// The request body's `notification`, without its devices (JSON).
    pub(crate) notification: String,
    pub(crate) created_ms: i64,
}

const PUSHER_COLUMNS: &str = "id, user_id, device_id, app_id, pushkey, kind, app_display_name, \
     device_display_name, profile_tag, lang, data, pushkey_ts";

fn pusher_of(row: &sql::Row) -> Result<Pusher, sqlx::Error> {
    Ok(Pusher {
        id: row.try_get(0)?,
        user_id: row.try_get(1)?,
        device_id: row.try_get(2)?,
        app_id: row.try_get(3)?,
        pushkey: row.try_get(4)?,
        kind: row.try_get(5)?,
        app_display_name: row.try_get(6)?,
        device_display_name: row.try_get(7)?,
        profile_tag: row.try_get(8)?,
        lang: row.try_get(9)?,
        data: row.try_get(10)?,
        pushkey_ts: row.try_get(11)?,
    })
}

impl Storage {
    /// Creates or updates the user's pusher of its app and pushkey; unless
    /// `append`, other users' pushers of that app and pushkey go.
    pub(crate) async fn set_pusher(
        &self,
        pusher: &Pusher,
        append: bool,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        sql::query(
            "INSERT INTO pushers (user_id, device_id, app_id, pushkey, kind, app_display_name,
                 device_display_name, profile_tag, lang, data, pushkey_ts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET
                 device_id = excluded.device_id, kind = excluded.kind,
                 app_display_name = excluded.app_display_name,
                 device_display_name = excluded.device_display_name,
                 profile_tag = excluded.profile_tag, lang = excluded.lang,
                 data = excluded.data, pushkey_ts = excluded.pushkey_ts,
                 failing_since = NULL, last_error = NULL, attempts = 0, next_attempt_ms = 0",
        )
        .bind(&pusher.user_id)
        .bind(&pusher.device_id)
        .bind(&pusher.app_id)
        .bind(&pusher.pushkey)
        .bind(&pusher.kind)
        .bind(&pusher.app_display_name)
        .bind(&pusher.device_display_name)
        .bind(pusher.profile_tag.as_deref())
        .bind(&pusher.lang)
        .bind(&pusher.data)
        .bind(pusher.pushkey_ts)
        .execute(&mut *tx)
        .await?;
        if !append {
            sql::query("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3")
                .bind(&pusher.app_id)
                .bind(&pusher.pushkey)
                .bind(&pusher.user_id)
                .execute(&mut *tx)
                .await?;
        }
        Self::drop_orphaned_queue(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes the user's pusher of an app and pushkey (true if there was one).
    pub(crate) async fn delete_pusher(
        &self,
        user_id: &str,
        app_id: &str,
        pushkey: &str,
    ) -> Result<bool, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let done =
            sql::query("DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3")
                .bind(user_id)
                .bind(app_id)
                .bind(pushkey)
                .execute(&mut *tx)
                .await?;
        Self::drop_orphaned_queue(&mut tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes the pushers a push gateway rejected (every user's).
    pub(crate) async fn delete_rejected(
        &self,
        app_id: &str,
        pushkey: &str,
    ) -> Result<u64, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let done = sql::query("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2")
            .bind(app_id)
            .bind(pushkey)
            .execute(&mut *tx)
            .await?;
        Self::drop_orphaned_queue(&mut tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Removes the pushers of the user's devices that are gone (logged
    /// out, deleted, or every one of a deactivated account).
    pub(crate) async fn delete_pushers_of_gone_devices(
        &self,
        user_id: &str,
        localpart: &str,
    ) -> Result<u64, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let done = sql::query(
            "DELETE FROM pushers WHERE user_id = $1
               AND device_id NOT IN (SELECT device_id FROM devices WHERE localpart = $2)",
        )
        .bind(user_id)
        .bind(localpart)
        .execute(&mut *tx)
        .await?;
        Self::drop_orphaned_queue(&mut tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn drop_orphaned_queue(tx: &mut sql::Transaction) -> Result<(), StorageError> {
        sql::query("DELETE FROM push_queue WHERE pusher_id NOT IN (SELECT id FROM pushers)")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// A user's pushers, oldest first.
    pub(crate) async fn pushers_of(&self, user_id: &str) -> Result<Vec<Pusher>, StorageError> {
        Self::pushers_of_on(&self.db.pool, user_id).await
    }

    /// A user's pushers, oldest first, read on the pool or in a
    /// transaction (the push consumer's).
    pub(crate) async fn pushers_of_on<'e>(
        on: impl Into<sql::Exec<'e>>,
        user_id: &str,
    ) -> Result<Vec<Pusher>, StorageError> {
        let rows = sql::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PUSHER_COLUMNS} FROM pushers WHERE user_id = $1 ORDER BY id"
        )))
        .bind(user_id)
        .fetch_all(on)
        .await?;
        Ok(rows.iter().map(pusher_of).collect::<Result<_, _>>()?)
    }

    /// A pusher and its delivery state.
    pub(crate) async fn pusher(&self, id: i64) -> Result<Option<(Pusher, Failing)>, StorageError> {
        let row = sql::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PUSHER_COLUMNS}, failing_since, last_error, attempts FROM pushers WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let failing = Failing {
            since_ms: row.try_get(12)?,
            last_error: row.try_get(13)?,
            attempts: row.try_get(14)?,
        };
        Ok(Some((pusher_of(&row)?, failing)))
    }

    /// Whether any user has a pusher.
    pub(crate) async fn any_pushers<'e>(
        on: impl Into<sql::Exec<'e>>,
    ) -> Result<bool, StorageError> {
        let found: Option<i64> = sql::query_scalar("SELECT id FROM pushers LIMIT 1")
            .fetch_optional(on)
            .await?;
        Ok(found.is_some())
    }

    /// The pushers of the room's joined members (local users with pushers).
    pub(crate) async fn pushers_in_room(
        &self,
        tx: &mut sql::Transaction,
        room_id: &str,
    ) -> Result<Vec<Pusher>, StorageError> {
        let columns = PUSHER_COLUMNS
            .split(", ")
            .map(|column| format!("p.{column}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sql::query(sqlx::AssertSqlSafe(format!(
            "SELECT {columns} FROM pushers p JOIN push_members m ON m.user_id = p.user_id
             WHERE m.room_id = $1 AND m.membership = 'join' ORDER BY p.id"
        )))
        .bind(room_id)
        .fetch_all(&mut **tx)
        .await?;
        Ok(rows.iter().map(pusher_of).collect::<Result<_, _>>()?)
    }

    /// A member's membership (and display name) now.
    pub(crate) async fn set_membership(
        tx: &mut sql::Transaction,
        room_id: &str,
        user_id: &str,
        membership: &str,
        displayname: Option<&str>,
    ) -> Result<(), StorageError> {
        // A member who leaves has nothing unread there any more.
        sql::query(
            "INSERT INTO push_members (room_id, user_id, membership, displayname)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (room_id, user_id) DO UPDATE
             SET membership = excluded.membership, displayname = excluded.displayname,
                 unread = CASE WHEN excluded.membership = 'join' THEN push_members.unread
                               ELSE 0 END",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(membership)
        .bind(displayname)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// One more unread notification for the user in the room; answers the
    /// user's unread notifications in every room (the push badge).
    pub(crate) async fn add_unread(
        tx: &mut sql::Transaction,
        room_id: &str,
        user_id: &str,
    ) -> Result<i64, StorageError> {
        sql::query(
            "UPDATE push_members SET unread = unread + 1 WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
        Self::unread_total(tx, user_id).await
    }

    /// The user read the room (a read receipt): its unread notifications
    /// are cleared; answers the badge after, or `None` if nothing was
    /// unread there (nothing changed).
    pub(crate) async fn mark_read(
        tx: &mut sql::Transaction,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<i64>, StorageError> {
        let cleared = sql::query(
            "UPDATE push_members SET unread = 0
             WHERE room_id = $1 AND user_id = $2 AND unread > 0",
        )
        .bind(room_id)
        .bind(user_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if cleared == 0 {
            return Ok(None);
        }
        Ok(Some(Self::unread_total(tx, user_id).await?))
    }

    async fn unread_total(tx: &mut sql::Transaction, user_id: &str) -> Result<i64, StorageError> {
        Ok(sql::query_scalar(
            "SELECT CAST(COALESCE(SUM(unread), 0) AS BIGINT) FROM push_members
             WHERE user_id = $1 AND unread > 0",
        )
        .bind(user_id)
        .fetch_one(&mut **tx)
        .await?)
    }

    /// How many users are joined to the room.
    pub(crate) async fn joined_count(
        tx: &mut sql::Transaction,
        room_id: &str,
    ) -> Result<usize, StorageError> {
        let count: i64 = sql::query_scalar(
            "SELECT COUNT(*) FROM push_members WHERE room_id = $1 AND membership = 'join'",
        )
        .bind(room_id)
        .fetch_one(&mut **tx)
        .await?;
        Ok(usize::try_from(count).unwrap_or_default())
    }

    /// A member's display name in the room, if they set one.
    pub(crate) async fn displayname_in(
        tx: &mut sql::Transaction,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<String>, StorageError> {
        let name: Option<Option<String>> = sql::query_scalar(
            "SELECT displayname FROM push_members WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(name.flatten())
    }

    /// One of the room's fields push reads: `create_event`,
    /// `power_levels_event`, `name` or `canonical_alias`.
    pub(crate) async fn set_room_field(
        tx: &mut sql::Transaction,
        room_id: &str,
        field: RoomField,
        value: Option<&str>,
    ) -> Result<(), StorageError> {
        let column = field.column();
        sql::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO push_rooms (room_id, {column}) VALUES ($1, $2)
             ON CONFLICT (room_id) DO UPDATE SET {column} = excluded.{column}"
        )))
        .bind(room_id)
        .bind(value)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The room's fields push reads, in [`RoomField`] order.
    pub(crate) async fn room_fields(
        tx: &mut sql::Transaction,
        room_id: &str,
    ) -> Result<[Option<String>; 4], StorageError> {
        let row = sql::query(
            "SELECT create_event, power_levels_event, name, canonical_alias
             FROM push_rooms WHERE room_id = $1",
        )
        .bind(room_id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok([None, None, None, None]);
        };
        Ok([
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        ])
    }

    /// Queues a notification for a pusher (once per event).
    pub(crate) async fn enqueue_push(
        tx: &mut sql::Transaction,
        pusher_id: i64,
        event_id: &str,
        notification: &str,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        sql::query(
            "INSERT INTO push_queue (pusher_id, event_id, notification, created_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (pusher_id, event_id) DO NOTHING",
        )
        .bind(pusher_id)
        .bind(event_id)
        .bind(notification)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Leases pushers with notifications due to `owner` until
    /// `lease_until`: no other replica sends for them meanwhile.
    pub(crate) async fn claim_due_pushers(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<i64>, StorageError> {
        let candidates: Vec<i64> = sql::query_scalar(
            "SELECT id FROM pushers
             WHERE next_attempt_ms <= $1 AND lease_until <= $1
               AND id IN (SELECT pusher_id FROM push_queue)
             ORDER BY next_attempt_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut claimed = Vec::new();
        let mut tx = self.db.pool.begin_write().await?;
        for id in candidates {
            // Taken only if still free: two replicas never both win.
            let done = sql::query(
                "UPDATE pushers SET lease_owner = $1, lease_until = $2
                 WHERE id = $3 AND lease_until <= $4",
            )
            .bind(owner)
            .bind(lease_until)
            .bind(id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                claimed.push(id);
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Gives a lease back.
    pub(crate) async fn release_pusher(&self, id: i64, owner: &str) -> Result<(), StorageError> {
        sql::query("UPDATE pushers SET lease_until = 0 WHERE id = $1 AND lease_owner = $2")
            .bind(id)
            .bind(owner)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// The oldest notifications waiting for a pusher.
    pub(crate) async fn queued(
        &self,
        pusher_id: i64,
        limit: i64,
    ) -> Result<Vec<Queued>, StorageError> {
        let rows = sql::query(
            "SELECT id, event_id, notification, created_ms FROM push_queue
             WHERE pusher_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(pusher_id)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Queued {
                    id: row.try_get(0)?,
                    event_id: row.try_get(1)?,
                    notification: row.try_get(2)?,
                    created_ms: row.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StorageError::from)
    }

    /// Notifications done with (sent, or given up on).
    pub(crate) async fn dequeue(&self, ids: &[i64]) -> Result<(), StorageError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.pool.begin().await?;
        for id in ids {
            sql::query("DELETE FROM push_queue WHERE id = $1")
                .bind(*id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The pusher's gateway answered: it is not failing.
    pub(crate) async fn pusher_succeeded(&self, id: i64) -> Result<(), StorageError> {
        sql::query(
            "UPDATE pushers SET failing_since = NULL, last_error = NULL, attempts = 0,
                 next_attempt_ms = 0 WHERE id = $1",
        )
        .bind(id)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// The pusher's gateway failed: noted, and the next attempt put off.
    pub(crate) async fn pusher_failed(
        &self,
        id: i64,
        error: &str,
        now_ms: i64,
        next_attempt_ms: i64,
    ) -> Result<(), StorageError> {
        sql::query(
            "UPDATE pushers SET failing_since = COALESCE(failing_since, $2), last_error = $3,
                 attempts = attempts + 1, next_attempt_ms = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(now_ms)
        .bind(error)
        .bind(next_attempt_ms)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }
}

/// The fields of a room push reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoomField {
    Create,
    PowerLevels,
    Name,
    CanonicalAlias,
}

impl RoomField {
    fn column(self) -> &'static str {
        match self {
            RoomField::Create => "create_event",
            RoomField::PowerLevels => "power_levels_event",
            RoomField::Name => "name",
            RoomField::CanonicalAlias => "canonical_alias",
        }
    }

    /// The field a state event of this type sets.
    pub(crate) fn of_type(event_type: &str) -> Option<RoomField> {
        match event_type {
            "m.room.create" => Some(RoomField::Create),
            "m.room.power_levels" => Some(RoomField::PowerLevels),
            "m.room.name" => Some(RoomField::Name),
            "m.room.canonical_alias" => Some(RoomField::CanonicalAlias),
            _ => None,
        }
    }
}
