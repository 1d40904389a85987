//! Which events another server may read (`/event`, `/backfill`,
//! `/get_missing_events`, state at an event): the history visibility in
//! force at each event against the memberships that server's users had
//! there, as the spec's history visibility rules say for servers. The
//! federation API asks; events a server may not see are sent redacted, so
//! the room's graph stays whole.

use std::collections::HashMap;

use ganglion_api::ApiError;
use ganglion_api::proto::roomserver as pb;

use crate::RoomserverService;
use crate::events::Pdu;

/// Whether a server whose users had `memberships` (each `join`, `invite`,
/// `leave`, ...) at an event may see it under `history_visibility`. The
/// caller has already found the server in the room now, which is what
/// `shared` and `world_readable` history ask.
pub(crate) fn visible(history_visibility: &str, memberships: &[&str]) -> bool {
    match history_visibility {
        "invited" => memberships.iter().any(|m| matches!(*m, "join" | "invite")),
        "joined" => memberships.contains(&"join"),
        // `shared`, `world_readable`, and values the spec does not define
        // (read as `shared`, its default).
        _ => true,
    }
}

fn content_field(pdu: &Pdu, field: &str) -> Option<String> {
    let content: serde_json::Value = serde_json::from_str(pdu.content.get()).ok()?;
    content.get(field)?.as_str().map(str::to_owned)
}

impl RoomserverService {
    pub(crate) async fn server_visibility(
        &self,
        request: pb::QueryServerVisibilityRequest,
    ) -> Result<pb::QueryServerVisibilityResponse, ApiError> {
        let suffix = format!(":{}", request.server_name);
        let ids: Vec<&str> = request.event_ids.iter().map(String::as_str).collect();
        let stored = self.storage.events_by_id(&ids).await?;
        // Consecutive events share their state: judge each snapshot once.
        let mut by_snapshot: HashMap<i64, (String, Vec<String>)> = HashMap::new();
        let mut visible_ids = Vec::new();
        for id in &request.event_ids {
            let Some(event) = stored.get(id.as_str()) else {
                continue;
            };
            let Some(snapshot) = event.state_before else {
                continue;
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = by_snapshot.entry(snapshot) {
                slot.insert(self.visibility_inputs(snapshot, &suffix).await?);
            }
            let Some((history_visibility, memberships)) = by_snapshot.get(&snapshot) else {
                continue;
            };
            let mut memberships: Vec<&str> = memberships.iter().map(String::as_str).collect();
            // A membership event of the server's own user is judged with
            // that membership (a user sees their own join).
            let own = (event.pdu.kind.to_string() == "m.room.member"
                && event
                    .pdu
                    .state_key
                    .as_deref()
                    .is_some_and(|key| key.ends_with(&suffix)))
            .then(|| content_field(&event.pdu, "membership"))
            .flatten();
            if let Some(own) = own.as_deref() {
                memberships.push(own);
            }
            if visible(history_visibility, &memberships) {
                visible_ids.push(id.clone());
            }
        }
        Ok(pb::QueryServerVisibilityResponse {
            visible_event_ids: visible_ids,
        })
    }

    /// The history visibility in a snapshot and the memberships in it of
    /// users whose IDs end in `suffix` (`:server`).
    async fn visibility_inputs(
        &self,
        snapshot: i64,
        suffix: &str,
    ) -> Result<(String, Vec<String>), ApiError> {
        let nids = self.storage.snapshot(snapshot).await?;
        let type_nids: Vec<i64> = nids.entries.keys().map(|(t, _)| *t).collect();
        let key_nids: Vec<i64> = nids.entries.keys().map(|(_, k)| *k).collect();
        let (types, keys) = self.storage.names(&type_nids, &key_nids).await?;
        let mut wanted = Vec::new();
        for ((kind, key), event) in &nids.entries {
            let (Some(kind), Some(key)) = (types.get(kind), keys.get(key)) else {
                continue;
            };
            let is_visibility = kind == "m.room.history_visibility" && key.is_empty();
            let is_member = kind == "m.room.member" && key.ends_with(suffix);
            if is_visibility || is_member {
                wanted.push(*event);
            }
        }
        let events = self.storage.events_by_nid(&wanted).await?;
        let mut history_visibility = "shared".to_owned();
        let mut memberships = Vec::new();
        for pdu in events.values() {
            match pdu.kind.to_string().as_str() {
                "m.room.history_visibility" => {
                    if let Some(value) = content_field(pdu, "history_visibility") {
                        history_visibility = value;
                    }
                }
                _ => memberships.extend(content_field(pdu, "membership")),
            }
        }
        Ok((history_visibility, memberships))
    }
}

#[cfg(test)]
mod tests {
    use super::visible;

    #[test]
    fn the_spec_rules_for_servers() {
        for history in ["shared", "world_readable", "something-new"] {
            assert!(visible(history, &[]), "{history}");
        }
        assert!(visible("invited", &["invite"]));
        assert!(visible("invited", &["leave", "join"]));
        assert!(!visible("invited", &["leave", "ban"]));
        assert!(visible("joined", &["join"]));
        assert!(!visible("joined", &["invite"]));
        assert!(!visible("joined", &[]));
    }
}
