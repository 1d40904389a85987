//! Notification and highlight counts. Each consumed event is run through
//! the push rules of every local member it may notify (the spec's default
//! ruleset until the push rules API exists); the ones that notify are
//! stored per user, and a receipt removes what it covers. A response
//! counts what is left, per room and, when asked, per thread.

use std::collections::HashMap;

use ruma::events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent};
use ruma::push::{PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedUserId, RoomVersionId, UInt};
use serde_json::Value;

use crate::storage::NotificationCount;

/// An event that notifies a user: (user, highlight).
pub(crate) type Notified = Vec<(String, bool)>;

/// The room's power levels as push rules see them (who may notify
/// `@room`), from its `m.room.create` and `m.room.power_levels` events:
/// the room version decides the rules, and from v12 the creators' power.
pub(crate) fn power_levels_context(
    create_json: Option<&str>,
    power_levels_json: Option<&str>,
) -> Option<PushConditionPowerLevelsCtx> {
    let create: Value = serde_json::from_str(create_json?).ok()?;
    let version = create["content"]["room_version"].as_str().unwrap_or("1");
    let rules = RoomVersionId::try_from(version).ok()?.rules()?;
    let mut creators = vec![OwnedUserId::try_from(create["sender"].as_str()?).ok()?];
    creators.extend(
        create["content"]["additional_creators"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|user| OwnedUserId::try_from(user.as_str()?).ok()),
    );
    let content: Option<RoomPowerLevelsEventContent> = power_levels_json
        .and_then(|json| serde_json::from_str::<Value>(json).ok())
        .and_then(|event| serde_json::from_value(event["content"].clone()).ok());
    let levels = RoomPowerLevels::new(content.into(), &rules.authorization, creators);
    Some(levels.into())
}

/// Who among `members` (local users) the event notifies, and whether it
/// highlights them. The spec's current default rules match intentional
/// mentions (`m.mentions`), not display names, so none is looked up;
/// `power_levels` decides whether the sender may mention `@room`.
pub(crate) async fn evaluate(
    event_json: &str,
    room_id: &str,
    member_count: usize,
    members: &[String],
    power_levels: Option<PushConditionPowerLevelsCtx>,
) -> Notified {
    let (Ok(room_id), Ok(raw)) = (
        OwnedRoomId::try_from(room_id),
        serde_json::from_str::<Raw<Value>>(event_json),
    ) else {
        return Vec::new();
    };
    let count = UInt::try_from(member_count as u64).unwrap_or_default();
    let mut notified = Vec::new();
    for user_id in members {
        let Ok(user) = OwnedUserId::try_from(user_id.as_str()) else {
            continue;
        };
        let rules = Ruleset::server_default(&user);
        let mut context =
            PushConditionRoomCtx::new(room_id.clone(), count, user.clone(), String::new());
        context.power_levels = power_levels.clone();
        let actions = rules.get_actions(&raw, &context).await;
        if actions.iter().any(|a| a.should_notify()) {
            notified.push((user_id.clone(), actions.iter().any(|a| a.is_highlight())));
        }
    }
    notified
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
mod tests {
    use super::*;

    #[tokio::test]
    async fn default_rules_notify_and_highlight() {
        let members = vec!["@alice:hs".to_owned(), "@bob:hs".to_owned()];
        let message = |body: &str, mentions: &[&str]| {
            serde_json::json!({
                "type": "m.room.message", "sender": "@alice:hs", "room_id": "!r:hs",
                "event_id": "$e", "origin_server_ts": 1,
                "content": {"msgtype": "m.text", "body": body,
                            "m.mentions": {"user_ids": mentions}},
            })
            .to_string()
        };
        // A message in a busy room notifies everyone but its sender.
        assert_eq!(
            evaluate(&message("hello", &[]), "!r:hs", 3, &members, None).await,
            vec![("@bob:hs".to_owned(), false)]
        );
        // An intentional mention highlights.
        assert_eq!(
            evaluate(
                &message("hi Bob, look", &["@bob:hs"]),
                "!r:hs",
                3,
                &members,
                None
            )
            .await,
            vec![("@bob:hs".to_owned(), true)]
        );
        // Notices do not notify.
        let notice = serde_json::json!({
            "type": "m.room.message", "sender": "@alice:hs", "room_id": "!r:hs",
            "event_id": "$n", "origin_server_ts": 1,
            "content": {"msgtype": "m.notice", "body": "bot says"},
        })
        .to_string();
        assert_eq!(evaluate(&notice, "!r:hs", 3, &members, None).await, vec![]);
    }

    #[tokio::test]
    async fn room_mentions_need_the_power_to_notify_the_room() {
        let members = vec!["@bob:hs".to_owned()];
        let create = |version: &str| {
            serde_json::json!({"type": "m.room.create", "sender": "@alice:hs", "state_key": "",
                               "content": {"room_version": version}})
            .to_string()
        };
        let levels = serde_json::json!({"type": "m.room.power_levels", "state_key": "",
            "content": {"users": {"@alice:hs": 100}, "users_default": 0}})
        .to_string();
        let mention = |sender: &str| {
            serde_json::json!({
                "type": "m.room.message", "sender": sender, "room_id": "!r:hs",
                "event_id": "$m", "origin_server_ts": 1,
                "content": {"msgtype": "m.text", "body": "everyone!", "m.mentions": {"room": true}},
            })
            .to_string()
        };
        let context = power_levels_context(Some(&create("10")), Some(&levels));
        assert!(context.is_some());
        // The room's admin may: a highlight. Someone at level 0 may not.
        assert_eq!(
            evaluate(&mention("@alice:hs"), "!r:hs", 3, &members, context.clone()).await,
            vec![("@bob:hs".to_owned(), true)]
        );
        let others = vec!["@alice:hs".to_owned()];
        assert_eq!(
            evaluate(&mention("@carol:hs"), "!r:hs", 3, &others, context).await,
            vec![("@alice:hs".to_owned(), false)]
        );
        // In v12 the creator may, without a power levels event.
        let v12 = power_levels_context(Some(&create("12")), None);
        assert_eq!(
            evaluate(&mention("@alice:hs"), "!r:hs", 3, &members, v12).await,
            vec![("@bob:hs".to_owned(), true)]
        );
        assert!(power_levels_context(None, Some(&levels)).is_none());
    }
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
