//! The federationapi's API: queries other services make of remote servers.

use crate::proto::federationapi as pb;
use crate::proto::federationapi::federation_client::FederationClient as PbClient;
use crate::proto::federationapi::federation_server::FederationServer;

crate::grpc::service_api! {
    /// Outbound federation queries (owned by federationapi).
    api "federation";
    trait FederationApi;
    client FederationClient = PbClient;
    adapter FederationGrpc: pb::federation_server::Federation, FederationServer;
    {
        /// Asks a remote server which room its alias names.
        fn query_directory(pb::QueryDirectoryRequest) -> pb::QueryDirectoryResponse;
        /// Asks a remote server for its users' device keys.
        fn query_keys(pb::RemoteRequest) -> pb::RemoteResponse;
        /// Claims one-time keys of a remote server's devices.
        fn claim_keys(pb::RemoteRequest) -> pb::RemoteResponse, once;
        /// Sends a transaction of PDUs and EDUs to a remote server.
        fn send_transaction(pb::SendTransactionRequest) -> pb::RemoteResponse;
        /// Joins a local user to a remote room.
        fn join_room(pb::JoinRoomRequest) -> pb::JoinRoomResponse, once;
        /// Invites a remote user (their server countersigns the invite).
        fn invite(pb::InviteRequest) -> pb::JoinRoomResponse, once;
        /// Rejects a remote invite to a room we are not in.
        fn reject_invite(pb::JoinRoomRequest) -> pb::JoinRoomResponse, once;
        /// Knocks a local user on a remote room.
        fn knock_room(pb::JoinRoomRequest) -> pb::JoinRoomResponse, once;
        /// Asks a remote server for its public rooms.
        fn query_public_rooms(pb::RemoteRequest) -> pb::RemoteResponse;
        /// A remote space's hierarchy (`GET /hierarchy/{roomId}`).
        fn query_hierarchy(pb::QueryHierarchyRequest) -> pb::RemoteResponse;
        /// Asks a remote user's server for their profile.
        fn query_profile(pb::QueryProfileRequest) -> pb::RemoteResponse;
        /// Fetches and takes history of a room from servers in it.
        fn backfill(pb::BackfillRequest) -> pb::BackfillResponse;
        /// Signs a federation media request of this server's (for the
        /// mediaapi, which does not hold the key).
        fn sign_request(pb::SignRequestRequest) -> pb::SignRequestResponse;
        /// Checks another server's signed request; its origin or refusal.
        fn authenticate_request(pb::AuthenticateRequestRequest) -> pb::AuthenticateRequestResponse;
    }
}

/// What callers hold: the service itself (monolith) or a [`FederationClient`].
pub type FederationHandle = std::sync::Arc<dyn FederationApi>;
