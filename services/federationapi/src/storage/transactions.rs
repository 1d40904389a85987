use serde_json::Value;

use super::{Storage, StorageError};

impl Storage {
    /// The answer given to a transaction seen before.
    pub(crate) async fn transaction_answer(
        &self,
        origin: &str,
        txn_id: &str,
    ) -> Result<Option<Value>, StorageError> {
        let answer: Option<String> = sqlx::query_scalar(
            "SELECT answer_json FROM inbound_transactions WHERE origin = $1 AND txn_id = $2",
        )
        .bind(origin)
        .bind(txn_id)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(answer.and_then(|a| serde_json::from_str(&a).ok()))
    }

    /// Remembers a transaction's answer (the first one stays).
    pub(crate) async fn remember_transaction(
        &self,
        origin: &str,
        txn_id: &str,
        answer: &Value,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO inbound_transactions (origin, txn_id, answer_json, received_ts)
             VALUES ($1, $2, $3, $4) ON CONFLICT (origin, txn_id) DO NOTHING",
        )
        .bind(origin)
        .bind(txn_id)
        .bind(answer.to_string())
        .bind(crate::key_ring::now_ms())
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }
}
