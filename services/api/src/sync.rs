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
