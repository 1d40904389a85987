//! `roomserver.output`: store each event and its state change, a batch of
//! records per transaction, then wake waiting `/sync` requests.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use ganglion_api::consume::{HandleError, RecordHandler};
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::decode;
use ganglion_log::Record;

use crate::SyncService;
use crate::internal_events::EVENTS_STORED;
use crate::storage::{Batch, EventRow, HistoryEvent, NewEvent};
use crate::sync_token::Stream;

pub(crate) struct OutputConsumer {
    pub(crate) service: Arc<SyncService>,
}

/// The fields the view indexes, borrowed from the event's JSON where they
/// can be and owned where they cannot (a string with escapes: `"`, `\`,
/// control characters, or characters written as `\u` escapes), so every
/// event the roomserver accepted can be stored.
#[derive(serde::Deserialize)]
struct EventFields<'a> {
    #[serde(borrow)]
    room_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    state_key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sender: Cow<'a, str>,
    #[serde(default)]
    content: Content,
}

/// The parts of the content the view indexes.
#[derive(serde::Deserialize, Default)]
struct Content {
    #[serde(default)]
    membership: Option<String>,
    #[serde(rename = "m.relates_to", default)]
    relates_to: Option<RelatesTo>,
}

#[derive(serde::Deserialize)]
struct RelatesTo {
    event_id: Option<String>,
    rel_type: Option<String>,
}

impl OutputConsumer {
    /// The local users the event notifies: the room's joined members and
    /// the target of an invite, but those who ignore its sender.
    async fn notified(
        &self,
        batch: &mut Batch,
        (room_id, sender): (&str, &str),
        json: &str,
        state_key: Option<&str>,
        membership: Option<&str>,
    ) -> Result<crate::notifications::Notified, HandleError> {
        let server_name = &self.service.server_name;
        let (mut members, joined) = batch
            .local_members(room_id, server_name)
            .await
            .map_err(HandleError::storage)?;
        if membership == Some("invite")
            && let Some(invitee) = state_key
            && invitee.ends_with(&format!(":{server_name}"))
            && !members.iter().any(|user| user == invitee)
        {
            members.push(invitee.to_owned());
        }
        let ignoring = self
            .service
            .ignored_users
            .of(&self.service.storage, &members)
            .await
            .map_err(HandleError::storage)?;
        members.retain(|member| !ignoring.get(member).is_some_and(|i| i.contains(sender)));
        // Only an intentional mention of the room asks who may notify it.
        let power_levels = if json.contains("\"m.mentions\"") {
            let (create, levels) = batch
                .create_and_power_levels(room_id)
                .await
                .map_err(HandleError::storage)?;
            ganglion_base::push_rules::power_levels_context(create.as_deref(), levels.as_deref())
        } else {
            None
        };
        let custom = self
            .service
            .push_rules
            .of(&self.service.storage, &members)
            .await
            .map_err(HandleError::storage)?;
        Ok(ganglion_base::push_rules::evaluate(
            json,
            room_id,
            joined,
            &members,
            &custom,
            power_levels,
        )
        .await)
    }
}

/// Whom to wake once a record's transaction commits.
enum Wake {
    Nobody,
    /// The room's members, and the user whose membership changed (user,
    /// membership).
    Room {
        room_id: String,
        membership: Option<(String, String)>,
    },
    /// One user (an invite, a knock, a forgotten room).
    User(String),
}

impl OutputConsumer {
    /// Adds one record's changes to `batch`.
    async fn apply(&self, batch: &mut Batch, record: &Record) -> Result<Wake, HandleError> {
        let output: topic_pb::RoomserverOutput =
            decode(&record.payload).map_err(|e| HandleError::Permanent(e.to_string()))?;
        let new = match output.kind {
            Some(topic_pb::roomserver_output::Kind::NewRoomEvent(new)) => new,
            Some(topic_pb::roomserver_output::Kind::RedactedEvent(redacted)) => {
                let json = std::str::from_utf8(&redacted.redacted_json)
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                let redaction = batch
                    .event(&redacted.redaction_event_id)
                    .await
                    .map_err(HandleError::storage)?;
                let json = with_redacted_because(json, redaction.as_ref());
                batch
                    .apply_redaction(&redacted.redacted_event_id, &json)
                    .await
                    .map_err(HandleError::storage)?;
                return Ok(Wake::Nobody);
            }
            Some(topic_pb::roomserver_output::Kind::InviteReceived(invite)) => {
                let json = std::str::from_utf8(&invite.event_json)
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                let event: serde_json::Value = serde_json::from_str(json)
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                let (Some(invitee), Some(sender)) =
                    (event["state_key"].as_str(), event["sender"].as_str())
                else {
                    return Err(HandleError::Permanent("an invite without invitee".into()));
                };
                let stripped: Vec<serde_json::Value> = invite
                    .invite_room_state_json
                    .iter()
                    .filter_map(|e| serde_json::from_slice(e).ok())
                    .collect();
                batch
                    .apply_remote_membership(
                        (record.partition, record.offset),
                        (&invite.room_id, &invite.event_id),
                        (invitee, sender),
                        json,
                        (
                            "invite",
                            Some(&serde_json::Value::from(stripped).to_string()),
                        ),
                    )
                    .await
                    .map_err(HandleError::storage)?;
                return Ok(Wake::User(invitee.to_owned()));
            }
            Some(topic_pb::roomserver_output::Kind::RemoteMembership(changed)) => {
                let json = std::str::from_utf8(&changed.event_json)
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                let stripped = (changed.membership == "knock").then(|| {
                    let events: Vec<serde_json::Value> = changed
                        .stripped_state_json
                        .iter()
                        .filter_map(|e| serde_json::from_slice(e).ok())
                        .collect();
                    serde_json::Value::from(events).to_string()
                });
                let membership = if stripped.is_some() { "knock" } else { "leave" };
                batch
                    .apply_remote_membership(
                        (record.partition, record.offset),
                        (&changed.room_id, &changed.event_id),
                        (&changed.user_id, &changed.user_id),
                        json,
                        (membership, stripped.as_deref()),
                    )
                    .await
                    .map_err(HandleError::storage)?;
                return Ok(Wake::User(changed.user_id));
            }
            Some(topic_pb::roomserver_output::Kind::OutlierBatch(outliers)) => {
                let room_id = String::from_utf8(record.key.clone())
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                let mut events = Vec::with_capacity(outliers.event_ids.len());
                for (event_id, json) in outliers.event_ids.iter().zip(&outliers.events_json) {
                    let json = std::str::from_utf8(json)
                        .map_err(|e| HandleError::Permanent(e.to_string()))?;
                    let fields: EventFields<'_> = serde_json::from_str(json)
                        .map_err(|e| HandleError::Permanent(e.to_string()))?;
                    events.push((
                        event_id.clone(),
                        fields.event_type.into_owned(),
                        fields.state_key.map(Cow::into_owned),
                        fields.sender.into_owned(),
                        json.to_owned(),
                    ));
                }
                batch
                    .apply_outliers(record.partition, &room_id, &events)
                    .await
                    .map_err(HandleError::storage)?;
                return Ok(Wake::Nobody);
            }
            Some(topic_pb::roomserver_output::Kind::RoomForgotten(forgotten)) => {
                batch
                    .apply_forget(record.offset, &forgotten.room_id, &forgotten.user_id)
                    .await
                    .map_err(HandleError::storage)?;
                return Ok(Wake::User(forgotten.user_id));
            }
            // Kinds this version does not know: nothing to store.
            _ => return Ok(Wake::Nobody),
        };
        let json = std::str::from_utf8(&new.event_json)
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        let fields: EventFields<'_> =
            serde_json::from_str(json).map_err(|e| HandleError::Permanent(e.to_string()))?;
        let room_id = match &fields.room_id {
            Some(room_id) => room_id.to_string(),
            // Version 12 create events carry no room_id: it is the record key.
            None => String::from_utf8(record.key.clone())
                .map_err(|e| HandleError::Permanent(e.to_string()))?,
        };
        let event_id = match &fields.event_id {
            // Room versions 1 and 2 carry the ID in the PDU.
            Some(id) => id.to_string(),
            None => new.event_id.clone(),
        };
        if event_id.is_empty() {
            return Err(HandleError::Permanent("event without ID".into()));
        }
        let relates_to = fields
            .content
            .relates_to
            .as_ref()
            .and_then(|r| Some((r.event_id.as_deref()?, r.rel_type.as_deref()?)));
        if new.historical {
            // Backfilled: older than anything live, new to no one.
            batch
                .apply_history(&HistoryEvent {
                    partition: record.partition,
                    room_id: &room_id,
                    event_id: &event_id,
                    event_type: &fields.event_type,
                    state_key: fields.state_key.as_deref(),
                    sender: &fields.sender,
                    json,
                    depth: new.depth,
                    history_visibility: &new.history_visibility_before,
                    relates_to,
                })
                .await
                .map_err(HandleError::storage)?;
            return Ok(Wake::Nobody);
        }
        if new.outlier {
            // State another server's room brought along: kept to show the
            // room's state, outside every timeline.
            let event = (
                event_id,
                fields.event_type.into_owned(),
                fields.state_key.map(Cow::into_owned),
                fields.sender.into_owned(),
                json.to_owned(),
            );
            batch
                .apply_outliers(record.partition, &room_id, &[event])
                .await
                .map_err(HandleError::storage)?;
            return Ok(Wake::Nobody);
        }
        let entries = |list: &[topic_pb::StateEntry]| {
            list.iter()
                .map(|s| {
                    (
                        s.event_type.clone(),
                        s.state_key.clone(),
                        s.event_id.clone(),
                        s.membership.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let membership = if fields.event_type == "m.room.member" {
            fields.content.membership.clone()
        } else {
            None
        };
        let notified = self
            .notified(
                batch,
                (&room_id, &fields.sender),
                json,
                fields.state_key.as_deref(),
                membership.as_deref(),
            )
            .await?;
        let thread_id = match &fields.content.relates_to {
            Some(RelatesTo {
                event_id: Some(root),
                rel_type: Some(kind),
            }) if kind == "m.thread" => root.clone(),
            _ => "main".to_owned(),
        };
        batch
            .apply_event(&NewEvent {
                partition: record.partition,
                offset: record.offset,
                room_id: &room_id,
                event_id: &event_id,
                event_type: &fields.event_type,
                state_key: fields.state_key.as_deref(),
                sender: &fields.sender,
                membership: membership.as_deref(),
                json,
                device_id: &new.device_id,
                transaction_id: &new.transaction_id,
                relates_to,
                state_removed: entries(&new.state_removed),
                state_added: entries(&new.state_added),
                notified: &notified,
                thread_id: &thread_id,
            })
            .await
            .map_err(HandleError::storage)?;
        EVENTS_STORED.with_label_values::<&str>(&[]).inc();
        Ok(Wake::Room {
            membership: fields.state_key.map(Cow::into_owned).zip(membership),
            room_id,
        })
    }
}

/// Records are applied in batches, one transaction each: a view catching
/// up commits hundreds of records at once, one that keeps up one at a time.
#[async_trait]
impl RecordHandler for OutputConsumer {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        self.handle_batch(std::slice::from_ref(record)).await
    }

    fn takes_batches(&self) -> bool {
        true
    }

    async fn handle_batch(&self, records: &[Record]) -> Result<(), HandleError> {
        let mut batch = self
            .service
            .storage
            .batch()
            .await
            .map_err(HandleError::storage)?;
        let mut wakes = Vec::with_capacity(records.len());
        for record in records {
            wakes.push(self.apply(&mut batch, record).await?);
            batch.consumed(Stream::Room, record.partition, record.offset);
        }
        batch.commit().await.map_err(HandleError::storage)?;
        self.service.advance_all(Stream::Room, records);
        for wake in wakes {
            match wake {
                Wake::Nobody => {}
                Wake::Room {
                    room_id,
                    membership,
                } => self.service.notifier.room_event(
                    &room_id,
                    membership
                        .as_ref()
                        .map(|(user, m)| (user.as_str(), m.as_str())),
                ),
                Wake::User(user_id) => self.service.notifier.wake_users([user_id.as_str()]),
            }
        }
        Ok(())
    }

    async fn dead_lettered(&self, record: &Record) -> Result<(), HandleError> {
        self.service
            .storage
            .advance_position(Stream::Room, record.partition, record.offset)
            .await
            .map_err(HandleError::storage)?;
        self.service.advance(Stream::Room, record);
        Ok(())
    }
}

/// The redacted copy of an event, with the redaction that caused it in
/// `unsigned.redacted_because` (as the PDU, with its event ID) for the
/// client format to show.
fn with_redacted_because(redacted_json: &str, redaction: Option<&EventRow>) -> String {
    let (Some(redaction), Ok(serde_json::Value::Object(mut pdu))) = (
        redaction,
        serde_json::from_str::<serde_json::Value>(redacted_json),
    ) else {
        return redacted_json.to_owned();
    };
    let Ok(serde_json::Value::Object(mut because)) =
        serde_json::from_str::<serde_json::Value>(&redaction.json)
    else {
        return redacted_json.to_owned();
    };
    because.insert("event_id".into(), redaction.event_id.clone().into());
    let unsigned = pdu
        .entry("unsigned")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(unsigned) = unsigned.as_object_mut() {
        unsigned.insert("redacted_because".into(), because.into());
    }
    serde_json::Value::Object(pdu).to_string()
}
