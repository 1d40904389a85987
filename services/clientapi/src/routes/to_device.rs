//! `PUT /sendToDevice/{eventType}/{txnId}`: one `edu.to_device` record per
//! recipient, with `*` expanded to a local recipient's devices (a remote
//! recipient's server expands it; the federationsender takes those). The
//! message ID derives from the sender's device and transaction, so a
//! retried request is dropped by the reader instead of delivered twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::proto::userapi as user_pb;
use ganglion_api::topics::{PAYLOAD_VERSION, produce};
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixBody, MatrixResult, parse_json, respond};
use ganglion_base::limits;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::ClientApi;

#[derive(Deserialize)]
pub(crate) struct SendToDeviceBody {
    messages: BTreeMap<String, BTreeMap<String, Map<String, Value>>>,
}

pub(crate) async fn send_to_device(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Path((event_type, txn_id)): Path<(String, String)>,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: SendToDeviceBody = parse_json(&body)?;
    limits::event_type(&event_type)?;
    limits::opaque_id("transaction ID", &txn_id)?;
    let message_id = format!(
        "{:x}",
        Sha256::digest(format!("{}\n{}\n{txn_id}", device.user_id, device.device_id).as_bytes())
    );
    // Check everything before publishing anything.
    let mut records = Vec::new();
    for (recipient, by_device) in body.messages {
        limits::user_id(&recipient)?;
        let user = ruma::UserId::parse(recipient.as_str())
            .map_err(|_| MatrixError::invalid_param(format!("invalid user ID {recipient}")))?;
        let local = user.server_name().as_str() == api.server_name;
        let mut messages = Vec::new();
        for (device_id, content) in by_device {
            if device_id != "*" {
                limits::opaque_id("device ID", &device_id)?;
            }
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
    respond(json!({}))
}
