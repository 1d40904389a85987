use super::{Storage, StorageError};
use ganglion_base::sql;

/// A profile field.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ProfileField {
    Displayname,
    AvatarUrl,
}

pub(crate) struct Account {
    pub(crate) password_hash: Option<String>,
    pub(crate) deactivated: bool,
}

/// Uses up one registration of `token`, if there is one, in `tx` (so the
/// use and the account it made commit together); `TokenRefused` when it
/// cannot.
async fn use_registration_token(
    tx: &mut sql::Transaction,
    token: Option<&str>,
    now_ms: i64,
) -> Result<(), StorageError> {
    let Some(token) = token else {
        return Ok(());
    };
    let used = sql::query(
        "UPDATE registration_tokens SET completed = completed + 1
         WHERE token = $1 AND (uses_allowed IS NULL OR completed < uses_allowed)
           AND (expiry_ms IS NULL OR expiry_ms > $2)",
    )
    .bind(token)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if used != 1 {
        return Err(StorageError::TokenRefused);
    }
    Ok(())
}

impl Storage {
    /// Inserts an account; a taken localpart is a unique violation.
    pub(crate) async fn insert_account(
        &self,
        localpart: &str,
        password_hash: Option<&str>,
        (is_admin, is_guest): (bool, bool),
        now_ms: i64,
        registration_token: Option<&str>,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        use_registration_token(&mut tx, registration_token, now_ms).await?;
        // As on Synapse, a new user's displayname is their localpart
        // (guests start without one).
        sql::query(
            "INSERT INTO accounts (localpart, password_hash, is_admin, is_guest, created_ts, displayname)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(localpart)
        .bind(password_hash)
        .bind(i64::from(is_admin))
        .bind(i64::from(is_guest))
        .bind(now_ms)
        .bind((!is_guest).then_some(localpart))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Makes a guest account a full one with `password_hash`, using up
    /// `registration_token` if given; `NotAGuest` when the localpart is
    /// not a guest's.
    pub(crate) async fn upgrade_guest(
        &self,
        localpart: &str,
        password_hash: &str,
        now_ms: i64,
        registration_token: Option<&str>,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.pool.begin().await?;
        use_registration_token(&mut tx, registration_token, now_ms).await?;
        let upgraded = sql::query(
            "UPDATE accounts SET password_hash = $2, is_guest = 0,
                    displayname = COALESCE(displayname, $1)
             WHERE localpart = $1 AND is_guest = 1",
        )
        .bind(localpart)
        .bind(password_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if upgraded != 1 {
            return Err(StorageError::NotAGuest);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether `token` may register an account now.
    pub(crate) async fn registration_token_valid(
        &self,
        token: &str,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        let found: Option<i64> = sql::query_scalar(
            "SELECT 1 FROM registration_tokens
             WHERE token = $1 AND (uses_allowed IS NULL OR completed < uses_allowed)
               AND (expiry_ms IS NULL OR expiry_ms > $2)",
        )
        .bind(token)
        .bind(now_ms)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(found.is_some())
    }

    /// Adds a registration token.
    pub(crate) async fn create_registration_token(
        &self,
        token: &str,
        uses_allowed: Option<i64>,
        expiry_ms: Option<i64>,
    ) -> Result<(), StorageError> {
        sql::query(
            "INSERT INTO registration_tokens (token, uses_allowed, expiry_ms) VALUES ($1, $2, $3)",
        )
        .bind(token)
        .bind(uses_allowed)
        .bind(expiry_ms)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Every registration token: (token, uses allowed, used, expiry).
    #[allow(clippy::type_complexity)]
    pub(crate) async fn registration_tokens(
        &self,
    ) -> Result<Vec<(String, Option<i64>, i64, Option<i64>)>, StorageError> {
        let rows = sql::query(
            "SELECT token, uses_allowed, completed, expiry_ms FROM registration_tokens ORDER BY token",
        )
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                ))
            })
            .collect()
    }

    /// Removes a registration token; whether it existed.
    pub(crate) async fn delete_registration_token(
        &self,
        token: &str,
    ) -> Result<bool, StorageError> {
        Ok(
            sql::query("DELETE FROM registration_tokens WHERE token = $1")
                .bind(token)
                .execute(&self.db.pool)
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// An account's (displayname, avatar URL); None for no such account.
    #[allow(clippy::type_complexity)]
    pub(crate) async fn profile(
        &self,
        localpart: &str,
    ) -> Result<Option<(Option<String>, Option<String>)>, StorageError> {
        let row = sql::query("SELECT displayname, avatar_url FROM accounts WHERE localpart = $1")
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
        let done = sql::query(sql)
            .bind(value)
            .bind(localpart)
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(crate) async fn account(&self, localpart: &str) -> Result<Option<Account>, StorageError> {
        let row =
            sql::query("SELECT password_hash, deactivated FROM accounts WHERE localpart = $1")
                .bind(localpart)
                .fetch_optional(&self.db.pool)
                .await?;
        Ok(match row {
            Some(row) => Some(Account {
                password_hash: row.try_get(0)?,
                deactivated: row.try_get::<i64, _>(1)? != 0,
            }),
            None => None,
        })
    }
}

impl Storage {
    /// Sets an account's password hash and, with `logout_except`, deletes
    /// every device but that one, in one transaction: the devices deleted.
    pub(crate) async fn set_password(
        &self,
        localpart: &str,
        password_hash: &str,
        logout_except: Option<&str>,
    ) -> Result<Option<Vec<String>>, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let done = sql::query("UPDATE accounts SET password_hash = $2 WHERE localpart = $1")
            .bind(localpart)
            .bind(password_hash)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let mut logged_out = Vec::new();
        if let Some(keep) = logout_except {
            logged_out = sql::query_scalar(
                "DELETE FROM devices WHERE localpart = $1 AND device_id <> $2 RETURNING device_id",
            )
            .bind(localpart)
            .bind(keep)
            .fetch_all(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(logged_out))
    }
}

impl Storage {
    /// Deactivates an account: no password, no devices (the IDs deleted),
    /// and with `erase` no profile. `None` for no such account.
    pub(crate) async fn deactivate(
        &self,
        localpart: &str,
        erase: bool,
    ) -> Result<Option<Vec<String>>, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        let done = sql::query(
            "UPDATE accounts SET deactivated = 1, password_hash = NULL WHERE localpart = $1",
        )
        .bind(localpart)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        if erase {
            sql::query(
                "UPDATE accounts SET displayname = NULL, avatar_url = NULL WHERE localpart = $1",
            )
            .bind(localpart)
            .execute(&mut *tx)
            .await?;
        }
        let logged_out: Vec<String> =
            sql::query_scalar("DELETE FROM devices WHERE localpart = $1 RETURNING device_id")
                .bind(localpart)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(Some(logged_out))
    }
}
