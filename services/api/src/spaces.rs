//! Spaces: which `m.space.child` events count, the order children are
//! shown in, and how a room of a space hierarchy is spelled, for the
//! roomserver (which summarises its rooms), the clientapi (which walks a
//! space) and the federationapi (which answers other servers' walks). A
//! summary received from another server is read here too, field by field:
//! nothing it holds goes further unchecked.

use ganglion_base::limits;
use serde_json::{Value, json};

use crate::proto::roomserver as pb;

/// The most rooms one `QueryRoomSummaries` request asks about.
pub const MAX_SUMMARIES: usize = 100;
/// The most children of one space a hierarchy looks at (the rest of a
/// larger space are left out, in the order below).
pub const MAX_CHILDREN: usize = 100;
/// The most rooms a restricted join rule lists that a summary keeps.
const MAX_ALLOWED_ROOMS: usize = 50;
/// The longest `order` that counts (the spec's limit).
const MAX_ORDER_LEN: usize = 50;

/// The room type of a space.
pub const SPACE: &str = "m.space";

/// One `m.space.child` edge of a space, as the hierarchy uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    pub room_id: String,
    /// The servers to ask about the room (never empty).
    pub via: Vec<String>,
    /// A valid `order` (printable ASCII, at most 50 characters).
    pub order: Option<String>,
    pub suggested: bool,
    pub origin_server_ts: i64,
}

impl Child {
    /// The edge an `m.space.child` state event makes, if it makes one: its
    /// state key a room ID and its `via` a non-empty list of server names
    /// (a child without one has been removed from the space).
    pub fn of_event(state_key: &str, content: &Value, origin_server_ts: i64) -> Option<Child> {
        limits::room_id(state_key).ok()?;
        let via = content.get("via")?.as_array()?;
        if via.is_empty() {
            return None;
        }
        let via = via
            .iter()
            .map(|server| {
                let server = server.as_str()?;
                limits::server_name(server).ok()?;
                Some(server.to_owned())
            })
            .collect::<Option<Vec<String>>>()?;
        let order = content
            .get("order")
            .and_then(Value::as_str)
            .filter(|order| {
                order.len() <= MAX_ORDER_LEN && order.bytes().all(|b| (0x20..=0x7e).contains(&b))
            })
            .map(str::to_owned);
        Some(Child {
            room_id: state_key.to_owned(),
            via,
            order,
            suggested: content.get("suggested") == Some(&Value::Bool(true)),
            origin_server_ts,
        })
    }

    /// The edge a stripped child event (as `children_state` holds it) makes.
    pub fn of_stripped(event: &Value) -> Option<Child> {
        if event.get("type")?.as_str()? != "m.space.child" {
            return None;
        }
        Child::of_event(
            event.get("state_key")?.as_str()?,
            event.get("content")?,
            event.get("origin_server_ts")?.as_i64()?,
        )
    }
}

/// The spec's order of a space's children: those with a valid `order`
/// first, by it; then by the child event's timestamp; ties by room ID.
pub fn child_order(a: &Child, b: &Child) -> std::cmp::Ordering {
    let by_order = match (&a.order, &b.order) {
        (Some(a), Some(b)) => a.cmp(b),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    };
    by_order
        .then(a.origin_server_ts.cmp(&b.origin_server_ts))
        .then_with(|| a.room_id.cmp(&b.room_id))
}

/// Puts a space's children in the spec's order ([`child_order`]).
pub fn order_children(children: &mut [Child]) {
    children.sort_by(child_order);
}

/// The children of a summarised room, in order and at most
/// [`MAX_CHILDREN`], suggested ones only if asked.
pub fn children_of(summary: &pb::RoomSummary, suggested_only: bool) -> Vec<Child> {
    let mut children: Vec<Child> = summary
        .children_state
        .iter()
        .filter_map(|json| serde_json::from_slice::<Value>(json).ok())
        .filter_map(|event| Child::of_stripped(&event))
        .filter(|child| child.suggested || !suggested_only)
        .collect();
    order_children(&mut children);
    children.dedup_by(|a, b| a.room_id == b.room_id);
    children.truncate(MAX_CHILDREN);
    children
}

/// Whether a summarised room is a space.
pub fn is_space(summary: &pb::RoomSummary) -> bool {
    summary
        .room
        .as_ref()
        .and_then(|room| room.room_type.as_deref())
        == Some(SPACE)
}

/// A room of a hierarchy as the client API spells it
/// (`SpaceHierarchyRoomsChunk`) or, with `allowed_room_ids`, as the
/// federation API does (`SpaceHierarchyParentRoom` and its children).
pub fn room_json(summary: &pb::RoomSummary, for_federation: bool) -> Value {
    let mut entry =
        crate::roomserver::public_room_json(summary.room.clone().unwrap_or_else(|| {
            pb::PublicRoom {
                room_id: summary.room_id.clone(),
                join_rule: "invite".into(),
                ..Default::default()
            }
        }));
    let children: Vec<Value> = summary
        .children_state
        .iter()
        .filter_map(|json| serde_json::from_slice(json).ok())
        .collect();
    entry["children_state"] = Value::Array(children);
    if for_federation {
        entry["allowed_room_ids"] = json!(summary.allowed_room_ids);
    }
    entry
}

/// A stripped `m.space.child` event as `children_state` holds it.
pub fn stripped_child(state_key: &str, sender: &str, content: &Value, ts: i64) -> Value {
    json!({
        "type": "m.space.child",
        "state_key": state_key,
        "sender": sender,
        "content": content,
        "origin_server_ts": ts,
    })
}

/// A room summary another server sent (`room` or one of `children` of its
/// `/hierarchy` answer), keeping only well-formed fields: a room ID that
/// is one, strings where strings belong, valid child events, room IDs in
/// `allowed_room_ids`. `None` if the entry has no valid room ID. Whether
/// the asking user may see the room is left to the caller.
pub fn summary_from_remote(entry: &Value) -> Option<pb::RoomSummary> {
    let room_id = entry.get("room_id")?.as_str()?;
    limits::room_id(room_id).ok()?;
    let text = |field: &str| {
        entry
            .get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let flag = |field: &str| entry.get(field).and_then(Value::as_bool).unwrap_or(false);
    let room = pb::PublicRoom {
        room_id: room_id.to_owned(),
        name: text("name"),
        topic: text("topic"),
        canonical_alias: text("canonical_alias").filter(|alias| limits::room_alias(alias).is_ok()),
        avatar_url: text("avatar_url"),
        num_joined_members: entry
            .get("num_joined_members")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        world_readable: flag("world_readable"),
        guest_can_join: flag("guest_can_join"),
        // Absent, the spec reads it as public.
        join_rule: text("join_rule").unwrap_or_else(|| "public".into()),
        room_type: text("room_type"),
    };
    let children_state = if room.room_type.as_deref() == Some(SPACE) {
        entry
            .get("children_state")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|event| {
                let child = Child::of_stripped(event)?;
                let sender = event.get("sender")?.as_str()?;
                limits::user_id(sender).ok()?;
                let child_json = stripped_child(
                    &child.room_id,
                    sender,
                    event.get("content")?,
                    child.origin_server_ts,
                );
                serde_json::to_vec(&child_json).ok()
            })
            .take(MAX_CHILDREN)
            .collect()
    } else {
        Vec::new()
    };
    let allowed_room_ids = entry
        .get("allowed_room_ids")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|id| limits::room_id(id).is_ok())
        .take(MAX_ALLOWED_ROOMS)
        .map(str::to_owned)
        .collect();
    Some(pb::RoomSummary {
        room_id: room_id.to_owned(),
        known: true,
        accessible: true,
        room: Some(room),
        children_state,
        allowed_room_ids,
    })
}

/// The rooms whose members a join rule lets in (`restricted` and
/// `knock_restricted`: its `allow` list's `m.room_membership` entries).
pub fn allowed_rooms(join_rules_content: &Value) -> Vec<String> {
    let restricted = matches!(
        join_rules_content.get("join_rule").and_then(Value::as_str),
        Some("restricted" | "knock_restricted")
    );
    if !restricted {
        return Vec::new();
    }
    join_rules_content
        .get("allow")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|rule| rule.get("type").and_then(Value::as_str) == Some("m.room_membership"))
        .filter_map(|rule| rule.get("room_id").and_then(Value::as_str))
        .filter(|id| limits::room_id(id).is_ok())
        .take(MAX_ALLOWED_ROOMS)
        .map(str::to_owned)
        .collect()
}

/// Whether anyone may see a room by its join rule and history visibility
/// alone: it is public, takes knocks, or its history is world-readable.
pub fn open_to_all(join_rule: &str, world_readable: bool) -> bool {
    world_readable || matches!(join_rule, "public" | "knock" | "knock_restricted")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(room: &str, order: Option<&str>, ts: i64) -> Child {
        let mut content = json!({"via": ["example.org"]});
        if let Some(order) = order {
            content["order"] = json!(order);
        }
        Child::of_event(room, &content, ts).expect("valid child")
    }

    #[test]
    fn children_are_ordered_as_the_spec_example() {
        let mut children = vec![
            child("!b:example.org", Some(" "), 1640341000000),
            child("!a:example.org", Some("aaaa"), 1640141000000),
            child("!c:example.org", Some("first"), 1640841000000),
            child("!e:example.org", None, 1640641000000),
            child("!d:example.org", None, 1640741000000),
        ];
        children.reverse();
        order_children(&mut children);
        let ids: Vec<&str> = children.iter().map(|c| c.room_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "!b:example.org",
                "!a:example.org",
                "!c:example.org",
                "!e:example.org",
                "!d:example.org"
            ]
        );
    }

    #[test]
    fn ties_go_by_timestamp_then_room_id_and_bad_orders_do_not_count() {
        let too_long = "x".repeat(51);
        let mut children = vec![
            child("!z:example.org", Some("same"), 5),
            child("!y:example.org", Some("same"), 5),
            child("!x:example.org", Some("same"), 1),
            child("!w:example.org", Some(&too_long), 0),
            child("!v:example.org", Some("tab\there"), 0),
        ];
        order_children(&mut children);
        let ids: Vec<&str> = children.iter().map(|c| c.room_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "!x:example.org",
                "!y:example.org",
                "!z:example.org",
                "!v:example.org",
                "!w:example.org"
            ]
        );
    }

    #[test]
    fn a_child_needs_a_room_id_and_a_via_of_server_names() {
        let ok = json!({"via": ["example.org"], "suggested": true});
        assert!(Child::of_event("!a:example.org", &ok, 0).unwrap().suggested);
        assert!(Child::of_event("not-a-room", &ok, 0).is_none());
        for content in [
            json!({}),
            json!({"via": []}),
            json!({"via": "example.org"}),
            json!({"via": [1]}),
            json!({"via": ["bad server name!"]}),
        ] {
            assert!(
                Child::of_event("!a:example.org", &content, 0).is_none(),
                "{content}"
            );
        }
        assert!(
            !Child::of_event(
                "!a:example.org",
                &json!({"via": ["a.org"], "suggested": "yes"}),
                0
            )
            .unwrap()
            .suggested
        );
    }

    #[test]
    fn a_remote_summary_keeps_only_what_is_well_formed() {
        let entry = json!({
            "room_id": "!space:remote.org",
            "name": "Space",
            "topic": 7,
            "canonical_alias": "not an alias",
            "num_joined_members": -3,
            "world_readable": "yes",
            "room_type": "m.space",
            "allowed_room_ids": ["!ok:remote.org", "bad", 5],
            "children_state": [
                {"type": "m.space.child", "state_key": "!a:remote.org", "sender": "@u:remote.org",
                 "content": {"via": ["remote.org"]}, "origin_server_ts": 3, "extra": "dropped"},
                {"type": "m.space.child", "state_key": "!b:remote.org", "sender": "@u:remote.org",
                 "content": {}, "origin_server_ts": 3},
                {"type": "m.room.name", "state_key": "!c:remote.org", "sender": "@u:remote.org",
                 "content": {"via": ["remote.org"]}, "origin_server_ts": 3},
                "not an event"
            ]
        });
        let summary = summary_from_remote(&entry).expect("summary");
        let room = summary.room.clone().unwrap();
        assert_eq!(room.name.as_deref(), Some("Space"));
        assert_eq!(room.topic, None);
        assert_eq!(room.canonical_alias, None);
        assert_eq!(room.num_joined_members, 0);
        assert!(!room.world_readable);
        assert_eq!(room.join_rule, "public");
        assert_eq!(summary.allowed_room_ids, ["!ok:remote.org"]);
        assert_eq!(summary.children_state.len(), 1);
        let kept: Value = serde_json::from_slice(&summary.children_state[0]).unwrap();
        assert!(kept.get("extra").is_none(), "{kept}");
        assert!(summary_from_remote(&json!({"room_id": "nope"})).is_none());
        assert!(summary_from_remote(&json!({"name": "no id"})).is_none());
    }

    #[test]
    fn restricted_rules_name_the_rooms_they_allow() {
        let rule = json!({"join_rule": "restricted", "allow": [
            {"type": "m.room_membership", "room_id": "!a:x.org"},
            {"type": "other", "room_id": "!b:x.org"},
            {"type": "m.room_membership", "room_id": "bad"}
        ]});
        assert_eq!(allowed_rooms(&rule), ["!a:x.org"]);
        assert!(allowed_rooms(&json!({"join_rule": "public", "allow": rule["allow"]})).is_empty());
    }
}
