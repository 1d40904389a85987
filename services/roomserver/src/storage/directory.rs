//! Aliases, the published-room list and reports: room metadata that is not
//! room state.

use std::collections::HashMap;

use super::{Storage, StorageError};
use ganglion_base::sql;

/// Whose memberships [`Storage::memberships_in`] reads.
#[derive(Clone, Copy)]
pub(crate) enum Member<'a> {
    User(&'a str),
    /// Any user of this server.
    OfServer(&'a str),
}

/// A room as a space hierarchy page reads it: current state events of the
/// asked types (type, state key, JSON) and the joined member count.
#[derive(Default)]
pub(crate) struct RoomOverview {
    pub(crate) state: Vec<(String, String, String)>,
    pub(crate) joined: i64,
}

/// An invite or knock of one of our users in a room we are not in.
pub(crate) struct RemoteMembership {
    pub(crate) membership: String,
    pub(crate) sender: String,
    pub(crate) via_server: String,
}

impl Storage {
    /// Records an invite from another server to a room we are not in.
    pub(crate) async fn record_remote_invite(
        &self,
        room_id: &str,
        user_id: &str,
        event_id: &str,
        sender: &str,
    ) -> Result<(), StorageError> {
        let via = ganglion_api::users::server_of(sender).unwrap_or_default();
        self.record_remote_membership(room_id, user_id, (event_id, sender), ("invite", via))
            .await
    }

    /// Records a knock of `user_id` on a room we are not in, sent
    /// through `via`.
    pub(crate) async fn record_remote_knock(
        &self,
        room_id: &str,
        user_id: &str,
        event_id: &str,
        via: &str,
    ) -> Result<(), StorageError> {
        self.record_remote_membership(room_id, user_id, (event_id, user_id), ("knock", via))
            .await
    }

    async fn record_remote_membership(
        &self,
        room_id: &str,
        user_id: &str,
        (event_id, sender): (&str, &str),
        (membership, via): (&str, &str),
    ) -> Result<(), StorageError> {
        sql::query(
            "INSERT INTO remote_invites (room_id, user_id, event_id, sender, membership, via_server)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (room_id, user_id) DO UPDATE
             SET event_id = excluded.event_id, sender = excluded.sender,
                 membership = excluded.membership, via_server = excluded.via_server",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(event_id)
        .bind(sender)
        .bind(membership)
        .bind(via)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Forgets an invite from another server or a knock (rejected,
    /// rescinded).
    pub(crate) async fn forget_remote_invite(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<(), StorageError> {
        sql::query("DELETE FROM remote_invites WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user_id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// The membership (invite or knock) `user_id` has in a room we are not
    /// in, who sent it, and the server a leave goes through.
    pub(crate) async fn remote_membership(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<RemoteMembership>, StorageError> {
        let row = sql::query(
            "SELECT membership, sender, via_server FROM remote_invites WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(RemoteMembership {
            membership: row.try_get(0)?,
            sender: row.try_get(1)?,
            via_server: row.try_get(2)?,
        }))
    }

    pub(crate) async fn resolve_alias(&self, alias: &str) -> Result<Option<String>, StorageError> {
        Ok(
            sql::query_scalar("SELECT room_id FROM room_aliases WHERE alias = $1")
                .bind(alias)
                .fetch_optional(&self.db.pool)
                .await?,
        )
    }

    /// The room and creator of an alias.
    pub(crate) async fn alias(
        &self,
        alias: &str,
    ) -> Result<Option<(String, String)>, StorageError> {
        let row = sql::query("SELECT room_id, creator FROM room_aliases WHERE alias = $1")
            .bind(alias)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(match row {
            Some(row) => Some((row.try_get(0)?, row.try_get(1)?)),
            None => None,
        })
    }

    /// Adds an alias; false when it is taken.
    pub(crate) async fn add_alias(
        &self,
        alias: &str,
        room_id: &str,
        creator: &str,
    ) -> Result<bool, StorageError> {
        let inserted = sql::query(
            "INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3)
             ON CONFLICT (alias) DO NOTHING",
        )
        .bind(alias)
        .bind(room_id)
        .bind(creator)
        .execute(&self.db.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    pub(crate) async fn remove_alias(&self, alias: &str) -> Result<bool, StorageError> {
        Ok(sql::query("DELETE FROM room_aliases WHERE alias = $1")
            .bind(alias)
            .execute(&self.db.pool)
            .await?
            .rows_affected()
            == 1)
    }

    pub(crate) async fn aliases_of(&self, room_id: &str) -> Result<Vec<String>, StorageError> {
        Ok(
            sql::query_scalar("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias")
                .bind(room_id)
                .fetch_all(&self.db.pool)
                .await?,
        )
    }

    pub(crate) async fn set_published(
        &self,
        room_id: &str,
        public: bool,
    ) -> Result<(), StorageError> {
        if public {
            sql::query("INSERT INTO published_rooms (room_id) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(room_id)
                .execute(&self.db.pool)
                .await?;
        } else {
            sql::query("DELETE FROM published_rooms WHERE room_id = $1")
                .bind(room_id)
                .execute(&self.db.pool)
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn is_published(&self, room_id: &str) -> Result<bool, StorageError> {
        Ok(
            sql::query_scalar::<String>("SELECT room_id FROM published_rooms WHERE room_id = $1")
                .bind(room_id)
                .fetch_optional(&self.db.pool)
                .await?
                .is_some(),
        )
    }

    /// Published rooms with their joined member counts, most members first.
    pub(crate) async fn published_rooms(&self) -> Result<Vec<(String, i64)>, StorageError> {
        let rows = sql::query(
            "SELECT p.room_id,
                    (SELECT COUNT(*) FROM current_state s JOIN rooms r ON r.room_nid = s.room_nid
                     WHERE r.room_id = p.room_id AND s.event_type = 'm.room.member'
                       AND s.membership = 'join') AS joined
             FROM published_rooms p ORDER BY joined DESC, p.room_id",
        )
        .fetch_all(&self.db.pool)
        .await?;
        rows.into_iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// The current state events of a room of the given types, as JSON.
    pub(crate) async fn state_events_of_types(
        &self,
        room_id: &str,
        types: &[&str],
    ) -> Result<Vec<(String, String, String)>, StorageError> {
        if types.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = ganglion_base::database::params(self.db.engine, 2, types.len());
        let sql = format!(
            "SELECT s.event_type, s.state_key, e.json FROM current_state s
             JOIN rooms r ON r.room_nid = s.room_nid
             JOIN events e ON e.event_nid = s.event_nid
             WHERE r.room_id = $1 AND s.event_type IN ({placeholders})"
        );
        let mut query = sql::query(sqlx::AssertSqlSafe(sql)).bind(room_id);
        for kind in types {
            query = query.bind(*kind);
        }
        query
            .fetch_all(&self.db.pool)
            .await?
            .into_iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect()
    }

    /// What a page of a space hierarchy shows of the given rooms, in one
    /// statement each: the rooms `our_server` is joined to, their current
    /// state events of `types` (type, state key, JSON) and joined counts.
    pub(crate) async fn room_overviews(
        &self,
        room_ids: &[&str],
        our_server: &str,
        types: &[&str],
    ) -> Result<HashMap<String, RoomOverview>, StorageError> {
        let known = self
            .memberships_in(room_ids, Member::OfServer(our_server), &["join"])
            .await?;
        let mut overviews: HashMap<String, RoomOverview> = known
            .into_iter()
            .map(|(room_id, _)| (room_id, RoomOverview::default()))
            .collect();
        if overviews.is_empty() || types.is_empty() {
            return Ok(overviews);
        }
        let rooms: Vec<&str> = overviews.keys().map(String::as_str).collect();
        let engine = self.db.engine;
        let sql = format!(
            "SELECT r.room_id, s.event_type, s.state_key, e.json FROM current_state s
             JOIN rooms r ON r.room_nid = s.room_nid
             JOIN events e ON e.event_nid = s.event_nid
             WHERE r.room_id IN ({}) AND s.event_type IN ({})",
            ganglion_base::database::params(engine, 1, rooms.len()),
            ganglion_base::database::params(engine, 1 + rooms.len(), types.len()),
        );
        let mut query = sql::query(sqlx::AssertSqlSafe(sql));
        for value in rooms.iter().chain(types) {
            query = query.bind(*value);
        }
        let state = query.fetch_all(&self.db.pool).await?;
        let sql = format!(
            "SELECT r.room_id, COUNT(*) FROM current_state s JOIN rooms r ON r.room_nid = s.room_nid
             WHERE r.room_id IN ({}) AND s.event_type = 'm.room.member'
               AND s.membership = 'join'
             GROUP BY r.room_id",
            ganglion_base::database::params(engine, 1, rooms.len()),
        );
        let mut query = sql::query(sqlx::AssertSqlSafe(sql));
        for room_id in &rooms {
            query = query.bind(*room_id);
        }
        let counts = query.fetch_all(&self.db.pool).await?;
        for row in state {
            let room_id: String = row.try_get(0)?;
            if let Some(overview) = overviews.get_mut(&room_id) {
                overview
                    .state
                    .push((row.try_get(1)?, row.try_get(2)?, row.try_get(3)?));
            }
        }
        for row in counts {
            let room_id: String = row.try_get(0)?;
            if let Some(overview) = overviews.get_mut(&room_id) {
                overview.joined = row.try_get(1)?;
            }
        }
        Ok(overviews)
    }

    /// The memberships among `memberships` that `who` holds in each of the
    /// rooms (each pair once).
    pub(crate) async fn memberships_in(
        &self,
        room_ids: &[&str],
        who: Member<'_>,
        memberships: &[&str],
    ) -> Result<Vec<(String, String)>, StorageError> {
        if room_ids.is_empty() || memberships.is_empty() {
            return Ok(Vec::new());
        }
        let (condition, value) = match who {
            Member::User(user_id) => ("s.state_key = $1", user_id),
            // Server names hold no LIKE wildcards.
            Member::OfServer(server_name) => ("s.state_key LIKE '%:' || $1", server_name),
        };
        let engine = self.db.engine;
        let sql = format!(
            "SELECT DISTINCT r.room_id, s.membership FROM current_state s
             JOIN rooms r ON r.room_nid = s.room_nid
             WHERE s.event_type = 'm.room.member' AND {condition}
               AND r.room_id IN ({}) AND s.membership IN ({})",
            ganglion_base::database::params(engine, 2, room_ids.len()),
            ganglion_base::database::params(engine, 2 + room_ids.len(), memberships.len()),
        );
        let mut query = sql::query(sqlx::AssertSqlSafe(sql)).bind(value);
        for value in room_ids.iter().chain(memberships) {
            query = query.bind(*value);
        }
        query
            .fetch_all(&self.db.pool)
            .await?
            .into_iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// A user's membership in a room's current state.
    pub(crate) async fn membership(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<String>, StorageError> {
        Ok(sql::query_scalar(
            "SELECT s.membership FROM current_state s JOIN rooms r ON r.room_nid = s.room_nid
             WHERE r.room_id = $1 AND s.event_type = 'm.room.member' AND s.state_key = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(&self.db.pool)
        .await?
        .flatten())
    }

    /// Users joined to a room now, of `server_name` only unless empty
    /// (server names hold no LIKE wildcards), at most `limit` (0: all).
    pub(crate) async fn joined_members(
        &self,
        room_id: &str,
        server_name: &str,
        limit: u32,
    ) -> Result<Vec<String>, StorageError> {
        Ok(sql::query_scalar(
            "SELECT s.state_key FROM current_state s JOIN rooms r ON r.room_nid = s.room_nid
             WHERE r.room_id = $1 AND s.event_type = 'm.room.member' AND s.membership = 'join'
               AND ($2 = '' OR s.state_key LIKE '%:' || $2)
             LIMIT $3",
        )
        .bind(room_id)
        .bind(server_name)
        .bind(if limit == 0 {
            i64::MAX
        } else {
            i64::from(limit)
        })
        .fetch_all(&self.db.pool)
        .await?)
    }

    /// Rooms whose current state has the user joined.
    pub(crate) async fn joined_rooms(&self, user_id: &str) -> Result<Vec<String>, StorageError> {
        Ok(sql::query_scalar(
            "SELECT r.room_id FROM current_state s JOIN rooms r ON r.room_nid = s.room_nid
             WHERE s.event_type = 'm.room.member' AND s.state_key = $1 AND s.membership = 'join'
             ORDER BY r.room_id",
        )
        .bind(user_id)
        .fetch_all(&self.db.pool)
        .await?)
    }

    /// The rooms where the user's membership is `membership`, with the
    /// invites and knocks on rooms this server is not in.
    pub(crate) async fn rooms_with_membership(
        &self,
        user_id: &str,
        membership: &str,
    ) -> Result<Vec<String>, StorageError> {
        let mut rooms: Vec<String> = sql::query_scalar(
            "SELECT r.room_id FROM current_state s JOIN rooms r ON r.room_nid = s.room_nid
             WHERE s.event_type = 'm.room.member' AND s.state_key = $1 AND s.membership = $2",
        )
        .bind(user_id)
        .bind(membership)
        .fetch_all(&self.db.pool)
        .await?;
        let remote: Vec<String> = sql::query_scalar(
            "SELECT room_id FROM remote_invites WHERE user_id = $1 AND membership = $2",
        )
        .bind(user_id)
        .bind(membership)
        .fetch_all(&self.db.pool)
        .await?;
        rooms.extend(remote);
        Ok(rooms)
    }

    pub(crate) async fn add_report(
        &self,
        room_id: &str,
        event_id: Option<&str>,
        reporter: &str,
        reason: &str,
        score: Option<i64>,
        received_ts: i64,
    ) -> Result<(), StorageError> {
        sql::query(
            "INSERT INTO reports (room_id, event_id, reporter, reason, score, received_ts)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(room_id)
        .bind(event_id)
        .bind(reporter)
        .bind(reason)
        .bind(score)
        .bind(received_ts)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Reports, newest first (for admins).
    #[cfg(test)]
    pub(crate) async fn reports(
        &self,
    ) -> Result<Vec<(String, Option<String>, String, String)>, StorageError> {
        let rows = sql::query(
            "SELECT room_id, event_id, reporter, reason FROM reports ORDER BY report_id DESC",
        )
        .fetch_all(&self.db.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok((
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                ))
            })
            .collect()
    }
}
