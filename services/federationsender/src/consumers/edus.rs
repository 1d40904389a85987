//! `edu.typing` and `edu.receipt`: a local user's typing notice or public
//! read receipt goes, as an EDU, to every other server in the room.
//! Private receipts stay here; so do other servers' users' EDUs.
//! `keyserver.key_changes` and `edu.presence`: a local user's device
//! change, cross-signing keys or presence goes, as an
//! `m.device_list_update`, `m.signing_key_update` or `m.presence`, to
//! every server sharing a room with them.
//! `edu.to_device`: a local user's message for a remote user's devices
//! goes, as an `m.direct_to_device`, to that user's server.

use std::sync::Arc;

use async_trait::async_trait;
use ganglion_api::consume::{HandleError, RecordHandler};
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::{Topics, decode};
use ganglion_api::users::server_of;
use ganglion_log::Record;
use serde_json::{Value, json};

use crate::queues::Queues;
use crate::storage::Storage;

pub(crate) struct EduConsumer {
    pub(crate) storage: Storage,
    pub(crate) queues: Arc<Queues>,
    pub(crate) server_name: String,
    pub(crate) topics: Topics,
}

/// The EDU for a record of `topic`, with its room, if it is ours to send.
pub(crate) fn edu_of(
    topics: &Topics,
    server_name: &str,
    record: &Record,
) -> Result<Option<(String, Value)>, HandleError> {
    let local = |user_id: &str| server_of(user_id) == Some(server_name);
    let permanent = |e: ganglion_api::ApiError| HandleError::Permanent(e.to_string());
    if record.topic == topics.edu_typing {
        let typing: topic_pb::TypingEdu = decode(&record.payload).map_err(permanent)?;
        if !local(&typing.user_id) {
            return Ok(None);
        }
        let edu = json!({
            "edu_type": "m.typing",
            "content": { "room_id": typing.room_id, "user_id": typing.user_id, "typing": typing.typing },
        });
        return Ok(Some((typing.room_id, edu)));
    }
    if record.topic == topics.edu_receipt {
        let receipt: topic_pb::ReceiptEdu = decode(&record.payload).map_err(permanent)?;
        if !local(&receipt.user_id) || receipt.receipt_type != "m.read" {
            return Ok(None);
        }
        let mut data = json!({ "ts": receipt.ts });
        if !receipt.thread_id.is_empty() {
            data["thread_id"] = json!(receipt.thread_id);
        }
        let edu = json!({
            "edu_type": "m.receipt",
            "content": { receipt.room_id.clone(): { "m.read": { receipt.user_id.clone(): {
                "event_ids": [receipt.event_id],
                "data": data,
            } } } },
        });
        return Ok(Some((receipt.room_id, edu)));
    }
    Ok(None)
}

#[async_trait]
impl RecordHandler for EduConsumer {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        if record.topic == self.topics.keyserver_key_changes {
            return self.device_list_update(record).await;
        }
        if record.topic == self.topics.edu_presence {
            return self.presence(record).await;
        }
        if record.topic == self.topics.edu_to_device {
            return self.to_device(record).await;
        }
        let Some((room_id, edu)) = edu_of(&self.topics, &self.server_name, record)? else {
            return Ok(());
        };
        let destinations = self
            .storage
            .queue_edu(&room_id, &edu.to_string(), &self.server_name)
            .await
            .map_err(HandleError::storage)?;
        self.queues.announce(&destinations).await;
        Ok(())
    }
}

impl EduConsumer {
    /// A local user's device changed: an `m.device_list_update` for every
    /// server sharing a room with them.
    async fn device_list_update(&self, record: &Record) -> Result<(), HandleError> {
        let change: topic_pb::DeviceKeyChange =
            decode(&record.payload).map_err(|e| HandleError::Permanent(e.to_string()))?;
        // Another server's user, or a change only a local signer sees.
        if server_of(&change.user_id) != Some(self.server_name.as_str())
            || !change.seen_by.is_empty()
        {
            return Ok(());
        }
        if change.signing_keys {
            return self.signing_key_update(&change).await;
        }
        let keys: Option<Value> = (!change.deleted)
            .then(|| serde_json::from_slice(&change.device_keys_json).ok())
            .flatten();
        let edu = |prev: Option<i64>| {
            let mut content = json!({
                "user_id": change.user_id,
                "device_id": change.device_id,
                "stream_id": change.stream_id,
                "prev_id": prev.into_iter().collect::<Vec<_>>(),
                "deleted": change.deleted,
            });
            if let Some(keys) = &keys {
                content["keys"] = keys.clone();
            }
            json!({ "edu_type": "m.device_list_update", "content": content }).to_string()
        };
        let destinations = self
            .storage
            .queue_device_list_update(&change.user_id, change.stream_id, edu, &self.server_name)
            .await
            .map_err(HandleError::storage)?;
        self.queues.announce(&destinations).await;
        Ok(())
    }
}

impl EduConsumer {
    /// A local user's cross-signing keys changed: an
    /// `m.signing_key_update` with them as they are now for every server
    /// sharing a room with them.
    async fn signing_key_update(
        &self,
        change: &topic_pb::DeviceKeyChange,
    ) -> Result<(), HandleError> {
        let content: Value = serde_json::from_slice(&change.device_keys_json)
            .map_err(|e| HandleError::Permanent(format!("signing keys: {e}")))?;
        if content["user_id"] != change.user_id.as_str() {
            return Err(HandleError::Permanent(
                "signing keys of another user".into(),
            ));
        }
        let edu = json!({ "edu_type": "m.signing_key_update", "content": content });
        let destinations = self
            .storage
            .queue_user_edu(&change.user_id, &edu.to_string(), &self.server_name)
            .await
            .map_err(HandleError::storage)?;
        self.queues.announce(&destinations).await;
        Ok(())
    }

    /// A local user's presence changed: an `m.presence` for every server
    /// sharing a room with them.
    async fn presence(&self, record: &Record) -> Result<(), HandleError> {
        let presence: topic_pb::PresenceEdu =
            decode(&record.payload).map_err(|e| HandleError::Permanent(e.to_string()))?;
        if server_of(&presence.user_id) != Some(self.server_name.as_str()) {
            return Ok(());
        }
        let now = crate::queues::now_ms();
        let mut entry = json!({
            "user_id": presence.user_id,
            "presence": presence.presence,
            "last_active_ago": (now - presence.last_active_ts).max(0),
            "currently_active": presence.currently_active,
        });
        if let Some(status) = &presence.status_msg {
            entry["status_msg"] = json!(status);
        }
        let edu = json!({ "edu_type": "m.presence", "content": { "push": [entry] } });
        let destinations = self
            .storage
            .queue_user_edu(&presence.user_id, &edu.to_string(), &self.server_name)
            .await
            .map_err(HandleError::storage)?;
        self.queues.announce(&destinations).await;
        Ok(())
    }
}

/// The `m.direct_to_device` EDU for a local user's message to a remote
/// user, with its destination; none for anything else. The EDU's message
/// ID (at most 32 characters, unique per sender's server) derives from the
/// send's and the recipient, so a receiver that dedupes by it keeps one
/// copy per recipient.
pub(crate) fn to_device_edu(
    server_name: &str,
    edu: &topic_pb::ToDeviceEdu,
) -> Option<(String, Value)> {
    use sha2::{Digest, Sha256};
    let destination = server_of(&edu.recipient)?.to_owned();
    if server_of(&edu.sender) != Some(server_name)
        || destination == server_name
        || edu.messages.is_empty()
    {
        return None;
    }
    let mut devices = serde_json::Map::new();
    for message in &edu.messages {
        let content: Value = serde_json::from_slice(&message.content_json).ok()?;
        devices.insert(message.device_id.clone(), content);
    }
    let digest = Sha256::digest(format!("{}\n{}", edu.message_id, edu.recipient).as_bytes());
    let message_id: String = format!("{digest:x}").chars().take(32).collect();
    let content = json!({
        "sender": edu.sender,
        "type": edu.event_type,
        "message_id": message_id,
        "messages": { edu.recipient.clone(): devices },
    });
    Some((
        destination,
        json!({ "edu_type": "m.direct_to_device", "content": content }),
    ))
}

impl EduConsumer {
    /// A local user's to-device message for a remote user.
    async fn to_device(&self, record: &Record) -> Result<(), HandleError> {
        let edu: topic_pb::ToDeviceEdu =
            decode(&record.payload).map_err(|e| HandleError::Permanent(e.to_string()))?;
        let Some((destination, edu)) = to_device_edu(&self.server_name, &edu) else {
            return Ok(());
        };
        self.storage
            .queue_edu_to(&destination, &edu.to_string())
            .await
            .map_err(HandleError::storage)?;
        self.queues.announce(&[destination]).await;
        Ok(())
    }
}
