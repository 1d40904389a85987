//! Wakes the long-polling `/sync` requests of the users a consumed record
//! concerns, and no one else: a new room event wakes the room's joined
//! members (before and after it) and the target of a membership change;
//! typing and receipts wake the room's members; presence wakes everyone
//! who shares a room with the user; to-device and account data wake the
//! user alone.
//!
//! Each waiting user has a counter in a `watch` channel: a request
//! subscribes before it reads, so a change committed while it builds its
//! answer still wakes it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::watch;

#[derive(Default)]
pub(crate) struct Notifier {
    /// Users with a request waiting (or about to wait).
    waiting: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// The joined members of each room, as consumed.
    joined: Mutex<HashMap<String, HashSet<String>>>,
}

impl Notifier {
    /// Starts with the joined members as stored.
    pub(crate) fn new(joined: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut rooms: HashMap<String, HashSet<String>> = HashMap::new();
        for (room_id, user_id) in joined {
            rooms.entry(room_id).or_default().insert(user_id);
        }
        Notifier {
            waiting: Mutex::default(),
            joined: Mutex::new(rooms),
        }
    }

    /// A receiver that changes whenever something for `user_id` is consumed.
    pub(crate) fn subscribe(&self, user_id: &str) -> watch::Receiver<u64> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        // Forget users nobody waits for any more.
        if waiting.len() > 1024 {
            waiting.retain(|_, sender| sender.receiver_count() > 0);
        }
        waiting
            .entry(user_id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    pub(crate) fn wake_users<'a>(&self, users: impl IntoIterator<Item = &'a str>) {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let mut woken = 0;
        for user in users {
            if let Some(sender) = waiting.get(user) {
                sender.send_modify(|n| *n = n.wrapping_add(1));
                woken += sender.receiver_count() as u64;
            }
        }
        crate::internal_events::SYNC_WAKEUPS
            .with_label_values::<&str>(&[])
            .inc_by(woken);
    }

    /// Wakes the room's joined members (and `also`, the target of a
    /// membership change), after applying that change to the members.
    pub(crate) fn room_event(&self, room_id: &str, membership: Option<(&str, &str)>) {
        let members: Vec<String> = {
            let mut joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
            let room = joined.entry(room_id.to_owned()).or_default();
            let mut members: Vec<String> = room.iter().cloned().collect();
            if let Some((user, membership)) = membership {
                if membership == "join" {
                    room.insert(user.to_owned());
                } else {
                    room.remove(user);
                }
                members.push(user.to_owned());
            }
            members
        };
        self.wake_users(members.iter().map(String::as_str));
    }

    /// Wakes the room's joined members.
    pub(crate) fn room_members(&self, room_id: &str) {
        let members: Vec<String> = {
            let joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
            joined
                .get(room_id)
                .map(|m| m.iter().cloned().collect())
                .unwrap_or_default()
        };
        self.wake_users(members.iter().map(String::as_str));
    }

    /// Wakes everyone who shares a room with `user_id`, and the user.
    pub(crate) fn co_members(&self, user_id: &str) {
        let mut users: HashSet<String> = HashSet::from([user_id.to_owned()]);
        {
            let joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
            for members in joined.values() {
                if members.contains(user_id) {
                    users.extend(members.iter().cloned());
                }
            }
        }
        self.wake_users(users.iter().map(String::as_str));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_only_the_users_concerned() {
        let notifier = Notifier::new([("!a".to_owned(), "@alice".to_owned())]);
        let alice = notifier.subscribe("@alice");
        let bob = notifier.subscribe("@bob");
        let carol = notifier.subscribe("@carol");
        notifier.room_event("!a", Some(("@bob", "invite")));
        assert!(alice.has_changed().unwrap_or(false));
        assert!(bob.has_changed().unwrap_or(false));
        assert!(!carol.has_changed().unwrap_or(true));

        let mut alice = notifier.subscribe("@alice");
        let bob = notifier.subscribe("@bob");
        notifier.room_event("!a", Some(("@bob", "join")));
        notifier.room_members("!b");
        assert!(alice.has_changed().unwrap_or(false));
        alice.mark_unchanged();
        let carol = notifier.subscribe("@carol");
        notifier.co_members("@bob");
        assert!(alice.has_changed().unwrap_or(false));
        assert!(bob.has_changed().unwrap_or(false));
        assert!(!carol.has_changed().unwrap_or(true));
    }
}
