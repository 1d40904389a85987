//! The userapi's API: accounts, devices and access tokens.

use crate::proto::userapi as pb;
use crate::proto::userapi::users_server::UsersServer;
use crate::proto::userapi::users_client::UsersClient as PbClient;

crate::grpc::service_api! {
    /// Accounts, devices and access tokens (owned by userapi).
    api "users";
    trait UsersApi;
    client UsersClient = PbClient;
    adapter UsersGrpc: pb::users_server::Users, UsersServer;
    {
        /// Creates an account (and, unless `inhibit_login`, a device with a token).
        fn register(pb::RegisterRequest) -> pb::Session;
        fn localpart_available(pb::LocalpartAvailableRequest) -> pb::LocalpartAvailableResponse;
        /// Checks the password and creates a device with a new access token.
        fn login_with_password(pb::LoginRequest) -> pb::Session;
        /// Resolves an access token to its device; `UnknownToken` otherwise.
        fn authenticate(pb::AuthenticateRequest) -> pb::Device;
        fn logout(pb::LogoutRequest) -> pb::LogoutResponse;
        fn logout_all(pb::LogoutAllRequest) -> pb::LogoutResponse;
    }
}

/// What callers hold: the service itself (monolith) or a [`UsersClient`].
pub type UsersHandle = std::sync::Arc<dyn UsersApi>;
