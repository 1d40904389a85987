use sqlx::Row;

use super::{Storage, StorageError};

/// A profile field.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ProfileField {
    Displayname,
    AvatarUrl,
}

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
        // As on Synapse, a new user's displayname is their localpart
        // (guests start without one).
        sqlx::query(
            "INSERT INTO accounts (localpart, password_hash, is_admin, is_guest, created_ts, displayname)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(localpart)
        .bind(password_hash)
        .bind(i64::from(is_admin))
        .bind(i64::from(is_guest))
        .bind(now_ms)
        .bind((!is_guest).then_some(localpart))
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// An account's (displayname, avatar URL); None for no such account.
    #[allow(clippy::type_complexity)]
    pub(crate) async fn profile(
        &self,
        localpart: &str,
    ) -> Result<Option<(Option<String>, Option<String>)>, StorageError> {
        let row = sqlx::query("SELECT displayname, avatar_url FROM accounts WHERE localpart = $1")
            .bind(localpart)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(match row {
            Some(row) => Some((row.try_get(0)?, row.try_get(1)?)),
            None => None,
        })
    }

    /// Sets one profile field (`displayname` or `avatar_url`, checked by
    /// the caller); false for no such account.
    pub(crate) async fn set_profile_field(
        &self,
        localpart: &str,
        field: ProfileField,
        value: Option<&str>,
    ) -> Result<bool, StorageError> {
        let sql = match field {
            ProfileField::Displayname => {
                "UPDATE accounts SET displayname = $1 WHERE localpart = $2"
            }
            ProfileField::AvatarUrl => "UPDATE accounts SET avatar_url = $1 WHERE localpart = $2",
        };
        let done = sqlx::query(sql)
            .bind(value)
            .bind(localpart)
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected() > 0)
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
