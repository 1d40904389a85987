//! Sending messages (idempotent per device and transaction ID) and state.

use std::sync::Arc;

use axum::extract::State;
use ganglion_api::proto::roomserver as pb;
use ganglion_api::proto::userapi::Device;
use ganglion_api::users::{User, UserOrGuest};
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, Ruma, respond_ruma};
use ganglion_base::limits::{self, MAX_PDU_BYTES};
use ruma::api::client::message::send_message_event;
use ruma::api::client::redact::redact_event;
use ruma::api::client::state::{get_state_event_for_key, send_state_event};
use serde_json::{Map, Value, json};

use crate::ClientApi;
use crate::internal_events::ROOM_WRITES;

/// Event content as the client sent it (ruma keeps it raw): within the size
/// of a whole event, canonical JSON.
fn content(raw: &serde_json::value::RawValue) -> Result<Map<String, Value>, MatrixError> {
    // Content alone over the limit of a whole event can never fit.
    if raw.get().len() > MAX_PDU_BYTES {
        return Err(MatrixError::too_large("Event too large"));
    }
    let content: Map<String, Value> = serde_json::from_str(raw.get())
        .map_err(|e| MatrixError::bad_json(format!("Invalid request: {e}")))?;
    super::require_canonical(&content)?;
    Ok(content)
}

fn event_template(
    device: &Device,
    event_type: &str,
    state_key: Option<&str>,
    content: Map<String, Value>,
) -> pb::EventTemplate {
    super::rooms::template(
        event_type,
        state_key,
        &device.user_id,
        Value::Object(content),
    )
}

/// The events this replica's recent sends made, by transaction request
/// ID (the last few thousand, in memory): a retry it answered before is
/// answered again at once, rate limit or not, as on Synapse, whose
/// transaction cache is in memory too. A retry this replica has not seen
/// goes to the roomserver, which knows every request.
pub(crate) struct RecentSends(std::sync::Mutex<ganglion_base::bounded::Bounded<String, String>>);

impl Default for RecentSends {
    fn default() -> Self {
        RecentSends(std::sync::Mutex::new(ganglion_base::bounded::Bounded::new(
            4_096,
        )))
    }
}

impl RecentSends {
    fn lock(&self) -> std::sync::MutexGuard<'_, ganglion_base::bounded::Bounded<String, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientApi {
    /// Sends an event once per device and transaction ID: a retry gets the
    /// first attempt's event ID, even while the first is still sending.
    /// The roomserver keeps that promise: it records each input's request
    /// ([`transaction_request_id`](ganglion_api::roomserver::transaction_request_id))
    /// in the transaction that writes its events, answers a retry with
    /// what the first made, and answers retries in flight together.
    async fn send_once(
        &self,
        room_id: &str,
        device: &Device,
        template: pb::EventTemplate,
        txn_id: &str,
    ) -> MatrixResult<String> {
        limits::opaque_id("transaction ID", txn_id)?;
        let request_id = ganglion_api::roomserver::transaction_request_id(
            &device.user_id,
            &device.device_id,
            room_id,
            &template.event_type,
            template.redacts.as_deref(),
            txn_id,
        );
        if let Some(event_id) = self.sent.lock().get(&request_id) {
            return Ok(event_id);
        }
        let event_id = self.send_event(room_id, device, template, txn_id).await?;
        self.sent.lock().insert(request_id, event_id.clone());
        Ok(event_id)
    }

    /// Every alias an `m.room.canonical_alias` event names must be valid
    /// (`M_INVALID_PARAM`) and point to this room (`M_BAD_ALIAS`).
    async fn check_canonical_alias(
        &self,
        room_id: &str,
        content: &Map<String, Value>,
    ) -> MatrixResult<()> {
        let mut aliases: Vec<&Value> = Vec::new();
        if let Some(alias) = content.get("alias") {
            aliases.push(alias);
        }
        match content.get("alt_aliases") {
            Some(Value::Array(alt)) => aliases.extend(alt),
            Some(_) => return Err(MatrixError::invalid_param("alt_aliases must be a list")),
            None => {}
        }
        for alias in aliases {
            let alias = alias
                .as_str()
                .ok_or_else(|| MatrixError::invalid_param("aliases must be strings"))?;
            ruma::RoomAliasId::parse(alias)
                .map_err(|_| MatrixError::invalid_param(format!("invalid alias {alias}")))?;
            let resolved = self
                .roomserver
                .resolve_alias(pb::ResolveAliasRequest {
                    alias: alias.to_owned(),
                })
                .await
                .map_err(MatrixError::from)?;
            if resolved.room_id.as_deref() != Some(room_id) {
                return Err(MatrixError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "M_BAD_ALIAS",
                    format!("{alias} does not point to this room"),
                ));
            }
        }
        Ok(())
    }

    /// Sends one event for `device`; `txn_id` is echoed to that device.
    pub(crate) async fn send_event(
        &self,
        room_id: &str,
        device: &Device,
        template: pb::EventTemplate,
        txn_id: &str,
    ) -> MatrixResult<String> {
        limits::room_id(room_id)?;
        limits::event_type(&template.event_type)?;
        self.rate_limits.messages_per_user.check(&device.user_id)?;
        if let Some(state_key) = &template.state_key {
            limits::state_key(state_key)?;
        }
        let kind = if template.state_key.is_some() {
            "state"
        } else {
            "send"
        };
        let result = self
            .roomserver
            .input(pb::InputRequest {
                room_id: room_id.to_owned(),
                templates: vec![template],
                device_id: device.device_id.clone(),
                transaction_id: txn_id.to_owned(),
            })
            .await;
        ROOM_WRITES
            .with_label_values(&[kind, if result.is_ok() { "ok" } else { "error" }])
            .inc();
        let response = result.map_err(MatrixError::from)?;
        self.read_your_writes(&device.user_id, response.output_position)
            .await;
        response
            .event_ids
            .into_iter()
            .next()
            .ok_or_else(|| MatrixError::unknown("no event ID"))
    }
}

pub(crate) async fn send(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<send_message_event::v3::Request>,
) -> MatrixResult {
    let content = content(request.body.json())?;
    let event_type = request.event_type.to_string();
    let template = event_template(&device, &event_type, None, content);
    let event_id = api
        .send_once(
            request.room_id.as_str(),
            &device,
            template,
            request.txn_id.as_str(),
        )
        .await?;
    respond_ruma(send_message_event::v3::Response::new(owned_event_id(
        event_id,
    )?))
}

/// An event ID the roomserver gave, as ruma's type.
fn owned_event_id(event_id: String) -> MatrixResult<ruma::OwnedEventId> {
    ruma::OwnedEventId::try_from(event_id)
        .map_err(|_| MatrixError::unknown("the new event's ID is invalid"))
}

/// `PUT /rooms/{roomId}/state/{eventType}/{stateKey}`, the state key empty
/// when left out (with or without the trailing slash).
pub(crate) async fn put_state(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<send_state_event::v3::Request>,
) -> MatrixResult {
    let room_id = request.room_id.to_string();
    let event_type = request.event_type.to_string();
    let state_key = request.state_key;
    let content = content(request.body.json())?;
    if event_type == "m.room.canonical_alias" {
        api.check_canonical_alias(&room_id, &content).await?;
    }
    if event_type == "m.room.member" && ruma::UserId::parse(&state_key).is_err() {
        return Err(MatrixError::invalid_param(
            "the state key of a member event is a user ID",
        ));
    }
    let closes_to_guests = ganglion_api::roomserver::closes_to_guests(
        &event_type,
        Some(&state_key),
        &Value::Object(content.clone()),
    );
    let event_id = api
        .send_event(
            &room_id,
            &device,
            event_template(&device, &event_type, Some(&state_key), content),
            "",
        )
        .await?;
    if closes_to_guests {
        let removed = ganglion_api::roomserver::remove_guests(
            &api.roomserver,
            &api.users,
            &room_id,
            &api.server_name,
        )
        .await;
        api.read_your_writes(&device.user_id, removed.into_iter().next_back())
            .await;
    }
    respond_ruma(send_state_event::v3::Response::new(owned_event_id(
        event_id,
    )?))
}

/// `GET /rooms/{roomId}/state/{eventType}/{stateKey}` (the state key
/// empty when left out): one state event's content, from the state the
/// reader may see: the current state for members (or a world-readable
/// room), the state when they left for former members. The content always,
/// whatever `format` asks (as before: the whole event is not offered yet).
pub(crate) async fn get_state(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<get_state_event_for_key::v3::Request>,
) -> MatrixResult {
    let room_id = request.room_id.to_string();
    let event_type = request.event_type.to_string();
    let state_key = request.state_key;
    let content = |event: &Value| -> MatrixResult {
        let content = serde_json::value::to_raw_value(&event["content"])
            .map_err(|e| MatrixError::unknown(format!("a stored event's content: {e}")))?;
        respond_ruma(get_state_event_for_key::v3::Response::new(content))
    };
    // Members (and anyone, in a world-readable room): one lookup.
    if api
        .require_member_or_world_readable(&room_id, &device.user_id)
        .await
        .is_ok()
    {
        let event = api
            .roomserver
            .query_state_event(pb::QueryStateEventRequest {
                room_id,
                event_type,
                state_key,
            })
            .await
            .map_err(MatrixError::from)?
            .event_json
            .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
            .ok_or_else(|| MatrixError::not_found("Event not found"))?;
        return content(&event);
    }
    // Former members: the state when they left.
    let state = api.readable_state(&room_id, &device.user_id).await?;
    let event = state
        .into_iter()
        .find(|e| e["type"] == event_type.as_str() && e["state_key"] == state_key.as_str())
        .ok_or_else(|| MatrixError::not_found("Event not found"))?;
    content(&event)
}

/// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`: idempotent per device
/// and transaction ID, like a send.
pub(crate) async fn redact(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Ruma(request): Ruma<redact_event::v3::Request>,
) -> MatrixResult {
    let mut content = Map::new();
    if let Some(reason) = request.reason {
        content.insert("reason".into(), json!(reason));
    }
    let mut template = event_template(&device, "m.room.redaction", None, content);
    template.redacts = Some(request.event_id.to_string());
    let redaction_id = api
        .send_once(
            request.room_id.as_str(),
            &device,
            template,
            request.txn_id.as_str(),
        )
        .await?;
    respond_ruma(redact_event::v3::Response::new(owned_event_id(
        redaction_id,
    )?))
}
