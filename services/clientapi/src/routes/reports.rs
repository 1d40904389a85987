//! Reports of events and rooms, kept by the roomserver for the server's admins.

use std::sync::Arc;

use axum::extract::{Path, State};
use ganglion_api::proto::roomserver as pb;
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixJson, MatrixResult, respond};
use serde::Deserialize;
use serde_json::json;

use crate::ClientApi;

#[derive(Deserialize)]
pub(crate) struct ReportBody {
    reason: Option<String>,
    score: Option<i64>,
}

impl ClientApi {
    async fn report(
        &self,
        room_id: String,
        event_id: String,
        user_id: String,
        body: ReportBody,
    ) -> MatrixResult {
        ruma::RoomId::parse(&room_id).map_err(|_| MatrixError::invalid_param("invalid room ID"))?;
        if let Some(score) = body.score
            && !(-100..=0).contains(&score)
        {
            return Err(MatrixError::invalid_param(
                "score must be between -100 and 0",
            ));
        }
        let reason = body.reason.unwrap_or_default();
        if reason.len() > 1_000 {
            return Err(MatrixError::invalid_param("reason is too long"));
        }
        // Only rooms the reporter can read: otherwise the room (or event)
        // is, as far as they are concerned, not there.
        let readable = self
            .require_member_or_world_readable(&room_id, &user_id)
            .await
            .is_ok()
            || self.readable_state(&room_id, &user_id).await.is_ok();
        if !readable {
            return Err(MatrixError::not_found(if event_id.is_empty() {
                "Unknown room"
            } else {
                "Unknown event"
            }));
        }
        self.roomserver
            .report(pb::ReportRequest {
                room_id,
                event_id,
                user_id,
                reason,
                score: body.score,
            })
            .await
            .map_err(MatrixError::from)?;
        respond(json!({}))
    }
}

pub(crate) async fn report_event(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path((room_id, event_id)): Path<(String, String)>,
    MatrixJson(body): MatrixJson<ReportBody>,
) -> MatrixResult {
    ruma::EventId::parse(&event_id).map_err(|_| MatrixError::invalid_param("invalid event ID"))?;
    api.report(room_id, event_id, device.user_id, body).await
}

pub(crate) async fn report_room(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(room_id): Path<String>,
    MatrixJson(body): MatrixJson<ReportBody>,
) -> MatrixResult {
    api.report(room_id, String::new(), device.user_id, body)
        .await
}
