//! Room aliases (`/directory/room`), the published room list
//! (`/directory/list/room`, `/publicRooms`) and a room's aliases.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use ganglion_api::ApiError;
use ganglion_api::proto::roomserver as pb;
use ganglion_api::proto::userapi::Device;
use ganglion_api::roomserver::{PublicRoomsBody, PublicRoomsFilter};
use ganglion_api::users::{User, UserOrGuest};
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixJson, MatrixResult, Ruma, parse_query, respond, respond_ruma};
use ruma::api::client::alias::{create_alias, delete_alias, get_alias};
use ruma::api::client::directory::{get_public_rooms, get_room_visibility};
use ruma::api::client::room::{Visibility, aliases};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ClientApi;

/// The alias must be of this server to be managed here.
fn require_local(api: &ClientApi, alias: &ruma::RoomAliasId) -> MatrixResult<()> {
    if alias.server_name().as_str() != api.server_name {
        return Err(MatrixError::invalid_param(
            "aliases on other servers cannot be managed here",
        ));
    }
    Ok(())
}

pub(crate) async fn put_alias(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Ruma(request): Ruma<create_alias::v3::Request>,
) -> MatrixResult {
    require_local(&api, &request.room_alias)?;
    match api
        .roomserver
        .set_alias(pb::SetAliasRequest {
            alias: request.room_alias.to_string(),
            room_id: request.room_id.to_string(),
            user_id: device.user_id,
        })
        .await
    {
        Ok(_) => respond_ruma(create_alias::v3::Response::new()),
        Err(ApiError::RoomInUse) => Err(MatrixError::new(
            StatusCode::CONFLICT,
            "M_UNKNOWN",
            "Room alias already exists",
        )),
        Err(error) => Err(error.into()),
    }
}

pub(crate) async fn get_alias(
    State(api): State<Arc<ClientApi>>,
    Ruma(request): Ruma<get_alias::v3::Request>,
) -> MatrixResult {
    let alias = request.room_alias;
    let resolved = if alias.server_name().as_str() != api.server_name.as_str() {
        // Another server's alias: that server says.
        let resolved = api
            .federation
            .query_directory(ganglion_api::proto::federationapi::QueryDirectoryRequest {
                server_name: alias.server_name().to_string(),
                alias: alias.to_string(),
            })
            .await
            .map_err(remote_alias_error)?;
        (resolved.room_id, resolved.servers)
    } else {
        let resolved = api
            .roomserver
            .resolve_alias(pb::ResolveAliasRequest {
                alias: alias.to_string(),
            })
            .await
            .map_err(MatrixError::from)?;
        (resolved.room_id, resolved.servers)
    };
    let (Some(room_id), servers) = resolved else {
        return Err(MatrixError::not_found("Room alias not found"));
    };
    let room_id = ruma::OwnedRoomId::try_from(room_id)
        .map_err(|_| MatrixError::not_found("Room alias not found"))?;
    let servers = servers
        .into_iter()
        .filter_map(|server| ruma::OwnedServerName::try_from(server).ok())
        .collect();
    respond_ruma(get_alias::v3::Response::new(room_id, servers))
}

pub(crate) async fn delete_alias(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Ruma(request): Ruma<delete_alias::v3::Request>,
) -> MatrixResult {
    require_local(&api, &request.room_alias)?;
    let alias = request.room_alias.to_string();
    let room_id = api
        .roomserver
        .resolve_alias(pb::ResolveAliasRequest {
            alias: alias.clone(),
        })
        .await
        .map_err(MatrixError::from)?
        .room_id;
    api.roomserver
        .remove_alias(pb::RemoveAliasRequest {
            alias: alias.clone(),
            user_id: device.user_id.clone(),
        })
        .await
        .map_err(MatrixError::from)?;
    if let Some(room_id) = room_id {
        api.drop_from_canonical_alias(&room_id, &device, &alias)
            .await;
    }
    respond_ruma(delete_alias::v3::Response::new())
}

impl ClientApi {
    /// A deleted alias leaves the room's `m.room.canonical_alias` too, so
    /// clients stop showing what no longer resolves. Sent as the user who
    /// deleted it; if they may not, the event stays as it was (logged).
    async fn drop_from_canonical_alias(&self, room_id: &str, device: &Device, alias: &str) {
        let Ok(Some(Value::Object(mut content))) =
            self.state_content(room_id, "m.room.canonical_alias").await
        else {
            return;
        };
        let mut changed = false;
        if content.get("alias").and_then(Value::as_str) == Some(alias) {
            content.remove("alias");
            changed = true;
        }
        if let Some(Value::Array(alt)) = content.get_mut("alt_aliases") {
            let before = alt.len();
            alt.retain(|a| a.as_str() != Some(alias));
            changed |= alt.len() != before;
        }
        if !changed {
            return;
        }
        let template = super::rooms::template(
            "m.room.canonical_alias",
            Some(""),
            &device.user_id,
            Value::Object(content),
        );
        if let Err(error) = self.send_event(room_id, device, template, "").await {
            tracing::info!(room_id, %error, "the canonical alias keeps a deleted alias");
        }
    }
}

/// `GET /rooms/{roomId}/aliases`: for members, or anyone when the room's
/// history is world-readable.
pub(crate) async fn room_aliases(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Ruma(request): Ruma<aliases::v3::Request>,
) -> MatrixResult {
    let room_id = request.room_id.to_string();
    api.require_member_or_world_readable(&room_id, &device.user_id)
        .await?;
    let aliases = api
        .roomserver
        .room_aliases(pb::RoomAliasesRequest { room_id })
        .await
        .map_err(MatrixError::from)?
        .aliases
        .into_iter()
        .filter_map(|alias| ruma::OwnedRoomAliasId::try_from(alias).ok())
        .collect();
    respond_ruma(aliases::v3::Response::new(aliases))
}

pub(crate) async fn get_visibility(
    State(api): State<Arc<ClientApi>>,
    Ruma(request): Ruma<get_room_visibility::v3::Request>,
) -> MatrixResult {
    let visibility = api
        .roomserver
        .get_visibility(pb::GetVisibilityRequest {
            room_id: request.room_id.to_string(),
        })
        .await
        .map_err(MatrixError::from)?;
    if !visibility.room_exists {
        return Err(MatrixError::not_found("Unknown room"));
    }
    respond_ruma(get_room_visibility::v3::Response::new(
        if visibility.public {
            Visibility::Public
        } else {
            Visibility::Private
        },
    ))
}

#[derive(Deserialize)]
pub(crate) struct VisibilityBody {
    visibility: Option<String>,
}

/// `PUT /directory/list/room/{roomId}`. Not ruma's request type: the spec
/// lets `visibility` default to `public`, which ruma's type requires.
pub(crate) async fn put_visibility(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(room_id): Path<String>,
    MatrixJson(body): MatrixJson<VisibilityBody>,
) -> MatrixResult {
    ruma::RoomId::parse(&room_id).map_err(|_| MatrixError::invalid_param("invalid room ID"))?;
    let public = match body.visibility.as_deref() {
        Some("public") | None => true,
        Some("private") => false,
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "visibility must be public or private",
            ));
        }
    };
    api.roomserver
        .set_visibility(pb::SetVisibilityRequest {
            room_id,
            user_id: device.user_id,
            public,
        })
        .await
        .map_err(MatrixError::from)?;
    respond(json!({}))
}

/// The query of `POST /publicRooms`.
#[derive(Deserialize, Default)]
pub(crate) struct PublicRoomsQuery {
    server: Option<String>,
}

impl ClientApi {
    async fn public_rooms_list(
        &self,
        server: Option<&str>,
        limit: Option<u32>,
        since: Option<String>,
        filter: PublicRoomsFilter,
    ) -> MatrixResult {
        if let Some(server) = server
            && server != self.server_name
        {
            return self.remote_public_rooms(server, limit, since, filter).await;
        }
        let page = self
            .roomserver
            .public_rooms(ganglion_api::roomserver::public_rooms_request(
                limit, since, filter,
            ))
            .await
            .map_err(MatrixError::from)?;
        let body = ganglion_api::roomserver::public_rooms_body(page);
        respond(body)
    }
}

impl ClientApi {
    /// Another server's directory, over federation (`POST /publicRooms`
    /// there, which takes the filter too).
    async fn remote_public_rooms(
        &self,
        server: &str,
        limit: Option<u32>,
        since: Option<String>,
        filter: PublicRoomsFilter,
    ) -> MatrixResult {
        ruma::ServerName::parse(server)
            .map_err(|_| MatrixError::invalid_param("server is not a server name"))?;
        let mut body = json!({});
        if let Some(limit) = limit {
            body["limit"] = json!(limit);
        }
        if let Some(since) = since {
            body["since"] = json!(since);
        }
        let mut remote_filter = json!({});
        if let Some(term) = filter.generic_search_term {
            remote_filter["generic_search_term"] = json!(term);
        }
        if let Some(types) = filter.room_types {
            remote_filter["room_types"] = json!(types);
        }
        body["filter"] = remote_filter;
        let answer = self
            .federation
            .query_public_rooms(ganglion_api::proto::federationapi::RemoteRequest {
                server_name: server.to_owned(),
                body_json: body.to_string().into_bytes(),
            })
            .await
            .map_err(MatrixError::from)?;
        let answer: Value = serde_json::from_slice(&answer.body_json).unwrap_or_default();
        if !answer["chunk"].is_array() {
            return Err(MatrixError::new(
                StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("{server} answered with no room list"),
            ));
        }
        respond(answer)
    }
}

/// `GET /publicRooms`. Its answer is our own: another server's directory
/// is passed on as that server sent it.
pub(crate) async fn get_public_rooms(
    State(api): State<Arc<ClientApi>>,
    headers: HeaderMap,
    uri: Uri,
    Ruma(request): Ruma<get_public_rooms::v3::Request>,
) -> MatrixResult {
    let server = request.server.as_ref().map(|server| server.as_str());
    // Ours may be read by anyone; asking another server goes through us,
    // so only for our users (as on Synapse).
    if server.is_some_and(|server| server != api.server_name) {
        ganglion_api::users::authenticate(&api.users, &headers, uri.query(), None).await?;
    }
    let limit = request
        .limit
        .map(|limit| {
            u32::try_from(u64::from(limit))
                .map_err(|_| MatrixError::invalid_param("limit must be a non-negative integer"))
        })
        .transpose()?;
    api.public_rooms_list(server, limit, request.since, PublicRoomsFilter::default())
        .await
}

// Keeps its own body: ruma's filter reads an empty `room_types` list as no
// filter at all, where the spec's "when not specified" (all rooms) and an
// empty list differ here.
pub(crate) async fn post_public_rooms(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(_): UserOrGuest,
    uri: Uri,
    MatrixJson(body): MatrixJson<PublicRoomsBody>,
) -> MatrixResult {
    let query: PublicRoomsQuery = parse_query(&uri)?;
    if let Some(refusal) = body.refusal() {
        return Err(MatrixError::invalid_param(refusal));
    }
    api.public_rooms_list(
        query.server.as_deref(),
        body.limit,
        body.since,
        body.filter.unwrap_or_default(),
    )
    .await
}

/// A failure to resolve another server's alias, for the client: an alias
/// whose server cannot be asked does not resolve (404, as Synapse answers
/// it), with nothing of our outbound request in the message.
pub(crate) fn remote_alias_error(error: ganglion_api::ApiError) -> MatrixError {
    match error {
        ganglion_api::ApiError::Unavailable(_) | ganglion_api::ApiError::Timeout => {
            MatrixError::not_found("Room alias not found: its server cannot be reached")
        }
        other => MatrixError::from(other),
    }
}
