use super::{Storage, StorageError};

impl Storage {
    pub(crate) async fn resolve_alias(&self, alias: &str) -> Result<Option<String>, StorageError> {
        Ok(
            sqlx::query_scalar("SELECT room_id FROM room_aliases WHERE alias = $1")
                .bind(alias)
                .fetch_optional(&self.db.pool)
                .await?,
        )
    }
}
