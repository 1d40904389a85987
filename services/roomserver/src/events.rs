//! Building and authorising events: pure functions over data (no database,
//! no log), wrapping ruma's hashing, signing and auth rules behind our names.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::{EventIdFormatVersion, RoomVersionRules};
use ruma::signatures::Ed25519KeyPair;
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    RoomVersionId, UInt, UserId,
};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub(crate) const MAX_PDU_BYTES: usize = 65_536;

/// Why an event could not be built or was not allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum EventError {
    /// The room version is unknown or not supported for new events.
    #[error("unsupported room version {0}")]
    UnsupportedRoomVersion(String),
    /// The event is malformed.
    #[error("invalid event: {0}")]
    Invalid(String),
    /// The event is larger than 65 536 bytes.
    #[error("event too large")]
    TooLarge,
    /// The auth rules reject the event.
    #[error("{0}")]
    Forbidden(String),
}

impl From<EventError> for ganglion_api::ApiError {
    fn from(error: EventError) -> Self {
        use ganglion_api::ApiError;
        match error {
            EventError::UnsupportedRoomVersion(v) => ApiError::UnsupportedRoomVersion(v),
            EventError::Invalid(m) => ApiError::InvalidInput(m),
            EventError::TooLarge => ApiError::TooLarge("event exceeds 65536 bytes".into()),
            EventError::Forbidden(m) => ApiError::Forbidden(m),
        }
    }
}

/// The rules of a room version this server creates events in.
pub(crate) fn rules_for(version: &str) -> Result<(RoomVersionId, RoomVersionRules), EventError> {
    let id = RoomVersionId::try_from(version)
        .map_err(|_| EventError::UnsupportedRoomVersion(version.to_owned()))?;
    let rules = id
        .rules()
        .ok_or_else(|| EventError::UnsupportedRoomVersion(version.to_owned()))?;
    // Versions 1 and 2 name events by random IDs with a server part and
    // reference them with hashes; creating such events is not supported yet.
    if rules.event_id_format == EventIdFormatVersion::V1 {
        return Err(EventError::UnsupportedRoomVersion(version.to_owned()));
    }
    Ok((id, rules))
}

/// A persisted or newly built event, as the auth rules see it.
#[derive(Debug, Clone)]
pub(crate) struct Pdu {
    pub(crate) event_id: OwnedEventId,
    pub(crate) room_id: Option<OwnedRoomId>,
    pub(crate) sender: OwnedUserId,
    pub(crate) origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub(crate) kind: TimelineEventType,
    pub(crate) content: Box<RawValue>,
    pub(crate) state_key: Option<String>,
    pub(crate) prev_events: Vec<OwnedEventId>,
    pub(crate) auth_events: Vec<OwnedEventId>,
    pub(crate) redacts: Option<OwnedEventId>,
    pub(crate) depth: i64,
    /// The canonical JSON of the whole event, as stored and sent.
    pub(crate) json: Arc<str>,
}

#[derive(Deserialize)]
struct PduFields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawValue>,
    state_key: Option<String>,
    #[serde(default)]
    prev_events: Vec<OwnedEventId>,
    #[serde(default)]
    auth_events: Vec<OwnedEventId>,
    redacts: Option<OwnedEventId>,
    #[serde(default)]
    depth: UInt,
}

impl Pdu {
    /// Reads an event of a room version 3+ room from its JSON and ID.
    pub(crate) fn from_json(event_id: &str, json: &str) -> Result<Pdu, EventError> {
        let fields: PduFields =
            serde_json::from_str(json).map_err(|e| EventError::Invalid(e.to_string()))?;
        let event_id = EventId::parse(event_id).map_err(|e| EventError::Invalid(e.to_string()))?;
        Ok(Pdu {
            event_id,
            room_id: fields.room_id,
            sender: fields.sender,
            origin_server_ts: fields.origin_server_ts,
            kind: fields.kind,
            content: fields.content,
            state_key: fields.state_key,
            prev_events: fields.prev_events,
            auth_events: fields.auth_events,
            redacts: fields.redacts,
            depth: i64::try_from(u64::from(fields.depth)).unwrap_or(i64::MAX),
            json: Arc::from(json),
        })
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        false
    }
}

/// The current state of a room: (type, state_key) → event.
pub(crate) type StateMap = HashMap<(String, String), Arc<Pdu>>;

/// What the roomserver knows of a room when it appends an event.
pub(crate) struct RoomView<'a> {
    pub(crate) room_id: &'a str,
    pub(crate) rules: &'a RoomVersionRules,
    pub(crate) state: &'a StateMap,
    pub(crate) forward_extremities: &'a [String],
    pub(crate) depth: i64,
}

/// What a local user asks to send.
pub(crate) struct Template<'a> {
    pub(crate) event_type: &'a str,
    pub(crate) state_key: Option<&'a str>,
    pub(crate) sender: &'a str,
    pub(crate) content: CanonicalJsonObject,
    pub(crate) redacts: Option<&'a str>,
}

/// Our server's identity for signing.
pub(crate) struct Signer<'a> {
    pub(crate) server_name: &'a str,
    pub(crate) key: &'a Ed25519KeyPair,
}

fn now() -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch::now()
}

fn parse_user(sender: &str) -> Result<OwnedUserId, EventError> {
    UserId::parse(sender).map_err(|e| EventError::Invalid(format!("sender: {e}")))
}

/// Hashes and signs `object`, then derives its event ID.
fn seal(
    mut object: CanonicalJsonObject,
    rules: &RoomVersionRules,
    signer: &Signer<'_>,
) -> Result<(OwnedEventId, String), EventError> {
    ruma::signatures::hash_and_sign_event(
        signer.server_name,
        signer.key,
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => EventError::TooLarge,
        other => EventError::Invalid(other.to_string()),
    })?;
    let hash = ruma::signatures::reference_hash(&object, rules).map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => EventError::TooLarge,
        other => EventError::Invalid(other.to_string()),
    })?;
    let json = serde_json::to_string(&object).map_err(|e| EventError::Invalid(e.to_string()))?;
    if json.len() > MAX_PDU_BYTES {
        return Err(EventError::TooLarge);
    }
    let event_id =
        EventId::parse(format!("${hash}")).map_err(|e| EventError::Invalid(e.to_string()))?;
    Ok((event_id, json))
}

/// Builds the `m.room.create` event of a new room. For versions whose room ID
/// is the create event's ID (12+), `room_id` is ignored and derived.
pub(crate) fn build_create_event(
    version: &str,
    creator: &str,
    extra_content: CanonicalJsonObject,
    room_id: &str,
    signer: &Signer<'_>,
) -> Result<(OwnedRoomId, Pdu), EventError> {
    let (version_id, rules) = rules_for(version)?;
    let creator_id = parse_user(creator)?;
    let mut content = extra_content;
    content.insert(
        "room_version".into(),
        CanonicalJsonValue::String(version_id.to_string()),
    );
    if !rules.authorization.use_room_create_sender {
        content.insert(
            "creator".into(),
            CanonicalJsonValue::String(creator_id.to_string()),
        );
    } else {
        content.remove("creator");
    }
    let mut object = CanonicalJsonObject::new();
    object.insert("type".into(), "m.room.create".into());
    object.insert("state_key".into(), "".into());
    object.insert(
        "sender".into(),
        CanonicalJsonValue::String(creator_id.to_string()),
    );
    object.insert("content".into(), CanonicalJsonValue::Object(content));
    object.insert(
        "depth".into(),
        CanonicalJsonValue::Integer(ruma::Int::from(1_u8)),
    );
    object.insert("origin_server_ts".into(), ts_value(now()));
    object.insert("prev_events".into(), CanonicalJsonValue::Array(vec![]));
    object.insert("auth_events".into(), CanonicalJsonValue::Array(vec![]));
    if rules.event_format.require_room_create_room_id {
        object.insert(
            "room_id".into(),
            CanonicalJsonValue::String(room_id.to_owned()),
        );
    }
    let (event_id, json) = seal(object, &rules, signer)?;
    let pdu = Pdu::from_json(event_id.as_str(), &json)?;
    let room_id = if rules.authorization.room_create_event_id_as_room_id {
        RoomId::parse(format!("!{}", &event_id.as_str()[1..]))
    } else {
        RoomId::parse(room_id)
    }
    .map_err(|e| EventError::Invalid(format!("room ID: {e}")))?;
    check_create(&rules, &pdu)?;
    Ok((room_id, pdu))
}

fn int(value: i64) -> Result<ruma::Int, EventError> {
    ruma::Int::try_from(value).map_err(|_| EventError::Invalid("depth out of range".into()))
}

fn ts_value(ts: MilliSecondsSinceUnixEpoch) -> CanonicalJsonValue {
    CanonicalJsonValue::Integer(ruma::Int::from(ts.get()))
}

/// The state-independent checks of a create event.
pub(crate) fn check_create(rules: &RoomVersionRules, pdu: &Pdu) -> Result<(), EventError> {
    ruma::state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |_: &EventId| {
        None::<Pdu>
    })
    .map_err(EventError::Forbidden)
}

/// Builds, signs and authorises an event on top of `room`'s current state.
pub(crate) fn build_event(
    room: &RoomView<'_>,
    template: Template<'_>,
    signer: &Signer<'_>,
) -> Result<Pdu, EventError> {
    let sender = parse_user(template.sender)?;
    if sender.server_name().as_str() != signer.server_name {
        return Err(EventError::Invalid("sender is not a local user".into()));
    }
    let kind = TimelineEventType::from(template.event_type);
    if kind == TimelineEventType::RoomCreate {
        return Err(EventError::Forbidden(
            "a room has only one create event".into(),
        ));
    }
    let content_raw = serde_json::value::to_raw_value(&template.content)
        .map_err(|e| EventError::Invalid(e.to_string()))?;
    let auth_types = ruma::state_res::auth_types_for_event(
        &kind,
        &sender,
        template.state_key,
        &content_raw,
        &room.rules.authorization,
    )
    .map_err(EventError::Invalid)?;
    let mut auth_events: Vec<String> = Vec::new();
    for (event_type, state_key) in auth_types {
        if let Some(pdu) = room.state.get(&(event_type.to_string(), state_key)) {
            auth_events.push(pdu.event_id.to_string());
        }
    }
    let mut object = CanonicalJsonObject::new();
    object.insert(
        "type".into(),
        CanonicalJsonValue::String(template.event_type.to_owned()),
    );
    if let Some(key) = template.state_key {
        object.insert(
            "state_key".into(),
            CanonicalJsonValue::String(key.to_owned()),
        );
    }
    object.insert(
        "sender".into(),
        CanonicalJsonValue::String(sender.to_string()),
    );
    object.insert(
        "room_id".into(),
        CanonicalJsonValue::String(room.room_id.to_owned()),
    );
    object.insert(
        "content".into(),
        CanonicalJsonValue::Object(template.content),
    );
    object.insert(
        "depth".into(),
        CanonicalJsonValue::Integer(int(room.depth + 1)?),
    );
    object.insert("origin_server_ts".into(), ts_value(now()));
    object.insert(
        "prev_events".into(),
        CanonicalJsonValue::Array(
            room.forward_extremities
                .iter()
                .map(|id| CanonicalJsonValue::String(id.clone()))
                .collect(),
        ),
    );
    object.insert(
        "auth_events".into(),
        CanonicalJsonValue::Array(
            auth_events
                .into_iter()
                .map(CanonicalJsonValue::String)
                .collect(),
        ),
    );
    if let Some(redacts) = template.redacts {
        let redacts = EventId::parse(redacts).map_err(|e| EventError::Invalid(e.to_string()))?;
        if room.rules.redaction.content_field_redacts
            && let Some(CanonicalJsonValue::Object(content)) = object.get_mut("content")
        {
            content.insert(
                "redacts".into(),
                CanonicalJsonValue::String(redacts.to_string()),
            );
        }
        object.insert(
            "redacts".into(),
            CanonicalJsonValue::String(redacts.to_string()),
        );
    }
    let (event_id, json) = seal(object, room.rules, signer)?;
    let pdu = Pdu::from_json(event_id.as_str(), &json)?;
    authorise(room.rules, room.state, &pdu)?;
    Ok(pdu)
}

/// Runs the auth rules for `pdu` against its auth events and `state`.
pub(crate) fn authorise(
    rules: &RoomVersionRules,
    state: &StateMap,
    pdu: &Pdu,
) -> Result<(), EventError> {
    let by_id: BTreeMap<&EventId, &Arc<Pdu>> =
        state.values().map(|p| (p.event_id.as_ref(), p)).collect();
    ruma::state_res::check_state_independent_auth_rules(
        &rules.authorization,
        pdu,
        |id: &EventId| by_id.get(id).map(|p| p.as_ref().clone()),
    )
    .map_err(EventError::Forbidden)?;
    ruma::state_res::check_state_dependent_auth_rules(
        &rules.authorization,
        pdu,
        |event_type: &StateEventType, state_key: &str| {
            state
                .get(&(event_type.to_string(), state_key.to_owned()))
                .map(|p| p.as_ref().clone())
        },
    )
    .map_err(EventError::Forbidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Ed25519KeyPair {
        let der = Ed25519KeyPair::generate();
        Ed25519KeyPair::from_der(&der, "a_test".into()).expect("key")
    }

    fn content(json: serde_json::Value) -> CanonicalJsonObject {
        serde_json::from_value(json).expect("object")
    }

    fn room_with(
        version: &str,
    ) -> (
        OwnedRoomId,
        RoomVersionRules,
        StateMap,
        Vec<String>,
        i64,
        Ed25519KeyPair,
    ) {
        let key = key();
        let signer = Signer {
            server_name: "example.org",
            key: &key,
        };
        let (room_id, create) = build_create_event(
            version,
            "@alice:example.org",
            CanonicalJsonObject::new(),
            "!r:example.org",
            &signer,
        )
        .expect("create");
        let (_, rules) = rules_for(version).expect("rules");
        let mut state = StateMap::new();
        let extremities = vec![create.event_id.to_string()];
        state.insert(("m.room.create".into(), String::new()), Arc::new(create));
        (room_id, rules, state, extremities, 1, key)
    }

    fn append(
        room_id: &RoomId,
        rules: &RoomVersionRules,
        state: &mut StateMap,
        extremities: &mut Vec<String>,
        depth: &mut i64,
        key: &Ed25519KeyPair,
        template: Template<'_>,
    ) -> Result<Pdu, EventError> {
        let signer = Signer {
            server_name: "example.org",
            key,
        };
        let view = RoomView {
            room_id: room_id.as_str(),
            rules,
            state,
            forward_extremities: extremities,
            depth: *depth,
        };
        let pdu = build_event(&view, template, &signer)?;
        if let Some(key) = &pdu.state_key {
            state.insert((pdu.kind.to_string(), key.clone()), Arc::new(pdu.clone()));
        }
        *extremities = vec![pdu.event_id.to_string()];
        *depth = pdu.depth;
        Ok(pdu)
    }

    #[test]
    fn creator_joins_and_others_cannot_speak_uninvited() {
        for version in ["10", "11", "12"] {
            let (room_id, rules, mut state, mut ext, mut depth, key) = room_with(version);
            if version == "12" {
                assert!(
                    !room_id.as_str().contains(':'),
                    "v12 room IDs have no server part"
                );
            }
            let join = append(
                &room_id,
                &rules,
                &mut state,
                &mut ext,
                &mut depth,
                &key,
                Template {
                    event_type: "m.room.member",
                    state_key: Some("@alice:example.org"),
                    sender: "@alice:example.org",
                    content: content(serde_json::json!({"membership": "join"})),
                    redacts: None,
                },
            )
            .expect("creator joins");
            assert_eq!(join.depth, 2);
            append(
                &room_id,
                &rules,
                &mut state,
                &mut ext,
                &mut depth,
                &key,
                Template {
                    event_type: "m.room.join_rules",
                    state_key: Some(""),
                    sender: "@alice:example.org",
                    content: content(serde_json::json!({"join_rule": "invite"})),
                    redacts: None,
                },
            )
            .expect("join rules");
            let msg = append(
                &room_id,
                &rules,
                &mut state,
                &mut ext,
                &mut depth,
                &key,
                Template {
                    event_type: "m.room.message",
                    state_key: None,
                    sender: "@alice:example.org",
                    content: content(serde_json::json!({"msgtype": "m.text", "body": "hi"})),
                    redacts: None,
                },
            )
            .expect("message");
            assert!(msg.event_id.as_str().starts_with('$'));
            let intruder = append(
                &room_id,
                &rules,
                &mut state,
                &mut ext,
                &mut depth,
                &key,
                Template {
                    event_type: "m.room.member",
                    state_key: Some("@bob:example.org"),
                    sender: "@bob:example.org",
                    content: content(serde_json::json!({"membership": "join"})),
                    redacts: None,
                },
            );
            assert!(
                matches!(intruder, Err(EventError::Forbidden(_))),
                "{version}: {intruder:?}"
            );
            let stranger = append(
                &room_id,
                &rules,
                &mut state,
                &mut ext,
                &mut depth,
                &key,
                Template {
                    event_type: "m.room.message",
                    state_key: None,
                    sender: "@bob:example.org",
                    content: content(serde_json::json!({"body": "x"})),
                    redacts: None,
                },
            );
            assert!(matches!(stranger, Err(EventError::Forbidden(_))));
        }
    }

    #[test]
    fn oversized_event_is_too_large() {
        let (room_id, rules, mut state, mut ext, mut depth, key) = room_with("10");
        append(
            &room_id,
            &rules,
            &mut state,
            &mut ext,
            &mut depth,
            &key,
            Template {
                event_type: "m.room.member",
                state_key: Some("@alice:example.org"),
                sender: "@alice:example.org",
                content: content(serde_json::json!({"membership": "join"})),
                redacts: None,
            },
        )
        .expect("join");
        let big = "x".repeat(70_000);
        let result = append(
            &room_id,
            &rules,
            &mut state,
            &mut ext,
            &mut depth,
            &key,
            Template {
                event_type: "m.room.message",
                state_key: None,
                sender: "@alice:example.org",
                content: content(serde_json::json!({"body": big})),
                redacts: None,
            },
        );
        assert_eq!(result.err(), Some(EventError::TooLarge));
    }

    #[test]
    fn unknown_and_legacy_versions_are_refused() {
        assert!(matches!(
            rules_for("99"),
            Err(EventError::UnsupportedRoomVersion(_))
        ));
        assert!(rules_for("3").is_ok());
    }
}
