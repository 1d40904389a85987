//! Account data (global and per room) and room tags: kept by the userapi,
//! which publishes every change on `userapi.account_data`; the answer
//! waits until the syncapi has it.

use std::sync::Arc;

use axum::extract::{Path, State};
use ganglion_api::proto::userapi::{self as user_pb, Device};
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixBody, MatrixResult, Ruma, parse_json, respond, respond_ruma};
use ruma::api::client::config::{
    get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
};
use ruma::api::client::tag::{delete_tag, get_tags};
use ruma::serde::Raw;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::ClientApi;

/// Account data only the server writes.
fn server_controlled(data_type: &str) -> bool {
    data_type == "m.fully_read" || data_type == ganglion_base::push_rules::ACCOUNT_DATA_TYPE
}

/// The requester must be the user the path names.
fn require_self(device: &Device, user_id: &str) -> Result<(), MatrixError> {
    if device.user_id != user_id {
        return Err(MatrixError::forbidden(
            "You may only use your own account data",
        ));
    }
    Ok(())
}

fn require_room_id(room_id: &str) -> Result<(), MatrixError> {
    ganglion_base::limits::room_id(room_id)
}

impl ClientApi {
    async fn put_account_data(
        &self,
        device: &Device,
        room_id: &str,
        data_type: &str,
        content: &RawValue,
    ) -> MatrixResult<()> {
        ganglion_base::limits::opaque_id("account data type", data_type)?;
        if server_controlled(data_type) {
            return Err(MatrixError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "M_BAD_JSON",
                "This account data is controlled by the server",
            ));
        }
        // The content as the client sent it, a JSON object.
        let content: Map<String, Value> = serde_json::from_str(content.get())
            .map_err(|e| MatrixError::bad_json(format!("Invalid request: {e}")))?;
        let written = self
            .users
            .set_account_data(user_pb::SetAccountDataRequest {
                user_id: device.user_id.clone(),
                room_id: room_id.to_owned(),
                data_type: data_type.to_owned(),
                content_json: Value::Object(content).to_string().into_bytes(),
            })
            .await
            .map_err(MatrixError::from)?;
        self.read_your_writes(&device.user_id, written.position)
            .await;
        Ok(())
    }

    /// The content as stored (a JSON object); 404 when there is none.
    async fn get_account_data(
        &self,
        user_id: &str,
        room_id: &str,
        data_type: &str,
    ) -> MatrixResult<Box<RawValue>> {
        let found = self
            .users
            .get_account_data(user_pb::GetAccountDataRequest {
                user_id: user_id.to_owned(),
                room_id: room_id.to_owned(),
                data_type: data_type.to_owned(),
            })
            .await
            .map_err(MatrixError::from)?;
        found
            .content_json
            .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
            .and_then(|content| serde_json::value::to_raw_value(&content).ok())
            .ok_or_else(|| MatrixError::not_found("No account data of this type"))
    }
}

pub(crate) async fn put_global(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Ruma(request): Ruma<set_global_account_data::v3::Request>,
) -> MatrixResult {
    require_self(&device, request.user_id.as_str())?;
    let data_type = request.event_type.to_string();
    api.put_account_data(&device, "", &data_type, request.data.json())
        .await?;
    respond_ruma(set_global_account_data::v3::Response::new())
}

pub(crate) async fn get_global(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Ruma(request): Ruma<get_global_account_data::v3::Request>,
) -> MatrixResult {
    require_self(&device, request.user_id.as_str())?;
    let data_type = request.event_type.to_string();
    // The push rules are the server's defaults until the user changes one.
    let content = if data_type == ganglion_base::push_rules::ACCOUNT_DATA_TYPE {
        serde_json::value::to_raw_value(&api.push_rules_content(&device).await?)
            .map_err(|_| MatrixError::unknown("serializing push rules"))?
    } else {
        api.get_account_data(request.user_id.as_str(), "", &data_type)
            .await?
    };
    respond_ruma(get_global_account_data::v3::Response::new(Raw::from_json(
        content,
    )))
}

pub(crate) async fn put_room(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Ruma(request): Ruma<set_room_account_data::v3::Request>,
) -> MatrixResult {
    require_self(&device, request.user_id.as_str())?;
    let room_id = request.room_id.to_string();
    require_room_id(&room_id)?;
    let data_type = request.event_type.to_string();
    api.put_account_data(&device, &room_id, &data_type, request.data.json())
        .await?;
    respond_ruma(set_room_account_data::v3::Response::new())
}

pub(crate) async fn get_room(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Ruma(request): Ruma<get_room_account_data::v3::Request>,
) -> MatrixResult {
    require_self(&device, request.user_id.as_str())?;
    let room_id = request.room_id.to_string();
    require_room_id(&room_id)?;
    let content = api
        .get_account_data(
            request.user_id.as_str(),
            &room_id,
            &request.event_type.to_string(),
        )
        .await?;
    respond_ruma(get_room_account_data::v3::Response::new(Raw::from_json(
        content,
    )))
}

/// `GET /user/{userId}/rooms/{roomId}/tags`. Its answer is our own:
/// ruma's `TagInfo` has only `order`, and a tag's other properties (the
/// spec allows them) would be lost.
pub(crate) async fn get_tags(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Ruma(request): Ruma<get_tags::v3::Request>,
) -> MatrixResult {
    let (user_id, room_id) = (request.user_id.to_string(), request.room_id.to_string());
    require_self(&device, &user_id)?;
    require_room_id(&room_id)?;
    let found = api
        .users
        .get_account_data(user_pb::GetAccountDataRequest {
            user_id,
            room_id,
            data_type: "m.tag".to_owned(),
        })
        .await
        .map_err(MatrixError::from)?;
    let tags = found
        .content_json
        .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
        .and_then(|content| content.get("tags").cloned())
        .unwrap_or_else(|| json!({}));
    respond(json!({ "tags": tags }))
}

async fn update_tag(
    api: &ClientApi,
    device: &Device,
    room_id: String,
    tag: String,
    content: Option<Map<String, Value>>,
) -> MatrixResult {
    require_room_id(&room_id)?;
    ganglion_base::limits::opaque_id("tag", &tag)?;
    if let Some(order) = content.as_ref().and_then(|c| c.get("order"))
        && !order.is_number()
    {
        return Err(MatrixError::bad_json("order is a number"));
    }
    let written = api
        .users
        .update_tag(user_pb::UpdateTagRequest {
            user_id: device.user_id.clone(),
            room_id,
            tag,
            content_json: content.map(|c| Value::Object(c).to_string().into_bytes()),
        })
        .await
        .map_err(MatrixError::from)?;
    api.read_your_writes(&device.user_id, written.position)
        .await;
    respond(json!({}))
}

// Keeps its own body: ruma's `TagInfo` keeps only `order`, and the spec
// lets a tag carry other properties, which are stored as sent.
/// `PUT /user/{userId}/rooms/{roomId}/tags/{tag}`.
pub(crate) async fn put_tag(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    require_self(&device, &user_id)?;
    let content: Map<String, Value> = parse_json(&body)?;
    update_tag(&api, &device, room_id, tag, Some(content)).await
}

/// `DELETE /user/{userId}/rooms/{roomId}/tags/{tag}`.
pub(crate) async fn delete_tag(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Ruma(request): Ruma<delete_tag::v3::Request>,
) -> MatrixResult {
    require_self(&device, request.user_id.as_str())?;
    update_tag(
        &api,
        &device,
        request.room_id.to_string(),
        request.tag.to_string(),
        None,
    )
    .await
}
