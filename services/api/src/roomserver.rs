//! The roomserver's API: writes (answered once processed through the log)
//! and queries about rooms.

use crate::proto::roomserver as pb;
use crate::proto::roomserver::roomserver_client::RoomserverClient as PbClient;
use crate::proto::roomserver::roomserver_server::RoomserverServer;

crate::grpc::service_api! {
    /// The authority on rooms (owned by roomserver).
    api "roomserver";
    trait RoomserverApi;
    client RoomserverClient = PbClient;
    adapter RoomserverGrpc: pb::roomserver_server::Roomserver, RoomserverServer;
    {
        /// Completes, authorises and persists events; answers with their IDs
        /// and the output position once they are in `roomserver.output`.
        fn input(pb::InputRequest) -> pb::InputResponse, once;
        /// Creates a room with its initial state.
        fn create_room(pb::CreateRoomRequest) -> pb::InputResponse, once;
        /// Between replicas: delivers the outcome of an input this replica accepted.
        fn deliver_outcome(pb::Outcome) -> crate::proto::common::Empty;
        fn query_room_version(pb::QueryRoomVersionRequest) -> pb::QueryRoomVersionResponse;
        fn query_membership(pb::QueryMembershipRequest) -> pb::QueryMembershipResponse;
        fn query_state_event(pb::QueryStateEventRequest) -> pb::QueryStateEventResponse;
        fn resolve_alias(pb::ResolveAliasRequest) -> pb::ResolveAliasResponse;
        /// Checks and stores complete PDUs (federation, backfill, joins).
        fn input_pdus(pb::InputPdusRequest) -> pb::InputPdusResponse;
        fn query_state(pb::QueryStateRequest) -> pb::QueryStateResponse;
        fn query_auth_chain(pb::QueryAuthChainRequest) -> pb::QueryAuthChainResponse;
        fn query_events(pb::QueryEventsRequest) -> pb::QueryEventsResponse;
        fn query_forward_extremities(pb::QueryForwardExtremitiesRequest) -> pb::QueryForwardExtremitiesResponse;
        fn set_alias(pb::SetAliasRequest) -> crate::proto::common::Empty, once;
        fn remove_alias(pb::RemoveAliasRequest) -> crate::proto::common::Empty;
        fn room_aliases(pb::RoomAliasesRequest) -> pb::RoomAliasesResponse;
        fn set_visibility(pb::SetVisibilityRequest) -> crate::proto::common::Empty;
        fn get_visibility(pb::GetVisibilityRequest) -> pb::GetVisibilityResponse;
        fn public_rooms(pb::PublicRoomsRequest) -> pb::PublicRoomsResponse;
        fn report(pb::ReportRequest) -> crate::proto::common::Empty, once;
        fn query_joined_rooms(pb::QueryJoinedRoomsRequest) -> pb::QueryJoinedRoomsResponse;
        fn query_may_send_state(pb::QueryMaySendStateRequest) -> pb::QueryMaySendStateResponse;
        /// Which of the events a server may see (the rest it gets redacted).
        fn query_server_visibility(pb::QueryServerVisibilityRequest) -> pb::QueryServerVisibilityResponse;
        fn forget_room(pb::ForgetRoomRequest) -> pb::InputResponse, once;
        /// An unsigned event for a remote user (make_join and friends).
        fn build_event(pb::BuildEventRequest) -> pb::BuildEventResponse;
        /// The users joined to a room now.
        fn query_joined_members(pb::QueryJoinedMembersRequest) -> pb::QueryJoinedMembersResponse;
        /// An invite from another server to one of our users.
        fn receive_invite(pb::ReceiveInviteRequest) -> pb::InputResponse, once;
        /// One of our users rejected another server's invite, or knocked
        /// on a room through another server.
        fn remote_membership(pb::RemoteMembershipRequest) -> pb::InputResponse, once;
        /// Rooms as a space hierarchy shows them, with who may see them.
        fn query_room_summaries(pb::QueryRoomSummariesRequest) -> pb::QueryRoomSummariesResponse;
    }
}

/// What callers hold: the service itself (monolith) or a [`RoomserverClient`].
pub type RoomserverHandle = std::sync::Arc<dyn RoomserverApi>;

/// The state events another server's user sees a room by before they are
/// in it (invited, knocking), as the spec recommends.
pub const STRIPPED_STATE_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.topic",
];

/// The room's current [`STRIPPED_STATE_TYPES`] events, and `member`'s
/// membership event if named, stripped to type, state key, sender and
/// content: one state lookup each, never the whole state (a large room's
/// thousands of members).
pub async fn stripped_state(
    roomserver: &RoomserverHandle,
    room_id: &str,
    member: Option<&str>,
) -> Result<Vec<serde_json::Value>, crate::ApiError> {
    let keys = STRIPPED_STATE_TYPES
        .iter()
        .map(|kind| (*kind, ""))
        .chain(member.map(|user| ("m.room.member", user)));
    let mut stripped = Vec::new();
    for (event_type, state_key) in keys {
        let found = roomserver
            .query_state_event(pb::QueryStateEventRequest {
                room_id: room_id.to_owned(),
                event_type: event_type.to_owned(),
                state_key: state_key.to_owned(),
            })
            .await?;
        let Some(event) = found
            .event_json
            .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        else {
            continue;
        };
        stripped.push(serde_json::json!({
            "type": event["type"], "state_key": event["state_key"],
            "sender": event["sender"], "content": event["content"],
        }));
    }
    Ok(stripped)
}

/// The body of `POST /publicRooms`, as the client and federation APIs
/// both spell it.
#[derive(serde::Deserialize, Default)]
pub struct PublicRoomsBody {
    pub limit: Option<u32>,
    pub since: Option<String>,
    pub filter: Option<PublicRoomsFilter>,
    #[serde(default)]
    pub include_all_networks: bool,
    pub third_party_instance_id: Option<String>,
}

/// `filter` of a public rooms request.
#[derive(serde::Deserialize, Default)]
pub struct PublicRoomsFilter {
    pub generic_search_term: Option<String>,
    /// `None` in the list stands for rooms without a type.
    pub room_types: Option<Vec<Option<String>>>,
}

impl PublicRoomsBody {
    /// Why the body is refused, if it is (the two network options exclude
    /// each other).
    pub fn refusal(&self) -> Option<&'static str> {
        (self.include_all_networks && self.third_party_instance_id.is_some())
            .then_some("include_all_networks and third_party_instance_id are exclusive")
    }
}

/// The request ID of a client's send with a transaction ID: one request
/// per sender, device, room, event type, redacted event and transaction
/// ID (the path a transaction ID is scoped to). The roomserver records it
/// with the events it wrote and answers a retry with them; a JSON array,
/// so no two sends name one request whatever their parts hold.
pub fn transaction_request_id(
    sender: &str,
    device_id: &str,
    room_id: &str,
    event_type: &str,
    redacts: Option<&str>,
    txn_id: &str,
) -> String {
    let parts = [
        sender,
        device_id,
        room_id,
        event_type,
        redacts.unwrap_or_default(),
        txn_id,
    ];
    format!("txn/{}", serde_json::Value::from(parts.as_slice()))
}

/// A request for a page of the public room directory from the client or
/// federation API's parameters.
pub fn public_rooms_request(
    limit: Option<u32>,
    since: Option<String>,
    filter: PublicRoomsFilter,
) -> pb::PublicRoomsRequest {
    let PublicRoomsFilter {
        generic_search_term: search_term,
        room_types,
    } = filter;
    let (filter_room_types, room_types) = match room_types {
        Some(types) => (
            true,
            types.into_iter().map(Option::unwrap_or_default).collect(),
        ),
        None => (false, Vec::new()),
    };
    pb::PublicRoomsRequest {
        limit: limit.unwrap_or(0),
        since: since.unwrap_or_default(),
        search_term: search_term.unwrap_or_default(),
        room_types,
        filter_room_types,
    }
}

/// A page of the public room directory as the client and federation APIs
/// spell it (`chunk`, `next_batch`, `prev_batch`,
/// `total_room_count_estimate`).
pub fn public_rooms_body(page: pb::PublicRoomsResponse) -> serde_json::Value {
    use serde_json::json;
    let chunk: Vec<serde_json::Value> = page.chunk.into_iter().map(public_room_json).collect();
    let mut body = json!({
        "chunk": chunk,
        "total_room_count_estimate": page.total_room_count_estimate,
    });
    if !page.next_batch.is_empty() {
        body["next_batch"] = json!(page.next_batch);
    }
    if !page.prev_batch.is_empty() {
        body["prev_batch"] = json!(page.prev_batch);
    }
    body
}

/// One room as the public room directory and the space hierarchy spell it
/// (the spec's `PublicRoomsChunk`).
pub fn public_room_json(room: pb::PublicRoom) -> serde_json::Value {
    let mut entry = serde_json::json!({
        "room_id": room.room_id,
        "num_joined_members": room.num_joined_members,
        "world_readable": room.world_readable,
        "guest_can_join": room.guest_can_join,
        "join_rule": room.join_rule,
    });
    for (key, value) in [
        ("name", room.name),
        ("topic", room.topic),
        ("canonical_alias", room.canonical_alias),
        ("avatar_url", room.avatar_url),
        ("room_type", room.room_type),
    ] {
        if let Some(value) = value {
            entry[key] = serde_json::json!(value);
        }
    }
    entry
}

/// Whether a state event closes its room to guests: an
/// `m.room.guest_access` whose `guest_access` is not `can_join`.
pub fn closes_to_guests(
    event_type: &str,
    state_key: Option<&str>,
    content: &serde_json::Value,
) -> bool {
    event_type == "m.room.guest_access"
        && state_key == Some("")
        && content
            .get("guest_access")
            .and_then(serde_json::Value::as_str)
            != Some("can_join")
}

/// The spec's MUST for guest access: once a room's guest access stops
/// being `can_join`, the guests of `server_name` in it leave (each sends
/// their own leave). Answers the log positions of the leaves written;
/// failures are logged, as the change of guest access stands.
pub async fn remove_guests(
    roomserver: &RoomserverHandle,
    users: &crate::users::UsersHandle,
    room_id: &str,
    server_name: &str,
) -> Vec<crate::proto::common::LogPosition> {
    let members = match roomserver
        .query_joined_members(pb::QueryJoinedMembersRequest {
            room_id: room_id.to_owned(),
            server_name: server_name.to_owned(),
            limit: 0,
        })
        .await
    {
        Ok(members) => members.user_ids,
        Err(error) => {
            tracing::warn!(room_id, %error, "guests not removed: members unknown");
            return Vec::new();
        }
    };
    let guests = match users
        .query_guests(crate::proto::userapi::QueryGuestsRequest { user_ids: members })
        .await
    {
        Ok(found) => found.guests,
        Err(error) => {
            tracing::warn!(room_id, %error, "guests not removed: guests unknown");
            return Vec::new();
        }
    };
    let mut positions = Vec::new();
    for guest in guests {
        let leave = pb::EventTemplate {
            event_type: "m.room.member".into(),
            state_key: Some(guest.clone()),
            sender: guest.clone(),
            content_json: br#"{"membership":"leave"}"#.to_vec(),
            redacts: None,
        };
        match roomserver
            .input(pb::InputRequest {
                room_id: room_id.to_owned(),
                templates: vec![leave],
                device_id: String::new(),
                transaction_id: String::new(),
            })
            .await
        {
            Ok(written) => positions.extend(written.output_position),
            Err(error) => tracing::warn!(room_id, guest, %error, "a guest was not removed"),
        }
    }
    positions
}

#[cfg(test)]
mod tests {
    use super::transaction_request_id;

    /// Sends to different paths never name one request, whatever their
    /// parts hold (event types and transaction IDs may hold `/` and more).
    #[test]
    fn transaction_request_ids_are_unambiguous() {
        let id = |event_type: &str, redacts: Option<&str>, txn: &str| {
            transaction_request_id("@a:x", "DEV", "!r:x", event_type, redacts, txn)
        };
        assert_ne!(id("x", None, "y//z"), id("x//y", None, "z"));
        assert_ne!(id("x\",\"y", None, "z"), id("x", None, "y\",\"z"));
        assert_ne!(
            id("m.room.redaction", Some("$e"), "t"),
            id("m.room.redaction", None, "t")
        );
        assert_eq!(id("x", None, "t"), id("x", None, "t"));
        assert_ne!(
            transaction_request_id("@a:x", "D/E", "!r:x", "x", None, "t"),
            transaction_request_id("@a:x", "D", "!r:x", "E/x", None, "t")
        );
    }
}
