//! Server-side key backups: versions and the room keys they hold.

use ganglion_base::sql;

use super::{Storage, StorageError};

/// A backup version as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Version {
    pub(crate) version: i64,
    pub(crate) algorithm: String,
    pub(crate) auth_data: String,
    pub(crate) etag: i64,
    pub(crate) count: i64,
}

/// One room key of a backup, its metadata apart for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoomKey {
    pub(crate) room_id: String,
    pub(crate) session_id: String,
    pub(crate) first_message_index: i64,
    pub(crate) forwarded_count: i64,
    pub(crate) is_verified: bool,
    /// The `session_data` object, as JSON.
    pub(crate) session_data: String,
}

/// What storing keys did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Stored (where better): the version's count and etag now.
    Done { count: i64, etag: i64 },
    /// The version is not the current one, which is this.
    NotCurrent(i64),
    /// The user has no backup.
    NoBackup,
}

impl Storage {
    /// A new version, numbered past every version the user ever had.
    pub(crate) async fn create_backup_version(
        &self,
        user_id: &str,
        algorithm: &str,
        auth_data: &str,
    ) -> Result<i64, StorageError> {
        let mut tx = self.db.pool.begin_write().await?;
        let last: Option<i64> =
            sql::query_scalar("SELECT MAX(version) FROM backup_versions WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(&mut *tx)
                .await?;
        let version = last.unwrap_or(0) + 1;
        sql::query(
            "INSERT INTO backup_versions (user_id, version, algorithm, auth_data)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(user_id)
        .bind(version)
        .bind(algorithm)
        .bind(auth_data)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// A version that is not deleted (the latest when `version` is `None`).
    pub(crate) async fn backup_version(
        &self,
        user_id: &str,
        version: Option<i64>,
    ) -> Result<Option<Version>, StorageError> {
        let row: Option<(i64, String, String, i64)> = match version {
            Some(version) => {
                sql::query_as(
                    "SELECT version, algorithm, auth_data, etag FROM backup_versions
                     WHERE user_id = $1 AND version = $2 AND deleted = 0",
                )
                .bind(user_id)
                .bind(version)
                .fetch_optional(&self.db.pool)
                .await?
            }
            None => {
                sql::query_as(
                    "SELECT version, algorithm, auth_data, etag FROM backup_versions
                     WHERE user_id = $1 AND deleted = 0 ORDER BY version DESC LIMIT 1",
                )
                .bind(user_id)
                .fetch_optional(&self.db.pool)
                .await?
            }
        };
        let Some((version, algorithm, auth_data, etag)) = row else {
            return Ok(None);
        };
        let count = self.backup_count(user_id, version).await?;
        Ok(Some(Version {
            version,
            algorithm,
            auth_data,
            etag,
            count,
        }))
    }

    async fn backup_count(&self, user_id: &str, version: i64) -> Result<i64, StorageError> {
        Ok(sql::query_scalar(
            "SELECT COUNT(*) FROM backup_keys WHERE user_id = $1 AND version = $2",
        )
        .bind(user_id)
        .bind(version)
        .fetch_one(&self.db.pool)
        .await?)
    }

    /// Changes a version's auth data (true if the version exists).
    pub(crate) async fn update_backup_version(
        &self,
        user_id: &str,
        version: i64,
        auth_data: &str,
    ) -> Result<bool, StorageError> {
        let done = sql::query(
            "UPDATE backup_versions SET auth_data = $3
             WHERE user_id = $1 AND version = $2 AND deleted = 0",
        )
        .bind(user_id)
        .bind(version)
        .bind(auth_data)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes a version and its keys: `None` if it never existed, else
    /// whether it was there to delete.
    pub(crate) async fn delete_backup_version(
        &self,
        user_id: &str,
        version: i64,
    ) -> Result<Option<bool>, StorageError> {
        let mut tx = self.db.pool.begin_write().await?;
        let deleted: Option<i64> = sql::query_scalar(
            "SELECT deleted FROM backup_versions WHERE user_id = $1 AND version = $2",
        )
        .bind(user_id)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(deleted) = deleted else {
            return Ok(None);
        };
        sql::query("UPDATE backup_versions SET deleted = 1 WHERE user_id = $1 AND version = $2")
            .bind(user_id)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        sql::query("DELETE FROM backup_keys WHERE user_id = $1 AND version = $2")
            .bind(user_id)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(deleted == 0))
    }

    /// Stores keys in `version` if it is the current one, each only where
    /// it is better than the stored one: verified over not, then the lower
    /// first message index, then the lower forwarded count.
    pub(crate) async fn put_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        keys: &[RoomKey],
    ) -> Result<Stored, StorageError> {
        let mut tx = self.db.pool.begin_write().await?;
        let current: Option<i64> = sql::query_scalar(
            "SELECT MAX(version) FROM backup_versions WHERE user_id = $1 AND deleted = 0",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        let Some(current) = current else {
            return Ok(Stored::NoBackup);
        };
        if current != version {
            return Ok(Stored::NotCurrent(current));
        }
        let mut changed = 0;
        for key in keys {
            let done = sql::query(
                "INSERT INTO backup_keys (user_id, version, room_id, session_id,
                     first_message_index, forwarded_count, is_verified, session_data)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET
                     first_message_index = excluded.first_message_index,
                     forwarded_count = excluded.forwarded_count,
                     is_verified = excluded.is_verified,
                     session_data = excluded.session_data
                 WHERE excluded.is_verified > backup_keys.is_verified
                    OR (excluded.is_verified = backup_keys.is_verified
                        AND (excluded.first_message_index < backup_keys.first_message_index
                             OR (excluded.first_message_index = backup_keys.first_message_index
                                 AND excluded.forwarded_count < backup_keys.forwarded_count)))",
            )
            .bind(user_id)
            .bind(version)
            .bind(&key.room_id)
            .bind(&key.session_id)
            .bind(key.first_message_index)
            .bind(key.forwarded_count)
            .bind(i64::from(key.is_verified))
            .bind(&key.session_data)
            .execute(&mut *tx)
            .await?;
            changed += done.rows_affected();
        }
        if changed > 0 {
            Self::bump_etag(&mut tx, user_id, version).await?;
        }
        tx.commit().await?;
        let found = self.backup_version(user_id, Some(version)).await?;
        Ok(found.map_or(Stored::NoBackup, |v| Stored::Done {
            count: v.count,
            etag: v.etag,
        }))
    }

    async fn bump_etag(
        tx: &mut sql::Transaction,
        user_id: &str,
        version: i64,
    ) -> Result<(), StorageError> {
        sql::query(
            "UPDATE backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2",
        )
        .bind(user_id)
        .bind(version)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The keys of a version (of one room, of one session).
    pub(crate) async fn backup_keys(
        &self,
        user_id: &str,
        version: i64,
        (room_id, session_id): (Option<&str>, Option<&str>),
    ) -> Result<Vec<RoomKey>, StorageError> {
        let rows: Vec<(String, String, i64, i64, i64, String)> = sql::query_as(
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified,
                    session_data
             FROM backup_keys WHERE user_id = $1 AND version = $2
               AND ($3 IS NULL OR room_id = $3) AND ($4 IS NULL OR session_id = $4)
             ORDER BY room_id, session_id",
        )
        .bind(user_id)
        .bind(version)
        .bind(room_id)
        .bind(session_id)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(room_id, session_id, first_message_index, forwarded_count, verified, data)| {
                    RoomKey {
                        room_id,
                        session_id,
                        first_message_index,
                        forwarded_count,
                        is_verified: verified != 0,
                        session_data: data,
                    }
                },
            )
            .collect())
    }

    /// Deletes keys of a version (of one room, of one session); `None`
    /// when the version is not one of the user's.
    pub(crate) async fn delete_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        (room_id, session_id): (Option<&str>, Option<&str>),
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let mut tx = self.db.pool.begin_write().await?;
        let exists: Option<i64> = sql::query_scalar(
            "SELECT version FROM backup_versions WHERE user_id = $1 AND version = $2 AND deleted = 0",
        )
        .bind(user_id)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let done = sql::query(
            "DELETE FROM backup_keys WHERE user_id = $1 AND version = $2
               AND ($3 IS NULL OR room_id = $3) AND ($4 IS NULL OR session_id = $4)",
        )
        .bind(user_id)
        .bind(version)
        .bind(room_id)
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() > 0 {
            Self::bump_etag(&mut tx, user_id, version).await?;
        }
        tx.commit().await?;
        let found = self.backup_version(user_id, Some(version)).await?;
        Ok(found.map(|v| (v.count, v.etag)))
    }
}
