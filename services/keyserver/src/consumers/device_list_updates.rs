//! `federation.device_list_updates`: another server's user changed a
//! device. Their keys are asked of their server when needed, so nothing is
//! stored here; the change is passed on to `keyserver.key_changes`, where
//! the syncapi lists the user in the `device_lists` of those who share a
//! room with them. Redelivery publishes it again, which readers tolerate
//! (a user listed twice as changed).

use std::sync::Arc;

use async_trait::async_trait;
use ganglion_api::consume::{HandleError, RecordHandler};
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::{decode, produce};
use ganglion_log::Record;

use crate::KeyServer;

pub(crate) struct DeviceListUpdates {
    pub(crate) keys: Arc<KeyServer>,
}

#[async_trait]
impl RecordHandler for DeviceListUpdates {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        let change: topic_pb::DeviceKeyChange =
            decode(&record.payload).map_err(|e| HandleError::Permanent(e.to_string()))?;
        if ganglion_api::users::server_of(&change.user_id) == Some(self.keys.server_name.as_str()) {
            // Our users' changes are ours to announce, never another's.
            return Ok(());
        }
        produce(
            &*self.keys.log,
            &self.keys.topics.keyserver_key_changes,
            &change.user_id,
            &change,
        )
        .await
        .map_err(HandleError::storage)?;
        Ok(())
    }
}
