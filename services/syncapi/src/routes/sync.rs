//! `GET /sync`: initial and incremental, long-polling on the consumed log
//! positions.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::Uri;
use ganglion_api::proto::userapi::Device;
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, parse_query, respond_with};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::SyncService;
use crate::filter::{FilterError, SyncFilter};
use crate::routes::client_event::{client_event, client_event_raw, to_raw};
use crate::routes::relations::{bundle, with_bundle};
use crate::routes::sync_streams;
use crate::storage::{EventRow, Membership, StateRef};
use crate::sync_token::{Stream, SyncToken};
use crate::visibility::Reader;

/// The longest a client may ask `/sync` to wait.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a request waits for this replica to catch up with its token.
const CATCH_UP: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
pub(crate) struct SyncQuery {
    since: Option<String>,
    timeout: Option<u64>,
    filter: Option<String>,
    #[serde(default)]
    full_state: bool,
    set_presence: Option<String>,
    #[allow(dead_code)]
    access_token: Option<String>,
}

/// The filter a `/sync` names: inline JSON, or the ID of a stored one.
pub(crate) async fn resolve_filter(
    service: &SyncService,
    user_id: &str,
    filter: Option<&str>,
) -> Result<SyncFilter, MatrixError> {
    let mut filter = resolve_definition(service, user_id, filter).await?;
    filter.ignored = service.ignored(user_id).await?;
    Ok(filter)
}

async fn resolve_definition(
    service: &SyncService,
    user_id: &str,
    filter: Option<&str>,
) -> Result<SyncFilter, MatrixError> {
    match filter {
        None | Some("") => Ok(SyncFilter::default()),
        Some(inline) if inline.trim_start().starts_with('{') => {
            SyncFilter::parse(inline).map_err(filter_error)
        }
        Some(id) => {
            let id: i64 = id
                .parse()
                .map_err(|_| MatrixError::invalid_param("unknown filter"))?;
            let json = service
                .storage
                .filter(user_id, id)
                .await?
                .ok_or_else(|| MatrixError::invalid_param("unknown filter"))?;
            SyncFilter::parse(&json).map_err(filter_error)
        }
    }
}

pub(crate) fn filter_error(error: FilterError) -> MatrixError {
    MatrixError::invalid_param(error.to_string())
}

pub(crate) async fn sync(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    uri: Uri,
) -> MatrixResult {
    let query: SyncQuery = parse_query(&uri)?;
    let filter = resolve_filter(&service, &device.user_id, query.filter.as_deref()).await?;
    let since = match &query.since {
        Some(text) => Some(
            SyncToken::parse(text, service.partitions)
                .map_err(|_| MatrixError::invalid_param("invalid since token"))?,
        ),
        None => None,
    };
    let _syncing =
        crate::presence::syncing(&service, &device.user_id, query.set_presence.as_deref()).await?;
    let timeout = Duration::from_millis(query.timeout.unwrap_or(0)).min(MAX_TIMEOUT);
    let deadline = Instant::now() + timeout;
    // Subscribed before the first read: whatever is consumed for this user
    // from here on wakes the request.
    let mut wake = service.notifier.subscribe(&device.user_id);
    if let Some(since) = &since {
        catch_up(&service, since, timeout).await?;
    }
    loop {
        wake.borrow_and_update();
        let mut current = service.current_token();
        // Nothing has been consumed past the client's token (the usual
        // long-poll, right after the previous response): a response built
        // now could hold nothing, so it is built only once there is news
        // or the wait is over.
        if let Some(since) = &since
            && !query.full_state
            && since.covers(&current)
            && Instant::now() < deadline
        {
            if service.wait_for_news(&mut wake, deadline).await {
                continue;
            }
            current = service.current_token();
        }
        let (body, has_updates) = build(
            &service,
            &device,
            since.as_ref(),
            &current,
            &filter,
            query.full_state,
        )
        .await?;
        if !(since.is_none() || has_updates || Instant::now() >= deadline)
            && service.wait_for_news(&mut wake, deadline).await
        {
            continue;
        }
        return respond_with(&with_key_counts(&service, &device, body).await);
    }
}

/// A token from a replica further along: waits until this one has caught
/// up with it (at most the request's timeout, and at least [`CATCH_UP`]).
pub(crate) async fn catch_up(
    service: &SyncService,
    since: &SyncToken,
    timeout: Duration,
) -> Result<(), MatrixError> {
    let mut positions = service.positions.subscribe();
    let catch_up = Instant::now() + CATCH_UP.max(timeout);
    let partitions = service.partitions;
    let caught_up = positions.wait_for(|p| SyncToken::new(p.clone(), partitions).covers(since));
    if tokio::time::timeout_at(catch_up, caught_up).await.is_err() {
        return Err(MatrixError::unavailable(
            "This server is catching up; try again",
        ));
    }
    Ok(())
}

pub(crate) struct Timeline {
    pub(crate) events: Vec<EventRow>,
    pub(crate) limited: bool,
    /// The events in the client format, with bundled aggregations.
    pub(crate) rendered: Vec<Box<RawValue>>,
}

/// An event as the filter wants it, with its bundled aggregations: written
/// straight from the stored text when nothing changes it.
pub(crate) fn render_event(
    event: &EventRow,
    filter: &SyncFilter,
    bundle: Option<&Value>,
    device_id: &str,
) -> Box<RawValue> {
    if bundle.is_none() && filter.keeps_client_format() {
        return client_event_raw(event, false, device_id);
    }
    to_raw(&filter.shape(
        with_bundle(client_event(event, false, device_id), bundle),
        &event.json,
    ))
}

/// A window's events chosen for a timeline, not yet rendered: rendering
/// (with bundled aggregations) is done for many rooms at once.
pub(crate) struct Chosen {
    pub(crate) room_id: String,
    pub(crate) events: Vec<EventRow>,
    pub(crate) limited: bool,
    /// The user's membership history in the room, as far as visibility
    /// needs it.
    history: Vec<(u64, String)>,
}

/// How many pages of a window `/sync` reads looking for events its filter
/// and the history visibility let through before it settles for fewer.
const MAX_FILTERED_PAGES: usize = 8;
/// The page a selective timeline filter reads at a time.
const FILTERED_PAGE: usize = 200;

/// The latest events of a window that the filter lets through and the
/// user may see (history visibility is checked unless the user is joined
/// and the window was all sent under `shared` or `world_readable`).
pub(crate) async fn timeline(
    service: &SyncService,
    device: &Device,
    room_id: &str,
    window: (u64, u64),
    filter: &SyncFilter,
    membership: &str,
) -> Result<Timeline, MatrixError> {
    let chosen = choose(service, device, room_id, window, filter, membership, None).await?;
    let mut rendered = render(service, device, filter, vec![chosen]).await?;
    Ok(rendered.pop().unwrap_or(Timeline {
        events: Vec::new(),
        limited: false,
        rendered: Vec::new(),
    }))
}

/// Chooses a window's timeline events: the latest `limit` that the filter
/// lets through and the user may see, with the room's current state always
/// visible to a member (so one who rejoins a room of `joined` history sees
/// who joined while they were away). `limited` when older such events
/// (may) remain. `first_page`: the window's newest `limit + 1` events when
/// already read (batched over rooms).
pub(crate) async fn choose(
    service: &SyncService,
    device: &Device,
    room_id: &str,
    (from, to): (u64, u64),
    filter: &SyncFilter,
    membership: &str,
    mut first_page: Option<Vec<EventRow>>,
) -> Result<Chosen, MatrixError> {
    let limit = filter.timeline_limit() as usize;
    let page_size = if filter.timeline_is_selective() {
        (limit + 1).max(FILTERED_PAGE)
    } else {
        limit + 1
    };
    let mut events = Vec::new();
    let mut upper = to;
    let mut exhausted = false;
    // Read when first needed: the user's membership history, and the
    // room's current state.
    let mut history: Option<Vec<(u64, String)>> = None;
    let mut current_state: Option<HashSet<String>> = None;
    for _ in 0..MAX_FILTERED_PAGES {
        let page = match first_page.take() {
            Some(page) if page.len() >= page_size || page.len() <= limit => {
                page.into_iter().filter(|e| e.offset >= from).collect()
            }
            _ => {
                service
                    .storage
                    .room_events(room_id, from, upper, page_size as u32, true)
                    .await?
            }
        };
        exhausted = page.len() < page_size;
        upper = page.last().map(|e| e.offset).unwrap_or(from);
        let mut matching: Vec<EventRow> = page
            .into_iter()
            .filter(|e| filter.timeline_matches(e))
            .collect();
        if history.is_none() && !Reader::sees_all(Some(membership), &matching) {
            history = Some(
                service
                    .storage
                    .membership_history(room_id, &device.user_id)
                    .await?,
            );
        }
        if let Some(history) = &history {
            let reader = Reader {
                user_id: &device.user_id,
                history,
                ignored: filter.ignored.clone(),
            };
            if matching.iter().any(|e| !reader.may_see(e)) && current_state.is_none() {
                current_state = Some(if membership == "join" {
                    service
                        .storage
                        .room_state_refs(&[room_id])
                        .await?
                        .remove(room_id)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|r| r.event_id)
                        .collect()
                } else {
                    HashSet::new()
                });
            }
            let always = current_state.as_ref();
            matching.retain(|e| {
                reader.may_see(e) || always.is_some_and(|ids| ids.contains(&e.event_id))
            });
        }
        events.extend(matching);
        if events.len() > limit || exhausted {
            break;
        }
    }
    let limited = events.len() > limit || !exhausted;
    events.truncate(limit);
    events.reverse();
    Ok(Chosen {
        room_id: room_id.to_owned(),
        events,
        limited,
        history: history.unwrap_or_else(|| vec![(0, membership.to_owned())]),
    })
}

/// Renders chosen timelines in the client format, with the bundled
/// aggregations of all of them read at once.
pub(crate) async fn render(
    service: &SyncService,
    device: &Device,
    filter: &SyncFilter,
    chosen: Vec<Chosen>,
) -> Result<Vec<Timeline>, MatrixError> {
    let readers: std::collections::HashMap<&str, Reader<'_>> = chosen
        .iter()
        .map(|c| {
            (
                c.room_id.as_str(),
                Reader {
                    user_id: &device.user_id,
                    history: &c.history,
                    ignored: filter.ignored.clone(),
                },
            )
        })
        .collect();
    let refs: Vec<&EventRow> = chosen.iter().flat_map(|c| c.events.iter()).collect();
    let bundles = bundle(service, &refs, &device.user_id, &device.device_id, &|e| {
        readers
            .get(e.room_id.as_str())
            .is_some_and(|reader| reader.may_see(e))
    })
    .await?;
    drop(readers);
    Ok(chosen
        .into_iter()
        .map(|c| {
            let rendered = c
                .events
                .iter()
                .map(|e| render_event(e, filter, bundles.get(&e.event_id), &device.device_id))
                .collect();
            Timeline {
                events: c.events,
                limited: c.limited,
                rendered,
            }
        })
        .collect())
}

/// Which state entries go with a timeline (before the state filter, which
/// needs the events): those before the response's position and not in the
/// timeline, and with lazy-loading only the members who sent something in
/// the timeline (and the user).
struct StateChoice<'a> {
    in_timeline: HashSet<&'a str>,
    senders: HashSet<&'a str>,
    lazy: bool,
    user_id: &'a str,
    below: u64,
}

impl<'a> StateChoice<'a> {
    fn new(timeline: &'a [EventRow], filter: &SyncFilter, user_id: &'a str, below: u64) -> Self {
        StateChoice {
            in_timeline: timeline.iter().map(|e| e.event_id.as_str()).collect(),
            senders: timeline.iter().map(|e| e.sender.as_str()).collect(),
            lazy: filter.lazy_load_members().is_some(),
            user_id,
            below,
        }
    }

    fn wants(
        &self,
        event_type: &str,
        state_key: Option<&str>,
        event_id: &str,
        offset: u64,
    ) -> bool {
        offset < self.below
            && !self.in_timeline.contains(event_id)
            && (!self.lazy
                || event_type != "m.room.member"
                || state_key
                    .is_some_and(|user| self.senders.contains(user) || user == self.user_id))
    }
}

/// The state to send with a timeline, from state events read whole.
fn room_state_for(
    state: Vec<EventRow>,
    timeline: &[EventRow],
    filter: &SyncFilter,
    device: &Device,
    below: u64,
) -> Vec<Value> {
    let choice = StateChoice::new(timeline, filter, &device.user_id, below);
    state
        .iter()
        .filter(|e| choice.wants(&e.event_type, e.state_key.as_deref(), &e.event_id, e.offset))
        .filter(|e| filter.state_matches(e))
        .map(|e| filter.shape(client_event(e, false, &device.device_id), &e.json))
        .collect()
}

/// How a joined room's `state` is made.
enum StateSection {
    /// All the state at the timeline's start: an initial sync, a room
    /// newly joined, or `full_state`. With the room's current-state
    /// references when already read, and the state as it stood before the
    /// timeline when read already (for many rooms at once).
    Whole(Option<Vec<StateRef>>, Option<Vec<StateRef>>),
    /// The state changes in the gap before a limited timeline, from the
    /// last sync's position.
    Gap(u64),
    /// A timeline that follows on from the last sync: no gap.
    Continued,
}

/// A joined room's `state` (as event IDs, before the state filter) and
/// `summary`. The state is as it stood at the timeline's start: all of it,
/// or what changed in the gap. With lazy-loaded members only the members
/// the timeline needs come with it (its senders, the heroes, the user on
/// an initial sync), and, unless redundant members are asked for, not
/// those the device was already sent.
async fn joined_state(
    service: &SyncService,
    device: &Device,
    filter: &SyncFilter,
    room_id: &str,
    timeline: &Chosen,
    section: StateSection,
    to: u64,
) -> Result<(Vec<String>, Value), MatrixError> {
    let user = device.user_id.as_str();
    let start = timeline.events.first().map(|e| e.offset).unwrap_or(to);
    let whole = matches!(section, StateSection::Whole(..));
    let in_timeline: HashSet<&str> = timeline
        .events
        .iter()
        .map(|e| e.event_id.as_str())
        .collect();
    let mut current_members: Option<Vec<(String, String, u64)>> = None;
    let refs: Vec<StateRef> = match section {
        StateSection::Whole(current, before_timeline) => {
            let current = match current {
                Some(current) => current,
                None => service
                    .storage
                    .room_state_refs(&[room_id])
                    .await?
                    .remove(room_id)
                    .unwrap_or_default(),
            };
            current_members = Some(members_of(&current));
            // The current state is the state at the timeline's start but
            // for the entries the timeline itself changed: those are taken
            // as they stood before it. (Entries the filter kept out of the
            // timeline, or the state a join brought along, stay current.)
            if current
                .iter()
                .any(|r| r.offset >= start && in_timeline.contains(r.event_id.as_str()))
            {
                let before_timeline = match before_timeline {
                    Some(refs) => refs,
                    None => service.storage.state_refs_at(room_id, start, None).await?,
                };
                let before: std::collections::HashMap<(String, String), StateRef> = before_timeline
                    .into_iter()
                    .map(|r| ((r.event_type.clone(), r.state_key.clone()), r))
                    .collect();
                current
                    .into_iter()
                    .filter_map(|r| {
                        if r.offset >= start && in_timeline.contains(r.event_id.as_str()) {
                            before.get(&(r.event_type, r.state_key)).cloned()
                        } else {
                            Some(r)
                        }
                    })
                    .collect()
            } else {
                current
            }
        }
        StateSection::Gap(from) => {
            service
                .storage
                .state_refs_at(room_id, start, Some(from))
                .await?
        }
        StateSection::Continued => Vec::new(),
    };
    // The summary, whenever the membership may have changed for the client.
    let membership_moved = whole
        || refs.iter().any(|r| r.event_type == "m.room.member")
        || timeline
            .events
            .iter()
            .any(|e| e.event_type == "m.room.member");
    let summary = if membership_moved {
        let members = match current_members {
            Some(members) => members,
            None => service.storage.members(room_id).await?,
        };
        let mut summary = crate::summary::summary(&members, user);
        if summary["m.heroes"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
            && service.storage.room_is_named(room_id).await?
        {
            summary.as_object_mut().map(|s| s.remove("m.heroes"));
        }
        summary
    } else {
        json!({})
    };
    let lazy = filter.lazy_load_members();
    // The members the timeline needs: who sent it, and who names the room.
    let mut needed: HashSet<&str> = timeline.events.iter().map(|e| e.sender.as_str()).collect();
    for hero in summary["m.heroes"].as_array().into_iter().flatten() {
        needed.extend(hero.as_str());
    }
    let mut chosen: Vec<&StateRef> = refs
        .iter()
        .filter(|r| r.offset < to && !in_timeline.contains(r.event_id.as_str()))
        .filter(|r| {
            // Lazy-loading, the whole state keeps only the members needed;
            // a gap's membership changes all come.
            lazy.is_none()
                || !whole
                || r.event_type != "m.room.member"
                || r.state_key == user
                || needed.contains(r.state_key.as_str())
        })
        .collect();
    let extra = if lazy.is_some() && !whole {
        // Members whose membership comes anyway, in the state or the
        // timeline.
        let covered: HashSet<&str> = chosen
            .iter()
            .filter(|r| r.event_type == "m.room.member")
            .map(|r| r.state_key.as_str())
            .chain(
                timeline
                    .events
                    .iter()
                    .filter(|e| e.event_type == "m.room.member")
                    .filter_map(|e| e.state_key.as_deref()),
            )
            .collect();
        let missing: Vec<&str> = needed
            .iter()
            .copied()
            .filter(|u| !covered.contains(u))
            .collect();
        service
            .storage
            .member_refs_at(room_id, start, &missing)
            .await?
    } else {
        Vec::new()
    };
    chosen.extend(extra.iter());
    let device_key = (user, device.device_id.as_str());
    let ids = chosen
        .into_iter()
        .filter(|r| {
            // Not sent again what the device holds (a whole state is what
            // the client starts over from, so it comes in full).
            whole
                || lazy != Some(false)
                || r.event_type != "m.room.member"
                || !service
                    .lazy_members
                    .was_sent(device_key, room_id, &r.state_key, &r.event_id)
        })
        .map(|r| r.event_id.clone())
        .collect();
    Ok((ids, summary))
}

/// (member, membership, position) of each membership among state refs.
fn members_of(refs: &[StateRef]) -> Vec<(String, String, u64)> {
    refs.iter()
        .filter(|r| r.event_type == "m.room.member")
        .filter_map(|r| Some((r.state_key.clone(), r.membership.clone()?, r.offset)))
        .collect()
}

async fn build(
    service: &SyncService,
    device: &Device,
    since: Option<&SyncToken>,
    current: &SyncToken,
    filter: &SyncFilter,
    full_state: bool,
) -> Result<(SyncResponse, bool), MatrixError> {
    let mut join = std::collections::BTreeMap::new();
    let mut leave = Map::new();
    let mut invite = Map::new();
    let mut knock = Map::new();
    if since.is_none() {
        service
            .lazy_members
            .forget(&device.user_id, &device.device_id);
    }
    let mut streams = sync_streams::collect(service, device, since, current, filter).await?;
    let mut counts =
        crate::notifications::count(service.storage.notifications_for(&device.user_id).await?);
    let per_thread = filter.definition.room.timeline.unread_thread_notifications;
    // On an incremental sync, the joined rooms with events since the token
    // (from the lowest offset over partitions; each room is then cut to
    // its own window), read with the memberships instead of one per room.
    let events_from = match since {
        Some(since) if !full_state => Some(since.lowest(Stream::Room)),
        _ => None,
    };
    let (memberships, active) = service
        .storage
        .memberships_with_activity(&device.user_id, events_from)
        .await?;
    // An initial sync has no device lists: the client fetches every list.
    let device_lists = match since {
        Some(since) => {
            crate::device_lists::between(service, &device.user_id, &memberships, since, current)
                .await?
        }
        None => Default::default(),
    };
    // Whoever started sharing a room with the user (they joined one of the
    // user's rooms, or the user joined theirs): their presence comes too,
    // changed or not.
    if !device_lists.started_sharing.is_empty() {
        sync_streams::presence_of(&mut streams, service, &device_lists.started_sharing, filter)
            .await?;
    }
    // On an initial (or full-state) sync every joined room is sent: their
    // latest events and their state are read for all of them at once.
    let prefetched = since.is_none() || full_state;
    let (mut pages, mut state_refs) = if prefetched {
        let joined: Vec<(&str, u64)> = memberships
            .iter()
            .filter(|m| {
                m.membership == "join"
                    && m.offset < current.offset(m.partition)
                    && filter.room_wanted(&m.room_id)
            })
            .map(|m| (m.room_id.as_str(), current.offset(m.partition)))
            .collect();
        let ids: Vec<&str> = joined.iter().map(|(room_id, _)| *room_id).collect();
        (
            service
                .storage
                .latest_events_of(&joined, filter.timeline_limit() + 1)
                .await?,
            service.storage.room_state_refs(&ids).await?,
        )
    } else {
        Default::default()
    };
    // An initial sync chooses every joined room's timeline first, so that
    // the state as it stood before each timeline (needed where a timeline
    // holds state events, as a new room's does) is read for all rooms at
    // once rather than one room at a time.
    let mut prechosen: std::collections::HashMap<String, Chosen> = Default::default();
    let mut before_timelines: std::collections::HashMap<String, Vec<StateRef>> = Default::default();
    if since.is_none() {
        let mut wanted: Vec<(String, u64)> = Vec::new();
        for m in &memberships {
            let to = current.offset(m.partition);
            if m.membership != "join" || m.offset >= to || !filter.room_wanted(&m.room_id) {
                continue;
            }
            let first_page = Some(pages.remove(&m.room_id).unwrap_or_default());
            let timeline = choose(
                service,
                device,
                &m.room_id,
                (0, to),
                filter,
                &m.membership,
                first_page,
            )
            .await?;
            let start = timeline.events.first().map(|e| e.offset).unwrap_or(to);
            let in_timeline: HashSet<&str> = timeline
                .events
                .iter()
                .map(|e| e.event_id.as_str())
                .collect();
            if state_refs.get(&m.room_id).is_some_and(|refs| {
                refs.iter()
                    .any(|r| r.offset >= start && in_timeline.contains(r.event_id.as_str()))
            }) {
                wanted.push((m.room_id.clone(), start));
            }
            prechosen.insert(m.room_id.clone(), timeline);
        }
        let wanted: Vec<(&str, u64)> = wanted
            .iter()
            .map(|(room_id, start)| (room_id.as_str(), *start))
            .collect();
        before_timelines = service.storage.state_refs_before(&wanted).await?;
        // A room with nothing before its timeline has an empty state there.
        for (room_id, _) in &wanted {
            before_timelines.entry((*room_id).to_owned()).or_default();
        }
    }
    // Joined rooms built but for their timelines' rendering, which reads
    // the bundled aggregations of all of them at once.
    let mut pending: Vec<(String, JoinedRoom)> = Vec::new();
    let mut chosen_timelines = Vec::new();
    // Per pending room, the state events to send (read whole, for all
    // rooms at once, once the timelines are known).
    let mut pending_state: Vec<Vec<String>> = Vec::new();
    for Membership {
        room_id,
        membership,
        offset: member_offset,
        partition,
    } in memberships
    {
        let from = since.map(|s| s.offset(partition)).unwrap_or(0);
        let to = current.offset(partition);
        if member_offset >= to {
            // Not yet part of the position this response reflects.
            continue;
        }
        if !filter.room_wanted(&room_id) {
            continue;
        }
        let changed_membership = since.is_some() && member_offset >= from;
        match membership.as_str() {
            "join" => {
                // Joined since the last sync (not a join after a join, as a
                // change of display name is): the room comes whole.
                let newly_joined = changed_membership
                    && service
                        .storage
                        .membership_history(&room_id, &device.user_id)
                        .await?
                        .iter()
                        .rev()
                        .find(|(offset, _)| *offset < from)
                        .is_none_or(|(_, before)| before != "join");
                let initial = since.is_none() || newly_joined || full_state;
                // Nothing new in the room: no need to read its timeline.
                if !initial && !active.contains(&room_id) && !streams.has_room_updates(&room_id) {
                    continue;
                }
                let window_start = if since.is_none() || newly_joined {
                    0
                } else {
                    from
                };
                let mut timeline = match prechosen.remove(&room_id) {
                    Some(timeline) => timeline,
                    None => {
                        let first_page =
                            prefetched.then(|| pages.remove(&room_id).unwrap_or_default());
                        choose(
                            service,
                            device,
                            &room_id,
                            (window_start, to),
                            filter,
                            &membership,
                            first_page,
                        )
                        .await?
                    }
                };
                // What happened before a newly joined room's timeline is
                // new to the client too.
                timeline.limited |= newly_joined;
                let ephemeral = streams.ephemeral(&room_id);
                let account_data = streams.room_account_data(&room_id);
                if !initial
                    && timeline.events.is_empty()
                    && ephemeral.is_empty()
                    && account_data.is_empty()
                {
                    continue;
                }
                let section = if initial {
                    StateSection::Whole(
                        state_refs.remove(&room_id),
                        before_timelines.remove(&room_id),
                    )
                } else if timeline.limited {
                    StateSection::Gap(from)
                } else {
                    StateSection::Continued
                };
                let (state_ids, summary) =
                    joined_state(service, device, filter, &room_id, &timeline, section, to).await?;
                let prev_batch = current.with(
                    partition,
                    timeline.events.first().map(|e| e.offset).unwrap_or(to),
                );
                let room_counts = counts.remove(&room_id).unwrap_or_default();
                let unread = |(notifications, highlights): (u64, u64)| json!({ "notification_count": notifications, "highlight_count": highlights });
                let room = JoinedRoom {
                    timeline: TimelineOut {
                        events: Vec::new(),
                        limited: timeline.limited,
                        prev_batch: prev_batch.to_string(),
                    },
                    state: Events { events: Vec::new() },
                    ephemeral: Events { events: ephemeral },
                    account_data: Events {
                        events: account_data,
                    },
                    unread_notifications: unread(if per_thread {
                        room_counts.main
                    } else {
                        room_counts.total
                    }),
                    unread_thread_notifications: per_thread.then(|| {
                        room_counts
                            .threads
                            .into_iter()
                            .map(|(root, n)| (root, unread(n)))
                            .collect::<Map<String, Value>>()
                    }),
                    summary,
                };
                pending.push((room_id, room));
                chosen_timelines.push(timeline);
                pending_state.push(state_ids);
            }
            // Rooms left since the last sync, and on an initial sync with
            // `include_leave`, every room left.
            "leave" | "ban"
                if changed_membership || (since.is_none() && filter.include_leave()) =>
            {
                let timeline = timeline(
                    service,
                    device,
                    &room_id,
                    (from, member_offset + 1),
                    filter,
                    &membership,
                )
                .await?;
                if timeline.events.is_empty() && !changed_membership {
                    // Forgotten, or nothing of it is visible any more.
                    continue;
                }
                let state = if since.is_none() {
                    let state = service
                        .storage
                        .state_at(&room_id, member_offset + 1, None)
                        .await?;
                    room_state_for(state, &timeline.events, filter, device, member_offset + 1)
                } else {
                    Vec::new()
                };
                let prev_batch = current.with(
                    partition,
                    timeline.events.first().map(|e| e.offset).unwrap_or(from),
                );
                let account_data = streams.room_account_data(&room_id);
                leave.insert(
                    room_id,
                    json!({
                        "timeline": {
                            "events": timeline.rendered,
                            "limited": timeline.limited,
                            "prev_batch": prev_batch.to_string(),
                        },
                        "state": { "events": state },
                        "account_data": { "events": account_data },
                    }),
                );
            }
            "invite" if since.is_none() || changed_membership => {
                let stripped = stripped_state(service, &room_id, &device.user_id).await?;
                // Invites from ignored users are not shown.
                let inviter = stripped.iter().find(|e| {
                    e["type"] == "m.room.member" && e["state_key"] == device.user_id.as_str()
                });
                if inviter
                    .and_then(|e| e["sender"].as_str())
                    .is_some_and(|sender| filter.ignored.ignores(sender))
                {
                    continue;
                }
                invite.insert(room_id, json!({ "invite_state": { "events": stripped } }));
            }
            "knock" if since.is_none() || changed_membership => {
                let stripped = stripped_state(service, &room_id, &device.user_id).await?;
                knock.insert(room_id, json!({ "knock_state": { "events": stripped } }));
            }
            _ => {}
        }
    }
    let rendered = render(service, device, filter, chosen_timelines).await?;
    let wanted: Vec<&str> = pending_state.iter().flatten().map(String::as_str).collect();
    let mut state_events: std::collections::HashMap<String, EventRow> = service
        .storage
        .events_by_id(&wanted)
        .await?
        .into_iter()
        .map(|e| (e.event_id.clone(), e))
        .collect();
    let lazy = filter.lazy_load_members().is_some();
    let device_key = (device.user_id.as_str(), device.device_id.as_str());
    for (((room_id, mut room), timeline), state_ids) in
        pending.into_iter().zip(rendered).zip(pending_state)
    {
        room.timeline.events = timeline.rendered;
        let state: Vec<EventRow> = state_ids
            .iter()
            .filter_map(|id| state_events.remove(id))
            .filter(|e| filter.state_matches(e))
            .collect();
        if lazy {
            // The membership events the device now holds.
            service.lazy_members.record(
                device_key,
                &room_id,
                state
                    .iter()
                    .chain(&timeline.events)
                    .filter(|e| e.event_type == "m.room.member")
                    .filter_map(|e| Some((e.state_key.as_deref()?, e.event_id.as_str()))),
            );
        }
        room.state.events = state
            .iter()
            .map(|e| render_event(e, filter, None, &device.device_id))
            .collect();
        join.insert(room_id, room);
    }
    let has_updates = !(join.is_empty()
        && leave.is_empty()
        && invite.is_empty()
        && knock.is_empty()
        && !streams.has_global_updates()
        && device_lists.is_empty());
    let next_batch = match streams.to_device_next {
        Some((partition, offset)) => current.with_stream(Stream::ToDevice, partition, offset),
        None => current.clone(),
    };
    let body = SyncResponse {
        next_batch: next_batch.to_string(),
        rooms: Rooms {
            join,
            invite,
            leave,
            knock,
        },
        account_data: Events {
            events: streams.account_data,
        },
        presence: Events {
            events: streams.presence,
        },
        to_device: Events {
            events: streams.to_device,
        },
        device_lists: DeviceListsOut {
            changed: device_lists.changed,
            left: device_lists.left,
        },
        device_one_time_keys_count: Default::default(),
        device_unused_fallback_key_types: None,
    };
    Ok((body, has_updates))
}

/// Adds the device's one-time key counts and fallback key types to the
/// response about to be sent (read once per response, not per rebuild of a
/// long-poll).
async fn with_key_counts(
    service: &SyncService,
    device: &Device,
    mut body: SyncResponse,
) -> SyncResponse {
    let (counts, fallback_types) = sync_streams::key_counts(service, device).await;
    body.device_one_time_keys_count = counts;
    body.device_unused_fallback_key_types = fallback_types;
    body
}

/// A `/sync` response. Joined rooms carry their events as JSON text
/// (written straight from storage); the rest are trees.
#[derive(Serialize)]
struct SyncResponse {
    next_batch: String,
    rooms: Rooms,
    account_data: Events<Value>,
    presence: Events<Value>,
    to_device: Events<Value>,
    device_lists: DeviceListsOut,
    device_one_time_keys_count: std::collections::BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_unused_fallback_key_types: Option<Vec<String>>,
}

#[derive(Serialize)]
struct Rooms {
    join: std::collections::BTreeMap<String, JoinedRoom>,
    invite: Map<String, Value>,
    leave: Map<String, Value>,
    knock: Map<String, Value>,
}

#[derive(Serialize)]
struct JoinedRoom {
    timeline: TimelineOut,
    state: Events<Box<RawValue>>,
    ephemeral: Events<Value>,
    account_data: Events<Value>,
    unread_notifications: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    unread_thread_notifications: Option<Map<String, Value>>,
    summary: Value,
}

#[derive(Serialize)]
struct TimelineOut {
    events: Vec<Box<RawValue>>,
    limited: bool,
    prev_batch: String,
}

#[derive(Serialize)]
struct Events<T> {
    events: Vec<T>,
}

#[derive(Serialize)]
struct DeviceListsOut {
    changed: std::collections::BTreeSet<String>,
    left: std::collections::BTreeSet<String>,
}

/// The state an invited or knocking user sees of a room: the events the
/// spec recommends, stripped to type, state key, sender and content.
pub(crate) async fn stripped_state(
    service: &SyncService,
    room_id: &str,
    user_id: &str,
) -> Result<Vec<Value>, MatrixError> {
    let mut from_inviter: Vec<Value> = match service.storage.invite_state(room_id, user_id).await? {
        Some(json) => serde_json::from_str(&json).unwrap_or_default(),
        None => Vec::new(),
    };
    let mut held = stripped_held_state(service, room_id, user_id).await?;
    if from_inviter.is_empty() {
        return Ok(held);
    }
    // A room we are not in: what the inviter's server sent, with the invite.
    held.retain(|e| e["type"] == "m.room.member");
    from_inviter.retain(|e| !(e["type"] == "m.room.member" && e["state_key"] == user_id));
    from_inviter.extend(held);
    Ok(from_inviter)
}

/// [`stripped_state`] from the room's state as this server holds it.
async fn stripped_held_state(
    service: &SyncService,
    room_id: &str,
    user_id: &str,
) -> Result<Vec<Value>, MatrixError> {
    Ok(service
        .storage
        .room_state(room_id)
        .await?
        .iter()
        .filter(|e| {
            matches!(
                e.event_type.as_str(),
                "m.room.create"
                    | "m.room.name"
                    | "m.room.topic"
                    | "m.room.join_rules"
                    | "m.room.canonical_alias"
                    | "m.room.avatar"
                    | "m.room.encryption"
            ) || (e.event_type == "m.room.member" && e.state_key.as_deref() == Some(user_id))
        })
        .map(|e| {
            let full = client_event(e, false, "");
            json!({
                "type": full["type"],
                "state_key": full["state_key"],
                "sender": full["sender"],
                "content": full["content"],
            })
        })
        .collect())
}
