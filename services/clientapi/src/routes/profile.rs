//! `GET /profile/{userId}`, `GET` and `PUT /profile/{userId}/{keyName}`:
//! displaynames and avatar URLs. Our users' are the userapi's; other
//! servers' are asked over federation (`/query/profile`). A change is
//! carried into the user's membership in every room they are joined to,
//! as Synapse does, so the other members see it.

use std::sync::Arc;

use axum::extract::{Path, State};
use ganglion_api::proto::roomserver as pb;
use ganglion_api::proto::userapi as user_pb;
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixBody, MatrixResult, Ruma, parse_json, respond, respond_ruma};
use ruma::api::client::profile::{
    get_avatar_url, get_display_name, get_profile, get_profile_field, set_avatar_url,
    set_display_name,
};
use ruma::profile::ProfileFieldValue;
use serde_json::{Map, Value, json};

use super::rooms::template;
use crate::ClientApi;

/// The profile fields this server keeps.
const FIELDS: [&str; 2] = ["displayname", "avatar_url"];

impl ClientApi {
    /// A user's profile as the client API spells it: ours from the
    /// userapi, another server's from that server.
    async fn profile_of(
        &self,
        user_id: &str,
        field: Option<&str>,
    ) -> MatrixResult<Map<String, Value>> {
        let user = ruma::UserId::parse(user_id)
            .map_err(|_| MatrixError::invalid_param("invalid user ID"))?;
        if user.server_name().as_str() != self.server_name {
            let answer = self
                .federation
                .query_profile(ganglion_api::proto::federationapi::QueryProfileRequest {
                    user_id: user_id.to_owned(),
                    field: field.unwrap_or_default().to_owned(),
                })
                .await
                .map_err(MatrixError::from)?;
            let answer: Value = serde_json::from_slice(&answer.body_json).unwrap_or_default();
            let mut profile = Map::new();
            for key in FIELDS {
                if let Some(value) = answer[key].as_str()
                    && field.is_none_or(|f| f == key)
                {
                    profile.insert(key.into(), json!(value));
                }
            }
            return Ok(profile);
        }
        let profile = self
            .users
            .get_profile(user_pb::GetProfileRequest {
                user_id: user_id.to_owned(),
            })
            .await
            .map_err(MatrixError::from)?;
        let mut profile = profile_map(profile);
        if let Some(field) = field {
            profile.retain(|key, _| key == field);
        }
        Ok(profile)
    }

    /// Our user's profile fields, for the content of their join.
    pub(crate) async fn own_profile(&self, user_id: &str) -> Map<String, Value> {
        match self
            .users
            .get_profile(user_pb::GetProfileRequest {
                user_id: user_id.to_owned(),
            })
            .await
        {
            Ok(profile) => profile_map(profile),
            Err(error) => {
                tracing::warn!(user_id, ?error, "no profile for a membership");
                Map::new()
            }
        }
    }
}

fn profile_map(profile: user_pb::Profile) -> Map<String, Value> {
    let mut map = Map::new();
    for (key, value) in [
        ("displayname", profile.displayname),
        ("avatar_url", profile.avatar_url),
    ] {
        if let Some(value) = value {
            map.insert(key.into(), json!(value));
        }
    }
    map
}

pub(crate) async fn get_profile(
    State(api): State<Arc<ClientApi>>,
    Ruma(request): Ruma<get_profile::v3::Request>,
) -> MatrixResult {
    let profile = api.profile_of(request.user_id.as_str(), None).await?;
    respond_ruma(profile.into_iter().collect::<get_profile::v3::Response>())
}

impl ClientApi {
    /// One profile field's value; 404 when it is not set.
    async fn field_value(&self, user_id: &str, field: &str) -> MatrixResult<Value> {
        self.profile_of(user_id, Some(field))
            .await?
            .remove(field)
            .ok_or_else(|| MatrixError::not_found("The profile field is not set"))
    }

    /// Sets (or with `None` clears) one of the user's own profile fields
    /// and carries the change into their rooms.
    async fn set_field(
        &self,
        device: &user_pb::Device,
        user_id: &str,
        field: &str,
        value: Option<String>,
    ) -> MatrixResult<()> {
        if device.user_id != user_id {
            return Err(MatrixError::forbidden(
                "You may only change your own profile",
            ));
        }
        if !FIELDS.contains(&field) {
            return Err(MatrixError::invalid_param("No such profile field here"));
        }
        // The spec lets guests set a display name, nothing more.
        if device.is_guest && field != "displayname" {
            return Err(MatrixError::guest_access_forbidden(
                "Guests may set only their display name",
            ));
        }
        if field == "avatar_url"
            && let Some(url) = &value
            && !url.is_empty()
            && !url.starts_with("mxc://")
        {
            return Err(MatrixError::invalid_param(
                "avatar_url must be an mxc:// URI",
            ));
        }
        let profile = self
            .users
            .set_profile_field(user_pb::SetProfileFieldRequest {
                user_id: user_id.to_owned(),
                field: field.to_owned(),
                value,
            })
            .await
            .map_err(MatrixError::from)?;
        self.carry_profile_into_rooms(user_id, profile_map(profile))
            .await;
        Ok(())
    }
}

/// `GET /profile/{userId}/{keyName}` for a field without a route of its
/// own: only ours are kept, the others are 404.
pub(crate) async fn get_profile_field(
    State(api): State<Arc<ClientApi>>,
    Ruma(request): Ruma<get_profile_field::v3::Request>,
) -> MatrixResult {
    let field = request.field.as_str();
    if !FIELDS.contains(&field) {
        return Err(MatrixError::not_found("No such profile field"));
    }
    let value = api.field_value(request.user_id.as_str(), field).await?;
    let value = ProfileFieldValue::new(field, value)
        .map_err(|e| MatrixError::unknown(format!("a stored profile field: {e}")))?;
    respond_ruma(get_profile_field::v3::Response::new(value))
}

pub(crate) async fn get_displayname(
    State(api): State<Arc<ClientApi>>,
    Ruma(request): Ruma<get_display_name::v3::Request>,
) -> MatrixResult {
    let value = api
        .field_value(request.user_id.as_str(), "displayname")
        .await?;
    let mut response = get_display_name::v3::Response::default();
    response.displayname = value.as_str().map(str::to_owned);
    respond_ruma(response)
}

pub(crate) async fn get_avatar_url(
    State(api): State<Arc<ClientApi>>,
    Ruma(request): Ruma<get_avatar_url::v3::Request>,
) -> MatrixResult {
    let value = api
        .field_value(request.user_id.as_str(), "avatar_url")
        .await?;
    let mut response = get_avatar_url::v3::Response::default();
    response.avatar_url = value.as_str().map(Into::into);
    respond_ruma(response)
}

/// `PUT /profile/{userId}/displayname`: `null` or no `displayname` clears
/// it, as the spec's versions we serve (to v1.12) allow.
pub(crate) async fn put_displayname(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<set_display_name::v3::Request>,
) -> MatrixResult {
    api.set_field(
        &device,
        request.user_id.as_str(),
        "displayname",
        request.displayname,
    )
    .await?;
    respond_ruma(set_display_name::v3::Response::default())
}

/// `PUT /profile/{userId}/avatar_url`: `null` or no `avatar_url` clears
/// it; any other value is an `mxc://` URI.
pub(crate) async fn put_avatar_url(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<set_avatar_url::v3::Request>,
) -> MatrixResult {
    let value = request.avatar_url.map(|url| url.to_string());
    api.set_field(&device, request.user_id.as_str(), "avatar_url", value)
        .await?;
    respond_ruma(set_avatar_url::v3::Response::default())
}

// Keeps its own body: ruma's `set_profile_field` requires the field's value
// (and an mxc:// URI), where a client clears a field with `null` or by
// leaving it out. `displayname` and `avatar_url` have routes of their own
// (ruma's older endpoint types, which allow that); this one is left with
// the fields this server does not keep.
pub(crate) async fn put_profile_field(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Path((user_id, field)): Path<(String, String)>,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    if device.user_id != user_id {
        return Err(MatrixError::forbidden(
            "You may only change your own profile",
        ));
    }
    if !FIELDS.contains(&field.as_str()) {
        return Err(MatrixError::invalid_param("No such profile field here"));
    }
    let body: Map<String, Value> = parse_json(&body)?;
    let value = match body.get(&field) {
        Some(Value::String(value)) => Some(value.clone()),
        Some(Value::Null) | None => None,
        Some(_) => {
            return Err(MatrixError::bad_json(format!("{field} must be a string")));
        }
    };
    api.set_field(&device, &user_id, &field, value).await?;
    respond(json!({}))
}

impl ClientApi {
    /// A new join event with the new profile in each room the user is
    /// joined to. A room that refuses it keeps the old one (logged).
    async fn carry_profile_into_rooms(&self, user_id: &str, profile: Map<String, Value>) {
        let rooms = match self
            .roomserver
            .query_joined_rooms(pb::QueryJoinedRoomsRequest {
                user_id: user_id.to_owned(),
                ..Default::default()
            })
            .await
        {
            Ok(rooms) => rooms.room_ids,
            Err(error) => {
                tracing::warn!(user_id, ?error, "the profile change reached no room");
                return;
            }
        };
        // Read-your-writes: the last record of each partition covers the rest.
        let mut last = std::collections::BTreeMap::new();
        for room_id in rooms {
            let mut content = profile.clone();
            content.insert("membership".into(), json!("join"));
            let result = self
                .roomserver
                .input(pb::InputRequest {
                    room_id: room_id.clone(),
                    templates: vec![template(
                        "m.room.member",
                        Some(user_id),
                        user_id,
                        Value::Object(content),
                    )],
                    device_id: String::new(),
                    transaction_id: String::new(),
                })
                .await;
            match result {
                Ok(response) => {
                    if let Some(position) = response.output_position {
                        last.insert(position.partition, position);
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        user_id,
                        room_id,
                        ?error,
                        "the profile change was refused in a room"
                    )
                }
            }
        }
        for position in last.into_values() {
            self.read_your_writes(user_id, Some(position)).await;
        }
    }
}
