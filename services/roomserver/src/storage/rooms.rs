use std::sync::Arc;

use sqlx::Row;

use super::{Storage, StorageError};
use crate::events::{Pdu, StateMap};

pub(crate) struct RoomRow {
    pub(crate) room_nid: i64,
    pub(crate) room_version: String,
    pub(crate) depth: i64,
}

/// Everything one input record changes, written in one transaction.
pub(crate) struct AppendBatch {
    pub(crate) room_id: String,
    /// Set when the batch creates the room.
    pub(crate) new_room_version: Option<String>,
    pub(crate) events: Vec<Arc<Pdu>>,
    pub(crate) request_id: String,
    /// Encoded `roomserver.output` records, one per event.
    pub(crate) outputs: Vec<Vec<u8>>,
    /// An alias to point at the room, in the same transaction.
    pub(crate) alias: Option<String>,
}

impl Storage {
    pub(crate) async fn room(&self, room_id: &str) -> Result<Option<RoomRow>, StorageError> {
        let row = sqlx::query("SELECT room_nid, room_version, depth FROM rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(match row {
            Some(row) => Some(RoomRow {
                room_nid: row.try_get(0)?,
                room_version: row.try_get(1)?,
                depth: row.try_get(2)?,
            }),
            None => None,
        })
    }

    /// The room's current state with every event loaded.
    pub(crate) async fn current_state(&self, room_nid: i64) -> Result<StateMap, StorageError> {
        let rows = sqlx::query(
            "SELECT s.event_type, s.state_key, e.event_id, e.json FROM current_state s
             JOIN events e ON e.event_nid = s.event_nid WHERE s.room_nid = $1",
        )
        .bind(room_nid)
        .fetch_all(&self.db.pool)
        .await?;
        let mut state = StateMap::with_capacity(rows.len());
        for row in rows {
            let event_id: String = row.try_get(2)?;
            let json: String = row.try_get(3)?;
            let pdu =
                Pdu::from_json(&event_id, &json).map_err(|_| StorageError::Corrupt(event_id))?;
            state.insert((row.try_get(0)?, row.try_get(1)?), Arc::new(pdu));
        }
        Ok(state)
    }

    pub(crate) async fn forward_extremities(
        &self,
        room_nid: i64,
    ) -> Result<Vec<String>, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT event_id FROM forward_extremities WHERE room_nid = $1 ORDER BY event_id",
        )
        .bind(room_nid)
        .fetch_all(&self.db.pool)
        .await?)
    }

    /// One state event of a room's current state, as JSON.
    pub(crate) async fn state_event(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<String>, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT e.json FROM current_state s JOIN rooms r ON r.room_nid = s.room_nid
             JOIN events e ON e.event_nid = s.event_nid
             WHERE r.room_id = $1 AND s.event_type = $2 AND s.state_key = $3",
        )
        .bind(room_id)
        .bind(event_type)
        .bind(state_key)
        .fetch_optional(&self.db.pool)
        .await?)
    }

    /// Persists a batch: the room (if new), its events, the state they set,
    /// the new forward extremity, the request as processed and the outputs
    /// to publish. Returns the outbox sequence numbers of the outputs.
    /// Also clears the outbox up to `published_through` (already in the log).
    pub(crate) async fn append(
        &self,
        batch: &AppendBatch,
        published_through: i64,
    ) -> Result<Vec<i64>, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        if published_through > 0 {
            sqlx::query("DELETE FROM output_outbox WHERE seq <= $1")
                .bind(published_through)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(version) = &batch.new_room_version {
            sqlx::query("INSERT INTO rooms (room_id, room_version, depth) VALUES ($1, $2, 0)")
                .bind(&batch.room_id)
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        let room_nid: i64 = sqlx::query_scalar("SELECT room_nid FROM rooms WHERE room_id = $1")
            .bind(&batch.room_id)
            .fetch_one(&mut *tx)
            .await?;
        let mut last: Option<&Arc<Pdu>> = None;
        for pdu in &batch.events {
            let event_nid: i64 = sqlx::query_scalar(
                "INSERT INTO events (event_id, room_nid, event_type, state_key, depth, json)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING event_nid",
            )
            .bind(pdu.event_id.as_str())
            .bind(room_nid)
            .bind(pdu.kind.to_string())
            .bind(pdu.state_key.as_deref())
            .bind(pdu.depth)
            .bind(&*pdu.json)
            .fetch_one(&mut *tx)
            .await?;
            if let Some(state_key) = &pdu.state_key {
                sqlx::query(
                    "INSERT INTO current_state (room_nid, event_type, state_key, event_nid)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (room_nid, event_type, state_key) DO UPDATE SET event_nid = excluded.event_nid",
                )
                .bind(room_nid)
                .bind(pdu.kind.to_string())
                .bind(state_key)
                .bind(event_nid)
                .execute(&mut *tx)
                .await?;
            }
            last = Some(pdu);
        }
        if let Some(last) = last {
            sqlx::query("DELETE FROM forward_extremities WHERE room_nid = $1")
                .bind(room_nid)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO forward_extremities (room_nid, event_id) VALUES ($1, $2)")
                .bind(room_nid)
                .bind(last.event_id.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE rooms SET depth = $1 WHERE room_nid = $2")
                .bind(last.depth)
                .bind(room_nid)
                .execute(&mut *tx)
                .await?;
        }
        let event_ids: Vec<&str> = batch.events.iter().map(|p| p.event_id.as_str()).collect();
        sqlx::query(
            "INSERT INTO processed_inputs (request_id, room_id, event_ids) VALUES ($1, $2, $3)",
        )
        .bind(&batch.request_id)
        .bind(&batch.room_id)
        .bind(serde_json::to_string(&event_ids).unwrap_or_default())
        .execute(&mut *tx)
        .await?;
        if let Some(alias) = &batch.alias {
            sqlx::query("INSERT INTO room_aliases (alias, room_id) VALUES ($1, $2)")
                .bind(alias)
                .bind(&batch.room_id)
                .execute(&mut *tx)
                .await?;
        }
        let mut seqs = Vec::with_capacity(batch.outputs.len());
        for payload in &batch.outputs {
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO output_outbox (room_id, payload) VALUES ($1, $2) RETURNING seq",
            )
            .bind(&batch.room_id)
            .bind(payload.as_slice())
            .fetch_one(&mut *tx)
            .await?;
            seqs.push(seq);
        }
        tx.commit().await?;
        Ok(seqs)
    }
}
