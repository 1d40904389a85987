//! `POST /user/{userId}/filter` and `GET /user/{userId}/filter/{filterId}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixJson, MatrixResult, Ruma, respond};
use ruma::api::client::filter::get_filter;
use serde_json::json;

use crate::SyncService;

// A filter is stored and given back as the client sent it, where ruma's
// `FilterDefinition` would parse it and drop what it does not know: this
// route keeps its own body, and GET its own answer.
pub(crate) async fn create_filter(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    Path(user_id): Path<String>,
    MatrixJson(filter): MatrixJson<serde_json::Map<String, serde_json::Value>>,
) -> MatrixResult {
    if device.user_id != user_id {
        return Err(MatrixError::forbidden(
            "Cannot create filters for other users",
        ));
    }
    let json = serde_json::Value::Object(filter).to_string();
    crate::filter::SyncFilter::parse(&json).map_err(crate::routes::sync::filter_error)?;
    let id = service.storage.insert_filter(&user_id, &json).await?;
    respond(json!({ "filter_id": id.to_string() }))
}

/// `GET /user/{userId}/filter/{filterId}`: the filter as it was sent
/// (our own answer, for the reason above).
pub(crate) async fn get_filter(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<get_filter::v3::Request>,
) -> MatrixResult {
    let (user_id, filter_id) = (request.user_id.to_string(), request.filter_id);
    if device.user_id != user_id {
        return Err(MatrixError::forbidden("Cannot read filters of other users"));
    }
    let id: i64 = filter_id
        .parse()
        .map_err(|_| MatrixError::not_found("No such filter"))?;
    let json = service
        .storage
        .filter(&user_id, id)
        .await?
        .ok_or_else(|| MatrixError::not_found("No such filter"))?;
    let value: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    respond(value)
}
