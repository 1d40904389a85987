//! The `SyncApi` implementation: read-your-writes.

use std::time::Duration;

use async_trait::async_trait;
use ganglion_api::ApiError;
use ganglion_api::proto::syncapi as pb;
use ganglion_api::sync::SyncApi;

use crate::SyncService;

#[async_trait]
impl SyncApi for SyncService {
    async fn wait_for_position(
        &self,
        request: pb::WaitForPositionRequest,
    ) -> Result<pb::WaitForPositionResponse, ApiError> {
        let position = request
            .position
            .ok_or_else(|| ApiError::InvalidInput("no position".into()))?;
        let partition = position.partition as usize;
        if partition >= self.partitions {
            return Err(ApiError::InvalidInput("no such partition".into()));
        }
        let mut receiver = self.positions.subscribe();
        let wait = receiver
            .wait_for(|positions| positions.get(partition).copied().unwrap_or(0) > position.offset);
        let timeout = Duration::from_millis(request.timeout_ms.min(60_000));
        let reached = matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)));
        Ok(pb::WaitForPositionResponse { reached })
    }
}
