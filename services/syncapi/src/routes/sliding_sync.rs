//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`:
//! simplified sliding sync (MSC4186), read with ruma's types.
//!
//! A `pos` is `<connection state row>-<sync token>`: the token is the log
//! position answered (as in `/sync`), the row what this connection was sent
//! (`sliding.rs`). A room in a list window or a subscription is sent whole
//! the first time (`initial`), then only with what happened since it was
//! last sent; extensions carry to-device, account data, receipts and typing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use ganglion_api::proto::userapi::Device;
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::MatrixResult;
use ruma::api::client::sync::sync_events::UnreadNotificationsCount;
use ruma::api::client::sync::sync_events::v5::{self, response};
use ruma::api::{IncomingRequestExt, OutgoingResponseExt};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, UInt};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::SyncService;
use crate::filter::SyncFilter;
use crate::routes::client_event::client_event_raw;
use crate::routes::sync::{MAX_TIMEOUT, catch_up, stripped_state, timeline};
use crate::routes::sync_streams::{self, Streams};
use crate::sliding::{self, Connection, RoomConfig, RoomSent};
use crate::storage::{EventRow, SlidingRoom};
use crate::sync_token::{Stream, SyncToken};

/// The largest request body read.
const MAX_BODY: usize = 1024 * 1024;

fn unknown_pos() -> MatrixError {
    MatrixError::new(
        axum::http::StatusCode::BAD_REQUEST,
        "M_UNKNOWN_POS",
        "Unknown or expired pos; start a new connection",
    )
}

pub(crate) async fn sliding_sync(
    State(service): State<Arc<SyncService>>,
    User(device): User,
    request: Request,
) -> MatrixResult {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| MatrixError::bad_json("request body too large or unreadable"))?;
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        axum::body::Bytes::from_static(b"{}")
    } else {
        bytes
    };
    let request = v5::Request::try_from_http_request(
        axum::http::Request::from_parts(parts, bytes.as_ref()),
        &[] as &[&str],
    )
    .map_err(|e| MatrixError::bad_json(format!("invalid sliding sync request: {e}")))?;
    sliding::check_limits(&request)?;
    // Every check before anything is written: bad input changes nothing.
    let to_device_since = match &request.extensions.to_device.since {
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| MatrixError::invalid_param("invalid to_device since"))?,
        ),
        None => None,
    };
    let conn_id = request.conn_id.clone().unwrap_or_default();
    let key = (
        device.user_id.as_str(),
        device.device_id.as_str(),
        conn_id.as_str(),
    );

    // The connection as of `pos`, or a new one.
    let (mut connection, since, state_id) = match &request.pos {
        Some(pos) => {
            let (id, nonce, token) = sliding::parse_pos(pos).ok_or_else(unknown_pos)?;
            let since = SyncToken::parse(token, service.partitions).map_err(|_| unknown_pos())?;
            let text = service
                .storage
                .connection_state(key, id)
                .await?
                .ok_or_else(unknown_pos)?;
            let connection: Connection = serde_json::from_str(&text).map_err(|_| unknown_pos())?;
            // A state of another connection under the same row number (one
            // this replica kept before the user was moved elsewhere and back).
            if connection.nonce != nonce {
                return Err(unknown_pos());
            }
            // The client has this pos: the states before it are done with.
            service
                .storage
                .forget_connection_states(key, Some(id))
                .await?;
            (connection, Some(since), Some((id, text)))
        }
        None => {
            service.storage.forget_connection_states(key, None).await?;
            let connection = Connection {
                nonce: rand::random::<u32>().max(1),
                ..Connection::default()
            };
            (connection, None, None)
        }
    };
    connection.take_request(&request);

    let _syncing = crate::presence::syncing(
        &service,
        &device.user_id,
        Some(request.set_presence.as_str()),
    )
    .await?;
    // Without a pos, the answer is immediate.
    let timeout = match since {
        Some(_) => request.timeout.unwrap_or_default().min(MAX_TIMEOUT),
        None => Duration::ZERO,
    };
    let deadline = Instant::now() + timeout;
    let mut wake = service.notifier.subscribe(&device.user_id);
    if let Some(since) = &since {
        catch_up(&service, since, timeout).await?;
    }
    loop {
        wake.borrow_and_update();
        let current = service.current_token();
        let answer = build(
            &service,
            &device,
            since.as_ref(),
            &current,
            &connection,
            to_device_since,
        )
        .await?;
        if since.is_some() && !answer.has_updates && Instant::now() < deadline {
            // Nothing new yet: wait for this user's news, then look again;
            // at the deadline the answer built is still the one to give.
            if service.wait_for_news(&mut wake, deadline).await {
                continue;
            }
        }
        let text = answer.connection.to_text();
        let id = match &state_id {
            Some((id, kept)) if *kept == text => *id,
            _ => service.storage.save_connection_state(key, &text).await?,
        };
        let mut response = answer.response;
        if connection.extensions.e2ee.enabled == Some(true) {
            // Read once per response, not per rebuild of a long-poll.
            e2ee(&service, &device, &mut response.extensions.e2ee).await;
        }
        response.pos = sliding::make_pos(id, connection.nonce, &current.to_string());
        response.txn_id = request.txn_id.clone();
        return into_http(response);
    }
}

fn into_http(response: v5::Response) -> MatrixResult {
    let http = response
        .try_into_http_response::<Vec<u8>>()
        .map_err(|e| MatrixError::unknown(format!("serializing the response: {e}")))?;
    let (parts, body) = http.into_parts();
    Ok((parts.status, parts.headers, body).into_response())
}

struct Answer {
    response: v5::Response,
    connection: Connection,
    has_updates: bool,
}

/// A value as ruma's raw JSON (the events are built as JSON already).
fn raw<T>(value: &Value) -> Raw<T> {
    Raw::from_json(
        serde_json::value::to_raw_value(value)
            .unwrap_or_else(|_| serde_json::value::to_raw_value(&json!({})).unwrap_or_default()),
    )
}

fn uint(n: u64) -> UInt {
    UInt::new_saturating(n)
}

async fn build(
    service: &SyncService,
    device: &Device,
    since: Option<&SyncToken>,
    current: &SyncToken,
    previous: &Connection,
    to_device_since: Option<u64>,
) -> Result<Answer, MatrixError> {
    let user_id = device.user_id.as_str();
    let mut connection = previous.clone();
    let mut response = v5::Response::new(String::new());

    // Every room of the user's that this response's position covers, but
    // invites from users they ignore.
    let ignored = service.ignored(user_id).await?;
    let rooms: Vec<SlidingRoom> = service
        .storage
        .sliding_rooms(user_id)
        .await?
        .into_iter()
        .filter(|r| r.member_offset < current.offset(r.partition))
        .filter(|r| !(r.membership == "invite" && ignored.ignores(&r.membership_sender)))
        .collect();
    let by_id: HashMap<&str, &SlidingRoom> =
        rooms.iter().map(|r| (r.room_id.as_str(), r)).collect();
    let direct = sliding::direct_rooms(
        service
            .storage
            .account_data_of(user_id, "", "m.direct")
            .await?
            .as_deref(),
    );
    let mut ordered: Vec<&SlidingRoom> = rooms.iter().filter(|r| sliding::listable(r)).collect();
    sliding::by_recency(&mut ordered);

    // The lists: counts, and the rooms in their windows with what each asks.
    let mut wanted: BTreeMap<String, RoomConfig> = BTreeMap::new();
    let mut in_lists: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut counts_changed = false;
    for (name, list) in &connection.lists {
        let matching: Vec<&SlidingRoom> = ordered
            .iter()
            .copied()
            .filter(|r| sliding::passes(list.filters.as_ref(), r, direct.contains(&r.room_id)))
            .collect();
        let count = matching.len() as u64;
        counts_changed |= previous.counts.get(name) != Some(&count);
        connection.counts.insert(name.clone(), count);
        let mut list_response = response::List::default();
        list_response.count = uint(count);
        response.lists.insert(name.clone(), list_response);
        let members = in_lists.entry(name.clone()).or_default();
        for index in sliding::in_ranges(&list.ranges, matching.len()) {
            let room = matching[index];
            members.insert(room.room_id.clone());
            wanted.entry(room.room_id.clone()).or_default().add(
                &list.room_details.required_state,
                u64::from(list.room_details.timeline_limit),
            );
        }
    }
    connection
        .counts
        .retain(|name, _| connection.lists.contains_key(name));
    // Subscriptions: rooms the user is in, invited to or knocking on.
    let mut subscribed = BTreeSet::new();
    for (room_id, subscription) in &connection.subscriptions {
        if by_id
            .get(room_id.as_str())
            .is_some_and(|r| sliding::listable(r))
        {
            subscribed.insert(room_id.clone());
            wanted.entry(room_id.clone()).or_default().add(
                &subscription.required_state,
                u64::from(subscription.timeline_limit),
            );
        }
    }

    let notification_counts =
        crate::notifications::count(service.storage.notifications_for(user_id).await?);
    let mut initial_rooms = BTreeSet::new();
    for (room_id, config) in &wanted {
        let Some(room) = by_id.get(room_id.as_str()) else {
            continue;
        };
        let sent = connection.rooms.get(room_id);
        let config_key = config.key();
        let initial =
            sent.is_none_or(|s| s.config != config_key || s.membership != room.membership);
        let from = match (initial, sent) {
            (false, Some(sent)) => sent.offset,
            _ => 0,
        };
        let to = current.offset(room.partition);
        let built = match room.membership.as_str() {
            "join" => {
                joined_room(
                    service,
                    device,
                    room,
                    config,
                    (from, to),
                    initial,
                    direct.contains(room_id),
                    current,
                )
                .await?
            }
            // An invite or knock is sent once, when it is new to the connection.
            _ if initial || room.member_offset >= from => {
                let mut out = response::Room::default();
                let stripped = stripped_state(service, room_id, user_id).await?;
                out.name = stripped
                    .iter()
                    .find(|e| e["type"] == "m.room.name")
                    .and_then(|e| e["content"]["name"].as_str().map(str::to_owned));
                if room.membership == "invite" {
                    out.invite_state = Some(stripped.iter().map(raw).collect());
                }
                out.initial = Some(true);
                out.is_dm = Some(direct.contains(room_id));
                out.bump_stamp = Some(uint(room.bump_stamp));
                Some(out)
            }
            _ => None,
        };
        if let Some(mut out) = built {
            if room.membership == "join" {
                let counts = notification_counts
                    .get(room_id)
                    .map(|c| c.total)
                    .unwrap_or_default();
                out.unread_notifications = unread(counts);
            }
            if initial {
                initial_rooms.insert(room_id.clone());
            }
            response.rooms.insert(owned_room_id(room_id)?, out);
        }
        connection.rooms.insert(
            room_id.clone(),
            RoomSent {
                offset: to,
                config: config_key,
                membership: room.membership.clone(),
            },
        );
    }

    // Rooms this connection was sent that the user has since left, been
    // kicked or banned from: sent once more, up to the membership change.
    let gone: Vec<String> = connection
        .rooms
        .iter()
        .filter(|(room_id, sent)| {
            by_id
                .get(room_id.as_str())
                .is_some_and(|r| !sliding::listable(r) && r.membership != sent.membership)
        })
        .map(|(room_id, _)| room_id.clone())
        .collect();
    for room_id in gone {
        let Some(room) = by_id.get(room_id.as_str()) else {
            continue;
        };
        let from = connection
            .rooms
            .get(&room_id)
            .map(|s| s.offset)
            .unwrap_or(0);
        let filter = limit_filter(service, &device.user_id, 10).await?;
        let timeline = timeline(
            service,
            device,
            &room_id,
            (from, room.member_offset + 1),
            &filter,
            &room.membership,
        )
        .await?;
        let mut out = response::Room::default();
        out.timeline = timeline.rendered.into_iter().map(Raw::from_json).collect();
        out.limited = timeline.limited;
        out.num_live = Some(uint(timeline.events.len() as u64));
        out.bump_stamp = Some(uint(room.bump_stamp));
        response.rooms.insert(owned_room_id(&room_id)?, out);
        connection.rooms.remove(&room_id);
    }
    // Rooms the user no longer has any membership of are forgotten.
    connection
        .rooms
        .retain(|room_id, _| by_id.contains_key(room_id.as_str()));

    let extensions_updated = extensions(
        service,
        device,
        since,
        current,
        &connection,
        (&in_lists, &subscribed, &initial_rooms),
        to_device_since,
        &mut response.extensions,
    )
    .await?;

    let has_updates = !response.rooms.is_empty() || counts_changed || extensions_updated;
    Ok(Answer {
        response,
        connection,
        has_updates,
    })
}

fn owned_room_id(room_id: &str) -> Result<OwnedRoomId, MatrixError> {
    OwnedRoomId::try_from(room_id).map_err(|_| MatrixError::unknown("stored room ID is invalid"))
}

fn unread((notifications, highlights): (u64, u64)) -> UnreadNotificationsCount {
    let mut counts = UnreadNotificationsCount::default();
    counts.notification_count = Some(uint(notifications));
    counts.highlight_count = Some(uint(highlights));
    counts
}

/// A filter that only limits the timeline (and hides what the user's
/// ignored users sent).
async fn limit_filter(
    service: &SyncService,
    user_id: &str,
    limit: u64,
) -> Result<SyncFilter, MatrixError> {
    let mut filter = SyncFilter::from_value(json!({ "room": { "timeline": { "limit": limit } } }))
        .map_err(|e| MatrixError::invalid_param(e.to_string()))?;
    filter.ignored = service.ignored(user_id).await?;
    Ok(filter)
}

/// A joined room's entry: its timeline in the window, the state asked for
/// (all of it the first time, what changed since otherwise), its name,
/// avatar, heroes and member counts. `None` when nothing happened in it.
#[allow(clippy::too_many_arguments)]
async fn joined_room(
    service: &SyncService,
    device: &Device,
    room: &SlidingRoom,
    config: &RoomConfig,
    (from, to): (u64, u64),
    initial: bool,
    is_dm: bool,
    current: &SyncToken,
) -> Result<Option<response::Room>, MatrixError> {
    let user_id = device.user_id.as_str();
    let (events, limited, rendered) = if config.timeline_limit > 0 {
        let t = timeline(
            service,
            device,
            &room.room_id,
            (from, to),
            &limit_filter(service, user_id, config.timeline_limit).await?,
            "join",
        )
        .await?;
        (t.events, t.limited, t.rendered)
    } else {
        (Vec::new(), false, Vec::new())
    };
    // Nothing new since the room was last sent (events the user may not
    // see still count: state may have changed).
    if !initial
        && events.is_empty()
        && service
            .storage
            .room_events(&room.room_id, from, to, 1, true)
            .await?
            .is_empty()
    {
        return Ok(None);
    }
    let (state, members) = service
        .storage
        .room_state_with_members(&room.room_id)
        .await?;
    // `required_state` is the room's current state (what the timeline
    // also carries included), not the state before the timeline.
    let senders: HashSet<&str> = events.iter().map(|e| e.sender.as_str()).collect();
    let required: Vec<&EventRow> = state
        .iter()
        .filter(|e| {
            let key = e.state_key.as_deref().unwrap_or_default();
            let lazy_member = e.event_type == "m.room.member" && senders.contains(key);
            // After the first time: what changed since, and the members of
            // the timeline's senders when lazy-loading.
            (initial || e.offset >= from || (lazy_member && config.lazy_members()))
                && config.wants_state(&e.event_type, key, user_id, &senders)
        })
        .collect();
    let state_content = |event_type: &str| {
        state
            .iter()
            .find(|e| e.event_type == event_type && e.state_key.as_deref() == Some(""))
            .and_then(|e| serde_json::from_str::<Value>(&e.json).ok())
            .map(|e| e["content"].clone())
    };
    let changed = |event_type: &str| {
        initial
            || state.iter().any(|e| {
                e.event_type == event_type && e.state_key.as_deref() == Some("") && e.offset >= from
            })
    };
    let mut out = response::Room::default();
    if changed("m.room.name") {
        out.name = state_content("m.room.name")
            .and_then(|c| c["name"].as_str().map(str::to_owned))
            .filter(|n| !n.is_empty());
    }
    if changed("m.room.avatar")
        && let Some(url) = state_content("m.room.avatar")
            .and_then(|c| c["url"].as_str().map(ruma::OwnedMxcUri::from))
    {
        out.avatar = ruma::JsOption::Some(url);
    }
    let membership_changed = initial || events.iter().any(|e| e.event_type == "m.room.member");
    if membership_changed {
        let summary = crate::summary::summary(&members, user_id);
        out.joined_count = Some(uint(summary["m.joined_member_count"].as_u64().unwrap_or(0)));
        out.invited_count = Some(uint(
            summary["m.invited_member_count"].as_u64().unwrap_or(0),
        ));
        let heroes: Vec<response::Hero> = summary["m.heroes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|hero| hero.as_str())
            .filter_map(|hero| {
                let user = ruma::OwnedUserId::try_from(hero).ok()?;
                let member = state
                    .iter()
                    .find(|e| {
                        e.event_type == "m.room.member" && e.state_key.as_deref() == Some(hero)
                    })
                    .and_then(|e| serde_json::from_str::<Value>(&e.json).ok());
                let mut out = response::Hero::new(user);
                if let Some(member) = member {
                    out.name = member["content"]["displayname"].as_str().map(str::to_owned);
                    out.avatar = member["content"]["avatar_url"]
                        .as_str()
                        .map(ruma::OwnedMxcUri::from);
                }
                Some(out)
            })
            .collect();
        out.heroes = Some(heroes);
    }
    out.initial = initial.then_some(true);
    out.is_dm = Some(is_dm);
    out.timeline = rendered.into_iter().map(Raw::from_json).collect();
    out.required_state = required
        .iter()
        .map(|e| Raw::from_json(client_event_raw(e, false, &device.device_id)))
        .collect();
    out.limited = limited;
    out.num_live = Some(uint(if initial { 0 } else { events.len() as u64 }));
    out.bump_stamp = Some(uint(room.bump_stamp));
    out.prev_batch = Some(
        current
            .with(
                room.partition,
                events.first().map(|e| e.offset).unwrap_or(to),
            )
            .to_string(),
    );
    Ok(Some(out))
}

/// The `e2ee` extension's key counts (its device lists come with the
/// other extensions, as they are news that ends a long-poll).
async fn e2ee(service: &SyncService, device: &Device, out: &mut response::E2EE) {
    let (counts, fallback_types) = sync_streams::key_counts(service, device).await;
    out.device_one_time_keys_count = counts
        .into_iter()
        .map(|(algorithm, n)| (algorithm.as_str().into(), uint(n)))
        .collect();
    out.device_unused_fallback_key_types =
        fallback_types.map(|types| types.iter().map(|t| t.as_str().into()).collect());
}

/// Fills the extensions the connection enabled (but `e2ee`, added to the
/// response sent); whether any has news.
#[allow(clippy::too_many_arguments)]
async fn extensions(
    service: &SyncService,
    device: &Device,
    since: Option<&SyncToken>,
    current: &SyncToken,
    connection: &Connection,
    (in_lists, subscribed, initial_rooms): (
        &BTreeMap<String, BTreeSet<String>>,
        &BTreeSet<String>,
        &BTreeSet<String>,
    ),
    to_device_since: Option<u64>,
    out: &mut response::Extensions,
) -> Result<bool, MatrixError> {
    let config = &connection.extensions;
    let everything = SyncFilter::default();
    let user_id = device.user_id.as_str();
    let mut updated = false;

    if config.to_device.enabled == Some(true) {
        let mut streams = Streams::default();
        let acked = to_device_since.unwrap_or(0);
        sync_streams::to_device(&mut streams, service, device, acked, current).await?;
        let next = match streams.to_device_next {
            Some((_, offset)) => offset,
            None => current.stream_offset(
                Stream::ToDevice,
                sync_streams::own_partition(service, user_id),
            ),
        };
        updated |= !streams.to_device.is_empty();
        let mut to_device = response::ToDevice::default();
        to_device.next_batch = next.to_string();
        to_device.events = streams.to_device.iter().map(raw).collect();
        out.to_device = Some(to_device);
    }

    if config.account_data.enabled == Some(true) {
        let mut streams = Streams::default();
        sync_streams::account_data(&mut streams, service, user_id, since, current, &everything)
            .await?;
        let rooms = sliding::extension_rooms(
            config.account_data.lists.as_deref(),
            config.account_data.rooms.as_deref(),
            in_lists,
            subscribed,
        );
        // Rooms new to the connection get their account data whole.
        let mut whole = Streams::default();
        if since.is_some() && rooms.iter().any(|r| initial_rooms.contains(r)) {
            sync_streams::account_data(&mut whole, service, user_id, None, current, &everything)
                .await?;
        }
        out.account_data.global = streams.account_data.iter().map(raw).collect();
        for room_id in &rooms {
            let mut events = streams.room_account_data(room_id);
            if initial_rooms.contains(room_id) && since.is_some() {
                events = whole.room_account_data(room_id);
            }
            if !events.is_empty() {
                out.account_data
                    .rooms
                    .insert(owned_room_id(room_id)?, events.iter().map(raw).collect());
            }
        }
        updated |= !out.account_data.is_empty();
    }

    // Device list changes come with the connection's news; the key counts
    // are added to the response sent.
    if config.e2ee.enabled == Some(true)
        && let Some(since) = since
    {
        let memberships = service.storage.memberships(user_id).await?;
        let lists =
            crate::device_lists::between(service, user_id, &memberships, since, current).await?;
        updated |= !lists.is_empty();
        let users = |users: std::collections::BTreeSet<String>| {
            users
                .into_iter()
                .filter_map(|user| ruma::OwnedUserId::try_from(user).ok())
                .collect()
        };
        out.e2ee.device_lists.changed = users(lists.changed);
        out.e2ee.device_lists.left = users(lists.left);
    }

    let receipts_on = config.receipts.enabled == Some(true);
    let typing_on = config.typing.enabled == Some(true);
    if receipts_on || typing_on {
        let mut streams = Streams::default();
        sync_streams::ephemeral(&mut streams, service, user_id, since, current, &everything)
            .await?;
        let mut whole = Streams::default();
        if since.is_some() && !initial_rooms.is_empty() {
            sync_streams::ephemeral(&mut whole, service, user_id, None, current, &everything)
                .await?;
        }
        let receipt_rooms = sliding::extension_rooms(
            config.receipts.lists.as_deref(),
            config.receipts.rooms.as_deref(),
            in_lists,
            subscribed,
        );
        let typing_rooms = sliding::extension_rooms(
            config.typing.lists.as_deref(),
            config.typing.rooms.as_deref(),
            in_lists,
            subscribed,
        );
        for room_id in receipt_rooms.union(&typing_rooms) {
            let events = if since.is_some() && initial_rooms.contains(room_id) {
                whole.ephemeral(room_id)
            } else {
                streams.ephemeral(room_id)
            };
            for event in events {
                match event["type"].as_str() {
                    Some("m.receipt") if receipts_on && receipt_rooms.contains(room_id) => {
                        out.receipts
                            .rooms
                            .insert(owned_room_id(room_id)?, raw(&event));
                    }
                    Some("m.typing") if typing_on && typing_rooms.contains(room_id) => {
                        out.typing
                            .rooms
                            .insert(owned_room_id(room_id)?, raw(&event));
                    }
                    _ => {}
                }
            }
        }
        updated |= !out.receipts.is_empty() || !out.typing.is_empty();
    }
    Ok(updated)
}
