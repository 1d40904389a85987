use super::{Storage, StorageError};
use ganglion_base::sql;

pub(crate) struct DeviceRow {
    pub(crate) localpart: String,
    pub(crate) device_id: String,
    pub(crate) is_admin: bool,
    pub(crate) is_guest: bool,
}

impl Storage {
    /// Creates a device (or replaces the token of an existing one with the
    /// same ID, as logging in again with a known `device_id` does).
    pub(crate) async fn upsert_device(
        &self,
        localpart: &str,
        device_id: &str,
        display_name: Option<&str>,
        token_hash: &[u8],
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        sql::query("DELETE FROM devices WHERE localpart = $1 AND device_id = $2")
            .bind(localpart)
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
        sql::query(
            "INSERT INTO devices (localpart, device_id, display_name, token_hash, created_ts)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(localpart)
        .bind(device_id)
        .bind(display_name)
        .bind(token_hash)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn device_by_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<DeviceRow>, StorageError> {
        let row = sql::query(
            "SELECT d.localpart, d.device_id, a.is_admin, a.is_guest FROM devices d
             JOIN accounts a ON a.localpart = d.localpart WHERE d.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(match row {
            Some(row) => Some(DeviceRow {
                localpart: row.try_get(0)?,
                device_id: row.try_get(1)?,
                is_admin: row.try_get::<i64, _>(2)? != 0,
                is_guest: row.try_get::<i64, _>(3)? != 0,
            }),
            None => None,
        })
    }

    /// Removes the device holding this token; returns how many were removed.
    /// Removes the device a token belongs to: (localpart, device ID).
    pub(crate) async fn delete_device_by_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<(String, String)>, StorageError> {
        Ok(sql::query_as(
            "DELETE FROM devices WHERE token_hash = $1 RETURNING localpart, device_id",
        )
        .bind(token_hash)
        .fetch_optional(&self.db.pool)
        .await?)
    }

    pub(crate) async fn delete_all_devices(&self, localpart: &str) -> Result<u64, StorageError> {
        let result = sql::query("DELETE FROM devices WHERE localpart = $1")
            .bind(localpart)
            .execute(&self.db.pool)
            .await?;
        Ok(result.rows_affected())
    }
}

impl Storage {
    /// The IDs of an account's devices.
    pub(crate) async fn device_ids(&self, localpart: &str) -> Result<Vec<String>, StorageError> {
        Ok(
            sql::query_scalar("SELECT device_id FROM devices WHERE localpart = $1 ORDER BY id")
                .bind(localpart)
                .fetch_all(&self.db.pool)
                .await?,
        )
    }

    /// Which of `localparts` are guest accounts (asked a hundred at a time).
    pub(crate) async fn guests_among(
        &self,
        localparts: &[&str],
    ) -> Result<Vec<String>, StorageError> {
        let mut guests = Vec::new();
        for chunk in localparts.chunks(100) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT localpart FROM accounts WHERE is_guest <> 0 AND localpart IN ({})",
                placeholders.join(", ")
            );
            let mut query = sql::query_scalar(sqlx::AssertSqlSafe(sql));
            for localpart in chunk {
                query = query.bind(*localpart);
            }
            let found: Vec<String> = query.fetch_all(&self.db.pool).await?;
            guests.extend(found);
        }
        Ok(guests)
    }
}

/// A device as its owner lists it.
pub(crate) struct DeviceInfo {
    pub(crate) device_id: String,
    pub(crate) display_name: Option<String>,
    pub(crate) last_seen: Option<crate::last_seen::Seen>,
}

impl Storage {
    /// An account's devices (or the one named), oldest first.
    pub(crate) async fn devices(
        &self,
        localpart: &str,
        device_id: Option<&str>,
    ) -> Result<Vec<DeviceInfo>, StorageError> {
        let rows = sql::query(
            "SELECT device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent
             FROM devices WHERE localpart = $1 AND ($2 IS NULL OR device_id = $2) ORDER BY id",
        )
        .bind(localpart)
        .bind(device_id)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let ts: Option<i64> = row.try_get(2)?;
                let ip: Option<String> = row.try_get(3)?;
                Ok(DeviceInfo {
                    device_id: row.try_get(0)?,
                    display_name: row.try_get(1)?,
                    last_seen: match (ts, ip) {
                        (Some(ts), Some(ip)) => Some(crate::last_seen::Seen {
                            ip,
                            user_agent: row.try_get(4)?,
                            ts,
                        }),
                        _ => None,
                    },
                })
            })
            .collect()
    }

    /// Renames a device; whether it exists.
    pub(crate) async fn rename_device(
        &self,
        localpart: &str,
        device_id: &str,
        display_name: Option<&str>,
    ) -> Result<bool, StorageError> {
        let done = sql::query(
            "UPDATE devices SET display_name = $3 WHERE localpart = $1 AND device_id = $2",
        )
        .bind(localpart)
        .bind(device_id)
        .bind(display_name)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes devices (their tokens with them); the IDs that existed.
    pub(crate) async fn delete_devices(
        &self,
        localpart: &str,
        device_ids: &[String],
    ) -> Result<Vec<String>, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let mut deleted = Vec::new();
        for device_id in device_ids {
            let done = sql::query("DELETE FROM devices WHERE localpart = $1 AND device_id = $2")
                .bind(localpart)
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() > 0 {
                deleted.push(device_id.clone());
            }
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Writes a device's last sighting (nothing if it is gone).
    pub(crate) async fn set_last_seen(
        &self,
        localpart: &str,
        device_id: &str,
        seen: &crate::last_seen::Seen,
    ) -> Result<(), StorageError> {
        sql::query(
            "UPDATE devices SET last_seen_ts = $3, last_seen_ip = $4, last_seen_user_agent = $5
             WHERE localpart = $1 AND device_id = $2",
        )
        .bind(localpart)
        .bind(device_id)
        .bind(seen.ts)
        .bind(seen.ip.as_str())
        .bind(seen.user_agent.as_deref())
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }
}
