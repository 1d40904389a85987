//! `POST /createRoom`, joins and leaves.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use ganglion_api::proto::roomserver as pb;
use ganglion_api::users::{User, UserOrGuest};
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixJson, MatrixResult, Ruma, respond, respond_ruma};
use ruma::api::client::knock::knock_room;
use ruma::api::client::membership::{
    ban_user, forget_room, invite_user, join_room_by_id, join_room_by_id_or_alias, kick_user,
    leave_room, unban_user,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{BodyCheck, Checked};
use crate::ClientApi;
use crate::internal_events::ROOM_WRITES;

/// The room version new rooms get unless the client asks for another: the
/// one the specification currently recommends.
pub(crate) const DEFAULT_ROOM_VERSION: &str = "12";

#[derive(Deserialize)]
pub(crate) struct CreateRoomBody {
    visibility: Option<String>,
    room_alias_name: Option<String>,
    name: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    invite: Vec<String>,
    room_version: Option<String>,
    creation_content: Option<Map<String, Value>>,
    #[serde(default)]
    initial_state: Vec<StateEventBody>,
    preset: Option<String>,
    #[serde(default)]
    is_direct: bool,
    power_level_content_override: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
pub(crate) struct StateEventBody {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    state_key: String,
    content: Map<String, Value>,
}

/// The rules of a room version this server supports, or
/// `M_UNSUPPORTED_ROOM_VERSION`.
pub(crate) fn room_version_rules(
    version: &str,
) -> MatrixResult<ruma::room_version_rules::RoomVersionRules> {
    ruma::RoomVersionId::try_from(version)
        .ok()
        .and_then(|v| v.rules())
        .ok_or_else(|| {
            MatrixError::new(
                StatusCode::BAD_REQUEST,
                "M_UNSUPPORTED_ROOM_VERSION",
                "Unsupported room version",
            )
        })
}

/// An event for the roomserver to complete, sign and authorise.
pub(crate) fn template(
    event_type: &str,
    state_key: Option<&str>,
    sender: &str,
    content: Value,
) -> pb::EventTemplate {
    pb::EventTemplate {
        event_type: event_type.to_owned(),
        state_key: state_key.map(str::to_owned),
        sender: sender.to_owned(),
        content_json: content.to_string().into_bytes(),
        redacts: None,
    }
}

pub(crate) async fn create_room(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    MatrixJson(body): MatrixJson<CreateRoomBody>,
) -> MatrixResult {
    api.rate_limits
        .room_creation_per_user
        .check(&device.user_id)?;
    let sender = device.user_id.as_str();
    let version = body
        .room_version
        .clone()
        .unwrap_or_else(|| DEFAULT_ROOM_VERSION.to_owned());
    let rules = room_version_rules(&version)?;
    let publish = match body.visibility.as_deref() {
        Some("public") => true,
        Some("private") | None => false,
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "visibility must be public or private",
            ));
        }
    };
    let preset = match body.preset.as_deref() {
        Some(p @ ("private_chat" | "public_chat" | "trusted_private_chat")) => p.to_owned(),
        Some(_) => return Err(MatrixError::bad_json("unknown preset")),
        None if body.visibility.as_deref() == Some("public") => "public_chat".to_owned(),
        None => "private_chat".to_owned(),
    };
    for invitee in &body.invite {
        ganglion_base::limits::user_id(invitee)?;
    }
    for _ in &body.invite {
        api.rate_limits.invites_per_user.check(&device.user_id)?;
    }
    for content in body
        .initial_state
        .iter()
        .map(|e| &e.content)
        .chain(body.creation_content.as_ref())
        .chain(body.power_level_content_override.as_ref())
    {
        super::require_canonical(content)?;
    }
    let alias = match &body.room_alias_name {
        Some(name) => {
            let alias = format!("#{name}:{}", api.server_name);
            if name.is_empty()
                || name.contains([':', '#', ' '])
                || ruma::RoomAliasId::parse(&alias).is_err()
            {
                return Err(MatrixError::invalid_param("invalid room_alias_name"));
            }
            Some(alias)
        }
        None => None,
    };
    let creators_are_privileged = rules.authorization.explicitly_privilege_room_creators;
    let mut users = Map::new();
    if !creators_are_privileged {
        users.insert(sender.to_owned(), json!(100));
    }
    if preset == "trusted_private_chat" {
        for invitee in &body.invite {
            users.insert(invitee.clone(), json!(100));
        }
    }
    let mut power_levels = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
            "m.room.server_acl": 100, "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50, "kick": 50, "redact": 50, "invite": 0,
        "notifications": { "room": 50 },
    });
    if let (Some(over), Some(object)) = (
        &body.power_level_content_override,
        power_levels.as_object_mut(),
    ) {
        for (key, value) in over {
            object.insert(key.clone(), value.clone());
        }
    }
    let (join_rule, guest_access) = match preset.as_str() {
        "public_chat" => ("public", "forbidden"),
        _ => ("invite", "can_join"),
    };
    let mut state = vec![
        template(
            "m.room.member",
            Some(sender),
            sender,
            json!({ "membership": "join" }),
        ),
        template("m.room.power_levels", Some(""), sender, power_levels),
    ];
    if let Some(alias) = &alias {
        state.push(template(
            "m.room.canonical_alias",
            Some(""),
            sender,
            json!({ "alias": alias }),
        ));
    }
    state.push(template(
        "m.room.join_rules",
        Some(""),
        sender,
        json!({ "join_rule": join_rule }),
    ));
    state.push(template(
        "m.room.history_visibility",
        Some(""),
        sender,
        json!({ "history_visibility": "shared" }),
    ));
    state.push(template(
        "m.room.guest_access",
        Some(""),
        sender,
        json!({ "guest_access": guest_access }),
    ));
    for event in body.initial_state {
        state.push(template(
            &event.event_type,
            Some(&event.state_key),
            sender,
            Value::Object(event.content),
        ));
    }
    if let Some(name) = body.name {
        state.push(template(
            "m.room.name",
            Some(""),
            sender,
            json!({ "name": name }),
        ));
    }
    if let Some(topic) = body.topic {
        state.push(template(
            "m.room.topic",
            Some(""),
            sender,
            json!({ "topic": topic }),
        ));
    }
    let invite_content = || {
        let mut content = json!({ "membership": "invite" });
        if body.is_direct {
            content["is_direct"] = json!(true);
        }
        content
    };
    // Local invitees are invited in the initial state; other servers'
    // once the room exists, each countersigned by the invitee's server.
    let (local_invitees, remote_invitees): (Vec<&String>, Vec<&String>) =
        body.invite.iter().partition(|invitee| {
            ruma::UserId::parse(invitee.as_str())
                .is_ok_and(|user| user.server_name() == api.server_name.as_str())
        });
    for invitee in local_invitees {
        state.push(template(
            "m.room.member",
            Some(invitee),
            sender,
            invite_content(),
        ));
    }
    let mut creation_content = body.creation_content.unwrap_or_default();
    creation_content.remove("room_version");
    let result = api
        .roomserver
        .create_room(pb::CreateRoomRequest {
            room_version: version,
            creator: sender.to_owned(),
            create_content_json: Value::Object(creation_content).to_string().into_bytes(),
            initial_state: state,
            alias: alias.clone(),
        })
        .await;
    ROOM_WRITES
        .with_label_values(&["create_room", if result.is_ok() { "ok" } else { "error" }])
        .inc();
    let response = result.map_err(MatrixError::from)?;
    api.read_your_writes(&device.user_id, response.output_position)
        .await;
    if publish {
        api.roomserver
            .set_visibility(pb::SetVisibilityRequest {
                room_id: response.room_id.clone(),
                user_id: sender.to_owned(),
                public: true,
            })
            .await
            .map_err(MatrixError::from)?;
    }
    for invitee in remote_invitees {
        // As Synapse does: the room stands even if an invite fails.
        if let Err(error) = api
            .invite_remote(&response.room_id, sender, invitee, invite_content())
            .await
        {
            tracing::warn!(%invitee, room_id = %response.room_id, ?error, "an invite to another server failed");
        }
    }
    let mut body = json!({ "room_id": response.room_id });
    if let Some(alias) = alias {
        body["room_alias"] = json!(alias);
    }
    respond(body)
}

impl ClientApi {
    /// Sends one membership event: `sender` sets `target`'s membership.
    pub(crate) async fn membership(
        &self,
        room_id: &str,
        sender: &str,
        target: &str,
        membership: &str,
        reason: Option<&str>,
    ) -> MatrixResult<String> {
        ruma::RoomId::parse(room_id).map_err(|_| MatrixError::invalid_param("invalid room ID"))?;
        let mut content = json!({ "membership": membership });
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        if membership == "join" && sender == target {
            // As Synapse does: the joiner's profile rides on their join.
            for (key, value) in self.own_profile(sender).await {
                content[key] = value;
            }
        }
        let result = self
            .roomserver
            .input(pb::InputRequest {
                room_id: room_id.to_owned(),
                templates: vec![template("m.room.member", Some(target), sender, content)],
                device_id: String::new(),
                transaction_id: String::new(),
            })
            .await;
        ROOM_WRITES
            .with_label_values(&[membership, if result.is_ok() { "ok" } else { "error" }])
            .inc();
        let response = result.map_err(MatrixError::from)?;
        self.read_your_writes(sender, response.output_position)
            .await;
        Ok(response.event_ids.into_iter().next().unwrap_or_default())
    }

    /// Guests join only rooms whose `m.room.guest_access` is `can_join`.
    async fn require_guest_access(&self, room_id: &str) -> MatrixResult<()> {
        let guest_access = self.state_content(room_id, "m.room.guest_access").await?;
        if guest_access.is_some_and(|c| c["guest_access"] == "can_join") {
            return Ok(());
        }
        Err(MatrixError::new(
            StatusCode::FORBIDDEN,
            "M_GUEST_ACCESS_FORBIDDEN",
            "Guests may not join this room",
        ))
    }

    /// A room ID, or the room an alias points to.
    /// Whether the roomserver holds the room, and, for a room it does not
    /// hold, the server `user_id`'s invite came from or knock went to.
    pub(crate) async fn room_here(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> MatrixResult<(bool, Option<String>)> {
        let membership = self
            .roomserver
            .query_membership(pb::QueryMembershipRequest {
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
            })
            .await
            .map_err(MatrixError::from)?;
        Ok((membership.room_exists, membership.via_server))
    }

    /// A room ID, or an alias resolved here or by its server, with the
    /// servers the alias's server says are in the room.
    pub(crate) async fn room_and_servers(
        &self,
        room_id_or_alias: &str,
    ) -> MatrixResult<(String, Vec<String>)> {
        if room_id_or_alias.starts_with('#') {
            ganglion_base::limits::room_alias(room_id_or_alias)?;
        }
        if let Ok(alias) = ruma::RoomAliasId::parse(room_id_or_alias)
            && alias.server_name() != self.server_name.as_str()
        {
            let resolved = self
                .federation
                .query_directory(ganglion_api::proto::federationapi::QueryDirectoryRequest {
                    server_name: alias.server_name().to_string(),
                    alias: room_id_or_alias.to_owned(),
                })
                .await
                .map_err(super::directory::remote_alias_error)?;
            let room_id = resolved
                .room_id
                .ok_or_else(|| MatrixError::not_found("Room alias not found"))?;
            let mut servers = resolved.servers;
            servers.push(alias.server_name().to_string());
            return Ok((room_id, servers));
        }
        Ok((self.room_id_of(room_id_or_alias).await?, Vec::new()))
    }

    pub(crate) async fn room_id_of(&self, room_id_or_alias: &str) -> MatrixResult<String> {
        if room_id_or_alias.starts_with('#') {
            ruma::RoomAliasId::parse(room_id_or_alias)
                .map_err(|_| MatrixError::invalid_param("invalid room alias"))?;
            self.roomserver
                .resolve_alias(pb::ResolveAliasRequest {
                    alias: room_id_or_alias.to_owned(),
                })
                .await
                .map_err(MatrixError::from)?
                .room_id
                .ok_or_else(|| MatrixError::not_found("Room alias not found"))
        } else {
            ganglion_base::limits::room_id(room_id_or_alias)?;
            Ok(room_id_or_alias.to_owned())
        }
    }
}

/// The user changes their own membership (join, knock, leave).
pub(crate) async fn own_membership(
    api: &ClientApi,
    device: &ganglion_api::proto::userapi::Device,
    reason: Option<&str>,
    room_id_or_alias: &str,
    membership: &str,
) -> MatrixResult<String> {
    let room_id = api.room_id_of(room_id_or_alias).await?;
    if device.is_guest && membership == "join" {
        api.require_guest_access(&room_id).await?;
    }
    api.membership(
        &room_id,
        &device.user_id,
        &device.user_id,
        membership,
        reason,
    )
    .await?;
    Ok(room_id)
}

/// The `server_name` and `via` parameters of a join, in order.
fn via_servers(uri: &Uri) -> MatrixResult<Vec<String>> {
    let mut servers = ganglion_base::http::query_values(uri, "server_name");
    servers.extend(ganglion_base::http::query_values(uri, "via"));
    for server in &servers {
        ganglion_base::limits::server_name(server)?;
    }
    Ok(servers)
}

/// A room this server is not in, to join or knock on through another
/// server: the room ID, the servers to ask in order (an inviter's server,
/// those the request names, those the alias's server lists, the room ID's
/// own), and the membership's extra content. None (with the room ID):
/// the room is here.
async fn remote_room(
    api: &ClientApi,
    device: &ganglion_api::proto::userapi::Device,
    room_id_or_alias: &str,
    uri: &Uri,
    reason: Option<&str>,
    membership: &str,
) -> MatrixResult<(
    String,
    Option<ganglion_api::proto::federationapi::JoinRoomRequest>,
)> {
    let mut servers = via_servers(uri)?;
    let (room_id, alias_servers) = api.room_and_servers(room_id_or_alias).await?;
    let (room_exists, inviter_server) = api.room_here(&room_id, &device.user_id).await?;
    // A room we know but have left (no user of ours joined, others still
    // are) is joined again through the servers still in it: they hold its
    // state now, we a stale copy.
    let mut resident = Vec::new();
    if room_exists {
        let joined = |server_name: &str, limit: u32| {
            api.roomserver
                .query_joined_members(pb::QueryJoinedMembersRequest {
                    room_id: room_id.clone(),
                    server_name: server_name.to_owned(),
                    limit,
                })
        };
        // Whether one of ours is joined: the usual case, one row to read.
        if !joined(&api.server_name, 1)
            .await
            .map_err(MatrixError::from)?
            .user_ids
            .is_empty()
        {
            return Ok((room_id, None));
        }
        let everyone = joined("", 0).await.map_err(MatrixError::from)?.user_ids;
        if everyone.is_empty() {
            return Ok((room_id, None));
        }
        resident = everyone
            .iter()
            .filter_map(|user| ganglion_api::users::server_of(user).map(str::to_owned))
            .collect();
    }
    if let Some(server) = inviter_server {
        servers.insert(0, server);
    }
    if device.is_guest {
        return Err(MatrixError::new(
            StatusCode::FORBIDDEN,
            "M_GUEST_ACCESS_FORBIDDEN",
            format!("Guests may not {membership} rooms on other servers"),
        ));
    }
    servers.extend(alias_servers);
    if let Some(server) = ruma::RoomId::parse(&room_id)
        .ok()
        .and_then(|id| id.server_name().map(|s| s.to_string()))
    {
        servers.push(server);
    }
    servers.extend(resident);
    servers.retain(|s| *s != api.server_name);
    let mut seen = std::collections::HashSet::new();
    servers.retain(|s| seen.insert(s.clone()));
    if servers.is_empty() {
        return Err(MatrixError::not_found(format!(
            "No known server to {membership} the room through"
        )));
    }
    let mut content = api.own_profile(&device.user_id).await;
    if let Some(reason) = reason {
        content.insert("reason".into(), json!(reason));
    }
    let content_json = Value::Object(content).to_string().into_bytes();
    Ok((
        room_id.clone(),
        Some(ganglion_api::proto::federationapi::JoinRoomRequest {
            room_id,
            user_id: device.user_id.clone(),
            servers,
            content_json,
        }),
    ))
}

/// A join of a room by ID or alias: a room this server is not in is joined
/// through another server. The servers to try are the query's
/// `server_name` and `via` values, in that order.
async fn join_room(
    api: &ClientApi,
    device: &ganglion_api::proto::userapi::Device,
    room_id_or_alias: &str,
    uri: &Uri,
    reason: Option<&str>,
) -> MatrixResult<ruma::OwnedRoomId> {
    api.rate_limits.joins_per_user.check(&device.user_id)?;
    let (room_id, remote) = remote_room(api, device, room_id_or_alias, uri, reason, "join").await?;
    if let Some(request) = remote {
        let joined = api
            .federation
            .join_room(request)
            .await
            .map_err(MatrixError::from)?;
        api.read_your_writes(&device.user_id, joined.output_position)
            .await;
        return owned_room_id(room_id);
    }
    let room_id = own_membership(api, device, reason, &room_id, "join").await?;
    // Joining an upgraded room's successor: the user's tags and direct
    // chats follow.
    if let Ok(Some(create)) = api.state_content(&room_id, "m.room.create").await
        && let Some(old_room) = create["predecessor"]["room_id"].as_str()
    {
        api.carry_into_successor(old_room, &room_id, &device.user_id)
            .await;
    }
    owned_room_id(room_id)
}

/// A room ID this server resolved or holds, as ruma's type.
fn owned_room_id(room_id: String) -> MatrixResult<ruma::OwnedRoomId> {
    ruma::OwnedRoomId::try_from(room_id)
        .map_err(|e| MatrixError::unknown(format!("a resolved room ID: {e}")))
}

/// `POST /join/{roomIdOrAlias}`. The query's `server_name` and `via` are
/// read from the URI (ruma's type keeps only one of the two).
pub(crate) async fn join(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    uri: Uri,
    Ruma(request): Ruma<join_room_by_id_or_alias::v3::Request>,
) -> MatrixResult {
    let room_id = join_room(
        &api,
        &device,
        request.room_id_or_alias.as_str(),
        &uri,
        request.reason.as_deref(),
    )
    .await?;
    respond_ruma(join_room_by_id_or_alias::v3::Response::new(room_id))
}

/// `POST /rooms/{roomId}/join`; a `server_name` or `via` in the query is
/// heeded as for `/join/{roomIdOrAlias}`.
pub(crate) async fn join_by_id(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    uri: Uri,
    Ruma(request): Ruma<join_room_by_id::v3::Request>,
) -> MatrixResult {
    let room_id = join_room(
        &api,
        &device,
        request.room_id.as_str(),
        &uri,
        request.reason.as_deref(),
    )
    .await?;
    respond_ruma(join_room_by_id::v3::Response::new(room_id))
}

/// `POST /knock/{roomIdOrAlias}`. A room this server is not in is knocked
/// on through another server.
pub(crate) async fn knock(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    uri: Uri,
    Ruma(request): Ruma<knock_room::v3::Request>,
) -> MatrixResult {
    api.rate_limits.joins_per_user.check(&device.user_id)?;
    let reason = request.reason.as_deref();
    let (room_id, remote) = remote_room(
        &api,
        &device,
        request.room_id_or_alias.as_str(),
        &uri,
        reason,
        "knock",
    )
    .await?;
    if let Some(request) = remote {
        let knocked = api
            .federation
            .knock_room(request)
            .await
            .map_err(MatrixError::from)?;
        api.read_your_writes(&device.user_id, knocked.output_position)
            .await;
        return respond_ruma(knock_room::v3::Response::new(owned_room_id(room_id)?));
    }
    let room_id = own_membership(&api, &device, reason, &room_id, "knock").await?;
    respond_ruma(knock_room::v3::Response::new(owned_room_id(room_id)?))
}

pub(crate) async fn leave(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<leave_room::v3::Request>,
) -> MatrixResult {
    let room_id = request.room_id.to_string();
    ganglion_base::limits::room_id(&room_id)?;
    // Rejecting another server's invite to a room we are not in, or
    // rescinding a knock on one: the leave goes through the inviter's
    // server, or the server the knock went to.
    if let (false, Some(server)) = api.room_here(&room_id, &device.user_id).await? {
        let content = match &request.reason {
            Some(reason) => json!({ "reason": reason }).to_string().into_bytes(),
            None => Vec::new(),
        };
        let rejected = api
            .federation
            .reject_invite(ganglion_api::proto::federationapi::JoinRoomRequest {
                room_id,
                user_id: device.user_id.clone(),
                servers: vec![server],
                content_json: content,
            })
            .await
            .map_err(MatrixError::from)?;
        api.read_your_writes(&device.user_id, rejected.output_position)
            .await;
        return respond_ruma(leave_room::v3::Response::new());
    }
    own_membership(&api, &device, request.reason.as_deref(), &room_id, "leave").await?;
    respond_ruma(leave_room::v3::Response::new())
}

/// The target of invite, kick, ban and unban, checked before ruma parses
/// the body: a user ID outside the spec's grammar (or inside ruma's looser
/// one, such as an empty localpart) is 400 `M_INVALID_PARAM`, where ruma's
/// parsing would answer `M_BAD_JSON`.
pub(crate) struct TargetUserId;

impl BodyCheck for TargetUserId {
    fn check(body: &Value) -> MatrixResult<()> {
        match &body["user_id"] {
            Value::String(user_id) => ganglion_base::limits::user_id(user_id),
            _ => Ok(()),
        }
    }
}

/// `POST /rooms/{roomId}/invite`, by user ID.
pub(crate) async fn invite(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Checked(request, _): Checked<invite_user::v3::Request, TargetUserId>,
) -> MatrixResult {
    let invite_user::v3::InvitationRecipient::UserId(recipient) = request.recipient else {
        return Err(MatrixError::bad_json("missing field `user_id`"));
    };
    moderate(
        &api,
        &device,
        &request.room_id,
        "invite",
        &recipient.user_id,
        recipient.reason.as_deref(),
    )
    .await?;
    respond_ruma(invite_user::v3::Response::new())
}

/// `POST /rooms/{roomId}/kick`.
pub(crate) async fn kick(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Checked(request, _): Checked<kick_user::v3::Request, TargetUserId>,
) -> MatrixResult {
    moderate(
        &api,
        &device,
        &request.room_id,
        "kick",
        &request.user_id,
        request.reason.as_deref(),
    )
    .await?;
    respond_ruma(kick_user::v3::Response::new())
}

/// `POST /rooms/{roomId}/ban`.
pub(crate) async fn ban(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Checked(request, _): Checked<ban_user::v3::Request, TargetUserId>,
) -> MatrixResult {
    moderate(
        &api,
        &device,
        &request.room_id,
        "ban",
        &request.user_id,
        request.reason.as_deref(),
    )
    .await?;
    respond_ruma(ban_user::v3::Response::new())
}

/// `POST /rooms/{roomId}/unban`.
pub(crate) async fn unban(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Checked(request, _): Checked<unban_user::v3::Request, TargetUserId>,
) -> MatrixResult {
    moderate(
        &api,
        &device,
        &request.room_id,
        "unban",
        &request.user_id,
        request.reason.as_deref(),
    )
    .await?;
    respond_ruma(unban_user::v3::Response::new())
}

/// Invite, kick, ban and unban: one user changes another's membership;
/// the auth rules decide, with two checks of the target's current
/// membership so a kick never unbans and an unban never kicks.
async fn moderate(
    api: &ClientApi,
    device: &ganglion_api::proto::userapi::Device,
    room_id: &ruma::RoomId,
    action: &str,
    target: &ruma::UserId,
    reason: Option<&str>,
) -> MatrixResult<()> {
    let room_id = room_id.as_str();
    let target = target.as_str();
    ganglion_base::limits::user_id(target)?;
    ganglion_base::limits::room_id(room_id)?;
    if action == "invite" {
        api.rate_limits.invites_per_user.check(&device.user_id)?;
    }
    let membership = match action {
        "invite" => "invite",
        "ban" => "ban",
        _ => "leave",
    };
    if matches!(action, "kick" | "unban") {
        let current = api
            .roomserver
            .query_membership(pb::QueryMembershipRequest {
                room_id: room_id.to_owned(),
                user_id: target.to_owned(),
            })
            .await
            .map_err(MatrixError::from)?;
        if !current.room_exists {
            return Err(MatrixError::not_found("Unknown room"));
        }
        let fits = match action {
            "kick" => matches!(current.membership.as_str(), "join" | "invite" | "knock"),
            _ => current.membership == "ban",
        };
        if !fits {
            return Err(MatrixError::forbidden(format!(
                "The user's membership is {:?}",
                current.membership
            )));
        }
    }
    let remote = ruma::UserId::parse(target)
        .is_ok_and(|user| user.server_name() != api.server_name.as_str());
    if membership == "invite" && remote {
        let mut content = json!({ "membership": "invite" });
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        api.invite_remote(room_id, &device.user_id, target, content)
            .await?;
        return Ok(());
    }
    api.membership(room_id, &device.user_id, target, membership, reason)
        .await?;
    Ok(())
}

impl ClientApi {
    /// Invites a user of another server: the roomserver builds the invite,
    /// the federationapi has the invitee's server countersign it, and the
    /// roomserver takes it.
    async fn invite_remote(
        &self,
        room_id: &str,
        sender: &str,
        target: &str,
        content: Value,
    ) -> MatrixResult<()> {
        let built = self
            .roomserver
            .build_event(pb::BuildEventRequest {
                room_id: room_id.to_owned(),
                template: Some(template("m.room.member", Some(target), sender, content)),
                supported_versions: Vec::new(),
            })
            .await
            .map_err(MatrixError::from)?;
        let stripped =
            ganglion_api::roomserver::stripped_state(&self.roomserver, room_id, Some(sender))
                .await
                .map_err(MatrixError::from)?
                .iter()
                .map(|event| event.to_string().into_bytes())
                .collect();
        let invited = self
            .federation
            .invite(ganglion_api::proto::federationapi::InviteRequest {
                room_id: room_id.to_owned(),
                room_version: built.room_version,
                event_json: built.event_json,
                invite_room_state_json: stripped,
            })
            .await
            .map_err(MatrixError::from)?;
        self.read_your_writes(sender, invited.output_position).await;
        Ok(())
    }
}

/// `POST /rooms/{roomId}/forget`: only once the user has left.
pub(crate) async fn forget(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Ruma(request): Ruma<forget_room::v3::Request>,
) -> MatrixResult {
    // Ruma's grammar lets `!` through; ours does not.
    ganglion_base::limits::room_id(request.room_id.as_str())?;
    let forgotten = api
        .roomserver
        .forget_room(pb::ForgetRoomRequest {
            room_id: request.room_id.to_string(),
            user_id: device.user_id.clone(),
        })
        .await;
    match forgotten {
        Ok(response) => {
            api.read_your_writes(&device.user_id, response.output_position)
                .await;
            respond_ruma(forget_room::v3::Response::new())
        }
        Err(ganglion_api::ApiError::InvalidInput(message)) => Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            message,
        )),
        Err(error) => Err(error.into()),
    }
}
