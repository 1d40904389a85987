//! Server-side key backups: what the keyserver accepts of a version and of
//! a room key, and how they go back out. The keys are encrypted by the
//! clients; the server keeps their `session_data` as given and compares
//! keys by their metadata (`storage/backups.rs`).

use ganglion_api::ApiError;
use ganglion_api::keys::KeyBackupData;
use ganglion_api::proto::keyserver as pb;

use crate::storage::backups::{RoomKey, Version};

/// The most bytes of a version's `auth_data`.
const MAX_AUTH_DATA: usize = 64 * 1024;
/// The most bytes of one key's JSON, and of a room or session ID.
const MAX_KEY: usize = 64 * 1024;
const MAX_ID: usize = 255;

/// A version as the API names it: a positive number; anything else is no
/// version (NotFound).
pub(crate) fn version_number(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|v| *v > 0 && !text.starts_with('+') && !text.starts_with('0'))
        .ok_or_else(|| ApiError::NotFound("Unknown backup version".into()))
}

/// A version's algorithm and `auth_data` (an object).
pub(crate) fn check_version_body(algorithm: &str, auth_data: &[u8]) -> Result<(), ApiError> {
    if algorithm.is_empty() || algorithm.len() > MAX_ID {
        return Err(ApiError::InvalidInput("algorithm is required".into()));
    }
    if auth_data.len() > MAX_AUTH_DATA {
        return Err(ApiError::TooLarge("auth_data".into()));
    }
    match serde_json::from_slice::<serde_json::Value>(auth_data) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        _ => Err(ApiError::InvalidInput("auth_data is an object".into())),
    }
}

/// A key to store, checked.
pub(crate) fn room_key(key: &pb::BackupKey) -> Result<RoomKey, ApiError> {
    if key.room_id.is_empty() || key.room_id.len() > MAX_ID {
        return Err(ApiError::InvalidInput("invalid room ID".into()));
    }
    if key.session_id.is_empty() || key.session_id.len() > MAX_ID {
        return Err(ApiError::InvalidInput("invalid session ID".into()));
    }
    if key.key_json.len() > MAX_KEY {
        return Err(ApiError::TooLarge("a room key".into()));
    }
    let data = KeyBackupData::parse(&key.key_json).map_err(ApiError::InvalidInput)?;
    let number = |n: u64| i64::try_from(n).map_err(|_| ApiError::InvalidInput("too big".into()));
    Ok(RoomKey {
        room_id: key.room_id.clone(),
        session_id: key.session_id.clone(),
        first_message_index: number(data.first_message_index)?,
        forwarded_count: number(data.forwarded_count)?,
        is_verified: data.is_verified,
        session_data: serde_json::Value::Object(data.session_data).to_string(),
    })
}

/// A stored key as the API gives it back.
pub(crate) fn key_pb(key: RoomKey) -> pb::BackupKey {
    let session_data: serde_json::Value =
        serde_json::from_str(&key.session_data).unwrap_or_else(|_| serde_json::json!({}));
    let json = serde_json::json!({
        "first_message_index": key.first_message_index,
        "forwarded_count": key.forwarded_count,
        "is_verified": key.is_verified,
        "session_data": session_data,
    });
    pb::BackupKey {
        room_id: key.room_id,
        session_id: key.session_id,
        key_json: json.to_string().into_bytes(),
    }
}

pub(crate) fn version_pb(version: Version) -> pb::BackupVersion {
    pb::BackupVersion {
        version: version.version.to_string(),
        algorithm: version.algorithm,
        auth_data_json: version.auth_data.into_bytes(),
        count: version.count,
        etag: version.etag.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_positive_numbers_written_plainly() {
        assert_eq!(version_number("7"), Ok(7));
        for bad in ["0", "-1", "+1", "01", "x", "", "99999999999999999999"] {
            assert!(version_number(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_are_checked() {
        let key = |json: &str| pb::BackupKey {
            room_id: "!r:x".into(),
            session_id: "s".into(),
            key_json: json.as_bytes().to_vec(),
        };
        let good = r#"{"first_message_index":1,"forwarded_count":0,"is_verified":true,"session_data":{"ciphertext":"c"}}"#;
        assert!(room_key(&key(good)).is_ok());
        for bad in [
            r#"{"forwarded_count":0,"is_verified":true,"session_data":{}}"#,
            r#"{"first_message_index":-1,"forwarded_count":0,"is_verified":true,"session_data":{}}"#,
            r#"{"first_message_index":1,"forwarded_count":0,"is_verified":"yes","session_data":{}}"#,
            r#"{"first_message_index":1,"forwarded_count":0,"is_verified":true,"session_data":"x"}"#,
            "not json",
        ] {
            assert!(room_key(&key(bad)).is_err(), "{bad}");
        }
    }
}
