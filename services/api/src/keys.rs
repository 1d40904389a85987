//! The keyserver's API: end-to-end encryption keys of local devices.

use crate::proto::keyserver as pb;
use crate::proto::keyserver::keys_client::KeysClient as PbClient;
use crate::proto::keyserver::keys_server::KeysServer;

crate::grpc::service_api! {
    /// Device identity keys, one-time keys and fallback keys (owned by keyserver).
    api "keys";
    trait KeysApi;
    client KeysClient = PbClient;
    adapter KeysGrpc: pb::keys_server::Keys, KeysServer;
    {
        /// Stores a device's keys; answers with its one-time key counts.
        fn upload(pb::UploadRequest) -> pb::KeyCounts;
        fn query(pb::QueryRequest) -> pb::QueryResponse;
        /// Takes one one-time key (else the fallback key) per device and algorithm.
        fn claim(pb::ClaimRequest) -> pb::ClaimResponse, once;
        /// A device's one-time key counts and unused fallback algorithms.
        fn counts(pb::CountsRequest) -> pb::KeyCounts;
        /// Removes logged-out devices' keys, announcing each change.
        fn delete_devices(pb::DeleteDevicesRequest) -> pb::DeleteDevicesResponse;
        /// Announces a renamed device (one with identity keys).
        fn device_changed(pb::DeviceChangedRequest) -> pb::DeviceChangedResponse;
        /// Creates a key backup version.
        fn create_backup_version(pb::CreateBackupVersionRequest) -> pb::BackupVersion, once;
        /// A key backup version (the latest when none is named).
        fn get_backup_version(pb::GetBackupVersionRequest) -> pb::BackupVersion;
        /// Changes a key backup version's auth data.
        fn update_backup_version(pb::UpdateBackupVersionRequest) -> crate::proto::common::Empty;
        /// Deletes a key backup version and its keys.
        fn delete_backup_version(pb::BackupVersionRef) -> crate::proto::common::Empty;
        /// Stores room keys in the current backup version.
        fn put_backup_keys(pb::PutBackupKeysRequest) -> pb::BackupKeysResult;
        /// Room keys of a backup version.
        fn get_backup_keys(pb::BackupKeysRef) -> pb::GetBackupKeysResponse;
        /// Deletes room keys of a backup version.
        fn delete_backup_keys(pb::BackupKeysRef) -> pb::BackupKeysResult;
        /// A user's devices and device list stream ID.
        fn user_devices(pb::UserDevicesRequest) -> pb::UserDevicesResponse;
        /// Stores cross-signing keys (replacing needs reauthentication).
        fn upload_signing_keys(pb::UploadSigningKeysRequest) -> pb::UploadSigningKeysResponse;
        /// Stores cross-signing signatures; answers the refused ones.
        fn upload_signatures(pb::UploadSignaturesRequest) -> pb::UploadSignaturesResponse;
    }
}

/// What callers hold: the service itself (monolith) or a [`KeysClient`].
pub type KeysHandle = std::sync::Arc<dyn KeysApi>;

/// Adds `signer`'s signature with `key_id` to a signed JSON object's
/// `signatures` (a key or device keys object), beside those it has.
pub fn add_signature(
    object: &mut serde_json::Value,
    signer: &str,
    key_id: &str,
    signature: serde_json::Value,
) {
    if !object["signatures"].is_object() {
        object["signatures"] = serde_json::json!({});
    }
    if !object["signatures"][signer].is_object() {
        object["signatures"][signer] = serde_json::json!({});
    }
    object["signatures"][signer][key_id] = signature;
}

/// A room key in a server-side backup (`KeyBackupData`): what the server
/// compares keys by, and the encrypted `session_data` it keeps as given.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct KeyBackupData {
    pub first_message_index: u64,
    pub forwarded_count: u64,
    pub is_verified: bool,
    pub session_data: serde_json::Map<String, serde_json::Value>,
}

impl KeyBackupData {
    /// Parses a key as a client sent it; why not, when it is not one.
    pub fn parse(json: &[u8]) -> Result<KeyBackupData, String> {
        serde_json::from_slice(json).map_err(|e| e.to_string())
    }
}
