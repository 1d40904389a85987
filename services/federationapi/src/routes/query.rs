//! `GET /query/directory`: which room one of our aliases names.
//! `GET` and `POST /publicRooms`: our public room directory.
//! `GET /query/profile`: one of our users' profile.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::Uri;
use ganglion_api::proto::roomserver as pb;
use ganglion_api::roomserver::PublicRoomsBody;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixBody, MatrixResult, parse_json, parse_query, respond};
use serde::Deserialize;
use serde_json::json;

use crate::FederationService;
use crate::auth::Origin;

#[derive(Deserialize)]
pub(crate) struct DirectoryQuery {
    room_alias: Option<String>,
}

pub(crate) async fn directory(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    uri: Uri,
) -> MatrixResult {
    let query: DirectoryQuery = parse_query(&uri)?;
    tracing::debug!(origin, alias = ?query.room_alias, "directory query");
    let alias = query
        .room_alias
        .ok_or_else(|| MatrixError::missing_param("room_alias is required"))?;
    let parsed = ruma::RoomAliasId::parse(&alias)
        .map_err(|_| MatrixError::invalid_param("invalid room alias"))?;
    if parsed.server_name() != service.client.server_name() {
        return Err(MatrixError::not_found("Room alias not found"));
    }
    let resolved = service
        .roomserver
        .resolve_alias(pb::ResolveAliasRequest { alias })
        .await
        .map_err(MatrixError::from)?;
    match resolved.room_id {
        Some(room_id) => respond(json!({ "room_id": room_id, "servers": resolved.servers })),
        None => Err(MatrixError::not_found("Room alias not found")),
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct PublicRoomsQuery {
    limit: Option<String>,
    since: Option<String>,
    #[serde(default)]
    include_all_networks: Option<String>,
    third_party_instance_id: Option<String>,
}

pub(crate) async fn public_rooms_get(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    uri: Uri,
) -> MatrixResult {
    let query: PublicRoomsQuery = parse_query(&uri)?;
    let limit = match query.limit.as_deref() {
        Some(limit) => Some(
            limit
                .parse::<u32>()
                .map_err(|_| MatrixError::invalid_param("limit must be a non-negative integer"))?,
        ),
        None => None,
    };
    let include_all_networks = match query.include_all_networks.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "include_all_networks must be true or false",
            ));
        }
    };
    public_rooms(
        &service,
        &origin,
        PublicRoomsBody {
            limit,
            since: query.since,
            filter: None,
            include_all_networks,
            third_party_instance_id: query.third_party_instance_id,
        },
    )
    .await
}

pub(crate) async fn public_rooms_post(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: PublicRoomsBody = if body.is_empty() {
        PublicRoomsBody::default()
    } else {
        parse_json(&body)?
    };
    public_rooms(&service, &origin, body).await
}

/// Our public rooms (no third-party networks are bridged here, so
/// `include_all_networks` changes nothing and an instance ID lists none).
async fn public_rooms(
    service: &FederationService,
    origin: &str,
    body: PublicRoomsBody,
) -> MatrixResult {
    tracing::debug!(origin, "public rooms query");
    if let Some(refusal) = body.refusal() {
        return Err(MatrixError::invalid_param(refusal));
    }
    if body.third_party_instance_id.is_some() {
        return respond(json!({ "chunk": [], "total_room_count_estimate": 0 }));
    }
    let filter = body.filter.unwrap_or_default();
    let page = service
        .roomserver
        .public_rooms(ganglion_api::roomserver::public_rooms_request(
            body.limit, body.since, filter,
        ))
        .await
        .map_err(MatrixError::from)?;
    respond(ganglion_api::roomserver::public_rooms_body(page))
}

#[derive(Deserialize)]
pub(crate) struct ProfileQuery {
    user_id: Option<String>,
    field: Option<String>,
}

pub(crate) async fn profile(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    uri: Uri,
) -> MatrixResult {
    let query: ProfileQuery = parse_query(&uri)?;
    tracing::debug!(origin, user_id = ?query.user_id, "profile query");
    let user_id = query
        .user_id
        .ok_or_else(|| MatrixError::missing_param("user_id is required"))?;
    let user =
        ruma::UserId::parse(&user_id).map_err(|_| MatrixError::invalid_param("invalid user ID"))?;
    if user.server_name() != service.client.server_name() {
        return Err(MatrixError::invalid_param("the user is not of this server"));
    }
    if let Some(field) = query.field.as_deref()
        && !matches!(field, "displayname" | "avatar_url")
    {
        return Err(MatrixError::invalid_param("unknown profile field"));
    }
    let profile = service
        .users
        .get_profile(ganglion_api::proto::userapi::GetProfileRequest { user_id })
        .await
        .map_err(MatrixError::from)?;
    let mut body = serde_json::Map::new();
    for (key, value) in [
        ("displayname", profile.displayname),
        ("avatar_url", profile.avatar_url),
    ] {
        if let Some(value) = value
            && query.field.as_deref().is_none_or(|f| f == key)
        {
            body.insert(key.into(), json!(value));
        }
    }
    respond(serde_json::Value::Object(body))
}
