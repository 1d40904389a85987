//! What operators ask of the syncapi's view from the command line, on its
//! database directly: the media a room's events name (for `ganglion media
//! quarantine|delete --room`). Encrypted events' media cannot be seen.

use std::collections::BTreeSet;

use ganglion_base::{Config, Database, DatabaseError, sql};

/// How many events are read at a time.
const PAGE: i64 = 1000;

/// Every `mxc://` URI in the content of `room_id`'s events this view
/// holds (messages, stickers, avatars, members' avatars, anything else),
/// once each, in order.
pub async fn media_in_room(config: &Config, room_id: &str) -> Result<Vec<String>, DatabaseError> {
    let db = Database::open_without_flush(config, "syncapi", crate::storage::MIGRATIONS).await?;
    let mut found = BTreeSet::new();
    let mut after = 0_i64;
    loop {
        let rows = sql::query(
            "SELECT id, json FROM events WHERE room_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(room_id)
        .bind(after)
        .bind(PAGE)
        .fetch_all(&db.pool)
        .await
        .map_err(DatabaseError::from)?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.try_get(0).map_err(DatabaseError::from)?;
        for row in &rows {
            let json: String = row.try_get(1).map_err(DatabaseError::from)?;
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&json) {
                mxc_uris(&event["content"], &mut found);
            }
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    Ok(found.into_iter().collect())
}

/// The `mxc://` URIs anywhere in `value`.
fn mxc_uris(value: &serde_json::Value, found: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::String(text) if text.starts_with("mxc://") => {
            found.insert(text.clone());
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| mxc_uris(v, found)),
        serde_json::Value::Object(fields) => fields.values().for_each(|v| mxc_uris(v, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_mxc_uri_in_content_is_found_once() {
        let content = serde_json::json!({
            "msgtype": "m.image",
            "url": "mxc://a.org/one",
            "info": {"thumbnail_url": "mxc://a.org/thumb", "mimetype": "image/png"},
            "list": ["mxc://b.org/two", "https://not.mxc/x", {"deep": "mxc://a.org/one"}],
            "body": "mention of mxc:// in text is not one"
        });
        let mut found = std::collections::BTreeSet::new();
        super::mxc_uris(&content, &mut found);
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            ["mxc://a.org/one", "mxc://a.org/thumb", "mxc://b.org/two"]
        );
    }
}
