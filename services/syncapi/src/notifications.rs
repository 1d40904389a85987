//! Notification and highlight counts. Each consumed event is run through
//! the push rules of every local member it may notify (their
//! `m.push_rules` account data on top of the server's defaults); the ones
//! that notify are stored per user, and a receipt removes what it covers.
//! A response counts what is left, per room and, when asked, per thread.

use std::collections::HashMap;

use ganglion_base::push_rules;

use crate::storage::NotificationCount;

/// Whom an event notifies, and how.
pub(crate) type Notified = Vec<push_rules::Notification>;

/// Counts for one room: (notifications, highlights) overall, in the main
/// timeline, and per thread.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) total: (u64, u64),
    pub(crate) main: (u64, u64),
    pub(crate) threads: HashMap<String, (u64, u64)>,
}

/// Counts per room from a user's unread notifications per room and thread.
pub(crate) fn count(rows: Vec<NotificationCount>) -> HashMap<String, Counts> {
    let mut rooms: HashMap<String, Counts> = HashMap::new();
    for row in rows {
        let counts = rooms.entry(row.room_id).or_default();
        let add = |slot: &mut (u64, u64)| {
            slot.0 += row.notifications;
            slot.1 += row.highlights;
        };
        add(&mut counts.total);
        if row.thread_id == "main" {
            add(&mut counts.main);
        } else {
            add(counts.threads.entry(row.thread_id).or_default());
        }
    }
    rooms
}

#[cfg(test)]
mod count_tests {
    use super::*;

    #[test]
    fn counts_per_room_and_thread() {
        let row =
            |room: &str, thread: &str, notifications: u64, highlights: u64| NotificationCount {
                room_id: room.to_owned(),
                thread_id: thread.to_owned(),
                notifications,
                highlights,
            };
        let counts = count(vec![
            row("!a", "main", 2, 1),
            row("!a", "$root", 1, 1),
            row("!b", "main", 1, 0),
        ]);
        let a = &counts["!a"];
        assert_eq!((a.total, a.main), ((3, 2), (2, 1)));
        assert_eq!(a.threads["$root"], (1, 1));
        assert_eq!(counts["!b"].total, (1, 0));
    }
}
