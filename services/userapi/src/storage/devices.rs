use super::{Storage, StorageError};
use ganglion_base::sql;

pub(crate) struct DeviceRow {
    pub(crate) localpart: String,
    pub(crate) device_id: String,
    pub(crate) is_admin: bool,
    pub(crate) is_guest: bool,
    /// When the access token expires (a refreshable one).
    pub(crate) access_expires_ms: Option<i64>,
    /// Whether the refresh token before the latest is still usable (the
    /// latest access token not used yet).
    pub(crate) previous_refresh: bool,
}

/// A device's tokens as stored: the access token's hash, and for a
/// refreshable one its refresh token's hash and when it expires.
pub(crate) struct Tokens<'a> {
    pub(crate) access_hash: &'a [u8],
    pub(crate) refresh: Option<(&'a [u8], i64)>,
}

impl Storage {
    /// Creates a device (or replaces the token of an existing one with the
    /// same ID, as logging in again with a known `device_id` does).
    pub(crate) async fn upsert_device(
        &self,
        localpart: &str,
        device_id: &str,
        display_name: Option<&str>,
        tokens: Tokens<'_>,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        sql::query("DELETE FROM devices WHERE localpart = $1 AND device_id = $2")
            .bind(localpart)
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
        sql::query(
            "INSERT INTO devices (localpart, device_id, display_name, token_hash, created_ts,
                                  refresh_hash, access_expires_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(localpart)
        .bind(device_id)
        .bind(display_name)
        .bind(tokens.access_hash)
        .bind(now_ms)
        .bind(tokens.refresh.map(|(hash, _)| hash))
        .bind(tokens.refresh.map(|(_, expires)| expires))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Makes `device_id` the user's dehydrated device with `data`, deleting
    /// the one before (answered, even when it had the same ID). `None`,
    /// and nothing changed, when `device_id` is one of the user's ordinary
    /// devices.
    pub(crate) async fn put_dehydrated_device(
        &self,
        localpart: &str,
        device: (&str, Option<&str>),
        data: &str,
        token_hash: &[u8],
        now_ms: i64,
    ) -> Result<Option<Option<String>>, StorageError> {
        let (device_id, display_name) = device;
        let mut tx = self.db.pool.begin_write().await?;
        let ordinary: Option<i64> = sql::query_scalar(
            "SELECT id FROM devices
             WHERE localpart = $1 AND device_id = $2 AND dehydrated_data IS NULL",
        )
        .bind(localpart)
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await?;
        if ordinary.is_some() {
            return Ok(None);
        }
        let previous: Option<String> = sql::query_scalar(
            "SELECT device_id FROM devices WHERE localpart = $1 AND dehydrated_data IS NOT NULL",
        )
        .bind(localpart)
        .fetch_optional(&mut *tx)
        .await?;
        sql::query("DELETE FROM devices WHERE localpart = $1 AND dehydrated_data IS NOT NULL")
            .bind(localpart)
            .execute(&mut *tx)
            .await?;
        sql::query(
            "INSERT INTO devices (localpart, device_id, display_name, token_hash, created_ts,
                                  dehydrated_data)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(localpart)
        .bind(device_id)
        .bind(display_name)
        .bind(token_hash)
        .bind(now_ms)
        .bind(data)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(previous))
    }

    /// The user's dehydrated device: its ID and data.
    pub(crate) async fn dehydrated_device(
        &self,
        localpart: &str,
    ) -> Result<Option<(String, String)>, StorageError> {
        let row = sql::query(
            "SELECT device_id, dehydrated_data FROM devices
             WHERE localpart = $1 AND dehydrated_data IS NOT NULL",
        )
        .bind(localpart)
        .fetch_optional(&self.db.pool)
        .await?;
        row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .transpose()
    }

    pub(crate) async fn device_by_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<DeviceRow>, StorageError> {
        let row = sql::query(
            "SELECT d.localpart, d.device_id, a.is_admin, a.is_guest, d.access_expires_ms,
                    CAST(CASE WHEN d.previous_refresh_hash IS NULL THEN 0 ELSE 1 END AS BIGINT)
             FROM devices d JOIN accounts a ON a.localpart = d.localpart WHERE d.token_hash = $1",
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
                access_expires_ms: row.try_get(4)?,
                previous_refresh: row.try_get::<i64, _>(5)? != 0,
            }),
            None => None,
        })
    }

    /// The latest access token was used: the refresh token before the
    /// latest is no longer usable.
    pub(crate) async fn forget_previous_refresh(
        &self,
        token_hash: &[u8],
    ) -> Result<(), StorageError> {
        sql::query("UPDATE devices SET previous_refresh_hash = NULL WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Swaps a refresh token (the latest, or the one before while the
    /// latest access token is unused) for new tokens: (localpart, device
    /// ID), or `None` when it is no device's.
    pub(crate) async fn refresh(
        &self,
        refresh_hash: &[u8],
        new_access_hash: &[u8],
        (new_refresh_hash, expires_ms): (&[u8], i64),
    ) -> Result<Option<(String, String)>, StorageError> {
        let mut tx = self.db.pool.begin_write().await?;
        let found: Option<(String, String, i64)> = sql::query_as(
            "SELECT localpart, device_id,
                    CAST(CASE WHEN refresh_hash = $1 THEN 1 ELSE 0 END AS BIGINT)
             FROM devices WHERE refresh_hash = $1 OR previous_refresh_hash = $1",
        )
        .bind(refresh_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((localpart, device_id, latest)) = found else {
            return Ok(None);
        };
        // Refreshing with the latest makes it the one before; with the
        // one before, that stays.
        let previous = if latest == 1 {
            "previous_refresh_hash = refresh_hash, "
        } else {
            ""
        };
        sql::query(sqlx::AssertSqlSafe(format!(
            "UPDATE devices SET {previous}refresh_hash = $1, token_hash = $2,
                 access_expires_ms = $3
             WHERE localpart = $4 AND device_id = $5"
        )))
        .bind(new_refresh_hash)
        .bind(new_access_hash)
        .bind(expires_ms)
        .bind(&localpart)
        .bind(&device_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some((localpart, device_id)))
    }

    /// Stores a login token's hash for a user until `expires_ms`, dropping
    /// the expired ones.
    pub(crate) async fn add_login_token(
        &self,
        token_hash: &[u8],
        localpart: &str,
        (now_ms, expires_ms): (i64, i64),
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        sql::query("DELETE FROM login_tokens WHERE expires_ms <= $1")
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        sql::query(
            "INSERT INTO login_tokens (token_hash, localpart, expires_ms) VALUES ($1, $2, $3)",
        )
        .bind(token_hash)
        .bind(localpart)
        .bind(expires_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Uses up a login token: its user, if it was one and had not expired.
    pub(crate) async fn take_login_token(
        &self,
        token_hash: &[u8],
        now_ms: i64,
    ) -> Result<Option<String>, StorageError> {
        let taken: Option<(String, i64)> = sql::query_as(
            "DELETE FROM login_tokens WHERE token_hash = $1 RETURNING localpart, expires_ms",
        )
        .bind(token_hash)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(taken
            .filter(|(_, expires_ms)| *expires_ms > now_ms)
            .map(|(localpart, _)| localpart))
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
