//! Building and authorising events: pure functions over data (no database,
//! no log), wrapping ruma's hashing, signing and auth rules behind our names.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::{
    EventIdFormatVersion, EventsReferenceFormatVersion, RoomVersionRules,
};
use ruma::signatures::Ed25519KeyPair;
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    RoomVersionId, UInt, UserId,
};
use serde::Deserialize;
use serde_json::value::RawValue;

pub(crate) use ganglion_base::limits::MAX_PDU_BYTES;

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
    /// A field is over its limit (type, state key, IDs: 255 bytes).
    #[error("{0}")]
    FieldTooLarge(String),
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
            EventError::FieldTooLarge(m) => ApiError::TooLarge(m),
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
    /// Stored as rejected: it never counts as an auth or state event.
    pub(crate) rejected: bool,
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
    prev_events: Vec<EventReference>,
    #[serde(default)]
    auth_events: Vec<EventReference>,
    redacts: Option<OwnedEventId>,
    #[serde(default)]
    depth: UInt,
}

/// A reference to another event: `"$id"` (room versions 3+) or
/// `["$id:server", {"sha256": ...}]` (versions 1 and 2).
#[derive(Deserialize)]
#[serde(untagged)]
enum EventReference {
    Id(OwnedEventId),
    WithHash(OwnedEventId, serde::de::IgnoredAny),
}

impl EventReference {
    fn into_id(self) -> OwnedEventId {
        match self {
            EventReference::Id(id) | EventReference::WithHash(id, _) => id,
        }
    }
}

impl Pdu {
    /// Reads a stored or built event from its JSON and ID (the ID is inside
    /// the JSON only in room versions 1 and 2).
    pub(crate) fn from_json(event_id: &str, json: &str) -> Result<Pdu, EventError> {
        let fields: PduFields =
            serde_json::from_str(json).map_err(|e| EventError::Invalid(e.to_string()))?;
        let event_id = EventId::parse(event_id).map_err(|e| EventError::Invalid(e.to_string()))?;
        let redacts = fields
            .redacts
            .or_else(|| redacts_in_content(&fields.content));
        Ok(Pdu {
            event_id,
            room_id: fields.room_id,
            sender: fields.sender,
            origin_server_ts: fields.origin_server_ts,
            kind: fields.kind,
            content: fields.content,
            state_key: fields.state_key,
            prev_events: fields
                .prev_events
                .into_iter()
                .map(EventReference::into_id)
                .collect(),
            auth_events: fields
                .auth_events
                .into_iter()
                .map(EventReference::into_id)
                .collect(),
            redacts,
            depth: i64::try_from(u64::from(fields.depth)).unwrap_or(i64::MAX),
            json: Arc::from(json),
            rejected: false,
        })
    }
}

/// Since room version 11 `redacts` lives in the content.
fn redacts_in_content(content: &RawValue) -> Option<OwnedEventId> {
    #[derive(Deserialize)]
    struct Redacts {
        redacts: Option<OwnedEventId>,
    }
    serde_json::from_str::<Redacts>(content.get())
        .ok()
        .and_then(|r| r.redacts)
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
        self.rejected
    }
}

/// The current state of a room: (type, state_key) → event.
pub(crate) type StateMap = HashMap<(String, String), Arc<Pdu>>;

/// What the roomserver knows of a room when it appends an event.
pub(crate) struct RoomView<'a> {
    pub(crate) room_id: &'a str,
    pub(crate) rules: &'a RoomVersionRules,
    pub(crate) state: &'a StateMap,
    /// The events a new event follows (at most 20 are referenced).
    pub(crate) forward_extremities: &'a [Arc<Pdu>],
}

/// The most `prev_events` an event may reference.
pub(crate) const MAX_PREV_EVENTS: usize = 20;

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

/// A timestamp for a create event, later than every one this process gave
/// before. Where the room ID is the create event's hash (room version 12),
/// two rooms created by one user with the same content in the same
/// millisecond (a client creating rooms at once, taken in one group) would
/// otherwise get the same event, and the second would be refused as a room
/// already in use.
fn create_ts() -> MilliSecondsSinceUnixEpoch {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = u64::from(now().get());
    let previous = LAST
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    let ts = now.max(previous + 1);
    MilliSecondsSinceUnixEpoch(ruma::UInt::new(ts).unwrap_or(ruma::UInt::MAX))
}

fn parse_user(sender: &str) -> Result<OwnedUserId, EventError> {
    UserId::parse(sender).map_err(|e| EventError::Invalid(format!("sender: {e}")))
}

/// A random alphanumeric string (request IDs, provisional room IDs, event
/// IDs of room versions 1 and 2).
pub(crate) fn random_id(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| {
            char::from(rand::Rng::sample(
                &mut rng,
                rand::distributions::Alphanumeric,
            ))
        })
        .collect()
}

/// Hashes and signs `object`, then derives its event ID: a reference hash
/// (room versions 3+) or a random ID with our server name, carried inside the
/// event (versions 1 and 2).
fn seal(
    mut object: CanonicalJsonObject,
    rules: &RoomVersionRules,
    signer: &Signer<'_>,
) -> Result<(OwnedEventId, String), EventError> {
    let random_id = (rules.event_id_format == EventIdFormatVersion::V1)
        .then(|| format!("${}:{}", random_id(18), signer.server_name));
    if let Some(id) = &random_id {
        object.insert("event_id".into(), CanonicalJsonValue::String(id.clone()));
    }
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
    // The limits every server checks on receipt hold for our own events
    // too (a state key of 256 bytes is refused here, not stored).
    ruma::state_res::check_pdu_format(&object, &rules.event_format)
        .map_err(EventError::FieldTooLarge)?;
    if ganglion_base::limits::holds_nul(&object) {
        return Err(EventError::Invalid("an event may not hold U+0000".into()));
    }
    let json = serde_json::to_string(&object).map_err(|e| EventError::Invalid(e.to_string()))?;
    if json.len() > MAX_PDU_BYTES {
        return Err(EventError::TooLarge);
    }
    let event_id = match random_id {
        Some(id) => EventId::parse(id),
        None => EventId::parse(format!("${}", reference_hash(&object, rules)?)),
    }
    .map_err(|e| EventError::Invalid(e.to_string()))?;
    Ok((event_id, json))
}

fn reference_hash(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<String, EventError> {
    ruma::signatures::reference_hash(object, rules).map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => EventError::TooLarge,
        other => EventError::Invalid(other.to_string()),
    })
}

/// How an event names the events it follows or is authorised by: plain IDs
/// (versions 3+) or `[id, {"sha256": reference hash}]` pairs (1 and 2).
fn references(pdus: &[&Pdu], rules: &RoomVersionRules) -> Result<CanonicalJsonValue, EventError> {
    let mut out = Vec::with_capacity(pdus.len());
    for pdu in pdus {
        let id = CanonicalJsonValue::String(pdu.event_id.to_string());
        out.push(match rules.events_reference_format {
            EventsReferenceFormatVersion::V1 => {
                let object: CanonicalJsonObject = serde_json::from_str(&pdu.json)
                    .map_err(|e| EventError::Invalid(e.to_string()))?;
                let mut hashes = CanonicalJsonObject::new();
                hashes.insert(
                    "sha256".into(),
                    CanonicalJsonValue::String(reference_hash(&object, rules)?),
                );
                CanonicalJsonValue::Array(vec![id, CanonicalJsonValue::Object(hashes)])
            }
            _ => id,
        });
    }
    Ok(CanonicalJsonValue::Array(out))
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
    object.insert("origin_server_ts".into(), ts_value(create_ts()));
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

/// The largest depth the spec allows (2^53 - 1, like every integer in an event).
const MAX_DEPTH: i64 = 9_007_199_254_740_991;

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
    let object = event_object(room, template)?;
    let (event_id, json) = seal(object, room.rules, signer)?;
    let pdu = Pdu::from_json(event_id.as_str(), &json)?;
    authorise(room.rules, room.state, &pdu)?;
    Ok(pdu)
}

/// An event for another server's user to sign and send back (make_join,
/// make_leave, make_knock): built on the room's current state as ours
/// are, checked against the auth rules, but neither hashed nor signed.
pub(crate) fn event_for_remote(
    room: &RoomView<'_>,
    template: Template<'_>,
) -> Result<CanonicalJsonObject, EventError> {
    let object = event_object(room, template)?;
    let json = serde_json::to_string(&object).map_err(|e| EventError::Invalid(e.to_string()))?;
    let provisional = Pdu::from_json("$provisional", &json)?;
    authorise(room.rules, room.state, &provisional)?;
    Ok(object)
}

/// An event's fields on top of the room's current state: auth events
/// from the state, the newest forward extremities as prev events, depth.
fn event_object(
    room: &RoomView<'_>,
    template: Template<'_>,
) -> Result<CanonicalJsonObject, EventError> {
    let sender = parse_user(template.sender)?;
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
    let mut auth_events: Vec<&Pdu> = Vec::new();
    for (event_type, state_key) in auth_types {
        if let Some(pdu) = room.state.get(&(event_type.to_string(), state_key)) {
            auth_events.push(pdu);
        }
    }
    // The newest extremities when there are too many (the rest stay
    // extremities and are referenced by later events).
    let mut prev: Vec<&Pdu> = room
        .forward_extremities
        .iter()
        .map(|p| p.as_ref())
        .collect();
    prev.sort_by_key(|p| std::cmp::Reverse(p.depth));
    prev.truncate(MAX_PREV_EVENTS);
    let depth = prev
        .iter()
        .map(|p| p.depth)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
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
        CanonicalJsonValue::Integer(int(depth.min(MAX_DEPTH))?),
    );
    object.insert("origin_server_ts".into(), ts_value(now()));
    object.insert("prev_events".into(), references(&prev, room.rules)?);
    object.insert("auth_events".into(), references(&auth_events, room.rules)?);
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
    Ok(object)
}

/// Runs the auth rules for a locally built `pdu`, whose auth events were
/// drawn from `state`, against that state.
pub(crate) fn authorise(
    rules: &RoomVersionRules,
    state: &StateMap,
    pdu: &Pdu,
) -> Result<(), EventError> {
    let by_id: HashMap<&EventId, &Pdu> = state
        .values()
        .map(|p| (p.event_id.as_ref(), p.as_ref()))
        .collect();
    ruma::state_res::check_state_independent_auth_rules(
        &rules.authorization,
        pdu,
        |id: &EventId| by_id.get(id).copied(),
    )
    .map_err(EventError::Forbidden)?;
    authorise_against_state(rules, state, pdu)
}

/// The auth rules against the event's own `auth_events` (check 4 on receipt
/// of a PDU): `auth_events` must hold each of them that is stored, and the
/// create event in versions 12+ (see [`create_event_id`]).
pub(crate) fn authorise_by_auth_events(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    auth_events: &HashMap<OwnedEventId, Arc<Pdu>>,
) -> Result<(), EventError> {
    ruma::state_res::check_state_independent_auth_rules(
        &rules.authorization,
        pdu,
        |id: &EventId| auth_events.get(id).map(|p| p.as_ref()),
    )
    .map_err(EventError::Forbidden)?;
    let mut state = StateMap::new();
    let create_id = create_event_id(rules, pdu);
    for id in pdu.auth_events.iter().chain(create_id.as_ref()) {
        if let Some(event) = auth_events.get(id)
            && let Some(key) = &event.state_key
        {
            state.insert((event.kind.to_string(), key.clone()), event.clone());
        }
    }
    authorise_against_state(rules, &state, pdu)
}

/// In room versions 12+ the create event authorises every event without
/// being listed in its auth events: its ID is the room ID's.
pub(crate) fn create_event_id(rules: &RoomVersionRules, pdu: &Pdu) -> Option<OwnedEventId> {
    if !rules.authorization.room_create_event_id_as_room_id {
        return None;
    }
    let room_id = pdu.room_id.as_ref()?;
    EventId::parse(format!("${}", &room_id.as_str()[1..])).ok()
}

/// The state-dependent auth rules against a room state: the state before
/// the event (check 5) or the current state (check 6, soft-failure).
pub(crate) fn authorise_against_state(
    rules: &RoomVersionRules,
    state: &StateMap,
    pdu: &Pdu,
) -> Result<(), EventError> {
    ruma::state_res::check_state_dependent_auth_rules(
        &rules.authorization,
        pdu,
        |event_type: &StateEventType, state_key: &str| {
            state
                .get(&(event_type.to_string(), state_key.to_owned()))
                .map(|p| p.as_ref())
        },
    )
    .map_err(EventError::Forbidden)
}

/// A user's power in a room state: from `m.room.power_levels`, or the
/// defaults without one (the creator 100, everyone else 0). Room creators
/// of version 12+ rooms outrank every level.
pub(crate) fn power_of(rules: &RoomVersionRules, state: &StateMap, user: &UserId) -> i64 {
    let create = state.get(&("m.room.create".to_owned(), String::new()));
    let is_creator = create.is_some_and(|create| {
        create.sender == user
            || (rules.authorization.additional_room_creators
                && content_value(create)["additional_creators"]
                    .as_array()
                    .is_some_and(|list| list.iter().any(|u| u.as_str() == Some(user.as_str()))))
    });
    if is_creator && rules.authorization.explicitly_privilege_room_creators {
        return i64::MAX;
    }
    match state.get(&("m.room.power_levels".to_owned(), String::new())) {
        Some(levels) => {
            let content = content_value(levels);
            level(&content["users"][user.as_str()])
                .or_else(|| level(&content["users_default"]))
                .unwrap_or(0)
        }
        None if is_creator => 100,
        None => 0,
    }
}

/// The level a power-levels field (`redact`, `kick`, `ban`, `invite`,
/// `state_default`...) requires, with the spec's default when unset.
pub(crate) fn power_needed(state: &StateMap, field: &str, default: i64) -> i64 {
    state
        .get(&("m.room.power_levels".to_owned(), String::new()))
        .and_then(|levels| level(&content_value(levels)[field]))
        .unwrap_or(default)
}

/// The `membership` of an `m.room.member` event.
pub(crate) fn membership_of(pdu: &Pdu) -> Option<String> {
    content_value(pdu)["membership"].as_str().map(str::to_owned)
}

/// The history visibility a state sets (`None`: none set).
pub(crate) fn history_visibility(state: &StateMap) -> Option<String> {
    let event = state.get(&("m.room.history_visibility".to_owned(), String::new()))?;
    content_value(event)["history_visibility"]
        .as_str()
        .map(str::to_owned)
}

pub(crate) fn content_value(pdu: &Pdu) -> serde_json::Value {
    serde_json::from_str(pdu.content.get()).unwrap_or_default()
}

/// A power level: an integer, or (room versions before 10) a string of one.
fn level(value: &serde_json::Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Reads a PDU received from elsewhere (check 1 on receipt: format and size),
/// derives its event ID, and checks its content hash. A PDU whose content
/// hash does not match is redacted, as the spec requires; the second value
/// says so. Signatures are checked by the federation API before this.
pub(crate) fn parse_received(
    json: &[u8],
    rules: &RoomVersionRules,
) -> Result<(Pdu, bool), EventError> {
    if json.len() > MAX_PDU_BYTES {
        return Err(EventError::TooLarge);
    }
    let mut object: CanonicalJsonObject =
        serde_json::from_slice(json).map_err(|e| EventError::Invalid(e.to_string()))?;
    object.remove("unsigned");
    ruma::state_res::check_pdu_format(&object, &rules.event_format).map_err(EventError::Invalid)?;
    if ganglion_base::limits::holds_nul(&object) {
        return Err(EventError::Invalid("an event may not hold U+0000".into()));
    }
    let event_id = match rules.event_id_format {
        EventIdFormatVersion::V1 => match object.get("event_id") {
            Some(CanonicalJsonValue::String(id)) => id.clone(),
            _ => return Err(EventError::Invalid("missing event_id".into())),
        },
        _ => {
            object.remove("event_id");
            format!("${}", reference_hash(&object, rules)?)
        }
    };
    let expected = ruma::signatures::content_hash(&object)
        .map_err(|e| EventError::Invalid(e.to_string()))?
        .encode();
    let claimed = match object.get("hashes") {
        Some(CanonicalJsonValue::Object(hashes)) => match hashes.get("sha256") {
            Some(CanonicalJsonValue::String(hash)) => hash.clone(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    let redacted = claimed != expected;
    if redacted {
        ruma::canonical_json::redact_in_place(&mut object, &rules.redaction, None)
            .map_err(|e| EventError::Invalid(e.to_string()))?;
    }
    let json = serde_json::to_string(&object).map_err(|e| EventError::Invalid(e.to_string()))?;
    Ok((Pdu::from_json(&event_id, &json)?, redacted))
}

/// The event with the version's redaction algorithm applied (the copy kept
/// and served once a redaction is accepted).
pub(crate) fn redact(pdu: &Pdu, rules: &RoomVersionRules) -> Result<String, EventError> {
    let object: CanonicalJsonObject =
        serde_json::from_str(&pdu.json).map_err(|e| EventError::Invalid(e.to_string()))?;
    let redacted = ruma::canonical_json::redact(object, &rules.redaction, None)
        .map_err(|e| EventError::Invalid(e.to_string()))?;
    serde_json::to_string(&redacted).map_err(|e| EventError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{ALICE, Dag};

    const BOB: &str = "@bob:example.org";

    #[test]
    fn rooms_created_at_once_by_one_user_get_different_ids() {
        // Version 12 names the room after its create event: the same
        // creator and content in the same millisecond must still differ.
        let ids: std::collections::HashSet<String> = (0..50)
            .map(|_| Dag::empty("12", "!r:example.org").0.room_id)
            .collect();
        assert_eq!(ids.len(), 50);
    }

    #[test]
    fn creator_joins_and_others_cannot_speak_uninvited() {
        for version in 1..=12 {
            let version = version.to_string();
            let (mut dag, mut tip) = Dag::empty(&version, "!r:example.org");
            if version == "12" {
                assert!(
                    !dag.room_id.contains(':'),
                    "v12 room IDs have no server part"
                );
            }
            let join = dag
                .append(
                    &mut tip,
                    ALICE,
                    "m.room.member",
                    Some(ALICE),
                    serde_json::json!({"membership": "join"}),
                )
                .expect("creator joins");
            assert_eq!(join.depth, 2);
            dag.append(
                &mut tip,
                ALICE,
                "m.room.join_rules",
                Some(""),
                serde_json::json!({"join_rule": "invite"}),
            )
            .expect("join rules");
            let msg = dag
                .append(
                    &mut tip,
                    ALICE,
                    "m.room.message",
                    None,
                    serde_json::json!({"msgtype": "m.text", "body": "hi"}),
                )
                .expect("message");
            assert!(msg.event_id.as_str().starts_with('$'));
            let intruder = dag.append(
                &mut tip,
                BOB,
                "m.room.member",
                Some(BOB),
                serde_json::json!({"membership": "join"}),
            );
            assert!(
                matches!(intruder, Err(EventError::Forbidden(_))),
                "{version}: {intruder:?}"
            );
            let stranger = dag.append(
                &mut tip,
                BOB,
                "m.room.message",
                None,
                serde_json::json!({"body": "x"}),
            );
            assert!(matches!(stranger, Err(EventError::Forbidden(_))));
        }
    }

    #[test]
    fn oversized_event_is_too_large() {
        let (mut dag, mut tip) = Dag::empty("10", "!r:example.org");
        dag.append(
            &mut tip,
            ALICE,
            "m.room.member",
            Some(ALICE),
            serde_json::json!({"membership": "join"}),
        )
        .expect("join");
        let big = "x".repeat(70_000);
        let result = dag.append(
            &mut tip,
            ALICE,
            "m.room.message",
            None,
            serde_json::json!({"body": big}),
        );
        assert_eq!(result.err(), Some(EventError::TooLarge));
    }

    #[test]
    fn unknown_versions_are_refused() {
        assert!(matches!(
            rules_for("99"),
            Err(EventError::UnsupportedRoomVersion(_))
        ));
        for version in 1..=12 {
            assert!(rules_for(&version.to_string()).is_ok(), "{version}");
        }
    }

    #[test]
    fn received_events_round_trip_in_every_version() {
        for version in 1..=12 {
            let version = version.to_string();
            let (mut dag, mut tip) = Dag::empty(&version, "!r:example.org");
            let rules = dag.rules.clone();
            let join = dag
                .append(
                    &mut tip,
                    ALICE,
                    "m.room.member",
                    Some(ALICE),
                    serde_json::json!({"membership": "join"}),
                )
                .expect("join");
            if rules.event_id_format == EventIdFormatVersion::V1 {
                assert!(
                    join.event_id.as_str().ends_with(":example.org"),
                    "{version}"
                );
                assert!(
                    join.json.contains("\"event_id\""),
                    "{version}: the ID is in the event"
                );
                assert!(
                    join.json.contains("\"sha256\""),
                    "{version}: references carry hashes"
                );
            }
            // A server receiving the event derives the same ID and finds
            // the hash intact.
            let (received, redacted) =
                parse_received(join.json.as_bytes(), &rules).expect("parses");
            assert_eq!(received.event_id, join.event_id, "{version}");
            assert!(!redacted, "{version}");
            assert_eq!(received.prev_events, join.prev_events);
            assert_eq!(received.auth_events, join.auth_events);
            // Tampered content fails the hash check and is redacted.
            let tampered = join
                .json
                .replace("\"join\"", "\"join\",\"displayname\":\"x\"");
            let (received, redacted) = parse_received(tampered.as_bytes(), &rules).expect("parses");
            assert!(redacted, "{version}");
            assert!(!received.json.contains("displayname"));
        }
    }
}
