//! Backfilled history: events older than what the view held when they
//! arrived (a room joined through another server has no past until
//! `/messages` asks for it). They sit below every live position and below
//! outliers ([`OUTLIER_OFFSET`]), ordered by depth ([`history_position`]),
//! so a timeline page reads live events and history in one order. Their
//! place is computed from what the log brings in the order it brings it,
//! so a view rebuilt from the log puts them in the same place.

use ganglion_base::sql;
use std::collections::HashSet;

use super::events::{EVENT_COLUMNS, INSERT_EVENT, OUTLIER_OFFSET, event_row};
use super::{Batch, EventRow, Storage, StorageError};

/// The lowest position history takes.
const HISTORY_BASE: i64 = -(1 << 62);
/// Places for events of one depth (the DAG's forks): more share the last.
const SLOTS_PER_DEPTH: i64 = 1 << 10;
/// Depths beyond this share its places (all of them stay below -1).
const MAX_DEPTH: i64 = 1 << 51;

/// The first place for history of `depth`.
fn depth_band(depth: i64) -> i64 {
    HISTORY_BASE + depth.clamp(0, MAX_DEPTH) * SLOTS_PER_DEPTH
}

/// The earliest timeline events looked at for what precedes them.
const EARLIEST_EXAMINED: i64 = 20;

/// The most gaps one backfill starts from (the federation API's limit).
const MAX_GAPS: usize = 20;

/// A backfilled event as the consumer hands it over.
pub(crate) struct HistoryEvent<'a> {
    pub(crate) partition: u32,
    pub(crate) room_id: &'a str,
    pub(crate) event_id: &'a str,
    pub(crate) event_type: &'a str,
    pub(crate) state_key: Option<&'a str>,
    pub(crate) sender: &'a str,
    pub(crate) json: &'a str,
    pub(crate) depth: i64,
    /// The history visibility in force before it.
    pub(crate) history_visibility: &'a str,
    pub(crate) relates_to: Option<(&'a str, &'a str)>,
}

impl Batch {
    /// Stores a backfilled event at its place in history (an outlier of
    /// the same ID moves there; an event already in the timeline stays).
    pub(crate) async fn apply_history(
        &mut self,
        event: &HistoryEvent<'_>,
    ) -> Result<(), StorageError> {
        self.flush().await?;
        let tx = &mut *self.tx;
        let band = depth_band(event.depth);
        let taken: i64 = sql::query_scalar(
            "SELECT COUNT(*) FROM events WHERE room_id = $1 AND log_offset >= $2 AND log_offset < $3",
        )
        .bind(event.room_id)
        .bind(band)
        .bind(band + SLOTS_PER_DEPTH)
        .fetch_one(&mut *tx)
        .await?;
        let position = band + taken.min(SLOTS_PER_DEPTH - 1);
        let visibility = if event.history_visibility.is_empty() {
            "shared"
        } else {
            event.history_visibility
        };
        sql::query(sqlx::AssertSqlSafe(format!(
            "{INSERT_EVENT}
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '', '', $9, $10, $11)
             ON CONFLICT (event_id) DO UPDATE
             SET log_offset = excluded.log_offset, history_visibility = excluded.history_visibility,
                 relates_to = excluded.relates_to, rel_type = excluded.rel_type
             WHERE events.log_offset = $12"
        )))
        .bind(i64::from(event.partition))
        .bind(position)
        .bind(event.room_id)
        .bind(event.event_id)
        .bind(event.event_type)
        .bind(event.state_key)
        .bind(event.sender)
        .bind(event.json)
        .bind(visibility)
        .bind(event.relates_to.map(|(parent, _)| parent))
        .bind(event.relates_to.map(|(_, kind)| kind))
        .bind(OUTLIER_OFFSET)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

impl Storage {
    /// A page of a room's timeline between two places (`from` inclusive,
    /// `to` exclusive; history below zero, outliers left out), with each
    /// event's place.
    pub(crate) async fn room_page(
        &self,
        room_id: &str,
        (from, to): (i64, i64),
        limit: u32,
        backwards: bool,
    ) -> Result<Vec<(i64, EventRow)>, StorageError> {
        let order = if backwards { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e
             WHERE e.room_id = $1 AND e.log_offset >= $2 AND e.log_offset < $3 AND e.log_offset <> $4
             ORDER BY e.log_offset {order} LIMIT $5"
        );
        let rows = sql::query(sqlx::AssertSqlSafe(sql))
            .bind(room_id)
            .bind(from)
            .bind(to)
            .bind(OUTLIER_OFFSET)
            .bind(i64::from(limit))
            .fetch_all(&self.db.pool)
            .await?;
        rows.into_iter()
            .map(|mut row| Ok((row.try_get::<i64, _>(0)?, event_row(&mut row)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StorageError::from)
    }

    /// The events before the oldest of a room's timeline that this view
    /// lacks: where its history would continue (none: it starts at the
    /// room's creation, or with nothing missing).
    pub(crate) async fn history_gaps(&self, room_id: &str) -> Result<Vec<String>, StorageError> {
        let rows = sql::query(
            "SELECT event_id, json FROM events WHERE room_id = $1 AND log_offset <> $2
             ORDER BY log_offset ASC LIMIT $3",
        )
        .bind(room_id)
        .bind(OUTLIER_OFFSET)
        .bind(EARLIEST_EXAMINED)
        .fetch_all(&self.db.pool)
        .await?;
        let mut own = HashSet::new();
        let mut wanted = Vec::new();
        for row in &rows {
            own.insert(row.try_get::<String, _>(0)?);
            let json: String = row.try_get(1)?;
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&json) else {
                continue;
            };
            for prev in event["prev_events"].as_array().into_iter().flatten() {
                // Room versions 1 and 2 pair each ID with its hashes.
                let id = prev
                    .as_str()
                    .or_else(|| prev.get(0).and_then(|v| v.as_str()));
                if let Some(id) = id {
                    wanted.push(id.to_owned());
                }
            }
        }
        wanted.retain(|id| !own.contains(id));
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(wanted);
        }
        let placeholders: Vec<String> = (0..wanted.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT event_id FROM events WHERE log_offset <> $1 AND event_id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sql::query_scalar::<String>(sqlx::AssertSqlSafe(sql)).bind(OUTLIER_OFFSET);
        for id in &wanted {
            query = query.bind(id);
        }
        let held: HashSet<String> = query.fetch_all(&self.db.pool).await?.into_iter().collect();
        wanted.retain(|id| !held.contains(id));
        wanted.truncate(MAX_GAPS);
        Ok(wanted)
    }
}
