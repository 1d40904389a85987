//! The `SyncApi` implementation: read-your-writes.

use std::time::Duration;

use async_trait::async_trait;
use ganglion_api::ApiError;
use ganglion_api::proto::common::LogPosition;
use ganglion_api::proto::syncapi as pb;
use ganglion_api::sync::SyncApi;

use crate::SyncService;
use crate::sync_token::Stream;

/// The longest a writer may ask to wait.
const MAX_WAIT: Duration = Duration::from_secs(60);

impl SyncService {
    /// Waits (at most `timeout`) until this replica has consumed
    /// `position`; whether it did. An empty topic names `roomserver.output`.
    pub(crate) async fn wait_for_consumed(
        &self,
        position: &LogPosition,
        timeout: Duration,
    ) -> Result<bool, ApiError> {
        let stream = if position.topic.is_empty() {
            Stream::Room
        } else {
            Stream::from_topic(&self.topics, &position.topic)
                .ok_or_else(|| ApiError::InvalidInput("not a topic this service consumes".into()))?
        };
        let index = stream
            .slot(position.partition, self.partitions)
            .ok_or_else(|| ApiError::InvalidInput("no such partition".into()))?;
        let mut receiver = self.positions.subscribe();
        let wait = receiver
            .wait_for(|positions| positions.get(index).copied().unwrap_or(0) > position.offset);
        Ok(matches!(
            tokio::time::timeout(timeout.min(MAX_WAIT), wait).await,
            Ok(Ok(_))
        ))
    }

    /// Read-your-writes for a record this service produced itself.
    pub(crate) async fn wait_for(&self, position: &LogPosition) {
        if !matches!(
            self.wait_for_consumed(position, Duration::from_secs(5))
                .await,
            Ok(true)
        ) {
            tracing::warn!(topic = %position.topic, "sync did not reflect a write in time");
        }
    }
}

#[async_trait]
impl SyncApi for SyncService {
    async fn wait_for_position(
        &self,
        request: pb::WaitForPositionRequest,
    ) -> Result<pb::WaitForPositionResponse, ApiError> {
        let position = request
            .position
            .ok_or_else(|| ApiError::InvalidInput("no position".into()))?;
        let reached = self
            .wait_for_consumed(&position, Duration::from_millis(request.timeout_ms))
            .await?;
        Ok(pb::WaitForPositionResponse { reached })
    }
}
