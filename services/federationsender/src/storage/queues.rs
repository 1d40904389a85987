use ganglion_base::sql;
use std::collections::HashMap;

use ganglion_api::users::server_of;

use super::{Storage, StorageError};

/// A membership change of a room, as `roomserver.output` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberChange {
    pub(crate) user_id: String,
    /// `join` adds the user's server to the room; anything else removes the user.
    pub(crate) joined: bool,
}

/// A PDU (or EDU) waiting for its destination.
#[derive(Debug, Clone)]
pub(crate) struct QueuedPdu {
    pub(crate) id: i64,
    pub(crate) json: String,
}

/// Rows written (or removed) per statement.
const ROWS_PER_STATEMENT: usize = 200;

/// The most queued PDUs a batch holds before writing them: a batch of
/// thousands of events in a room of thousands of servers stays small.
const QUEUED_IN_MEMORY: usize = 4_096;

/// What [`Storage::apply_events`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Per event: false if it had been applied before.
    pub(crate) applied: Vec<bool>,
    /// Every server something was queued for, sorted.
    pub(crate) destinations: Vec<String>,
    /// PDUs queued, one per event and destination.
    pub(crate) queued: u64,
}

/// An event of `roomserver.output`, as the joined hosts and the queues
/// take it.
#[derive(Debug, Clone)]
pub(crate) struct OutputEvent {
    /// The record's place in `roomserver.output` (partition, offset).
    pub(crate) at: Option<(u32, u64)>,
    pub(crate) room_id: String,
    pub(crate) changes: Vec<MemberChange>,
    /// (event ID, JSON) of a local event, to queue.
    pub(crate) pdu: Option<(String, String)>,
    /// A server to queue it for though it is not in the room (an invitee's).
    pub(crate) also: Option<String>,
}

impl Storage {
    /// Applies one event (see [`Storage::apply_events`]). Returns the
    /// destinations it was queued for, `None` if it was applied before.
    #[cfg(test)]
    pub(crate) async fn apply_event(
        &self,
        at: Option<(u32, u64)>,
        room_id: &str,
        changes: &[MemberChange],
        pdu: Option<(&str, &str)>,
        also: Option<&str>,
        own: &str,
    ) -> Result<Option<Vec<String>>, StorageError> {
        let event = OutputEvent {
            at,
            room_id: room_id.to_owned(),
            changes: changes.to_vec(),
            pdu: pdu.map(|(id, json)| (id.to_owned(), json.to_owned())),
            also: also.map(str::to_owned),
        };
        let applied = self.apply_events(&[event], own).await?;
        Ok(applied.applied[0].then_some(applied.destinations))
    }

    /// Applies events in log order, in one transaction: each one's
    /// membership changes go to its room's joined hosts, and a local event
    /// (`pdu`) is queued for every server in the room before or after it,
    /// and `also`, but `own`. A redelivered event is queued once. Returns
    /// which events were applied and every destination something was
    /// queued for: memory follows the servers, not events times servers.
    ///
    /// An event's `at` is stored with it: an event at or before its
    /// partition's stored position was applied already and changes nothing,
    /// whichever replica or rebuild applied it. The positions are
    /// locked first, so a second replica applying the same records waits
    /// for the first and then finds them applied.
    pub(crate) async fn apply_events(
        &self,
        events: &[OutputEvent],
        own: &str,
    ) -> Result<Applied, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        // Locked in one order, so two replicas cannot wait on each other.
        let mut partitions: Vec<u32> = events.iter().filter_map(|e| Some(e.at?.0)).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut positions: HashMap<u32, (u64, u64)> = HashMap::new();
        for partition in partitions {
            let stored = Self::lock_position(&mut tx, partition).await?;
            positions.insert(partition, (stored, stored));
        }
        let engine = self.db.engine;
        // Each room's servers as the batch has left them.
        let mut hosts: HashMap<&str, Vec<String>> = HashMap::new();
        let mut queued: Vec<(String, &str, &str)> = Vec::new();
        let mut applied = Vec::with_capacity(events.len());
        let mut destinations = std::collections::BTreeSet::new();
        let mut queued_count = 0;
        for event in events {
            if let Some((partition, offset)) = event.at
                && let Some((_, next)) = positions.get_mut(&partition)
            {
                if offset < *next {
                    applied.push(false);
                    continue;
                }
                *next = offset + 1;
            }
            let room_id = event.room_id.as_str();
            let before = match hosts.remove(room_id) {
                Some(known) => known,
                None => Self::room_hosts(&mut tx, room_id).await?,
            };
            // Read again only when the event changed who is in the room.
            let changed = if event.changes.is_empty() {
                None
            } else {
                Self::change_members(&mut tx, engine, room_id, &event.changes).await?;
                Some(Self::room_hosts(&mut tx, room_id).await?)
            };
            if let Some((event_id, json)) = &event.pdu {
                let mut all: Vec<&String> = before.iter().chain(changed.iter().flatten()).collect();
                all.extend(event.also.as_ref());
                all.sort();
                all.dedup();
                all.retain(|d| *d != own);
                for destination in all {
                    queued.push((destination.clone(), event_id, json));
                    if !destinations.contains(destination) {
                        destinations.insert(destination.clone());
                    }
                    queued_count += 1;
                }
                if queued.len() >= QUEUED_IN_MEMORY {
                    Self::queue_pdus(&mut tx, engine, &queued).await?;
                    queued.clear();
                }
            }
            let after = changed.unwrap_or(before);
            hosts.insert(room_id, after);
            applied.push(true);
        }
        Self::queue_pdus(&mut tx, engine, &queued).await?;
        for (partition, (stored, next)) in positions {
            if next > stored {
                sql::query("UPDATE output_positions SET next_offset = $1 WHERE partition_id = $2")
                    .bind(i64::try_from(next).unwrap_or(i64::MAX))
                    .bind(i64::from(partition))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(Applied {
            applied,
            destinations: destinations.into_iter().collect(),
            queued: queued_count,
        })
    }

    /// Queues PDUs as (destination, event ID, JSON), three values a row, in
    /// the order given: each destination's sending order.
    async fn queue_pdus(
        tx: &mut sql::Transaction,
        engine: ganglion_base::database::Engine,
        queued: &[(String, &str, &str)],
    ) -> Result<(), StorageError> {
        for chunk in queued.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO queued_pdus (destination, event_id, pdu_json) VALUES {}
                 ON CONFLICT (destination, event_id) DO NOTHING",
                ganglion_base::database::value_rows(engine, 1, chunk.len(), 3)
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql));
            for (destination, event_id, json) in chunk {
                query = query.bind(destination).bind(*event_id).bind(*json);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Removes the users who left `room_id` and adds those who joined, many
    /// rows to a statement (a join brings the room's thousands of members):
    /// the leaves first, then the joins, which keeps each user's last
    /// change (a user joins after leaving, never leaves after joining, in
    /// one event's changes).
    async fn change_members(
        tx: &mut sql::Transaction,
        engine: ganglion_base::database::Engine,
        room_id: &str,
        changes: &[MemberChange],
    ) -> Result<(), StorageError> {
        let (joins, leaves): (Vec<&MemberChange>, Vec<&MemberChange>) =
            changes.iter().partition(|change| change.joined);
        for chunk in leaves.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "DELETE FROM joined_hosts WHERE room_id = {} AND user_id IN ({})",
                ganglion_base::database::param(engine, 1),
                ganglion_base::database::params(engine, 2, chunk.len())
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql)).bind(room_id);
            for change in chunk {
                query = query.bind(&change.user_id);
            }
            query.execute(&mut **tx).await?;
        }
        let joins: Vec<(&str, &str)> = joins
            .iter()
            .filter_map(|change| Some((change.user_id.as_str(), server_of(&change.user_id)?)))
            .collect();
        for chunk in joins.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO joined_hosts (room_id, user_id, server_name)
                 SELECT {}, v.column1, v.column2 FROM (VALUES {}) AS v WHERE true
                 ON CONFLICT (room_id, user_id) DO NOTHING",
                ganglion_base::database::param(engine, 1),
                ganglion_base::database::value_rows(engine, 2, chunk.len(), 2)
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql)).bind(room_id);
            for (user_id, server) in chunk {
                query = query.bind(*user_id).bind(*server);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Locks a partition's stored position (its row, made if missing) for
    /// the rest of the transaction and returns it: the offset of the next
    /// record to apply.
    async fn lock_position(tx: &mut sql::Transaction, partition: u32) -> Result<u64, StorageError> {
        // An update that changes nothing, for the row lock.
        let stored: i64 = sql::query_scalar(
            "INSERT INTO output_positions (partition_id, next_offset) VALUES ($1, 0)
             ON CONFLICT (partition_id) DO UPDATE SET next_offset = output_positions.next_offset
             RETURNING next_offset",
        )
        .bind(i64::from(partition))
        .fetch_one(&mut **tx)
        .await?;
        Ok(u64::try_from(stored).unwrap_or(0))
    }

    /// Moves a partition's stored position forward to `next` (the offset
    /// of the next record to apply); false if it was there already. The
    /// first statement of a transaction: on PostgreSQL it locks the
    /// partition's row, so a second replica applying the same record waits
    /// for the first and then finds it applied.
    async fn advance_position(
        tx: &mut sql::Transaction,
        partition: u32,
        next: u64,
    ) -> Result<bool, StorageError> {
        let next = i64::try_from(next).unwrap_or(i64::MAX);
        let moved = sql::query(
            "INSERT INTO output_positions (partition_id, next_offset) VALUES ($1, $2)
             ON CONFLICT (partition_id) DO UPDATE SET next_offset = excluded.next_offset
             WHERE output_positions.next_offset < excluded.next_offset",
        )
        .bind(i64::from(partition))
        .bind(next)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(moved > 0)
    }

    /// Whether applying `events` (none changing membership) would queue
    /// nothing: none is a local event of a room with another server in it.
    /// Read outside any transaction, from what is committed.
    pub(crate) async fn queues_nothing(
        &self,
        events: &[OutputEvent],
        own: &str,
    ) -> Result<bool, StorageError> {
        let mut rooms: Vec<&str> = events
            .iter()
            .filter(|e| e.pdu.is_some())
            .map(|e| e.room_id.as_str())
            .collect();
        rooms.sort_unstable();
        rooms.dedup();
        for room_id in rooms {
            let other: Option<i64> = sql::query_scalar(
                "SELECT 1 FROM joined_hosts WHERE room_id = $1 AND server_name <> $2 LIMIT 1",
            )
            .bind(room_id)
            .bind(own)
            .fetch_optional(&self.db.pool)
            .await?;
            if other.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Moves a partition's stored position forward to `next`, alone.
    pub(crate) async fn store_position(
        &self,
        partition: u32,
        next: u64,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        Self::advance_position(&mut tx, partition, next).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Each partition's stored position: the offset of the next record to
    /// apply, by partition (absent where no record was applied).
    pub(crate) async fn output_positions(&self) -> Result<Vec<(u32, u64)>, StorageError> {
        let rows: Vec<(i64, i64)> =
            sql::query_as("SELECT partition_id, next_offset FROM output_positions")
                .fetch_all(&self.db.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(partition, next)| {
                Some((u32::try_from(partition).ok()?, u64::try_from(next).ok()?))
            })
            .collect())
    }

    /// The servers with a member joined to `room_id`.
    #[cfg(test)]
    pub(crate) async fn joined_hosts(&self, room_id: &str) -> Result<Vec<String>, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let hosts = Self::room_hosts(&mut tx, room_id).await?;
        tx.commit().await?;
        Ok(hosts)
    }

    /// Every joined member of every room, as (room, user), sorted: the
    /// whole joined-hosts view, to compare a rebuilt view with its original.
    #[cfg(test)]
    pub(crate) async fn joined_members(&self) -> Result<Vec<(String, String)>, StorageError> {
        Ok(
            sql::query_as("SELECT room_id, user_id FROM joined_hosts ORDER BY room_id, user_id")
                .fetch_all(&self.db.pool)
                .await?,
        )
    }

    /// How many PDUs wait for `destination`.
    pub(crate) async fn queue_depth(&self, destination: &str) -> Result<i64, StorageError> {
        Ok(
            sql::query_scalar("SELECT COUNT(*) FROM queued_pdus WHERE destination = $1")
                .bind(destination)
                .fetch_one(&self.db.pool)
                .await?,
        )
    }

    /// Moves each partition's stored position forward to at least the
    /// given one (records before it hold nothing left to apply).
    pub(crate) async fn advance_positions(&self, nexts: &[u64]) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        for (partition, next) in nexts.iter().enumerate() {
            let partition = u32::try_from(partition).unwrap_or(u32::MAX);
            Self::advance_position(&mut tx, partition, *next).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Queues an EDU of `room_id` for every other server in the room.
    /// Returns the destinations.
    pub(crate) async fn queue_edu(
        &self,
        room_id: &str,
        edu_json: &str,
        own: &str,
    ) -> Result<Vec<String>, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let mut hosts = Self::room_hosts(&mut tx, room_id).await?;
        hosts.retain(|h| h != own);
        Self::insert_edus(&mut tx, &hosts, edu_json).await?;
        tx.commit().await?;
        Ok(hosts)
    }

    /// Queues a device list update of a local user for every other server
    /// sharing a room with them, with `prev_id` the update sent before
    /// (none the first time). Returns the destinations.
    pub(crate) async fn queue_device_list_update(
        &self,
        user_id: &str,
        stream_id: i64,
        edu: impl Fn(Option<i64>) -> String,
        own: &str,
    ) -> Result<Vec<String>, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let previous: Option<i64> =
            sql::query_scalar("SELECT stream_id FROM device_list_sent WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
        if previous.is_some_and(|p| p >= stream_id) {
            // Delivered again: already queued.
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let hosts = Self::co_hosts(&mut tx, user_id, own).await?;
        Self::insert_edus(&mut tx, &hosts, &edu(previous)).await?;
        sql::query(
            "INSERT INTO device_list_sent (user_id, stream_id) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id",
        )
        .bind(user_id)
        .bind(stream_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(hosts)
    }

    /// Queues an EDU about a local user (presence) for every other server
    /// sharing a room with them. Returns the destinations.
    pub(crate) async fn queue_user_edu(
        &self,
        user_id: &str,
        edu_json: &str,
        own: &str,
    ) -> Result<Vec<String>, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let hosts = Self::co_hosts(&mut tx, user_id, own).await?;
        Self::insert_edus(&mut tx, &hosts, edu_json).await?;
        tx.commit().await?;
        Ok(hosts)
    }

    /// Queues an EDU for one destination (a to-device message).
    pub(crate) async fn queue_edu_to(
        &self,
        destination: &str,
        edu_json: &str,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        Self::insert_edus(&mut tx, &[destination.to_owned()], edu_json).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The servers with a member joined to the room.
    async fn room_hosts(
        tx: &mut sql::Transaction,
        room_id: &str,
    ) -> Result<Vec<String>, StorageError> {
        Ok(
            sql::query_scalar("SELECT DISTINCT server_name FROM joined_hosts WHERE room_id = $1")
                .bind(room_id)
                .fetch_all(&mut **tx)
                .await?,
        )
    }

    /// One EDU queued for each of `destinations`.
    async fn insert_edus(
        tx: &mut sql::Transaction,
        destinations: &[String],
        edu_json: &str,
    ) -> Result<(), StorageError> {
        for destination in destinations {
            sql::query("INSERT INTO queued_edus (destination, edu_json) VALUES ($1, $2)")
                .bind(destination)
                .bind(edu_json)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// The servers (but `own`) in the rooms `user_id` is joined to.
    async fn co_hosts(
        tx: &mut sql::Transaction,
        user_id: &str,
        own: &str,
    ) -> Result<Vec<String>, StorageError> {
        Ok(sql::query_scalar(
            "SELECT DISTINCT server_name FROM joined_hosts
             WHERE server_name <> $2
               AND room_id IN (SELECT room_id FROM joined_hosts WHERE user_id = $1)",
        )
        .bind(user_id)
        .bind(own)
        .fetch_all(&mut **tx)
        .await?)
    }

    /// The oldest EDUs queued for a destination, at most `limit`.
    pub(crate) async fn queued_edus(
        &self,
        destination: &str,
        limit: u32,
    ) -> Result<Vec<QueuedPdu>, StorageError> {
        self.oldest(
            "SELECT id, edu_json FROM queued_edus WHERE destination = $1 ORDER BY id LIMIT $2",
            destination,
            limit,
        )
        .await
    }

    /// The oldest PDUs queued for a destination, at most `limit`.
    pub(crate) async fn queued(
        &self,
        destination: &str,
        limit: u32,
    ) -> Result<Vec<QueuedPdu>, StorageError> {
        self.oldest(
            "SELECT id, pdu_json FROM queued_pdus WHERE destination = $1 ORDER BY id LIMIT $2",
            destination,
            limit,
        )
        .await
    }

    async fn oldest(
        &self,
        sql: &'static str,
        destination: &str,
        limit: u32,
    ) -> Result<Vec<QueuedPdu>, StorageError> {
        let rows = sql::query(sql)
            .bind(destination)
            .bind(i64::from(limit))
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(QueuedPdu {
                    id: row.try_get(0)?,
                    json: row.try_get(1)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Removes the PDUs and EDUs the destination took (up to those queue
    /// IDs), and clears its failures.
    pub(crate) async fn delivered(
        &self,
        destination: &str,
        pdus_up_to: Option<i64>,
        edus_up_to: Option<i64>,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        if let Some(up_to) = pdus_up_to {
            sql::query("DELETE FROM queued_pdus WHERE destination = $1 AND id <= $2")
                .bind(destination)
                .bind(up_to)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(up_to) = edus_up_to {
            sql::query("DELETE FROM queued_edus WHERE destination = $1 AND id <= $2")
                .bind(destination)
                .bind(up_to)
                .execute(&mut *tx)
                .await?;
        }
        sql::query("DELETE FROM destinations WHERE server_name = $1")
            .bind(destination)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a failed attempt at `now_ms`; the number of failures in a row.
    pub(crate) async fn failed(
        &self,
        destination: &str,
        now_ms: i64,
        retry_at_ms: i64,
    ) -> Result<i64, StorageError> {
        Ok(sql::query_scalar(
            "INSERT INTO destinations (server_name, failures, retry_at_ms, failing_since_ms)
             VALUES ($1, 1, $2, $3)
             ON CONFLICT (server_name) DO UPDATE
             SET failures = destinations.failures + 1, retry_at_ms = excluded.retry_at_ms
             RETURNING failures",
        )
        .bind(destination)
        .bind(retry_at_ms)
        .bind(now_ms)
        .fetch_one(&self.db.pool)
        .await?)
    }

    /// Drops the queues of destinations that have failed without a success
    /// since before `before_ms` (their record stays, so they are still
    /// tried, with what is sent from now on); how many queued items went.
    pub(crate) async fn prune_dead_destinations(
        &self,
        before_ms: i64,
    ) -> Result<u64, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let mut dropped = 0;
        for table in ["queued_pdus", "queued_edus"] {
            dropped += sql::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE destination IN
                 (SELECT server_name FROM destinations WHERE failing_since_ms < $1)"
            )))
            .bind(before_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(dropped)
    }

    /// A destination's failures in a row and when to try again (ms).
    pub(crate) async fn retry_state(&self, destination: &str) -> Result<(i64, i64), StorageError> {
        Ok(
            sql::query_as("SELECT failures, retry_at_ms FROM destinations WHERE server_name = $1")
                .bind(destination)
                .fetch_optional(&self.db.pool)
                .await?
                .unwrap_or((0, 0)),
        )
    }

    /// Takes (or renews) the lease on delivering to `destination` for
    /// `owner` until `until_ms`, unless another owner holds one that has not
    /// expired at `now_ms`. Whether `owner` holds it now.
    pub(crate) async fn claim_lease(
        &self,
        destination: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StorageError> {
        let done = sql::query(
            "INSERT INTO destination_leases (server_name, owner, expires_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (server_name) DO UPDATE
             SET owner = excluded.owner, expires_at_ms = excluded.expires_at_ms
             WHERE destination_leases.owner = excluded.owner
                OR destination_leases.expires_at_ms < $4",
        )
        .bind(destination)
        .bind(owner)
        .bind(until_ms)
        .bind(now_ms)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Gives the lease up (if `owner` holds it).
    pub(crate) async fn release_lease(
        &self,
        destination: &str,
        owner: &str,
    ) -> Result<(), StorageError> {
        sql::query("DELETE FROM destination_leases WHERE server_name = $1 AND owner = $2")
            .bind(destination)
            .bind(owner)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Destinations with work waiting that no replica holds a live lease
    /// on at `now_ms` (their replica stopped, or never started on them).
    pub(crate) async fn unleased_destinations_with_work(
        &self,
        now_ms: i64,
    ) -> Result<Vec<String>, StorageError> {
        Ok(sql::query_scalar(
            "SELECT destination FROM (
                 SELECT destination FROM queued_pdus UNION SELECT destination FROM queued_edus
             ) AS waiting
             WHERE destination NOT IN
                 (SELECT server_name FROM destination_leases WHERE expires_at_ms >= $1)",
        )
        .bind(now_ms)
        .fetch_all(&self.db.pool)
        .await?)
    }
}
