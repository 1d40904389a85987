//! `GET /keys/changes`: the users whose device lists changed between two
//! sync tokens (`from` inclusive, `to` exclusive), the same answer
//! `device_lists` gives an incremental sync from `from`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, parse_query, respond};
use serde::Deserialize;
use serde_json::json;

use crate::SyncService;
use crate::routes::sync::catch_up;
use crate::sync_token::SyncToken;

#[derive(Deserialize)]
pub(crate) struct KeyChangesQuery {
    from: Option<String>,
    to: Option<String>,
    #[allow(dead_code)]
    access_token: Option<String>,
}

pub(crate) async fn key_changes(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    uri: Uri,
) -> MatrixResult {
    let query: KeyChangesQuery = parse_query(&uri)?;
    let token = |name: &str, text: Option<String>| {
        let text = text.ok_or_else(|| MatrixError::missing_param(format!("{name} is required")))?;
        SyncToken::parse(&text, service.partitions)
            .map_err(|_| MatrixError::invalid_param(format!("invalid {name} token")))
    };
    let from = token("from", query.from)?;
    let to = token("to", query.to)?;
    // A `to` from a replica further along: wait for this one to get there.
    catch_up(&service, &to, std::time::Duration::ZERO).await?;
    let memberships = service.storage.memberships(&device.user_id).await?;
    let lists =
        crate::device_lists::between(&service, &device.user_id, &memberships, &from, &to).await?;
    respond(json!({ "changed": lists.changed, "left": lists.left }))
}
