//! `GET /hierarchy/{roomId}`: one of our spaces and its children, as far
//! as the asking server could peek or join them (it walks further itself).

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::Uri;
use ganglion_api::proto::roomserver as pb;
use ganglion_api::spaces;
use ganglion_base::http::{MatrixResult, parse_query, respond};
use ganglion_base::{MatrixError, limits};
use serde::Deserialize;
use serde_json::json;

use crate::FederationService;
use crate::auth::Origin;

#[derive(Deserialize)]
pub(crate) struct HierarchyQuery {
    #[serde(default)]
    suggested_only: bool,
}

pub(crate) async fn hierarchy(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room_id): Path<String>,
    uri: Uri,
) -> MatrixResult {
    let HierarchyQuery { suggested_only } = parse_query(&uri)?;
    limits::room_id(&room_id)?;
    let summaries = |room_ids: Vec<String>| {
        service
            .roomserver
            .query_room_summaries(pb::QueryRoomSummariesRequest {
                room_ids,
                user_id: String::new(),
                server_name: origin.clone(),
                suggested_only,
            })
    };
    let root = summaries(vec![room_id])
        .await
        .map_err(MatrixError::from)?
        .rooms
        .pop()
        .filter(|root| root.known && root.accessible)
        .ok_or_else(|| MatrixError::not_found("Room does not exist."))?;
    let child_ids: Vec<String> = spaces::children_of(&root, suggested_only)
        .into_iter()
        .map(|child| child.room_id)
        .collect();
    let mut children = Vec::new();
    let mut inaccessible = Vec::new();
    if !child_ids.is_empty() {
        // Rooms we are not in are left out: we cannot speak for them.
        for child in summaries(child_ids).await.map_err(MatrixError::from)?.rooms {
            match (child.known, child.accessible) {
                (true, true) => children.push(spaces::room_json(&child, true)),
                (true, false) => inaccessible.push(child.room_id),
                (false, _) => {}
            }
        }
    }
    tracing::debug!(origin, room_id = root.room_id, "hierarchy query");
    respond(json!({
        "room": spaces::room_json(&root, true),
        "children": children,
        "inaccessible_children": inaccessible,
    }))
}
