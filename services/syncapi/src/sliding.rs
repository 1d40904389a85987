//! Simplified sliding sync (MSC4186), the pure parts: the request's
//! limits, the per-connection state (what each room was last sent up to,
//! and the sticky request parts), list filtering, ordering and windows,
//! and `required_state` matching. `routes/sliding_sync.rs` reads and
//! answers with them.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ganglion_base::MatrixError;
use ruma::api::client::sync::sync_events::v5::request::{
    self, AccountData, E2EE, ExtensionRoomConfig, ListFilters, Receipts, ToDevice, Typing,
};
use ruma::directory::RoomTypeFilter;
use serde::{Deserialize, Serialize};

use crate::storage::SlidingRoom;

/// The most lists a request may name (the MSC's limit).
const MAX_LISTS: usize = 100;
/// The longest list name, in bytes (the MSC's limit).
const MAX_LIST_NAME: usize = 64;
/// The most ranges per list, room subscriptions, and `required_state`
/// entries per list or subscription.
const MAX_RANGES: usize = 100;
const MAX_SUBSCRIPTIONS: usize = 1_000;
const MAX_REQUIRED_STATE: usize = 100;
/// The longest `conn_id`, in bytes.
const MAX_CONN_ID: usize = 64;
/// The largest timeline a list or subscription gets (larger asks are cut).
pub(crate) const MAX_TIMELINE_LIMIT: u64 = 1_000;

/// What a connection was last answered with: kept per `pos`, and never
/// changed once stored (a retried `pos` reads the same state again).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Connection {
    /// The lists of the last request that named any (lists are sticky).
    #[serde(default)]
    pub(crate) lists: BTreeMap<String, request::List>,
    /// The room subscriptions of the last request that named any.
    #[serde(default)]
    pub(crate) subscriptions: BTreeMap<String, request::RoomSubscription>,
    /// Each extension's last given configuration.
    #[serde(default)]
    pub(crate) extensions: request::Extensions,
    /// The rooms sent so far on this connection.
    #[serde(default)]
    pub(crate) rooms: BTreeMap<String, RoomSent>,
    /// Each list's count as last answered.
    #[serde(default)]
    pub(crate) counts: BTreeMap<String, u64>,
    /// Which connection this is, drawn at random when it starts and named
    /// in every `pos`: row numbers are this database's own, so a `pos`
    /// another syncapi replica issued must never read a state kept here
    /// under the same number (the user moved, and back). 0: a connection
    /// from before this field.
    #[serde(default)]
    pub(crate) nonce: u32,
}

/// A room as last sent on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RoomSent {
    /// The end (exclusive) of the room's partition window it was sent up to.
    pub(crate) offset: u64,
    /// The configuration it was sent with ([`RoomConfig::key`]): a room
    /// asked for with more state or a longer timeline is sent afresh.
    pub(crate) config: String,
    /// The user's membership it was sent with: an invite accepted is sent
    /// afresh, whole.
    #[serde(default)]
    pub(crate) membership: String,
}

/// Refuses requests beyond the limits (400 `M_INVALID_PARAM`).
pub(crate) fn check_limits(
    request: &ruma::api::client::sync::sync_events::v5::Request,
) -> Result<(), MatrixError> {
    let too_big = |what: &str| Err(MatrixError::invalid_param(format!("too many {what}")));
    if request.lists.len() > MAX_LISTS {
        return too_big("lists");
    }
    if request.room_subscriptions.len() > MAX_SUBSCRIPTIONS {
        return too_big("room subscriptions");
    }
    if request
        .conn_id
        .as_ref()
        .is_some_and(|c| c.len() > MAX_CONN_ID)
    {
        return Err(MatrixError::invalid_param("conn_id is too long"));
    }
    for (name, list) in &request.lists {
        if name.len() > MAX_LIST_NAME {
            return Err(MatrixError::invalid_param("a list name is too long"));
        }
        if list.ranges.len() > MAX_RANGES {
            return too_big("ranges");
        }
        if list.ranges.iter().any(|(start, end)| start > end) {
            return Err(MatrixError::invalid_param("a range ends before it starts"));
        }
        if list.room_details.required_state.len() > MAX_REQUIRED_STATE {
            return too_big("required_state entries");
        }
    }
    if request
        .room_subscriptions
        .values()
        .any(|s| s.required_state.len() > MAX_REQUIRED_STATE)
    {
        return too_big("required_state entries");
    }
    Ok(())
}

impl Connection {
    /// The state as stored.
    pub(crate) fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Takes the request's sticky parts: lists and subscriptions when it
    /// names any, and each extension it configures; the rest carries over.
    pub(crate) fn take_request(
        &mut self,
        request: &ruma::api::client::sync::sync_events::v5::Request,
    ) {
        if !request.lists.is_empty() {
            self.lists = request.lists.clone();
        }
        if !request.room_subscriptions.is_empty() {
            self.subscriptions = request
                .room_subscriptions
                .iter()
                .map(|(room, s)| (room.to_string(), s.clone()))
                .collect();
        }
        let given = &request.extensions;
        let kept = &mut self.extensions;
        if given.to_device != ToDevice::default() {
            // `since` is per request, not sticky.
            kept.to_device = given.to_device.clone();
        }
        if given.e2ee != E2EE::default() {
            kept.e2ee = given.e2ee.clone();
        }
        if given.account_data != AccountData::default() {
            kept.account_data = given.account_data.clone();
        }
        if given.receipts != Receipts::default() {
            kept.receipts = given.receipts.clone();
        }
        if given.typing != Typing::default() {
            kept.typing = given.typing.clone();
        }
    }
}

/// What one room is asked for: the union of its lists' and subscription's
/// `required_state`, and the longest timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RoomConfig {
    pub(crate) required_state: BTreeSet<(String, String)>,
    pub(crate) timeline_limit: u64,
}

impl RoomConfig {
    pub(crate) fn add(
        &mut self,
        required_state: &[(ruma::events::StateEventType, String)],
        timeline_limit: u64,
    ) {
        self.required_state.extend(
            required_state
                .iter()
                .map(|(event_type, key)| (event_type.to_string(), key.clone())),
        );
        self.timeline_limit = self
            .timeline_limit
            .max(timeline_limit.min(MAX_TIMELINE_LIMIT));
    }

    /// A stable text of the configuration, kept with each room sent.
    pub(crate) fn key(&self) -> String {
        serde_json::to_string(&(&self.required_state, self.timeline_limit)).unwrap_or_default()
    }

    /// Whether `required_state` asks for lazy-loaded members.
    pub(crate) fn lazy_members(&self) -> bool {
        self.required_state
            .iter()
            .any(|(t, k)| (t == "m.room.member" || t == "*") && k == "$LAZY")
    }

    /// Whether the state event `(event_type, state_key)` is asked for.
    /// `lazy`: the members whose events the response's timeline carries.
    pub(crate) fn wants_state(
        &self,
        event_type: &str,
        state_key: &str,
        user_id: &str,
        lazy: &HashSet<&str>,
    ) -> bool {
        self.required_state.iter().any(|(t, k)| {
            let type_matches = t == "*" || t == event_type;
            let key_matches = match k.as_str() {
                "*" => true,
                "$ME" => state_key == user_id,
                "$LAZY" => {
                    event_type == "m.room.member"
                        && (lazy.contains(state_key) || state_key == user_id)
                }
                key => key == state_key,
            };
            type_matches && key_matches
        })
    }
}

/// Whether a room belongs in lists: the user is in it, invited, or knocking.
pub(crate) fn listable(room: &SlidingRoom) -> bool {
    matches!(room.membership.as_str(), "join" | "invite" | "knock")
}

/// Whether a room passes a list's filters.
pub(crate) fn passes(filters: Option<&ListFilters>, room: &SlidingRoom, is_dm: bool) -> bool {
    let Some(filters) = filters else {
        return true;
    };
    let room_type = |t: &RoomTypeFilter| match t {
        RoomTypeFilter::Default => room.room_type.is_none(),
        other => other.as_str() == room.room_type.as_deref(),
    };
    filters.is_dm.is_none_or(|want| want == is_dm)
        && filters
            .is_encrypted
            .is_none_or(|want| want == room.encrypted)
        && filters
            .is_invite
            .is_none_or(|want| want == (room.membership == "invite"))
        && (filters.room_types.is_empty() || filters.room_types.iter().any(room_type))
        && !filters.not_room_types.iter().any(room_type)
}

/// Orders rooms most recent first (by bump stamp, then by ID so the order
/// is total).
pub(crate) fn by_recency(rooms: &mut [&SlidingRoom]) {
    rooms.sort_by(|a, b| {
        b.bump_stamp
            .cmp(&a.bump_stamp)
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
}

/// The positions a list's ranges cover (inclusive ranges, cut to `count`).
pub(crate) fn in_ranges(ranges: &[(ruma::UInt, ruma::UInt)], count: usize) -> BTreeSet<usize> {
    let mut positions = BTreeSet::new();
    for (start, end) in ranges {
        let start = u64::from(*start) as usize;
        let end = (u64::from(*end) as usize).min(count.saturating_sub(1));
        if count == 0 || start > end {
            continue;
        }
        positions.extend(start..=end);
    }
    positions
}

/// The rooms an extension covers: those in the lists it names (all when
/// it names none) and, unless it names rooms without `*`, the subscribed
/// ones, plus any it names.
pub(crate) fn extension_rooms(
    lists: Option<&[String]>,
    rooms: Option<&[ExtensionRoomConfig]>,
    in_lists: &BTreeMap<String, BTreeSet<String>>,
    subscribed: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (name, members) in in_lists {
        if lists.is_none_or(|names| names.iter().any(|n| n == name || n == "*")) {
            out.extend(members.iter().cloned());
        }
    }
    match rooms {
        None => out.extend(subscribed.iter().cloned()),
        Some(configs) => {
            for config in configs {
                match config {
                    ExtensionRoomConfig::AllSubscribed => out.extend(subscribed.iter().cloned()),
                    ExtensionRoomConfig::Room(room) => {
                        out.insert(room.to_string());
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// The room IDs `m.direct` names (the user's DMs).
pub(crate) fn direct_rooms(m_direct: Option<&str>) -> HashSet<String> {
    let Some(value) =
        m_direct.and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
    else {
        return HashSet::new();
    };
    value
        .as_object()
        .map(|by_user| {
            by_user
                .values()
                .filter_map(|rooms| rooms.as_array())
                .flatten()
                .filter_map(|room| room.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A `pos`: `<row>.<connection nonce>-<token>`, the connection state's
/// row, the connection's [`Connection::nonce`] and the log position
/// answered (`<row>-<token>` from before nonces: nonce 0).
pub(crate) fn parse_pos(pos: &str) -> Option<(i64, u32, &str)> {
    let (id, token) = pos.split_once('-')?;
    let (id, nonce) = match id.split_once('.') {
        Some((id, nonce)) => (id, nonce.parse().ok()?),
        None => (id, 0),
    };
    Some((id.parse().ok()?, nonce, token))
}

/// The `pos` of a connection state.
pub(crate) fn make_pos(id: i64, nonce: u32, token: &str) -> String {
    format!("{id}.{nonce}-{token}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::uint;

    fn room(id: &str, membership: &str, bump: u64) -> SlidingRoom {
        SlidingRoom {
            room_id: id.into(),
            membership: membership.into(),
            member_offset: 0,
            partition: 0,
            bump_stamp: bump,
            encrypted: false,
            room_type: None,
            membership_sender: "@someone:x".into(),
        }
    }

    #[test]
    fn ranges_are_inclusive_and_cut_to_the_count() {
        assert_eq!(
            in_ranges(&[(uint!(0), uint!(2))], 10),
            [0, 1, 2].into_iter().collect()
        );
        assert_eq!(
            in_ranges(&[(uint!(1), uint!(50)), (uint!(0), uint!(0))], 3),
            [0, 1, 2].into_iter().collect()
        );
        assert!(in_ranges(&[(uint!(5), uint!(9))], 3).is_empty());
        assert!(in_ranges(&[(uint!(0), uint!(9))], 0).is_empty());
    }

    #[test]
    fn recency_orders_by_bump_then_id() {
        let (a, b, c) = (
            room("!a:x", "join", 5),
            room("!b:x", "join", 9),
            room("!c:x", "join", 5),
        );
        let mut rooms = vec![&a, &c, &b];
        by_recency(&mut rooms);
        let ids: Vec<&str> = rooms.iter().map(|r| r.room_id.as_str()).collect();
        assert_eq!(ids, ["!b:x", "!a:x", "!c:x"]);
    }

    #[test]
    fn filters() {
        let mut filters = ListFilters::default();
        let joined = room("!a:x", "join", 1);
        let invited = room("!b:x", "invite", 1);
        let mut space = room("!c:x", "join", 1);
        space.room_type = Some("m.space".into());
        let mut encrypted = room("!d:x", "join", 1);
        encrypted.encrypted = true;
        assert!(passes(None, &joined, false));
        filters.is_invite = Some(true);
        assert!(passes(Some(&filters), &invited, false));
        assert!(!passes(Some(&filters), &joined, false));
        filters.is_invite = None;
        filters.is_dm = Some(true);
        assert!(passes(Some(&filters), &joined, true));
        assert!(!passes(Some(&filters), &joined, false));
        filters.is_dm = None;
        filters.is_encrypted = Some(true);
        assert!(passes(Some(&filters), &encrypted, false));
        assert!(!passes(Some(&filters), &joined, false));
        filters.is_encrypted = None;
        filters.not_room_types = vec![RoomTypeFilter::Space];
        assert!(!passes(Some(&filters), &space, false));
        assert!(passes(Some(&filters), &joined, false));
        filters.not_room_types = vec![];
        filters.room_types = vec![RoomTypeFilter::Default];
        assert!(!passes(Some(&filters), &space, false));
        assert!(passes(Some(&filters), &joined, false));
    }

    #[test]
    fn required_state_wildcards_me_and_lazy() {
        let mut config = RoomConfig::default();
        config.add(
            &[
                ("m.room.name".into(), String::new()),
                ("m.room.member".into(), "$LAZY".into()),
                ("m.room.power_levels".into(), "*".into()),
                ("org.example".into(), "$ME".into()),
            ],
            5,
        );
        let lazy: HashSet<&str> = ["@sender:x"].into_iter().collect();
        let me = "@me:x";
        assert!(config.wants_state("m.room.name", "", me, &lazy));
        assert!(!config.wants_state("m.room.topic", "", me, &lazy));
        assert!(config.wants_state("m.room.member", "@sender:x", me, &lazy));
        assert!(config.wants_state("m.room.member", me, me, &lazy));
        assert!(!config.wants_state("m.room.member", "@other:x", me, &lazy));
        assert!(config.wants_state("m.room.power_levels", "anything", me, &lazy));
        assert!(config.wants_state("org.example", me, me, &lazy));
        assert!(!config.wants_state("org.example", "@other:x", me, &lazy));
        assert!(config.lazy_members());
        let mut all = RoomConfig::default();
        all.add(&[("*".into(), "*".into())], 0);
        assert!(all.wants_state("m.room.member", "@other:x", me, &HashSet::new()));
        // The timeline limit is the longest asked, cut to the maximum.
        config.add(&[], 5_000);
        assert_eq!(config.timeline_limit, MAX_TIMELINE_LIMIT);
    }

    #[test]
    fn extension_scoping() {
        let in_lists: BTreeMap<String, BTreeSet<String>> = [
            ("all".to_owned(), ["!a:x".to_owned()].into_iter().collect()),
            ("dms".to_owned(), ["!b:x".to_owned()].into_iter().collect()),
        ]
        .into_iter()
        .collect();
        let subscribed: BTreeSet<String> = ["!s:x".to_owned()].into_iter().collect();
        let everything = extension_rooms(None, None, &in_lists, &subscribed);
        assert_eq!(everything.len(), 3);
        let dms_only =
            extension_rooms(Some(&["dms".to_owned()]), Some(&[]), &in_lists, &subscribed);
        assert_eq!(dms_only, ["!b:x".to_owned()].into_iter().collect());
        let named = extension_rooms(
            Some(&[]),
            Some(&[ExtensionRoomConfig::Room("!z:x".try_into().unwrap())]),
            &in_lists,
            &subscribed,
        );
        assert_eq!(named, ["!z:x".to_owned()].into_iter().collect());
    }

    #[test]
    fn m_direct_and_pos() {
        let direct = direct_rooms(Some(
            r#"{"@a:x": ["!1:x", "!2:x"], "@b:x": ["!3:x"], "@c:x": 5}"#,
        ));
        assert_eq!(direct.len(), 3);
        assert!(direct_rooms(Some("not json")).is_empty());
        assert_eq!(parse_pos("12-s1_2.3"), Some((12, 0, "s1_2.3")));
        assert_eq!(parse_pos("12.77-s1_2.3"), Some((12, 77, "s1_2.3")));
        assert_eq!(parse_pos(&make_pos(5, 9, "s1")), Some((5, 9, "s1")));
        assert_eq!(parse_pos("12.x-s1"), None);
        assert_eq!(parse_pos("12.99999999999-s1"), None);
        assert_eq!(parse_pos("x-s1"), None);
        assert_eq!(parse_pos("12"), None);
    }

    #[test]
    fn sticky_parts_carry_over() {
        let mut request = ruma::api::client::sync::sync_events::v5::Request::new();
        request.lists.insert("all".into(), request::List::default());
        request.extensions.typing.enabled = Some(true);
        let mut connection = Connection::default();
        connection.take_request(&request);
        let empty = ruma::api::client::sync::sync_events::v5::Request::new();
        connection.take_request(&empty);
        assert!(connection.lists.contains_key("all"));
        assert_eq!(connection.extensions.typing.enabled, Some(true));
        // The state survives its JSON round trip.
        let text = connection.to_text();
        let back: Connection = serde_json::from_str(&text).unwrap();
        assert_eq!(back.to_text(), text);
    }
}
