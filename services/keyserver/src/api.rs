//! The `KeysApi` implementation: what clientapi and the syncapi ask of keys.

use async_trait::async_trait;
use ganglion_api::ApiError;
use ganglion_api::keys::KeysApi;
use ganglion_api::proto::keyserver as pb;
use serde_json::{Map, Value, json};

use crate::KeyServer;
use crate::cross_signing::{MASTER, SELF_SIGNING, USER_SIGNING};
use crate::storage::keys::{UploadError, UploadedKey};

/// The most one-time or fallback keys one upload may carry.
const MAX_KEYS_PER_UPLOAD: usize = 1_000;

/// Reads a `one_time_keys` / `fallback_keys` object: key IDs are
/// `algorithm:id`, values the key objects (or, for old clients, strings).
fn keys_of(json: &[u8], what: &str) -> Result<Vec<UploadedKey>, ApiError> {
    if json.is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_slice(json)
        .map_err(|_| ApiError::InvalidInput(format!("{what} is not JSON")))?;
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::InvalidInput(format!("{what} must be an object")))?;
    if object.len() > MAX_KEYS_PER_UPLOAD {
        return Err(ApiError::TooLarge(format!("too many {what}")));
    }
    object
        .iter()
        .map(|(key_id, key)| {
            let (algorithm, id) = key_id.split_once(':').unwrap_or_default();
            if algorithm.is_empty() || id.is_empty() || !(key.is_object() || key.is_string()) {
                return Err(ApiError::InvalidInput(format!(
                    "{what}: invalid key {key_id}"
                )));
            }
            Ok((key_id.clone(), algorithm.to_owned(), key.to_string()))
        })
        .collect()
}

/// Checks `device_keys`: an object naming this very device, with keys and
/// algorithms.
fn device_keys_of(json: &[u8], user_id: &str, device_id: &str) -> Result<String, ApiError> {
    let value: Value = serde_json::from_slice(json)
        .map_err(|_| ApiError::InvalidInput("device_keys is not JSON".into()))?;
    if value["user_id"] != user_id || value["device_id"] != device_id {
        return Err(ApiError::InvalidInput(
            "device_keys must name the uploading user and device".into(),
        ));
    }
    if !value["keys"].is_object() || !value["algorithms"].is_array() {
        return Err(ApiError::InvalidInput(
            "device_keys needs keys and algorithms".into(),
        ));
    }
    Ok(value.to_string())
}

impl KeyServer {
    async fn key_counts(&self, user_id: &str, device_id: &str) -> Result<pb::KeyCounts, ApiError> {
        let (counts, unused) = self.storage.counts(user_id, device_id).await?;
        Ok(pb::KeyCounts {
            one_time_key_counts: counts.into_iter().collect(),
            unused_fallback_algorithms: unused,
        })
    }
}

#[async_trait]
impl KeysApi for KeyServer {
    async fn upload(&self, request: pb::UploadRequest) -> Result<pb::KeyCounts, ApiError> {
        let device_keys = request
            .device_keys_json
            .as_deref()
            .map(|json| device_keys_of(json, &request.user_id, &request.device_id))
            .transpose()?;
        let one_time = keys_of(&request.one_time_keys_json, "one_time_keys")?;
        let fallback = keys_of(&request.fallback_keys_json, "fallback_keys")?;
        let change = self
            .storage
            .upload(
                (&request.user_id, &request.device_id),
                device_keys.as_deref(),
                &one_time,
                &fallback,
            )
            .await
            .map_err(|e| match e {
                UploadError::Conflict(_) => ApiError::InvalidInput(e.to_string()),
                UploadError::Storage(e) => e.into(),
            })?;
        // Stored with its outbox row: should publishing fail now, the
        // change goes out when the keyserver next starts.
        if let Some(change) = change {
            self.publish(&[change]).await?;
        }
        self.key_counts(&request.user_id, &request.device_id).await
    }

    async fn query(&self, request: pb::QueryRequest) -> Result<pb::QueryResponse, ApiError> {
        let viewer = (!request.requester.is_empty()).then_some(request.requester.as_str());
        let mut response = pb::QueryResponse::default();
        for (user_id, devices) in request.users {
            let seen = self
                .keys_seen_by(&user_id, Some(&devices.device_ids), true, viewer)
                .await?;
            for (usage, key) in seen.signing {
                let into = match usage.as_str() {
                    MASTER => &mut response.master_keys,
                    SELF_SIGNING => &mut response.self_signing_keys,
                    USER_SIGNING if viewer == Some(user_id.as_str()) => {
                        &mut response.user_signing_keys
                    }
                    _ => continue,
                };
                into.insert(user_id.clone(), key.to_string().into_bytes());
            }
            response.device_keys.insert(
                user_id,
                pb::DeviceKeysJson {
                    devices: seen
                        .devices
                        .into_iter()
                        .map(|(device, json)| (device, json.into_bytes()))
                        .collect(),
                },
            );
        }
        // The viewer's signatures of other servers' users' master keys,
        // all read at once.
        if let Some(viewer) = viewer
            && !request.remote_users.is_empty()
        {
            let mut by_user: std::collections::HashMap<String, Map<String, Value>> =
                std::collections::HashMap::new();
            for one in self.storage.signatures_by(viewer).await? {
                if !request.remote_users.contains(&one.target_user_id) {
                    continue;
                }
                by_user
                    .entry(one.target_user_id)
                    .or_default()
                    .entry(one.target_key_id)
                    .or_insert_with(|| json!({}))[one.signer_key_id.as_str()] =
                    json!(one.signature);
            }
            for (user_id, by_key) in by_user {
                response
                    .remote_master_signatures
                    .insert(user_id, Value::Object(by_key).to_string().into_bytes());
            }
        }
        Ok(response)
    }

    async fn claim(&self, request: pb::ClaimRequest) -> Result<pb::ClaimResponse, ApiError> {
        let mut response = pb::ClaimResponse::default();
        for one in request.claims {
            if let Some((key_id, json)) = self
                .storage
                .claim(&one.user_id, &one.device_id, &one.algorithm)
                .await?
            {
                response.keys.push(pb::ClaimedKey {
                    user_id: one.user_id,
                    device_id: one.device_id,
                    key_id,
                    key_json: json.into_bytes(),
                });
            }
        }
        Ok(response)
    }

    async fn counts(&self, request: pb::CountsRequest) -> Result<pb::KeyCounts, ApiError> {
        self.key_counts(&request.user_id, &request.device_id).await
    }

    async fn delete_devices(
        &self,
        request: pb::DeleteDevicesRequest,
    ) -> Result<pb::DeleteDevicesResponse, ApiError> {
        let devices = (!request.all_devices).then_some(request.device_ids.as_slice());
        let changes = self
            .storage
            .delete_devices(&request.user_id, devices)
            .await?;
        self.publish(&changes).await?;
        Ok(pb::DeleteDevicesResponse {
            devices_removed: changes.len() as u32,
        })
    }

    async fn device_changed(
        &self,
        request: pb::DeviceChangedRequest,
    ) -> Result<pb::DeviceChangedResponse, ApiError> {
        let change = self
            .storage
            .device_changed(&request.user_id, &request.device_id)
            .await?;
        let announced = change.is_some();
        if let Some(change) = change {
            self.publish(&[change]).await?;
        }
        Ok(pb::DeviceChangedResponse { announced })
    }

    async fn user_devices(
        &self,
        request: pb::UserDevicesRequest,
    ) -> Result<pb::UserDevicesResponse, ApiError> {
        let stream_id = self.storage.device_list_stream(&request.user_id).await?;
        let seen = self
            .keys_seen_by(&request.user_id, Some(&[]), true, None)
            .await?;
        let devices = seen
            .devices
            .into_iter()
            .map(|(device, json)| (device, json.into_bytes()))
            .collect();
        let signing = seen.signing;
        let json_of = |usage: &str| {
            signing
                .get(usage)
                .map(|key| key.to_string().into_bytes())
                .unwrap_or_default()
        };
        Ok(pb::UserDevicesResponse {
            stream_id,
            devices,
            master_key_json: json_of(MASTER),
            self_signing_key_json: json_of(SELF_SIGNING),
        })
    }

    async fn upload_signing_keys(
        &self,
        request: pb::UploadSigningKeysRequest,
    ) -> Result<pb::UploadSigningKeysResponse, ApiError> {
        self.upload_signing_keys_of(request).await
    }

    async fn upload_signatures(
        &self,
        request: pb::UploadSignaturesRequest,
    ) -> Result<pb::UploadSignaturesResponse, ApiError> {
        self.upload_signatures_of(request).await
    }

    async fn create_backup_version(
        &self,
        request: pb::CreateBackupVersionRequest,
    ) -> Result<pb::BackupVersion, ApiError> {
        crate::backups::check_version_body(&request.algorithm, &request.auth_data_json)?;
        let auth_data = String::from_utf8_lossy(&request.auth_data_json);
        let version = self
            .storage
            .create_backup_version(&request.user_id, &request.algorithm, &auth_data)
            .await?;
        Ok(pb::BackupVersion {
            version: version.to_string(),
            algorithm: request.algorithm,
            auth_data_json: request.auth_data_json,
            count: 0,
            etag: "0".into(),
        })
    }

    async fn get_backup_version(
        &self,
        request: pb::GetBackupVersionRequest,
    ) -> Result<pb::BackupVersion, ApiError> {
        let version = match request.version.as_deref() {
            Some(text) => Some(crate::backups::version_number(text)?),
            None => None,
        };
        let found = self
            .storage
            .backup_version(&request.user_id, version)
            .await?
            .ok_or_else(|| ApiError::NotFound("Unknown backup version".into()))?;
        Ok(crate::backups::version_pb(found))
    }

    async fn update_backup_version(
        &self,
        request: pb::UpdateBackupVersionRequest,
    ) -> Result<ganglion_api::proto::common::Empty, ApiError> {
        crate::backups::check_version_body(&request.algorithm, &request.auth_data_json)?;
        let version = crate::backups::version_number(&request.version)?;
        let current = self
            .storage
            .backup_version(&request.user_id, Some(version))
            .await?
            .ok_or_else(|| ApiError::NotFound("Unknown backup version".into()))?;
        if current.algorithm != request.algorithm {
            return Err(ApiError::InvalidInput("Algorithm does not match".into()));
        }
        let auth_data = String::from_utf8_lossy(&request.auth_data_json);
        if !self
            .storage
            .update_backup_version(&request.user_id, version, &auth_data)
            .await?
        {
            return Err(ApiError::NotFound("Unknown backup version".into()));
        }
        Ok(Default::default())
    }

    async fn delete_backup_version(
        &self,
        request: pb::BackupVersionRef,
    ) -> Result<ganglion_api::proto::common::Empty, ApiError> {
        let version = crate::backups::version_number(&request.version)?;
        self.storage
            .delete_backup_version(&request.user_id, version)
            .await?
            .ok_or_else(|| ApiError::NotFound("Unknown backup version".into()))?;
        Ok(Default::default())
    }

    async fn put_backup_keys(
        &self,
        request: pb::PutBackupKeysRequest,
    ) -> Result<pb::BackupKeysResult, ApiError> {
        let version = crate::backups::version_number(&request.version)?;
        let keys = request
            .keys
            .iter()
            .map(crate::backups::room_key)
            .collect::<Result<Vec<_>, _>>()?;
        use crate::storage::backups::Stored;
        match self
            .storage
            .put_backup_keys(&request.user_id, version, &keys)
            .await?
        {
            Stored::Done { count, etag } => Ok(pb::BackupKeysResult {
                count,
                etag: etag.to_string(),
                current_version: None,
            }),
            Stored::NotCurrent(current) => Ok(pb::BackupKeysResult {
                current_version: Some(current.to_string()),
                ..Default::default()
            }),
            Stored::NoBackup => Err(ApiError::NotFound("Unknown backup version".into())),
        }
    }

    async fn get_backup_keys(
        &self,
        request: pb::BackupKeysRef,
    ) -> Result<pb::GetBackupKeysResponse, ApiError> {
        let version = crate::backups::version_number(&request.version)?;
        if self
            .storage
            .backup_version(&request.user_id, Some(version))
            .await?
            .is_none()
        {
            return Err(ApiError::NotFound("Unknown backup version".into()));
        }
        let keys = self
            .storage
            .backup_keys(
                &request.user_id,
                version,
                (request.room_id.as_deref(), request.session_id.as_deref()),
            )
            .await?;
        Ok(pb::GetBackupKeysResponse {
            keys: keys.into_iter().map(crate::backups::key_pb).collect(),
        })
    }

    async fn delete_backup_keys(
        &self,
        request: pb::BackupKeysRef,
    ) -> Result<pb::BackupKeysResult, ApiError> {
        let version = crate::backups::version_number(&request.version)?;
        let (count, etag) = self
            .storage
            .delete_backup_keys(
                &request.user_id,
                version,
                (request.room_id.as_deref(), request.session_id.as_deref()),
            )
            .await?
            .ok_or_else(|| ApiError::NotFound("Unknown backup version".into()))?;
        Ok(pb::BackupKeysResult {
            count,
            etag: etag.to_string(),
            current_version: None,
        })
    }
}
