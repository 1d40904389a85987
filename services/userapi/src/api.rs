//! The `UsersApi` implementation: what clientapi (in-process or over gRPC)
//! asks of accounts and devices.

use async_trait::async_trait;
use ganglion_api::ApiError;
use ganglion_api::proto::userapi as pb;
use ganglion_api::users::UsersApi;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::UserApi;
use crate::internal_events;
use crate::storage::{Pending, ProfileField};

/// Tokens are random; only their SHA-256 is stored, so a database leak does
/// not hand out sessions.
fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

fn new_access_token() -> String {
    format!(
        "gt_{}",
        random_string(
            40,
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        )
    )
}

fn new_device_id() -> String {
    random_string(10, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
}

impl UserApi {
    /// The pushers of the user's devices that are gone go with them.
    async fn drop_pushers_of_gone_devices(&self, user_id: &str) -> Result<(), ApiError> {
        let localpart = self.local_part(user_id)?;
        self.storage
            .delete_pushers_of_gone_devices(user_id, localpart)
            .await?;
        Ok(())
    }

    /// Operator: adds a registration token (16 random letters and digits
    /// when none is given), usable `uses_allowed` times (without limit if
    /// `None`) until `expiry_ms` (for ever if `None`); the token.
    pub async fn create_registration_token(
        &self,
        token: Option<&str>,
        uses_allowed: Option<i64>,
        expiry_ms: Option<i64>,
    ) -> Result<String, ApiError> {
        let token = match token {
            Some(token) => token.to_owned(),
            None => {
                use rand::Rng;
                rand::thread_rng()
                    .sample_iter(rand::distributions::Alphanumeric)
                    .take(16)
                    .map(char::from)
                    .collect()
            }
        };
        ganglion_base::limits::opaque_id("token", &token)
            .map_err(|e| ApiError::InvalidInput(e.error))?;
        match self
            .storage
            .create_registration_token(&token, uses_allowed, expiry_ms)
            .await
        {
            Err(e) if e.is_unique_violation() => Err(ApiError::InvalidInput(format!(
                "token {token} exists already"
            ))),
            other => {
                other?;
                Ok(token)
            }
        }
    }

    /// Operator: every registration token (token, uses allowed, used,
    /// expiry in ms since the epoch).
    #[allow(clippy::type_complexity)]
    pub async fn registration_tokens(
        &self,
    ) -> Result<Vec<(String, Option<i64>, i64, Option<i64>)>, ApiError> {
        Ok(self.storage.registration_tokens().await?)
    }

    /// Operator: removes a registration token; whether it existed.
    pub async fn delete_registration_token(&self, token: &str) -> Result<bool, ApiError> {
        Ok(self.storage.delete_registration_token(token).await?)
    }

    pub(crate) fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name)
    }

    async fn open_session(
        &self,
        localpart: &str,
        (device_id, display_name): (Option<String>, Option<String>),
        refreshable: bool,
    ) -> Result<pb::Session, ApiError> {
        let device_id = device_id
            .filter(|d| !d.is_empty())
            .unwrap_or_else(new_device_id);
        let access_token = new_access_token();
        let now = ganglion_base::clock::now_ms();
        let refresh_token = refreshable.then(new_access_token);
        let refresh_hash = refresh_token.as_deref().map(token_hash);
        let expires_ms = now + self.access_token_lifetime_ms;
        self.storage
            .upsert_device(
                localpart,
                &device_id,
                display_name.as_deref(),
                crate::storage::Tokens {
                    access_hash: &token_hash(&access_token),
                    refresh: refresh_hash.as_deref().map(|hash| (hash, expires_ms)),
                },
                now,
            )
            .await?;
        Ok(pb::Session {
            user_id: self.user_id(localpart),
            device_id,
            access_token,
            expires_in_ms: if refreshable {
                self.access_token_lifetime_ms
            } else {
                0
            },
            refresh_token: refresh_token.unwrap_or_default(),
        })
    }

    /// An account that exists and may log in.
    async fn active_account(&self, localpart: &str) -> Result<(), ApiError> {
        match self.storage.account(localpart).await? {
            Some(account) if account.deactivated => Err(ApiError::UserDeactivated),
            Some(_) => Ok(()),
            None => Err(ApiError::NotFound("no such user".into())),
        }
    }

    /// Forbidden unless `password` is the account's. An unknown account
    /// costs the time a wrong password does, so accounts cannot be probed.
    async fn verify_password(&self, localpart: &str, password: String) -> Result<(), ApiError> {
        let wrong = || ApiError::Forbidden("Invalid username or password".into());
        let Some(account) = self.storage.account(localpart).await? else {
            let _ = self.passwords.hash(password).await;
            return Err(wrong());
        };
        if account.deactivated {
            return Err(ApiError::UserDeactivated);
        }
        let Some(hash) = account.password_hash else {
            return Err(wrong());
        };
        if !self.passwords.verify(password, hash).await? {
            return Err(wrong());
        }
        Ok(())
    }
}

#[async_trait]
impl UsersApi for UserApi {
    async fn register(&self, request: pb::RegisterRequest) -> Result<pb::Session, ApiError> {
        if !ganglion_api::users::valid_localpart(&request.localpart) {
            return Err(ApiError::InvalidInput("invalid username".into()));
        }
        let password_hash = if !request.password.is_empty() {
            Some(self.passwords.hash(request.password).await?)
        } else {
            // A hash HashPassword made (argon2 in PHC form), or none.
            match request.password_hash {
                Some(hash) if hash.starts_with("$argon2") && hash.len() < 512 => Some(hash),
                Some(_) => return Err(ApiError::InvalidInput("not a password hash".into())),
                None => None,
            }
        };
        if request.upgrade_guest {
            let Some(hash) = password_hash.as_deref() else {
                return Err(ApiError::InvalidInput("a password is required".into()));
            };
            self.storage
                .upgrade_guest(
                    &request.localpart,
                    hash,
                    ruma::MilliSecondsSinceUnixEpoch::now().get().into(),
                    request.registration_token.as_deref(),
                )
                .await?;
            tracing::info!(localpart = %request.localpart, "guest account upgraded");
            return self
                .open_session(
                    &request.localpart,
                    (request.device_id, request.initial_device_display_name),
                    request.refresh_token,
                )
                .await;
        }
        match self
            .storage
            .insert_account(
                &request.localpart,
                password_hash.as_deref(),
                (request.admin, request.guest),
                ruma::MilliSecondsSinceUnixEpoch::now().get().into(),
                request.registration_token.as_deref(),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_unique_violation() => return Err(ApiError::UserInUse),
            Err(e) => return Err(e.into()),
        }
        internal_events::ACCOUNTS_CREATED.inc();
        tracing::info!(localpart = %request.localpart, "registered account");
        if request.inhibit_login {
            return Ok(pb::Session {
                user_id: self.user_id(&request.localpart),
                ..Default::default()
            });
        }
        self.open_session(
            &request.localpart,
            (request.device_id, request.initial_device_display_name),
            request.refresh_token,
        )
        .await
    }

    async fn registration_token_valid(
        &self,
        request: pb::RegistrationTokenRequest,
    ) -> Result<pb::RegistrationTokenValidity, ApiError> {
        let valid = ganglion_base::limits::opaque_id("token", &request.token).is_ok()
            && self
                .storage
                .registration_token_valid(
                    &request.token,
                    ruma::MilliSecondsSinceUnixEpoch::now().get().into(),
                )
                .await?;
        Ok(pb::RegistrationTokenValidity { valid })
    }

    async fn localpart_available(
        &self,
        request: pb::LocalpartAvailableRequest,
    ) -> Result<pb::LocalpartAvailableResponse, ApiError> {
        if !ganglion_api::users::valid_localpart(&request.localpart) {
            return Err(ApiError::InvalidInput("invalid username".into()));
        }
        let available = self.storage.account(&request.localpart).await?.is_none();
        Ok(pb::LocalpartAvailableResponse { available })
    }

    async fn login_with_password(
        &self,
        request: pb::LoginRequest,
    ) -> Result<pb::Session, ApiError> {
        self.verify_password(&request.localpart, request.password)
            .await?;
        internal_events::LOGINS.inc();
        self.open_session(
            &request.localpart,
            (request.device_id, request.initial_device_display_name),
            request.refresh_token,
        )
        .await
    }

    async fn login_with_token(
        &self,
        request: pb::LoginWithTokenRequest,
    ) -> Result<pb::Session, ApiError> {
        let refused = || ApiError::Forbidden("Invalid or expired login token".into());
        if request.token.is_empty() || request.token.len() > 255 {
            return Err(refused());
        }
        let localpart = self
            .storage
            .take_login_token(&token_hash(&request.token), ganglion_base::clock::now_ms())
            .await?
            .ok_or_else(refused)?;
        self.active_account(&localpart).await?;
        internal_events::LOGINS.inc();
        self.open_session(
            &localpart,
            (request.device_id, request.initial_device_display_name),
            request.refresh_token,
        )
        .await
    }

    async fn create_login_token(
        &self,
        request: pb::CreateLoginTokenRequest,
    ) -> Result<pb::LoginToken, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        self.active_account(localpart).await?;
        let lifetime = request.lifetime_ms.clamp(1, 3_600_000);
        let token = new_access_token();
        let now = ganglion_base::clock::now_ms();
        self.storage
            .add_login_token(&token_hash(&token), localpart, (now, now + lifetime))
            .await?;
        Ok(pb::LoginToken {
            token,
            expires_in_ms: lifetime,
        })
    }

    async fn new_session(&self, request: pb::NewSessionRequest) -> Result<pb::Session, ApiError> {
        self.active_account(&request.localpart).await?;
        self.open_session(
            &request.localpart,
            (request.device_id, request.initial_device_display_name),
            request.refresh_token,
        )
        .await
    }

    async fn refresh(&self, request: pb::RefreshRequest) -> Result<pb::Session, ApiError> {
        if request.refresh_token.is_empty() {
            return Err(ApiError::UnknownToken);
        }
        let access_token = new_access_token();
        let refresh_token = new_access_token();
        let expires = ganglion_base::clock::now_ms() + self.access_token_lifetime_ms;
        let (localpart, device_id) = self
            .storage
            .refresh(
                &token_hash(&request.refresh_token),
                &token_hash(&access_token),
                (&token_hash(&refresh_token), expires),
            )
            .await?
            .ok_or(ApiError::UnknownToken)?;
        Ok(pb::Session {
            user_id: self.user_id(&localpart),
            device_id,
            access_token,
            refresh_token,
            expires_in_ms: self.access_token_lifetime_ms,
        })
    }

    async fn hash_password(
        &self,
        request: pb::HashPasswordRequest,
    ) -> Result<pb::HashPasswordResponse, ApiError> {
        if request.password.is_empty() {
            return Err(ApiError::InvalidInput("a password is required".into()));
        }
        Ok(pb::HashPasswordResponse {
            hash: self.passwords.hash(request.password).await?,
        })
    }

    async fn check_password(
        &self,
        request: pb::CheckPasswordRequest,
    ) -> Result<pb::CheckPasswordResponse, ApiError> {
        self.verify_password(&request.localpart, request.password)
            .await?;
        Ok(pb::CheckPasswordResponse {})
    }

    async fn authenticate(&self, request: pb::AuthenticateRequest) -> Result<pb::Device, ApiError> {
        let hash = token_hash(&request.access_token);
        let device = self
            .storage
            .device_by_token(&hash)
            .await?
            .ok_or(ApiError::UnknownToken)?;
        if device
            .access_expires_ms
            .is_some_and(|expires| expires <= ganglion_base::clock::now_ms())
        {
            return Err(ApiError::TokenExpired);
        }
        if device.previous_refresh {
            self.storage.forget_previous_refresh(&hash).await?;
        }
        if let Ok(peer) = request.peer_ip.parse::<std::net::IpAddr>() {
            let forwarded = Some(request.forwarded_for.as_str()).filter(|f| !f.is_empty());
            let ip = ganglion_base::http::client_address(peer, forwarded, &self.trusted_proxies);
            self.last_seen.note(
                &device.localpart,
                &device.device_id,
                crate::last_seen::Seen {
                    ip: ip.to_string(),
                    user_agent: Some(request.user_agent).filter(|ua| !ua.is_empty()),
                    ts: ganglion_base::clock::now_ms(),
                },
            );
        }
        Ok(pb::Device {
            user_id: self.user_id(&device.localpart),
            device_id: device.device_id,
            is_admin: device.is_admin,
            is_guest: device.is_guest,
        })
    }

    async fn logout(&self, request: pb::LogoutRequest) -> Result<pb::LogoutResponse, ApiError> {
        let (localpart, device_id) = self
            .storage
            .delete_device_by_token(&token_hash(&request.access_token))
            .await?
            .ok_or(ApiError::UnknownToken)?;
        let user_id = self.user_id(&localpart);
        self.drop_pushers_of_gone_devices(&user_id).await?;
        Ok(pb::LogoutResponse {
            devices_removed: 1,
            user_id,
            device_id,
        })
    }

    async fn logout_all(
        &self,
        request: pb::LogoutAllRequest,
    ) -> Result<pb::LogoutResponse, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        let removed = self.storage.delete_all_devices(localpart).await?;
        self.drop_pushers_of_gone_devices(&request.user_id).await?;
        Ok(pb::LogoutResponse {
            devices_removed: removed as u32,
            user_id: request.user_id,
            ..Default::default()
        })
    }

    async fn query_guests(
        &self,
        request: pb::QueryGuestsRequest,
    ) -> Result<pb::QueryGuestsResponse, ApiError> {
        let ours: Vec<(&str, &str)> = request
            .user_ids
            .iter()
            .take(10_000)
            .filter_map(|u| Some((u.as_str(), self.local_part(u).ok()?)))
            .collect();
        let localparts: Vec<&str> = ours.iter().map(|(_, l)| *l).collect();
        let guests = self.storage.guests_among(&localparts).await?;
        Ok(pb::QueryGuestsResponse {
            guests: ours
                .into_iter()
                .filter(|(_, l)| guests.iter().any(|g| g == l))
                .map(|(u, _)| u.to_owned())
                .collect(),
        })
    }

    async fn list_devices(
        &self,
        request: pb::ListDevicesRequest,
    ) -> Result<pb::ListDevicesResponse, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        Ok(pb::ListDevicesResponse {
            device_ids: self.storage.device_ids(localpart).await?,
        })
    }

    async fn get_devices(
        &self,
        request: pb::GetDevicesRequest,
    ) -> Result<pb::GetDevicesResponse, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        let only = Some(request.device_id.as_str()).filter(|d| !d.is_empty());
        let devices = self.storage.devices(localpart, only).await?;
        Ok(pb::GetDevicesResponse {
            devices: devices
                .into_iter()
                .map(|device| {
                    // A sighting not written yet is the latest.
                    let seen = self
                        .last_seen
                        .pending(localpart, &device.device_id)
                        .or(device.last_seen);
                    pb::DeviceInfo {
                        device_id: device.device_id,
                        display_name: device.display_name,
                        last_seen_ip: seen.as_ref().map(|s| s.ip.clone()),
                        last_seen_ts: seen.as_ref().map(|s| s.ts),
                        last_seen_user_agent: seen.and_then(|s| s.user_agent),
                    }
                })
                .collect(),
        })
    }

    async fn rename_device(
        &self,
        request: pb::RenameDeviceRequest,
    ) -> Result<pb::RenameDeviceResponse, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        if !self
            .storage
            .rename_device(
                localpart,
                &request.device_id,
                request.display_name.as_deref(),
            )
            .await?
        {
            return Err(ApiError::NotFound("no such device".into()));
        }
        Ok(pb::RenameDeviceResponse {})
    }

    async fn delete_devices(
        &self,
        request: pb::DeleteDevicesRequest,
    ) -> Result<pb::DeleteDevicesResponse, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        let deleted = self
            .storage
            .delete_devices(localpart, &request.device_ids)
            .await?;
        self.drop_pushers_of_gone_devices(&request.user_id).await?;
        Ok(pb::DeleteDevicesResponse { deleted })
    }

    async fn put_dehydrated_device(
        &self,
        request: pb::PutDehydratedDeviceRequest,
    ) -> Result<pb::DehydratedDevice, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        let data = std::str::from_utf8(&request.device_data_json)
            .ok()
            .filter(|data| {
                serde_json::from_str::<serde_json::Value>(data).is_ok_and(|v| v.is_object())
            })
            .ok_or_else(|| ApiError::InvalidInput("device_data must be a JSON object".into()))?;
        // Nobody holds a token for a dehydrated device: a random one's hash.
        let unusable = token_hash(&new_access_token());
        let replaced = self
            .storage
            .put_dehydrated_device(
                localpart,
                (&request.device_id, request.display_name.as_deref()),
                data,
                &unusable,
                ganglion_base::clock::now_ms(),
            )
            .await?
            .ok_or_else(|| {
                ApiError::InvalidInput("device_id names one of the user's devices".into())
            })?;
        self.drop_pushers_of_gone_devices(&request.user_id).await?;
        Ok(pb::DehydratedDevice {
            device_id: request.device_id,
            device_data_json: request.device_data_json,
            replaced_device_id: replaced.unwrap_or_default(),
        })
    }

    async fn get_dehydrated_device(
        &self,
        request: pb::GetDehydratedDeviceRequest,
    ) -> Result<pb::DehydratedDevice, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        let (device_id, data) = self
            .storage
            .dehydrated_device(localpart)
            .await?
            .ok_or_else(|| ApiError::NotFound("no dehydrated device".into()))?;
        Ok(pb::DehydratedDevice {
            device_id,
            device_data_json: data.into_bytes(),
            replaced_device_id: String::new(),
        })
    }

    async fn delete_dehydrated_device(
        &self,
        request: pb::GetDehydratedDeviceRequest,
    ) -> Result<pb::DehydratedDevice, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        let (device_id, _) = self
            .storage
            .dehydrated_device(localpart)
            .await?
            .ok_or_else(|| ApiError::NotFound("no dehydrated device".into()))?;
        self.storage
            .delete_devices(localpart, std::slice::from_ref(&device_id))
            .await?;
        Ok(pb::DehydratedDevice {
            device_id,
            device_data_json: Vec::new(),
            replaced_device_id: String::new(),
        })
    }

    async fn set_password(
        &self,
        request: pb::SetPasswordRequest,
    ) -> Result<pb::SetPasswordResponse, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        if request.new_password.is_empty() {
            return Err(ApiError::InvalidInput("a password is required".into()));
        }
        let hash = self.passwords.hash(request.new_password).await?;
        let logged_out = self
            .storage
            .set_password(
                localpart,
                &hash,
                request
                    .logout_devices
                    .then_some(request.keep_device_id.as_str()),
            )
            .await?
            .ok_or_else(|| ApiError::NotFound("no such user".into()))?;
        self.drop_pushers_of_gone_devices(&request.user_id).await?;
        Ok(pb::SetPasswordResponse { logged_out })
    }

    async fn deactivate(
        &self,
        request: pb::DeactivateRequest,
    ) -> Result<pb::DeactivateResponse, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        let logged_out = self
            .storage
            .deactivate(localpart, request.erase)
            .await?
            .ok_or_else(|| ApiError::NotFound("no such user".into()))?;
        self.drop_pushers_of_gone_devices(&request.user_id).await?;
        Ok(pb::DeactivateResponse { logged_out })
    }

    async fn get_profile(&self, request: pb::GetProfileRequest) -> Result<pb::Profile, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        let (displayname, avatar_url) = self
            .storage
            .profile(localpart)
            .await?
            .ok_or_else(|| ApiError::NotFound("no such user".into()))?;
        Ok(pb::Profile {
            displayname,
            avatar_url,
        })
    }

    async fn set_profile_field(
        &self,
        request: pb::SetProfileFieldRequest,
    ) -> Result<pb::Profile, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        // Synapse's limits.
        let (field, max_len) = match request.field.as_str() {
            "displayname" => (ProfileField::Displayname, 256),
            "avatar_url" => (ProfileField::AvatarUrl, 1000),
            other => {
                return Err(ApiError::InvalidInput(format!(
                    "{other:?} is not a profile field here"
                )));
            }
        };
        let value = request.value.filter(|v| !v.is_empty());
        if value.as_ref().is_some_and(|v| v.chars().count() > max_len) {
            return Err(ApiError::InvalidInput(format!(
                "{} is longer than {max_len} characters",
                request.field
            )));
        }
        if !self
            .storage
            .set_profile_field(localpart, field, value.as_deref())
            .await?
        {
            return Err(ApiError::NotFound("no such user".into()));
        }
        self.get_profile(pb::GetProfileRequest {
            user_id: request.user_id,
        })
        .await
    }

    async fn set_account_data(
        &self,
        request: pb::SetAccountDataRequest,
    ) -> Result<pb::AccountDataWritten, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        if request.data_type.is_empty() || request.data_type.len() > 255 {
            return Err(ApiError::InvalidInput("invalid account data type".into()));
        }
        let content = object_json(&request.content_json)?;
        let id = self
            .storage
            .set_account_data(localpart, &request.room_id, &request.data_type, &content)
            .await?;
        let position = self
            .publish(&Pending {
                id,
                localpart: localpart.to_owned(),
                room_id: request.room_id,
                data_type: request.data_type,
            })
            .await?;
        Ok(pb::AccountDataWritten { position })
    }

    async fn get_account_data(
        &self,
        request: pb::GetAccountDataRequest,
    ) -> Result<pb::GetAccountDataResponse, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        let content = self
            .storage
            .account_data(localpart, &request.room_id, &request.data_type)
            .await?;
        Ok(pb::GetAccountDataResponse {
            content_json: content.map(String::into_bytes),
        })
    }

    async fn update_tag(
        &self,
        request: pb::UpdateTagRequest,
    ) -> Result<pb::AccountDataWritten, ApiError> {
        let localpart = self.local_part(&request.user_id)?;
        if request.room_id.is_empty() || request.tag.is_empty() || request.tag.len() > 255 {
            return Err(ApiError::InvalidInput("invalid room or tag".into()));
        }
        let content = match &request.content_json {
            Some(json) => Some(
                serde_json::from_str::<serde_json::Value>(&object_json(json)?)
                    .map_err(|e| ApiError::InvalidInput(e.to_string()))?,
            ),
            None => None,
        };
        let tag = request.tag;
        let position = self
            .modify_account_data(localpart, (&request.room_id, "m.tag"), |current| {
                let mut tags: serde_json::Map<String, serde_json::Value> = current
                    .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
                    .and_then(|v| {
                        v.get("tags")
                            .and_then(serde_json::Value::as_object)
                            .cloned()
                    })
                    .unwrap_or_default();
                match content {
                    Some(content) => tags.insert(tag, content),
                    None => tags.remove(&tag),
                };
                Ok(serde_json::json!({ "tags": tags }).to_string())
            })
            .await?;
        Ok(pb::AccountDataWritten { position })
    }

    async fn update_push_rule(
        &self,
        request: pb::UpdatePushRuleRequest,
    ) -> Result<pb::AccountDataWritten, ApiError> {
        use ganglion_base::push_rules::{self, Change, ChangeError};
        use pb::update_push_rule_request::Change as Wire;
        let localpart = self.local_part(&request.user_id)?;
        let user_id = ruma::UserId::parse(&request.user_id)
            .map_err(|_| ApiError::InvalidInput("invalid user ID".into()))?;
        let json = |bytes: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(bytes)
                .map_err(|e| ApiError::InvalidInput(format!("invalid JSON: {e}")))
        };
        let change = match request.change {
            Some(Wire::Put(put)) => Change::Put {
                body: json(&put.rule_json)?,
                before: put.before,
                after: put.after,
            },
            Some(Wire::Delete(_)) => Change::Delete,
            Some(Wire::Enabled(enabled)) => Change::Enabled(enabled),
            Some(Wire::ActionsJson(actions)) => Change::Actions(json(&actions)?),
            None => return Err(ApiError::MissingParam("no change".into())),
        };
        let refused = |error: ChangeError| match error {
            ChangeError::NotFound(m) => ApiError::NotFound(m),
            ChangeError::Invalid(m) => ApiError::InvalidInput(m),
        };
        push_rules::check(&request.kind, &request.rule_id, &change).map_err(refused)?;
        let position = self
            .modify_account_data(localpart, ("", push_rules::ACCOUNT_DATA_TYPE), |current| {
                let mut rules = push_rules::effective(&user_id, current.as_deref());
                push_rules::apply(&mut rules, &request.kind, &request.rule_id, &change)
                    .map_err(refused)?;
                Ok(push_rules::content(&rules).to_string())
            })
            .await?;
        Ok(pb::AccountDataWritten { position })
    }

    async fn get_pushers(
        &self,
        request: pb::GetPushersRequest,
    ) -> Result<pb::GetPushersResponse, ApiError> {
        self.local_part(&request.user_id)?;
        let pushers = self.storage.pushers_of(&request.user_id).await?;
        Ok(pb::GetPushersResponse {
            pushers: pushers
                .into_iter()
                .map(|p| pb::PusherInfo {
                    app_id: p.app_id,
                    pushkey: p.pushkey,
                    kind: p.kind,
                    app_display_name: p.app_display_name,
                    device_display_name: p.device_display_name,
                    profile_tag: p.profile_tag,
                    lang: p.lang,
                    data_json: p.data.into_bytes(),
                })
                .collect(),
        })
    }

    async fn set_pusher(
        &self,
        request: pb::SetPusherRequest,
    ) -> Result<ganglion_api::proto::common::Empty, ApiError> {
        self.local_part(&request.user_id)?;
        let info = request
            .pusher
            .ok_or_else(|| ApiError::MissingParam("pusher".into()))?;
        if request.remove {
            self.storage
                .delete_pusher(&request.user_id, &info.app_id, &info.pushkey)
                .await?;
            return Ok(Default::default());
        }
        if let Some(problem) = ganglion_api::users::pusher_problem(&info) {
            return Err(ApiError::InvalidInput(problem));
        }
        let pusher = crate::storage::Pusher {
            id: 0,
            user_id: request.user_id,
            device_id: request.device_id,
            app_id: info.app_id,
            pushkey: info.pushkey,
            kind: info.kind,
            app_display_name: info.app_display_name,
            device_display_name: info.device_display_name,
            profile_tag: info.profile_tag,
            lang: info.lang,
            data: object_json(&info.data_json)?,
            pushkey_ts: ganglion_base::clock::now_ms() / 1000,
        };
        self.storage.set_pusher(&pusher, request.append).await?;
        Ok(Default::default())
    }
}

/// Content must be a JSON object; answers it as compact JSON.
fn object_json(bytes: &[u8]) -> Result<String, ApiError> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(value.to_string()),
        _ => Err(ApiError::InvalidInput(
            "content must be a JSON object".into(),
        )),
    }
}
