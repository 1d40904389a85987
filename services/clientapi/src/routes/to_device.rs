//! `PUT /sendToDevice/{eventType}/{txnId}`: one `edu.to_device` record per
//! recipient, with `*` expanded to a local recipient's devices (a remote
//! recipient's server expands it; the federationsender takes those). The
//! message ID derives from the sender's device and transaction, so a
//! retried request is dropped by the reader instead of delivered twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::proto::userapi as user_pb;
use ganglion_api::topics::{PAYLOAD_VERSION, produce};
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, respond_ruma};
use ganglion_base::limits;
use ruma::api::client::to_device::send_event_to_device;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{BodyCheck, Checked};
use crate::ClientApi;

/// The recipients' user IDs and device IDs, checked before ruma parses the
/// body: a malformed one is 400 `M_INVALID_PARAM` (ruma's parsing would say
/// `M_BAD_JSON`, and takes an empty localpart).
pub(crate) struct Recipients;

impl BodyCheck for Recipients {
    fn check(body: &Value) -> MatrixResult<()> {
        let Some(messages) = body["messages"].as_object() else {
            return Ok(());
        };
        for (recipient, by_device) in messages {
            limits::user_id(recipient)?;
            for device_id in by_device.as_object().into_iter().flat_map(Map::keys) {
                if device_id != "*" {
                    limits::opaque_id("device ID", device_id)?;
                }
            }
        }
        Ok(())
    }
}

pub(crate) async fn send_to_device(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Checked(request, _): Checked<send_event_to_device::v3::Request, Recipients>,
) -> MatrixResult {
    let event_type = request.event_type.to_string();
    let txn_id = request.txn_id.to_string();
    limits::event_type(&event_type)?;
    limits::opaque_id("transaction ID", &txn_id)?;
    let message_id = format!(
        "{:x}",
        Sha256::digest(format!("{}\n{}\n{txn_id}", device.user_id, device.device_id).as_bytes())
    );
    // Check everything before publishing anything.
    let mut records = Vec::new();
    for (user, by_device) in request.messages {
        let recipient = user.to_string();
        limits::user_id(&recipient)?;
        let local = user.server_name().as_str() == api.server_name;
        let mut messages = Vec::new();
        for (device_id, content) in by_device {
            let device_id = device_id.to_string();
            if device_id != "*" {
                limits::opaque_id("device ID", &device_id)?;
            }
            // The content as the client sent it: a JSON object, canonical.
            let content: Map<String, Value> = serde_json::from_str(content.json().get())
                .map_err(|e| MatrixError::bad_json(format!("a message's content: {e}")))?;
            super::require_canonical(&content)?;
            let content_json = Value::Object(content).to_string().into_bytes();
            if device_id == "*" && local {
                let devices = api
                    .users
                    .list_devices(user_pb::ListDevicesRequest {
                        user_id: recipient.clone(),
                    })
                    .await
                    .map_err(MatrixError::from)?;
                messages.extend(devices.device_ids.into_iter().map(|device_id| {
                    topic_pb::DeviceMessage {
                        device_id,
                        content_json: content_json.clone(),
                    }
                }));
            } else {
                messages.push(topic_pb::DeviceMessage {
                    device_id,
                    content_json,
                });
            }
        }
        if !messages.is_empty() {
            records.push(topic_pb::ToDeviceEdu {
                version: PAYLOAD_VERSION,
                sender: device.user_id.clone(),
                recipient,
                event_type: event_type.clone(),
                message_id: message_id.clone(),
                messages,
            });
        }
    }
    // Read-your-writes: the last record of each partition covers the rest.
    let mut last = BTreeMap::new();
    for record in &records {
        let position = produce(
            &*api.log,
            &api.topics.edu_to_device,
            &record.recipient,
            record,
        )
        .await?;
        last.insert(position.partition, position);
    }
    for position in last.into_values() {
        api.read_your_writes(&device.user_id, Some(position)).await;
    }
    respond_ruma(send_event_to_device::v3::Response::new())
}
