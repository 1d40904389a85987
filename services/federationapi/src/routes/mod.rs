//! Federation HTTP routes: the key API (unauthenticated) and the
//! federation API (every route but `/version` behind `auth.rs`).

mod keys;
mod membership;
mod query;
mod room_events;
mod spaces;
mod transactions;
mod user_keys;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post, put};
use ganglion_base::http::Routes;

use crate::FederationService;

pub(crate) fn router(service: Arc<FederationService>) -> Router {
    let (public, authenticated) = tables();
    let authenticated =
        authenticated
            .into_router()
            .route_layer(axum::middleware::from_fn_with_state(
                service.clone(),
                crate::auth::authenticate,
            ));
    public
        .into_router()
        .merge(authenticated)
        .with_state(service)
}

/// Every route this service serves (the gateway forwards exactly these).
pub(crate) fn table() -> Routes<Arc<FederationService>> {
    let (public, authenticated) = tables();
    public.merge(authenticated)
}

/// The key API and `/version`, open to anyone; and the federation API,
/// which only servers proving their identity may call.
fn tables() -> (
    Routes<Arc<FederationService>>,
    Routes<Arc<FederationService>>,
) {
    let authenticated = Routes::default()
        .route(
            "/_matrix/federation/v1/query/directory",
            get(query::directory),
        )
        .route("/_matrix/federation/v1/query/profile", get(query::profile))
        .route(
            "/_matrix/federation/v1/publicRooms",
            get(query::public_rooms_get).post(query::public_rooms_post),
        )
        .route(
            "/_matrix/federation/v1/hierarchy/{room_id}",
            get(spaces::hierarchy),
        )
        .route(
            "/_matrix/federation/v1/user/keys/query",
            post(user_keys::query),
        )
        .route(
            "/_matrix/federation/v1/user/keys/claim",
            post(user_keys::claim),
        )
        .route(
            "/_matrix/federation/v1/user/devices/{user_id}",
            get(user_keys::devices),
        )
        .route(
            "/_matrix/federation/v1/make_join/{room_id}/{user_id}",
            get(membership::make_join),
        )
        .route(
            "/_matrix/federation/v2/send_join/{room_id}/{event_id}",
            put(membership::send_join),
        )
        .route(
            "/_matrix/federation/v1/make_leave/{room_id}/{user_id}",
            get(membership::make_leave),
        )
        .route(
            "/_matrix/federation/v2/send_leave/{room_id}/{event_id}",
            put(membership::send_leave),
        )
        .route(
            "/_matrix/federation/v1/make_knock/{room_id}/{user_id}",
            get(membership::make_knock),
        )
        .route(
            "/_matrix/federation/v1/send_knock/{room_id}/{event_id}",
            put(membership::send_knock),
        )
        .route(
            "/_matrix/federation/v2/invite/{room_id}/{event_id}",
            put(membership::invite),
        )
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            put(transactions::send),
        )
        .route(
            "/_matrix/federation/v1/event/{event_id}",
            get(room_events::event),
        )
        .route(
            "/_matrix/federation/v1/state/{room_id}",
            get(room_events::state),
        )
        .route(
            "/_matrix/federation/v1/state_ids/{room_id}",
            get(room_events::state_ids),
        )
        .route(
            "/_matrix/federation/v1/event_auth/{room_id}/{event_id}",
            get(room_events::event_auth),
        )
        .route(
            "/_matrix/federation/v1/backfill/{room_id}",
            get(room_events::backfill),
        )
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            post(room_events::get_missing_events),
        );
    let public = Routes::default()
        .route("/_matrix/key/v2/server", get(keys::server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(keys::server_keys))
        .route("/_matrix/key/v2/query", post(keys::query_many))
        .route("/_matrix/key/v2/query/{server_name}", get(keys::query_one))
        .route("/_matrix/federation/v1/version", get(keys::version));
    (public, authenticated)
}
