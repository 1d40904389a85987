//! What the syncapi reads of users' account data on its hot paths, kept
//! in memory: their push rules (for notification counts) and the users
//! they ignore (`m.ignored_user_list`: hidden from their timelines and
//! invites, and never notifying them). Read from the syncapi's own copy
//! of the account data when first needed, forgotten when a change of it
//! is consumed. A user with nothing stored is remembered as such, without
//! a value, so memory grows with the users who set something.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ganglion_base::push_rules;
use ruma::push::Ruleset;

use crate::storage::{Storage, StorageError};

/// The account data type of the users a user ignores.
pub(crate) const IGNORED_USER_LIST: &str = "m.ignored_user_list";

/// The most users with a value kept; past it the cache starts again.
const CACHED_VALUES: usize = 4096;
/// The most users remembered at all.
const CACHED_USERS: usize = 100_000;

/// One kind of per-user setting read from one global account data type.
pub(crate) struct SettingCache<T> {
    data_type: &'static str,
    /// The value of what is stored (`None`: nothing worth keeping).
    parse: fn(&str, &str) -> Option<T>,
    inner: Mutex<Cached<T>>,
}

struct Cached<T> {
    users: HashMap<String, Option<Arc<T>>>,
    values: usize,
    /// Bumped by every change consumed, so a read that raced one is not
    /// kept.
    generation: u64,
}

impl<T> SettingCache<T> {
    pub(crate) fn new(data_type: &'static str, parse: fn(&str, &str) -> Option<T>) -> Self {
        SettingCache {
            data_type,
            parse,
            inner: Mutex::new(Cached {
                users: HashMap::new(),
                values: 0,
                generation: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The values of those of `users` who have one.
    pub(crate) async fn of(
        &self,
        storage: &Storage,
        users: &[String],
    ) -> Result<HashMap<String, Arc<T>>, StorageError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        let generation = {
            let inner = self.lock();
            for user in users {
                match inner.users.get(user) {
                    Some(Some(value)) => {
                        found.insert(user.clone(), value.clone());
                    }
                    Some(None) => {}
                    None => missing.push(user),
                }
            }
            inner.generation
        };
        for user in missing {
            let stored = storage.account_data_of(user, "", self.data_type).await?;
            let value = stored
                .and_then(|json| (self.parse)(user, &json))
                .map(Arc::new);
            if let Some(value) = &value {
                found.insert(user.clone(), value.clone());
            }
            let mut inner = self.lock();
            if inner.generation != generation {
                continue;
            }
            if inner.users.len() >= CACHED_USERS || inner.values >= CACHED_VALUES {
                inner.users.clear();
                inner.values = 0;
            }
            inner.values += usize::from(value.is_some());
            inner.users.insert(user.clone(), value);
        }
        Ok(found)
    }

    /// One user's value, if they have one.
    pub(crate) async fn of_user(
        &self,
        storage: &Storage,
        user_id: &str,
    ) -> Result<Option<Arc<T>>, StorageError> {
        Ok(self
            .of(storage, &[user_id.to_owned()])
            .await?
            .remove(user_id))
    }

    /// A change of `data_type` was consumed: a user's value is read again
    /// when next needed.
    pub(crate) fn consumed(&self, user_id: &str, data_type: &str) {
        if data_type != self.data_type {
            return;
        }
        let mut inner = self.lock();
        inner.generation += 1;
        if let Some(Some(_)) = inner.users.remove(user_id) {
            inner.values -= 1;
        }
    }
}

/// A user's push rules, when they changed any.
pub(crate) fn push_rules() -> SettingCache<Ruleset> {
    SettingCache::new(push_rules::ACCOUNT_DATA_TYPE, |user, json| {
        let user_id = ruma::UserId::parse(user).ok()?;
        Some(push_rules::effective(&user_id, Some(json)))
    })
}

/// The users a user ignores, when there are any.
pub(crate) fn ignored_users() -> SettingCache<HashSet<String>> {
    SettingCache::new(IGNORED_USER_LIST, |_, json| {
        let content: serde_json::Value = serde_json::from_str(json).ok()?;
        let ignored: HashSet<String> = content["ignored_users"]
            .as_object()?
            .keys()
            .cloned()
            .collect();
        (!ignored.is_empty()).then_some(ignored)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_users_are_read_from_the_account_data() {
        let parse = ignored_users().parse;
        let ignored =
            parse("@a:x", r#"{"ignored_users": {"@b:x": {}, "@c:x": {}}}"#).expect("some");
        assert!(ignored.contains("@b:x") && ignored.contains("@c:x"));
        assert!(parse("@a:x", r#"{"ignored_users": {}}"#).is_none());
        assert!(parse("@a:x", r#"{"ignored_users": ["@b:x"]}"#).is_none());
        assert!(parse("@a:x", "not json").is_none());
    }
}
