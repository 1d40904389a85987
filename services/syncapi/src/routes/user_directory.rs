//! `POST /user_directory/search`: users who share a room with the
//! searcher or are in a public room (join rule `public`, or world-readable
//! history), matched on their display name and user ID: every word of the
//! search term must begin a word of one or the other, case aside. Those
//! who share a room come first.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixBody, MatrixResult, parse_json, respond};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SyncService;

#[derive(Deserialize)]
struct Search {
    search_term: String,
    limit: Option<u64>,
}

const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;
/// The longest search term taken.
const MAX_TERM: usize = 256;
/// Members read at most per search (a term of one letter matches many).
const MAX_CANDIDATES: u32 = 5_000;

/// The words of a text, lowercase, split at anything not a letter or digit.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Whether every word of the term begins a word of the name or user ID.
fn matches(term: &[String], name: Option<&str>, user_id: &str) -> bool {
    let mut theirs = words(user_id);
    if let Some(name) = name {
        theirs.extend(words(name));
    }
    term.iter()
        .all(|word| theirs.iter().any(|w| w.starts_with(word.as_str())))
}

/// A found user, as the directory shows them.
struct Found {
    display_name: Option<String>,
    avatar_url: Option<String>,
    shares_a_room: bool,
}

pub(crate) async fn search(
    State(service): State<Arc<SyncService>>,
    User(device): User,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let search: Search = parse_json(&body)?;
    if search.search_term.len() > MAX_TERM {
        return Err(MatrixError::invalid_param("search_term is too long"));
    }
    let limit = search
        .limit
        .map_or(DEFAULT_LIMIT, |l| (l as usize).clamp(1, MAX_LIMIT));
    let term = words(&search.search_term);
    if term.is_empty() {
        return respond(json!({ "results": [], "limited": false }));
    }
    // The database narrows by the ASCII words (its case folding is
    // ASCII's); every word is then matched here.
    let ascii: Vec<String> = term.iter().filter(|w| w.is_ascii()).cloned().collect();
    let candidates = service
        .storage
        .directory_candidates(&device.user_id, &ascii, MAX_CANDIDATES)
        .await?;
    let mut found: HashMap<String, Found> = HashMap::new();
    for candidate in candidates {
        let member: Value = serde_json::from_str(&candidate.member_json).unwrap_or_default();
        let name = member["content"]["displayname"].as_str();
        if !matches(&term, name, &candidate.user_id) {
            continue;
        }
        let entry = found.entry(candidate.user_id).or_insert(Found {
            display_name: name.map(str::to_owned),
            avatar_url: member["content"]["avatar_url"].as_str().map(str::to_owned),
            shares_a_room: false,
        });
        entry.shares_a_room |= candidate.shares_a_room;
    }
    let mut results: Vec<(String, Found)> = found.into_iter().collect();
    results.sort_by(|(a_id, a), (b_id, b)| {
        b.shares_a_room
            .cmp(&a.shares_a_room)
            .then_with(|| {
                let key =
                    |name: &Option<String>, id: &str| name.as_deref().unwrap_or(id).to_lowercase();
                key(&a.display_name, a_id).cmp(&key(&b.display_name, b_id))
            })
            .then_with(|| a_id.cmp(b_id))
    });
    let limited = results.len() > limit;
    results.truncate(limit);
    let results: Vec<Value> = results
        .into_iter()
        .map(|(user_id, found)| {
            let mut user = json!({ "user_id": user_id });
            if let Some(name) = found.display_name {
                user["display_name"] = json!(name);
            }
            if let Some(avatar) = found.avatar_url {
                user["avatar_url"] = json!(avatar);
            }
            user
        })
        .collect();
    respond(json!({ "results": results, "limited": limited }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_begins_a_word_of_the_name_or_id() {
        let term = words("ali SMI");
        assert!(matches(&term, Some("Alice Smith"), "@x:hs"));
        assert!(!matches(&term, Some("Alice Jones"), "@x:hs"));
        assert!(matches(&words("alice"), None, "@alice:example.org"));
        assert!(matches(&words("example"), None, "@alice:example.org"));
        assert!(!matches(&words("lice"), Some("Alice"), "@x:hs"));
        assert!(matches(&words("élo"), Some("Élodie"), "@x:hs"));
    }
}
