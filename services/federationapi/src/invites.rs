//! Inviting a user of another server: our invite event is hashed and
//! signed, sent to the invitee's server (`PUT /v2/invite`) with stripped
//! state to show the room by, and taken by the roomserver once that server
//! has countersigned it (so the invite reaches them even though their
//! server is not in the room).

use ganglion_api::ApiError;
use ganglion_api::proto::federationapi as fed_pb;
use ganglion_api::proto::roomserver as pb;
use ruma::canonical_json::CanonicalJsonObject;
use serde_json::{Value, json};

use crate::FederationService;
use crate::pdus;
use ganglion_base::http::percent_encode as encode;

impl FederationService {
    pub(crate) async fn invite_remote_user(
        &self,
        request: fed_pb::InviteRequest,
    ) -> Result<fed_pb::JoinRoomResponse, ApiError> {
        let rules = pdus::rules_for(&request.room_version)
            .map_err(|e| ApiError::UnsupportedRoomVersion(e.to_string()))?;
        let mut object: CanonicalJsonObject = serde_json::from_slice(&request.event_json)
            .map_err(|e| ApiError::InvalidInput(format!("the invite: {e}")))?;
        let invitee = match object.get("state_key") {
            Some(ruma::CanonicalJsonValue::String(user)) => user.clone(),
            _ => return Err(ApiError::InvalidInput("the invite names no invitee".into())),
        };
        let destination = ruma::UserId::parse(&invitee)
            .map_err(|_| ApiError::InvalidInput("the invitee is not a user ID".into()))?
            .server_name()
            .to_string();
        object.insert("origin".into(), self.server_name.as_str().into());
        if rules.event_id_format == ruma::room_version_rules::EventIdFormatVersion::V1 {
            object.insert(
                "event_id".into(),
                format!("${}:{}", ruma::TransactionId::new(), self.server_name)
                    .as_str()
                    .into(),
            );
        }
        ruma::signatures::hash_and_sign_event(
            &self.server_name,
            &self.key.key_pair,
            &mut object,
            &rules.redaction,
        )
        .map_err(|e| ApiError::Internal(format!("signing the invite: {e}")))?;
        let event_id =
            pdus::event_id_of(&object, &rules).map_err(|e| ApiError::Internal(e.to_string()))?;
        let stripped: Vec<Value> = request
            .invite_room_state_json
            .iter()
            .filter_map(|json| serde_json::from_slice(json).ok())
            .collect();
        let body = json!({
            "room_version": request.room_version,
            "event": serde_json::to_value(&object).map_err(|e| ApiError::Internal(e.to_string()))?,
            "invite_room_state": stripped,
        });
        let path = format!(
            "/_matrix/federation/v2/invite/{}/{}",
            encode(&request.room_id),
            encode(&event_id)
        );
        let answer = self
            .client
            .send(&destination, http::Method::PUT, &path, Some(&body))
            .await?;
        let signed = pdus::check(&self.key_ring, &request.room_version, &answer["event"])
            .await
            .map_err(|e| {
                ApiError::Unavailable(format!("{destination}: the countersigned invite: {e}"))
            })?;
        if signed.event_id != event_id {
            return Err(ApiError::Unavailable(format!(
                "{destination} answered with another event"
            )));
        }
        let outcome = self
            .roomserver
            .input_pdus(pb::InputPdusRequest {
                room_id: request.room_id.clone(),
                room_version: request.room_version.clone(),
                pdus: vec![pb::InputPdu {
                    kind: pb::input_pdu::Kind::New as i32,
                    event_json: signed.json_bytes(),
                    ..Default::default()
                }],
            })
            .await?;
        pdus::taken("invite", event_id, outcome)
    }
}
