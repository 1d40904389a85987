//! State resolution: the state of a room where its DAG forks. Pure functions
//! over events already loaded: version 2 (and its 2.1 tweaks) is ruma's
//! `state_res::resolve`; version 1, which ruma does not implement, is here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::events::StateEventType;
use ruma::room_version_rules::{RoomVersionRules, StateResolutionVersion};
use ruma::state_res::utils::event_id_set::EventIdSet;
use ruma::{EventId, OwnedEventId};
use sha1::{Digest, Sha1};

use crate::events::{EventError, Pdu, StateMap, authorise_against_state};

/// Events by ID: every state event of the forks and their auth chains.
pub(crate) type EventsById = HashMap<OwnedEventId, Arc<Pdu>>;

/// The full auth chain of `ids` (not including them), as far as `events`
/// holds it.
pub(crate) fn auth_chain<'a>(
    ids: impl IntoIterator<Item = &'a OwnedEventId>,
    events: &EventsById,
) -> HashSet<OwnedEventId> {
    let mut chain = HashSet::new();
    let mut frontier: Vec<&OwnedEventId> = Vec::new();
    for id in ids {
        if let Some(event) = events.get(id) {
            frontier.extend(event.auth_events.iter());
        }
    }
    while let Some(id) = frontier.pop() {
        if chain.insert(id.clone())
            && let Some(event) = events.get(id)
        {
            frontier.extend(event.auth_events.iter());
        }
    }
    chain
}

/// Resolves several states of one room into one. Forks that agree need no
/// work; otherwise the room version's algorithm decides.
pub(crate) fn resolve(
    rules: &RoomVersionRules,
    forks: &[&StateMap],
    events: &EventsById,
) -> Result<StateMap, EventError> {
    match forks {
        [] => return Ok(StateMap::new()),
        [only] => return Ok((*only).clone()),
        _ => {}
    }
    if forks.windows(2).all(|pair| same_state(pair[0], pair[1])) {
        return Ok(forks[0].clone());
    }
    match &rules.state_res {
        StateResolutionVersion::V2(v2) => resolve_v2(rules, v2, forks, events),
        _ => resolve_v1(rules, forks),
    }
}

fn same_state(a: &StateMap, b: &StateMap) -> bool {
    a.len() == b.len()
        && a.iter().all(|(key, event)| {
            b.get(key)
                .is_some_and(|other| other.event_id == event.event_id)
        })
}

fn resolve_v2(
    rules: &RoomVersionRules,
    v2: &ruma::room_version_rules::StateResolutionV2Rules,
    forks: &[&StateMap],
    events: &EventsById,
) -> Result<StateMap, EventError> {
    let maps: Vec<ruma::state_res::StateMap<OwnedEventId>> = forks
        .iter()
        .map(|fork| {
            fork.iter()
                .map(|((kind, key), event)| {
                    (
                        (StateEventType::from(kind.as_str()), key.clone()),
                        event.event_id.clone(),
                    )
                })
                .collect()
        })
        .collect();
    let auth_chains: Vec<EventIdSet<OwnedEventId>> = forks
        .iter()
        .map(|fork| {
            auth_chain(fork.values().map(|e| &e.event_id), events)
                .into_iter()
                .collect()
        })
        .collect();
    let resolved = ruma::state_res::resolve(
        &rules.authorization,
        v2,
        maps.iter(),
        auth_chains,
        |id: &EventId| events.get(id).map(|e| e.as_ref()),
        |conflicted| Some(conflicted_subgraph(conflicted, events)),
    )
    .map_err(|e| EventError::Invalid(format!("state resolution: {e}")))?;
    let mut state = StateMap::with_capacity(resolved.len());
    for ((kind, key), id) in resolved {
        let event = events
            .get(&id)
            .ok_or_else(|| EventError::Invalid(format!("resolved to unknown event {id}")))?;
        state.insert((kind.to_string(), key), event.clone());
    }
    Ok(state)
}

/// The conflicted state subgraph (state resolution v2.1, room version 12):
/// the events on auth-chain paths from one conflicted state event to another.
fn conflicted_subgraph(
    conflicted: &ruma::state_res::StateMap<Vec<OwnedEventId>>,
    events: &EventsById,
) -> EventIdSet<OwnedEventId> {
    let targets: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
    // reaches[e]: some conflicted event is in e's auth chain (or e is one).
    let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
    fn visit(
        id: &OwnedEventId,
        events: &EventsById,
        targets: &HashSet<OwnedEventId>,
        reaches: &mut HashMap<OwnedEventId, bool>,
    ) -> bool {
        if let Some(known) = reaches.get(id) {
            return *known;
        }
        // Iterative post-order to survive deep auth chains.
        let mut stack: Vec<(OwnedEventId, bool)> = vec![(id.clone(), false)];
        while let Some((current, expanded)) = stack.pop() {
            if reaches.contains_key(&current) {
                continue;
            }
            let parents: &[OwnedEventId] = events
                .get(&current)
                .map(|e| e.auth_events.as_slice())
                .unwrap_or(&[]);
            if expanded {
                let hit = parents
                    .iter()
                    .any(|p| targets.contains(p) || reaches.get(p) == Some(&true));
                reaches.insert(current, hit);
            } else {
                stack.push((current.clone(), true));
                for parent in parents {
                    if !reaches.contains_key(parent) {
                        stack.push((parent.clone(), false));
                    }
                }
            }
        }
        reaches.get(id).copied().unwrap_or(false)
    }
    let mut subgraph = EventIdSet::new();
    for start in conflicted.values().flatten() {
        visit(start, events, &targets, &mut reaches);
        // Walk the auth chain of each conflicted event, keeping events that
        // lead on to another conflicted event.
        let mut frontier: Vec<&OwnedEventId> = events
            .get(start)
            .map(|e| e.auth_events.iter().collect())
            .unwrap_or_default();
        let mut seen: HashSet<&OwnedEventId> = HashSet::new();
        while let Some(id) = frontier.pop() {
            if !seen.insert(id) {
                continue;
            }
            let is_target = targets.contains(id);
            if is_target || visit(id, events, &targets, &mut reaches) {
                subgraph.insert(id.clone());
                if let Some(event) = events.get(id) {
                    frontier.extend(event.auth_events.iter());
                }
            }
        }
    }
    subgraph
}

/// State resolution version 1 (room version 1): unconflicted state first,
/// then power levels, join rules and memberships in turn, each accepted in
/// ascending depth while the auth rules allow; any other conflict takes the
/// deepest event the auth rules allow.
fn resolve_v1(rules: &RoomVersionRules, forks: &[&StateMap]) -> Result<StateMap, EventError> {
    let mut resolved = StateMap::new();
    let mut conflicts: HashMap<(String, String), Vec<Arc<Pdu>>> = HashMap::new();
    let mut keys: HashSet<&(String, String)> = HashSet::new();
    for fork in forks {
        keys.extend(fork.keys());
    }
    for key in keys {
        // Version 1 counts a key some forks lack as unconflicted.
        let mut candidates: Vec<Arc<Pdu>> = Vec::new();
        for event in forks.iter().filter_map(|fork| fork.get(key)) {
            if !candidates.iter().any(|c| c.event_id == event.event_id) {
                candidates.push(event.clone());
            }
        }
        if candidates.len() == 1 {
            resolved.insert(key.clone(), candidates.remove(0));
        } else {
            conflicts.insert(key.clone(), candidates);
        }
    }
    let sha1 = |pdu: &Pdu| Sha1::digest(pdu.event_id.as_str().as_bytes());
    let mut auth_kinds: Vec<(String, String)> = Vec::new();
    for kind in ["m.room.power_levels", "m.room.join_rules", "m.room.member"] {
        let mut keys: Vec<&(String, String)> =
            conflicts.keys().filter(|(k, _)| k == kind).collect();
        keys.sort();
        auth_kinds.extend(keys.into_iter().cloned());
    }
    for key in &auth_kinds {
        let Some(candidates) = conflicts.remove(key) else {
            continue;
        };
        let mut ordered = candidates;
        // Ascending depth, then descending SHA-1 of the event ID.
        ordered.sort_by(|a, b| a.depth.cmp(&b.depth).then_with(|| sha1(b).cmp(&sha1(a))));
        let mut iter = ordered.into_iter();
        let Some(first) = iter.next() else { continue };
        resolved.insert(key.clone(), first);
        for event in iter {
            if authorise_against_state(rules, &resolved, &event).is_err() {
                break;
            }
            resolved.insert(key.clone(), event);
        }
    }
    let mut rest: Vec<_> = conflicts.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, candidates) in rest {
        let mut ordered = candidates;
        // Descending depth, then ascending SHA-1: the first allowed wins.
        ordered.sort_by(|a, b| b.depth.cmp(&a.depth).then_with(|| sha1(a).cmp(&sha1(b))));
        let chosen = ordered
            .iter()
            .find(|event| authorise_against_state(rules, &resolved, event).is_ok())
            .or(ordered.last())
            .cloned();
        if let Some(event) = chosen {
            resolved.insert(key, event);
        }
    }
    Ok(resolved)
}
