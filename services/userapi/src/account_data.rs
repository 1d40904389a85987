//! Account data: stored here, then published on `userapi.account_data`
//! (keyed by user ID) for the syncapi and other readers. A change is
//! written with an outbox row in one transaction; the row goes once the
//! record is on the log, and rows left by a crash are published at start.

use ganglion_api::ApiError;
use ganglion_api::proto::common::LogPosition;
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::{PAYLOAD_VERSION, produce};

use crate::UserApi;
use crate::storage::Pending;

impl UserApi {
    /// The localpart of a user of this server.
    pub(crate) fn local_part<'a>(&self, user_id: &'a str) -> Result<&'a str, ApiError> {
        user_id
            .strip_prefix('@')
            .and_then(|rest| rest.strip_suffix(&format!(":{}", self.server_name)))
            .filter(|localpart| ganglion_api::users::valid_localpart(localpart))
            .ok_or_else(|| ApiError::InvalidInput("not a local user".into()))
    }

    /// Rewrites one piece of a local user's account data from its current
    /// content and publishes it. One change at a time per process, and on
    /// PostgreSQL per user across the replicas sharing the database, so no
    /// change is lost to another made at the same moment.
    pub(crate) async fn modify_account_data(
        &self,
        localpart: &str,
        (room_id, data_type): (&str, &str),
        change: impl FnOnce(Option<String>) -> Result<String, ApiError>,
    ) -> Result<Option<LogPosition>, ApiError> {
        let id = {
            let _one_at_a_time = self.modifying.lock().await;
            let lock = self
                .storage
                .db
                .lock_name(&format!("userapi.modify {localpart}"))
                .await
                .map_err(ApiError::internal)?;
            let id = self
                .storage
                .modify_account_data((localpart, room_id, data_type), change)
                .await;
            lock.release().await;
            id?
        };
        self.publish(&Pending {
            id,
            localpart: localpart.to_owned(),
            room_id: room_id.to_owned(),
            data_type: data_type.to_owned(),
        })
        .await
    }

    /// Publishes an outbox row with the content as stored now, then
    /// removes the row; `None` when another replica published it first.
    /// One publisher at a time per user, across every replica sharing the
    /// database, so a user's records keep their order and the last record
    /// of a key always carries its latest content.
    pub(crate) async fn publish(&self, pending: &Pending) -> Result<Option<LogPosition>, ApiError> {
        let log = self
            .log
            .as_ref()
            .ok_or_else(|| ApiError::Unavailable("this process does not publish".into()))?;
        let _one_at_a_time = self.publishing.lock().await;
        let lock = self
            .storage
            .db
            .lock_name(&format!("userapi.account_data {}", pending.localpart))
            .await
            .map_err(ApiError::internal)?;
        let published = self.publish_locked(log, pending).await;
        lock.release().await;
        published
    }

    async fn publish_locked(
        &self,
        log: &std::sync::Arc<dyn ganglion_log::Log>,
        pending: &Pending,
    ) -> Result<Option<LogPosition>, ApiError> {
        if !self.storage.pending(pending.id).await? {
            return Ok(None);
        }
        let content = self
            .storage
            .account_data(&pending.localpart, &pending.room_id, &pending.data_type)
            .await?
            .unwrap_or_else(|| "{}".to_owned());
        let user_id = self.user_id(&pending.localpart);
        let position = produce(
            &**log,
            &self.topics.userapi_account_data,
            &user_id,
            &topic_pb::AccountDataUpdate {
                version: PAYLOAD_VERSION,
                user_id: user_id.clone(),
                room_id: pending.room_id.clone(),
                data_type: pending.data_type.clone(),
                content_json: content.into_bytes(),
            },
        )
        .await?;
        self.storage.published(pending.id).await?;
        Ok(Some(position))
    }

    /// Publishes what a crash left in the outbox.
    pub(crate) async fn publish_pending(&self) -> Result<usize, ApiError> {
        let pending = self.storage.pending_account_data().await?;
        for row in &pending {
            self.publish(row).await?;
        }
        Ok(pending.len())
    }
}
