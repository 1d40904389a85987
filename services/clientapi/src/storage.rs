//! The clientapi's table: User-Interactive Auth sessions, shared by its
//! replicas. (A retried `PUT /send/{txnId}` is answered by the roomserver,
//! which records each request with the events it wrote.)

use ganglion_base::sql;
use ganglion_base::{Database, Migration};

#[cfg(test)]
mod tests;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "transaction ids",
        sql: "CREATE TABLE transactions (
        user_id TEXT NOT NULL, device_id TEXT NOT NULL, txn_id TEXT NOT NULL,
        event_id TEXT NOT NULL, created_ts BIGINT NOT NULL,
        PRIMARY KEY (user_id, device_id, txn_id))",
    },
    Migration {
        version: 2,
        description: "user-interactive auth sessions",
        sql: "
        -- One row per session this server gave out: the operation it is
        -- for (method, path, and whose account; '' for registration), what
        -- the first request said (registration: its username), and the
        -- user a registration in it made (its retries answer with them).
        CREATE TABLE uia_sessions (
            session TEXT NOT NULL PRIMARY KEY,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            user_id TEXT NOT NULL,
            params TEXT NOT NULL,
            registered_user_id TEXT,
            created_ts BIGINT NOT NULL
        );
        CREATE INDEX uia_sessions_by_age ON uia_sessions (created_ts);
    ",
    },
    // Retried sends are recognised by the roomserver (its processed
    // inputs, written in the transaction that writes the events).
    Migration {
        version: 3,
        description: "transaction ids kept by the roomserver",
        sql: "DROP TABLE transactions",
    },
];

/// A User-Interactive Auth session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UiaSession {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) user_id: String,
    pub(crate) params: String,
    pub(crate) registered_user_id: Option<String>,
}

#[derive(Clone)]
pub(crate) struct Storage {
    pub(crate) db: Database,
}

impl Storage {
    pub(crate) async fn insert_uia_session(
        &self,
        session: &str,
        operation: &UiaSession,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sql::query(
            "INSERT INTO uia_sessions (session, method, path, user_id, params, created_ts)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(session)
        .bind(operation.method.as_str())
        .bind(operation.path.as_str())
        .bind(operation.user_id.as_str())
        .bind(operation.params.as_str())
        .bind(now_ms)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// A session given out after `since_ms`, if there is one.
    pub(crate) async fn uia_session(
        &self,
        session: &str,
        since_ms: i64,
    ) -> Result<Option<UiaSession>, sqlx::Error> {
        let row = sql::query(
            "SELECT method, path, user_id, params, registered_user_id FROM uia_sessions
             WHERE session = $1 AND created_ts >= $2",
        )
        .bind(session)
        .bind(since_ms)
        .fetch_optional(&self.db.pool)
        .await?;
        row.map(|row| {
            Ok(UiaSession {
                method: row.try_get(0)?,
                path: row.try_get(1)?,
                user_id: row.try_get(2)?,
                params: row.try_get(3)?,
                registered_user_id: row.try_get(4)?,
            })
        })
        .transpose()
    }

    /// Records the user a registration in `session` made.
    pub(crate) async fn set_uia_registered(
        &self,
        session: &str,
        user_id: &str,
    ) -> Result<(), sqlx::Error> {
        sql::query("UPDATE uia_sessions SET registered_user_id = $2 WHERE session = $1")
            .bind(session)
            .bind(user_id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Forgets sessions given out before `before_ms`; how many.
    pub(crate) async fn prune_uia_sessions(&self, before_ms: i64) -> Result<u64, sqlx::Error> {
        Ok(sql::query("DELETE FROM uia_sessions WHERE created_ts < $1")
            .bind(before_ms)
            .execute(&self.db.pool)
            .await?
            .rows_affected())
    }
}
