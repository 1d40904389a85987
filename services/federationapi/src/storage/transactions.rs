use ganglion_base::sql;
use serde_json::Value;

use super::{Storage, StorageError};

impl Storage {
    /// The answer given to a transaction seen before.
    pub(crate) async fn transaction_answer(
        &self,
        origin: &str,
        txn_id: &str,
    ) -> Result<Option<Value>, StorageError> {
        let answer: Option<String> = sql::query_scalar(
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
        sql::query(
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

    /// Forgets transactions received before `before_ms`; how many.
    pub(crate) async fn prune_transactions(&self, before_ms: i64) -> Result<u64, StorageError> {
        Ok(
            sql::query("DELETE FROM inbound_transactions WHERE received_ts < $1")
                .bind(before_ms)
                .execute(&self.db.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Takes the lease on `origin`'s transactions for `holder` until
    /// `expires_ms`, if no other holder has an unexpired one; whether it
    /// was taken.
    pub(crate) async fn lease_origin(
        &self,
        origin: &str,
        holder: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<bool, StorageError> {
        let taken = sql::query(
            "INSERT INTO inbound_origin_leases (origin, holder, expires_ms) VALUES ($1, $2, $3)
             ON CONFLICT (origin) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
             WHERE inbound_origin_leases.expires_ms < $4
                OR inbound_origin_leases.holder = excluded.holder",
        )
        .bind(origin)
        .bind(holder)
        .bind(expires_ms)
        .bind(now_ms)
        .execute(&self.db.pool)
        .await?
        .rows_affected();
        Ok(taken == 1)
    }

    /// Gives the lease back (if `holder` still has it).
    pub(crate) async fn release_origin(
        &self,
        origin: &str,
        holder: &str,
    ) -> Result<(), StorageError> {
        sql::query("DELETE FROM inbound_origin_leases WHERE origin = $1 AND holder = $2")
            .bind(origin)
            .bind(holder)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }
}
