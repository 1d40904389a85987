//! Turning stored PDUs into the client event format.

use serde_json::{Map, Value};

use crate::storage::EventRow;

/// The client format of `row`; `with_room_id` for `/messages` (sync omits it);
/// `device_id` adds `unsigned.transaction_id` for the device that sent it.
pub(crate) fn client_event(row: &EventRow, with_room_id: bool, device_id: &str) -> Value {
    let Ok(Value::Object(pdu)) = serde_json::from_str::<Value>(&row.json) else {
        return Value::Null;
    };
    let mut event = Map::new();
    for key in [
        "content",
        "origin_server_ts",
        "sender",
        "state_key",
        "type",
        "redacts",
    ] {
        if let Some(value) = pdu.get(key) {
            event.insert(key.to_owned(), value.clone());
        }
    }
    if with_room_id && let Some(room_id) = pdu.get("room_id") {
        event.insert("room_id".into(), room_id.clone());
    }
    event.insert("event_id".into(), Value::String(row.event_id.clone()));
    let mut unsigned = Map::new();
    if let Some(ts) = pdu.get("origin_server_ts").and_then(Value::as_i64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(ts);
        unsigned.insert("age".into(), Value::from((now - ts).max(0)));
    }
    if !row.transaction_id.is_empty() && row.device_id == device_id {
        unsigned.insert(
            "transaction_id".into(),
            Value::String(row.transaction_id.clone()),
        );
    }
    event.insert("unsigned".into(), Value::Object(unsigned));
    Value::Object(event)
}
