//! The clientapi's only table: transaction IDs already used, so a retried
//! `PUT /send/{txnId}` returns the first event instead of sending twice.

use ganglion_base::{Database, Migration};

#[cfg(test)]
mod tests;

pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "transaction ids",
    sql: "CREATE TABLE transactions (
        user_id TEXT NOT NULL, device_id TEXT NOT NULL, txn_id TEXT NOT NULL,
        event_id TEXT NOT NULL, created_ts BIGINT NOT NULL,
        PRIMARY KEY (user_id, device_id, txn_id))",
}];

#[derive(Clone)]
pub(crate) struct Storage {
    pub(crate) db: Database,
}

impl Storage {
    pub(crate) async fn transaction_event(
        &self,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT event_id FROM transactions WHERE user_id = $1 AND device_id = $2 AND txn_id = $3",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(txn_id)
        .fetch_optional(&self.db.pool)
        .await
    }

    pub(crate) async fn record_transaction(
        &self,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
        event_id: &str,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO transactions (user_id, device_id, txn_id, event_id, created_ts)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(txn_id)
        .bind(event_id)
        .bind(now_ms)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }
}
