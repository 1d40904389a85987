//! Turning stored PDUs into the client event format.

use serde_json::{Map, Value};

use crate::storage::EventRow;

/// The client format of `row`; `with_room_id` for `/messages` (sync omits it);
/// `device_id` adds `unsigned.transaction_id` for the device that sent it.
pub(crate) fn client_event(row: &EventRow, with_room_id: bool, device_id: &str) -> Value {
    let Ok(Value::Object(mut pdu)) = serde_json::from_str::<Value>(&row.json) else {
        return Value::Null;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let mut event = client_fields(&mut pdu, with_room_id, now);
    event.insert("event_id".into(), Value::String(row.event_id.clone()));
    let mut unsigned = event
        .remove("unsigned")
        .and_then(|u| match u {
            Value::Object(unsigned) => Some(unsigned),
            _ => None,
        })
        .unwrap_or_default();
    if !row.transaction_id.is_empty() && row.device_id == device_id {
        unsigned.insert(
            "transaction_id".into(),
            Value::String(row.transaction_id.clone()),
        );
    }
    event.insert("unsigned".into(), Value::Object(unsigned));
    Value::Object(event)
}

/// The client-format fields of a PDU, with `unsigned.age` and, for a
/// redacted event, `unsigned.redacted_because` (the redaction, stored
/// there as a PDU with its event ID) in the client format too.
fn client_fields(pdu: &mut Map<String, Value>, with_room_id: bool, now: i64) -> Map<String, Value> {
    let mut event = Map::new();
    for key in [
        "content",
        "origin_server_ts",
        "sender",
        "state_key",
        "type",
        "redacts",
        "event_id",
    ] {
        if let Some(value) = pdu.remove(key) {
            event.insert(key.to_owned(), value);
        }
    }
    if with_room_id && let Some(room_id) = pdu.remove("room_id") {
        event.insert("room_id".into(), room_id);
    }
    let mut unsigned = Map::new();
    if let Some(ts) = event.get("origin_server_ts").and_then(Value::as_i64) {
        unsigned.insert("age".into(), Value::from((now - ts).max(0)));
    }
    if let Some(Value::Object(mut because)) = pdu
        .get_mut("unsigned")
        .and_then(|u| u.as_object_mut())
        .and_then(|u| u.remove("redacted_because"))
    {
        unsigned.insert(
            "redacted_because".into(),
            Value::Object(client_fields(&mut because, true, now)),
        );
    }
    event.insert("unsigned".into(), Value::Object(unsigned));
    event
}
