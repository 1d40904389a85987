//! `GET /query/directory`: which room one of our aliases names.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::Uri;
use ganglion_api::proto::roomserver as pb;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, parse_query, respond};
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
