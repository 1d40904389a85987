//! EDUs from other servers' transactions: typing notices and read
//! receipts of their users (never of ours or a third server's) go on
//! `edu.typing`, `edu.receipt` and `edu.presence`, as our own users' do,
//! for the syncapi;
//! device list updates on `federation.device_list_updates`, for the
//! keyserver.
//! A remote typing notice lapses after 30 s unless renewed.

use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::{PAYLOAD_VERSION, produce};
use serde_json::Value;

use crate::FederationService;
use crate::key_ring::now_ms;

/// How long a remote typing notice holds (the spec's 30 seconds).
const REMOTE_TYPING_MS: i64 = 30_000;

fn server_of(user_id: &str) -> Option<&str> {
    user_id.split_once(':').map(|(_, s)| s)
}

/// What an EDU becomes on our topics: (topic, key, record).
#[derive(Debug, PartialEq)]
pub(crate) enum Published {
    Typing(topic_pb::TypingEdu),
    Receipt(topic_pb::ReceiptEdu),
    DeviceList(topic_pb::DeviceKeyChange),
    Presence(topic_pb::PresenceEdu),
}

/// The records an EDU from `origin` stands for (none for kinds not taken
/// yet, or users not of `origin`).
pub(crate) fn records_of(origin: &str, edu: &Value, now: i64) -> Vec<Published> {
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
            })]
        }
        _ => Vec::new(),
    }
}

impl FederationService {
    /// Publishes what a transaction's EDUs stand for.
    pub(crate) async fn take_edus(&self, origin: &str, edus: &[Value]) {
        let now = now_ms();
        for edu in edus {
            for record in records_of(origin, edu, now) {
                let room_id = match &record {
                    Published::Typing(typing) => Some(&typing.room_id),
                    Published::Receipt(receipt) => Some(&receipt.room_id),
                    Published::DeviceList(_) | Published::Presence(_) => None,
                };
                if let Some(room_id) = room_id
                    && !self.acl_allows(room_id, origin).await.unwrap_or(false)
                {
                    continue;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
