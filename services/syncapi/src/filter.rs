//! Filters (`/sync`, `/messages`): ruma's `FilterDefinition` read from the
//! client's JSON, and the pure functions that apply it to stored events and
//! to events in the client format.

use ruma::api::client::filter::{
    EventFormat, FilterDefinition, LazyLoadOptions, RoomEventFilter, UrlFilter,
};
use serde_json::{Map, Value};

use crate::storage::EventRow;

/// The timeline limit when a filter sets none.
pub(crate) const DEFAULT_TIMELINE_LIMIT: u32 = 10;
/// The largest timeline a filter may ask for.
const MAX_TIMELINE_LIMIT: u32 = 1_000;
/// The largest filter accepted, in bytes of JSON.
pub(crate) const MAX_FILTER_BYTES: usize = 64 * 1024;

/// Why a filter was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FilterError {
    #[error("filter is too large")]
    TooLarge,
    #[error("invalid filter: {0}")]
    Invalid(String),
}

/// A filter definition as the server applies it, with the users the
/// reader ignores.
#[derive(Debug, Clone, Default)]
pub(crate) struct SyncFilter {
    pub(crate) definition: FilterDefinition,
    /// The reader's ignored users: their events but state leave
    /// timelines, and their invites are not shown.
    pub(crate) ignored: Ignored,
}

/// The users a reader ignores (`m.ignored_user_list`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ignored(Option<std::sync::Arc<std::collections::HashSet<String>>>);

impl Ignored {
    pub(crate) fn new(users: Option<std::sync::Arc<std::collections::HashSet<String>>>) -> Self {
        Ignored(users)
    }

    /// Whether the event is hidden: not state, and sent by an ignored user.
    pub(crate) fn hides(&self, event: &EventRow) -> bool {
        event.state_key.is_none() && self.ignores(&event.sender)
    }

    pub(crate) fn ignores(&self, user_id: &str) -> bool {
        self.0.as_ref().is_some_and(|users| users.contains(user_id))
    }

    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|users| users.is_empty())
    }
}

impl SyncFilter {
    pub(crate) fn parse(json: &str) -> Result<SyncFilter, FilterError> {
        if json.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLarge);
        }
        let value: Value =
            serde_json::from_str(json).map_err(|e| FilterError::Invalid(e.to_string()))?;
        Self::from_value(value)
    }

    pub(crate) fn from_value(value: Value) -> Result<SyncFilter, FilterError> {
        if !value.is_object() {
            return Err(FilterError::Invalid("a filter is an object".into()));
        }
        // Zero is taken (as Synapse takes it, and clients send it for a
        // room list without timelines): an empty, limited timeline.
        if let Some(limit) = value.pointer("/room/timeline/limit")
            && !limit.is_null()
            && limit.as_u64().is_none()
        {
            return Err(FilterError::Invalid(
                "the timeline limit is a non-negative integer".into(),
            ));
        }
        let definition: FilterDefinition =
            serde_json::from_value(value).map_err(|e| FilterError::Invalid(e.to_string()))?;
        Ok(SyncFilter {
            definition,
            ignored: Ignored::default(),
        })
    }

    pub(crate) fn timeline_limit(&self) -> u32 {
        self.definition
            .room
            .timeline
            .limit
            .map(|l| u64::from(l).min(u64::from(MAX_TIMELINE_LIMIT)) as u32)
            .unwrap_or(DEFAULT_TIMELINE_LIMIT)
    }

    /// Whether a room is wanted at all (`room.rooms`, `room.not_rooms`).
    pub(crate) fn room_wanted(&self, room_id: &str) -> bool {
        let room = &self.definition.room;
        !room.not_rooms.iter().any(|r| r.as_str() == room_id)
            && room
                .rooms
                .as_ref()
                .is_none_or(|rooms| rooms.iter().any(|r| r.as_str() == room_id))
    }

    pub(crate) fn include_leave(&self) -> bool {
        self.definition.room.include_leave
    }

    /// Whether the timeline filter leaves events out by what they are
    /// (types, senders, URLs): a timeline then reads further back to fill
    /// its limit.
    pub(crate) fn timeline_is_selective(&self) -> bool {
        let f = &self.definition.room.timeline;
        f.types.is_some()
            || !f.not_types.is_empty()
            || f.senders.is_some()
            || !f.not_senders.is_empty()
            || f.url_filter.is_some()
            || !self.ignored.is_empty()
    }

    pub(crate) fn timeline_matches(&self, event: &EventRow) -> bool {
        !self.ignored.hides(event) && event_matches(&self.definition.room.timeline, event)
    }

    pub(crate) fn state_matches(&self, event: &EventRow) -> bool {
        event_matches(&self.definition.room.state, event)
    }

    /// Whether the presence of `sender` is wanted (`presence`).
    pub(crate) fn presence_matches(&self, sender: &str) -> bool {
        let f = &self.definition.presence;
        kind_matches(
            (f.types.as_deref(), &f.not_types),
            (f.senders.as_deref(), &f.not_senders),
            "m.presence",
            Some(sender),
        )
    }

    /// Whether global account data of a type is wanted (`account_data`).
    pub(crate) fn account_data_matches(&self, data_type: &str) -> bool {
        let f = &self.definition.account_data;
        kind_matches(
            (f.types.as_deref(), &f.not_types),
            (f.senders.as_deref(), &f.not_senders),
            data_type,
            None,
        )
    }

    /// Whether a room's ephemeral event of a type is wanted (`room.ephemeral`).
    pub(crate) fn ephemeral_matches(&self, room_id: &str, event_type: &str) -> bool {
        room_kind_matches(&self.definition.room.ephemeral, room_id, event_type)
    }

    /// Whether a room's account data of a type is wanted (`room.account_data`).
    pub(crate) fn room_account_data_matches(&self, room_id: &str, data_type: &str) -> bool {
        room_kind_matches(&self.definition.room.account_data, room_id, data_type)
    }

    /// Lazy-loading of members in `state`: `Some(include_redundant)`.
    pub(crate) fn lazy_load_members(&self) -> Option<bool> {
        lazy(&self.definition.room.state.lazy_load_options)
    }

    /// An event as the filter wants it: the federation format (the PDU as
    /// stored) or the client format, cut down to `event_fields`.
    /// Whether events leave in the client format as it is (no
    /// `event_fields`, no federation format), so they can be written
    /// straight from their stored text.
    pub(crate) fn keeps_client_format(&self) -> bool {
        self.definition.event_fields.is_none()
            && !matches!(self.definition.event_format, EventFormat::Federation)
    }

    pub(crate) fn shape(&self, client: Value, pdu_json: &str) -> Value {
        let event = match self.definition.event_format {
            // The PDU as it travels, with the ID it is known by (room
            // versions 3 and later carry none).
            EventFormat::Federation => match serde_json::from_str::<Value>(pdu_json) {
                Ok(Value::Object(mut pdu)) => {
                    if let Some(id) = client.get("event_id") {
                        pdu.entry("event_id").or_insert_with(|| id.clone());
                    }
                    Value::Object(pdu)
                }
                _ => client,
            },
            _ => client,
        };
        match &self.definition.event_fields {
            Some(fields) => only_fields(&event, fields),
            None => event,
        }
    }
}

/// Whether types and senders let an event of `event_type` from `sender`
/// through (no sender: only the types count).
fn kind_matches(
    (types, not_types): (Option<&[String]>, &[String]),
    (senders, not_senders): (Option<&[ruma::OwnedUserId]>, &[ruma::OwnedUserId]),
    event_type: &str,
    sender: Option<&str>,
) -> bool {
    if not_types.iter().any(|t| type_matches(t, event_type)) {
        return false;
    }
    if let Some(types) = types
        && !types.iter().any(|t| type_matches(t, event_type))
    {
        return false;
    }
    let Some(sender) = sender else { return true };
    !not_senders.iter().any(|s| s.as_str() == sender)
        && senders.is_none_or(|senders| senders.iter().any(|s| s.as_str() == sender))
}

/// A `RoomEventFilter` applied to a room's ephemeral event or account data.
fn room_kind_matches(filter: &RoomEventFilter, room_id: &str, event_type: &str) -> bool {
    !filter.not_rooms.iter().any(|r| r.as_str() == room_id)
        && filter
            .rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|r| r.as_str() == room_id))
        && kind_matches(
            (filter.types.as_deref(), &filter.not_types),
            (None, &[]),
            event_type,
            None,
        )
}

/// Whether a `RoomEventFilter` lets an event through.
/// The `filter` query parameter of `/messages` and `/context`: a
/// `RoomEventFilter` as JSON (none: everything).
pub(crate) fn room_event_filter(
    json: Option<&str>,
) -> Result<RoomEventFilter, ganglion_base::MatrixError> {
    match json {
        None | Some("") => Ok(RoomEventFilter::default()),
        Some(json) if json.len() > MAX_FILTER_BYTES => Err(
            ganglion_base::MatrixError::invalid_param("filter is too large"),
        ),
        Some(json) => serde_json::from_str(json)
            .map_err(|e| ganglion_base::MatrixError::invalid_param(format!("invalid filter: {e}"))),
    }
}

/// The members whose membership a page of `events` needs with lazy
/// loading: their senders, among `members` (the room's membership events
/// at the page).
pub(crate) fn members_for<'a>(events: &[&EventRow], members: &'a [EventRow]) -> Vec<&'a EventRow> {
    let senders: std::collections::HashSet<&str> =
        events.iter().map(|e| e.sender.as_str()).collect();
    members
        .iter()
        .filter(|m| m.state_key.as_deref().is_some_and(|u| senders.contains(u)))
        .collect()
}

pub(crate) fn event_matches(filter: &RoomEventFilter, event: &EventRow) -> bool {
    if filter
        .not_types
        .iter()
        .any(|t| type_matches(t, &event.event_type))
    {
        return false;
    }
    if let Some(types) = &filter.types
        && !types.iter().any(|t| type_matches(t, &event.event_type))
    {
        return false;
    }
    if filter
        .not_senders
        .iter()
        .any(|s| s.as_str() == event.sender)
    {
        return false;
    }
    if let Some(senders) = &filter.senders
        && !senders.iter().any(|s| s.as_str() == event.sender)
    {
        return false;
    }
    if filter.not_rooms.iter().any(|r| r.as_str() == event.room_id) {
        return false;
    }
    if let Some(rooms) = &filter.rooms
        && !rooms.iter().any(|r| r.as_str() == event.room_id)
    {
        return false;
    }
    if let Some(url_filter) = &filter.url_filter {
        let has_url = serde_json::from_str::<Value>(&event.json)
            .is_ok_and(|pdu| pdu["content"].get("url").is_some());
        let wanted = matches!(url_filter, UrlFilter::EventsWithUrl);
        if has_url != wanted {
            return false;
        }
    }
    true
}

/// The lazy-loading of a `RoomEventFilter`: `Some(include_redundant)`.
pub(crate) fn lazy(options: &LazyLoadOptions) -> Option<bool> {
    match options {
        LazyLoadOptions::Enabled {
            include_redundant_members,
        } => Some(*include_redundant_members),
        _ => None,
    }
}

/// A type pattern: exact, or a prefix ending in `*`.
fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// Splits an `event_fields` entry on dots, where `\.` is a literal dot.
fn field_path(field: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => parts.last_mut().map(|p| p.push(next)).unwrap_or(()),
                None => parts.last_mut().map(|p| p.push('\\')).unwrap_or(()),
            },
            '.' => parts.push(String::new()),
            other => parts.last_mut().map(|p| p.push(other)).unwrap_or(()),
        }
    }
    parts
}

/// Keeps only the listed fields of an event.
fn only_fields(event: &Value, fields: &[String]) -> Value {
    let mut out = Value::Object(Map::new());
    for field in fields {
        let path = field_path(field);
        let mut source = event;
        let mut found = true;
        for key in &path {
            match source.get(key) {
                Some(next) => source = next,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if !found {
            continue;
        }
        let mut target = &mut out;
        for (i, key) in path.iter().enumerate() {
            let Some(object) = target.as_object_mut() else {
                break;
            };
            if i + 1 == path.len() {
                object.insert(key.clone(), source.clone());
                break;
            }
            target = object
                .entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(event_type: &str, sender: &str, content: Value) -> EventRow {
        EventRow {
            offset: 1,
            room_id: "!r:x".into(),
            sender: sender.into(),
            history_visibility: "shared".into(),
            event_id: "$e".into(),
            event_type: event_type.into(),
            state_key: None,
            json: json!({"type": event_type, "sender": sender, "content": content}).to_string(),
            device_id: String::new(),
            transaction_id: String::new(),
        }
    }

    fn filter(value: Value) -> SyncFilter {
        SyncFilter::from_value(value).expect("valid filter")
    }

    #[test]
    fn types_senders_rooms_and_urls() {
        let message = event("m.room.message", "@a:x", json!({"body": "hi"}));
        let image = event("m.room.message", "@b:x", json!({"url": "mxc://x/y"}));
        let topic = event("m.room.topic", "@a:x", json!({"topic": "t"}));
        let f = filter(
            json!({"room": {"timeline": {"types": ["m.room.*"], "not_types": ["m.room.topic"]}}}),
        );
        assert!(f.timeline_matches(&message));
        assert!(!f.timeline_matches(&topic));
        let f = filter(json!({"room": {"timeline": {"senders": ["@b:x"]}}}));
        assert!(f.timeline_matches(&image) && !f.timeline_matches(&message));
        let f = filter(json!({"room": {"timeline": {"not_senders": ["@b:x"]}}}));
        assert!(!f.timeline_matches(&image) && f.timeline_matches(&message));
        let f = filter(json!({"room": {"timeline": {"contains_url": true}}}));
        assert!(f.timeline_matches(&image) && !f.timeline_matches(&message));
        let f = filter(json!({"room": {"timeline": {"contains_url": false}}}));
        assert!(!f.timeline_matches(&image) && f.timeline_matches(&message));
        let f = filter(json!({"room": {"timeline": {"types": []}}}));
        assert!(
            !f.timeline_matches(&message),
            "an empty list lets nothing through"
        );
        let f = filter(json!({"room": {"rooms": ["!r:x"], "not_rooms": ["!s:x"]}}));
        assert!(f.room_wanted("!r:x") && !f.room_wanted("!s:x") && !f.room_wanted("!t:x"));
    }

    #[test]
    fn limits_lazy_loading_and_event_fields() {
        assert_eq!(
            SyncFilter::default().timeline_limit(),
            DEFAULT_TIMELINE_LIMIT
        );
        assert_eq!(
            filter(json!({"room": {"timeline": {"limit": 5000}}})).timeline_limit(),
            1000
        );
        assert!(SyncFilter::from_value(json!({"room": {"timeline": {"limit": -1}}})).is_err());
        assert_eq!(
            filter(json!({"room": {"timeline": {"limit": 0}}})).timeline_limit(),
            0
        );
        assert!(SyncFilter::from_value(json!({"room": {"timeline": {"limit": "ten"}}})).is_err());
        assert!(SyncFilter::from_value(json!([1])).is_err());
        assert_eq!(
            SyncFilter::parse(&" ".repeat(MAX_FILTER_BYTES + 1)).err(),
            Some(FilterError::TooLarge)
        );
        let lazy = filter(json!({"room": {"state": {"lazy_load_members": true}}}));
        assert_eq!(lazy.lazy_load_members(), Some(false));
        let redundant = filter(
            json!({"room": {"state": {"lazy_load_members": true, "include_redundant_members": true}}}),
        );
        assert_eq!(redundant.lazy_load_members(), Some(true));
        let fields =
            filter(json!({"event_fields": ["type", "content.body", "content.m\\.relates_to"]}));
        let shaped = fields.shape(
            json!({"type": "m.room.message", "sender": "@a:x", "content": {"body": "hi", "msgtype": "m.text", "m.relates_to": {"x": 1}}}),
            "{}",
        );
        assert_eq!(
            shaped,
            json!({"type": "m.room.message", "content": {"body": "hi", "m.relates_to": {"x": 1}}})
        );
        let federation = filter(json!({"event_format": "federation"}));
        assert_eq!(
            federation.shape(json!({"event_id": "$e"}), r#"{"depth": 3}"#),
            json!({"depth": 3, "event_id": "$e"})
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::SyncFilter;

    /// JSON values of any shape, a few levels deep.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            ".{0,20}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("room".to_owned()),
                        Just("timeline".to_owned()),
                        Just("limit".to_owned()),
                        Just("types".to_owned()),
                        Just("not_senders".to_owned()),
                        Just("lazy_load_members".to_owned()),
                        Just("event_fields".to_owned()),
                        Just("event_format".to_owned()),
                        ".{0,10}",
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// A filter of any shape (inline in `filter=` or uploaded) is
        /// taken or refused, never a panic.
        #[test]
        fn any_filter_is_taken_or_refused(value in json()) {
            let _ = SyncFilter::parse(&value.to_string());
        }

        #[test]
        fn any_text_is_taken_or_refused(text in ".{0,200}") {
            let _ = SyncFilter::parse(&text);
        }
    }
}
