//! Memberships from other servers: `GET /make_join` (and `/make_leave`)
//! builds the event for the remote user to sign; `PUT /v2/send_join` (and
//! `/v2/send_leave`) takes it signed and has the roomserver accept it, a
//! join answered with the room's state before it and its auth chain;
//! `PUT /v2/invite` countersigns another server's invite of our user.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ganglion_api::ApiError;
use ganglion_api::proto::roomserver as pb;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixJson, MatrixResult, respond};
use serde_json::{Value, json};

use crate::FederationService;
use crate::auth::Origin;
use crate::pdus;

/// The `ver` parameters of a make_join (version 1 only when none).
fn supported_versions(uri: &Uri) -> Vec<String> {
    let versions = ganglion_base::http::query_values(uri, "ver");
    if versions.is_empty() {
        vec!["1".to_owned()]
    } else {
        versions
    }
}

/// The user must belong to the server that asks for them.
fn user_of_origin(user_id: &str, origin: &str) -> Result<(), MatrixError> {
    let user =
        ruma::UserId::parse(user_id).map_err(|_| MatrixError::invalid_param("invalid user ID"))?;
    if user.server_name() != origin {
        return Err(MatrixError::forbidden(
            "the user is not of the requesting server",
        ));
    }
    Ok(())
}

fn incompatible(version: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({
            "errcode": "M_INCOMPATIBLE_ROOM_VERSION",
            "error": format!("the room's version {version} is not one the server supports"),
            "room_version": version,
        })),
    )
        .into_response()
}

/// The membership event `user_id` would send to change to `membership`,
/// for the asking server to sign.
async fn make_membership(
    service: &FederationService,
    origin: &str,
    (room_id, user_id): (String, String),
    membership: &str,
    versions: Vec<String>,
) -> MatrixResult {
    user_of_origin(&user_id, origin)?;
    service.require_acl(&room_id, origin).await?;
    let built = service
        .roomserver
        .build_event(pb::BuildEventRequest {
            room_id,
            template: Some(pb::EventTemplate {
                event_type: "m.room.member".into(),
                state_key: Some(user_id.clone()),
                sender: user_id,
                content_json: json!({ "membership": membership }).to_string().into_bytes(),
                redacts: None,
            }),
            supported_versions: versions,
        })
        .await;
    let built = match built {
        Ok(built) => built,
        Err(ApiError::UnsupportedRoomVersion(version)) => return Ok(incompatible(&version)),
        Err(error) => return Err(error.into()),
    };
    let mut event: Value = serde_json::from_slice(&built.event_json)
        .map_err(|e| MatrixError::unknown(e.to_string()))?;
    event["origin"] = json!(service.server_name);
    respond(json!({ "room_version": built.room_version, "event": event }))
}

pub(crate) async fn make_join(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(ids): Path<(String, String)>,
    uri: Uri,
) -> MatrixResult {
    make_membership(&service, &origin, ids, "join", supported_versions(&uri)).await
}

/// `GET /make_leave`: any version (the leaving server is in the room, or
/// was invited to it).
pub(crate) async fn make_leave(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(ids): Path<(String, String)>,
) -> MatrixResult {
    make_membership(&service, &origin, ids, "leave", Vec::new()).await
}

/// `GET /make_knock`: the knock for the remote user to sign (the room's
/// version must know knocking, its join rule allow it).
pub(crate) async fn make_knock(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(ids): Path<(String, String)>,
    uri: Uri,
) -> MatrixResult {
    make_membership(&service, &origin, ids, "knock", supported_versions(&uri)).await
}

/// `PUT /send_knock`: answered with the stripped state the knocker may
/// see the room by.
pub(crate) async fn send_knock(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    MatrixJson(pdu): MatrixJson<Value>,
) -> MatrixResult {
    take_membership(&service, &origin, (&room_id, &event_id), "knock", &pdu).await?;
    let stripped = ganglion_api::roomserver::stripped_state(&service.roomserver, &room_id, None)
        .await
        .map_err(MatrixError::from)?;
    respond(json!({ "knock_room_state": stripped }))
}

/// Checks a signed membership event of `membership` its sender (of
/// `origin`) sends about themself, and has the roomserver take it.
async fn take_membership(
    service: &FederationService,
    origin: &str,
    (room_id, event_id): (&str, &str),
    membership: &str,
    pdu: &Value,
) -> Result<(), MatrixError> {
    service.require_acl(room_id, origin).await?;
    let version = service
        .room_version(room_id)
        .await
        .map_err(MatrixError::from)?;
    let checked = pdus::check(&service.key_ring, &version, pdu)
        .await
        .map_err(|e| MatrixError::bad_json(e.to_string()))?;
    if checked.event_id != event_id {
        return Err(MatrixError::bad_json(
            "the event ID does not match the event",
        ));
    }
    let sender = checked.field("sender").unwrap_or_default().to_owned();
    if checked.field("type") != Some("m.room.member")
        || checked.field("state_key") != Some(sender.as_str())
        || pdu["content"]["membership"].as_str() != Some(membership)
        || checked.field("room_id").is_some_and(|r| r != room_id)
    {
        return Err(MatrixError::bad_json(format!(
            "not a {membership} of its sender to this room"
        )));
    }
    user_of_origin(&sender, origin)?;
    let outcome = service
        .input_new_pdu(room_id, version, &checked)
        .await
        .map_err(MatrixError::from)?;
    if !matches!(outcome.outcome.as_str(), "accepted" | "duplicate") {
        return Err(MatrixError::forbidden(format!(
            "the {membership} was refused: {}",
            outcome.reason
        )));
    }
    Ok(())
}

/// `PUT /v2/send_leave`: answered with an empty object.
pub(crate) async fn send_leave(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    MatrixJson(pdu): MatrixJson<Value>,
) -> MatrixResult {
    take_membership(&service, &origin, (&room_id, &event_id), "leave", &pdu).await?;
    respond(json!({}))
}

pub(crate) async fn send_join(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    MatrixJson(pdu): MatrixJson<Value>,
) -> MatrixResult {
    take_membership(&service, &origin, (&room_id, &event_id), "join", &pdu).await?;
    let state = service
        .roomserver
        .query_state(pb::QueryStateRequest {
            room_id,
            event_id: event_id.clone(),
        })
        .await
        .map_err(MatrixError::from)?;
    let mut chain_of: BTreeSet<String> = state.state_event_ids.iter().cloned().collect();
    for auth in pdu["auth_events"].as_array().into_iter().flatten() {
        // Versions 1 and 2 name auth events as [id, hashes] pairs.
        let id = auth.as_str().or_else(|| auth[0].as_str());
        if let Some(id) = id {
            chain_of.insert(id.to_owned());
        }
    }
    let chain = service
        .roomserver
        .query_auth_chain(pb::QueryAuthChainRequest {
            event_ids: chain_of.into_iter().collect(),
        })
        .await
        .map_err(MatrixError::from)?;
    let parse = |json: &Vec<u8>| serde_json::from_slice::<Value>(json).ok();
    let state_events: Vec<Value> = state.state_events_json.iter().filter_map(parse).collect();
    let auth_chain: Vec<Value> = chain.events_json.iter().filter_map(parse).collect();
    respond(json!({
        "origin": service.server_name,
        "state": state_events,
        "auth_chain": auth_chain,
        "event": pdu,
        "members_omitted": false,
        "servers_in_room": [service.server_name],
    }))
}

#[derive(serde::Deserialize)]
pub(crate) struct InviteBody {
    room_version: String,
    event: Value,
    #[serde(default)]
    invite_room_state: Vec<Value>,
}

/// `PUT /v2/invite`: another server invites one of our users. The invite
/// must be its own user's, of our user, signed; we countersign it and the
/// roomserver announces it to the invitee.
pub(crate) async fn invite(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    MatrixJson(body): MatrixJson<InviteBody>,
) -> MatrixResult {
    let rules = match pdus::rules_for(&body.room_version) {
        Ok(rules) => rules,
        Err(_) => return Ok(incompatible(&body.room_version)),
    };
    let checked = pdus::check(&service.key_ring, &body.room_version, &body.event)
        .await
        .map_err(|e| MatrixError::forbidden(e.to_string()))?;
    if checked.event_id != event_id {
        return Err(MatrixError::bad_json(
            "the event ID does not match the event",
        ));
    }
    let invitee = checked.field("state_key").unwrap_or_default().to_owned();
    let sender = checked.field("sender").unwrap_or_default().to_owned();
    if checked.field("type") != Some("m.room.member")
        || body.event["content"]["membership"] != "invite"
        || checked.field("room_id").is_some_and(|r| r != room_id)
    {
        return Err(MatrixError::bad_json("not an invite to this room"));
    }
    user_of_origin(&sender, &origin)?;
    if !ruma::UserId::parse(&invitee)
        .is_ok_and(|user| user.server_name() == service.client.server_name())
    {
        return Err(MatrixError::forbidden(
            "the invitee is not a user of this server",
        ));
    }
    let mut object = checked.object;
    ruma::signatures::hash_and_sign_event(
        &service.server_name,
        &service.key.key_pair,
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| MatrixError::unknown(e.to_string()))?;
    let event_json =
        serde_json::to_vec(&object).map_err(|e| MatrixError::unknown(e.to_string()))?;
    service
        .roomserver
        .receive_invite(pb::ReceiveInviteRequest {
            room_id,
            room_version: body.room_version,
            event_json,
            event_id,
            invite_room_state_json: body
                .invite_room_state
                .iter()
                .map(|e| e.to_string().into_bytes())
                .collect(),
        })
        .await
        .map_err(MatrixError::from)?;
    respond(
        json!({ "event": serde_json::to_value(&object).map_err(|e| MatrixError::unknown(e.to_string()))? }),
    )
}
