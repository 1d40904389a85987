//! `POST /rooms/{roomId}/upgrade`: a new room of another version that
//! carries the old one's state forward, a tombstone pointing to it, the old
//! room restricted, and its aliases and directory entry moved over.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use ganglion_api::proto::roomserver as pb;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixJson, MatrixResult, respond};
use serde::Deserialize;
use serde_json::{Value, json};

use super::rooms::{room_version_rules, template};
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

#[derive(Deserialize)]
pub(crate) struct UpgradeBody {
    new_version: String,
}

pub(crate) async fn upgrade(
    State(api): State<Arc<ClientApi>>,
    Path(room_id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    MatrixJson(body): MatrixJson<UpgradeBody>,
) -> MatrixResult {
    let device = api.authenticate(&headers, &uri).await?;
    let user = device.user_id.as_str();
    let rules = room_version_rules(&body.new_version)?;
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
    // The upgrader needs to be able to send the copied state; the old power
    // levels follow, with creators of version 12+ rooms left out of them.
    let mut levels = find("m.room.power_levels").unwrap_or_else(|| json!({}));
    let privileged = rules.authorization.explicitly_privilege_room_creators;
    match levels.get_mut("users").and_then(Value::as_object_mut) {
        Some(users) if privileged => {
            users.remove(user);
        }
        Some(users) => {
            users.insert(user.to_owned(), json!(100));
        }
        None if !privileged => levels["users"] = json!({ user: 100 }),
        None => {}
    }
    let mut initial_state = vec![
        template(
            "m.room.member",
            Some(user),
            user,
            json!({ "membership": "join" }),
        ),
        template("m.room.power_levels", Some(""), user, levels),
    ];
    for kind in COPIED_STATE {
        if let Some(content) = find(kind)
            && content.as_object().is_some_and(|c| !c.is_empty())
        {
            initial_state.push(template(kind, Some(""), user, content));
        }
    }
    let created = api
        .roomserver
        .create_room(pb::CreateRoomRequest {
            room_version: body.new_version.clone(),
            creator: user.to_owned(),
            create_content_json: Value::Object(creation_content).to_string().into_bytes(),
            initial_state,
            alias: None,
        })
        .await
        .map_err(MatrixError::from)?;
    api.read_your_writes(created.output_position).await;
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
    api.read_your_writes(written.output_position).await;

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
        api.read_your_writes(written.output_position).await;
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
    respond(json!({ "replacement_room": new_room }))
}
