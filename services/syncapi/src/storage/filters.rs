use super::{Storage, StorageError};

impl Storage {
    pub(crate) async fn insert_filter(
        &self,
        user_id: &str,
        json: &str,
    ) -> Result<i64, StorageError> {
        Ok(
            sqlx::query_scalar("INSERT INTO filters (user_id, json) VALUES ($1, $2) RETURNING id")
                .bind(user_id)
                .bind(json)
                .fetch_one(&self.db.pool)
                .await?,
        )
    }

    pub(crate) async fn filter(
        &self,
        user_id: &str,
        id: i64,
    ) -> Result<Option<String>, StorageError> {
        Ok(
            sqlx::query_scalar("SELECT json FROM filters WHERE user_id = $1 AND id = $2")
                .bind(user_id)
                .bind(id)
                .fetch_optional(&self.db.pool)
                .await?,
        )
    }
}
