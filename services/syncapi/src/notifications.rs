//! Notification and highlight counts. Each consumed event is run through
//! the push rules of every local member it may notify (their
//! `m.push_rules` account data on top of the server's defaults); the ones
//! that notify are stored per user, and a receipt removes what it covers.
//! A response counts what is left, per room and, when asked, per thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ganglion_base::push_rules;
use ruma::push::Ruleset;

use crate::storage::{NotificationCount, Storage, StorageError};

/// Whom an event notifies, and how.
pub(crate) type Notified = Vec<push_rules::Notification>;

/// The most users whose changed rules are kept in memory; past it the
/// cache starts again (rules are read back from the database as needed).
const CACHED_RULESETS: usize = 4096;
/// The most users remembered as keeping the server's defaults.
const CACHED_USERS: usize = 100_000;

/// The push rules users changed, as this syncapi consumed them: read from
/// its database when first needed, forgotten when a change is consumed.
/// Users on the server's defaults are remembered as such, without a
/// ruleset, so memory grows with the users who changed a rule.
#[derive(Default)]
pub(crate) struct RulesCache {
    inner: Mutex<CachedRules>,
}

#[derive(Default)]
struct CachedRules {
    /// A user's changed rules, or `None`: the server's defaults.
    users: HashMap<String, Option<Arc<Ruleset>>>,
    rulesets: usize,
    /// Bumped by every change consumed, so a read that raced one is not
    /// kept.
    generation: u64,
}

impl RulesCache {
    /// The changed rules of those of `users` who changed any.
    pub(crate) async fn custom(
        &self,
        storage: &Storage,
        users: &[String],
    ) -> Result<HashMap<String, Arc<Ruleset>>, StorageError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        let generation = {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            for user in users {
                match inner.users.get(user) {
                    Some(Some(rules)) => {
                        found.insert(user.clone(), rules.clone());
                    }
                    Some(None) => {}
                    None => missing.push(user),
                }
            }
            inner.generation
        };
        for user in missing {
            let stored = storage
                .account_data_of(user, "", push_rules::ACCOUNT_DATA_TYPE)
                .await?;
            let rules = stored.and_then(|json| {
                let user_id = ruma::UserId::parse(user).ok()?;
                Some(Arc::new(push_rules::effective(&user_id, Some(&json))))
            });
            if let Some(rules) = &rules {
                found.insert(user.clone(), rules.clone());
            }
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if inner.generation != generation {
                continue;
            }
            if inner.users.len() >= CACHED_USERS || inner.rulesets >= CACHED_RULESETS {
                inner.users.clear();
                inner.rulesets = 0;
            }
            inner.rulesets += usize::from(rules.is_some());
            inner.users.insert(user.clone(), rules);
        }
        Ok(found)
    }

    /// A user's rules changed: read them again when next needed.
    pub(crate) fn forget(&self, user_id: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.generation += 1;
        if let Some(Some(_)) = inner.users.remove(user_id) {
            inner.rulesets -= 1;
        }
    }
}

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
