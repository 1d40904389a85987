//! EDUs from other servers' transactions: typing notices and read
//! receipts of their users (never of ours or a third server's) go on
//! `edu.typing`, `edu.receipt` and `edu.presence`, as our own users' do,
//! for the syncapi;
//! device list and cross-signing key updates on
//! `federation.device_list_updates`, for the keyserver; to-device messages for our users on `edu.to_device`, one
//! record per recipient, `*` expanded to the recipient's devices.
//! Typing notices and receipts count only from a server with a user
//! joined to the room (and let in by its ACL).
//! A remote typing notice lapses after 30 s unless renewed.

use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::{PAYLOAD_VERSION, produce};
use ganglion_api::users::server_of;
use serde_json::Value;

use crate::FederationService;
use crate::key_ring::now_ms;

/// How long a remote typing notice holds (the spec's 30 seconds).
const REMOTE_TYPING_MS: i64 = 30_000;

/// What an EDU becomes on our topics: (topic, key, record).
#[derive(Debug, PartialEq)]
pub(crate) enum Published {
    Typing(topic_pb::TypingEdu),
    Receipt(topic_pb::ReceiptEdu),
    DeviceList(topic_pb::DeviceKeyChange),
    Presence(topic_pb::PresenceEdu),
    /// Devices may still be `*`.
    ToDevice(topic_pb::ToDeviceEdu),
}

impl Published {
    /// Whether every identifier in it is one the spec allows (grammar and
    /// the 255-byte limit): an EDU naming anything else is dropped here, so
    /// no value a view cannot store reaches a topic.
    fn well_formed(&self) -> bool {
        use ganglion_base::limits;
        let device = |id: &str| id == "*" || limits::opaque_id("device ID", id).is_ok();
        match self {
            Published::Typing(typing) => {
                limits::room_id(&typing.room_id).is_ok() && limits::user_id(&typing.user_id).is_ok()
            }
            Published::Receipt(receipt) => {
                limits::room_id(&receipt.room_id).is_ok()
                    && limits::user_id(&receipt.user_id).is_ok()
                    && limits::event_id(&receipt.event_id).is_ok()
                    && (receipt.thread_id.is_empty()
                        || limits::opaque_id("thread ID", &receipt.thread_id).is_ok())
            }
            Published::Presence(presence) => {
                limits::user_id(&presence.user_id).is_ok()
                    && presence
                        .status_msg
                        .as_ref()
                        .is_none_or(|m| m.len() <= MAX_STATUS_MSG_BYTES)
            }
            Published::DeviceList(change) => {
                limits::user_id(&change.user_id).is_ok()
                    && (change.signing_keys || device(&change.device_id))
            }
            Published::ToDevice(message) => {
                limits::user_id(&message.sender).is_ok()
                    && limits::user_id(&message.recipient).is_ok()
                    && limits::event_type(&message.event_type).is_ok()
                    && message.messages.iter().all(|m| device(&m.device_id))
            }
        }
    }
}

/// The longest presence status message taken from another server.
const MAX_STATUS_MSG_BYTES: usize = 4096;

/// The records an EDU from `origin` stands for (none for kinds not taken
/// yet, users not of `origin`, or identifiers the spec does not allow).
pub(crate) fn records_of(origin: &str, edu: &Value, now: i64) -> Vec<Published> {
    let mut records = read_edu(origin, edu, now);
    records.retain(|record| {
        let ok = record.well_formed();
        if !ok {
            tracing::debug!(origin, "dropped an EDU naming a malformed identifier");
        }
        ok
    });
    records
}

fn read_edu(origin: &str, edu: &Value, now: i64) -> Vec<Published> {
    let content = &edu["content"];
    match edu["edu_type"].as_str() {
        Some("m.typing") => {
            let (Some(room_id), Some(user_id)) =
                (content["room_id"].as_str(), content["user_id"].as_str())
            else {
                return Vec::new();
            };
            if server_of(user_id) != Some(origin) {
                return Vec::new();
            }
            let typing = content["typing"].as_bool().unwrap_or(false);
            vec![Published::Typing(topic_pb::TypingEdu {
                version: PAYLOAD_VERSION,
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
                typing,
                expires_at_ms: if typing { now + REMOTE_TYPING_MS } else { now },
            })]
        }
        Some("m.receipt") => {
            let mut out = Vec::new();
            for (room_id, kinds) in content.as_object().into_iter().flatten() {
                let Some(reads) = kinds["m.read"].as_object() else {
                    continue;
                };
                for (user_id, receipt) in reads {
                    if server_of(user_id) != Some(origin) {
                        continue;
                    }
                    let ts = receipt["data"]["ts"].as_i64().unwrap_or(now);
                    let thread_id = receipt["data"]["thread_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    for event_id in receipt["event_ids"].as_array().into_iter().flatten() {
                        let Some(event_id) = event_id.as_str() else {
                            continue;
                        };
                        out.push(Published::Receipt(topic_pb::ReceiptEdu {
                            version: PAYLOAD_VERSION,
                            room_id: room_id.clone(),
                            user_id: user_id.clone(),
                            receipt_type: "m.read".into(),
                            event_id: event_id.to_owned(),
                            thread_id: thread_id.clone(),
                            ts,
                        }));
                    }
                }
            }
            out
        }
        Some("m.presence") => content["push"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let user_id = entry["user_id"].as_str()?;
                if server_of(user_id) != Some(origin) {
                    return None;
                }
                let presence = entry["presence"].as_str()?;
                if !matches!(presence, "online" | "unavailable" | "offline") {
                    return None;
                }
                Some(Published::Presence(topic_pb::PresenceEdu {
                    version: PAYLOAD_VERSION,
                    user_id: user_id.to_owned(),
                    presence: presence.to_owned(),
                    status_msg: entry["status_msg"].as_str().map(str::to_owned),
                    last_active_ts: now - entry["last_active_ago"].as_i64().unwrap_or(0).max(0),
                    currently_active: entry["currently_active"].as_bool().unwrap_or(false),
                    automatic: false,
                }))
            })
            .collect(),
        Some("m.device_list_update") => {
            let (Some(user_id), Some(device_id)) =
                (content["user_id"].as_str(), content["device_id"].as_str())
            else {
                return Vec::new();
            };
            if server_of(user_id) != Some(origin) {
                return Vec::new();
            }
            let deleted = content["deleted"].as_bool().unwrap_or(false);
            vec![Published::DeviceList(topic_pb::DeviceKeyChange {
                version: PAYLOAD_VERSION,
                user_id: user_id.to_owned(),
                device_id: device_id.to_owned(),
                stream_id: content["stream_id"].as_i64().unwrap_or(0),
                deleted,
                device_keys_json: if deleted {
                    Vec::new()
                } else {
                    content["keys"].to_string().into_bytes()
                },
                signing_keys: false,
                seen_by: String::new(),
            })]
        }
        // Cross-signing keys are asked of the user's server when needed,
        // as device keys are: the change only tells our users to ask again.
        Some("m.signing_key_update") => {
            let Some(user_id) = content["user_id"].as_str() else {
                return Vec::new();
            };
            if server_of(user_id) != Some(origin)
                || !(content["master_key"].is_object() || content["self_signing_key"].is_object())
            {
                return Vec::new();
            }
            vec![Published::DeviceList(topic_pb::DeviceKeyChange {
                version: PAYLOAD_VERSION,
                user_id: user_id.to_owned(),
                signing_keys: true,
                ..Default::default()
            })]
        }
        Some("m.direct_to_device") => {
            let (Some(sender), Some(event_type), Some(message_id), Some(messages)) = (
                content["sender"].as_str(),
                content["type"].as_str(),
                content["message_id"].as_str(),
                content["messages"].as_object(),
            ) else {
                return Vec::new();
            };
            if server_of(sender) != Some(origin) || event_type.is_empty() {
                return Vec::new();
            }
            // Our own ID for it: a repeat from the origin is dropped.
            let message_id = {
                use sha2::{Digest, Sha256};
                format!(
                    "{:x}",
                    Sha256::digest(format!("{origin}\n{sender}\n{message_id}").as_bytes())
                )
            };
            messages
                .iter()
                .filter_map(|(recipient, by_device)| {
                    let messages: Vec<topic_pb::DeviceMessage> = by_device
                        .as_object()?
                        .iter()
                        .filter(|(_, content)| content.is_object())
                        .map(|(device_id, content)| topic_pb::DeviceMessage {
                            device_id: device_id.clone(),
                            content_json: content.to_string().into_bytes(),
                        })
                        .collect();
                    (!messages.is_empty()).then(|| {
                        Published::ToDevice(topic_pb::ToDeviceEdu {
                            version: PAYLOAD_VERSION,
                            sender: sender.to_owned(),
                            recipient: recipient.clone(),
                            event_type: event_type.to_owned(),
                            message_id: message_id.clone(),
                            messages,
                        })
                    })
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

impl FederationService {
    /// Publishes what a transaction's EDUs stand for.
    pub(crate) async fn take_edus(&self, origin: &str, edus: &[Value]) {
        let now = now_ms();
        // Per room, once a transaction: may `origin` speak there (a user
        // of it joined, and the ACL letting it)?
        let mut may_speak: std::collections::HashMap<String, bool> = Default::default();
        // Per user, once a transaction: is the user in a room with us?
        let mut shares_room: std::collections::HashMap<String, bool> = Default::default();
        for edu in edus {
            for record in records_of(origin, edu, now) {
                // Presence and device changes count only for users we share
                // a room with: a stranger cannot fill our streams.
                let about = match &record {
                    Published::Presence(presence) => Some(&presence.user_id),
                    Published::DeviceList(change) => Some(&change.user_id),
                    _ => None,
                };
                if let Some(user_id) = about {
                    let shared = match shares_room.get(user_id) {
                        Some(shared) => *shared,
                        None => {
                            let shared = self
                                .roomserver
                                .query_joined_rooms(
                                    ganglion_api::proto::roomserver::QueryJoinedRoomsRequest {
                                        user_id: user_id.clone(),
                                        ..Default::default()
                                    },
                                )
                                .await
                                .is_ok_and(|joined| !joined.room_ids.is_empty());
                            shares_room.insert(user_id.clone(), shared);
                            shared
                        }
                    };
                    if !shared {
                        tracing::debug!(origin, user_id, "an EDU about a user in no room with us");
                        continue;
                    }
                }
                let room_id = match &record {
                    Published::Typing(typing) => Some(&typing.room_id),
                    Published::Receipt(receipt) => Some(&receipt.room_id),
                    Published::DeviceList(_) | Published::Presence(_) | Published::ToDevice(_) => {
                        None
                    }
                };
                if let Some(room_id) = room_id {
                    let allowed = match may_speak.get(room_id) {
                        Some(allowed) => *allowed,
                        None => {
                            let joined = self
                                .server_in_room(room_id, origin)
                                .await
                                .is_ok_and(|(_, joined)| joined);
                            let allowed =
                                joined && self.acl_allows(room_id, origin).await.unwrap_or(false);
                            may_speak.insert(room_id.clone(), allowed);
                            allowed
                        }
                    };
                    if !allowed {
                        tracing::debug!(origin, room_id, "an EDU for a room its server is not in");
                        continue;
                    }
                }
                let written = match &record {
                    Published::Typing(typing) => {
                        produce(&*self.log, &self.topics.edu_typing, &typing.room_id, typing).await
                    }
                    Published::Receipt(receipt) => {
                        produce(
                            &*self.log,
                            &self.topics.edu_receipt,
                            &receipt.room_id,
                            receipt,
                        )
                        .await
                    }
                    Published::Presence(presence) => {
                        produce(
                            &*self.log,
                            &self.topics.edu_presence,
                            &presence.user_id,
                            presence,
                        )
                        .await
                    }
                    Published::ToDevice(message) => {
                        let Some(message) = self.to_our_devices(message.clone()).await else {
                            continue;
                        };
                        produce(
                            &*self.log,
                            &self.topics.edu_to_device,
                            &message.recipient,
                            &message,
                        )
                        .await
                    }
                    Published::DeviceList(change) => {
                        produce(
                            &*self.log,
                            &self.topics.federation_device_list_updates,
                            &change.user_id,
                            change,
                        )
                        .await
                    }
                };
                if let Err(error) = written {
                    tracing::warn!(origin, ?error, "an EDU was not published");
                }
            }
        }
    }
}

impl FederationService {
    /// A to-device message for one of our users, with `*` expanded to
    /// their devices; none if the recipient is not ours or has no device.
    async fn to_our_devices(
        &self,
        mut message: topic_pb::ToDeviceEdu,
    ) -> Option<topic_pb::ToDeviceEdu> {
        if server_of(&message.recipient) != Some(self.server_name.as_str()) {
            return None;
        }
        if let Some(all) = message.messages.iter().position(|m| m.device_id == "*") {
            let content_json = message.messages.remove(all).content_json;
            let devices = self
                .users
                .list_devices(ganglion_api::proto::userapi::ListDevicesRequest {
                    user_id: message.recipient.clone(),
                })
                .await
                .map_err(|error| tracing::warn!(?error, "a to-device message was not expanded"))
                .ok()?;
            message.messages = devices
                .device_ids
                .into_iter()
                .map(|device_id| topic_pb::DeviceMessage {
                    device_id,
                    content_json: content_json.clone(),
                })
                .collect();
        }
        (!message.messages.is_empty()).then_some(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn edus_naming_malformed_or_oversized_identifiers_are_dropped() {
        let long = "x".repeat(300);
        let edus = [
            json!({ "edu_type": "m.typing", "content": {
                "room_id": "!", "user_id": "@u:them", "typing": true } }),
            json!({ "edu_type": "m.typing", "content": {
                "room_id": format!("!{long}:a"), "user_id": "@u:them", "typing": true } }),
            json!({ "edu_type": "m.receipt", "content": { "!r:a": { "m.read": {
                "@u:them": { "event_ids": ["$e"], "data": { "ts": 1, "thread_id": long } } } } } }),
            json!({ "edu_type": "m.receipt", "content": { "!r:a": { "m.read": {
                "@u:them": { "event_ids": ["not-an-event"], "data": { "ts": 1 } } } } } }),
            json!({ "edu_type": "m.device_list_update", "content": {
                "user_id": "@u:them", "device_id": long, "stream_id": 1 } }),
            json!({ "edu_type": "m.presence", "content": { "push": [{
                "user_id": "@u:them", "presence": "online", "status_msg": "m".repeat(5000) }] } }),
            json!({ "edu_type": "m.direct_to_device", "content": {
                "sender": "@u:them", "type": long, "message_id": "m",
                "messages": { "@v:us": { "D": {} } } } }),
            json!({ "edu_type": "m.direct_to_device", "content": {
                "sender": "@u:them", "type": "m.x", "message_id": "m",
                "messages": { "@v:us": { long.clone(): {} } } } }),
            json!({ "edu_type": "m.direct_to_device", "content": {
                "sender": "@u:them", "type": "m.x", "message_id": "m",
                "messages": { "not a user": { "D": {} } } } }),
        ];
        for edu in edus {
            assert_eq!(records_of("them", &edu, 1), Vec::new(), "{edu}");
        }
        let fine = json!({ "edu_type": "m.receipt", "content": { "!r:a": { "m.read": {
            "@u:them": { "event_ids": ["$e"], "data": { "ts": 1, "thread_id": "$root" } } } } } });
        assert_eq!(records_of("them", &fine, 1).len(), 1);
    }

    #[test]
    fn typing_and_receipts_of_the_origins_users_only() {
        let typing = json!({ "edu_type": "m.typing", "content": {
            "room_id": "!r:a", "user_id": "@u:them", "typing": true } });
        let records = records_of("them", &typing, 1_000);
        assert_eq!(records.len(), 1);
        let Published::Typing(edu) = &records[0] else {
            panic!("typing")
        };
        assert!(edu.typing);
        assert_eq!(edu.expires_at_ms, 31_000);
        assert!(
            records_of("elsewhere", &typing, 1_000).is_empty(),
            "not its user"
        );

        let receipt = json!({ "edu_type": "m.receipt", "content": { "!r:a": { "m.read": {
            "@u:them": { "event_ids": ["$1", "$2"], "data": { "ts": 5, "thread_id": "main" } },
            "@x:other": { "event_ids": ["$3"], "data": { "ts": 6 } },
        } } } });
        let records = records_of("them", &receipt, 1_000);
        assert_eq!(records.len(), 2);
        let Published::Receipt(first) = &records[0] else {
            panic!("receipt")
        };
        assert_eq!(
            (first.event_id.as_str(), first.ts, first.thread_id.as_str()),
            ("$1", 5, "main")
        );
        assert!(records_of("them", &json!({ "edu_type": "m.presence" }), 0).is_empty());
    }

    #[test]
    fn signing_key_updates_of_the_origins_users_only() {
        let update = json!({ "edu_type": "m.signing_key_update", "content": {
            "user_id": "@u:them",
            "master_key": { "user_id": "@u:them", "usage": ["master"], "keys": { "ed25519:k": "k" } },
        } });
        let records = records_of("them", &update, 0);
        let [Published::DeviceList(change)] = records.as_slice() else {
            panic!("one change: {records:?}")
        };
        assert_eq!(change.user_id, "@u:them");
        assert!(change.signing_keys);
        assert!(change.device_id.is_empty());
        assert!(
            records_of("elsewhere", &update, 0).is_empty(),
            "not its user"
        );
        let empty =
            json!({ "edu_type": "m.signing_key_update", "content": { "user_id": "@u:them" } });
        assert!(records_of("them", &empty, 0).is_empty(), "no keys");
    }

    #[test]
    fn to_device_messages_of_the_origins_users_one_record_per_recipient() {
        let edu = json!({ "edu_type": "m.direct_to_device", "content": {
            "sender": "@s:them", "type": "m.room_key_request", "message_id": "m1",
            "messages": {
                "@a:us": { "DEV": { "k": 1 }, "*": { "k": 2 }, "BAD": "not an object" },
                "@b:us": { "*": { "k": 3 } },
                "@c:us": {},
            } } });
        let records = records_of("them", &edu, 0);
        assert_eq!(records.len(), 2, "{records:?}");
        let Published::ToDevice(first) = &records[0] else {
            panic!("to-device")
        };
        assert_eq!(first.recipient, "@a:us");
        assert_eq!(first.event_type, "m.room_key_request");
        let mut devices: Vec<&str> = first
            .messages
            .iter()
            .map(|m| m.device_id.as_str())
            .collect();
        devices.sort_unstable();
        assert_eq!(devices, ["*", "DEV"]);
        let Published::ToDevice(second) = &records[1] else {
            panic!("to-device")
        };
        assert_eq!(first.message_id, second.message_id, "one send, one ID");
        // The same ID again from the origin; another origin's is another.
        let Published::ToDevice(again) = &records_of("them", &edu, 5)[0] else {
            panic!("to-device")
        };
        assert_eq!(again.message_id, first.message_id);
        assert!(records_of("elsewhere", &edu, 0).is_empty(), "not its user");
        let mut no_type = edu.clone();
        no_type["content"]["type"] = json!("");
        assert!(records_of("them", &no_type, 0).is_empty());
    }
}
