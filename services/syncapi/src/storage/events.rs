use super::batch::{PendingEvent, PendingState};
use super::ephemeral::i64_of;
use super::{Batch, Storage, StorageError};
use ganglion_base::sql;

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
    /// `content["m.relates_to"]`: the parent event and the relation type.
    pub(crate) relates_to: Option<(&'a str, &'a str)>,
    /// (type, state_key, event_id) entries the event removed from / added to current state.
    pub(crate) state_removed: Vec<(String, String, String, String)>,
    /// (type, state key, event ID, membership or empty).
    pub(crate) state_added: Vec<(String, String, String, String)>,
    /// The local users the event notifies, and how.
    pub(crate) notified: &'a [ganglion_base::push_rules::Notification],
    /// Its thread root, or `main`.
    pub(crate) thread_id: &'a str,
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

fn membership_row(row: &sql::Row) -> Result<Membership, sqlx::Error> {
    Ok(Membership {
        room_id: row.try_get(0)?,
        membership: row.try_get(1)?,
        offset: row.try_get::<i64, _>(2)?.max(0) as u64,
        partition: row.try_get::<i64, _>(3)?.max(0) as u32,
    })
}

/// The event types that move a room up a sliding sync list (MSC4186's
/// default bump types; the migration that added bumps lists them too).
pub(crate) const BUMP_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

/// An event as served.
#[derive(Debug, Clone)]
pub(crate) struct EventRow {
    pub(crate) offset: u64,
    pub(crate) room_id: String,
    pub(crate) sender: String,
    /// The room's history visibility when the event was sent.
    pub(crate) history_visibility: String,
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) state_key: Option<String>,
    pub(crate) json: String,
    pub(crate) device_id: String,
    pub(crate) transaction_id: String,
}

/// Where outlier state events are stored: below every timeline window
/// (windows start at offset 0).
pub(crate) const OUTLIER_OFFSET: i64 = -1;

/// What a batch's state changes leave of one current state entry, in
/// the order they came: set to an event, removed, or left as stored
/// unless it is one of the events removed.
enum CurrentEntry<'a> {
    Set {
        event_id: &'a str,
        membership: Option<&'a str>,
        partition: i64,
        offset: i64,
    },
    Removed,
    Unchanged(Vec<&'a str>),
}

impl<'a> CurrentEntry<'a> {
    /// A removal of the entry if it is `event_id`.
    fn remove(&mut self, event_id: &'a str) {
        match self {
            CurrentEntry::Set {
                event_id: current, ..
            } if *current == event_id => *self = CurrentEntry::Removed,
            CurrentEntry::Set { .. } | CurrentEntry::Removed => {}
            CurrentEntry::Unchanged(removed) => removed.push(event_id),
        }
    }
}

/// A value bound into a many-row insert.
pub(crate) enum Bound<'a> {
    Int(i64),
    Text(Option<&'a str>),
}

/// Rows per many-row statement (six values a row stays far below both
/// engines' limits on bound values).
const ROWS_PER_STATEMENT: usize = 100;

/// `{head} VALUES (…), (…) {tail}` for `rows` (all of one width), many rows
/// to a statement: a join's thousands of state rows in tens of statements.
/// The rows a `RETURNING` in `tail` gives back, if any.
pub(crate) async fn insert_rows(
    engine: ganglion_base::database::Engine,
    conn: &mut sql::Connection,
    head: &str,
    tail: &str,
    rows: &[Vec<Bound<'_>>],
) -> Result<Vec<sql::Row>, StorageError> {
    let mut returned = Vec::new();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let width = chunk.first().map_or(0, Vec::len);
        let sql = format!(
            "{head} VALUES {} {tail}",
            ganglion_base::database::value_rows(engine, 1, chunk.len(), width)
        );
        let mut query = sql::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            for value in row {
                query = match value {
                    Bound::Int(v) => query.bind(*v),
                    Bound::Text(v) => query.bind(*v),
                };
            }
        }
        returned.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(returned)
}

/// A current state entry without its event: enough to decide whether the
/// event is needed, and to count members.
#[derive(Debug, Clone)]
pub(crate) struct StateRef {
    pub(crate) event_type: String,
    pub(crate) state_key: String,
    pub(crate) event_id: String,
    pub(crate) membership: Option<String>,
    /// Where the entry became current (in the room's partition).
    pub(crate) offset: u64,
}

fn state_ref(row: &sql::Row) -> Result<StateRef, StorageError> {
    Ok(StateRef {
        event_type: row.try_get(0)?,
        state_key: row.try_get(1)?,
        event_id: row.try_get(2)?,
        membership: row.try_get(3)?,
        offset: row.try_get::<i64, _>(4)?.max(0) as u64,
    })
}

/// A row of (room ID, then the columns [`state_ref`] reads).
fn room_state_ref(row: &sql::Row) -> Result<(String, StateRef), StorageError> {
    Ok((
        row.try_get(0)?,
        StateRef {
            event_type: row.try_get(1)?,
            state_key: row.try_get(2)?,
            event_id: row.try_get(3)?,
            membership: row.try_get(4)?,
            offset: row.try_get::<i64, _>(5)?.max(0) as u64,
        },
    ))
}

/// A statement `{head} ($1, ..., $N) {tail}` with N = [`ROOMS_PER_STATEMENT`]
/// placeholders whatever the batch's size (see [`padded`]), so its text
/// never changes and the statement cache keeps it.
fn fixed_in_list(head: &str, tail: &str) -> String {
    let placeholders = (1..=ROOMS_PER_STATEMENT)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{head} ({placeholders}) {tail}")
}

/// A batch of at most [`ROOMS_PER_STATEMENT`] values padded to exactly that
/// many by repeating its last (an IN list does not mind repeats).
fn padded<'a, 'b>(chunk: &'b [&'a str]) -> impl Iterator<Item = &'b &'a str> {
    let last = chunk.last();
    chunk
        .iter()
        .chain(std::iter::repeat_n(last, ROOMS_PER_STATEMENT - chunk.len()).flatten())
}

/// How many rooms one batched statement reads (well under the bind
/// parameter limits of SQLite and PostgreSQL).
const ROOMS_PER_STATEMENT: usize = 200;

/// The head of an insert of a timeline event with every column (live
/// events here, history in `history.rs`).
pub(super) const INSERT_EVENT: &str =
    "INSERT INTO events (log_partition, log_offset, room_id, event_id, event_type, state_key,
                         sender, json, device_id, transaction_id, history_visibility,
                         relates_to, rel_type)";

pub(super) const EVENT_COLUMNS: &str =
    "e.log_offset, e.event_id, e.event_type, e.state_key, e.json, e.device_id,
     e.transaction_id, e.room_id, e.sender, e.history_visibility";

/// The event in a row's first columns ([`EVENT_COLUMNS`]), its text moved
/// out of the row (a `/sync` reads thousands of events' JSON).
pub(super) fn event_row(row: &mut sql::Row) -> Result<EventRow, sqlx::Error> {
    Ok(EventRow {
        offset: row.try_get::<i64, _>(0)?.max(0) as u64,
        event_id: row.take(1)?,
        event_type: row.take(2)?,
        state_key: row.take(3)?,
        json: row.take(4)?,
        device_id: row.take(5)?,
        transaction_id: row.take(6)?,
        room_id: row.take(7)?,
        sender: row.take(8)?,
        history_visibility: row.take(9)?,
    })
}

impl Batch {
    /// Stores an event and applies its state change, both written with the
    /// batch's other pending events (see [`Batch::flush`]). A redelivered
    /// event changes nothing.
    pub(crate) async fn apply_event(&mut self, event: &NewEvent<'_>) -> Result<(), StorageError> {
        // The visibility in force when the event was sent: the room's, as
        // this view holds it before the event is applied.
        let history_visibility = match self.visibility.get(event.room_id) {
            Some(visibility) => visibility.clone(),
            None => {
                let visibility = match self.known_visibility(event.room_id) {
                    Some(known) => known,
                    None => {
                        self.flush_state().await?;
                        Storage::history_visibility_in(&mut self.tx, event.room_id)
                            .await?
                            .unwrap_or_else(|| "shared".to_owned())
                    }
                };
                self.visibility
                    .insert(event.room_id.to_owned(), visibility.clone());
                visibility
            }
        };
        let state = if event.state_removed.is_empty() && event.state_added.is_empty() {
            None
        } else {
            Some(self.state_change(event))
        };
        self.pending.push(PendingEvent {
            partition: event.partition,
            offset: event.offset,
            room_id: event.room_id.to_owned(),
            event_id: event.event_id.to_owned(),
            event_type: event.event_type.to_owned(),
            state_key: event.state_key.map(str::to_owned),
            sender: event.sender.to_owned(),
            json: event.json.to_owned(),
            device_id: event.device_id.to_owned(),
            transaction_id: event.transaction_id.to_owned(),
            history_visibility,
            relates_to: event
                .relates_to
                .map(|(parent, kind)| (parent.to_owned(), kind.to_owned())),
            notified: event.notified.to_vec(),
            thread_id: event.thread_id.to_owned(),
            state,
        });
        if self.pending.len() >= ROWS_PER_STATEMENT {
            self.flush().await?;
        }
        Ok(())
    }

    /// What a state event changes, and what the batch then knows of its
    /// room: its own history visibility is known from its content, the
    /// joined members are read again when next needed.
    fn state_change(&mut self, event: &NewEvent<'_>) -> PendingState {
        let changes = |wanted: &str| {
            event
                .state_removed
                .iter()
                .chain(&event.state_added)
                .any(|(event_type, _, _, _)| event_type == wanted)
        };
        if changes("m.room.history_visibility") {
            self.changed_visibility.insert(event.room_id.to_owned());
            let own = event.state_added.iter().any(|(t, k, id, _)| {
                t == "m.room.history_visibility" && k.is_empty() && id == event.event_id
            });
            if own {
                // As a read of current state would find it once stored.
                let visibility = serde_json::from_str::<serde_json::Value>(event.json)
                    .ok()
                    .and_then(|e| {
                        e["content"]["history_visibility"]
                            .as_str()
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| "shared".to_owned());
                self.visibility.insert(event.room_id.to_owned(), visibility);
            } else {
                self.visibility.remove(event.room_id);
            }
        }
        if changes("m.room.member") {
            self.members_changed(event.room_id);
        }
        // One entry per (type, state key): an event adds each once (the
        // last one given wins). Indexed, as a resolved state can bring
        // thousands.
        let mut added: Vec<(String, String, String, Option<String>)> = Vec::new();
        let mut index: std::collections::HashMap<(&str, &str), usize> =
            std::collections::HashMap::new();
        for (event_type, state_key, event_id, entry_membership) in &event.state_added {
            // An entry state resolution brought back carries its own
            // membership; older producers left it out for the event's own.
            let membership = if !entry_membership.is_empty() {
                Some(entry_membership.clone())
            } else if event_id == event.event_id {
                event.membership.map(str::to_owned)
            } else {
                None
            };
            let entry = (
                event_type.clone(),
                state_key.clone(),
                event_id.clone(),
                membership,
            );
            match index.get(&(event_type.as_str(), state_key.as_str())) {
                Some(&slot) => added[slot] = entry,
                None => {
                    index.insert((event_type, state_key), added.len());
                    added.push(entry);
                }
            }
        }
        let removed = event
            .state_removed
            .iter()
            .map(|(event_type, state_key, event_id, _)| {
                (event_type.clone(), state_key.clone(), event_id.clone())
            })
            .collect();
        self.state_pending = true;
        PendingState { removed, added }
    }

    /// [`Batch::flush`] when a pending event changes state: before reading
    /// current state in the batch.
    pub(super) async fn flush_state(&mut self) -> Result<(), StorageError> {
        if self.state_pending {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the events waiting to be stored, many to a statement, then
    /// the state changes of those newly stored (a redelivered one is
    /// skipped, as alone): their history rows many to a statement, and
    /// current state as the changes leave it, one upsert for all.
    pub(super) async fn flush(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.state_pending = false;
        let sql = format!(
            "{INSERT_EVENT} VALUES {} ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            ganglion_base::database::value_rows(self.engine, 1, pending.len(), 13)
        );
        let mut query = sql::query_scalar::<String>(sqlx::AssertSqlSafe(sql));
        for event in &pending {
            query = query
                .bind(i64::from(event.partition))
                .bind(event.offset as i64)
                .bind(&event.room_id)
                .bind(&event.event_id)
                .bind(&event.event_type)
                .bind(&event.state_key)
                .bind(&event.sender)
                .bind(&event.json)
                .bind(&event.device_id)
                .bind(&event.transaction_id)
                .bind(&event.history_visibility)
                .bind(event.relates_to.as_ref().map(|(parent, _)| parent))
                .bind(event.relates_to.as_ref().map(|(_, kind)| kind));
        }
        let mut inserted: std::collections::HashSet<String> =
            query.fetch_all(&mut *self.tx).await?.into_iter().collect();
        // Full-text search takes the text of what was newly stored, once
        // (a record redelivered after a crash may come twice in a batch:
        // indexed twice, the second would break the batch for good).
        let mut indexed = std::collections::HashSet::new();
        for event in pending.iter().filter(|e| inserted.contains(&e.event_id)) {
            if !indexed.insert(event.event_id.as_str()) {
                continue;
            }
            if let Some((key, text)) = super::search::searchable(&event.event_type, &event.json) {
                super::search::index(&mut self.tx, self.engine, (&event.event_id, key), &text)
                    .await?;
            }
        }
        let mut history: Vec<Vec<Bound>> = Vec::new();
        // Per (room, type, state key), what the changes leave in order.
        let mut current: std::collections::HashMap<(&str, &str, &str), CurrentEntry> =
            std::collections::HashMap::new();
        let mut order: Vec<(&str, &str, &str)> = Vec::new();
        for event in &pending {
            let stored = inserted.remove(&event.event_id);
            if stored {
                self.at_commit.stored(
                    (&event.room_id, &event.event_id, &event.event_type),
                    event.offset,
                    &event.thread_id,
                    &event.notified,
                );
            }
            let Some(state) = &event.state else {
                continue;
            };
            if !stored {
                // Taken before: what the batch assumed it changed is read
                // again from what is stored.
                self.forget_room(&event.room_id);
                continue;
            }
            let offset = event.offset as i64;
            let room_id = event.room_id.as_str();
            let replaced: std::collections::HashSet<(&str, &str)> = state
                .added
                .iter()
                .map(|(t, k, _, _)| (t.as_str(), k.as_str()))
                .collect();
            for (event_type, state_key, event_id) in &state.removed {
                let key = (room_id, event_type.as_str(), state_key.as_str());
                // A removal that no addition replaces is recorded as such.
                if !replaced.contains(&(event_type.as_str(), state_key.as_str())) {
                    history.push(vec![
                        Bound::Text(Some(room_id)),
                        Bound::Text(Some(event_type)),
                        Bound::Text(Some(state_key)),
                        Bound::Int(offset),
                        Bound::Text(None),
                        Bound::Text(None),
                    ]);
                }
                let entry = current.entry(key).or_insert_with(|| {
                    order.push(key);
                    CurrentEntry::Unchanged(Vec::new())
                });
                entry.remove(event_id);
            }
            for (event_type, state_key, event_id, membership) in &state.added {
                let key = (room_id, event_type.as_str(), state_key.as_str());
                history.push(vec![
                    Bound::Text(Some(room_id)),
                    Bound::Text(Some(event_type)),
                    Bound::Text(Some(state_key)),
                    Bound::Int(offset),
                    Bound::Text(Some(event_id)),
                    Bound::Text(membership.as_deref()),
                ]);
                if !current.contains_key(&key) {
                    order.push(key);
                }
                current.insert(
                    key,
                    CurrentEntry::Set {
                        event_id,
                        membership: membership.as_deref(),
                        partition: i64::from(event.partition),
                        offset,
                    },
                );
            }
        }
        let engine = self.engine;
        insert_rows(
            engine,
            &mut self.tx,
            "INSERT INTO state_history (room_id, event_type, state_key, log_offset, event_id, membership)",
            "ON CONFLICT DO NOTHING",
            &history,
        )
        .await?;
        let mut upserts: Vec<Vec<Bound>> = Vec::new();
        for key in &order {
            let (room_id, event_type, state_key) = *key;
            match &current[key] {
                CurrentEntry::Set {
                    event_id,
                    membership,
                    partition,
                    offset,
                } => upserts.push(vec![
                    Bound::Text(Some(room_id)),
                    Bound::Text(Some(event_type)),
                    Bound::Text(Some(state_key)),
                    Bound::Text(Some(event_id)),
                    Bound::Text(*membership),
                    Bound::Int(*partition),
                    Bound::Int(*offset),
                ]),
                CurrentEntry::Removed => {
                    sql::query(
                        "DELETE FROM current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3",
                    )
                    .bind(room_id)
                    .bind(event_type)
                    .bind(state_key)
                    .execute(&mut *self.tx)
                    .await?;
                }
                CurrentEntry::Unchanged(removed) => {
                    for event_id in removed {
                        sql::query(
                            "DELETE FROM current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3 AND event_id = $4",
                        )
                        .bind(room_id)
                        .bind(event_type)
                        .bind(state_key)
                        .bind(*event_id)
                        .execute(&mut *self.tx)
                        .await?;
                    }
                }
            }
        }
        insert_rows(
            engine,
            &mut self.tx,
            "INSERT INTO current_state (room_id, event_type, state_key, event_id, membership, log_partition, log_offset)",
            "ON CONFLICT (room_id, event_type, state_key) DO UPDATE
             SET event_id = excluded.event_id, membership = excluded.membership,
                 log_partition = excluded.log_partition, log_offset = excluded.log_offset",
            &upserts,
        )
        .await?;
        Ok(())
    }

    /// Stores state events known only as outliers, at the position
    /// [`OUTLIER_OFFSET`] that no timeline window reaches. Each event:
    /// (event ID, type, state key, sender, JSON).
    pub(crate) async fn apply_outliers(
        &mut self,
        partition: u32,
        room_id: &str,
        events: &[(String, String, Option<String>, String, String)],
    ) -> Result<(), StorageError> {
        self.flush().await?;
        // Many rows to a statement; a repeated ID is skipped (DO NOTHING).
        let rows: Vec<Vec<Bound>> = events
            .iter()
            .map(|(event_id, event_type, state_key, sender, json)| {
                vec![
                    Bound::Int(i64::from(partition)),
                    Bound::Int(OUTLIER_OFFSET),
                    Bound::Text(Some(room_id)),
                    Bound::Text(Some(event_id)),
                    Bound::Text(Some(event_type)),
                    Bound::Text(state_key.as_deref()),
                    Bound::Text(Some(sender)),
                    Bound::Text(Some(json)),
                    Bound::Text(Some("")),
                    Bound::Text(Some("")),
                ]
            })
            .collect();
        insert_rows(
            self.engine,
            &mut self.tx,
            "INSERT INTO events (log_partition, log_offset, room_id, event_id, event_type, state_key,
                                 sender, json, device_id, transaction_id)",
            "ON CONFLICT (event_id) DO NOTHING",
            &rows,
        )
        .await?;
        Ok(())
    }

    /// A membership of one of our users in a room we are not in (another
    /// server's invite, or a knock, with the stripped state it came with;
    /// a rejection, without): the event (outside every timeline) becomes
    /// the user's membership.
    pub(crate) async fn apply_remote_membership(
        &mut self,
        (partition, offset): (u32, u64),
        (room_id, event_id): (&str, &str),
        (invitee, sender): (&str, &str),
        json: &str,
        (membership, invite_state_json): (&str, Option<&str>),
    ) -> Result<(), StorageError> {
        self.flush().await?;
        self.members_changed(room_id);
        let tx = &mut *self.tx;
        sql::query(
            "INSERT INTO events (log_partition, log_offset, room_id, event_id, event_type, state_key,
                                 sender, json, device_id, transaction_id)
             VALUES ($1, $2, $3, $4, 'm.room.member', $5, $6, $7, '', '')
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(i64::from(partition))
        .bind(OUTLIER_OFFSET)
        .bind(room_id)
        .bind(event_id)
        .bind(invitee)
        .bind(sender)
        .bind(json)
        .execute(&mut *tx)
        .await?;
        sql::query(
            "INSERT INTO current_state (room_id, event_type, state_key, event_id, membership, log_offset, log_partition)
             VALUES ($1, 'm.room.member', $2, $3, $5, $4, $6)
             ON CONFLICT (room_id, event_type, state_key) DO UPDATE
             SET event_id = excluded.event_id, membership = excluded.membership,
                 log_offset = excluded.log_offset, log_partition = excluded.log_partition",
        )
        .bind(room_id)
        .bind(invitee)
        .bind(event_id)
        .bind(offset as i64)
        .bind(membership)
        .bind(i64::from(partition))
        .execute(&mut *tx)
        .await?;
        sql::query(
            "INSERT INTO state_history (room_id, event_type, state_key, log_offset, event_id, membership)
             VALUES ($1, 'm.room.member', $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(room_id)
        .bind(invitee)
        .bind(offset as i64)
        .bind(event_id)
        .bind(membership)
        .execute(&mut *tx)
        .await?;
        match invite_state_json {
            Some(state) => {
                sql::query(
                    "INSERT INTO invite_state (room_id, user_id, events_json) VALUES ($1, $2, $3)
                     ON CONFLICT (room_id, user_id) DO UPDATE SET events_json = excluded.events_json",
                )
                .bind(room_id)
                .bind(invitee)
                .bind(state)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sql::query("DELETE FROM invite_state WHERE room_id = $1 AND user_id = $2")
                    .bind(room_id)
                    .bind(invitee)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// Replaces the stored copy of a redacted event.
    pub(crate) async fn apply_redaction(
        &mut self,
        event_id: &str,
        redacted_json: &str,
    ) -> Result<(), StorageError> {
        self.flush().await?;
        sql::query(
            "UPDATE events SET json = $1, relates_to = NULL, rel_type = NULL WHERE event_id = $2",
        )
        .bind(redacted_json)
        .bind(event_id)
        .execute(&mut *self.tx)
        .await?;
        // A redacted event's text is no longer searchable.
        super::search::forget(&mut self.tx, self.engine, event_id).await?;
        Ok(())
    }

    /// Records that a user forgot a room (a membership of `forgotten` in
    /// their history, until they are a member again).
    pub(crate) async fn apply_forget(
        &mut self,
        offset: u64,
        room_id: &str,
        user_id: &str,
    ) -> Result<(), StorageError> {
        self.flush().await?;
        sql::query(
            "INSERT INTO forgotten_rooms (room_id, user_id, log_offset)
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(offset as i64)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// The JSON of the room's current `m.room.create` and
    /// `m.room.power_levels` events, if held.
    pub(crate) async fn create_and_power_levels(
        &mut self,
        room_id: &str,
    ) -> Result<(Option<String>, Option<String>), StorageError> {
        self.flush_state().await?;
        let rows: Vec<(String, String)> = sql::query_as(
            "SELECT s.event_type, e.json FROM current_state s JOIN events e ON e.event_id = s.event_id
             WHERE s.room_id = $1 AND s.state_key = ''
               AND s.event_type IN ('m.room.create', 'm.room.power_levels')",
        )
        .bind(room_id)
        .fetch_all(&mut *self.tx)
        .await?;
        let of = |event_type: &str| {
            rows.iter()
                .find(|(t, _)| t == event_type)
                .map(|(_, json)| json.clone())
        };
        Ok((of("m.room.create"), of("m.room.power_levels")))
    }

    /// One event by ID, as the batch left it.
    pub(crate) async fn event(&mut self, event_id: &str) -> Result<Option<EventRow>, StorageError> {
        self.flush().await?;
        Storage::event_in(&mut self.tx, event_id).await
    }

    /// The room's joined members of this server, and how many members
    /// are joined in all.
    pub(crate) async fn local_members(
        &mut self,
        room_id: &str,
        server_name: &str,
    ) -> Result<(Vec<String>, usize), StorageError> {
        if let Some(members) = self.members.get(room_id) {
            return Ok(members.clone());
        }
        if let Some(members) = self.known_members(room_id) {
            self.members.insert(room_id.to_owned(), members.clone());
            return Ok(members);
        }
        self.flush_state().await?;
        let rows: Vec<(String,)> = sql::query_as(
            "SELECT state_key FROM current_state
             WHERE room_id = $1 AND event_type = 'm.room.member' AND membership = 'join'",
        )
        .bind(room_id)
        .fetch_all(&mut *self.tx)
        .await?;
        let joined = rows.len();
        let suffix = format!(":{server_name}");
        let local: Vec<String> = rows
            .into_iter()
            .map(|(user_id,)| user_id)
            .filter(|user_id| user_id.ends_with(&suffix))
            .collect();
        self.members
            .insert(room_id.to_owned(), (local.clone(), joined));
        Ok((local, joined))
    }
}

impl Storage {
    /// One event by ID.
    pub(crate) async fn event(&self, event_id: &str) -> Result<Option<EventRow>, StorageError> {
        let mut connection = self.db.pool.acquire().await?;
        Self::event_in(&mut connection, event_id).await
    }

    async fn event_in(
        connection: &mut sql::Connection,
        event_id: &str,
    ) -> Result<Option<EventRow>, StorageError> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id = $1");
        let row = sql::query(sqlx::AssertSqlSafe(sql))
            .bind(event_id)
            .fetch_optional(connection)
            .await?;
        Ok(row.map(|mut row| event_row(&mut row)).transpose()?)
    }

    /// The stripped state another server sent with its invite of `user_id`.
    pub(crate) async fn invite_state(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<String>, StorageError> {
        Ok(sql::query_scalar(
            "SELECT events_json FROM invite_state WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(&self.db.pool)
        .await?)
    }

    /// The user's rooms, with the membership event's position and the
    /// room's partition of `roomserver.output`.
    pub(crate) async fn memberships(&self, user_id: &str) -> Result<Vec<Membership>, StorageError> {
        Ok(self.memberships_with_activity(user_id, None).await?.0)
    }

    /// [`Storage::memberships`], and with `events_from`, the rooms the user
    /// is joined to that have events at or after that offset: what an
    /// incremental `/sync` reads first, in one statement.
    pub(crate) async fn memberships_with_activity(
        &self,
        user_id: &str,
        events_from: Option<u64>,
    ) -> Result<(Vec<Membership>, std::collections::HashSet<String>), StorageError> {
        let from = events_from.map_or(-1, |from| from.min(i64::MAX as u64) as i64);
        let rows = sql::query(
            "SELECT s.room_id, s.membership, s.log_offset, s.log_partition,
                CASE WHEN $2 < 0 OR s.membership <> 'join' THEN 0
                     WHEN EXISTS (SELECT 1 FROM events x
                                  WHERE x.room_id = s.room_id AND x.log_offset >= $2) THEN 1
                     ELSE 0 END
             FROM current_state s
             WHERE s.state_key = $1 AND s.event_type = 'm.room.member' AND s.membership IS NOT NULL
               AND s.log_partition IS NOT NULL",
        )
        .bind(user_id)
        .bind(from)
        .fetch_all(&self.db.pool)
        .await?;
        let mut active = std::collections::HashSet::new();
        let mut memberships = Vec::with_capacity(rows.len());
        for row in &rows {
            let membership = membership_row(row)?;
            if row.try_get::<i64, _>(4)? != 0 {
                active.insert(membership.room_id.clone());
            }
            memberships.push(membership);
        }
        Ok((memberships, active))
    }

    /// The room's partition of `roomserver.output`, if any of its events was
    /// seen (sync reads it with the membership instead).
    pub(crate) async fn room_partition(&self, room_id: &str) -> Result<Option<u32>, StorageError> {
        let partition: Option<i64> =
            sql::query_scalar("SELECT log_partition FROM events WHERE room_id = $1 LIMIT 1")
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
        let bound = |at: u64| at.min(i64::MAX as u64) as i64;
        Ok(self
            .room_page(room_id, (bound(from), bound(to)), limit, backwards)
            .await?
            .into_iter()
            .map(|(_, row)| row)
            .collect())
    }

    /// The room's members now: (user ID, membership, position).
    pub(crate) async fn members(
        &self,
        room_id: &str,
    ) -> Result<Vec<(String, String, u64)>, StorageError> {
        let rows = sql::query(
            "SELECT state_key, membership, log_offset FROM current_state
             WHERE room_id = $1 AND event_type = 'm.room.member' AND membership IS NOT NULL",
        )
        .bind(room_id)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get::<i64, _>(2)?.max(0) as u64,
                ))
            })
            .collect()
    }

    /// The room's current state events and, from the same rows, its
    /// members: (user ID, membership, position).
    pub(crate) async fn room_state_with_members(
        &self,
        room_id: &str,
    ) -> Result<(Vec<EventRow>, Vec<(String, String, u64)>), StorageError> {
        Ok(self
            .room_states_with_members(&[room_id])
            .await?
            .remove(room_id)
            .unwrap_or_default())
    }

    /// The latest events (at most `limit`, newest first) of each room below
    /// its bound: one statement per chunk of rooms instead of one per room.
    pub(crate) async fn latest_events_of(
        &self,
        rooms: &[(&str, u64)],
        limit: u32,
    ) -> Result<std::collections::HashMap<String, Vec<EventRow>>, StorageError> {
        let mut out: std::collections::HashMap<String, Vec<EventRow>> = Default::default();
        for chunk in rooms.chunks(ROOMS_PER_STATEMENT) {
            let sql = (0..chunk.len())
                .map(|i| {
                    format!(
                        "SELECT * FROM (SELECT {EVENT_COLUMNS} FROM events e
                         WHERE e.room_id = ${} AND e.log_offset >= 0 AND e.log_offset < ${}
                         ORDER BY e.log_offset DESC LIMIT ${}) AS q{i}",
                        3 * i + 1,
                        3 * i + 2,
                        3 * i + 3
                    )
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            let mut query = sql::query(sqlx::AssertSqlSafe(sql));
            for (room_id, below) in chunk {
                query = query
                    .bind(*room_id)
                    .bind((*below).min(i64::MAX as u64) as i64)
                    .bind(i64::from(limit));
            }
            for mut row in query.fetch_all(&self.db.pool).await? {
                let event = event_row(&mut row)?;
                out.entry(event.room_id.clone()).or_default().push(event);
            }
        }
        for events in out.values_mut() {
            events.sort_by_key(|e| std::cmp::Reverse(e.offset));
        }
        Ok(out)
    }

    /// [`Self::room_state_with_members`] for many rooms at once.
    #[allow(clippy::type_complexity)]
    pub(crate) async fn room_states_with_members(
        &self,
        rooms: &[&str],
    ) -> Result<
        std::collections::HashMap<String, (Vec<EventRow>, Vec<(String, String, u64)>)>,
        StorageError,
    > {
        let mut out: std::collections::HashMap<
            String,
            (Vec<EventRow>, Vec<(String, String, u64)>),
        > = Default::default();
        for chunk in rooms.chunks(ROOMS_PER_STATEMENT) {
            let placeholders = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {EVENT_COLUMNS}, s.membership FROM current_state s
                 JOIN events e ON e.event_id = s.event_id
                 WHERE s.room_id IN ({placeholders}) ORDER BY e.log_offset"
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql));
            for room_id in chunk {
                query = query.bind(*room_id);
            }
            for mut row in query.fetch_all(&self.db.pool).await? {
                let event = event_row(&mut row)?;
                let membership: Option<String> = row.try_get(10)?;
                let (state, members) = out.entry(event.room_id.clone()).or_default();
                if event.event_type == "m.room.member"
                    && let (Some(user), Some(membership)) = (&event.state_key, membership)
                {
                    members.push((user.clone(), membership, event.offset));
                }
                state.push(event);
            }
        }
        Ok(out)
    }

    /// Each room's current state as references (no event JSON, which an
    /// initial sync mostly has in the timeline already), ordered by when
    /// each entry became current.
    pub(crate) async fn room_state_refs(
        &self,
        rooms: &[&str],
    ) -> Result<std::collections::HashMap<String, Vec<StateRef>>, StorageError> {
        let mut out: std::collections::HashMap<String, Vec<StateRef>> = Default::default();
        for chunk in rooms.chunks(ROOMS_PER_STATEMENT) {
            let mut query = sql::query(sqlx::AssertSqlSafe(fixed_in_list(
                "SELECT room_id, event_type, state_key, event_id, membership, log_offset
                 FROM current_state WHERE room_id IN",
                "ORDER BY log_offset",
            )));
            for room_id in padded(chunk) {
                query = query.bind(*room_id);
            }
            for row in query.fetch_all(&self.db.pool).await? {
                let (room_id, state) = room_state_ref(&row)?;
                out.entry(room_id).or_default().push(state);
            }
        }
        Ok(out)
    }

    /// The room's state entries as they stood just before `before`, as
    /// references, ordered by when each became current; with `since`, only
    /// those that became current at or after it (a gap's state changes).
    pub(crate) async fn state_refs_at(
        &self,
        room_id: &str,
        before: u64,
        since: Option<u64>,
    ) -> Result<Vec<StateRef>, StorageError> {
        let rows = sql::query(
            "SELECT h.event_type, h.state_key, h.event_id, h.membership, h.log_offset
             FROM state_history h
             WHERE h.room_id = $1 AND h.log_offset < $2 AND h.log_offset >= $3
               AND h.event_id IS NOT NULL
               AND h.log_offset = (
                 SELECT MAX(l.log_offset) FROM state_history l
                 WHERE l.room_id = h.room_id AND l.event_type = h.event_type
                   AND l.state_key = h.state_key AND l.log_offset < $2)
             ORDER BY h.log_offset",
        )
        .bind(room_id)
        .bind(i64_of(before))
        .bind(i64_of(since.unwrap_or(0)))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(state_ref).collect()
    }

    /// [`state_refs_at`](Self::state_refs_at) without `since`, for many
    /// rooms at once (an initial `/sync`): each room's state entries as they
    /// stood just before its own position, ordered by when each became
    /// current.
    pub(crate) async fn state_refs_before(
        &self,
        rooms: &[(&str, u64)],
    ) -> Result<std::collections::HashMap<String, Vec<StateRef>>, StorageError> {
        let mut out: std::collections::HashMap<String, Vec<StateRef>> = Default::default();
        for chunk in rooms.chunks(ROOMS_PER_STATEMENT) {
            // A fixed number of (room, position) rows, a short chunk
            // repeating its last, so the statement's text never changes.
            let rows = (0..ROOMS_PER_STATEMENT)
                .map(|i| format!("(${}, CAST(${} AS BIGINT))", 2 * i + 1, 2 * i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT DISTINCT h.room_id, h.event_type, h.state_key, h.event_id, h.membership,
                        h.log_offset
                 FROM (VALUES {rows}) AS w
                 JOIN state_history h ON h.room_id = w.column1
                 WHERE h.log_offset < w.column2 AND h.event_id IS NOT NULL
                   AND h.log_offset = (
                     SELECT MAX(l.log_offset) FROM state_history l
                     WHERE l.room_id = h.room_id AND l.event_type = h.event_type
                       AND l.state_key = h.state_key AND l.log_offset < w.column2)
                 ORDER BY h.log_offset"
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql));
            let last = chunk.last().copied().unwrap_or(("", 0));
            for n in 0..ROOMS_PER_STATEMENT {
                let (room_id, before) = chunk.get(n).copied().unwrap_or(last);
                query = query.bind(room_id).bind(i64_of(before));
            }
            for row in query.fetch_all(&self.db.pool).await? {
                let (room_id, state) = room_state_ref(&row)?;
                out.entry(room_id).or_default().push(state);
            }
        }
        Ok(out)
    }

    /// The membership events of `users` as they stood just before `before`.
    pub(crate) async fn member_refs_at(
        &self,
        room_id: &str,
        before: u64,
        users: &[&str],
    ) -> Result<Vec<StateRef>, StorageError> {
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            let row = sql::query(
                "SELECT event_type, state_key, event_id, membership, log_offset
                 FROM state_history
                 WHERE room_id = $1 AND event_type = 'm.room.member' AND state_key = $2
                   AND log_offset < $3 AND event_id IS NOT NULL
                 ORDER BY log_offset DESC LIMIT 1",
            )
            .bind(room_id)
            .bind(*user)
            .bind(i64_of(before))
            .fetch_optional(&self.db.pool)
            .await?;
            if let Some(row) = row {
                out.push(state_ref(&row)?);
            }
        }
        Ok(out)
    }

    /// Whether the room has a name or a canonical alias now (a non-empty
    /// one): a room without either is named by its heroes.
    pub(crate) async fn room_is_named(&self, room_id: &str) -> Result<bool, StorageError> {
        let rows: Vec<String> = sql::query_scalar(
            "SELECT e.json FROM current_state c JOIN events e ON e.event_id = c.event_id
             WHERE c.room_id = $1 AND c.state_key = ''
               AND c.event_type IN ('m.room.name', 'm.room.canonical_alias')",
        )
        .bind(room_id)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().any(|json| {
            let event: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
            ["name", "alias"].iter().any(|field| {
                event["content"][field]
                    .as_str()
                    .is_some_and(|value| !value.is_empty())
            })
        }))
    }

    /// Events by ID (those not stored are left out), in no given order.
    pub(crate) async fn events_by_id(&self, ids: &[&str]) -> Result<Vec<EventRow>, StorageError> {
        let mut out = Vec::with_capacity(ids.len());
        let columns = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id IN");
        for chunk in ids.chunks(ROOMS_PER_STATEMENT) {
            let mut query = sql::query(sqlx::AssertSqlSafe(fixed_in_list(&columns, "")));
            for id in padded(chunk) {
                query = query.bind(*id);
            }
            for mut row in query.fetch_all(&self.db.pool).await? {
                out.push(event_row(&mut row)?);
            }
        }
        Ok(out)
    }

    /// The room's current state events.
    pub(crate) async fn room_state(&self, room_id: &str) -> Result<Vec<EventRow>, StorageError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM current_state s JOIN events e ON e.event_id = s.event_id
             WHERE s.room_id = $1 ORDER BY e.log_offset"
        );
        let rows = sql::query(sqlx::AssertSqlSafe(sql))
            .bind(room_id)
            .fetch_all(&self.db.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|mut row| event_row(&mut row))
            .collect::<Result<_, _>>()?)
    }

    /// The room's current `m.room.history_visibility`, if it has one.
    pub(crate) async fn current_history_visibility(
        &self,
        room_id: &str,
    ) -> Result<Option<String>, StorageError> {
        let mut connection = self.db.pool.acquire().await?;
        Self::history_visibility_in(&mut connection, room_id).await
    }

    async fn history_visibility_in(
        connection: &mut sql::Connection,
        room_id: &str,
    ) -> Result<Option<String>, StorageError> {
        let json: Option<String> = sql::query_scalar(
            "SELECT e.json FROM current_state s JOIN events e ON e.event_id = s.event_id
             WHERE s.room_id = $1 AND s.event_type = 'm.room.history_visibility' AND s.state_key = ''",
        )
        .bind(room_id)
        .fetch_optional(connection)
        .await?;
        Ok(json
            .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
            .and_then(|e| {
                e["content"]["history_visibility"]
                    .as_str()
                    .map(str::to_owned)
            }))
    }

    /// A user's memberships of a room over time: (offset of the event that
    /// set it, membership), oldest first.
    pub(crate) async fn membership_history(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Vec<(u64, String)>, StorageError> {
        let rows = sql::query(
            "SELECT log_offset, membership FROM state_history
             WHERE room_id = $1 AND event_type = 'm.room.member' AND state_key = $2
               AND membership IS NOT NULL
             UNION ALL
             SELECT log_offset, 'forgotten' FROM forgotten_rooms
             WHERE room_id = $1 AND user_id = $2
             ORDER BY 1",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get::<i64, _>(0)?.max(0) as u64, row.try_get(1)?)))
            .collect()
    }

    /// The room's state just before the record at `offset` (of `event_type`
    /// only, when given), as this view recorded it.
    pub(crate) async fn state_at(
        &self,
        room_id: &str,
        offset: u64,
        event_type: Option<&str>,
    ) -> Result<Vec<EventRow>, StorageError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM state_history h JOIN events e ON e.event_id = h.event_id
             WHERE h.room_id = $1 AND h.log_offset < $2 AND ($3 = '' OR h.event_type = $3)
               AND h.log_offset = (
                 SELECT MAX(l.log_offset) FROM state_history l
                 WHERE l.room_id = h.room_id AND l.event_type = h.event_type
                   AND l.state_key = h.state_key AND l.log_offset < $2)
             ORDER BY e.log_offset"
        );
        let rows = sql::query(sqlx::AssertSqlSafe(sql))
            .bind(room_id)
            .bind(offset.min(i64::MAX as u64) as i64)
            .bind(event_type.unwrap_or_default())
            .fetch_all(&self.db.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|mut row| event_row(&mut row))
            .collect::<Result<_, _>>()?)
    }

    /// Events relating to any of `parents`, oldest first, with their
    /// relation type.
    pub(crate) async fn children_of(
        &self,
        parents: &[&str],
    ) -> Result<Vec<(String, String, EventRow)>, StorageError> {
        let mut out = Vec::new();
        for chunk in parents.chunks(100) {
            let placeholders = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "SELECT {EVENT_COLUMNS}, e.relates_to, e.rel_type FROM events e
                 WHERE e.relates_to IN ({placeholders}) ORDER BY e.log_offset"
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql));
            for parent in chunk {
                query = query.bind(*parent);
            }
            for mut row in query.fetch_all(&self.db.pool).await? {
                out.push((row.try_get(10)?, row.try_get(11)?, event_row(&mut row)?));
            }
        }
        Ok(out)
    }

    /// One page of the events relating to `parent` between two offsets.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn relations(
        &self,
        parent: &str,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        from: u64,
        to: u64,
        limit: u32,
        backwards: bool,
    ) -> Result<Vec<EventRow>, StorageError> {
        let order = if backwards { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e
             WHERE e.relates_to = $1 AND ($2 = '' OR e.rel_type = $2) AND ($3 = '' OR e.event_type = $3)
               AND e.log_offset >= $4 AND e.log_offset < $5
             ORDER BY e.log_offset {order} LIMIT $6"
        );
        let rows = sql::query(sqlx::AssertSqlSafe(sql))
            .bind(parent)
            .bind(rel_type.unwrap_or_default())
            .bind(event_type.unwrap_or_default())
            .bind(from.min(i64::MAX as u64) as i64)
            .bind(to.min(i64::MAX as u64) as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.db.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|mut row| event_row(&mut row))
            .collect::<Result<_, _>>()?)
    }

    /// Thread roots of a room, most recently replied to first, whose latest
    /// reply is before `before`: (root, latest reply offset). With
    /// `participant`, only threads they started or replied to.
    pub(crate) async fn thread_roots(
        &self,
        room_id: &str,
        participant: Option<&str>,
        before: u64,
        limit: u32,
    ) -> Result<Vec<(EventRow, u64)>, StorageError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, t.latest FROM events e JOIN (
                SELECT relates_to, MAX(log_offset) AS latest FROM events
                WHERE room_id = $1 AND rel_type = 'm.thread' GROUP BY relates_to
             ) t ON t.relates_to = e.event_id
             WHERE t.latest < $2 AND ($3 = '' OR e.sender = $3 OR EXISTS (
                SELECT 1 FROM events r WHERE r.relates_to = e.event_id AND r.rel_type = 'm.thread'
                  AND r.sender = $3))
             ORDER BY t.latest DESC LIMIT $4"
        );
        let rows = sql::query(sqlx::AssertSqlSafe(sql))
            .bind(room_id)
            .bind(before.min(i64::MAX as u64) as i64)
            .bind(participant.unwrap_or_default())
            .bind(i64::from(limit))
            .fetch_all(&self.db.pool)
            .await?;
        rows.into_iter()
            .map(|mut row| {
                Ok((
                    event_row(&mut row)?,
                    row.try_get::<i64, _>(10)?.max(0) as u64,
                ))
            })
            .collect()
    }
}

impl Storage {
    /// Every (room, user) joined, as consumed: the notifier's starting point.
    pub(crate) async fn all_joined(&self) -> Result<Vec<(String, String)>, StorageError> {
        Ok(sql::query_as(
            "SELECT room_id, state_key FROM current_state
             WHERE event_type = 'm.room.member' AND membership = 'join'",
        )
        .fetch_all(&self.db.pool)
        .await?)
    }
}

/// A notification as `/notifications` lists it.
#[derive(Debug)]
pub(crate) struct NotifiedEvent {
    pub(crate) event: EventRow,
    /// The actions that notified (JSON), when recorded.
    pub(crate) actions: Option<String>,
    pub(crate) unread: bool,
    pub(crate) ts: i64,
}

/// Where a page of `/notifications` starts: below this (ts, offset, room).
pub(crate) type NotificationsFrom = (i64, i64, String);

/// A user's unread notifications in one room and thread: how many, and
/// how many of them highlight.
#[derive(Debug, Clone)]
pub(crate) struct NotificationCount {
    pub(crate) room_id: String,
    pub(crate) thread_id: String,
    pub(crate) notifications: u64,
    pub(crate) highlights: u64,
}

impl Storage {
    /// A page of the user's notifications, newest first, below `from`;
    /// with `only_highlights`, only those that highlighted.
    pub(crate) async fn notified_events(
        &self,
        user_id: &str,
        from: Option<&NotificationsFrom>,
        limit: u32,
        only_highlights: bool,
    ) -> Result<Vec<NotifiedEvent>, StorageError> {
        let highlight = if only_highlights {
            " AND n.highlight = 1"
        } else {
            ""
        };
        let below = if from.is_some() {
            " AND (n.ts < $3 OR (n.ts = $3 AND (n.log_offset < $4
                  OR (n.log_offset = $4 AND n.room_id < $5))))"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, n.actions, n.unread, n.ts FROM notifications n
             JOIN events e ON e.room_id = n.room_id AND e.log_offset = n.log_offset
             WHERE n.user_id = $1{highlight}{below}
             ORDER BY n.ts DESC, n.log_offset DESC, n.room_id DESC LIMIT $2"
        );
        let mut query = sql::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(i64::from(limit));
        if let Some((ts, offset, room_id)) = from {
            query = query.bind(*ts).bind(*offset).bind(room_id.as_str());
        }
        let rows = query.fetch_all(&self.db.pool).await?;
        rows.into_iter()
            .map(|mut row| {
                Ok(NotifiedEvent {
                    event: event_row(&mut row)?,
                    actions: row.try_get(10)?,
                    unread: row.try_get::<i64, _>(11)? != 0,
                    ts: row.try_get(12)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StorageError::from)
    }

    /// Drops read notifications made before `before_ms` (`/notifications`
    /// shows a month); answers how many went.
    pub(crate) async fn prune_read_notifications(
        &self,
        before_ms: i64,
    ) -> Result<u64, StorageError> {
        let done = sql::query("DELETE FROM notifications WHERE unread = 0 AND ts < $1")
            .bind(before_ms)
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// The user's unread notifications, counted per room and thread by the
    /// database: a row per room and thread, however many are unread.
    pub(crate) async fn notifications_for(
        &self,
        user_id: &str,
    ) -> Result<Vec<NotificationCount>, StorageError> {
        let rows: Vec<(String, String, i64, i64)> = sql::query_as(
            "SELECT room_id, thread_id, notifications, highlights
             FROM notification_counts WHERE user_id = $1 AND notifications > 0",
        )
        .bind(user_id)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(room_id, thread_id, notifications, highlights)| NotificationCount {
                    room_id,
                    thread_id,
                    notifications: notifications.max(0) as u64,
                    highlights: highlights.max(0) as u64,
                },
            )
            .collect())
    }
}
