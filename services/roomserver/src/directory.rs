//! Aliases, the room directory and reports: who may change them, and the
//! public room list built from each published room's current state.

use ganglion_api::ApiError;
use ganglion_api::proto::roomserver as pb;
use ganglion_api::spaces;

use crate::RoomserverService;
use crate::events::{self, Pdu, StateMap};
use crate::storage::Member;

/// The most rooms one page of the public list holds.
const MAX_PUBLIC_ROOMS_PAGE: usize = 500;

/// The state a room's directory entry is made of.
const DESCRIBING_TYPES: [&str; 8] = [
    "m.room.name",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.join_rules",
    "m.room.create",
];

impl RoomserverService {
    /// The room's current state of the types that decide permissions.
    async fn power_state(&self, room_id: &str) -> Result<StateMap, ApiError> {
        let mut state = StateMap::new();
        for (kind, key, json) in self
            .storage
            .state_events_of_types(room_id, &["m.room.create", "m.room.power_levels"])
            .await?
        {
            let pdu = Pdu::from_json("$unknown", &json)?;
            state.insert((kind, key), std::sync::Arc::new(pdu));
        }
        Ok(state)
    }

    /// Whether `user_id` may send a state event of `event_type` in the room.
    pub(crate) async fn may_send_state(
        &self,
        room_id: &str,
        room_version: &str,
        user_id: &str,
        event_type: &str,
    ) -> Result<bool, ApiError> {
        let (_, rules) = events::rules_for(room_version)?;
        let user =
            ruma::UserId::parse(user_id).map_err(|e| ApiError::InvalidInput(e.to_string()))?;
        let state = self.power_state(room_id).await?;
        let needed = state
            .get(&("m.room.power_levels".to_owned(), String::new()))
            .and_then(|levels| {
                let content: serde_json::Value = serde_json::from_str(levels.content.get()).ok()?;
                content["events"][event_type].as_i64()
            })
            .unwrap_or_else(|| events::power_needed(&state, "state_default", 50));
        Ok(events::power_of(&rules, &state, &user) >= needed)
    }

    /// A user's membership in the room's current state (empty: none).
    pub(crate) async fn current_membership(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<String, ApiError> {
        Ok(self
            .storage
            .membership(room_id, user_id)
            .await?
            .unwrap_or_default())
    }

    pub(crate) async fn set_alias_for(&self, request: pb::SetAliasRequest) -> Result<(), ApiError> {
        let alias = ruma::RoomAliasId::parse(&request.alias)
            .map_err(|e| ApiError::InvalidInput(format!("alias: {e}")))?;
        if alias.server_name().as_str() != self.server_name {
            return Err(ApiError::InvalidInput(
                "aliases on other servers cannot be created here".into(),
            ));
        }
        if self.storage.room(&request.room_id).await?.is_none() {
            return Err(ApiError::NotFound("unknown room".into()));
        }
        if self
            .current_membership(&request.room_id, &request.user_id)
            .await?
            != "join"
        {
            return Err(ApiError::Forbidden(
                "you must be in the room to give it an alias".into(),
            ));
        }
        if !self
            .storage
            .add_alias(&request.alias, &request.room_id, &request.user_id)
            .await?
        {
            return Err(ApiError::RoomInUse);
        }
        Ok(())
    }

    pub(crate) async fn remove_alias_for(
        &self,
        request: pb::RemoveAliasRequest,
    ) -> Result<(), ApiError> {
        let (room_id, creator) = self
            .storage
            .alias(&request.alias)
            .await?
            .ok_or_else(|| ApiError::NotFound("unknown alias".into()))?;
        if creator != request.user_id {
            let room = self
                .storage
                .room(&room_id)
                .await?
                .ok_or_else(|| ApiError::NotFound("unknown room".into()))?;
            if !self
                .may_send_state(
                    &room_id,
                    &room.room_version,
                    &request.user_id,
                    "m.room.canonical_alias",
                )
                .await?
            {
                return Err(ApiError::Forbidden(
                    "only the alias's creator or a room admin may remove it".into(),
                ));
            }
        }
        self.storage.remove_alias(&request.alias).await?;
        Ok(())
    }

    pub(crate) async fn set_visibility_for(
        &self,
        request: pb::SetVisibilityRequest,
    ) -> Result<(), ApiError> {
        let room = self
            .storage
            .room(&request.room_id)
            .await?
            .ok_or_else(|| ApiError::NotFound("unknown room".into()))?;
        if self
            .current_membership(&request.room_id, &request.user_id)
            .await?
            != "join"
            || !self
                .may_send_state(
                    &request.room_id,
                    &room.room_version,
                    &request.user_id,
                    "m.room.canonical_alias",
                )
                .await?
        {
            return Err(ApiError::Forbidden(
                "only the room's admins may publish it".into(),
            ));
        }
        self.storage
            .set_published(&request.room_id, request.public)
            .await?;
        Ok(())
    }

    pub(crate) async fn public_rooms_page(
        &self,
        request: pb::PublicRoomsRequest,
    ) -> Result<pb::PublicRoomsResponse, ApiError> {
        let limit = match request.limit {
            0 => MAX_PUBLIC_ROOMS_PAGE,
            n => (n as usize).min(MAX_PUBLIC_ROOMS_PAGE),
        };
        let offset = match request.since.as_str() {
            "" => 0,
            token => token
                .strip_prefix('p')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| ApiError::InvalidInput("unknown pagination token".into()))?,
        };
        let term = request.search_term.to_lowercase();
        let mut rooms = Vec::new();
        for (room_id, joined) in self.storage.published_rooms().await? {
            let room = self.describe(&room_id, joined).await?;
            if request.filter_room_types {
                let kind = room.room_type.clone().unwrap_or_default();
                if !request.room_types.contains(&kind) {
                    continue;
                }
            }
            if !term.is_empty() {
                let haystack = [
                    room.name.as_deref(),
                    room.topic.as_deref(),
                    room.canonical_alias.as_deref(),
                    Some(room.room_id.as_str()),
                ];
                if !haystack
                    .iter()
                    .flatten()
                    .any(|text| text.to_lowercase().contains(&term))
                {
                    continue;
                }
            }
            rooms.push(room);
        }
        let total = rooms.len();
        let chunk: Vec<pb::PublicRoom> = rooms.into_iter().skip(offset).take(limit).collect();
        Ok(pb::PublicRoomsResponse {
            next_batch: if offset + chunk.len() < total {
                format!("p{}", offset + chunk.len())
            } else {
                String::new()
            },
            prev_batch: if offset > 0 {
                format!("p{}", offset.saturating_sub(limit))
            } else {
                String::new()
            },
            chunk,
            total_room_count_estimate: total as u64,
        })
    }

    /// A room as the directory shows it.
    async fn describe(&self, room_id: &str, joined: i64) -> Result<pb::PublicRoom, ApiError> {
        let state = self
            .storage
            .state_events_of_types(room_id, &DESCRIBING_TYPES)
            .await?;
        Ok(describe_state(room_id, joined, &state))
    }

    /// Rooms as a space hierarchy shows them to a user or a server (see
    /// `QueryRoomSummaries`): rooms this server is not in are not known.
    pub(crate) async fn room_summaries(
        &self,
        request: pb::QueryRoomSummariesRequest,
    ) -> Result<pb::QueryRoomSummariesResponse, ApiError> {
        if request.room_ids.len() > spaces::MAX_SUMMARIES {
            return Err(ApiError::InvalidInput(format!(
                "at most {} rooms at once",
                spaces::MAX_SUMMARIES
            )));
        }
        if request.user_id.is_empty() == request.server_name.is_empty() {
            return Err(ApiError::InvalidInput(
                "a summary is for a user or for a server".into(),
            ));
        }
        let valid: Vec<&str> = request
            .room_ids
            .iter()
            .map(String::as_str)
            .filter(|room_id| ganglion_base::limits::room_id(room_id).is_ok())
            .collect();
        let mut types = DESCRIBING_TYPES.to_vec();
        types.push("m.space.child");
        let overviews = self
            .storage
            .room_overviews(&valid, &self.server_name, &types)
            .await?;
        let mut summaries: Vec<pb::RoomSummary> = Vec::with_capacity(request.room_ids.len());
        for room_id in &request.room_ids {
            let mut summary = pb::RoomSummary {
                room_id: room_id.clone(),
                ..Default::default()
            };
            // Read, not taken: a room asked twice is described twice.
            if let Some(overview) = overviews.get(room_id) {
                summary.known = true;
                let room = describe_state(room_id, overview.joined, &overview.state);
                let join_rules = overview
                    .state
                    .iter()
                    .find(|(kind, key, _)| kind == "m.room.join_rules" && key.is_empty())
                    .and_then(|(_, _, json)| serde_json::from_str::<serde_json::Value>(json).ok());
                summary.allowed_room_ids = join_rules
                    .map(|event| spaces::allowed_rooms(&event["content"]))
                    .unwrap_or_default();
                if room.room_type.as_deref() == Some(spaces::SPACE) {
                    summary.children_state =
                        children_state(&overview.state, request.suggested_only);
                }
                summary.accessible = spaces::open_to_all(&room.join_rule, room.world_readable);
                summary.room = Some(room);
            }
            summaries.push(summary);
        }
        // Who may see the rest: the asker's memberships in those rooms and
        // in the rooms their join rules let members of in, read at once.
        let mut asked: Vec<&str> = Vec::new();
        for summary in summaries.iter().filter(|s| s.known && !s.accessible) {
            asked.push(&summary.room_id);
            asked.extend(summary.allowed_room_ids.iter().map(String::as_str));
        }
        asked.sort_unstable();
        asked.dedup();
        let who = if request.user_id.is_empty() {
            Member::OfServer(&request.server_name)
        } else {
            Member::User(&request.user_id)
        };
        let held = self
            .storage
            .memberships_in(&asked, who, &["join", "invite"])
            .await?;
        let holds = |room_id: &str, memberships: &[&str]| {
            held.iter().any(|(room, membership)| {
                room == room_id && memberships.contains(&membership.as_str())
            })
        };
        for summary in summaries.iter_mut().filter(|s| s.known && !s.accessible) {
            summary.accessible = holds(&summary.room_id, &["join", "invite"])
                || summary
                    .allowed_room_ids
                    .iter()
                    .any(|room_id| holds(room_id, &["join"]));
        }
        Ok(pb::QueryRoomSummariesResponse { rooms: summaries })
    }

    pub(crate) async fn report_for(&self, request: pb::ReportRequest) -> Result<(), ApiError> {
        let room = self
            .storage
            .room(&request.room_id)
            .await?
            .ok_or_else(|| ApiError::NotFound("unknown room".into()))?;
        let event_id = (!request.event_id.is_empty()).then_some(request.event_id.as_str());
        if let Some(event_id) = event_id {
            let stored = self.storage.events_by_id(&[event_id]).await?;
            if !stored
                .values()
                .any(|e| e.room_nid == room.room_nid && !e.pdu.rejected)
            {
                return Err(ApiError::NotFound("unknown event".into()));
            }
        }
        self.storage
            .add_report(
                &request.room_id,
                event_id,
                &request.user_id,
                &request.reason,
                request.score,
                ruma::MilliSecondsSinceUnixEpoch::now().get().into(),
            )
            .await?;
        Ok(())
    }
}

/// A room's directory entry from its state events (type, state key, JSON).
fn describe_state(
    room_id: &str,
    joined: i64,
    state: &[(String, String, String)],
) -> pb::PublicRoom {
    let mut room = pb::PublicRoom {
        room_id: room_id.to_owned(),
        num_joined_members: joined.max(0) as u64,
        join_rule: "invite".into(),
        ..Default::default()
    };
    for (kind, key, json) in state {
        if !key.is_empty() {
            continue;
        }
        let event: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        let content = &event["content"];
        let text = |field: &str| {
            content[field]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        match kind.as_str() {
            "m.room.name" => room.name = text("name"),
            "m.room.topic" => room.topic = text("topic"),
            "m.room.canonical_alias" => room.canonical_alias = text("alias"),
            "m.room.avatar" => room.avatar_url = text("url"),
            "m.room.history_visibility" => {
                room.world_readable = content["history_visibility"] == "world_readable"
            }
            "m.room.guest_access" => room.guest_can_join = content["guest_access"] == "can_join",
            "m.room.join_rules" => {
                room.join_rule = text("join_rule").unwrap_or_else(|| "invite".into())
            }
            "m.room.create" => room.room_type = text("type"),
            _ => {}
        }
    }
    room
}

/// A space's valid child events, stripped, in the spec's order, at most
/// [`spaces::MAX_CHILDREN`] (suggested ones only if asked).
fn children_state(state: &[(String, String, String)], suggested_only: bool) -> Vec<Vec<u8>> {
    let mut children: Vec<(spaces::Child, serde_json::Value)> = state
        .iter()
        .filter(|(kind, _, _)| kind == "m.space.child")
        .filter_map(|(_, key, json)| {
            let event: serde_json::Value = serde_json::from_str(json).ok()?;
            let ts = event["origin_server_ts"].as_i64()?;
            let child = spaces::Child::of_event(key, &event["content"], ts)?;
            (child.suggested || !suggested_only).then_some((child, event))
        })
        .collect();
    children.sort_by(|(a, _), (b, _)| spaces::child_order(a, b));
    children
        .into_iter()
        .take(spaces::MAX_CHILDREN)
        .filter_map(|(child, event)| {
            let stripped = spaces::stripped_child(
                &child.room_id,
                event["sender"].as_str()?,
                &event["content"],
                child.origin_server_ts,
            );
            serde_json::to_vec(&stripped).ok()
        })
        .collect()
}
