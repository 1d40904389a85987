//! `edu.typing` and `edu.receipt`: a local user's typing notice or public
//! read receipt goes, as an EDU, to every other server in the room.
//! Private receipts stay here; so do other servers' users' EDUs.

use std::sync::Arc;

use async_trait::async_trait;
use ganglion_api::consume::{HandleError, RecordHandler};
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::{Topics, decode};
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
    let local = |user_id: &str| user_id.split_once(':').map(|(_, s)| s) == Some(server_name);
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
        let Some((room_id, edu)) = edu_of(&self.topics, &self.server_name, record)? else {
            return Ok(());
        };
        let destinations = self
            .storage
            .queue_edu(&room_id, &edu.to_string(), &self.server_name)
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?;
        self.queues.wake(&destinations);
        Ok(())
    }
}
