//! Key changes: a change of a device's identity keys is written with an
//! outbox row in the same transaction; the row goes once the change is on
//! `keyserver.key_changes` (keyed by user ID), and rows a crash left are
//! published at start. The record carries the keys as stored when it is
//! published, so the last record of a device always tells its latest keys.
//! A row with an empty device ID tells of the user's cross-signing keys:
//! its record carries their master and self-signing keys.

use ganglion_api::ApiError;
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::{PAYLOAD_VERSION, produce};

use crate::KeyServer;
use crate::storage::keys::PendingChange;

impl KeyServer {
    /// Publishes outbox rows, oldest first, then removes them; a row
    /// another replica published first is skipped. One publisher at a time
    /// per user, across every replica sharing the database, so records of
    /// a user keep the rows' order and the last one tells the latest keys.
    pub(crate) async fn publish(&self, changes: &[PendingChange]) -> Result<(), ApiError> {
        let _one_at_a_time = self.publishing.lock().await;
        for change in changes {
            let lock = self
                .storage
                .db
                .lock_name(&format!("keyserver.key_changes {}", change.user_id))
                .await
                .map_err(ApiError::internal)?;
            let published = self.publish_locked(change).await;
            lock.release().await;
            published?;
        }
        Ok(())
    }

    async fn publish_locked(&self, change: &PendingChange) -> Result<(), ApiError> {
        if !self.storage.change_pending(change.id).await? {
            return Ok(());
        }
        // An empty device ID: the user's cross-signing keys changed (or,
        // seen by one user only, that user's signature of them).
        let signing_keys = change.device_id.is_empty();
        let keys = if !change.seen_by.is_empty() {
            Some(String::new())
        } else if signing_keys {
            Some(self.signing_key_update(&change.user_id).await?.to_string())
        } else {
            let device = std::slice::from_ref(&change.device_id);
            self.keys_seen_by(&change.user_id, Some(device), false, None)
                .await?
                .devices
                .pop()
                .map(|(_, json)| json)
        };
        produce(
            &*self.log,
            &self.topics.keyserver_key_changes,
            &change.user_id,
            &topic_pb::DeviceKeyChange {
                version: PAYLOAD_VERSION,
                user_id: change.user_id.clone(),
                device_id: change.device_id.clone(),
                stream_id: change.id,
                deleted: keys.is_none(),
                device_keys_json: keys.map(String::into_bytes).unwrap_or_default(),
                signing_keys,
                seen_by: change.seen_by.clone(),
            },
        )
        .await?;
        self.storage.change_published(change.id).await?;
        Ok(())
    }

    /// Publishes what a crash left in the outbox.
    pub(crate) async fn publish_pending(&self) -> Result<usize, ApiError> {
        let pending = self.storage.pending_changes().await?;
        self.publish(&pending).await?;
        Ok(pending.len())
    }
}
