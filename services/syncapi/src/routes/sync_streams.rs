//! The parts of a `/sync` response that come from the ephemeral and
//! per-user streams: typing and receipts per room (`ephemeral`), account
//! data (global and per room), presence and to-device messages. Each is
//! read once per response for all the user's rooms, and cut to the
//! token window `[since, current)` of its stream.

use std::collections::HashMap;

use ganglion_api::proto::userapi::Device;
use ganglion_base::MatrixError;
use ganglion_base::push_rules;
use serde_json::{Map, Value, json};

use crate::SyncService;
use crate::filter::SyncFilter;
use crate::presence::{now_ms, presence_event};
use crate::storage::At;
use crate::sync_token::{Stream, SyncToken};

/// The most to-device messages one response carries; the rest wait for
/// the next.
const TO_DEVICE_LIMIT: u32 = 100;

/// What the streams add to one response.
#[derive(Default)]
pub(crate) struct Streams {
    /// Per joined room: `m.typing` and `m.receipt` events.
    ephemeral: HashMap<String, Vec<Value>>,
    /// Per room: account data events.
    room_account_data: HashMap<String, Vec<Value>>,
    pub(crate) account_data: Vec<Value>,
    pub(crate) presence: Vec<Value>,
    pub(crate) to_device: Vec<Value>,
    /// Where the next response's to-device messages start, when this one
    /// could not carry all of them: (partition, offset).
    pub(crate) to_device_next: Option<(u32, u64)>,
}

impl Streams {
    pub(crate) fn ephemeral(&mut self, room_id: &str) -> Vec<Value> {
        self.ephemeral.remove(room_id).unwrap_or_default()
    }

    pub(crate) fn room_account_data(&mut self, room_id: &str) -> Vec<Value> {
        self.room_account_data.remove(room_id).unwrap_or_default()
    }

    /// Whether the room has ephemeral events or account data to send.
    pub(crate) fn has_room_updates(&self, room_id: &str) -> bool {
        self.ephemeral.contains_key(room_id) || self.room_account_data.contains_key(room_id)
    }

    /// Whether anything outside the rooms changed.
    pub(crate) fn has_global_updates(&self) -> bool {
        !(self.account_data.is_empty() && self.presence.is_empty() && self.to_device.is_empty())
    }
}

/// Whether a row written at `at` on `stream` falls in `[since, current)`.
fn in_window(since: Option<&SyncToken>, current: &SyncToken, stream: Stream, at: At) -> bool {
    at.offset < current.stream_offset(stream, at.partition)
        && since.is_none_or(|s| at.offset >= s.stream_offset(stream, at.partition))
}

/// Whether `stream` may hold anything for the window: always on an
/// initial sync; on an incremental one only if the stream moved since the
/// token (each reader would otherwise read rows only to cut them all).
fn moved(since: Option<&SyncToken>, current: &SyncToken, stream: Stream) -> bool {
    since.is_none_or(|since| current.moved_past(since, stream))
}

/// The lowest offset of `stream` in `since` (rows read from it are then
/// cut exactly by [`in_window`]).
fn lowest(since: Option<&SyncToken>, stream: Stream) -> u64 {
    since.map(|s| s.lowest(stream)).unwrap_or(0)
}

/// Everything the streams add to a `/sync` response.
pub(crate) async fn collect(
    service: &SyncService,
    device: &Device,
    since: Option<&SyncToken>,
    current: &SyncToken,
    filter: &SyncFilter,
) -> Result<Streams, MatrixError> {
    let mut out = Streams::default();
    ephemeral(&mut out, service, &device.user_id, since, current, filter).await?;
    if moved(since, current, Stream::AccountData) {
        account_data(&mut out, service, &device.user_id, since, current, filter).await?;
    }
    if moved(since, current, Stream::Presence) {
        presence(&mut out, service, &device.user_id, since, current, filter).await?;
    }
    let acked = since
        .map(|s| s.stream_offset(Stream::ToDevice, own_partition(service, &device.user_id)))
        .unwrap_or(0);
    to_device(&mut out, service, device, acked, current).await?;
    Ok(out)
}

/// The user's partition of the per-user topics (account data, to-device).
pub(crate) fn own_partition(service: &SyncService, user_id: &str) -> u32 {
    ganglion_log::partition_for_key(user_id.as_bytes(), service.partitions as u32)
}

/// Typing and receipts in the user's rooms: the changes in the window, or
/// on an initial sync who types now and every receipt.
pub(crate) async fn ephemeral(
    out: &mut Streams,
    service: &SyncService,
    user_id: &str,
    since: Option<&SyncToken>,
    current: &SyncToken,
    filter: &SyncFilter,
) -> Result<(), MatrixError> {
    if moved(since, current, Stream::Typing) {
        for room in service
            .storage
            .typing_for(user_id, lowest(since, Stream::Typing), now_ms())
            .await?
        {
            let wanted = if since.is_some() {
                in_window(since, current, Stream::Typing, room.changed)
            } else {
                // An initial sync shows who types now.
                !room.users.is_empty()
            };
            if wanted && filter.ephemeral_matches(&room.room_id, "m.typing") {
                out.ephemeral.entry(room.room_id).or_default().push(json!({
                    "type": "m.typing",
                    "content": { "user_ids": room.users },
                }));
            }
        }
    }
    if !moved(since, current, Stream::Receipt) {
        return Ok(());
    }
    let mut receipts: HashMap<String, Map<String, Value>> = HashMap::new();
    for receipt in service
        .storage
        .receipts_for(user_id, lowest(since, Stream::Receipt))
        .await?
    {
        if !in_window(since, current, Stream::Receipt, receipt.at)
            || !filter.ephemeral_matches(&receipt.room_id, "m.receipt")
        {
            continue;
        }
        let mut entry = json!({ "ts": receipt.ts });
        if !receipt.thread_id.is_empty() {
            entry["thread_id"] = json!(receipt.thread_id);
        }
        let content = receipts.entry(receipt.room_id).or_default();
        let by_event = content.entry(receipt.event_id).or_insert_with(|| json!({}));
        by_event[receipt.receipt_type.as_str()][receipt.user_id.as_str()] = entry;
    }
    for (room_id, content) in receipts {
        out.ephemeral
            .entry(room_id)
            .or_default()
            .push(json!({ "type": "m.receipt", "content": content }));
    }
    Ok(())
}

/// Global and per-room account data written in the window.
pub(crate) async fn account_data(
    out: &mut Streams,
    service: &SyncService,
    user_id: &str,
    since: Option<&SyncToken>,
    current: &SyncToken,
    filter: &SyncFilter,
) -> Result<(), MatrixError> {
    let own_partition = own_partition(service, user_id);
    let from = since
        .map(|s| s.stream_offset(Stream::AccountData, own_partition))
        .unwrap_or(0);
    let to = current.stream_offset(Stream::AccountData, own_partition);
    let mut push_rules_sent = false;
    for row in service.storage.account_data_for(user_id, from, to).await? {
        let content: Value =
            if row.room_id.is_empty() && row.data_type == push_rules::ACCOUNT_DATA_TYPE {
                // As stored, on top of this version's default rules.
                push_rules_sent = true;
                push_rules_content(user_id, Some(&row.content))
            } else {
                serde_json::from_str(&row.content).unwrap_or_else(|_| json!({}))
            };
        let event = json!({ "type": row.data_type, "content": content });
        if row.room_id.is_empty() {
            if filter.account_data_matches(&row.data_type) {
                out.account_data.push(event);
            }
        } else if filter.room_account_data_matches(&row.room_id, &row.data_type) {
            out.room_account_data
                .entry(row.room_id)
                .or_default()
                .push(event);
        }
    }
    // A first sync carries the user's push rules, the server's defaults
    // until they change one.
    if since.is_none()
        && !push_rules_sent
        && filter.account_data_matches(push_rules::ACCOUNT_DATA_TYPE)
    {
        out.account_data.push(json!({
            "type": push_rules::ACCOUNT_DATA_TYPE,
            "content": push_rules_content(user_id, None),
        }));
    }
    Ok(())
}

fn push_rules_content(user_id: &str, stored: Option<&str>) -> Value {
    match ruma::UserId::parse(user_id) {
        Ok(user_id) => push_rules::content(&push_rules::effective(&user_id, stored)),
        Err(_) => json!({}),
    }
}

/// Presence changes of the users the user shares a room with.
pub(crate) async fn presence(
    out: &mut Streams,
    service: &SyncService,
    user_id: &str,
    since: Option<&SyncToken>,
    current: &SyncToken,
    filter: &SyncFilter,
) -> Result<(), MatrixError> {
    let now = now_ms();
    for row in service
        .storage
        .presence_for(user_id, lowest(since, Stream::Presence))
        .await?
    {
        if in_window(since, current, Stream::Presence, row.at)
            && filter.presence_matches(&row.user_id)
        {
            out.presence.push(presence_event(&row, now));
        }
    }
    Ok(())
}

/// The presence of `users` as it is now, for those not already in `out`.
pub(crate) async fn presence_of(
    out: &mut Streams,
    service: &SyncService,
    users: &std::collections::BTreeSet<String>,
    filter: &SyncFilter,
) -> Result<(), MatrixError> {
    let now = now_ms();
    for user in users {
        let present = out.presence.iter().any(|e| e["sender"] == user.as_str());
        if present || !filter.presence_matches(user) {
            continue;
        }
        if let Some(row) = service.storage.presence(user).await? {
            out.presence.push(presence_event(&row, now));
        }
    }
    Ok(())
}

/// The device's to-device messages after `acked` (an offset of the user's
/// partition, which the device acknowledged: those before it are deleted).
pub(crate) async fn to_device(
    out: &mut Streams,
    service: &SyncService,
    device: &Device,
    acked: u64,
    current: &SyncToken,
) -> Result<(), MatrixError> {
    let own_partition = own_partition(service, &device.user_id);
    let to = current.stream_offset(Stream::ToDevice, own_partition);
    let messages = service
        .storage
        .to_device_inbox(
            &device.user_id,
            &device.device_id,
            acked,
            to,
            TO_DEVICE_LIMIT,
        )
        .await?;
    if messages.len() as u32 == TO_DEVICE_LIMIT
        && let Some(last) = messages.last()
    {
        out.to_device_next = Some((own_partition, last.offset + 1));
    }
    out.to_device = messages.into_iter().map(to_device_event).collect();
    Ok(())
}

/// A to-device message as `/sync` (and a dehydrated device's batches)
/// show it.
pub(crate) fn to_device_event(message: crate::storage::ToDeviceRow) -> Value {
    json!({
        "sender": message.sender,
        "type": message.event_type,
        "content": serde_json::from_str::<Value>(&message.content).unwrap_or_else(|_| json!({})),
    })
}

/// The device's one-time key counts and unused fallback key algorithms,
/// from the keyserver. When it cannot be reached: no counts and no
/// fallback list (so clients do not conclude their fallback key was used).
pub(crate) async fn key_counts(
    service: &SyncService,
    device: &Device,
) -> (std::collections::BTreeMap<String, u64>, Option<Vec<String>>) {
    let request = ganglion_api::proto::keyserver::CountsRequest {
        user_id: device.user_id.clone(),
        device_id: device.device_id.clone(),
    };
    match service.keys.counts(request).await {
        Ok(counts) => (
            counts.one_time_key_counts.into_iter().collect(),
            Some(counts.unused_fallback_algorithms),
        ),
        Err(error) => {
            tracing::warn!(?error, "keyserver: no key counts for this sync");
            (Default::default(), None)
        }
    }
}
