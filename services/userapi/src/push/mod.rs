//! Push: a consumer of `roomserver.output` in one consumer group (a writer:
//! replicas split the rooms and share the database) keeps the push view of
//! each room (who is in it; its create, power levels, name and alias), runs
//! every new event through the push rules of the members with pushers
//! (the rules the syncapi counts notifications with), and queues what
//! notifies them for their pushers, each push with the user's badge
//! (`counts.unread`: what they were pushed for and have not read). It reads
//! `edu.receipt` too: a user's read receipt clears the room's unread
//! notifications and sends their pushers the new badge alone.
//! `delivery` sends the queue to the push gateways.

pub(crate) mod delivery;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use ganglion_api::consume::{HandleError, RecordHandler};
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::decode;
use ganglion_base::push_rules::{self, Notification};
use ganglion_base::sql;
use ganglion_log::Record;
use serde_json::{Map, Value, json};

use crate::UserApi;
use crate::storage::{Pusher, RoomField, Storage};

/// The consumer of `roomserver.output` that decides what to push.
pub(crate) struct PushConsumer {
    pub(crate) api: Arc<UserApi>,
    pub(crate) delivery: Arc<delivery::Delivery>,
    /// Events older than this (by the time they reached the log) update
    /// the view but push nothing: replaying the log pushes nothing stale.
    pub(crate) max_event_age_ms: i64,
}

#[async_trait]
impl RecordHandler for PushConsumer {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        self.handle_batch(std::slice::from_ref(record)).await
    }

    fn takes_batches(&self) -> bool {
        true
    }

    /// A batch of records in one transaction (one commit for many events
    /// of a busy room), then delivery woken once.
    async fn handle_batch(&self, records: &[Record]) -> Result<(), HandleError> {
        let inputs = records
            .iter()
            .map(|record| Ok((record.timestamp_ms, self.decode_input(record)?)))
            .collect::<Result<Vec<_>, HandleError>>()?;
        let mut tx = self
            .api
            .storage
            .db
            .pool
            .begin()
            .await
            .map_err(HandleError::storage)?;
        // Without a pusher anywhere there is nothing to push: the batch
        // only keeps the view (the common case of a server without
        // phones, asked once a batch rather than once an event).
        let any_pushers = Storage::any_pushers(&mut *tx)
            .await
            .map_err(HandleError::storage)?;
        let mut queued = false;
        for (timestamp_ms, input) in &inputs {
            let fresh = any_pushers
                && ganglion_base::clock::now_ms() - timestamp_ms <= self.max_event_age_ms;
            queued |= self.apply(&mut tx, input, fresh).await?;
        }
        tx.commit().await.map_err(HandleError::storage)?;
        if queued {
            self.delivery.wake();
        }
        Ok(())
    }
}

/// A record of either topic the consumer reads, decoded once.
enum Input {
    Output(topic_pb::RoomserverOutput),
    Receipt(topic_pb::ReceiptEdu),
}

impl PushConsumer {
    fn decode_input(&self, record: &Record) -> Result<Input, HandleError> {
        let permanent = |e: ganglion_api::ApiError| HandleError::Permanent(e.to_string());
        Ok(if record.topic == self.api.topics.edu_receipt {
            Input::Receipt(decode(&record.payload).map_err(permanent)?)
        } else {
            Input::Output(decode(&record.payload).map_err(permanent)?)
        })
    }

    /// One record: the view updated, what it notifies queued when `fresh`
    /// (true if anything was).
    async fn apply(
        &self,
        tx: &mut sql::Transaction,
        input: &Input,
        fresh: bool,
    ) -> Result<bool, HandleError> {
        let output = match input {
            Input::Receipt(receipt) => return self.receipt(tx, receipt, fresh).await,
            Input::Output(output) => output,
        };
        use topic_pb::roomserver_output::Kind;
        Ok(match &output.kind {
            Some(Kind::NewRoomEvent(event)) => self.new_event(tx, event, fresh).await?,
            Some(Kind::OutlierBatch(batch)) => {
                for json in &batch.events_json {
                    apply_state_event(tx, json).await?;
                }
                false
            }
            // An invite over federation to a room we are not in.
            Some(Kind::InviteReceived(invite)) if fresh => {
                self.push_event(tx, &invite.room_id, &invite.event_id, &invite.event_json)
                    .await?
            }
            _ => false,
        })
    }
}

impl PushConsumer {
    /// A read receipt of one of our users (`m.read` or `m.read.private`,
    /// not of a thread): what was unread in the room is read, and their
    /// pushers get the new badge (a push with counts only) if it changed.
    async fn receipt(
        &self,
        tx: &mut sql::Transaction,
        receipt: &topic_pb::ReceiptEdu,
        fresh: bool,
    ) -> Result<bool, HandleError> {
        let read = matches!(receipt.receipt_type.as_str(), "m.read" | "m.read.private")
            && matches!(receipt.thread_id.as_str(), "" | "main");
        if !read || self.api.local_part(&receipt.user_id).is_err() {
            return Ok(false);
        }
        let Some(unread) = Storage::mark_read(tx, &receipt.room_id, &receipt.user_id)
            .await
            .map_err(HandleError::storage)?
        else {
            return Ok(false);
        };
        if !fresh {
            return Ok(false);
        }
        let pushers = Storage::pushers_of_on(&mut **tx, &receipt.user_id)
            .await
            .map_err(HandleError::storage)?;
        // Keyed by the receipt, so a replayed record queues nothing twice.
        let key = format!("badge {} {}", receipt.room_id, receipt.event_id);
        let body = json!({
            "notification": {"counts": {"unread": unread}},
            "tweaks": {},
        });
        let now = ganglion_base::clock::now_ms();
        for pusher in &pushers {
            Storage::enqueue_push(tx, pusher.id, &key, &body.to_string(), now)
                .await
                .map_err(HandleError::storage)?;
        }
        Ok(!pushers.is_empty())
    }
}

/// The fields of an event push reads.
#[derive(serde::Deserialize)]
struct EventFields {
    event_id: Option<String>,
    room_id: Option<String>,
    #[serde(rename = "type")]
    event_type: String,
    state_key: Option<String>,
    sender: String,
    #[serde(default)]
    content: Value,
}

impl PushConsumer {
    /// Applies a new event's state change to the view and queues what it
    /// notifies (when `fresh`). True when something was queued.
    async fn new_event(
        &self,
        tx: &mut sql::Transaction,
        event: &topic_pb::NewRoomEvent,
        fresh: bool,
    ) -> Result<bool, HandleError> {
        let Ok(fields) = serde_json::from_slice::<EventFields>(&event.event_json) else {
            return Ok(false);
        };
        let Some(room_id) = fields.room_id.clone() else {
            return Ok(false);
        };
        if !event.historical && !event.outlier {
            for entry in &event.state_removed {
                if entry.event_type == "m.room.member" {
                    Storage::set_membership(tx, &room_id, &entry.state_key, "leave", None)
                        .await
                        .map_err(HandleError::storage)?;
                }
            }
            for entry in &event.state_added {
                if entry.event_type == "m.room.member" {
                    let displayname = (entry.event_id == event.event_id)
                        .then(|| fields.content["displayname"].as_str())
                        .flatten();
                    Storage::set_membership(
                        tx,
                        &room_id,
                        &entry.state_key,
                        &entry.membership,
                        displayname,
                    )
                    .await
                    .map_err(HandleError::storage)?;
                } else if entry.event_id == event.event_id && entry.state_key.is_empty() {
                    set_room_field(tx, &room_id, &fields, &event.event_json).await?;
                }
            }
        }
        if !fresh || event.historical || event.outlier {
            return Ok(false);
        }
        self.push_event(tx, &room_id, &event.event_id, &event.event_json)
            .await
    }

    /// Runs an event through the rules of the room's members with
    /// pushers (and of a local user it invites) and queues what notifies.
    async fn push_event(
        &self,
        tx: &mut sql::Transaction,
        room_id: &str,
        event_id: &str,
        event_json: &[u8],
    ) -> Result<bool, HandleError> {
        let Ok(mut fields) = serde_json::from_slice::<EventFields>(event_json) else {
            return Ok(false);
        };
        // A PDU of room version 3 on carries no ID: the output names it.
        fields.event_id = Some(event_id.to_owned());
        let Ok(json) = std::str::from_utf8(event_json) else {
            return Ok(false);
        };
        let storage = &self.api.storage;
        let mut pushers = storage
            .pushers_in_room(tx, room_id)
            .await
            .map_err(HandleError::storage)?;
        let invitee = (fields.event_type == "m.room.member"
            && fields.content["membership"] == "invite")
            .then_some(fields.state_key.as_deref())
            .flatten();
        if let Some(invitee) = invitee
            && self.api.local_part(invitee).is_ok()
            && !pushers.iter().any(|p| p.user_id == invitee)
        {
            pushers.extend(
                Storage::pushers_of_on(&mut **tx, invitee)
                    .await
                    .map_err(HandleError::storage)?,
            );
        }
        if pushers.is_empty() {
            return Ok(false);
        }
        let mut users: Vec<String> = pushers.iter().map(|p| p.user_id.clone()).collect();
        users.sort();
        users.dedup();
        // Their push rules and whom they ignore, in one read.
        let localparts: Vec<&str> = users
            .iter()
            .filter_map(|user| self.api.local_part(user).ok())
            .collect();
        let settings = storage
            .global_account_data_of(
                tx,
                &localparts,
                &[push_rules::ACCOUNT_DATA_TYPE, "m.ignored_user_list"],
            )
            .await
            .map_err(HandleError::storage)?;
        let mut custom = HashMap::new();
        let mut ignoring = Vec::new();
        for (localpart, data_type, content) in settings {
            let user = self.api.user_id(&localpart);
            if data_type == "m.ignored_user_list" {
                // Those who ignore the sender are never pushed for them.
                if serde_json::from_str::<Value>(&content)
                    .is_ok_and(|list| list["ignored_users"].get(&fields.sender).is_some())
                {
                    ignoring.push(user);
                }
            } else if let Ok(user_id) = ruma::UserId::parse(&user) {
                let rules = push_rules::effective(&user_id, Some(&content));
                custom.insert(user, Arc::new(rules));
            }
        }
        users.retain(|user| !ignoring.contains(user));
        let [create, power_levels, room_name, room_alias] = Storage::room_fields(tx, room_id)
            .await
            .map_err(HandleError::storage)?;
        let power_levels = if json.contains("m.mentions") || json.contains("@room") {
            push_rules::power_levels_context(create.as_deref(), power_levels.as_deref())
        } else {
            None
        };
        let member_count = Storage::joined_count(tx, room_id)
            .await
            .map_err(HandleError::storage)?;
        let notified =
            push_rules::evaluate(json, room_id, member_count, &users, &custom, power_levels).await;
        if notified.is_empty() {
            return Ok(false);
        }
        let sender_name = Storage::displayname_in(tx, room_id, &fields.sender)
            .await
            .map_err(HandleError::storage)?;
        let room = RoomShown {
            name: room_name,
            alias: room_alias,
            sender_name,
        };
        let now = ganglion_base::clock::now_ms();
        let mut queued = false;
        for notification in &notified {
            let unread = Storage::add_unread(tx, room_id, &notification.user_id)
                .await
                .map_err(HandleError::storage)?;
            for pusher in pushers.iter().filter(|p| p.user_id == notification.user_id) {
                let mut body = notification_body(pusher, &fields, room_id, &room, notification);
                body["notification"]["counts"] = json!({ "unread": unread });
                Storage::enqueue_push(tx, pusher.id, event_id, &body.to_string(), now)
                    .await
                    .map_err(HandleError::storage)?;
                queued = true;
            }
        }
        Ok(queued)
    }
}

/// What a push shows of the room and sender besides the event.
struct RoomShown {
    name: Option<String>,
    alias: Option<String>,
    sender_name: Option<String>,
}

/// A queued notification: the gateway request's `notification` (its
/// `devices` added when sent) and the tweaks of this user's rules.
fn notification_body(
    pusher: &Pusher,
    event: &EventFields,
    room_id: &str,
    room: &RoomShown,
    notified: &Notification,
) -> Value {
    let high = event.event_type == "m.room.encrypted"
        || notified.highlight
        || notified.tweaks.contains_key("sound");
    let mut notification = Map::new();
    notification.insert("event_id".into(), json!(event.event_id));
    notification.insert("room_id".into(), json!(room_id));
    notification.insert("prio".into(), json!(if high { "high" } else { "low" }));
    let format = serde_json::from_str::<Value>(&pusher.data)
        .ok()
        .and_then(|data| data["format"].as_str().map(str::to_owned));
    if format.as_deref() != Some("event_id_only") {
        notification.insert("type".into(), json!(event.event_type));
        notification.insert("sender".into(), json!(event.sender));
        if let Some(name) = &room.sender_name {
            notification.insert("sender_display_name".into(), json!(name));
        }
        if let Some(name) = &room.name {
            notification.insert("room_name".into(), json!(name));
        }
        if let Some(alias) = &room.alias {
            notification.insert("room_alias".into(), json!(alias));
        }
        if event.state_key.as_deref() == Some(notified.user_id.as_str()) {
            notification.insert("user_is_target".into(), json!(true));
        }
        if event.content.as_object().is_some_and(|c| !c.is_empty()) {
            notification.insert("content".into(), event.content.clone());
        }
    }
    json!({ "notification": notification, "tweaks": notified.tweaks })
}

/// A room field set by a state event that is itself part of the state now.
async fn set_room_field(
    tx: &mut sql::Transaction,
    room_id: &str,
    fields: &EventFields,
    event_json: &[u8],
) -> Result<(), HandleError> {
    let Some(field) = RoomField::of_type(&fields.event_type) else {
        return Ok(());
    };
    let value = match field {
        RoomField::Create | RoomField::PowerLevels => {
            Some(String::from_utf8_lossy(event_json).into_owned())
        }
        RoomField::Name => fields.content["name"].as_str().map(str::to_owned),
        RoomField::CanonicalAlias => fields.content["alias"].as_str().map(str::to_owned),
    };
    Storage::set_room_field(tx, room_id, field, value.as_deref())
        .await
        .map_err(HandleError::storage)
}

/// A state event of an outlier batch (the room's state as a join found
/// it): members and room fields as it says.
async fn apply_state_event(tx: &mut sql::Transaction, json: &[u8]) -> Result<(), HandleError> {
    let Ok(fields) = serde_json::from_slice::<EventFields>(json) else {
        return Ok(());
    };
    let (Some(room_id), Some(state_key)) = (&fields.room_id, &fields.state_key) else {
        return Ok(());
    };
    if fields.event_type == "m.room.member" {
        let Some(membership) = fields.content["membership"].as_str() else {
            return Ok(());
        };
        let displayname = fields.content["displayname"].as_str();
        return Storage::set_membership(tx, room_id, state_key, membership, displayname)
            .await
            .map_err(HandleError::storage);
    }
    if state_key.is_empty() {
        set_room_field(tx, room_id, &fields, json).await?;
    }
    Ok(())
}
