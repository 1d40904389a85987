//! The client API routes and what they share: authentication and the
//! read-your-writes wait.

mod account;
mod account_data;
mod dehydrated;
mod devices;
mod directory;
mod discovery;
mod ephemeral;
mod keys;
mod profile;
mod push_rules;
mod pushers;
mod reports;
mod room_keys;
mod room_state;
mod rooms;
mod send;
mod spaces;
mod threepid;
mod to_device;
mod tokens;
pub(crate) mod uia;
mod upgrade;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::routing::{any, get, post, put};

pub(crate) use ephemeral::TypingTimers;
use ganglion_api::proto::common::LogPosition;
use ganglion_api::proto::syncapi::WaitForPositionRequest;
use ganglion_base::MatrixError;
use ganglion_base::http::{Routes, Ruma};
pub(crate) use send::RecentSends;
pub(crate) use spaces::{RemoteSpaces, remote_spaces};

use crate::ClientApi;
use crate::internal_events::READ_YOUR_WRITES_WAIT;

pub(crate) fn router(api: Arc<ClientApi>) -> Router {
    table().with_state(api)
}

/// Every route this service serves (the gateway forwards exactly these).
pub(crate) fn table() -> Routes<Arc<ClientApi>> {
    let mut router = Routes::default()
        .route("/_matrix/client/versions", get(discovery::versions))
        .route("/.well-known/matrix/client", get(discovery::well_known))
        .route(
            "/.well-known/matrix/server",
            get(discovery::well_known_server),
        )
        .route(
            "/_matrix/client/v1/register/m.login.registration_token/validity",
            get(account::registration_token_validity),
        )
        .route(
            "/_matrix/client/v1/login/get_token",
            post(tokens::get_token),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/hierarchy",
            get(spaces::hierarchy),
        )
        .route(
            "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device",
            put(dehydrated::put)
                .get(dehydrated::get)
                .delete(dehydrated::delete),
        );
    // Both the current and the legacy prefix, as clients still use r0.
    // Backed-up keys of every room, one room or one session: one handler
    // each for PUT, GET and DELETE, the scope taken from the path.
    let room_keys = || {
        put(room_keys::put)
            .get(room_keys::get)
            .delete(room_keys::delete)
    };
    for prefix in ["/_matrix/client/v3", "/_matrix/client/r0"] {
        router = router
            .route(&format!("{prefix}/register"), post(account::register))
            .route(
                &format!("{prefix}/register/available"),
                get(account::available),
            )
            .route(
                &format!("{prefix}/login"),
                get(account::login_flows).post(account::login),
            )
            .route(&format!("{prefix}/refresh"), post(tokens::refresh))
            .route(&format!("{prefix}/logout"), post(account::logout))
            .route(&format!("{prefix}/logout/all"), post(account::logout_all))
            .route(&format!("{prefix}/account/whoami"), get(account::whoami))
            .route(&format!("{prefix}/devices"), get(devices::list))
            .route(
                &format!("{prefix}/devices/{{device_id}}"),
                get(devices::get)
                    .put(devices::rename)
                    .delete(devices::delete),
            )
            .route(
                &format!("{prefix}/delete_devices"),
                post(devices::delete_many),
            )
            .route(
                &format!("{prefix}/account/password"),
                post(account::change_password),
            )
            .route(
                &format!("{prefix}/account/deactivate"),
                post(account::deactivate),
            )
            .route(&format!("{prefix}/account/3pid"), get(threepid::list))
            .route(
                &format!("{prefix}/account/3pid/email/requestToken"),
                post(threepid::request_token),
            )
            .route(
                &format!("{prefix}/account/3pid/msisdn/requestToken"),
                post(threepid::request_token),
            )
            .route(
                &format!("{prefix}/register/email/requestToken"),
                post(threepid::request_token),
            )
            .route(
                &format!("{prefix}/register/msisdn/requestToken"),
                post(threepid::request_token),
            )
            .route(
                &format!("{prefix}/account/password/email/requestToken"),
                post(threepid::password_reset_token),
            )
            .route(
                &format!("{prefix}/account/password/msisdn/requestToken"),
                post(threepid::password_reset_token),
            )
            .route(&format!("{prefix}/account/3pid/add"), post(threepid::add))
            .route(&format!("{prefix}/account/3pid/bind"), post(threepid::bind))
            .route(
                &format!("{prefix}/account/3pid/delete"),
                post(threepid::remove),
            )
            .route(
                &format!("{prefix}/account/3pid/unbind"),
                post(threepid::remove),
            )
            .route(
                &format!("{prefix}/capabilities"),
                get(discovery::capabilities),
            )
            .route(&format!("{prefix}/createRoom"), post(rooms::create_room))
            .route(
                &format!("{prefix}/profile/{{user_id}}"),
                get(profile::get_profile),
            )
            .route(
                &format!("{prefix}/profile/{{user_id}}/displayname"),
                get(profile::get_displayname).put(profile::put_displayname),
            )
            .route(
                &format!("{prefix}/profile/{{user_id}}/avatar_url"),
                get(profile::get_avatar_url).put(profile::put_avatar_url),
            )
            .route(
                &format!("{prefix}/profile/{{user_id}}/{{field}}"),
                get(profile::get_profile_field).put(profile::put_profile_field),
            )
            .route(
                &format!("{prefix}/join/{{room_id_or_alias}}"),
                post(rooms::join),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/join"),
                post(rooms::join_by_id),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/leave"),
                post(rooms::leave),
            )
            .route(
                &format!("{prefix}/knock/{{room_id_or_alias}}"),
                post(rooms::knock),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/forget"),
                post(rooms::forget),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/read_markers"),
                post(ephemeral::read_markers),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/invite"),
                post(rooms::invite),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/kick"),
                post(rooms::kick),
            )
            .route(&format!("{prefix}/rooms/{{room_id}}/ban"), post(rooms::ban))
            .route(
                &format!("{prefix}/rooms/{{room_id}}/unban"),
                post(rooms::unban),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/typing/{{user_id}}"),
                put(ephemeral::typing),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/receipt/{{receipt_type}}/{{event_id}}"),
                post(ephemeral::receipt),
            )
            .route(
                &format!("{prefix}/sendToDevice/{{event_type}}/{{txn_id}}"),
                put(to_device::send_to_device),
            )
            .route(&format!("{prefix}/keys/upload"), post(keys::upload))
            .route(&format!("{prefix}/keys/query"), post(keys::query))
            .route(&format!("{prefix}/keys/claim"), post(keys::claim))
            .route(
                &format!("{prefix}/keys/device_signing/upload"),
                post(keys::upload_signing_keys),
            )
            .route(
                &format!("{prefix}/keys/signatures/upload"),
                post(keys::upload_signatures),
            )
            .route(
                &format!("{prefix}/room_keys/version"),
                post(room_keys::create_version).get(room_keys::latest_version),
            )
            .route(
                &format!("{prefix}/room_keys/version/{{version}}"),
                get(room_keys::version)
                    .put(room_keys::update_version)
                    .delete(room_keys::delete_version),
            )
            .route(&format!("{prefix}/room_keys/keys"), room_keys())
            .route(&format!("{prefix}/room_keys/keys/{{room_id}}"), room_keys())
            .route(
                &format!("{prefix}/room_keys/keys/{{room_id}}/{{session_id}}"),
                room_keys(),
            )
            .route(&format!("{prefix}/pushers"), get(pushers::get))
            .route(&format!("{prefix}/pushers/set"), post(pushers::set))
            .route(&format!("{prefix}/pushrules/"), get(push_rules::all))
            .route(&format!("{prefix}/pushrules"), get(push_rules::all))
            .route(
                &format!("{prefix}/pushrules/global/"),
                get(push_rules::global),
            )
            .route(
                &format!("{prefix}/pushrules/{{scope}}/{{kind}}/{{rule_id}}"),
                get(push_rules::one)
                    .put(push_rules::put)
                    .delete(push_rules::delete),
            )
            .route(
                &format!("{prefix}/pushrules/{{scope}}/{{kind}}/{{rule_id}}/enabled"),
                get(push_rules::enabled).put(push_rules::set_enabled),
            )
            .route(
                &format!("{prefix}/pushrules/{{scope}}/{{kind}}/{{rule_id}}/actions"),
                get(push_rules::actions).put(push_rules::set_actions),
            )
            .route(
                &format!("{prefix}/pushrules/{{scope}}/{{kind}}/{{rule_id}}/{{attribute}}"),
                any(push_rules::unknown_attribute),
            )
            .route(
                &format!("{prefix}/user/{{user_id}}/account_data/{{data_type}}"),
                put(account_data::put_global).get(account_data::get_global),
            )
            .route(
                &format!("{prefix}/user/{{user_id}}/rooms/{{room_id}}/account_data/{{data_type}}"),
                put(account_data::put_room).get(account_data::get_room),
            )
            .route(
                &format!("{prefix}/user/{{user_id}}/rooms/{{room_id}}/tags"),
                get(account_data::get_tags),
            )
            .route(
                &format!("{prefix}/user/{{user_id}}/rooms/{{room_id}}/tags/{{tag}}"),
                put(account_data::put_tag).delete(account_data::delete_tag),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/redact/{{event_id}}/{{txn_id}}"),
                put(send::redact),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/report/{{event_id}}"),
                post(reports::report_event),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/report"),
                post(reports::report_room),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/upgrade"),
                post(upgrade::upgrade),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/state"),
                get(room_state::state),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/joined_members"),
                get(room_state::joined_members),
            )
            .route(
                &format!("{prefix}/joined_rooms"),
                get(room_state::joined_rooms),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/aliases"),
                get(directory::room_aliases),
            )
            .route(
                &format!("{prefix}/directory/room/{{alias}}"),
                put(directory::put_alias)
                    .get(directory::get_alias)
                    .delete(directory::delete_alias),
            )
            .route(
                &format!("{prefix}/directory/list/room/{{room_id}}"),
                put(directory::put_visibility).get(directory::get_visibility),
            )
            .route(
                &format!("{prefix}/publicRooms"),
                get(directory::get_public_rooms).post(directory::post_public_rooms),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/send/{{event_type}}/{{txn_id}}"),
                put(send::send),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/state/{{event_type}}"),
                put(send::put_state).get(send::get_state),
            )
            // An empty state key arrives as a trailing slash.
            .route(
                &format!("{prefix}/rooms/{{room_id}}/state/{{event_type}}/"),
                put(send::put_state).get(send::get_state),
            )
            .route(
                &format!("{prefix}/rooms/{{room_id}}/state/{{event_type}}/{{state_key}}"),
                put(send::put_state).get(send::get_state),
            );
    }
    router
}

/// A route's own check of a request body's JSON, run before ruma parses it
/// (see [`Checked`]).
pub(crate) trait BodyCheck {
    fn check(body: &serde_json::Value) -> Result<(), MatrixError>;
}

/// ruma's request for a route, with the route's [`BodyCheck`] first: for
/// bad input that the route answers with another error than ruma's parsing
/// would (an identifier in the body is `M_INVALID_PARAM`, not `M_BAD_JSON`).
pub(crate) struct Checked<T, C>(pub T, pub std::marker::PhantomData<C>);

impl<S, T, C> axum::extract::FromRequest<S> for Checked<T, C>
where
    S: Send + Sync,
    T: ruma::api::IncomingRequest,
    C: BodyCheck,
{
    type Rejection = MatrixError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, MatrixError> {
        let Ruma(request) = Ruma::<T>::from_request_checked(req, state, C::check).await?;
        Ok(Checked(request, std::marker::PhantomData))
    }
}

/// Event content must be canonical JSON: integers within ±(2^53 − 1), no
/// floats; anything else is `M_BAD_JSON`.
pub(crate) fn require_canonical(
    content: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), MatrixError> {
    serde_json::from_value::<ruma::CanonicalJsonObject>(serde_json::Value::Object(content.clone()))
        .map(|_| ())
        .map_err(|e| MatrixError::bad_json(format!("content is not canonical JSON: {e}")))
}

impl ganglion_api::users::Authenticates for ClientApi {
    fn users(&self) -> &ganglion_api::users::UsersHandle {
        &self.users
    }
}

impl ClientApi {
    /// Waits (bounded) until the syncapi replica that serves `user_id` has
    /// consumed `position`, so the client's next `/sync` shows what it was
    /// just told succeeded.
    pub(crate) async fn read_your_writes(&self, user_id: &str, position: Option<LogPosition>) {
        let Some(position) = position else { return };
        let started = Instant::now();
        let reached = self
            .sync
            .wait_for_position(WaitForPositionRequest {
                position: Some(position),
                timeout_ms: self.read_your_writes_timeout.as_millis() as u64,
                user_id: user_id.to_owned(),
            })
            .await
            .map(|r| r.reached)
            .unwrap_or(false);
        READ_YOUR_WRITES_WAIT
            .with_label_values(&[if reached { "yes" } else { "no" }])
            .observe(started.elapsed().as_secs_f64());
        if !reached {
            tracing::warn!("sync did not reflect a write in time");
        }
    }
}
