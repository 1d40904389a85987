//! Reading a room's state: `/state`, `/joined_members`, and `/joined_rooms`
//! (`/members`, which takes a point in the timeline, is the syncapi's). Members read the current state; users who left read
//! the state as it was when they left.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use ganglion_api::proto::roomserver as pb;
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, Ruma, respond_ruma};
use ruma::api::client::membership::{joined_members, joined_rooms};
use ruma::api::client::state::get_state_events;
use ruma::serde::Raw;
use serde_json::{Value, json};

use crate::ClientApi;

impl ClientApi {
    /// The current state (`event_id` empty) or the state before an event,
    /// as (event ID, event); `None` when the room is unknown.
    async fn state_events(
        &self,
        room_id: &str,
        event_id: &str,
    ) -> MatrixResult<Option<Vec<(String, Value)>>> {
        let state = self
            .roomserver
            .query_state(pb::QueryStateRequest {
                room_id: room_id.to_owned(),
                event_id: event_id.to_owned(),
            })
            .await
            .map_err(MatrixError::from)?;
        if !state.room_exists {
            return Ok(None);
        }
        Ok(Some(
            state
                .state_event_ids
                .into_iter()
                .zip(state.state_events_json)
                .filter_map(|(id, json)| Some((id, serde_json::from_slice::<Value>(&json).ok()?)))
                .collect(),
        ))
    }

    /// The room state `user_id` may read: the current state while joined
    /// (or when the history is world-readable), the state when they left
    /// otherwise; `M_FORBIDDEN` if they were never in the room.
    pub(crate) async fn readable_state(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> MatrixResult<Vec<Value>> {
        ruma::RoomId::parse(room_id).map_err(|_| MatrixError::invalid_param("invalid room ID"))?;
        let Some(events) = self.state_events(room_id, "").await? else {
            return Err(MatrixError::forbidden("You are not in this room"));
        };
        let own = events
            .iter()
            .find(|(_, e)| e["type"] == "m.room.member" && e["state_key"] == user_id);
        let membership = own
            .map(|(_, e)| e["content"]["membership"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let world_readable = events.iter().any(|(_, e)| {
            e["type"] == "m.room.history_visibility"
                && e["content"]["history_visibility"] == "world_readable"
        });
        if membership == "join" || world_readable {
            return Ok(events
                .into_iter()
                .map(|(id, e)| client_event(id, e))
                .collect());
        }
        let Some((leave_id, leave)) = own.filter(|_| matches!(membership, "leave" | "ban")) else {
            return Err(MatrixError::forbidden("You are not in this room"));
        };
        let before = self
            .state_events(room_id, leave_id)
            .await?
            .unwrap_or_default();
        // Never joined (a rejected invite, a withdrawn knock): nothing to see.
        let was_member = before.iter().any(|(_, e)| {
            e["type"] == "m.room.member"
                && e["state_key"] == user_id
                && e["content"]["membership"] == "join"
        });
        if !was_member {
            return Err(MatrixError::forbidden("You are not in this room"));
        }
        let mut state: Vec<Value> = before
            .into_iter()
            .filter(|(_, e)| !(e["type"] == "m.room.member" && e["state_key"] == user_id))
            .map(|(id, e)| client_event(id, e))
            .collect();
        state.push(client_event(leave_id.clone(), leave.clone()));
        Ok(state)
    }

    /// The content of a current state event with an empty state key.
    pub(crate) async fn state_content(
        &self,
        room_id: &str,
        event_type: &str,
    ) -> MatrixResult<Option<Value>> {
        Ok(self
            .roomserver
            .query_state_event(pb::QueryStateEventRequest {
                room_id: room_id.to_owned(),
                event_type: event_type.to_owned(),
                state_key: String::new(),
            })
            .await
            .map_err(MatrixError::from)?
            .event_json
            .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
            .map(|event| event["content"].clone()))
    }

    /// The user's membership of a room (`M_INVALID_PARAM` for a bad room ID).
    pub(crate) async fn membership_of(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> MatrixResult<pb::QueryMembershipResponse> {
        ruma::RoomId::parse(room_id).map_err(|_| MatrixError::invalid_param("invalid room ID"))?;
        self.roomserver
            .query_membership(pb::QueryMembershipRequest {
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
            })
            .await
            .map_err(MatrixError::from)
    }

    /// Requires the user to be joined, or the room's history world-readable.
    pub(crate) async fn require_member_or_world_readable(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> MatrixResult<()> {
        if self.membership_of(room_id, user_id).await?.membership == "join" {
            return Ok(());
        }
        let visibility = self
            .state_content(room_id, "m.room.history_visibility")
            .await?;
        if visibility.is_some_and(|c| c["history_visibility"] == "world_readable") {
            return Ok(());
        }
        Err(MatrixError::forbidden("You are not in this room"))
    }
}

/// A PDU as clients see it: the event ID included, federation fields out.
pub(crate) fn client_event(event_id: String, mut event: Value) -> Value {
    if let Some(object) = event.as_object_mut() {
        for field in [
            "auth_events",
            "prev_events",
            "hashes",
            "signatures",
            "depth",
            "origin",
            "prev_state",
            "membership",
        ] {
            object.remove(field);
        }
        object.insert("event_id".into(), json!(event_id));
    }
    event
}

pub(crate) async fn state(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<get_state_events::v3::Request>,
) -> MatrixResult {
    let state = api
        .readable_state(request.room_id.as_str(), &device.user_id)
        .await?
        .iter()
        .map(|event| {
            serde_json::value::to_raw_value(event)
                .map(Raw::from_json)
                .map_err(|e| MatrixError::unknown(format!("a state event: {e}")))
        })
        .collect::<MatrixResult<_>>()?;
    respond_ruma(get_state_events::v3::Response::new(state))
}

pub(crate) async fn joined_members(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<joined_members::v3::Request>,
) -> MatrixResult {
    let state = api
        .readable_state(request.room_id.as_str(), &device.user_id)
        .await?;
    let mut joined = BTreeMap::new();
    for event in state {
        if event["type"] == "m.room.member" && event["content"]["membership"] == "join" {
            let Ok(user) =
                ruma::OwnedUserId::try_from(event["state_key"].as_str().unwrap_or_default())
            else {
                continue;
            };
            let mut member = joined_members::v3::RoomMember::new();
            member.display_name = event["content"]["displayname"].as_str().map(str::to_owned);
            member.avatar_url = event["content"]["avatar_url"].as_str().map(Into::into);
            joined.insert(user, member);
        }
    }
    respond_ruma(joined_members::v3::Response::new(joined))
}

pub(crate) async fn joined_rooms(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(_): Ruma<joined_rooms::v3::Request>,
) -> MatrixResult {
    let rooms = api
        .roomserver
        .query_joined_rooms(pb::QueryJoinedRoomsRequest {
            user_id: device.user_id,
            ..Default::default()
        })
        .await
        .map_err(MatrixError::from)?
        .room_ids
        .into_iter()
        .filter_map(|room| ruma::OwnedRoomId::try_from(room).ok())
        .collect();
    respond_ruma(joined_rooms::v3::Response::new(rooms))
}
