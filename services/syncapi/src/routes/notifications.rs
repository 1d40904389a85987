//! `GET /notifications`: the events that notified the user, newest first,
//! whether read since (a receipt at or after them) and with the actions
//! that notified, as the syncapi counted them for `/sync`. Read ones are
//! kept a month.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, parse_query, respond};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SyncService;
use crate::routes::client_event::client_event;
use crate::storage::NotificationsFrom;

#[derive(Deserialize)]
struct Query {
    from: Option<String>,
    limit: Option<u32>,
    only: Option<String>,
}

/// Notifications per page unless the client asks otherwise, and at most.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 100;

/// A page token: where the last notification of a page stands.
fn token((ts, offset, room_id): &NotificationsFrom) -> String {
    format!("{ts}_{offset}_{room_id}")
}

fn parse_token(token: &str) -> Option<NotificationsFrom> {
    let mut parts = token.splitn(3, '_');
    let ts = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    let room_id = parts.next()?.to_owned();
    Some((ts, offset, room_id))
}

pub(crate) async fn notifications(
    State(service): State<Arc<SyncService>>,
    User(device): User,
    uri: Uri,
) -> MatrixResult {
    let query: Query = parse_query(&uri)?;
    let from = match query.from.as_deref() {
        None | Some("") => None,
        Some(from) => Some(
            parse_token(from)
                .ok_or_else(|| MatrixError::invalid_param("from is not a token we gave"))?,
        ),
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let only_highlights = query.only.as_deref() == Some("highlight");
    let mut found = service
        .storage
        .notified_events(&device.user_id, from.as_ref(), limit + 1, only_highlights)
        .await?;
    let more = found.len() > limit as usize;
    found.truncate(limit as usize);
    let next_token = more.then(|| found.last()).flatten().map(|last| {
        token(&(
            last.ts,
            last.event.offset as i64,
            last.event.room_id.clone(),
        ))
    });
    let notifications: Vec<Value> = found
        .iter()
        .map(|notified| {
            let actions = notified
                .actions
                .as_deref()
                .and_then(|json| serde_json::from_str::<Value>(json).ok())
                .unwrap_or_else(|| json!(["notify"]));
            json!({
                "actions": actions,
                "event": client_event(&notified.event, true, &device.device_id),
                "read": !notified.unread,
                "room_id": notified.event.room_id,
                "ts": notified.ts,
            })
        })
        .collect();
    let mut body = json!({ "notifications": notifications });
    if let Some(next) = next_token {
        body["next_token"] = json!(next);
    }
    respond(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_with_underscores_in_room_ids() {
        let from = (1_700_000_000_000, 42, "!a_b:example.org".to_owned());
        assert_eq!(parse_token(&token(&from)), Some(from));
        for bad in ["", "x_1_!r:hs", "1_x_!r:hs", "1_2"] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }
}
