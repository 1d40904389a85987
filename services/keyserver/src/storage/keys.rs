use ganglion_base::sql;
use std::collections::BTreeMap;

use super::{Storage, StorageError};

/// A one-time or fallback key as uploaded: (key ID, algorithm, JSON).
pub(crate) type UploadedKey = (String, String, String);

/// A device key change waiting in the outbox for `keyserver.key_changes`;
/// its ID is the change's stream ID.
#[derive(Debug, Clone)]
pub(crate) struct PendingChange {
    pub(crate) id: i64,
    pub(crate) user_id: String,
    pub(crate) device_id: String,
    /// The one user who hears of it (see `DeviceKeyChange.seen_by`); empty
    /// for a change everyone sharing a room hears of.
    pub(crate) seen_by: String,
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadError {
    /// A one-time key ID already holds a different key.
    #[error("one-time key {0} already exists with different content")]
    Conflict(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for UploadError {
    fn from(error: sqlx::Error) -> Self {
        UploadError::Storage(error.into())
    }
}

/// Whether two key objects are the same JSON (whatever the key order).
fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

impl Storage {
    /// Stores a device's uploaded keys in one transaction: its identity
    /// keys (replacing any), new one-time keys (an ID uploaded again must
    /// carry the same key), and one fallback key per algorithm (a new one
    /// replaces the old and is unused).
    pub(crate) async fn upload(
        &self,
        (user_id, device_id): (&str, &str),
        device_keys: Option<&str>,
        one_time_keys: &[UploadedKey],
        fallback_keys: &[UploadedKey],
    ) -> Result<Option<PendingChange>, UploadError> {
        let mut tx = self.db.pool.begin().await?;
        let mut change = None;
        if let Some(json) = device_keys {
            let stored: Option<String> = sql::query_scalar(
                "SELECT key_json FROM device_keys WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(&mut *tx)
            .await?;
            // The same keys again (clients re-upload them) change nothing
            // anyone needs to hear of.
            if !stored.is_some_and(|stored| same_json(&stored, json)) {
                sql::query(
                    "INSERT INTO device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
                )
                .bind(user_id)
                .bind(device_id)
                .bind(json)
                .execute(&mut *tx)
                .await?;
                change = Some(Self::enqueue_change(&mut tx, user_id, device_id).await?);
            }
        }
        for (key_id, algorithm, json) in one_time_keys {
            let existing: Option<String> = sql::query_scalar(
                "SELECT key_json FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND key_id = $3",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(key_id)
            .fetch_optional(&mut *tx)
            .await?;
            match existing {
                Some(stored) if same_json(&stored, json) => {}
                Some(_) => return Err(UploadError::Conflict(key_id.clone())),
                None => {
                    sql::query(
                        "INSERT INTO one_time_keys (user_id, device_id, key_id, algorithm, key_json)
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(user_id)
                    .bind(device_id)
                    .bind(key_id)
                    .bind(algorithm)
                    .bind(json)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        for (key_id, algorithm, json) in fallback_keys {
            // The same key again keeps its `used` mark; another replaces it.
            sql::query(
                "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
                 VALUES ($1, $2, $3, $4, $5, 0)
                 ON CONFLICT (user_id, device_id, algorithm) DO UPDATE
                 SET key_id = excluded.key_id, key_json = excluded.key_json, used = 0
                 WHERE fallback_keys.key_id <> excluded.key_id",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(algorithm)
            .bind(key_id)
            .bind(json)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(change)
    }

    /// An outbox row announcing that a device's keys changed.
    pub(super) async fn enqueue_change(
        tx: &mut sql::Transaction,
        user_id: &str,
        device_id: &str,
    ) -> Result<PendingChange, sqlx::Error> {
        let id: i64 = sql::query_scalar(
            "INSERT INTO key_changes_outbox (user_id, device_id) VALUES ($1, $2) RETURNING id",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_one(&mut **tx)
        .await?;
        sql::query(
            "INSERT INTO device_list_streams (user_id, stream_id) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id",
        )
        .bind(user_id)
        .bind(id)
        .execute(&mut **tx)
        .await?;
        Ok(PendingChange {
            id,
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            seen_by: String::new(),
        })
    }

    /// An outbox row telling `signer` alone that their signature of
    /// `user_id`'s master key changed (no device list stream moves).
    pub(super) async fn enqueue_signer_change(
        tx: &mut sql::Transaction,
        user_id: &str,
        signer: &str,
    ) -> Result<PendingChange, sqlx::Error> {
        let id: i64 = sql::query_scalar(
            "INSERT INTO key_changes_outbox (user_id, device_id, seen_by) VALUES ($1, '', $2)
             RETURNING id",
        )
        .bind(user_id)
        .bind(signer)
        .fetch_one(&mut **tx)
        .await?;
        Ok(PendingChange {
            id,
            user_id: user_id.to_owned(),
            device_id: String::new(),
            seen_by: signer.to_owned(),
        })
    }

    /// An outbox row announcing a device that changed otherwise than in
    /// its keys, if it has identity keys.
    pub(crate) async fn device_changed(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<PendingChange>, StorageError> {
        let mut tx = self.db.pool.begin_write().await?;
        let known: Option<String> = sql::query_scalar(
            "SELECT device_id FROM device_keys WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await?;
        if known.is_none() {
            return Ok(None);
        }
        let change = Self::enqueue_change(&mut tx, user_id, device_id).await?;
        tx.commit().await?;
        Ok(Some(change))
    }

    /// Removes devices' identity, one-time and fallback keys (every device
    /// of the user when `devices` is `None`), with an outbox row for each
    /// device that had identity keys.
    pub(crate) async fn delete_devices(
        &self,
        user_id: &str,
        devices: Option<&[String]>,
    ) -> Result<Vec<PendingChange>, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let known: Vec<String> =
            sql::query_scalar("SELECT device_id FROM device_keys WHERE user_id = $1")
                .bind(user_id)
                .fetch_all(&mut *tx)
                .await?;
        let mut changes = Vec::new();
        for device_id in known {
            if devices.is_some_and(|devices| !devices.contains(&device_id)) {
                continue;
            }
            sql::query("DELETE FROM device_keys WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(&device_id)
                .execute(&mut *tx)
                .await?;
            // What signed the device, and what the device signed.
            sql::query(
                "DELETE FROM cross_signing_signatures
                 WHERE (target_user_id = $1 AND target_key_id = $2)
                    OR (signer_user_id = $1 AND signer_key_id = $3)",
            )
            .bind(user_id)
            .bind(&device_id)
            .bind(format!("ed25519:{device_id}"))
            .execute(&mut *tx)
            .await?;
            changes.push(Self::enqueue_change(&mut tx, user_id, &device_id).await?);
        }
        for table in ["one_time_keys", "fallback_keys"] {
            let sql = format!("DELETE FROM {table} WHERE user_id = $1 AND device_id = $2");
            let every = format!("DELETE FROM {table} WHERE user_id = $1");
            match devices {
                Some(devices) => {
                    for device_id in devices {
                        sql::query(sqlx::AssertSqlSafe(sql.clone()))
                            .bind(user_id)
                            .bind(device_id)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                None => {
                    sql::query(sqlx::AssertSqlSafe(every))
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(changes)
    }

    /// A user's latest device list stream ID (0 when none changed yet).
    pub(crate) async fn device_list_stream(&self, user_id: &str) -> Result<i64, StorageError> {
        let id: Option<i64> =
            sql::query_scalar("SELECT stream_id FROM device_list_streams WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&self.db.pool)
                .await?;
        Ok(id.unwrap_or(0))
    }

    /// Outbox rows, oldest first.
    pub(crate) async fn pending_changes(&self) -> Result<Vec<PendingChange>, StorageError> {
        let rows: Vec<(i64, String, String, String)> = sql::query_as(
            "SELECT id, user_id, device_id, seen_by FROM key_changes_outbox ORDER BY id",
        )
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, user_id, device_id, seen_by)| PendingChange {
                id,
                user_id,
                device_id,
                seen_by,
            })
            .collect())
    }

    /// Whether an outbox row is still waiting (another replica may have
    /// published it meanwhile).
    pub(crate) async fn change_pending(&self, id: i64) -> Result<bool, StorageError> {
        let row: Option<i64> = sql::query_scalar("SELECT id FROM key_changes_outbox WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(row.is_some())
    }

    /// An outbox row is on the log.
    pub(crate) async fn change_published(&self, id: i64) -> Result<(), StorageError> {
        sql::query("DELETE FROM key_changes_outbox WHERE id = $1")
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// A device's one-time key counts per algorithm, and the algorithms of
    /// its unused fallback keys.
    pub(crate) async fn counts(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<(BTreeMap<String, u64>, Vec<String>), StorageError> {
        // One statement for both (asked on every `/sync`): one-time key
        // counts, then unused fallback keys marked with a count of -1.
        let rows: Vec<(String, i64)> = sql::query_as(
            "SELECT algorithm, COUNT(*) FROM one_time_keys
             WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm
             UNION ALL
             SELECT algorithm, -1 FROM fallback_keys
             WHERE user_id = $1 AND device_id = $2 AND used = 0",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_all(&self.db.pool)
        .await?;
        let mut counts = BTreeMap::new();
        let mut unused = Vec::new();
        for (algorithm, n) in rows {
            if n < 0 {
                unused.push(algorithm);
            } else {
                counts.insert(algorithm, n as u64);
            }
        }
        unused.sort();
        Ok((counts, unused))
    }

    /// The identity keys of a user's devices (all of them when `devices`
    /// is empty): (device ID, JSON).
    pub(crate) async fn device_keys(
        &self,
        user_id: &str,
        devices: &[String],
    ) -> Result<Vec<(String, String)>, StorageError> {
        let rows = sql::query(
            "SELECT device_id, key_json FROM device_keys WHERE user_id = $1 ORDER BY device_id",
        )
        .bind(user_id)
        .fetch_all(&self.db.pool)
        .await?;
        let mut out = Vec::new();
        for row in rows {
            let device_id: String = row.try_get(0)?;
            if devices.is_empty() || devices.contains(&device_id) {
                out.push((device_id, row.try_get(1)?));
            }
        }
        Ok(out)
    }

    /// Takes one of a device's one-time keys of `algorithm` (the lowest
    /// ID), or when none is left marks its fallback key used and returns
    /// that: (key ID, JSON).
    pub(crate) async fn claim(
        &self,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> Result<Option<(String, String)>, StorageError> {
        // A concurrent claim may take the key chosen: choose again.
        for _ in 0..3 {
            let candidate: Option<String> = sql::query_scalar(
                "SELECT key_id FROM one_time_keys
                 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
                 ORDER BY key_id LIMIT 1",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(algorithm)
            .fetch_optional(&self.db.pool)
            .await?;
            let Some(key_id) = candidate else {
                break;
            };
            let taken: Option<String> = sql::query_scalar(
                "DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND key_id = $3
                 RETURNING key_json",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(&key_id)
            .fetch_optional(&self.db.pool)
            .await?;
            if let Some(json) = taken {
                return Ok(Some((key_id, json)));
            }
        }
        let fallback = sql::query(
            "UPDATE fallback_keys SET used = 1
             WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
             RETURNING key_id, key_json",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(match fallback {
            Some(row) => Some((row.try_get(0)?, row.try_get(1)?)),
            None => None,
        })
    }
}
