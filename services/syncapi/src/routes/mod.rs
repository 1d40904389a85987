//! The HTTP routes the syncapi serves (behind the gateway in the polylith).

mod client_event;
mod filter;
mod messages;
mod sync;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::SyncService;

pub(crate) fn router(service: Arc<SyncService>) -> Router {
    Router::new()
        .route("/_matrix/client/v3/sync", get(sync::sync))
        .route("/_matrix/client/r0/sync", get(sync::sync))
        .route(
            "/_matrix/client/v3/rooms/{room_id}/messages",
            get(messages::messages),
        )
        .route(
            "/_matrix/client/r0/rooms/{room_id}/messages",
            get(messages::messages),
        )
        .route(
            "/_matrix/client/v3/user/{user_id}/filter",
            post(filter::create_filter),
        )
        .route(
            "/_matrix/client/r0/user/{user_id}/filter",
            post(filter::create_filter),
        )
        .route(
            "/_matrix/client/v3/user/{user_id}/filter/{filter_id}",
            get(filter::get_filter),
        )
        .route(
            "/_matrix/client/r0/user/{user_id}/filter/{filter_id}",
            get(filter::get_filter),
        )
        .with_state(service)
}
