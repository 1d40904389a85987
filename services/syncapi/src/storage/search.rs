//! Full-text search of the events a syncapi holds: messages' bodies and
//! rooms' names and topics, indexed as they are stored (and forgotten when
//! redacted). SQLite's FTS5 ranks with bm25, PostgreSQL's tsvector with
//! `ts_rank`; both match every word of a search, each as a prefix.

use ganglion_base::Engine;
use ganglion_base::sql;

use super::events::{EVENT_COLUMNS, event_row};
use super::{EventRow, Storage, StorageError};

/// The keys a search may look in, and the event type each belongs to.
pub(crate) const KEYS: [(&str, &str); 3] = [
    ("content.body", "m.room.message"),
    ("content.name", "m.room.name"),
    ("content.topic", "m.room.topic"),
];

/// The longest text indexed of one event.
const MAX_TEXT: usize = 64 * 1024;

/// The fields of an event the index reads, borrowed where they can be
/// (one parse of the event's JSON, no tree: this runs for every message).
#[derive(serde::Deserialize)]
struct Indexed<'a> {
    #[serde(borrow, default)]
    content: IndexedContent<'a>,
}

#[derive(serde::Deserialize, Default)]
struct IndexedContent<'a> {
    #[serde(borrow, default)]
    body: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    topic: Option<std::borrow::Cow<'a, str>>,
}

/// The key and text of an event worth indexing.
pub(crate) fn searchable(event_type: &str, json: &str) -> Option<(&'static str, String)> {
    let (key, _) = KEYS.iter().find(|(_, t)| *t == event_type)?;
    let event: Indexed<'_> = serde_json::from_str(json).ok()?;
    let text = match *key {
        "content.body" => event.content.body,
        "content.name" => event.content.name,
        _ => event.content.topic,
    }?;
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some((*key, text[..end].replace('\0', " ")))
}

pub(crate) async fn index(
    tx: &mut sql::Transaction,
    engine: Engine,
    (event_id, key): (&str, &str),
    text: &str,
) -> Result<(), StorageError> {
    let statement = match engine {
        Engine::Sqlite => {
            "INSERT INTO event_search (rowid, text, key)
             SELECT id, $1, $3 FROM events WHERE event_id = $2"
        }
        Engine::Postgres => {
            "INSERT INTO event_search (event_id, key, vector)
             VALUES ($2, $3, to_tsvector('simple', $1)) ON CONFLICT (event_id) DO NOTHING"
        }
    };
    sql::query(statement)
        .bind(text)
        .bind(event_id)
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(crate) async fn forget(
    tx: &mut sql::Transaction,
    engine: Engine,
    event_id: &str,
) -> Result<(), StorageError> {
    let statement = match engine {
        Engine::Sqlite => {
            "DELETE FROM event_search WHERE rowid = (SELECT id FROM events WHERE event_id = $1)"
        }
        Engine::Postgres => "DELETE FROM event_search WHERE event_id = $1",
    };
    sql::query(statement)
        .bind(event_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The words of a search, lowercase, split at anything not a letter or
/// digit (so no word carries the engines' query syntax).
pub(crate) fn words(term: &str) -> Vec<String> {
    term.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(16)
        .map(str::to_lowercase)
        .collect()
}

/// A found event and its rank (higher is better).
pub(crate) struct Hit {
    pub(crate) event: EventRow,
    pub(crate) rank: f64,
}

impl Storage {
    /// The best-ranked events (at most `max`) holding every word, in the
    /// rooms `user_id` is joined to, in the keys asked for.
    pub(crate) async fn search(
        &self,
        user_id: &str,
        words: &[String],
        keys: &[&str],
        max: u32,
    ) -> Result<Vec<Hit>, StorageError> {
        if words.is_empty() || keys.is_empty() {
            return Ok(Vec::new());
        }
        let joined = "SELECT room_id FROM current_state WHERE event_type = 'm.room.member'
                      AND state_key = $2 AND membership = 'join'";
        let (query_text, statement) = match self.db.engine {
            Engine::Sqlite => (
                words
                    .iter()
                    .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
                    .collect::<Vec<_>>()
                    .join(" "),
                format!(
                    "SELECT {EVENT_COLUMNS}, -bm25(event_search) FROM event_search
                     JOIN events e ON e.id = event_search.rowid
                     WHERE event_search MATCH $1 AND e.room_id IN ({joined})
                       AND event_search.key IN ($4, $5, $6)
                     ORDER BY bm25(event_search) LIMIT $3"
                ),
            ),
            Engine::Postgres => (
                words
                    .iter()
                    .map(|w| format!("{w}:*"))
                    .collect::<Vec<_>>()
                    .join(" & "),
                format!(
                    "SELECT {EVENT_COLUMNS}, CAST(ts_rank(s.vector, q) AS DOUBLE PRECISION)
                     FROM event_search s JOIN events e ON e.event_id = s.event_id
                     CROSS JOIN to_tsquery('simple', $1) q
                     WHERE s.vector @@ q AND e.room_id IN ({joined})
                       AND s.key IN ($4, $5, $6)
                     ORDER BY 11 DESC LIMIT $3"
                ),
            ),
        };
        let key = |n: usize| keys.get(n).unwrap_or(&keys[0]).to_string();
        let rows = sql::query(sqlx::AssertSqlSafe(statement))
            .bind(query_text)
            .bind(user_id)
            .bind(i64::from(max))
            .bind(key(0))
            .bind(key(1))
            .bind(key(2))
            .fetch_all(&self.db.pool)
            .await?;
        rows.into_iter()
            .map(|mut row| {
                Ok(Hit {
                    event: event_row(&mut row)?,
                    rank: row.try_get::<f64, _>(10)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StorageError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_worth_indexing() {
        let message = r#"{"type":"m.room.message","content":{"body":"Hello there"}}"#;
        assert_eq!(
            searchable("m.room.message", message),
            Some(("content.body", "Hello there".to_owned()))
        );
        let topic = r#"{"content":{"topic":"cats"}}"#;
        assert_eq!(
            searchable("m.room.topic", topic),
            Some(("content.topic", "cats".to_owned()))
        );
        assert_eq!(
            searchable("m.room.message", r#"{"content":{"body":5}}"#),
            None
        );
        assert_eq!(searchable("m.reaction", message), None);
    }

    #[test]
    fn words_carry_no_query_syntax() {
        assert_eq!(
            words("Hello, \"world\" AND* x:y"),
            ["hello", "world", "and", "x", "y"]
        );
        assert!(words(" *&|! ").is_empty());
    }
}
