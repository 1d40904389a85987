//! One write transaction over consumed `roomserver.output` records: each
//! `apply_*` (in `events.rs` and `history.rs`) adds a record's changes,
//! [`Batch::consumed`] notes the record, and [`Batch::commit`] writes what
//! the batch gathered (room bumps, notifications, the positions reached)
//! and commits. A consumer that is behind applies hundreds of records per
//! commit; reads made through the batch see what its earlier records
//! wrote, and what it remembers of a room (history visibility, joined
//! members) is forgotten when a record changes that state. What it knows
//! at a successful commit is kept for the next batch ([`RoomCache`]).

use ganglion_base::sql;
use std::collections::{BTreeMap, HashMap};

use ganglion_base::database::Engine;

use super::events::{BUMP_TYPES, Bound, insert_rows};
use super::{Storage, StorageError};
use crate::sync_token::Stream;

/// Per room, what batches know of its current state, as committed: its
/// history visibility and its joined members. The `roomserver.output`
/// consumer is the only writer of current state, so what a committed batch
/// knew stays true until a later batch changes it; a batch that fails
/// leaves this as it was.
#[derive(Default)]
pub(crate) struct RoomCache {
    visibility: ganglion_base::bounded::Bounded<String, String>,
    members: ganglion_base::bounded::Bounded<String, (Vec<String>, usize)>,
}

pub(crate) struct Batch {
    pub(super) tx: sql::Transaction,
    /// The committed knowledge this batch started from and updates when it
    /// commits.
    shared: std::sync::Arc<std::sync::Mutex<RoomCache>>,
    /// Rooms whose history visibility, and rooms whose joined members,
    /// this batch changed: what was known of them before is forgotten at
    /// commit.
    pub(super) changed_visibility: std::collections::HashSet<String>,
    pub(super) changed_members: std::collections::HashSet<String>,
    pub(super) engine: Engine,
    /// The last offset consumed per stream and partition.
    consumed: HashMap<(Stream, u32), u64>,
    /// Per room, the history visibility in force.
    pub(super) visibility: HashMap<String, String>,
    /// Per room, its joined members of this server and how many members
    /// are joined in all.
    pub(super) members: HashMap<String, (Vec<String>, usize)>,
    pub(super) at_commit: AtCommit,
    /// Timeline events and their state changes, written many to a
    /// statement before anything else touches the events table, and
    /// before current state is read when one of them changes it.
    pub(super) pending: Vec<PendingEvent>,
    /// Whether a pending event changes state.
    pub(super) state_pending: bool,
}

/// A timeline event waiting to be written (see [`Batch::flush`]).
pub(super) struct PendingEvent {
    pub(super) partition: u32,
    pub(super) offset: u64,
    pub(super) room_id: String,
    pub(super) event_id: String,
    pub(super) event_type: String,
    pub(super) state_key: Option<String>,
    pub(super) sender: String,
    pub(super) json: String,
    pub(super) device_id: String,
    pub(super) transaction_id: String,
    pub(super) history_visibility: String,
    pub(super) relates_to: Option<(String, String)>,
    pub(super) notified: Vec<ganglion_base::push_rules::Notification>,
    pub(super) thread_id: String,
    pub(super) state: Option<PendingState>,
}

/// A pending event's state change.
pub(super) struct PendingState {
    /// (type, state key, event ID) entries it removes.
    pub(super) removed: Vec<(String, String, String)>,
    /// (type, state key, event ID, membership) entries it sets, one per
    /// (type, state key).
    pub(super) added: Vec<(String, String, String, Option<String>)>,
}

/// What the batch's new timeline events bring, written at commit.
#[derive(Default)]
pub(super) struct AtCommit {
    /// Per room, the last event of the batch that moves it up sliding
    /// sync lists.
    bumps: HashMap<String, String>,
    notifications: Vec<NotificationToStore>,
}

/// A notification of an event to a user.
struct NotificationToStore {
    user_id: String,
    room_id: String,
    offset: i64,
    thread_id: String,
    highlight: i64,
    /// The actions of the rule that matched (JSON), for `/notifications`;
    /// `None` for a plain `notify`.
    actions: Option<String>,
}

impl AtCommit {
    /// Notes a newly stored timeline event: a bump of its room and its
    /// notifications.
    pub(super) fn stored(
        &mut self,
        (room_id, event_id, event_type): (&str, &str, &str),
        offset: u64,
        thread_id: &str,
        notified: &[ganglion_base::push_rules::Notification],
    ) {
        if BUMP_TYPES.contains(&event_type) {
            self.bumps.insert(room_id.to_owned(), event_id.to_owned());
        }
        for notification in notified {
            self.notifications.push(NotificationToStore {
                user_id: notification.user_id.clone(),
                room_id: room_id.to_owned(),
                offset: offset as i64,
                thread_id: thread_id.to_owned(),
                highlight: i64::from(notification.highlight),
                // Plain `notify` (most) is left out: read back as such.
                actions: (!notification.tweaks.is_empty())
                    .then(|| notification.actions().to_string()),
            });
        }
    }
}

impl Storage {
    /// Starts a batch of records' changes.
    pub(crate) async fn batch(&self) -> Result<Batch, StorageError> {
        Ok(Batch {
            tx: self.db.pool.begin().await?,
            shared: self.rooms.clone(),
            changed_visibility: Default::default(),
            changed_members: Default::default(),
            engine: self.db.engine,
            consumed: HashMap::new(),
            visibility: HashMap::new(),
            members: HashMap::new(),
            at_commit: AtCommit::default(),
            pending: Vec::new(),
            state_pending: false,
        })
    }
}

impl Batch {
    fn shared(&self) -> std::sync::MutexGuard<'_, RoomCache> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The room's history visibility as a committed batch knew it, unless
    /// this batch changed it.
    pub(super) fn known_visibility(&self, room_id: &str) -> Option<String> {
        if self.changed_visibility.contains(room_id) {
            return None;
        }
        self.shared().visibility.get(room_id)
    }

    /// The room's joined members as a committed batch knew them, unless
    /// this batch changed them.
    pub(super) fn known_members(&self, room_id: &str) -> Option<(Vec<String>, usize)> {
        if self.changed_members.contains(room_id) {
            return None;
        }
        self.shared().members.get(room_id)
    }

    /// Notes that the batch changed the room's members.
    pub(super) fn members_changed(&mut self, room_id: &str) {
        self.members.remove(room_id);
        self.changed_members.insert(room_id.to_owned());
    }

    /// Forgets what the batch knows of the room's state: read again when
    /// next needed, and not kept past the commit.
    pub(super) fn forget_room(&mut self, room_id: &str) {
        self.members_changed(room_id);
        self.visibility.remove(room_id);
        self.changed_visibility.insert(room_id.to_owned());
    }

    /// Notes that the record at `offset` is part of this batch.
    pub(crate) fn consumed(&mut self, stream: Stream, partition: u32, offset: u64) {
        let last = self.consumed.entry((stream, partition)).or_insert(offset);
        *last = (*last).max(offset);
    }

    /// Writes what the batch gathered, stores the positions reached and
    /// commits: all of the batch, or (on error) none of it.
    pub(crate) async fn commit(mut self) -> Result<(), StorageError> {
        self.flush().await?;
        for (room_id, event_id) in &self.at_commit.bumps {
            sql::query(
                "INSERT INTO room_bumps (room_id, bump)
                 SELECT room_id, id FROM events WHERE event_id = $1 AND room_id = $2
                 ON CONFLICT (room_id) DO UPDATE SET bump = excluded.bump",
            )
            .bind(event_id)
            .bind(room_id)
            .execute(&mut *self.tx)
            .await?;
        }
        let now = ganglion_base::clock::now_ms();
        let notifications: Vec<Vec<Bound<'_>>> = self
            .at_commit
            .notifications
            .iter()
            .map(|n| {
                vec![
                    Bound::Text(Some(&n.user_id)),
                    Bound::Text(Some(&n.room_id)),
                    Bound::Int(n.offset),
                    Bound::Text(Some(&n.thread_id)),
                    Bound::Int(n.highlight),
                    Bound::Int(now),
                    Bound::Text(n.actions.as_deref()),
                ]
            })
            .collect();
        // Counted as they land: a notification given again (a record
        // delivered twice) is not inserted, so not counted twice.
        let inserted = insert_rows(
            self.engine,
            &mut self.tx,
            "INSERT INTO notifications (user_id, room_id, log_offset, thread_id, highlight, ts, actions)",
            "ON CONFLICT DO NOTHING RETURNING user_id, room_id, thread_id, highlight",
            &notifications,
        )
        .await?;
        let mut counts: BTreeMap<(String, String, String), (i64, i64)> = BTreeMap::new();
        for row in &inserted {
            let key = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let highlight: i64 = row.try_get(3)?;
            let count = counts.entry(key).or_default();
            count.0 += 1;
            count.1 += highlight;
        }
        let counts: Vec<Vec<Bound<'_>>> = counts
            .iter()
            .map(
                |((user_id, room_id, thread_id), (notifications, highlights))| {
                    vec![
                        Bound::Text(Some(user_id)),
                        Bound::Text(Some(room_id)),
                        Bound::Text(Some(thread_id)),
                        Bound::Int(*notifications),
                        Bound::Int(*highlights),
                    ]
                },
            )
            .collect();
        insert_rows(
            self.engine,
            &mut self.tx,
            "INSERT INTO notification_counts (user_id, room_id, thread_id, notifications, highlights)",
            "ON CONFLICT (user_id, room_id, thread_id) DO UPDATE
             SET notifications = notification_counts.notifications + excluded.notifications,
                 highlights = notification_counts.highlights + excluded.highlights",
            &counts,
        )
        .await?;
        for ((stream, partition), offset) in &self.consumed {
            Storage::store_position(&mut self.tx, *stream, *partition, *offset).await?;
        }
        // What the batch changed is forgotten before the commit: a commit
        // that reports a failure may still have happened (a connection
        // lost after COMMIT was sent), and the records taken again would
        // then change nothing, so nothing would correct it later.
        {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            for room_id in &self.changed_visibility {
                shared.visibility.remove(room_id);
            }
            for room_id in &self.changed_members {
                shared.members.remove(room_id);
            }
        }
        self.tx.commit().await?;
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        for (room_id, visibility) in self.visibility.drain() {
            shared.visibility.insert(room_id, visibility);
        }
        for (room_id, members) in self.members.drain() {
            shared.members.insert(room_id, members);
        }
        Ok(())
    }
}
