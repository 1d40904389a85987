//! `GET /rooms/{roomId}/hierarchy`: a space's tree, depth first, a page at
//! a time. Rooms this server is in are summarised by the roomserver, with
//! the user's own access to each; the rest are asked of the servers each
//! child event names (`GET /hierarchy/{roomId}` over federation, answers
//! kept for a few minutes). A page token holds the walk's position and its
//! parameters, so any replica can carry on a walk another began.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::Uri;
use ganglion_api::proto::federationapi::QueryHierarchyRequest;
use ganglion_api::proto::roomserver as pb;
use ganglion_api::spaces;
use ganglion_api::users::User;
use ganglion_base::bounded::Bounded;
use ganglion_base::http::{MatrixResult, parse_query, respond};
use ganglion_base::{MatrixError, limits};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ClientApi;

/// Rooms per page when the client does not say, and the most it may ask.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;
/// How deep a walk goes when the client does not say, and the deepest it
/// may ask for.
const MAX_DEPTH: u64 = 20;
/// The most rooms one walk covers, the pages before this one included.
const MAX_WALK: usize = 1_000;
/// The most spaces one request asks other servers about (answers already
/// kept do not count).
const MAX_REMOTE_LOOKUPS: usize = 20;
/// How long another server's answer is kept, how many are, and the
/// largest kept.
const REMOTE_TTL: Duration = Duration::from_secs(300);
const REMOTE_CACHE_ENTRIES: usize = 128;
const REMOTE_CACHE_MAX_BYTES: usize = 256 * 1024;

/// Other servers' answers about their spaces, by room and `suggested_only`.
pub(crate) type RemoteSpaces =
    std::sync::Mutex<Bounded<(String, bool), (Instant, Arc<RemoteSpace>)>>;

pub(crate) fn remote_spaces() -> RemoteSpaces {
    std::sync::Mutex::new(Bounded::new(REMOTE_CACHE_ENTRIES))
}

/// What another server said of one of its spaces, checked field by field.
pub(crate) struct RemoteSpace {
    room: pb::RoomSummary,
    /// Its children's summaries (only rooms it names as children).
    children: Vec<pb::RoomSummary>,
    /// Children our server cannot peek or join anywhere.
    inaccessible: Vec<String>,
}

impl RemoteSpace {
    fn from_answer(room_id: &str, answer: &Value) -> Option<RemoteSpace> {
        let room = spaces::summary_from_remote(answer.get("room")?)?;
        if room.room_id != room_id {
            return None;
        }
        let named: HashSet<String> = spaces::children_of(&room, false)
            .into_iter()
            .map(|child| child.room_id)
            .collect();
        let listed = |field: &str| {
            answer
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        };
        let children = listed("children")
            .filter_map(spaces::summary_from_remote)
            .filter(|child| named.contains(&child.room_id))
            .take(spaces::MAX_CHILDREN)
            .collect();
        let inaccessible = listed("inaccessible_children")
            .filter_map(Value::as_str)
            .filter(|id| named.contains(*id))
            .map(str::to_owned)
            .collect();
        Some(RemoteSpace {
            room,
            children,
            inaccessible,
        })
    }
}

#[derive(Deserialize)]
pub(crate) struct HierarchyQuery {
    from: Option<String>,
    limit: Option<String>,
    max_depth: Option<String>,
    #[serde(default)]
    suggested_only: bool,
}

/// Where a walk stands between pages, and what it was asked.
#[derive(Debug, PartialEq)]
struct Token {
    skip: usize,
    max_depth: Option<u64>,
    suggested_only: bool,
}

impl Token {
    fn encode(&self) -> String {
        let depth = self.max_depth.map(|d| d.to_string()).unwrap_or_default();
        format!("h{}_{depth}_{}", self.skip, u8::from(self.suggested_only))
    }

    fn decode(token: &str) -> Option<Token> {
        let mut parts = token.strip_prefix('h')?.split('_');
        let skip = parts.next()?.parse().ok()?;
        let max_depth = match parts.next()? {
            "" => None,
            depth => Some(depth.parse().ok()?),
        };
        let suggested_only = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        parts.next().is_none().then_some(Token {
            skip,
            max_depth,
            suggested_only,
        })
    }
}

/// Asks the `via` servers about a space (through the federationapi) and
/// keeps an answer of a sane size in the cache.
async fn fetch_remote(
    api: &ClientApi,
    room_id: &str,
    via: &[String],
    suggested_only: bool,
) -> Option<Arc<RemoteSpace>> {
    let answer = api
        .federation
        .query_hierarchy(QueryHierarchyRequest {
            server_names: via.to_vec(),
            room_id: room_id.to_owned(),
            suggested_only,
        })
        .await
        .inspect_err(|error| tracing::debug!(room_id, %error, "no remote hierarchy"))
        .ok()?;
    let value: Value = serde_json::from_slice(&answer.body_json).ok()?;
    let space = Arc::new(RemoteSpace::from_answer(room_id, &value)?);
    if answer.body_json.len() <= REMOTE_CACHE_MAX_BYTES
        && let Ok(mut cache) = api.remote_spaces.lock()
    {
        cache.insert(
            (room_id.to_owned(), suggested_only),
            (Instant::now(), space.clone()),
        );
    }
    Some(space)
}

pub(crate) async fn hierarchy(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(room_id): Path<String>,
    uri: Uri,
) -> MatrixResult {
    // Rate-limited (the spec says so): a page may ask other servers.
    api.rate_limits.hierarchy_per_user.check(&device.user_id)?;
    let query: HierarchyQuery = parse_query(&uri)?;
    limits::room_id(&room_id)?;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(limit) => match limit.parse::<usize>() {
            Ok(limit) if limit > 0 => limit.min(MAX_LIMIT),
            _ => {
                return Err(MatrixError::invalid_param(
                    "limit must be an integer greater than zero",
                ));
            }
        },
    };
    let max_depth =
        match query.max_depth.as_deref() {
            None => None,
            Some(depth) => Some(depth.parse::<u64>().map_err(|_| {
                MatrixError::invalid_param("max_depth must be a non-negative integer")
            })?),
        };
    let skip = match query.from.as_deref() {
        None => 0,
        Some(from) => {
            let token = Token::decode(from)
                .ok_or_else(|| MatrixError::invalid_param("unknown pagination token"))?;
            if token.max_depth != max_depth || token.suggested_only != query.suggested_only {
                return Err(MatrixError::invalid_param(
                    "suggested_only and max_depth cannot change on paginated requests",
                ));
            }
            token.skip
        }
    };
    let mut walk = Walk {
        api: &api,
        user_id: device.user_id,
        suggested_only: query.suggested_only,
        local: HashMap::new(),
        remote: HashMap::new(),
        inaccessible: HashSet::new(),
        remote_lookups: 0,
        fetched: HashMap::new(),
        memberships: None,
    };
    let root = walk.local_summaries(std::slice::from_ref(&room_id)).await?;
    if !root.known || !root.accessible {
        return Err(MatrixError::forbidden(
            "You are not allowed to view this room.",
        ));
    }
    let depth = max_depth.unwrap_or(MAX_DEPTH).min(MAX_DEPTH);
    let (rooms, more) = walk.pages(room_id, skip, limit, depth).await?;
    let mut body = json!({ "rooms": rooms });
    if more {
        body["next_batch"] = json!(
            Token {
                skip: skip + limit,
                max_depth,
                suggested_only: query.suggested_only,
            }
            .encode()
        );
    }
    respond(body)
}

/// One request's walk of a space tree.
struct Walk<'a> {
    api: &'a ClientApi,
    user_id: String,
    suggested_only: bool,
    /// What the roomserver said of rooms, known to this server or not.
    local: HashMap<String, pb::RoomSummary>,
    /// Rooms other servers told of (this server is not in them).
    remote: HashMap<String, pb::RoomSummary>,
    /// Rooms other servers said nobody here can reach.
    inaccessible: HashSet<String>,
    remote_lookups: usize,
    /// Answers asked for ahead of the walk (see `prefetch_remote`).
    fetched: HashMap<String, Arc<RemoteSpace>>,
    /// The rooms the user is joined to and invited to, once needed.
    memberships: Option<(HashSet<String>, HashSet<String>)>,
}

impl Walk<'_> {
    /// Walks depth first from `root`, skipping the first `skip` rooms it
    /// shows, and answers the next `limit` and whether more follow (the
    /// walk goes on until it finds one more to show, or ends).
    async fn pages(
        &mut self,
        root: String,
        skip: usize,
        limit: usize,
        max_depth: u64,
    ) -> Result<(Vec<Value>, bool), MatrixError> {
        let mut stack: Vec<(String, u64, Vec<String>)> = vec![(root, 0, Vec::new())];
        let mut seen = HashSet::new();
        let mut met = 0;
        let mut rooms = Vec::new();
        while let Some((room_id, depth, via)) = stack.pop() {
            if seen.len() >= MAX_WALK {
                return Ok((rooms, false));
            }
            // Loops are broken here: a room is shown once a walk.
            if !seen.insert(room_id.clone()) {
                continue;
            }
            let Some(summary) = self.summary(&room_id, &via).await? else {
                continue;
            };
            if met >= skip {
                // One room more than the page holds: another page follows.
                if rooms.len() >= limit {
                    return Ok((rooms, true));
                }
                rooms.push(spaces::room_json(&summary, false));
            }
            met += 1;
            if depth < max_depth && spaces::is_space(&summary) {
                let children = spaces::children_of(&summary, self.suggested_only);
                let unasked: Vec<String> = children
                    .iter()
                    .filter(|child| !self.local.contains_key(&child.room_id))
                    .map(|child| child.room_id.clone())
                    .collect();
                if !unasked.is_empty() {
                    self.local_summaries(&unasked).await?;
                }
                self.prefetch_remote(&children).await;
                for child in children.into_iter().rev() {
                    if !seen.contains(&child.room_id) {
                        stack.push((child.room_id, depth + 1, child.via));
                    }
                }
            }
        }
        Ok((rooms, false))
    }

    /// The roomserver's summaries of rooms, kept for the walk; the first's
    /// is answered.
    async fn local_summaries(
        &mut self,
        room_ids: &[String],
    ) -> Result<pb::RoomSummary, MatrixError> {
        for chunk in room_ids.chunks(spaces::MAX_SUMMARIES) {
            let answer = self
                .api
                .roomserver
                .query_room_summaries(pb::QueryRoomSummariesRequest {
                    room_ids: chunk.to_vec(),
                    user_id: self.user_id.clone(),
                    server_name: String::new(),
                    suggested_only: self.suggested_only,
                })
                .await?;
            for summary in answer.rooms {
                self.local.insert(summary.room_id.clone(), summary);
            }
        }
        Ok(room_ids
            .first()
            .and_then(|id| self.local.get(id))
            .cloned()
            .unwrap_or_default())
    }

    /// A room's summary if the user may see it: ours where this server is
    /// in the room, else another server's.
    async fn summary(
        &mut self,
        room_id: &str,
        via: &[String],
    ) -> Result<Option<pb::RoomSummary>, MatrixError> {
        if !self.local.contains_key(room_id) {
            self.local_summaries(&[room_id.to_owned()]).await?;
        }
        if let Some(local) = self.local.get(room_id).filter(|local| local.known) {
            return Ok(local.accessible.then(|| local.clone()));
        }
        if self.inaccessible.contains(room_id) {
            return Ok(None);
        }
        let remote = match self.remote.get(room_id) {
            // A space's children were told of with it; a child space is
            // asked about itself, for its own children.
            Some(known) if !spaces::is_space(known) => Some(known.clone()),
            _ => self
                .ask_remote(room_id, via)
                .await
                .map(|space| space.room.clone()),
        };
        let Some(remote) = remote else {
            return Ok(None);
        };
        Ok(self.may_see_remote(&remote).await?.then_some(remote))
    }

    /// Another server's answer about a space, from the cache or asked of
    /// the child event's `via` servers; its children are kept for the walk.
    async fn ask_remote(&mut self, room_id: &str, via: &[String]) -> Option<Arc<RemoteSpace>> {
        let space = match self.cached_remote(room_id) {
            Some(space) => space,
            None => {
                if via.is_empty() || self.remote_lookups >= MAX_REMOTE_LOOKUPS {
                    return None;
                }
                self.remote_lookups += 1;
                fetch_remote(self.api, room_id, via, self.suggested_only).await?
            }
        };
        for child in &space.children {
            self.remote
                .entry(child.room_id.clone())
                .or_insert_with(|| child.clone());
        }
        self.inaccessible.extend(space.inaccessible.iter().cloned());
        self.remote.insert(room_id.to_owned(), space.room.clone());
        Some(space)
    }

    /// A space's answer another server gave this walk or in the last
    /// [`REMOTE_TTL`].
    fn cached_remote(&self, room_id: &str) -> Option<Arc<RemoteSpace>> {
        if let Some(space) = self.fetched.get(room_id) {
            return Some(space.clone());
        }
        let key = (room_id.to_owned(), self.suggested_only);
        self.api
            .remote_spaces
            .lock()
            .ok()
            .and_then(|cache| cache.get(&key))
            .filter(|(at, _)| at.elapsed() < REMOTE_TTL)
            .map(|(_, space)| space)
    }

    /// Asks other servers about the children of a space the walk is about
    /// to enter that only they can tell of, all at once rather than one by
    /// one as the walk reaches them, within the walk's lookups.
    async fn prefetch_remote(&mut self, children: &[spaces::Child]) {
        let wanted: Vec<&spaces::Child> = children
            .iter()
            .filter(|child| !child.via.is_empty())
            .filter(|child| {
                !self
                    .local
                    .get(&child.room_id)
                    .is_some_and(|local| local.known)
            })
            .filter(|child| !self.inaccessible.contains(&child.room_id))
            .filter(|child| {
                // A room a parent's answer described is asked about only
                // if it is a space (for its own children).
                self.remote.get(&child.room_id).is_none_or(spaces::is_space)
            })
            .filter(|child| self.cached_remote(&child.room_id).is_none())
            .take(MAX_REMOTE_LOOKUPS.saturating_sub(self.remote_lookups))
            .collect();
        if wanted.len() < 2 {
            return;
        }
        self.remote_lookups += wanted.len();
        let suggested_only = self.suggested_only;
        let answers = futures::future::join_all(
            wanted
                .iter()
                .map(|child| fetch_remote(self.api, &child.room_id, &child.via, suggested_only)),
        )
        .await;
        for (child, answer) in wanted.iter().zip(answers) {
            match answer {
                Some(space) => {
                    self.fetched.insert(child.room_id.clone(), space);
                }
                // As when the walk asks itself: nobody could tell of it,
                // so it is left out.
                None => {
                    self.inaccessible.insert(child.room_id.clone());
                }
            }
        }
    }

    /// Whether the user may see a room only other servers are in: anyone
    /// may join or peek it, the user is invited (an invite this server
    /// holds), or is joined to a room its restricted join rule allows.
    async fn may_see_remote(&mut self, summary: &pb::RoomSummary) -> Result<bool, MatrixError> {
        let room = summary.room.clone().unwrap_or_default();
        if spaces::open_to_all(&room.join_rule, room.world_readable) {
            return Ok(true);
        }
        if self.memberships.is_none() {
            let rooms = |memberships: Vec<String>| {
                self.api
                    .roomserver
                    .query_joined_rooms(pb::QueryJoinedRoomsRequest {
                        user_id: self.user_id.clone(),
                        memberships,
                    })
            };
            let joined = rooms(Vec::new()).await?.room_ids.into_iter().collect();
            let invited = rooms(vec!["invite".into()])
                .await?
                .room_ids
                .into_iter()
                .collect();
            self.memberships = Some((joined, invited));
        }
        let (joined, invited) = self.memberships.as_ref().expect("filled above");
        Ok(invited.contains(&summary.room_id)
            || summary
                .allowed_room_ids
                .iter()
                .any(|allowed| joined.contains(allowed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hold_the_walk_and_its_parameters() {
        for token in [
            Token {
                skip: 0,
                max_depth: None,
                suggested_only: false,
            },
            Token {
                skip: 150,
                max_depth: Some(3),
                suggested_only: true,
            },
        ] {
            assert_eq!(Token::decode(&token.encode()), Some(token));
        }
        for bad in [
            "", "h", "h1", "h1_2", "hx_2_0", "h1_2_2", "h1_2_0_9", "p5", "h-1__0",
        ] {
            assert_eq!(Token::decode(bad), None, "{bad}");
        }
    }
}
