//! The records the roomserver writes to `roomserver.output`.

use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::{PAYLOAD_VERSION, encode};

use crate::events::Pdu;
use crate::head::StateDelta;

/// Who an event is echoed to and in which room version it was written.
pub(crate) struct OutputContext<'a> {
    pub(crate) room_version: &'a str,
    pub(crate) device_id: &'a str,
    pub(crate) transaction_id: &'a str,
}

/// An accepted event, with the change it made to the room's current state
/// and the forward extremities before and after it. History (backfilled)
/// carries the history visibility before it instead (`historical`).
pub(crate) fn new_room_event(
    pdu: &Pdu,
    context: &OutputContext<'_>,
    delta: &StateDelta,
    prev_extremities: &[String],
    extremities: &[String],
    historical: Option<&str>,
) -> Vec<u8> {
    let entry = |(kind, key): &(String, String), event: &Pdu| topic_pb::StateEntry {
        event_type: kind.clone(),
        state_key: key.clone(),
        event_id: event.event_id.to_string(),
        membership: if kind == "m.room.member" {
            crate::events::membership_of(event).unwrap_or_default()
        } else {
            String::new()
        },
    };
    encode(&topic_pb::RoomserverOutput {
        version: PAYLOAD_VERSION,
        kind: Some(topic_pb::roomserver_output::Kind::NewRoomEvent(
            topic_pb::NewRoomEvent {
                event_json: pdu.json.as_bytes().to_vec(),
                room_version: context.room_version.to_owned(),
                state_added: delta
                    .iter()
                    .filter_map(|(key, added, _)| added.as_ref().map(|e| entry(key, e)))
                    .collect(),
                state_removed: delta
                    .iter()
                    .filter_map(|(key, _, removed)| removed.as_ref().map(|e| entry(key, e)))
                    .collect(),
                device_id: context.device_id.to_owned(),
                transaction_id: context.transaction_id.to_owned(),
                depth: pdu.depth,
                event_id: pdu.event_id.to_string(),
                prev_forward_extremities: prev_extremities.to_vec(),
                forward_extremities: extremities.to_vec(),
                historical: historical.is_some(),
                outlier: false,
                history_visibility_before: historical.unwrap_or_default().to_owned(),
            },
        )),
    })
}

/// The most bytes of events one outlier batch carries (well under the
/// log's record size limits).
const OUTLIER_BATCH_BYTES: usize = 512 * 1024;

/// State events known only as outliers, announced as they are stored (a
/// join's state) or when they become current: views need their content.
/// As few records as the batch size allows.
pub(crate) fn outlier_batches(pdus: &[&Pdu], room_version: &str) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let empty = || topic_pb::OutlierBatch {
        room_version: room_version.to_owned(),
        ..Default::default()
    };
    let mut batch = empty();
    let mut bytes = 0;
    for pdu in pdus {
        if bytes + pdu.json.len() > OUTLIER_BATCH_BYTES && !batch.event_ids.is_empty() {
            records.push(outlier_record(std::mem::replace(&mut batch, empty())));
            bytes = 0;
        }
        bytes += pdu.json.len();
        batch.event_ids.push(pdu.event_id.to_string());
        batch.events_json.push(pdu.json.as_bytes().to_vec());
    }
    if !batch.event_ids.is_empty() {
        records.push(outlier_record(batch));
    }
    records
}

fn outlier_record(batch: topic_pb::OutlierBatch) -> Vec<u8> {
    encode(&topic_pb::RoomserverOutput {
        version: PAYLOAD_VERSION,
        kind: Some(topic_pb::roomserver_output::Kind::OutlierBatch(batch)),
    })
}

/// A redaction applied: downstream views replace their copy of the event.
pub(crate) fn redacted_event(redacted: &str, redaction: &str, redacted_json: &str) -> Vec<u8> {
    encode(&topic_pb::RoomserverOutput {
        version: PAYLOAD_VERSION,
        kind: Some(topic_pb::roomserver_output::Kind::RedactedEvent(
            topic_pb::RedactedEvent {
                redacted_event_id: redacted.to_owned(),
                redaction_event_id: redaction.to_owned(),
                redacted_json: redacted_json.as_bytes().to_vec(),
            },
        )),
    })
}

/// A user forgot a room they had left.
pub(crate) fn room_forgotten(room_id: &str, user_id: &str) -> Vec<u8> {
    encode(&topic_pb::RoomserverOutput {
        version: PAYLOAD_VERSION,
        kind: Some(topic_pb::roomserver_output::Kind::RoomForgotten(
            topic_pb::RoomForgotten {
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
            },
        )),
    })
}
