//! `GET /_matrix/client/v1/media/config` (and the deprecated
//! `/_matrix/media/v3/config`): what clients may upload.

use std::sync::Arc;

use axum::extract::State;
use ganglion_api::users::{User, UserOrGuest};
use ganglion_base::http::{MatrixResult, ok_json};
use serde_json::json;

use crate::MediaApi;

fn answer(api: &MediaApi) -> MatrixResult {
    Ok(ok_json(
        json!({ "m.upload.size": api.config.max_upload_bytes }),
    ))
}

pub(crate) async fn config(
    State(api): State<Arc<MediaApi>>,
    UserOrGuest(_device): UserOrGuest,
) -> MatrixResult {
    answer(&api)
}

pub(crate) async fn legacy_config(
    State(api): State<Arc<MediaApi>>,
    User(_device): User,
) -> MatrixResult {
    answer(&api)
}
