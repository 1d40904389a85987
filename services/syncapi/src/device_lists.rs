//! `device_lists` (`changed`/`left`) for `/sync`, sliding sync's `e2ee`
//! extension and `/keys/changes`: whose device lists a client should
//! fetch again, and whom it may stop tracking, between two tokens.
//!
//! A user is `changed` when their device keys changed (on
//! `keyserver.key_changes`) and they are the user or share a joined room
//! with them, or when they started sharing a room: they joined one of the
//! user's rooms, or the user joined theirs. A user is `left` when a leave
//! (theirs or the user's) in the window ended the last room they shared.
//! Rooms of every kind count, encrypted or not, as a superset is harmless
//! and a room may turn on encryption at any time.

use std::collections::{BTreeSet, HashMap, HashSet};

use ganglion_base::MatrixError;

use crate::SyncService;
use crate::storage::{At, MemberChange, Membership};
use crate::sync_token::{Stream, SyncToken};

/// The two lists of a response.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DeviceLists {
    pub(crate) changed: BTreeSet<String>,
    pub(crate) left: BTreeSet<String>,
    /// Those who started sharing a room with the user in the window (their
    /// presence is news to the client too).
    pub(crate) started_sharing: BTreeSet<String>,
}

impl DeviceLists {
    pub(crate) fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }
}

/// What the membership changes in a window mean for the user: who may
/// have started sharing a room (`maybe_changed`), who may have stopped
/// (`maybe_left`), and the rooms the user joined or left (whose members
/// are then candidates too).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Candidates {
    pub(crate) maybe_changed: HashSet<String>,
    pub(crate) maybe_left: HashSet<String>,
    pub(crate) rooms_joined: Vec<String>,
    pub(crate) rooms_left: Vec<String>,
}

/// Sorts the membership changes of the user's rooms that fall in their
/// room's window. `rooms`: the user's membership now and the room's
/// partition; `window`: whether an offset of a partition is in the window.
pub(crate) fn candidates(
    user_id: &str,
    rooms: &HashMap<&str, (&str, u32)>,
    changes: &[MemberChange],
    window: impl Fn(u32, u64) -> bool,
) -> Candidates {
    let mut out = Candidates::default();
    for change in changes {
        let Some(&(mine, partition)) = rooms.get(change.room_id.as_str()) else {
            continue;
        };
        if !window(partition, change.offset) {
            continue;
        }
        let joined = change.membership.as_deref() == Some("join");
        if change.user_id == user_id {
            // Only the membership the user holds now matters: a join then
            // a leave in one window is a leave.
            match (joined, mine == "join") {
                (true, true) if !out.rooms_joined.contains(&change.room_id) => {
                    out.rooms_joined.push(change.room_id.clone())
                }
                (false, false) if !out.rooms_left.contains(&change.room_id) => {
                    out.rooms_left.push(change.room_id.clone())
                }
                _ => {}
            }
        } else if joined {
            if mine == "join" {
                out.maybe_changed.insert(change.user_id.clone());
            }
        } else {
            out.maybe_left.insert(change.user_id.clone());
        }
    }
    out
}

/// Settles the candidates against who shares a room with the user now:
/// only those who do are `changed` by a membership, only those who do not
/// are `left`. Key changes (already limited to co-members) are `changed`.
pub(crate) fn settle(
    user_id: &str,
    mut candidates: Candidates,
    key_changed: impl IntoIterator<Item = String>,
    sharing: &HashSet<String>,
) -> DeviceLists {
    candidates.maybe_changed.remove(user_id);
    candidates.maybe_left.remove(user_id);
    let mut lists = DeviceLists::default();
    for user in candidates.maybe_left {
        if !sharing.contains(&user) {
            lists.left.insert(user);
        }
    }
    for user in candidates.maybe_changed {
        if sharing.contains(&user) {
            lists.started_sharing.insert(user.clone());
            lists.changed.insert(user);
        }
    }
    for user in key_changed {
        if !lists.left.contains(&user) {
            lists.changed.insert(user);
        }
    }
    lists
}

/// The device list changes between `since` and `current` for `user_id`,
/// whose rooms are `memberships`.
pub(crate) async fn between(
    service: &SyncService,
    user_id: &str,
    memberships: &[Membership],
    since: &SyncToken,
    current: &SyncToken,
) -> Result<DeviceLists, MatrixError> {
    let rooms: HashMap<&str, (&str, u32)> = memberships
        .iter()
        .map(|m| (m.room_id.as_str(), (m.membership.as_str(), m.partition)))
        .collect();
    let in_window = |stream: Stream, at: At| {
        at.offset >= since.stream_offset(stream, at.partition)
            && at.offset < current.stream_offset(stream, at.partition)
    };
    let changes = service
        .storage
        .member_changes_for(user_id, since.lowest(Stream::Room))
        .await?;
    let mut candidates = candidates(user_id, &rooms, &changes, |partition, offset| {
        in_window(Stream::Room, At { partition, offset })
    });
    // Only a stream that moved past the token can hold changes for it.
    let key_changed: Vec<String> = if current.moved_past(since, Stream::KeyChanges) {
        service
            .storage
            .key_changes_for(user_id, since.lowest(Stream::KeyChanges))
            .await?
            .into_iter()
            .filter(|(_, at)| in_window(Stream::KeyChanges, *at))
            .map(|(user, _)| user)
            .collect()
    } else {
        Vec::new()
    };
    for room_id in std::mem::take(&mut candidates.rooms_joined) {
        candidates
            .maybe_changed
            .extend(joined_members(service, &room_id).await?);
    }
    for room_id in std::mem::take(&mut candidates.rooms_left) {
        candidates
            .maybe_left
            .extend(joined_members(service, &room_id).await?);
    }
    let sharing = if candidates.maybe_changed.is_empty() && candidates.maybe_left.is_empty() {
        HashSet::new()
    } else {
        service.storage.users_sharing_a_room(user_id).await?
    };
    Ok(settle(user_id, candidates, key_changed, &sharing))
}

async fn joined_members(service: &SyncService, room_id: &str) -> Result<Vec<String>, MatrixError> {
    Ok(service
        .storage
        .members(room_id)
        .await?
        .into_iter()
        .filter(|(_, membership, _)| membership == "join")
        .map(|(user, _, _)| user)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(room: &str, user: &str, membership: &str, offset: u64) -> MemberChange {
        MemberChange {
            room_id: room.into(),
            user_id: user.into(),
            membership: Some(membership.into()),
            offset,
        }
    }

    fn set(users: &[&str]) -> HashSet<String> {
        users.iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn joins_and_leaves_in_the_window_become_candidates() {
        let rooms = HashMap::from([
            ("!a", ("join", 0)),
            ("!b", ("leave", 1)),
            ("!c", ("join", 1)),
        ]);
        let changes = [
            // Before the window: ignored.
            change("!a", "@old", "join", 1),
            change("!a", "@bob", "join", 5),
            change("!a", "@carol", "leave", 6),
            // The user left !b in the window.
            change("!b", "@me", "join", 4),
            change("!b", "@me", "leave", 7),
            // The user joined !c in the window.
            change("!c", "@me", "join", 8),
            // Not one of the user's rooms.
            change("!z", "@zed", "join", 9),
        ];
        let candidates = candidates("@me", &rooms, &changes, |_, offset| offset >= 3);
        assert_eq!(candidates.maybe_changed, set(&["@bob"]));
        assert_eq!(candidates.maybe_left, set(&["@carol"]));
        assert_eq!(candidates.rooms_joined, ["!c"]);
        assert_eq!(candidates.rooms_left, ["!b"]);
    }

    #[test]
    fn a_join_into_a_room_the_user_left_does_not_count() {
        let rooms = HashMap::from([("!a", ("leave", 0))]);
        let changes = [change("!a", "@bob", "join", 5)];
        let candidates = candidates("@me", &rooms, &changes, |_, _| true);
        assert!(candidates.maybe_changed.is_empty());
    }

    #[test]
    fn settling_keeps_only_who_shares_or_stopped_sharing() {
        let candidates = Candidates {
            maybe_changed: set(&["@bob", "@gone", "@me"]),
            maybe_left: set(&["@carol", "@dave", "@me"]),
            ..Default::default()
        };
        // @dave still shares another room; @gone joined and left again.
        let sharing = set(&["@bob", "@dave", "@me"]);
        let lists = settle(
            "@me",
            candidates,
            ["@me".to_owned(), "@erin".to_owned(), "@carol".to_owned()],
            &sharing,
        );
        assert_eq!(
            lists.changed.into_iter().collect::<Vec<_>>(),
            ["@bob", "@erin", "@me"]
        );
        assert_eq!(lists.left.into_iter().collect::<Vec<_>>(), ["@carol"]);
    }
}
