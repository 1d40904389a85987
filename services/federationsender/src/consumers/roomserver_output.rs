//! `roomserver.output`: membership changes keep each room's joined hosts;
//! every new event a local user sent is queued for the servers in the room
//! (before and after it, so a leave or kick still reaches the one who
//! left, and an invite its invitee's server). Events from other servers
//! are their origin's to send. One database transaction per record; the
//! offset is committed after it.

use std::sync::Arc;

use async_trait::async_trait;
use ganglion_api::consume::{HandleError, RecordHandler};
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::decode;
use ganglion_log::Record;
use serde_json::Value;

use crate::queues::Queues;
use crate::storage::{MemberChange, Storage};
use ganglion_api::users::server_of;

pub(crate) struct OutputConsumer {
    pub(crate) storage: Storage,
    pub(crate) queues: Arc<Queues>,
    pub(crate) server_name: String,
}

#[async_trait]
impl RecordHandler for OutputConsumer {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        let output: topic_pb::RoomserverOutput =
            decode(&record.payload).map_err(|e| HandleError::Permanent(e.to_string()))?;
        let Some(topic_pb::roomserver_output::Kind::NewRoomEvent(new)) = output.kind else {
            return Ok(());
        };
        if new.historical || new.outlier {
            return Ok(());
        }
        let pdu: Value = serde_json::from_slice(&new.event_json)
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        let Some(room_id) = pdu["room_id"].as_str() else {
            return Ok(());
        };
        let mut changes: Vec<MemberChange> = new
            .state_removed
            .iter()
            .filter(|e| e.event_type == "m.room.member")
            .map(|e| MemberChange {
                user_id: e.state_key.clone(),
                joined: false,
            })
            .collect();
        changes.extend(
            new.state_added
                .iter()
                .filter(|e| e.event_type == "m.room.member")
                .map(|e| MemberChange {
                    user_id: e.state_key.clone(),
                    joined: e.membership == "join",
                }),
        );
        let sender = pdu["sender"].as_str().unwrap_or_default();
        let local = server_of(sender) == Some(self.server_name.as_str());
        let json = String::from_utf8_lossy(&new.event_json);
        let target_server = (pdu["type"] == "m.room.member")
            .then(|| pdu["state_key"].as_str().and_then(server_of))
            .flatten();
        let destinations = self
            .storage
            .apply_event(
                room_id,
                &changes,
                local.then_some((new.event_id.as_str(), json.as_ref())),
                target_server,
                &self.server_name,
            )
            .await
            .map_err(HandleError::storage)?;
        if !destinations.is_empty() {
            crate::internal_events::PDUS_QUEUED
                .with_label_values::<&str>(&[])
                .inc_by(destinations.len() as u64);
            self.queues.announce(&destinations).await;
        }
        Ok(())
    }
}
