//! A room's head: its current state, forward extremities and depth, as the
//! replica that owns the room's partition holds them between inputs.

use std::collections::HashSet;
use std::sync::Arc;

use ruma::room_version_rules::RoomVersionRules;

use crate::RoomserverService;
use crate::events::{self, EventError, Pdu, StateMap};
use crate::storage::{NidState, RoomRow, StorageError};

/// What the roomserver knows of a room when it appends to it.
pub(crate) struct Head {
    pub(crate) room_nid: i64,
    pub(crate) room_version: String,
    pub(crate) rules: RoomVersionRules,
    /// The stored head version this was loaded or written at.
    pub(crate) head_version: i64,
    pub(crate) state: StateMap,
    /// The state as NIDs (absent for rooms written before snapshots existed
    /// until their first write).
    pub(crate) nids: Option<NidState>,
    pub(crate) extremities: Vec<Arc<Pdu>>,
    pub(crate) depth: i64,
}

impl Head {
    /// The head of a room with nothing in it yet (one being created, or
    /// joined from another server).
    pub(crate) fn empty(room_nid: i64, room_version: &str, rules: RoomVersionRules) -> Head {
        Head {
            room_nid,
            room_version: room_version.to_owned(),
            rules,
            head_version: 0,
            state: StateMap::new(),
            nids: Some(NidState::default()),
            extremities: Vec::new(),
            depth: 0,
        }
    }

    pub(crate) fn extremity_ids(&self) -> Vec<String> {
        self.extremities
            .iter()
            .map(|p| p.event_id.to_string())
            .collect()
    }

    /// Moves the head past a locally built `pdu` (its state, for a state
    /// event; the extremities; the depth). Returns the state it changed and
    /// the extremities before it.
    pub(crate) fn advance(&mut self, pdu: &Arc<Pdu>) -> (StateDelta, Vec<String>) {
        let prev_extremities = self.extremity_ids();
        let mut delta: StateDelta = Vec::new();
        if let Some(state_key) = &pdu.state_key {
            let key = (pdu.kind.to_string(), state_key.clone());
            let replaced = self.state.insert(key.clone(), pdu.clone());
            delta.push((key, Some(pdu.clone()), replaced));
        }
        self.extremities = extremities_after(&self.extremities, pdu);
        self.depth = self.depth.max(pdu.depth);
        (delta, prev_extremities)
    }
}

/// How many rooms' heads a replica keeps in memory.
const HEAD_CACHE_ROOMS: usize = 1_000;

/// Why a head could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Event(#[from] EventError),
}

impl RoomserverService {
    /// The head of a room: from the cache when it is still current (no
    /// other replica wrote since), otherwise from the database. Taken out of
    /// the cache, not copied; [`put_head`](Self::put_head) returns it.
    pub(crate) async fn take_head(&self, room: &RoomRow) -> Result<Head, HeadError> {
        let cached = {
            let mut heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
            heads.remove(&room.room_nid)
        };
        if let Some(head) = cached
            && head.head_version == room.head_version
        {
            return Ok(head);
        }
        let (_, rules) = events::rules_for(&room.room_version)?;
        let (state, nids) = if room.snapshot_nid == 0 {
            (
                self.storage.legacy_current_state(room.room_nid).await?,
                None,
            )
        } else {
            let (state, nids) = self.storage.load_state(room.snapshot_nid).await?;
            (state, Some(nids))
        };
        let ids = self.storage.forward_extremities(room).await?;
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let stored = self.storage.events_by_id(&refs).await?;
        let mut extremities: Vec<Arc<Pdu>> = stored.into_values().map(|s| s.pdu).collect();
        extremities.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        Ok(Head {
            room_nid: room.room_nid,
            room_version: room.room_version.clone(),
            rules,
            head_version: room.head_version,
            state,
            nids,
            extremities,
            depth: room.depth,
        })
    }

    pub(crate) fn put_head(&self, head: Head) {
        let mut heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        if heads.len() >= HEAD_CACHE_ROOMS && !heads.contains_key(&head.room_nid) {
            heads.clear();
        }
        heads.insert(head.room_nid, head);
    }
}

/// The forward extremities once `pdu` joins the DAG: it replaces those it
/// references.
pub(crate) fn extremities_after(extremities: &[Arc<Pdu>], pdu: &Arc<Pdu>) -> Vec<Arc<Pdu>> {
    let prev: HashSet<&ruma::OwnedEventId> = pdu.prev_events.iter().collect();
    let mut next: Vec<Arc<Pdu>> = extremities
        .iter()
        .filter(|e| !prev.contains(&e.event_id) && e.event_id != pdu.event_id)
        .cloned()
        .collect();
    next.push(pdu.clone());
    next.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    next
}

/// The entries that differ between two states: (type, key, new event or
/// `None` when removed, old event).
pub(crate) type StateDelta = Vec<((String, String), Option<Arc<Pdu>>, Option<Arc<Pdu>>)>;

pub(crate) fn state_delta(before: &StateMap, after: &StateMap) -> StateDelta {
    let mut delta = Vec::new();
    for (key, event) in after {
        match before.get(key) {
            Some(old) if old.event_id == event.event_id => {}
            old => delta.push((key.clone(), Some(event.clone()), old.cloned())),
        }
    }
    for (key, old) in before {
        if !after.contains_key(key) {
            delta.push((key.clone(), None, Some(old.clone())));
        }
    }
    delta.sort_by(|a, b| a.0.cmp(&b.0));
    delta
}
