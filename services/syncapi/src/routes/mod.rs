//! The HTTP routes the syncapi serves (behind the gateway in the polylith).

mod client_event;
mod dehydrated_device;
mod events;
mod filter;
mod key_changes;
mod members;
mod messages;
mod notifications;
mod relations;
mod search;
mod sliding_sync;
mod sync;
mod sync_streams;
mod user_directory;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use ganglion_base::http::Routes;

use crate::SyncService;

/// How long read notifications stay listed by `/notifications`.
pub(crate) const NOTIFICATIONS_KEPT: std::time::Duration =
    std::time::Duration::from_secs(30 * 86_400);

/// Simplified sliding sync's endpoint (MSC4186, unstable prefix).
const SLIDING_SYNC_PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

pub(crate) fn router(service: Arc<SyncService>) -> Router {
    table().with_state(service)
}

/// Every route this service serves (the gateway forwards exactly these).
pub(crate) fn table() -> Routes<Arc<SyncService>> {
    let mut router = Routes::default()
        .route("/_matrix/client/v3/sync", get(sync::sync))
        .route("/_matrix/client/r0/sync", get(sync::sync))
        .route(SLIDING_SYNC_PATH, post(sliding_sync::sliding_sync))
        .route(
            "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{device_id}/events",
            post(dehydrated_device::events),
        )
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
        .route(
            "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}",
            get(relations::relations),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}",
            get(relations::relations_of_type),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}",
            get(relations::relations_of_type_and_event_type),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/threads",
            get(relations::threads),
        );
    for prefix in ["/_matrix/client/v3", "/_matrix/client/r0"] {
        router = router
            .route(
                &format!("{prefix}/rooms/{{room_id}}/event/{{event_id}}"),
                get(events::event),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/context/{{event_id}}"),
                get(events::context),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/members"),
                get(members::members),
            )
            .route(&format!("{prefix}/search"), post(search::search))
            .route(
                &format!("{prefix}/user_directory/search"),
                post(user_directory::search),
            )
            .route(
                &format!("{prefix}/notifications"),
                get(notifications::notifications),
            )
            .route(
                &format!("{prefix}/keys/changes"),
                get(key_changes::key_changes),
            )
            .route(
                &format!("{prefix}/presence/{{user_id}}/status"),
                get(crate::presence::get_status).put(crate::presence::put_status),
            );
    }
    router
}
