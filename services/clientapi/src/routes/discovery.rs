//! Discovery: `/versions`, `/.well-known/matrix/client`, `/capabilities`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, Ruma, respond, respond_ruma};
use ruma::api::client::discovery::get_capabilities;
use serde_json::json;

use crate::ClientApi;

pub(crate) async fn versions() -> MatrixResult {
    respond(json!({
        "versions": ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12"],
        // Simplified sliding sync (MSC4186), served by the syncapi.
        "unstable_features": {
            "org.matrix.simplified_msc3575": true,
            "org.matrix.msc3814": true
        }
    }))
}

pub(crate) async fn well_known(
    State(api): State<Arc<ClientApi>>,
    headers: HeaderMap,
) -> MatrixResult {
    let base_url = match (
        &api.public_base_url,
        headers.get("host").and_then(|h| h.to_str().ok()),
    ) {
        (Some(configured), _) => configured.clone(),
        (None, Some(host)) => format!("http://{host}"),
        (None, None) => format!("https://{}", api.server_name),
    };
    respond(json!({ "m.homeserver": { "base_url": base_url } }))
}

/// `GET /.well-known/matrix/server`: where other servers should send
/// federation requests, when the operator delegates
/// (`federation.well_known_server`); 404 `M_NOT_FOUND` otherwise, which
/// tells them to use the server name itself (then SRV records).
pub(crate) async fn well_known_server(State(api): State<Arc<ClientApi>>) -> MatrixResult {
    match &api.well_known_server {
        Some(server) => respond(json!({ "m.server": server })),
        None => Err(MatrixError::not_found("No delegation is configured")),
    }
}

pub(crate) async fn capabilities(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(_): UserOrGuest,
    Ruma(_): Ruma<get_capabilities::v3::Request>,
) -> MatrixResult {
    respond_ruma(our_capabilities(api.login_via_existing_session)?)
}

/// The room versions (3 to 12, stable; the default as new rooms get it);
/// password changes (`/account/password`) but no third-party identifier
/// changes (there are none: `threepid.rs`); login tokens for another
/// device when the operator allows them.
fn our_capabilities(login_tokens: bool) -> MatrixResult<get_capabilities::v3::Response> {
    use get_capabilities::v3::{
        Capabilities, ChangePasswordCapability, RoomVersionStability, RoomVersionsCapability,
    };
    let version = |v: &str| {
        ruma::RoomVersionId::try_from(v)
            .map_err(|e| MatrixError::unknown(format!("room version {v}: {e}")))
    };
    let available = (3..=12)
        .map(|v| Ok((version(&v.to_string())?, RoomVersionStability::Stable)))
        .collect::<MatrixResult<_>>()?;
    let mut capabilities = Capabilities::new();
    capabilities.room_versions = RoomVersionsCapability::new(
        version(crate::routes::rooms::DEFAULT_ROOM_VERSION)?,
        available,
    );
    capabilities.change_password = ChangePasswordCapability::new(true);
    capabilities.thirdparty_id_changes =
        get_capabilities::v3::ThirdPartyIdChangesCapability::new(false);
    capabilities.get_login_token = get_capabilities::v3::GetLoginTokenCapability::new(login_tokens);
    Ok(get_capabilities::v3::Response::new(capabilities))
}

#[cfg(test)]
mod tests {
    use ruma::api::OutgoingResponseExt;
    use serde_json::{Value, json};

    #[test]
    fn capabilities_are_as_they_were() {
        let response = super::our_capabilities(false)
            .expect("capabilities")
            .try_into_http_response::<Vec<u8>>()
            .expect("response");
        let body: Value = serde_json::from_slice(response.body()).expect("json");
        let available: serde_json::Map<String, Value> =
            (3..=12).map(|v| (v.to_string(), json!("stable"))).collect();
        assert_eq!(
            body,
            json!({
                "capabilities": {
                    "m.room_versions": { "default": "12", "available": available },
                    // Password changes are on: the default, left out.
                    "m.3pid_changes": { "enabled": false },
                }
            })
        );
    }
}
