use super::{Storage, StorageError};
use ganglion_base::sql;

/// A remote server's signing key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredKey {
    pub(crate) key_id: String,
    /// Unpadded base64.
    pub(crate) public_key: String,
    /// A current key: valid until then (ms); an old key: 0.
    pub(crate) valid_until_ts: i64,
    /// An old key: when it expired (ms); a current key: 0.
    pub(crate) expired_ts: i64,
}

impl Storage {
    /// Stores a verified key response: its keys (replacing what was known
    /// of them) and the response itself, in one transaction.
    pub(crate) async fn store_server_keys(
        &self,
        server_name: &str,
        keys: &[StoredKey],
        response_json: &str,
        valid_until_ts: i64,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        for key in keys {
            sql::query(
                "INSERT INTO server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (server_name, key_id) DO UPDATE
                 SET public_key = excluded.public_key, valid_until_ts = excluded.valid_until_ts,
                     expired_ts = excluded.expired_ts",
            )
            .bind(server_name)
            .bind(&key.key_id)
            .bind(&key.public_key)
            .bind(key.valid_until_ts)
            .bind(key.expired_ts)
            .execute(&mut *tx)
            .await?;
        }
        sql::query(
            "INSERT INTO server_key_responses (server_name, response_json, valid_until_ts)
             VALUES ($1, $2, $3)
             ON CONFLICT (server_name) DO UPDATE
             SET response_json = excluded.response_json, valid_until_ts = excluded.valid_until_ts
             WHERE excluded.valid_until_ts >= server_key_responses.valid_until_ts",
        )
        .bind(server_name)
        .bind(response_json)
        .bind(valid_until_ts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every key known of a server.
    pub(crate) async fn server_keys(
        &self,
        server_name: &str,
    ) -> Result<Vec<StoredKey>, StorageError> {
        let rows = sql::query(
            "SELECT key_id, public_key, valid_until_ts, expired_ts FROM server_keys
             WHERE server_name = $1 ORDER BY key_id",
        )
        .bind(server_name)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredKey {
                    key_id: row.try_get(0)?,
                    public_key: row.try_get(1)?,
                    valid_until_ts: row.try_get(2)?,
                    expired_ts: row.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The latest key response a server signed: (JSON, valid until).
    pub(crate) async fn server_key_response(
        &self,
        server_name: &str,
    ) -> Result<Option<(String, i64)>, StorageError> {
        Ok(sql::query_as(
            "SELECT response_json, valid_until_ts FROM server_key_responses WHERE server_name = $1",
        )
        .bind(server_name)
        .fetch_optional(&self.db.pool)
        .await?)
    }
}
