//! `POST /rooms/{roomId}/upgrade`: a new room of another version that
//! carries the old one's state forward, a tombstone pointing to it, the old
//! room restricted, and its aliases and directory entry moved over.

use std::sync::Arc;

use axum::extract::State;
use ganglion_api::proto::roomserver as pb;
use ganglion_api::proto::userapi as user_pb;
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, respond_ruma};
use ruma::api::client::room::upgrade_room;
use serde_json::{Value, json};

use super::rooms::{room_version_rules, template};
use super::{BodyCheck, Checked};
use crate::ClientApi;

/// State copied into the replacement room (the spec's list, plus pins).
const COPIED_STATE: [&str; 9] = [
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
    "m.room.pinned_events",
];

/// The new version, checked before ruma parses the body: one this server
/// does not support is 400 `M_UNSUPPORTED_ROOM_VERSION` however it is
/// spelled (ruma's parsing would answer `M_BAD_JSON` for some).
pub(crate) struct NewVersion;

impl BodyCheck for NewVersion {
    fn check(body: &Value) -> MatrixResult<()> {
        match &body["new_version"] {
            Value::String(version) => room_version_rules(version).map(|_| ()),
            _ => Ok(()),
        }
    }
}

pub(crate) async fn upgrade(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Checked(request, _): Checked<upgrade_room::v3::Request, NewVersion>,
) -> MatrixResult {
    let user = device.user_id.as_str();
    let new_version = request.new_version.to_string();
    let rules = room_version_rules(&new_version)?;
    let room_id = request.room_id.to_string();
    if !api.room_here(&room_id, user).await?.0 {
        return Err(MatrixError::not_found("No such room"));
    }
    let state = api.readable_state(&room_id, user).await?;
    let joined = state.iter().any(|e| {
        e["type"] == "m.room.member"
            && e["state_key"] == user
            && e["content"]["membership"] == "join"
    });
    if !joined {
        return Err(MatrixError::forbidden("You are not in this room"));
    }
    let allowed = api
        .roomserver
        .query_may_send_state(pb::QueryMaySendStateRequest {
            room_id: room_id.clone(),
            user_id: user.to_owned(),
            event_type: "m.room.tombstone".into(),
        })
        .await
        .map_err(MatrixError::from)?
        .allowed;
    if !allowed {
        return Err(MatrixError::forbidden("You may not upgrade this room"));
    }
    let find = |kind: &str| {
        state
            .iter()
            .find(|e| e["type"] == kind && e["state_key"] == "")
            .map(|e| e["content"].clone())
    };
    let old_create = find("m.room.create").unwrap_or_default();
    let mut creation_content = serde_json::Map::new();
    creation_content.insert("predecessor".into(), json!({ "room_id": room_id }));
    if let Some(kind) = old_create.get("type") {
        creation_content.insert("type".into(), kind.clone());
    }
    if let Some(federate) = old_create.get("m.federate") {
        creation_content.insert("m.federate".into(), federate.clone());
    }
    let privileged = rules.authorization.explicitly_privilege_room_creators;
    let (final_levels, working_levels) =
        carried_power_levels(find("m.room.power_levels"), user, privileged);
    let mut initial_state = vec![
        template(
            "m.room.member",
            Some(user),
            user,
            json!({ "membership": "join" }),
        ),
        template(
            "m.room.power_levels",
            Some(""),
            user,
            working_levels.clone(),
        ),
    ];
    for kind in COPIED_STATE {
        if let Some(content) = find(kind)
            && content.as_object().is_some_and(|c| !c.is_empty())
        {
            initial_state.push(template(kind, Some(""), user, content));
        }
    }
    // Those banned from the old room are banned from the new one.
    for banned in state.iter().filter(|e| {
        e["type"] == "m.room.member"
            && e["content"]["membership"] == "ban"
            && e["state_key"].as_str() != Some(user)
    }) {
        let mut content = json!({ "membership": "ban" });
        if let Some(reason) = banned["content"].get("reason") {
            content["reason"] = reason.clone();
        }
        initial_state.push(template(
            "m.room.member",
            banned["state_key"].as_str(),
            user,
            content,
        ));
    }
    // The upgrader's level was raised to send all that: the old levels
    // are restored last.
    if final_levels != working_levels {
        initial_state.push(template(
            "m.room.power_levels",
            Some(""),
            user,
            final_levels,
        ));
    }
    let created = api
        .roomserver
        .create_room(pb::CreateRoomRequest {
            room_version: new_version.clone(),
            creator: user.to_owned(),
            create_content_json: Value::Object(creation_content).to_string().into_bytes(),
            initial_state,
            alias: None,
        })
        .await
        .map_err(MatrixError::from)?;
    api.read_your_writes(&device.user_id, created.output_position)
        .await;
    let new_room = created.room_id;

    // The old room: a tombstone, then only moderators may speak or invite.
    let mut old_events = vec![template(
        "m.room.tombstone",
        Some(""),
        user,
        json!({ "body": "This room has been replaced", "replacement_room": new_room }),
    )];
    if let Some(mut levels) = find("m.room.power_levels") {
        let users_default = levels["users_default"].as_i64().unwrap_or(0);
        let restricted = 50.max(users_default + 1);
        if levels["events_default"].as_i64().unwrap_or(0) < restricted
            || levels["invite"].as_i64().unwrap_or(0) < restricted
        {
            levels["events_default"] = json!(restricted);
            levels["invite"] = json!(restricted);
            old_events.push(template("m.room.power_levels", Some(""), user, levels));
        }
    }
    let old_canonical = find("m.room.canonical_alias");
    if old_canonical
        .as_ref()
        .is_some_and(|c| c.get("alias").is_some() || c.get("alt_aliases").is_some())
    {
        old_events.push(template(
            "m.room.canonical_alias",
            Some(""),
            user,
            json!({}),
        ));
    }
    let written = api
        .roomserver
        .input(pb::InputRequest {
            room_id: room_id.clone(),
            templates: old_events,
            device_id: String::new(),
            transaction_id: String::new(),
        })
        .await
        .map_err(MatrixError::from)?;
    api.read_your_writes(&device.user_id, written.output_position)
        .await;

    // Aliases and the directory entry follow the room.
    let aliases = api
        .roomserver
        .room_aliases(pb::RoomAliasesRequest {
            room_id: room_id.clone(),
        })
        .await
        .map_err(MatrixError::from)?
        .aliases;
    for alias in aliases {
        let removed = api
            .roomserver
            .remove_alias(pb::RemoveAliasRequest {
                alias: alias.clone(),
                user_id: user.to_owned(),
            })
            .await;
        if removed.is_ok() {
            let _ = api
                .roomserver
                .set_alias(pb::SetAliasRequest {
                    alias,
                    room_id: new_room.clone(),
                    user_id: user.to_owned(),
                })
                .await;
        }
    }
    if let Some(canonical) = old_canonical.filter(|c| c.as_object().is_some_and(|c| !c.is_empty()))
    {
        let written = api
            .roomserver
            .input(pb::InputRequest {
                room_id: new_room.clone(),
                templates: vec![template(
                    "m.room.canonical_alias",
                    Some(""),
                    user,
                    canonical,
                )],
                device_id: String::new(),
                transaction_id: String::new(),
            })
            .await
            .map_err(MatrixError::from)?;
        api.read_your_writes(&device.user_id, written.output_position)
            .await;
    }
    let public = api
        .roomserver
        .get_visibility(pb::GetVisibilityRequest {
            room_id: room_id.clone(),
        })
        .await
        .map_err(MatrixError::from)?
        .public;
    if public {
        for (room, public) in [(new_room.clone(), true), (room_id.clone(), false)] {
            api.roomserver
                .set_visibility(pb::SetVisibilityRequest {
                    room_id: room,
                    user_id: user.to_owned(),
                    public,
                })
                .await
                .map_err(MatrixError::from)?;
        }
    }
    api.carry_into_successor(&room_id, &new_room, user).await;
    let new_room = ruma::OwnedRoomId::try_from(new_room)
        .map_err(|_| MatrixError::unknown("the new room's ID is invalid"))?;
    respond_ruma(upgrade_room::v3::Response::new(new_room))
}

/// The power levels of the new room: (as the old room had them, as the
/// room starts with them). The upgrader keeps their level, raised while
/// the old state is copied to the highest level that state needs (and at
/// least 100); creators of version 12+ rooms are left out, as they outrank
/// every level.
fn carried_power_levels(old: Option<Value>, user: &str, privileged: bool) -> (Value, Value) {
    let mut levels = old.unwrap_or_else(|| json!({}));
    if !levels.is_object() {
        levels = json!({});
    }
    if privileged {
        if let Some(users) = levels.get_mut("users").and_then(Value::as_object_mut) {
            users.remove(user);
        }
        return (levels.clone(), levels);
    }
    let as_level = |v: &Value| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let mut needed = 100;
    for key in [
        "ban",
        "kick",
        "redact",
        "invite",
        "state_default",
        "events_default",
    ] {
        if let Some(level) = levels.get(key).and_then(as_level) {
            needed = needed.max(level);
        }
    }
    for map in ["events", "users"] {
        for level in levels
            .get(map)
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(as_level)
        {
            needed = needed.max(level);
        }
    }
    let own = levels["users"].get(user).and_then(as_level);
    let mut final_levels = levels.clone();
    if !final_levels["users"].is_object() {
        final_levels["users"] = json!({});
    }
    // An upgrader who had no entry keeps the 100 an upgrade has always
    // given them.
    final_levels["users"][user] = json!(own.unwrap_or(100).max(100));
    let mut working = final_levels.clone();
    working["users"][user] = json!(needed);
    (final_levels, working)
}

impl ClientApi {
    /// What a user kept about the old room goes with them to its
    /// successor: its tags, and its place in `m.direct`. Done when the
    /// user upgrades the room or joins its successor; a failure is logged.
    pub(crate) async fn carry_into_successor(&self, old_room: &str, new_room: &str, user_id: &str) {
        let read = |room_id: &str, data_type: &str| {
            self.users.get_account_data(user_pb::GetAccountDataRequest {
                user_id: user_id.to_owned(),
                room_id: room_id.to_owned(),
                data_type: data_type.to_owned(),
            })
        };
        let mut writes = Vec::new();
        if let Ok(found) = read(old_room, "m.tag").await
            && let Some(tags) = found
                .content_json
                .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
            && tags["tags"].as_object().is_some_and(|t| !t.is_empty())
        {
            writes.push((new_room.to_owned(), "m.tag", tags));
        }
        if let Ok(found) = read("", "m.direct").await
            && let Some(mut direct) = found
                .content_json
                .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
        {
            let mut changed = false;
            for rooms in direct
                .as_object_mut()
                .into_iter()
                .flat_map(|m| m.values_mut())
                .filter_map(Value::as_array_mut)
            {
                if rooms.iter().any(|r| r == old_room) && !rooms.iter().any(|r| r == new_room) {
                    rooms.push(json!(new_room));
                    changed = true;
                }
            }
            if changed {
                writes.push((String::new(), "m.direct", direct));
            }
        }
        for (room_id, data_type, content) in writes {
            let written = self
                .users
                .set_account_data(user_pb::SetAccountDataRequest {
                    user_id: user_id.to_owned(),
                    room_id,
                    data_type: data_type.to_owned(),
                    content_json: content.to_string().into_bytes(),
                })
                .await;
            match written {
                Ok(written) => self.read_your_writes(user_id, written.position).await,
                Err(error) => {
                    tracing::info!(user_id, data_type, %error, "not carried to the new room");
                }
            }
        }
    }
}
