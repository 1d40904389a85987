//! Pushers: `GET /pushers` and `POST /pushers/set`. The userapi keeps
//! them (each with the device that set it, and gone with it) and sends
//! what notifies their users to their push gateways.

use std::sync::Arc;

use axum::extract::State;
use ganglion_api::proto::userapi as user_pb;
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixBody, MatrixResult, parse_json, respond};
use serde_json::{Map, Value, json};

use crate::ClientApi;

pub(crate) async fn get(State(api): State<Arc<ClientApi>>, User(device): User) -> MatrixResult {
    let found = api
        .users
        .get_pushers(user_pb::GetPushersRequest {
            user_id: device.user_id.clone(),
        })
        .await
        .map_err(MatrixError::from)?;
    let pushers: Vec<Value> = found
        .pushers
        .into_iter()
        .map(|p| {
            let mut pusher = json!({
                "app_id": p.app_id,
                "pushkey": p.pushkey,
                "kind": p.kind,
                "app_display_name": p.app_display_name,
                "device_display_name": p.device_display_name,
                "lang": p.lang,
                "data": serde_json::from_slice::<Value>(&p.data_json).unwrap_or_else(|_| json!({})),
            });
            if let Some(tag) = p.profile_tag {
                pusher["profile_tag"] = json!(tag);
            }
            pusher
        })
        .collect();
    respond(json!({ "pushers": pushers }))
}

/// A string field of the body; `Ok(None)` when absent, 400 `M_BAD_JSON`
/// when not a string.
fn string(body: &Map<String, Value>, key: &str) -> Result<Option<String>, MatrixError> {
    match body.get(key) {
        None => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(MatrixError::bad_json(format!("{key} is a string"))),
    }
}

/// `POST /pushers/set`: creates or updates the pusher of an app and
/// pushkey (`kind` set), or removes it (`kind` null).
pub(crate) async fn set(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: Map<String, Value> = parse_json(&body)?;
    // `kind` is required, and may be null.
    let kind = match body.get("kind") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(kind)) => Some(Some(kind.clone())),
        Some(_) => return Err(MatrixError::bad_json("kind is a string or null")),
    };
    let append = match body.get("append") {
        None => false,
        Some(Value::Bool(append)) => *append,
        Some(_) => return Err(MatrixError::bad_json("append is a boolean")),
    };
    let app_id = string(&body, "app_id")?;
    let pushkey = string(&body, "pushkey")?;
    let app_display_name = string(&body, "app_display_name")?;
    let device_display_name = string(&body, "device_display_name")?;
    let lang = string(&body, "lang")?;
    let profile_tag = string(&body, "profile_tag")?;
    let data = body.get("data");
    if data.is_some_and(|d| !d.is_object()) {
        return Err(MatrixError::bad_json("data is an object"));
    }
    let remove = matches!(kind, Some(None));
    let mut missing: Vec<&str> = Vec::new();
    for (name, present) in [
        ("kind", kind.is_some()),
        ("app_id", app_id.is_some()),
        ("pushkey", pushkey.is_some()),
    ] {
        if !present {
            missing.push(name);
        }
    }
    if !remove {
        for (name, present) in [
            ("app_display_name", app_display_name.is_some()),
            ("device_display_name", device_display_name.is_some()),
            ("lang", lang.is_some()),
            ("data", data.is_some()),
        ] {
            if !present {
                missing.push(name);
            }
        }
    }
    if !missing.is_empty() {
        return Err(MatrixError::missing_param(format!(
            "Missing parameters: {}",
            missing.join(", ")
        )));
    }
    let pusher = user_pb::PusherInfo {
        app_id: app_id.unwrap_or_default(),
        pushkey: pushkey.unwrap_or_default(),
        kind: kind.flatten().unwrap_or_default(),
        app_display_name: app_display_name.unwrap_or_default(),
        device_display_name: device_display_name.unwrap_or_default(),
        profile_tag,
        lang: lang.unwrap_or_default(),
        data_json: data.map(|d| d.to_string().into_bytes()).unwrap_or_default(),
    };
    if !remove && let Some(problem) = ganglion_api::users::pusher_problem(&pusher) {
        return Err(MatrixError::invalid_param(problem));
    }
    api.users
        .set_pusher(user_pb::SetPusherRequest {
            user_id: device.user_id.clone(),
            device_id: device.device_id.clone(),
            pusher: Some(pusher),
            remove,
            append,
        })
        .await
        .map_err(MatrixError::from)?;
    respond(json!({}))
}
