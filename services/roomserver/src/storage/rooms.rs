//! Rooms, their events (with the state before and after each), forward
//! extremities and current state; written one input at a time through a
//! [`RoomWriter`] transaction.

use ganglion_base::sql;
use std::collections::HashMap;
use std::sync::Arc;

use ganglion_base::sql::Transaction;
use ruma::OwnedEventId;

use super::state::{Learnt, NidState};
use super::{Storage, StorageError};
use crate::events::{Pdu, StateMap};

pub(crate) struct RoomRow {
    pub(crate) room_nid: i64,
    pub(crate) room_version: String,
    pub(crate) depth: i64,
    /// The current state (0: none yet).
    pub(crate) snapshot_nid: i64,
    /// Grows with every write that moves the room's head; a replica's cached
    /// head is valid only at the version it was cached at.
    pub(crate) head_version: i64,
    /// The forward extremities as a JSON array of event IDs (`None`: in
    /// the `forward_extremities` table, for a room not written since they
    /// moved here); read with [`Storage::forward_extremities`].
    pub(crate) extremities: Option<String>,
}

/// An event as stored, with what the roomserver decided about it.
#[derive(Clone)]
pub(crate) struct StoredEvent {
    pub(crate) event_nid: i64,
    pub(crate) room_nid: i64,
    pub(crate) pdu: Arc<Pdu>,
    /// The state before and after the event; `None` for outliers.
    pub(crate) state_before: Option<i64>,
    pub(crate) state_after: Option<i64>,
    pub(crate) soft_failed: bool,
    pub(crate) outlier: bool,
    /// An outlier state event announced to the views when it was stored.
    pub(crate) announced: bool,
}

/// How an event is stored.
pub(crate) struct EventFlags {
    pub(crate) rejected: bool,
    pub(crate) soft_failed: bool,
    pub(crate) outlier: bool,
    /// Announce it to the views as it is stored (see
    /// [`EventFlags::announced`]).
    pub(crate) announce: bool,
}

impl EventFlags {
    /// Whether an event stored so is announced to the views as it is
    /// stored: outlier state events the input asked to announce (a join's
    /// state), not rejected ones.
    pub(crate) fn announced(&self, pdu: &Pdu) -> bool {
        self.outlier && self.announce && !self.rejected && pdu.state_key.is_some()
    }
}

/// An input recorded as processed, with the event IDs it is answered with.
pub(crate) struct ProcessedInput<'a> {
    pub(crate) room_id: &'a str,
    pub(crate) request_id: &'a str,
    pub(crate) event_ids: &'a [String],
}

/// Where a room's head moves to.
pub(crate) struct HeadUpdate {
    pub(crate) snapshot_nid: i64,
    pub(crate) depth: i64,
    pub(crate) extremities: Vec<String>,
    pub(crate) changes: Vec<CurrentStateChange>,
}

/// A current-state entry to set (with the event's membership, for member
/// events) or, without an event, to remove.
pub(crate) struct CurrentStateChange {
    pub(crate) kind: String,
    pub(crate) state_key: String,
    pub(crate) event: Option<(String, Option<String>)>,
}

impl CurrentStateChange {
    pub(crate) fn set(kind: &str, state_key: &str, event: &Pdu) -> Self {
        let membership = (kind == "m.room.member")
            .then(|| crate::events::membership_of(event))
            .flatten();
        CurrentStateChange {
            kind: kind.to_owned(),
            state_key: state_key.to_owned(),
            event: Some((event.event_id.to_string(), membership)),
        }
    }
}

const EVENT_COLUMNS: &str = "event_nid, room_nid, event_id, json, state_before_nid, state_after_nid, rejected, soft_failed, outlier, announced";

fn stored_from_row(row: &sql::Row) -> Result<StoredEvent, StorageError> {
    let event_id: String = row.try_get(2)?;
    let json: String = row.try_get(3)?;
    let mut pdu =
        Pdu::from_json(&event_id, &json).map_err(|_| StorageError::Corrupt(event_id.clone()))?;
    pdu.rejected = row.try_get::<i64, _>(6)? != 0;
    Ok(StoredEvent {
        event_nid: row.try_get(0)?,
        room_nid: row.try_get(1)?,
        pdu: Arc::new(pdu),
        state_before: row.try_get(4)?,
        state_after: row.try_get(5)?,
        soft_failed: row.try_get::<i64, _>(7)? != 0,
        outlier: row.try_get::<i64, _>(8)? != 0,
        announced: row.try_get::<i64, _>(9)? != 0,
    })
}

impl Storage {
    pub(crate) async fn room(&self, room_id: &str) -> Result<Option<RoomRow>, StorageError> {
        let row = sql::query(
            "SELECT room_nid, room_version, depth, state_snapshot_nid, head_version, extremities
             FROM rooms WHERE room_id = $1",
        )
        .bind(room_id)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(match row {
            Some(row) => {
                let room = RoomRow {
                    room_nid: row.try_get(0)?,
                    room_version: row.try_get(1)?,
                    depth: row.try_get(2)?,
                    snapshot_nid: row.try_get(3)?,
                    head_version: row.try_get(4)?,
                    extremities: row.try_get(5)?,
                };
                self.room_nids
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(room_id.to_owned(), room.room_nid);
                Some(room)
            }
            None => None,
        })
    }

    /// Room IDs by NID.
    pub(crate) async fn room_ids(
        &self,
        nids: impl Iterator<Item = i64>,
    ) -> Result<HashMap<i64, String>, StorageError> {
        let mut nids: Vec<i64> = nids.collect();
        nids.sort_unstable();
        nids.dedup();
        let mut found = HashMap::new();
        for nid in nids {
            if let Some(room_id) =
                sql::query_scalar::<String>("SELECT room_id FROM rooms WHERE room_nid = $1")
                    .bind(nid)
                    .fetch_optional(&self.db.pool)
                    .await?
            {
                found.insert(nid, room_id);
            }
        }
        Ok(found)
    }

    /// The room's forward extremities, sorted.
    pub(crate) async fn forward_extremities(
        &self,
        room: &RoomRow,
    ) -> Result<Vec<String>, StorageError> {
        if let Some(json) = &room.extremities {
            let mut ids: Vec<String> = serde_json::from_str(json).map_err(|_| {
                StorageError::Corrupt(format!("extremities of room {}", room.room_nid))
            })?;
            ids.sort_unstable();
            return Ok(ids);
        }
        Ok(sql::query_scalar(
            "SELECT event_id FROM forward_extremities WHERE room_nid = $1 ORDER BY event_id",
        )
        .bind(room.room_nid)
        .fetch_all(&self.db.pool)
        .await?)
    }

    /// Stored events by ID (those not stored are absent from the map).
    pub(crate) async fn events_by_id(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<OwnedEventId, StoredEvent>, StorageError> {
        // Where each event stands, without its JSON: the events themselves
        // come from the cache where it has them (a join's state was written
        // just before), parsed from the database only where not.
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(200) {
            let placeholders = ganglion_base::database::params(self.db.engine, 1, chunk.len());
            let sql = format!(
                "SELECT event_nid, room_nid, state_before_nid, state_after_nid, soft_failed, outlier,
                        announced
                 FROM events WHERE event_id IN ({placeholders})"
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&self.db.pool).await? {
                rows.push((
                    row.try_get::<i64, _>(0)?,
                    row.try_get::<i64, _>(1)?,
                    row.try_get::<Option<i64>, _>(2)?,
                    row.try_get::<Option<i64>, _>(3)?,
                    row.try_get::<i64, _>(4)? != 0,
                    row.try_get::<i64, _>(5)? != 0,
                    row.try_get::<i64, _>(6)? != 0,
                ));
            }
        }
        let nids: Vec<i64> = rows.iter().map(|row| row.0).collect();
        let mut pdus = self.events_by_nid(&nids).await?;
        let mut found = HashMap::with_capacity(rows.len());
        for (event_nid, room_nid, state_before, state_after, soft_failed, outlier, announced) in
            rows
        {
            let pdu = pdus
                .remove(&event_nid)
                .ok_or_else(|| StorageError::Corrupt(format!("event {event_nid}")))?;
            found.insert(
                pdu.event_id.clone(),
                StoredEvent {
                    event_nid,
                    room_nid,
                    pdu,
                    state_before,
                    state_after,
                    soft_failed,
                    outlier,
                    announced,
                },
            );
        }
        Ok(found)
    }

    /// Stored events by NID.
    pub(crate) async fn events_by_nid(
        &self,
        nids: &[i64],
    ) -> Result<HashMap<i64, Arc<Pdu>>, StorageError> {
        let mut found = HashMap::with_capacity(nids.len());
        let mut missing = Vec::new();
        {
            let cache = self.lock_event_cache();
            for nid in nids {
                match cache.get(nid) {
                    Some(pdu) => {
                        found.insert(*nid, pdu);
                    }
                    None => missing.push(*nid),
                }
            }
        }
        for chunk in missing.chunks(500) {
            let list = chunk
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            // NIDs are integers we produced, never user input.
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_nid IN ({list})");
            let rows = sql::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&self.db.pool)
                .await?;
            let mut cache = self.lock_event_cache();
            for row in rows {
                let stored = stored_from_row(&row)?;
                cache.insert(stored.event_nid, stored.pdu.clone());
                found.insert(stored.event_nid, stored.pdu);
            }
        }
        Ok(found)
    }

    fn lock_event_cache(&self) -> std::sync::MutexGuard<'_, super::state::Bounded<i64, Arc<Pdu>>> {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A snapshot as events, keyed by (type, state key), with its NIDs.
    pub(crate) async fn load_state(
        &self,
        snapshot_nid: i64,
    ) -> Result<(StateMap, NidState), StorageError> {
        let nids = self.snapshot(snapshot_nid).await?;
        let state = self.state_map(&nids).await?;
        Ok((state, nids))
    }

    /// The events of a NID state.
    pub(crate) async fn state_map(&self, nids: &NidState) -> Result<StateMap, StorageError> {
        let type_nids: Vec<i64> = nids.entries.keys().map(|(t, _)| *t).collect();
        let key_nids: Vec<i64> = nids.entries.keys().map(|(_, k)| *k).collect();
        let event_nids: Vec<i64> = nids.entries.values().copied().collect();
        let (types, keys) = self.names(&type_nids, &key_nids).await?;
        let events = self.events_by_nid(&event_nids).await?;
        let mut state = StateMap::with_capacity(nids.entries.len());
        for ((kind, key), event) in &nids.entries {
            let (Some(kind), Some(key), Some(event)) =
                (types.get(kind), keys.get(key), events.get(event))
            else {
                return Err(StorageError::Corrupt(format!(
                    "state entry {kind}/{key}/{event}"
                )));
            };
            state.insert((kind.clone(), key.clone()), event.clone());
        }
        Ok(state)
    }

    /// One state event of a room's current state, as JSON.
    pub(crate) async fn state_event(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<String>, StorageError> {
        Ok(sql::query_scalar(
            "SELECT e.json FROM current_state s JOIN rooms r ON r.room_nid = s.room_nid
             JOIN events e ON e.event_nid = s.event_nid
             WHERE r.room_id = $1 AND s.event_type = $2 AND s.state_key = $3",
        )
        .bind(room_id)
        .bind(event_type)
        .bind(state_key)
        .fetch_optional(&self.db.pool)
        .await?)
    }

    /// Fills in the membership of current member events stored before the
    /// column existed (schema version 3), once: a marker row records that
    /// it ran, so later start-ups pay one lookup.
    /// Forgets inputs processed before `before_ms`; how many.
    pub(crate) async fn prune_processed_inputs(&self, before_ms: i64) -> Result<u64, StorageError> {
        Ok(
            sql::query("DELETE FROM processed_inputs WHERE processed_ms < $1")
                .bind(before_ms)
                .execute(&self.db.pool)
                .await?
                .rows_affected(),
        )
    }

    pub(crate) async fn fill_memberships(&self) -> Result<(), StorageError> {
        const DONE: &str = "current_state.membership";
        let done: Option<String> = sql::query_scalar("SELECT name FROM backfills WHERE name = $1")
            .bind(DONE)
            .fetch_optional(&self.db.pool)
            .await?;
        if done.is_some() {
            return Ok(());
        }
        let rows = sql::query(
            "SELECT s.room_nid, s.state_key, e.event_id, e.json FROM current_state s
             JOIN events e ON e.event_nid = s.event_nid
             WHERE s.event_type = 'm.room.member' AND s.membership IS NULL",
        )
        .fetch_all(&self.db.pool)
        .await?;
        for row in rows {
            let event_id: String = row.try_get(2)?;
            let json: String = row.try_get(3)?;
            let pdu =
                Pdu::from_json(&event_id, &json).map_err(|_| StorageError::Corrupt(event_id))?;
            sql::query(
                "UPDATE current_state SET membership = $1
                 WHERE room_nid = $2 AND event_type = 'm.room.member' AND state_key = $3",
            )
            .bind(crate::events::membership_of(&pdu).unwrap_or_default())
            .bind(row.try_get::<i64, _>(0)?)
            .bind(row.try_get::<String, _>(1)?)
            .execute(&self.db.pool)
            .await?;
        }
        sql::query("INSERT INTO backfills (name) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(DONE)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// The current state of a room written before state snapshots existed
    /// (schema version 1): read from the current-state table.
    pub(crate) async fn legacy_current_state(
        &self,
        room_nid: i64,
    ) -> Result<StateMap, StorageError> {
        let rows = sql::query(
            "SELECT s.event_type, s.state_key, e.event_id, e.json FROM current_state s
             JOIN events e ON e.event_nid = s.event_nid WHERE s.room_nid = $1",
        )
        .bind(room_nid)
        .fetch_all(&self.db.pool)
        .await?;
        let mut state = StateMap::with_capacity(rows.len());
        for row in rows {
            let event_id: String = row.try_get(2)?;
            let json: String = row.try_get(3)?;
            let pdu =
                Pdu::from_json(&event_id, &json).map_err(|_| StorageError::Corrupt(event_id))?;
            state.insert((row.try_get(0)?, row.try_get(1)?), Arc::new(pdu));
        }
        Ok(state)
    }

    /// The NID of a room about to be written in `tx`, creating the room
    /// first when `new_room_version` is set.
    async fn room_nid_for_writing(
        &self,
        tx: &mut Transaction,
        room_id: &str,
        new_room_version: Option<&str>,
    ) -> Result<i64, StorageError> {
        if let Some(version) = new_room_version {
            sql::query(
                "INSERT INTO rooms (room_id, room_version, depth) VALUES ($1, $2, 0)
                 ON CONFLICT (room_id) DO NOTHING",
            )
            .bind(room_id)
            .bind(version)
            .execute(&mut **tx)
            .await?;
        } else if let Some(nid) = self
            .room_nids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(room_id)
        {
            return Ok(nid);
        }
        // Not cached here: a room made earlier in this transaction may yet
        // be rolled back with it.
        sql::query_scalar("SELECT room_nid FROM rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StorageError::Corrupt(format!("no room {room_id}")))
    }

    /// Opens the transaction that writes one input to a room, creating the
    /// room first when `new_room_version` is set.
    pub(crate) async fn begin_room_write(
        &self,
        room_id: &str,
        new_room_version: Option<&str>,
    ) -> Result<RoomWriter, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let room_nid = self
            .room_nid_for_writing(&mut tx, room_id, new_room_version)
            .await?;
        Ok(RoomWriter {
            storage: self.clone(),
            tx,
            room_nid,
            room_id: room_id.to_owned(),
            learnt: Learnt::default(),
            event_nids: Vec::new(),
            known_nids: HashMap::new(),
            redacted: Vec::new(),
            queued_outliers: Vec::new(),
            states: Vec::new(),
        })
    }
}

/// One input's writes to one room, in one transaction.
pub(crate) struct RoomWriter {
    storage: Storage,
    tx: Transaction,
    pub(crate) room_nid: i64,
    room_id: String,
    learnt: Learnt,
    /// Events written, cached once committed.
    event_nids: Vec<(i64, Arc<Pdu>)>,
    /// NIDs of stored events read in this input (a join's state).
    known_nids: HashMap<String, i64>,
    /// Events redacted, dropped from the cache once committed.
    redacted: Vec<String>,
    /// Outliers not yet inserted, with whether each is rejected and
    /// announced (see [`RoomWriter::queue_outlier`]).
    queued_outliers: Vec<(Arc<Pdu>, bool, bool)>,
    /// (event NID, state before if it is to be written too, state after)
    /// of events whose states are written at commit (see
    /// [`RoomWriter::set_state_after`]).
    states: Vec<(i64, Option<i64>, i64)>,
}

/// Events' states set this many to a statement (three parameters each): a
/// new room's initial state is a handful.
const STATE_ROWS: usize = 16;

/// Events inserted this many to a statement (nine parameters each): a
/// hundred round trips for a join's 10 000 outliers, each statement well
/// under either engine's parameter limit.
const OUTLIER_ROWS: usize = 100;

/// Processed inputs recorded this many to a statement (four parameters each).
const PROCESSED_ROWS: usize = 200;

/// Outputs queued in the outbox this many to a statement (two parameters
/// each), and published ones cleared this many to a statement.
const OUTBOX_ROWS: usize = 64;
const CLEARED_ROWS: usize = 16;

impl RoomWriter {
    /// Remembers the NIDs of stored events read in this input, so
    /// [`RoomWriter::nid_state`] need not look them up again.
    pub(crate) fn know_nids(&mut self, events: impl IntoIterator<Item = (String, i64)>) {
        self.known_nids.extend(events);
    }

    /// The (type NID, state key NID) of a state event, interned.
    pub(crate) async fn state_key_nids(
        &mut self,
        pdu: &Pdu,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let Some(key) = &pdu.state_key else {
            return Ok(None);
        };
        let kind = self
            .storage
            .intern(&mut self.tx, &mut self.learnt, true, &pdu.kind.to_string())
            .await?;
        let key = self
            .storage
            .intern(&mut self.tx, &mut self.learnt, false, key)
            .await?;
        Ok(Some((kind, key)))
    }

    /// A snapshot as events, including what this transaction wrote.
    pub(crate) async fn load_state(
        &mut self,
        snapshot_nid: i64,
    ) -> Result<(StateMap, NidState), StorageError> {
        let written = self
            .learnt
            .snapshots
            .iter()
            .find(|(nid, _)| *nid == snapshot_nid)
            .map(|(_, entries)| entries.clone());
        let nids = match written {
            Some(entries) => NidState {
                entries,
                snapshot_nid: Some(snapshot_nid),
            },
            None => self.storage.snapshot(snapshot_nid).await?,
        };
        let mut kinds: HashMap<i64, String> = self
            .learnt
            .types
            .iter()
            .map(|(n, i)| (*i, n.clone()))
            .collect();
        let mut keys: HashMap<i64, String> = self
            .learnt
            .keys
            .iter()
            .map(|(n, i)| (*i, n.clone()))
            .collect();
        let mut events: HashMap<i64, Arc<Pdu>> = self.event_nids.iter().cloned().collect();
        let missing_kinds: Vec<i64> = nids
            .entries
            .keys()
            .map(|(t, _)| *t)
            .filter(|t| !kinds.contains_key(t))
            .collect();
        let missing_keys: Vec<i64> = nids
            .entries
            .keys()
            .map(|(_, k)| *k)
            .filter(|k| !keys.contains_key(k))
            .collect();
        let missing_events: Vec<i64> = nids
            .entries
            .values()
            .copied()
            .filter(|e| !events.contains_key(e))
            .collect();
        let (more_kinds, more_keys) = self.storage.names(&missing_kinds, &missing_keys).await?;
        kinds.extend(more_kinds);
        keys.extend(more_keys);
        events.extend(self.storage.events_by_nid(&missing_events).await?);
        let mut state = StateMap::with_capacity(nids.entries.len());
        for ((kind, key), event) in &nids.entries {
            let (Some(kind), Some(key), Some(event)) =
                (kinds.get(kind), keys.get(key), events.get(event))
            else {
                return Err(StorageError::Corrupt(format!(
                    "state entry {kind}/{key}/{event}"
                )));
            };
            state.insert((kind.clone(), key.clone()), event.clone());
        }
        Ok((state, nids))
    }

    /// Stores `state` as a snapshot and returns its NID.
    pub(crate) async fn snapshot(&mut self, state: &mut NidState) -> Result<i64, StorageError> {
        self.storage
            .write_snapshot(&mut self.tx, &mut self.learnt, state)
            .await
    }

    /// A state given as events, as NIDs (every event must be stored, or
    /// written earlier in this transaction).
    pub(crate) async fn nid_state(&mut self, state: &StateMap) -> Result<NidState, StorageError> {
        let mut nids = NidState::default();
        let ids: Vec<&str> = state.values().map(|p| p.event_id.as_str()).collect();
        let mut event_nids: HashMap<String, i64> = self
            .event_nids
            .iter()
            .map(|(nid, pdu)| (pdu.event_id.to_string(), *nid))
            .collect();
        for (id, nid) in &self.known_nids {
            event_nids.entry(id.clone()).or_insert(*nid);
        }
        for chunk in ids.chunks(200) {
            let missing: Vec<&str> = chunk
                .iter()
                .copied()
                .filter(|id| !event_nids.contains_key(*id))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let placeholders =
                ganglion_base::database::params(self.storage.db.engine, 1, missing.len());
            let sql = format!(
                "SELECT event_id, event_nid FROM events WHERE event_id IN ({placeholders})"
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql));
            for id in &missing {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *self.tx).await? {
                event_nids.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        // The state's types and keys interned many at a time.
        let type_names: Vec<&str> = state.keys().map(|(kind, _)| kind.as_str()).collect();
        let keys: Vec<&str> = state.keys().map(|(_, key)| key.as_str()).collect();
        let (type_nids, key_nids) = self.intern_names(&type_names, &keys).await?;
        for ((kind, key), pdu) in state {
            let event_nid = *event_nids.get(pdu.event_id.as_str()).ok_or_else(|| {
                StorageError::Corrupt(format!("state event {} not stored", pdu.event_id))
            })?;
            let (Some(kind), Some(key)) = (type_nids.get(kind), key_nids.get(key.as_str())) else {
                return Err(StorageError::Corrupt(format!(
                    "state key of {} not interned",
                    pdu.event_id
                )));
            };
            nids.set(*kind, *key, event_nid);
        }
        Ok(nids)
    }

    /// Stores an event; returns its NID.
    pub(crate) async fn insert_event(
        &mut self,
        pdu: &Arc<Pdu>,
        flags: &EventFlags,
        state_before: Option<i64>,
        state_after: Option<i64>,
    ) -> Result<i64, StorageError> {
        let event_nid: i64 = sql::query_scalar(
            "INSERT INTO events (event_id, room_nid, event_type, state_key, depth, json,
                state_before_nid, state_after_nid, rejected, soft_failed, outlier, announced)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING event_nid",
        )
        .bind(pdu.event_id.as_str())
        .bind(self.room_nid)
        .bind(pdu.kind.to_string())
        .bind(pdu.state_key.as_deref())
        .bind(pdu.depth)
        .bind(&*pdu.json)
        .bind(state_before)
        .bind(state_after)
        .bind(i64::from(flags.rejected))
        .bind(i64::from(flags.soft_failed))
        .bind(i64::from(flags.outlier))
        .bind(i64::from(flags.announced(pdu)))
        .fetch_one(&mut *self.tx)
        .await?;
        if !flags.rejected {
            self.event_nids.push((event_nid, pdu.clone()));
        }
        Ok(event_nid)
    }

    /// Queues an outlier to be inserted with others, many to a statement
    /// (a join's state and auth chain are thousands). Its NID is known once
    /// [`RoomWriter::insert_queued_outliers`] has run, which [`RoomWriter::commit`]
    /// also does.
    pub(crate) fn queue_outlier(&mut self, pdu: &Arc<Pdu>, flags: &EventFlags) {
        debug_assert!(flags.outlier && !flags.soft_failed);
        self.queued_outliers
            .push((pdu.clone(), flags.rejected, flags.announced(pdu)));
    }

    /// Inserts the queued outliers; returns each one's NID.
    pub(crate) async fn insert_queued_outliers(
        &mut self,
    ) -> Result<Vec<(OwnedEventId, i64)>, StorageError> {
        let queued = std::mem::take(&mut self.queued_outliers);
        let rows: Vec<(&Arc<Pdu>, [i64; 4])> = queued
            .iter()
            .map(|(pdu, rejected, announced)| {
                (pdu, [i64::from(*rejected), 0, 1, i64::from(*announced)])
            })
            .collect();
        let nids = self.insert_event_rows(&rows).await?;
        Ok(queued
            .iter()
            .zip(nids)
            .map(|((pdu, _, _), nid)| (pdu.event_id.clone(), nid))
            .collect())
    }

    /// Stores events (accepted, in the timeline) whose states are not known
    /// yet, many to a statement; returns their NIDs in order. Their states
    /// are given later ([`RoomWriter::set_states`]).
    pub(crate) async fn insert_new_events(
        &mut self,
        pdus: &[Arc<Pdu>],
        flags: &EventFlags,
    ) -> Result<Vec<i64>, StorageError> {
        let rows: Vec<(&Arc<Pdu>, [i64; 4])> = pdus
            .iter()
            .map(|pdu| {
                (
                    pdu,
                    [
                        i64::from(flags.rejected),
                        i64::from(flags.soft_failed),
                        i64::from(flags.outlier),
                        i64::from(flags.announced(pdu)),
                    ],
                )
            })
            .collect();
        self.insert_event_rows(&rows).await
    }

    /// Inserts events without states, each with its (rejected, soft failed,
    /// outlier, announced) flags, [`OUTLIER_ROWS`] to a statement; returns
    /// their NIDs in order.
    async fn insert_event_rows(
        &mut self,
        rows: &[(&Arc<Pdu>, [i64; 4])],
    ) -> Result<Vec<i64>, StorageError> {
        let mut inserted = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(OUTLIER_ROWS) {
            let engine = self.storage.db.engine;
            let mut values = String::with_capacity(chunk.len() * 60);
            for row in 0..chunk.len() {
                let p = |column: usize| ganglion_base::database::param(engine, row * 9 + column);
                if row > 0 {
                    values.push(',');
                }
                // The room NID is ours, an integer, never user input.
                values.push_str(&format!(
                    "({}, {}, {}, {}, {}, {}, NULL, NULL, {}, {}, {}, {})",
                    p(1),
                    self.room_nid,
                    p(2),
                    p(3),
                    p(4),
                    p(5),
                    p(6),
                    p(7),
                    p(8),
                    p(9)
                ));
            }
            let sql = format!(
                "INSERT INTO events (event_id, room_nid, event_type, state_key, depth, json,
                    state_before_nid, state_after_nid, rejected, soft_failed, outlier, announced)
                 VALUES {values} RETURNING event_id, event_nid"
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql));
            for (pdu, [rejected, soft_failed, outlier, announced]) in chunk {
                query = query
                    .bind(pdu.event_id.as_str())
                    .bind(pdu.kind.to_string())
                    .bind(pdu.state_key.as_deref())
                    .bind(pdu.depth)
                    .bind(&*pdu.json)
                    .bind(*rejected)
                    .bind(*soft_failed)
                    .bind(*outlier)
                    .bind(*announced);
            }
            let mut nids: HashMap<String, i64> = HashMap::with_capacity(chunk.len());
            for row in query.fetch_all(&mut *self.tx).await? {
                nids.insert(row.try_get(0)?, row.try_get(1)?);
            }
            for (pdu, [rejected, ..]) in chunk {
                let nid = *nids.get(pdu.event_id.as_str()).ok_or_else(|| {
                    StorageError::Corrupt(format!("event {} not inserted", pdu.event_id))
                })?;
                if *rejected == 0 {
                    self.event_nids.push((nid, (*pdu).clone()));
                }
                inserted.push(nid);
            }
        }
        Ok(inserted)
    }

    /// The (type NID, state key NID) of each state event of `pdus` (`None`
    /// for other events), interned many at a time.
    pub(crate) async fn state_key_nids_of(
        &mut self,
        pdus: &[Arc<Pdu>],
    ) -> Result<Vec<Option<(i64, i64)>>, StorageError> {
        let kinds: Vec<String> = pdus.iter().map(|pdu| pdu.kind.to_string()).collect();
        let type_names: Vec<&str> = pdus
            .iter()
            .zip(&kinds)
            .filter(|(pdu, _)| pdu.state_key.is_some())
            .map(|(_, kind)| kind.as_str())
            .collect();
        let keys: Vec<&str> = pdus
            .iter()
            .filter_map(|pdu| pdu.state_key.as_deref())
            .collect();
        let (type_nids, key_nids) = self.intern_names(&type_names, &keys).await?;
        pdus.iter()
            .zip(&kinds)
            .map(|(pdu, kind)| {
                let Some(key) = &pdu.state_key else {
                    return Ok(None);
                };
                match (type_nids.get(kind), key_nids.get(key.as_str())) {
                    (Some(kind), Some(key)) => Ok(Some((*kind, *key))),
                    _ => Err(StorageError::Corrupt(format!(
                        "state key of {} not interned",
                        pdu.event_id
                    ))),
                }
            })
            .collect()
    }

    /// Event types and state keys interned, many at a time: (NIDs of the
    /// types, NIDs of the keys) by name.
    async fn intern_names(
        &mut self,
        types: &[&str],
        keys: &[&str],
    ) -> Result<(HashMap<String, i64>, HashMap<String, i64>), StorageError> {
        let type_nids = self
            .storage
            .intern_many(&mut self.tx, &mut self.learnt, true, types)
            .await?;
        let key_nids = self
            .storage
            .intern_many(&mut self.tx, &mut self.learnt, false, keys)
            .await?;
        Ok((type_nids, key_nids))
    }

    /// Stores states as snapshots, many to a statement, setting each one's
    /// NID (see [`Storage::write_snapshots`]).
    pub(crate) async fn snapshots(&mut self, states: &mut [NidState]) -> Result<(), StorageError> {
        self.storage
            .write_snapshots(&mut self.tx, &mut self.learnt, states)
            .await
    }

    /// The states before and after an event stored by
    /// [`RoomWriter::insert_new_events`], written at commit.
    pub(crate) fn set_states(&mut self, event_nid: i64, state_before: i64, state_after: i64) {
        self.states
            .push((event_nid, Some(state_before), state_after));
    }

    /// The state after a state event, known once the event has its NID;
    /// written with the others at commit, many to a statement. Nothing
    /// reads the column before: a later event of this transaction takes
    /// the state from memory, and readers outside it see it committed.
    pub(crate) fn set_state_after(&mut self, event_nid: i64, state_after: i64) {
        self.states.push((event_nid, None, state_after));
    }

    /// Writes the events' states set since the last time.
    async fn write_states(&mut self) -> Result<(), StorageError> {
        let engine = self.storage.db.engine;
        let states = std::mem::take(&mut self.states);
        for chunk in states.chunks(STATE_ROWS) {
            let sql = format!(
                "UPDATE events SET state_before_nid = COALESCE(v.column2, events.state_before_nid),
                    state_after_nid = v.column3
                 FROM (VALUES {}) AS v WHERE events.event_nid = v.column1",
                ganglion_base::database::value_rows(engine, 1, chunk.len(), 3)
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql));
            for (event_nid, state_before, state_after) in chunk {
                query = query
                    .bind(*event_nid)
                    .bind(*state_before)
                    .bind(*state_after);
            }
            let updated = query.execute(&mut *self.tx).await?.rows_affected();
            if updated != chunk.len() as u64 {
                return Err(StorageError::Corrupt(format!(
                    "the states of {updated} of {} events written",
                    chunk.len()
                )));
            }
        }
        Ok(())
    }

    /// An outlier that now has state (it was fetched before its place in the
    /// DAG was known) takes the state given.
    pub(crate) async fn de_outlier(
        &mut self,
        event_nid: i64,
        state_before: i64,
        state_after: i64,
    ) -> Result<(), StorageError> {
        sql::query(
            "UPDATE events SET outlier = 0, state_before_nid = $1, state_after_nid = $2
             WHERE event_nid = $3",
        )
        .bind(state_before)
        .bind(state_after)
        .bind(event_nid)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Moves the room's head: current state, extremities, depth.
    pub(crate) async fn set_head(&mut self, head: &HeadUpdate) -> Result<(), StorageError> {
        // Set entries many to a statement (a join sets thousands); each
        // (type, state key) appears once, as an upsert requires.
        let set: Vec<_> = head
            .changes
            .iter()
            .filter_map(|change| change.event.as_ref().map(|event| (change, event)))
            .collect();
        let engine = self.storage.db.engine;
        for chunk in set.chunks(100) {
            let sql = format!(
                "INSERT INTO current_state (room_nid, event_type, state_key, event_nid, membership)
                 SELECT {}, v.column1, v.column2, e.event_nid, v.column4
                 FROM (VALUES {}) AS v JOIN events e ON e.event_id = v.column3
                 WHERE true
                 ON CONFLICT (room_nid, event_type, state_key)
                 DO UPDATE SET event_nid = excluded.event_nid, membership = excluded.membership",
                ganglion_base::database::param(engine, 1),
                ganglion_base::database::value_rows(engine, 2, chunk.len(), 4)
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql)).bind(self.room_nid);
            for (change, (event_id, membership)) in chunk {
                query = query
                    .bind(&change.kind)
                    .bind(&change.state_key)
                    .bind(event_id)
                    .bind(membership.as_deref());
            }
            query.execute(&mut *self.tx).await?;
        }
        for change in &head.changes {
            match &change.event {
                Some(_) => {}
                None => {
                    sql::query(
                        "DELETE FROM current_state
                         WHERE room_nid = $1 AND event_type = $2 AND state_key = $3",
                    )
                    .bind(self.room_nid)
                    .bind(&change.kind)
                    .bind(&change.state_key)
                    .execute(&mut *self.tx)
                    .await?;
                }
            }
        }
        let extremities = serde_json::to_string(&head.extremities)
            .map_err(|e| StorageError::Corrupt(format!("extremities: {e}")))?;
        sql::query(
            "UPDATE rooms SET depth = $1, state_snapshot_nid = $2, extremities = $3,
                head_version = head_version + 1
             WHERE room_nid = $4",
        )
        .bind(head.depth)
        .bind(head.snapshot_nid)
        .bind(extremities)
        .bind(self.room_nid)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Records an accepted redaction and keeps the redacted copy of its
    /// target (when stored) in place of the original.
    pub(crate) async fn redact(
        &mut self,
        redaction_event_id: &str,
        redacts: &str,
        redacted_json: Option<&str>,
    ) -> Result<(), StorageError> {
        sql::query(
            "INSERT INTO redactions (redaction_event_id, redacts_event_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(redaction_event_id)
        .bind(redacts)
        .execute(&mut *self.tx)
        .await?;
        if let Some(json) = redacted_json {
            sql::query("UPDATE events SET json = $1, redacted_by = $2 WHERE event_id = $3")
                .bind(json)
                .bind(redaction_event_id)
                .bind(redacts)
                .execute(&mut *self.tx)
                .await?;
            self.redacted.push(redacts.to_owned());
        }
        Ok(())
    }

    /// Records the input as processed, adds an alias, queues the outputs,
    /// clears outputs already in the log, and commits. Returns the outbox
    /// sequence numbers of the outputs.
    pub(crate) async fn commit(
        mut self,
        request_id: &str,
        event_ids: &[String],
        alias: Option<&str>,
        outputs: &[Vec<u8>],
        published: &[i64],
    ) -> Result<Vec<i64>, StorageError> {
        if let Some(alias) = alias {
            self.add_alias(alias).await?;
        }
        let room_id = self.room_id.clone();
        let processed = [ProcessedInput {
            room_id: &room_id,
            request_id,
            event_ids,
        }];
        let outputs: Vec<(&str, &[u8])> = outputs
            .iter()
            .map(|payload| (room_id.as_str(), payload.as_slice()))
            .collect();
        self.commit_many(&processed, &outputs, published).await
    }

    /// Moves on to writing another room in the same transaction (a group
    /// of inputs of several rooms), creating it first when
    /// `new_room_version` is set.
    pub(crate) async fn switch_room(
        &mut self,
        room_id: &str,
        new_room_version: Option<&str>,
    ) -> Result<(), StorageError> {
        // Queued outliers are inserted under the room they were queued for.
        self.insert_queued_outliers().await?;
        self.room_nid = self
            .storage
            .room_nid_for_writing(&mut self.tx, room_id, new_room_version)
            .await?;
        room_id.clone_into(&mut self.room_id);
        Ok(())
    }

    /// Adds an alias of the room being written.
    pub(crate) async fn add_alias(&mut self, alias: &str) -> Result<(), StorageError> {
        sql::query("INSERT INTO room_aliases (alias, room_id) VALUES ($1, $2)")
            .bind(alias)
            .bind(&self.room_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// [`commit`](Self::commit) for several inputs written in this
    /// transaction (a group), each recorded as processed with the event IDs
    /// it is answered with; `outputs` are (room ID, payload).
    pub(crate) async fn commit_many(
        mut self,
        processed: &[ProcessedInput<'_>],
        outputs: &[(&str, &[u8])],
        published: &[i64],
    ) -> Result<Vec<i64>, StorageError> {
        self.insert_queued_outliers().await?;
        self.write_states().await?;
        let engine = self.storage.db.engine;
        // Many to a statement of one fixed text (a short chunk repeats its
        // last seq), so the prepared-statement cache keeps serving it.
        for chunk in published.chunks(CLEARED_ROWS) {
            let sql = format!(
                "DELETE FROM output_outbox WHERE seq IN ({})",
                ganglion_base::database::params(engine, 1, CLEARED_ROWS)
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql));
            for n in 0..CLEARED_ROWS {
                query = query.bind(chunk[n.min(chunk.len() - 1)]);
            }
            query.execute(&mut *self.tx).await?;
        }
        let now = ganglion_base::clock::now_ms();
        for chunk in processed.chunks(PROCESSED_ROWS) {
            let sql = format!(
                "INSERT INTO processed_inputs (request_id, room_id, event_ids, processed_ms)
                 VALUES {}",
                ganglion_base::database::value_rows(engine, 1, chunk.len(), 4)
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql));
            for input in chunk {
                query = query
                    .bind(input.request_id)
                    .bind(input.room_id)
                    .bind(serde_json::to_string(input.event_ids).unwrap_or_default())
                    .bind(now);
            }
            query.execute(&mut *self.tx).await?;
        }
        let mut seqs = Vec::with_capacity(outputs.len());
        for chunk in outputs.chunks(OUTBOX_ROWS) {
            let sql = format!(
                "INSERT INTO output_outbox (room_id, payload) VALUES {} RETURNING seq",
                ganglion_base::database::value_rows(engine, 1, chunk.len(), 2)
            );
            let mut query = sql::query_scalar::<i64>(sqlx::AssertSqlSafe(sql));
            for (room_id, payload) in chunk {
                query = query.bind(*room_id).bind(*payload);
            }
            // Both engines number the rows in the order of the values; the
            // rows returned need not come in that order.
            let mut written = query.fetch_all(&mut *self.tx).await?;
            if written.len() != chunk.len() {
                return Err(StorageError::Corrupt("outbox rows not all written".into()));
            }
            written.sort_unstable();
            seqs.extend(written);
        }
        self.tx.commit().await?;
        self.storage.remember(self.learnt);
        let mut cache = self.storage.lock_event_cache();
        for (nid, pdu) in self.event_nids {
            cache.insert(nid, pdu);
        }
        if !self.redacted.is_empty() {
            let redacted = self.redacted;
            cache.retain(|_, pdu| !redacted.iter().any(|id| id == pdu.event_id.as_str()));
        }
        Ok(seqs)
    }
}
