//! Turning stored PDUs into the client event format.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::storage::EventRow;

/// The fields of a stored PDU the client format keeps, borrowed from its
/// JSON without building a tree.
#[derive(Deserialize)]
struct PduFields<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    origin_server_ts: Option<i64>,
    #[serde(borrow)]
    sender: Option<&'a RawValue>,
    #[serde(borrow)]
    state_key: Option<&'a RawValue>,
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    redacts: Option<&'a RawValue>,
    #[serde(borrow)]
    room_id: Option<&'a RawValue>,
    #[serde(borrow)]
    unsigned: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct ClientEventOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a RawValue>,
    event_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin_server_ts: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redacts: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room_id: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_key: Option<&'a RawValue>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a RawValue>,
    unsigned: UnsignedOut<'a>,
}

#[derive(Serialize)]
struct UnsignedOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    age: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction_id: Option<&'a str>,
}

/// [`client_event`] as JSON text, written straight from the stored PDU's
/// text (the hot path of `/sync`, which renders thousands of events). The
/// same fields, in the same order as the tree would serialise them.
pub(crate) fn client_event_raw(
    row: &EventRow,
    with_room_id: bool,
    device_id: &str,
) -> Box<RawValue> {
    let fast = serde_json::from_str::<PduFields<'_>>(&row.json)
        .ok()
        // A redacted event's `redacted_because` is rendered in full.
        .filter(|pdu| pdu.unsigned.is_none())
        .and_then(|pdu| {
            let now = now_ms();
            let out = ClientEventOut {
                content: pdu.content,
                event_id: &row.event_id,
                origin_server_ts: pdu.origin_server_ts,
                redacts: pdu.redacts,
                room_id: pdu.room_id.filter(|_| with_room_id),
                sender: pdu.sender,
                state_key: pdu.state_key,
                kind: pdu.kind,
                unsigned: UnsignedOut {
                    age: pdu.origin_server_ts.map(|ts| (now - ts).max(0)),
                    transaction_id: (!row.transaction_id.is_empty() && row.device_id == device_id)
                        .then_some(row.transaction_id.as_str()),
                },
            };
            serde_json::value::to_raw_value(&out).ok()
        });
    fast.unwrap_or_else(|| to_raw(&client_event(row, with_room_id, device_id)))
}

/// A tree as JSON text (`null` should it not serialise, which a tree
/// built from JSON always does).
pub(crate) fn to_raw(value: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_default()
}

use ganglion_base::clock::now_ms;

/// The client format of `row`; `with_room_id` for `/messages` (sync omits it);
/// `device_id` adds `unsigned.transaction_id` for the device that sent it.
pub(crate) fn client_event(row: &EventRow, with_room_id: bool, device_id: &str) -> Value {
    let Ok(Value::Object(mut pdu)) = serde_json::from_str::<Value>(&row.json) else {
        return Value::Null;
    };
    let mut event = client_fields(&mut pdu, with_room_id, now_ms());
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(json: Value) -> EventRow {
        EventRow {
            offset: 1,
            room_id: "!r:hs".into(),
            sender: "@a:hs".into(),
            history_visibility: "shared".into(),
            event_id: "$e".into(),
            event_type: json["type"].as_str().unwrap_or_default().into(),
            state_key: json["state_key"].as_str().map(str::to_owned),
            json: json.to_string(),
            device_id: "DEV".into(),
            transaction_id: "txn1".into(),
        }
    }

    /// The text written straight from storage is the tree's, field for
    /// field (ages aside, which tick).
    #[test]
    fn raw_text_matches_the_tree() {
        let now = now_ms();
        for pdu in [
            json!({"type": "m.room.message", "sender": "@a:hs", "room_id": "!r:hs",
                   "origin_server_ts": now, "content": {"body": "hi", "n": [1, {"x": null}]},
                   "hashes": {"sha256": "x"}, "signatures": {}, "depth": 3,
                   "prev_events": [], "auth_events": []}),
            json!({"type": "m.room.member", "state_key": "@b:hs", "sender": "@b:hs",
                   "room_id": "!r:hs", "origin_server_ts": now,
                   "content": {"membership": "join"}}),
            json!({"type": "m.room.redaction", "redacts": "$x", "sender": "@a:hs",
                   "room_id": "!r:hs", "origin_server_ts": now, "content": {}}),
            json!({"type": "m.room.redaction", "sender": "@a:hs", "room_id": "!r:hs",
                   "origin_server_ts": now, "content": {},
                   "unsigned": {"redacted_because": {"type": "m.room.redaction",
                       "event_id": "$r", "sender": "@a:hs", "origin_server_ts": now,
                       "content": {"reason": "r"}}}}),
        ] {
            let row = row(pdu);
            for (with_room_id, device) in [(false, "DEV"), (true, "OTHER")] {
                let mut tree = client_event(&row, with_room_id, device);
                let raw = client_event_raw(&row, with_room_id, device);
                let mut from_raw: Value = serde_json::from_str(raw.get()).expect("JSON");
                for event in [&mut tree, &mut from_raw] {
                    let age = event["unsigned"]["age"].as_i64().expect("age");
                    assert!((0..60_000).contains(&age), "{event}");
                    event["unsigned"]["age"] = json!(0);
                    if let Some(because) = event["unsigned"].get_mut("redacted_because") {
                        because["unsigned"]["age"] = json!(0);
                    }
                }
                assert_eq!(from_raw, tree);
            }
        }
    }
}
