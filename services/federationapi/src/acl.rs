//! Server ACLs (`m.room.server_acl`): a server the room's ACL denies is
//! not heard in that room: its PDUs and EDUs are dropped, and its requests
//! about the room refused with 403 `M_FORBIDDEN`.

use ganglion_api::ApiError;
use ganglion_api::proto::roomserver as pb;
use ganglion_base::MatrixError;
use ruma::events::room::server_acl::RoomServerAclEventContent;

use crate::FederationService;

/// Whether an ACL event's content lets `server` take part (no valid ACL:
/// everyone may).
pub(crate) fn allows(acl_event_json: Option<&[u8]>, server: &str) -> bool {
    let Some(json) = acl_event_json else {
        return true;
    };
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(json) else {
        return true;
    };
    let Ok(content) = serde_json::from_value::<RoomServerAclEventContent>(event["content"].clone())
    else {
        return true;
    };
    match ruma::ServerName::parse(server) {
        Ok(name) => content.is_allowed(&name),
        Err(_) => false,
    }
}

impl FederationService {
    /// Whether the room's current ACL lets `origin` take part.
    pub(crate) async fn acl_allows(&self, room_id: &str, origin: &str) -> Result<bool, ApiError> {
        let acl = self
            .roomserver
            .query_state_event(pb::QueryStateEventRequest {
                room_id: room_id.to_owned(),
                event_type: "m.room.server_acl".into(),
                state_key: String::new(),
            })
            .await?;
        Ok(allows(acl.event_json.as_deref(), origin))
    }

    /// The room's version, as the roomserver holds it.
    pub(crate) async fn room_version(
        &self,
        room_id: &str,
    ) -> Result<String, ganglion_api::ApiError> {
        Ok(self
            .roomserver
            .query_room_version(ganglion_api::proto::roomserver::QueryRoomVersionRequest {
                room_id: room_id.to_owned(),
            })
            .await?
            .room_version)
    }

    /// Whether the room exists here and `origin` has a user joined to it.
    pub(crate) async fn server_in_room(
        &self,
        room_id: &str,
        origin: &str,
    ) -> Result<(bool, bool), ApiError> {
        let members = self
            .roomserver
            .query_joined_members(pb::QueryJoinedMembersRequest {
                room_id: room_id.to_owned(),
                server_name: origin.to_owned(),
                limit: 1,
            })
            .await?;
        Ok((members.room_exists, !members.user_ids.is_empty()))
    }

    /// 403 `M_FORBIDDEN` unless the room's ACL lets `origin` take part.
    pub(crate) async fn require_acl(&self, room_id: &str, origin: &str) -> Result<(), MatrixError> {
        if self
            .acl_allows(room_id, origin)
            .await
            .map_err(MatrixError::from)?
        {
            Ok(())
        } else {
            Err(MatrixError::forbidden(
                "Server is banned from this room by its ACL",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn denied_servers_and_ip_literals() {
        let acl = json!({ "content": { "allow": ["*"], "deny": ["evil.example", "*.bad.example"], "allow_ip_literals": false } })
            .to_string();
        let acl = Some(acl.as_bytes());
        assert!(super::allows(acl, "good.example"));
        assert!(super::allows(acl, "good.example:8448"));
        assert!(!super::allows(acl, "evil.example"));
        assert!(!super::allows(acl, "evil.example:1234"));
        assert!(!super::allows(acl, "x.bad.example"));
        assert!(!super::allows(acl, "1.2.3.4"));
        assert!(super::allows(None, "anyone.example"));
    }
}
