//! The user directory's reads: the members of the rooms a searcher shares
//! and of public rooms (join rule `public`, or world-readable history),
//! straight from the current state, so the directory follows every join,
//! leave, profile and visibility change without a table of its own.

use ganglion_base::sql;

use super::{Storage, StorageError};

/// A member the directory may show.
#[derive(Debug)]
pub(crate) struct DirectoryCandidate {
    pub(crate) user_id: String,
    /// Their member event (with their display name and avatar there).
    pub(crate) member_json: String,
    /// Whether they share a room with the searcher.
    pub(crate) shares_a_room: bool,
}

/// `%`, `_` and `\` escaped for `LIKE … ESCAPE '\'`.
fn like_escaped(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    for c in word.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Storage {
    /// Joined members of the searcher's rooms and of public rooms whose
    /// member event holds every one of `words` (lowercase ASCII; case is
    /// ignored), at most `max_rows`.
    pub(crate) async fn directory_candidates(
        &self,
        searcher: &str,
        words: &[String],
        max_rows: u32,
    ) -> Result<Vec<DirectoryCandidate>, StorageError> {
        let mut clauses = String::new();
        for n in 0..words.len() {
            clauses.push_str(&format!(" AND LOWER(e.json) LIKE ${} ESCAPE '\\'", n + 3));
        }
        let sql = format!(
            "SELECT s.state_key, e.json,
                    CAST(CASE WHEN s.room_id IN (
                        SELECT room_id FROM current_state WHERE event_type = 'm.room.member'
                          AND state_key = $1 AND membership = 'join'
                    ) THEN 1 ELSE 0 END AS BIGINT)
             FROM current_state s JOIN events e ON e.event_id = s.event_id
             WHERE s.event_type = 'm.room.member' AND s.membership = 'join'
               AND (s.room_id IN (
                        SELECT room_id FROM current_state WHERE event_type = 'm.room.member'
                          AND state_key = $1 AND membership = 'join')
                    OR s.room_id IN (
                        SELECT p.room_id FROM current_state p JOIN events pe ON pe.event_id = p.event_id
                        WHERE (p.event_type = 'm.room.join_rules' AND p.state_key = ''
                               AND pe.json LIKE '%\"join_rule\":\"public\"%')
                           OR (p.event_type = 'm.room.history_visibility' AND p.state_key = ''
                               AND pe.json LIKE '%\"history_visibility\":\"world_readable\"%')))
               {clauses}
             LIMIT $2"
        );
        let mut query = sql::query(sqlx::AssertSqlSafe(sql))
            .bind(searcher)
            .bind(i64::from(max_rows));
        for word in words {
            query = query.bind(format!("%{}%", like_escaped(word)));
        }
        let rows = query.fetch_all(&self.db.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(DirectoryCandidate {
                    user_id: row.try_get(0)?,
                    member_json: row.try_get(1)?,
                    shares_a_room: row.try_get::<i64, _>(2)? != 0,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StorageError::from)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_patterns_escape_their_wildcards() {
        assert_eq!(super::like_escaped("a%b_c\\d"), "a\\%b\\_c\\\\d");
    }
}
