//! One home for the spec's size limits and identifier checks, used at every
//! edge (client and federation) and by the roomserver, so a value no view
//! can store never gets in.

use crate::MatrixError;

/// The largest PDU the spec allows, in bytes of canonical JSON (signatures
/// included).
pub const MAX_PDU_BYTES: usize = 65_536;

/// The longest user, room and event ID, event type and state key the spec
/// allows, in bytes; device IDs, transaction IDs, thread IDs and other
/// identifiers a client picks are held to it too.
pub const MAX_ID_BYTES: usize = 255;

/// An event type: not empty, at most [`MAX_ID_BYTES`]. Too long is
/// 413 `M_TOO_LARGE`, as for any event field over its limit.
pub fn event_type(value: &str) -> Result<(), MatrixError> {
    if value.is_empty() {
        return Err(MatrixError::invalid_param("event type must not be empty"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(MatrixError::too_large(format!(
            "event type exceeds {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A state key: at most [`MAX_ID_BYTES`] (413 `M_TOO_LARGE` beyond).
pub fn state_key(value: &str) -> Result<(), MatrixError> {
    if value.len() > MAX_ID_BYTES {
        return Err(MatrixError::too_large(format!(
            "state key exceeds {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

/// An identifier a client or server picks freely (device ID, transaction
/// ID, thread ID, account data type, tag): not empty, at most
/// [`MAX_ID_BYTES`], no control characters; else 400 `M_INVALID_PARAM`
/// naming `what`.
pub fn opaque_id(what: &str, value: &str) -> Result<(), MatrixError> {
    if value.is_empty() || value.len() > MAX_ID_BYTES || value.chars().any(char::is_control) {
        return Err(MatrixError::invalid_param(format!(
            "{what} must be 1 to {MAX_ID_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

/// A user ID by the spec's grammar (historical characters allowed, as
/// other servers' users may have them), at most [`MAX_ID_BYTES`]; else 400
/// `M_INVALID_PARAM`.
pub fn user_id(value: &str) -> Result<(), MatrixError> {
    let empty_localpart = value.starts_with("@:");
    if value.len() > MAX_ID_BYTES || empty_localpart || ruma::UserId::parse(value).is_err() {
        return Err(MatrixError::invalid_param(format!(
            "not a valid user ID: {}",
            shortened(value)
        )));
    }
    Ok(())
}

/// A room ID by the spec's grammar, at most [`MAX_ID_BYTES`]; else 400
/// `M_INVALID_PARAM`.
pub fn room_id(value: &str) -> Result<(), MatrixError> {
    // An opaque part is required (`!` alone names no room), then a server
    // name where there is a colon.
    let rest = value.strip_prefix('!').unwrap_or_default();
    let (opaque, server) = match rest.split_once(':') {
        Some((opaque, server)) => (opaque, Some(server)),
        None => (rest, None),
    };
    let bad_server = server.is_some_and(|s| ruma::ServerName::parse(s).is_err());
    if value.len() > MAX_ID_BYTES
        || opaque.is_empty()
        || bad_server
        || ruma::RoomId::parse(value).is_err()
    {
        return Err(MatrixError::invalid_param(format!(
            "not a valid room ID: {}",
            shortened(value)
        )));
    }
    Ok(())
}

/// An event ID by the spec's grammar, at most [`MAX_ID_BYTES`]; else 400
/// `M_INVALID_PARAM`.
pub fn event_id(value: &str) -> Result<(), MatrixError> {
    if value.len() > MAX_ID_BYTES || ruma::EventId::parse(value).is_err() {
        return Err(MatrixError::invalid_param(format!(
            "not a valid event ID: {}",
            shortened(value)
        )));
    }
    Ok(())
}

/// A room alias by the spec's grammar, with a valid server name, at most
/// [`MAX_ID_BYTES`]; else 400 `M_INVALID_PARAM`.
pub fn room_alias(value: &str) -> Result<(), MatrixError> {
    let server_ok = value
        .split_once(':')
        .is_some_and(|(_, server)| server_name(server).is_ok());
    if value.len() > MAX_ID_BYTES || !server_ok || ruma::RoomAliasId::parse(value).is_err() {
        return Err(MatrixError::invalid_param(format!(
            "not a valid room alias: {}",
            shortened(value)
        )));
    }
    Ok(())
}

/// A server name by the spec's grammar (host, optional port); else 400
/// `M_INVALID_PARAM`.
pub fn server_name(value: &str) -> Result<(), MatrixError> {
    // A port, if any, is a TCP port (the host may be an IPv6 literal with
    // colons of its own, inside brackets).
    let bad_port = value
        .rsplit_once(':')
        .filter(|(host, _)| !host.starts_with('[') || host.ends_with(']'))
        .is_some_and(|(_, port)| port.parse::<u16>().map_or(true, |p| p == 0));
    if bad_port || ruma::ServerName::parse(value).is_err() {
        return Err(MatrixError::invalid_param(format!(
            "not a valid server name: {}",
            shortened(value)
        )));
    }
    Ok(())
}

/// Whether any key or string in an event holds U+0000, which PostgreSQL
/// cannot store in text: such an event would be accepted and then lost by
/// the views, so it is refused instead.
pub fn holds_nul(object: &ruma::CanonicalJsonObject) -> bool {
    fn value_holds_nul(value: &ruma::CanonicalJsonValue) -> bool {
        match value {
            ruma::CanonicalJsonValue::String(text) => text.contains('\0'),
            ruma::CanonicalJsonValue::Array(items) => items.iter().any(value_holds_nul),
            ruma::CanonicalJsonValue::Object(object) => holds_nul(object),
            _ => false,
        }
    }
    object
        .iter()
        .any(|(key, value)| key.contains('\0') || value_holds_nul(value))
}

/// [`holds_nul`] for a request's JSON before it is typed.
pub fn json_holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(json_holds_nul),
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(key, value)| key.contains('\0') || json_holds_nul(value)),
        _ => false,
    }
}

/// At most 64 characters of `value`, for an error message.
fn shortened(value: &str) -> String {
    let mut out: String = value.chars().take(64).collect();
    if out.len() < value.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_grammar() {
        let long = "a".repeat(MAX_ID_BYTES + 1);
        assert!(event_type("m.room.message").is_ok());
        assert_eq!(event_type("").unwrap_err().errcode, "M_INVALID_PARAM");
        assert_eq!(event_type(&long).unwrap_err().errcode, "M_TOO_LARGE");
        assert!(state_key("").is_ok());
        assert!(state_key(&long[1..]).is_ok());
        assert_eq!(state_key(&long).unwrap_err().errcode, "M_TOO_LARGE");
        assert!(opaque_id("device ID", "ABCDEF").is_ok());
        for bad in ["", "a\nb", &long] {
            assert_eq!(
                opaque_id("device ID", bad).unwrap_err().errcode,
                "M_INVALID_PARAM"
            );
        }
        assert!(user_id("@alice:example.org").is_ok());
        assert!(user_id("@Alice:example.org:8448").is_ok());
        let long_user = format!("@{}:example.org", "a".repeat(250));
        for bad in ["alice", "@alice", "@:x", "", &long_user] {
            assert!(user_id(bad).is_err(), "{bad}");
        }
        assert!(room_id("!abc:example.org").is_ok());
        assert!(room_id("!abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").is_ok());
        for bad in ["!", "!:example.org", "!abc:", "!abc:exa mple"] {
            assert!(room_id(bad).is_err(), "{bad}");
        }
        assert!(room_id("#a:b").is_err());
        assert!(event_id("$abc").is_ok());
        assert!(event_id("abc").is_err());
        let nul: ruma::CanonicalJsonObject =
            serde_json::from_str(r#"{"a": {"b": ["x", "y\u0000"]}}"#).expect("json");
        assert!(holds_nul(&nul));
        let clean: ruma::CanonicalJsonObject =
            serde_json::from_str(r#"{"a": {"b": ["x", "y\\u0000\u0001"]}}"#).expect("json");
        assert!(!holds_nul(&clean));
        assert!(server_name("example.org:8448").is_ok());
        assert!(room_alias("#a:example.org").is_ok());
        for bad in ["#a", "a:example.org", "#a:exa mple", "#a:b.org:0"] {
            assert!(room_alias(bad).is_err(), "{bad}");
        }
        assert!(server_name("[::1]:8448").is_ok());
        assert!(server_name("[::1]").is_ok());
        for bad in [
            "",
            "exa mple.org",
            "example.org:port",
            "[::1",
            "a.org:99999",
            "a.org:0",
            "a.org:",
        ] {
            assert!(server_name(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The checks judge any text without a panic, and nothing they
        /// pass is over the limit.
        #[test]
        fn any_text_is_judged(text in ".{0,300}") {
            for (passed, limit) in [
                (event_type(&text).is_ok(), MAX_ID_BYTES),
                (state_key(&text).is_ok(), MAX_ID_BYTES),
                (opaque_id("x", &text).is_ok(), MAX_ID_BYTES),
                (user_id(&text).is_ok(), MAX_ID_BYTES),
                (room_id(&text).is_ok(), MAX_ID_BYTES),
                (event_id(&text).is_ok(), MAX_ID_BYTES),
                (room_alias(&text).is_ok(), MAX_ID_BYTES),
                (server_name(&text).is_ok(), usize::MAX),
            ] {
                prop_assert!(!passed || text.len() <= limit);
            }
        }

        #[test]
        fn id_shaped_text_is_judged(text in "[@!$#][a-z0-9._=/-]{0,20}(:[a-z0-9.-]{0,20}(:[0-9]{0,6})?)?") {
            let _ = (user_id(&text), room_id(&text), event_id(&text), room_alias(&text));
        }
    }
}
