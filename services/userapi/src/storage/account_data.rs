use ganglion_base::sql;

use super::{Storage, StorageError};

/// One piece of account data waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) id: i64,
    pub(crate) localpart: String,
    pub(crate) room_id: String,
    pub(crate) data_type: String,
}

impl Storage {
    /// Stores account data and, in the same transaction, an outbox row
    /// that stays until the change is on the log.
    pub(crate) async fn set_account_data(
        &self,
        localpart: &str,
        room_id: &str,
        data_type: &str,
        content: &str,
    ) -> Result<i64, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        Self::write_account_data(&mut tx, localpart, room_id, data_type, content).await?;
        let id = Self::enqueue(&mut tx, localpart, room_id, data_type).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn write_account_data(
        tx: &mut sql::Transaction,
        localpart: &str,
        room_id: &str,
        data_type: &str,
        content: &str,
    ) -> Result<(), StorageError> {
        sql::query(
            "INSERT INTO account_data (localpart, room_id, data_type, content) VALUES ($1, $2, $3, $4)
             ON CONFLICT (localpart, room_id, data_type) DO UPDATE SET content = excluded.content",
        )
        .bind(localpart)
        .bind(room_id)
        .bind(data_type)
        .bind(content)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn enqueue(
        tx: &mut sql::Transaction,
        localpart: &str,
        room_id: &str,
        data_type: &str,
    ) -> Result<i64, StorageError> {
        Ok(sql::query_scalar(
            "INSERT INTO account_data_outbox (localpart, room_id, data_type) VALUES ($1, $2, $3)
             RETURNING id",
        )
        .bind(localpart)
        .bind(room_id)
        .bind(data_type)
        .fetch_one(&mut **tx)
        .await?)
    }

    /// Rewrites one piece of account data from its current content (if
    /// any), in one transaction with its outbox row; `change` may refuse.
    /// Callers serialise changes (see `UserApi::modify_account_data`).
    pub(crate) async fn modify_account_data<E: From<StorageError>>(
        &self,
        (localpart, room_id, data_type): (&str, &str, &str),
        change: impl FnOnce(Option<String>) -> Result<String, E>,
    ) -> Result<i64, E> {
        let mut tx = self
            .db
            .pool
            .begin_write()
            .await
            .map_err(StorageError::from)?;
        let current: Option<String> = sql::query_scalar(
            "SELECT content FROM account_data
             WHERE localpart = $1 AND room_id = $2 AND data_type = $3",
        )
        .bind(localpart)
        .bind(room_id)
        .bind(data_type)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StorageError::from)?;
        let content = change(current)?;
        Self::write_account_data(&mut tx, localpart, room_id, data_type, &content).await?;
        let id = Self::enqueue(&mut tx, localpart, room_id, data_type).await?;
        tx.commit().await.map_err(StorageError::from)?;
        Ok(id)
    }

    /// Some types of the global account data of some users, in the
    /// consumer's transaction: (localpart, type, content).
    pub(crate) async fn global_account_data_of(
        &self,
        tx: &mut sql::Transaction,
        localparts: &[&str],
        data_types: &[&str],
    ) -> Result<Vec<(String, String, String)>, StorageError> {
        if localparts.is_empty() || data_types.is_empty() {
            return Ok(Vec::new());
        }
        let list = |from: usize, n: usize| {
            (from..from + n)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut found = Vec::new();
        // A statement's parameters are limited: a thousand users at a time.
        for chunk in localparts.chunks(1_000) {
            let statement = format!(
                "SELECT localpart, data_type, content FROM account_data
                 WHERE room_id = '' AND data_type IN ({}) AND localpart IN ({})",
                list(1, data_types.len()),
                list(1 + data_types.len(), chunk.len()),
            );
            let mut query = sql::query_as(sqlx::AssertSqlSafe(statement));
            for data_type in data_types {
                query = query.bind(*data_type);
            }
            for localpart in chunk {
                query = query.bind(*localpart);
            }
            let rows: Vec<(String, String, String)> = query.fetch_all(&mut **tx).await?;
            found.extend(rows);
        }
        Ok(found)
    }

    pub(crate) async fn account_data(
        &self,
        localpart: &str,
        room_id: &str,
        data_type: &str,
    ) -> Result<Option<String>, StorageError> {
        Ok(sql::query_scalar(
            "SELECT content FROM account_data
             WHERE localpart = $1 AND room_id = $2 AND data_type = $3",
        )
        .bind(localpart)
        .bind(room_id)
        .bind(data_type)
        .fetch_optional(&self.db.pool)
        .await?)
    }

    /// Outbox rows, oldest first.
    pub(crate) async fn pending_account_data(&self) -> Result<Vec<Pending>, StorageError> {
        let rows: Vec<(i64, String, String, String)> = sql::query_as(
            "SELECT id, localpart, room_id, data_type FROM account_data_outbox ORDER BY id",
        )
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, localpart, room_id, data_type)| Pending {
                id,
                localpart,
                room_id,
                data_type,
            })
            .collect())
    }

    /// Whether an outbox row is still waiting (another replica may have
    /// published it meanwhile).
    pub(crate) async fn pending(&self, id: i64) -> Result<bool, StorageError> {
        let row: Option<i64> =
            sql::query_scalar("SELECT id FROM account_data_outbox WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.db.pool)
                .await?;
        Ok(row.is_some())
    }

    pub(crate) async fn published(&self, id: i64) -> Result<(), StorageError> {
        sql::query("DELETE FROM account_data_outbox WHERE id = $1")
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }
}
