//! `GET /keys/changes`: the users whose device lists changed between two
//! sync tokens (`from` inclusive, `to` exclusive), the same answer
//! `device_lists` gives an incremental sync from `from`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, Ruma, parse_query, respond_ruma};
use ruma::api::client::keys::get_key_changes;
use serde::Deserialize;

use crate::SyncService;
use crate::routes::sync::catch_up;
use crate::sync_token::SyncToken;

/// The query, read again when ruma's parsing fails, to tell a token left
/// out.
#[derive(Deserialize)]
pub(crate) struct KeyChangesQuery {
    from: Option<String>,
    to: Option<String>,
}

pub(crate) async fn key_changes(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    uri: Uri,
    request: Result<Ruma<get_key_changes::v3::Request>, MatrixError>,
) -> MatrixResult {
    let request = match request {
        Ok(Ruma(request)) => request,
        // A token left out is the spec's M_MISSING_PARAM (ruma's query
        // parsing would answer M_INVALID_PARAM).
        Err(error) => {
            let query: KeyChangesQuery = parse_query(&uri)?;
            for (name, text) in [("from", query.from), ("to", query.to)] {
                text.ok_or_else(|| MatrixError::missing_param(format!("{name} is required")))?;
            }
            return Err(error);
        }
    };
    let token = |name: &str, text: &str| {
        SyncToken::parse(text, service.partitions)
            .map_err(|_| MatrixError::invalid_param(format!("invalid {name} token")))
    };
    let from = token("from", &request.from)?;
    let to = token("to", &request.to)?;
    // A `to` from a replica further along: wait for this one to get there.
    catch_up(&service, &to, std::time::Duration::ZERO).await?;
    let memberships = service.storage.memberships(&device.user_id).await?;
    let lists =
        crate::device_lists::between(&service, &device.user_id, &memberships, &from, &to).await?;
    let users = |users: std::collections::BTreeSet<String>| -> Vec<ruma::OwnedUserId> {
        users
            .into_iter()
            .filter_map(|user| ruma::OwnedUserId::try_from(user).ok())
            .collect()
    };
    respond_ruma(get_key_changes::v3::Response::new(
        users(lists.changed),
        users(lists.left),
    ))
}
