use super::{Storage, StorageError};
use ganglion_base::sql;

impl Storage {
    /// Stores a client's filter, flushed to disk before its ID is given
    /// out: unlike the rest of this view it is not rebuilt from the log.
    pub(crate) async fn insert_filter(
        &self,
        user_id: &str,
        json: &str,
    ) -> Result<i64, StorageError> {
        let mut flushed = self.db.flushed().await?;
        let id =
            sql::query_scalar("INSERT INTO filters (user_id, json) VALUES ($1, $2) RETURNING id")
                .bind(user_id)
                .bind(json)
                .fetch_one(flushed.connection())
                .await?;
        flushed.release().await;
        Ok(id)
    }

    pub(crate) async fn filter(
        &self,
        user_id: &str,
        id: i64,
    ) -> Result<Option<String>, StorageError> {
        Ok(
            sql::query_scalar("SELECT json FROM filters WHERE user_id = $1 AND id = $2")
                .bind(user_id)
                .bind(id)
                .fetch_optional(&self.db.pool)
                .await?,
        )
    }
}
