use sqlx::Row;

use super::{Storage, StorageError};

pub(crate) struct Account {
    pub(crate) password_hash: Option<String>,
}

impl Storage {
    /// Inserts an account; a taken localpart is a unique violation.
    pub(crate) async fn insert_account(
        &self,
        localpart: &str,
        password_hash: Option<&str>,
        (is_admin, is_guest): (bool, bool),
        now_ms: i64,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO accounts (localpart, password_hash, is_admin, is_guest, created_ts)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(localpart)
        .bind(password_hash)
        .bind(i64::from(is_admin))
        .bind(i64::from(is_guest))
        .bind(now_ms)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn account(&self, localpart: &str) -> Result<Option<Account>, StorageError> {
        let row = sqlx::query("SELECT password_hash FROM accounts WHERE localpart = $1")
            .bind(localpart)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(match row {
            Some(row) => Some(Account {
                password_hash: row.try_get(0)?,
            }),
            None => None,
        })
    }
}
