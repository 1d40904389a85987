//! The syncapi's API: read-your-writes.

use crate::proto::syncapi as pb;
use crate::proto::syncapi::sync_client::SyncClient as PbClient;
use crate::proto::syncapi::sync_server::SyncServer;

crate::grpc::service_api! {
    /// Lets writers wait until a write is visible to `/sync` (owned by syncapi).
    api "sync";
    trait SyncApi;
    client SyncClient = PbClient;
    adapter SyncGrpc: pb::sync_server::Sync, SyncServer;
    {
        /// Answers once this replica has consumed the position, or the timeout passed.
        fn wait_for_position(pb::WaitForPositionRequest) -> pb::WaitForPositionResponse;
    }
}

/// What callers hold: the service itself (monolith) or a [`SyncClient`].
pub type SyncHandle = std::sync::Arc<dyn SyncApi>;

/// The syncapi's replicas as a writer reaches them: a write is waited for
/// on the replica that serves its user, the one the gateway sends that
/// user's `/sync` to (see [`crate::replicas`]).
pub struct SyncReplicas {
    client: SyncClient,
}

impl SyncReplicas {
    pub fn new(
        replicas: std::sync::Arc<crate::replicas::ReplicaSet>,
        secret: ganglion_base::internal_auth::InternalSecret,
    ) -> Result<Self, crate::ApiError> {
        Ok(SyncReplicas {
            client: SyncClient::replicated(replicas, secret)?,
        })
    }
}

#[async_trait::async_trait]
impl SyncApi for SyncReplicas {
    async fn wait_for_position(
        &self,
        request: pb::WaitForPositionRequest,
    ) -> Result<pb::WaitForPositionResponse, crate::ApiError> {
        if request.user_id.is_empty() {
            return self.client.wait_for_position(request).await;
        }
        // The user's replica; if it cannot be reached, the next in the
        // user's order (where the gateway sends them next).
        let mut last = Err(crate::ApiError::Unavailable(
            "no syncapi replica".to_owned(),
        ));
        for index in self.client.replicas.for_user(&request.user_id) {
            let Some(client) = self.client.inner.get(index) else {
                continue;
            };
            let result = client
                .clone()
                .wait_for_position(crate::grpc::outgoing(request.clone(), &self.client.secret))
                .await;
            if let Err(status) = &result {
                let (next, down) =
                    crate::grpc::replica_failed(status, crate::grpc::Retry::Idempotent);
                if down {
                    self.client.replicas.mark_down(index);
                }
                if next {
                    last = crate::grpc::finish_client("sync", "wait_for_position", result);
                    continue;
                }
            }
            return crate::grpc::finish_client("sync", "wait_for_position", result);
        }
        last
    }
}
