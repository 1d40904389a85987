//! A database per service: SQLite by default (one file under the data
//! directory), PostgreSQL by connection string. Queries are written once with
//! `$n` placeholders, which both engines accept; DDL that differs between them
//! is written twice in a [`Migration`].

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

use crate::sql::{self, Pool, PoolConnection};

/// Which engine a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// One schema step of a service. Versions start at 1 and only grow.
///
/// The SQL is written once for both engines; the two column types they
/// spell differently are tokens: `{serial}` (an auto-incrementing integer
/// primary key) and `{bytes}` (a byte string). Everything else must be SQL
/// both engines accept (booleans are stored as 0/1 `BIGINT`: the Any driver
/// cannot read SQLite's `BOOLEAN`).
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// The SQL for `engine`, tokens replaced. A line that begins with
    /// `--sqlite:` or `--postgres:` is kept (without its prefix) for that
    /// engine only: for what the engines write differently (full-text
    /// search).
    pub fn sql_for(&self, engine: Engine) -> String {
        let (serial, bytes, mine, theirs) = match engine {
            Engine::Sqlite => (
                "INTEGER PRIMARY KEY AUTOINCREMENT",
                "BLOB",
                "--sqlite:",
                "--postgres:",
            ),
            Engine::Postgres => ("BIGSERIAL PRIMARY KEY", "BYTEA", "--postgres:", "--sqlite:"),
        };
        self.sql
            .lines()
            .filter(|line| !line.trim_start().starts_with(theirs))
            .map(|line| match line.trim_start().strip_prefix(mine) {
                Some(own) => own,
                None => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
            .replace("{serial}", serial)
            .replace("{bytes}", bytes)
    }
}

/// A service's database.
#[derive(Debug, Clone)]
pub struct Database {
    pub pool: Pool,
    pub engine: Engine,
}

/// Why a database could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The engine reported an error.
    #[error("database error")]
    Sqlx(#[from] sqlx::Error),
    /// The database was migrated by a newer Ganglion; running older code on it could corrupt it.
    #[error(
        "the {service} database has schema version {found}, newer than the {known} this build knows: refusing to start"
    )]
    SchemaTooNew {
        service: String,
        found: i64,
        known: i64,
    },
    /// The connection string is neither PostgreSQL nor SQLite.
    #[error("unsupported database url for {0}")]
    UnsupportedUrl(String),
    /// The data directory could not be created.
    #[error("cannot create the data directory")]
    Io(#[from] std::io::Error),
}

/// A pooled connection that flushes its commits (see
/// [`Database::flushed`]); [`FlushedConnection::release`] puts the view's
/// setting back. Dropped without it (an error on the way), the connection
/// is closed rather than reused, as it would still flush every commit.
pub struct FlushedConnection {
    connection: PoolConnection,
    restored: bool,
}

impl FlushedConnection {
    /// The connection, to run statements on.
    pub fn connection(&mut self) -> &mut sql::Connection {
        &mut self.connection
    }

    /// Puts the view's setting back and returns the connection to the pool.
    pub async fn release(mut self) {
        self.restored = self.connection.restore_flushed().await.is_ok();
    }
}

impl Drop for FlushedConnection {
    fn drop(&mut self) {
        if !self.restored {
            self.connection.close_on_drop();
        }
    }
}

/// Whether the database refused an error's data itself, so the same
/// statement can never succeed: PostgreSQL's data exceptions (class 22: a
/// value too long, out of range, or text with a NUL byte), integrity
/// violations other than a unique key another writer may have just taken
/// (class 23), program limits (class 54: an index row too large); SQLite's
/// TOOBIG, MISMATCH, RANGE and NOT NULL / CHECK constraints; and values the
/// driver cannot encode. Everything else (connections, locks, timeouts, a
/// full pool) may pass on a retry.
pub fn refuses_the_data(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Encode(_) => true,
        sqlx::Error::Database(database) => {
            let Some(code) = database.code() else {
                return false;
            };
            if database.try_downcast_ref::<sql::SqliteError>().is_some()
                || database
                    .try_downcast_ref::<sqlx::sqlite::SqliteError>()
                    .is_some()
            {
                let extended = code.parse::<u32>().unwrap_or(0);
                let primary = extended & 0xff;
                return matches!(primary, 18 | 20 | 25)
                    || (primary == 19 && !matches!(extended, 1555 | 2067));
            }
            code.starts_with("22")
                || code.starts_with("54")
                || (code.starts_with("23") && code != "23505")
        }
        _ => false,
    }
}

/// Whether a database error says the database is out of reach or busy for
/// a while (no connection free in time, a connection lost), not that the
/// request was wrong: the caller should retry, so it is a 503, never a 500.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(error) => {
            if let Some(error) = error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                transient_sqlstate(error.code())
            } else if let Some(error) = error.try_downcast_ref::<sql::SqliteError>() {
                matches!(error.extended_code() & 0xff, 5 | 6)
            } else if let Some(error) = error.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                // The primary code is the low byte of an extended one
                // (SQLITE_BUSY_SNAPSHOT is 517): busy or locked, another
                // connection holds the file.
                sqlx::error::DatabaseError::code(error)
                    .and_then(|code| code.parse::<u32>().ok())
                    .is_some_and(|code| matches!(code & 0xff, 5 | 6))
            } else {
                false
            }
        }
        _ => false,
    }
}

/// Whether a PostgreSQL SQLSTATE says "try again".
fn transient_sqlstate(code: &str) -> bool {
    // Connection exceptions (class 08); the server shutting down or
    // starting up (57P01 ends the open sessions on `pg_ctl stop -m fast`,
    // 57P03 refuses new ones); too many connections (53300); a
    // serialization failure or a deadlock, which the transaction's retry
    // resolves (40001, 40P01).
    code.starts_with("08") || code.starts_with("57P") || matches!(code, "53300" | "40001" | "40P01")
}

/// The Matrix error a client gets for a failed database call of `service`:
/// 503 when [`is_transient`], else a 500 (logged; the details stay here).
pub fn matrix_error(service: &str, error: &sqlx::Error) -> crate::MatrixError {
    if is_transient(error) {
        tracing::warn!(service, %error, "database busy or out of reach");
        crate::MatrixError::unavailable("The database is busy; try again")
    } else {
        tracing::error!(service, ?error, "database error");
        crate::MatrixError::unknown("Internal server error")
    }
}

/// A lock on one name, held across every process that shares the database
/// (see [`Database::lock_name`]). Give it back with [`NameLock::release`];
/// dropped without that (an error on the way), its connection is closed,
/// which frees the lock too.
pub struct NameLock {
    held: Option<(PoolConnection, i64)>,
}

impl NameLock {
    pub async fn release(mut self) {
        if let Some((mut connection, key)) = self.held.take() {
            let unlocked = sql::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(&mut *connection)
                .await;
            if unlocked.is_err() {
                connection.close_on_drop();
            }
        }
    }
}

impl Drop for NameLock {
    fn drop(&mut self) {
        if let Some((connection, _)) = self.held.take() {
            // Closing the session is what frees a lock nobody unlocked.
            let mut connection = connection;
            connection.close_on_drop();
        }
    }
}

impl Database {
    /// Waits for, then holds, the lock on `name` among every process that
    /// shares this database: writers that must not interleave (two
    /// replicas publishing one user's outbox) take it around their work.
    /// On PostgreSQL an advisory lock; an SQLite database belongs to one
    /// process, whose own mutex is enough (this lock is then a no-op).
    pub async fn lock_name(&self, name: &str) -> Result<NameLock, sqlx::Error> {
        if self.engine != Engine::Postgres {
            return Ok(NameLock { held: None });
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(name.as_bytes());
        let mut first = [0_u8; 8];
        first.copy_from_slice(&digest[..8]);
        let key = i64::from_be_bytes(first);
        let mut connection = self.pool.acquire().await?;
        sql::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *connection)
            .await?;
        Ok(NameLock {
            held: Some((connection, key)),
        })
    }

    /// Opens `url`, or the SQLite file `<data_dir>/<service>.db` when `url` is
    /// `None`, then brings the schema up to date with `migrations`.
    pub async fn open(
        service: &str,
        url: Option<&str>,
        data_dir: &Path,
        max_connections: Option<u32>,
        migrations: &[Migration],
    ) -> Result<Database, DatabaseError> {
        Self::open_with(
            service,
            url,
            data_dir,
            max_connections,
            crate::config::Durability::Fsync,
            migrations,
        )
        .await
    }

    /// [`Database::open`] with the durability of SQLite commits chosen
    /// (PostgreSQL's is its own configuration).
    pub async fn open_with(
        service: &str,
        url: Option<&str>,
        data_dir: &Path,
        max_connections: Option<u32>,
        durability: crate::config::Durability,
        migrations: &[Migration],
    ) -> Result<Database, DatabaseError> {
        sqlx::any::install_default_drivers();
        let url = match url {
            Some(url) => url.to_owned(),
            None => {
                std::fs::create_dir_all(data_dir)?;
                format!(
                    "sqlite://{}?mode=rwc",
                    data_dir.join(format!("{service}.db")).display()
                )
            }
        };
        let engine = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Engine::Postgres
        } else if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else {
            return Err(DatabaseError::UnsupportedUrl(service.to_owned()));
        };
        let pool = match engine {
            Engine::Sqlite => {
                // WAL. synchronous=FULL flushes the WAL at each commit, so
                // a committed transaction survives a power cut; NORMAL (the
                // `os` durability) survives a process crash (kill -9), and
                // an OS crash may lose the last commits.
                // The Any driver takes no SQLite options, so each connection sets them.
                let pragmas = match durability {
                    crate::config::Durability::Fsync => {
                        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                         PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;"
                    }
                    crate::config::Durability::Os => {
                        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                         PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;"
                    }
                };
                let mut options = sql::SqliteOptions::from_url(&url)?;
                options.pragmas = pragmas.to_owned();
                options.flushed = durability == crate::config::Durability::Fsync;
                options.max_connections = max_connections.unwrap_or(4);
                Pool::sqlite(options).await?
            }
            Engine::Postgres => {
                let any = AnyConnectOptions::from_str(&url)?
                    .log_statements(tracing::log::LevelFilter::Trace);
                Pool::from_any(
                    AnyPoolOptions::new()
                        .max_connections(max_connections.unwrap_or(10))
                        .acquire_timeout(Duration::from_secs(10))
                        .connect_with(any)
                        .await?,
                )
            }
        };
        let db = Database { pool, engine };
        db.migrate(service, migrations).await?;
        Ok(db)
    }

    /// Opens `service`'s database as configured (`services.<name>.database_url`
    /// and `database_max_connections`; SQLite in `data_dir` by default).
    pub async fn open_for_service(
        config: &crate::Config,
        service: &str,
        migrations: &[Migration],
    ) -> Result<Database, DatabaseError> {
        Database::open_section(config, service, migrations, None, config.durability).await
    }

    /// [`open_for_service`](Self::open_for_service) for a service whose
    /// writes come from many tasks at once (the federationsender's consumers
    /// and its per-destination senders): on SQLite it keeps one connection
    /// unless configured otherwise, so writers wait their turn in the pool.
    /// With several connections a writer that finds the database locked
    /// waits in SQLite's busy handler, which sleeps 1, 2, 5 … 25 ms between
    /// tries; that held delivery to one destination to 115–150 events/s,
    /// where one connection keeps up with the sender (362–473 events/s).
    pub async fn open_for_service_one_writer(
        config: &crate::Config,
        service: &str,
        migrations: &[Migration],
    ) -> Result<Database, DatabaseError> {
        Database::open_section(config, service, migrations, Some(1), config.durability).await
    }

    /// Opens a database whose last commits a power cut may lose without
    /// losing anything acknowledged, so on SQLite its commits are not
    /// flushed one by one (`synchronous=NORMAL`) whatever the durability:
    /// a view that stores its log positions with its data in the same
    /// transactions (the syncapi: it reads those records again from the
    /// log), or rows that only spare work (the clientapi's transaction
    /// IDs: a retry after a power cut may send again). Writes a client is
    /// told of directly go through [`Database::flushed`].
    pub async fn open_without_flush(
        config: &crate::Config,
        service: &str,
        migrations: &[Migration],
    ) -> Result<Database, DatabaseError> {
        Database::open_section(
            config,
            service,
            migrations,
            None,
            crate::config::Durability::Os,
        )
        .await
    }

    /// A connection whose commits are flushed to disk (SQLite
    /// `synchronous=FULL` while it is held), for a view's few writes that
    /// are not rebuilt from the log.
    pub async fn flushed(&self) -> Result<FlushedConnection, sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        connection.set_flushed(true).await?;
        Ok(FlushedConnection {
            connection,
            restored: false,
        })
    }

    /// Opens `service`'s database as its configuration section says, with
    /// `sqlite_connections` as the pool size on SQLite when none is set.
    async fn open_section(
        config: &crate::Config,
        service: &str,
        migrations: &[Migration],
        sqlite_connections: Option<u32>,
        durability: crate::config::Durability,
    ) -> Result<Database, DatabaseError> {
        let section = config.service(service);
        let sqlite = section
            .database_url
            .as_deref()
            .is_none_or(|url| url.starts_with("sqlite:"));
        let max_connections = section
            .database_max_connections
            .or(sqlite_connections.filter(|_| sqlite));
        Database::open_with(
            service,
            section.database_url.as_deref(),
            &config.data_dir,
            max_connections,
            durability,
            migrations,
        )
        .await
    }

    /// Applies the migrations this database has not seen yet, each in its own
    /// transaction; refuses a database whose schema is newer than `migrations`.
    pub async fn migrate(
        &self,
        service: &str,
        migrations: &[Migration],
    ) -> Result<(), DatabaseError> {
        // Replicas starting together on one empty PostgreSQL database take
        // turns: every step runs in a transaction that first takes this
        // database's migration lock (released at commit), and looks again
        // at what is applied once it holds it.
        let mut tx = self.pool.begin().await?;
        self.lock_migrations(&mut tx).await?;
        sql::raw_sql(
            "CREATE TABLE IF NOT EXISTS ganglion_schema (
                version BIGINT PRIMARY KEY,
                description TEXT NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let current: Option<i64> = sql::query_scalar("SELECT MAX(version) FROM ganglion_schema")
            .fetch_one(&self.pool)
            .await?;
        let current = current.unwrap_or(0);
        let known = migrations.iter().map(|m| m.version).max().unwrap_or(0);
        if current > known {
            return Err(DatabaseError::SchemaTooNew {
                service: service.to_owned(),
                found: current,
                known,
            });
        }
        for migration in migrations.iter().filter(|m| m.version > current) {
            let mut tx = self.pool.begin().await?;
            self.lock_migrations(&mut tx).await?;
            let applied: Option<i64> =
                sql::query_scalar("SELECT version FROM ganglion_schema WHERE version = $1")
                    .bind(migration.version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if applied.is_some() {
                continue;
            }
            let sql = migration.sql_for(self.engine);
            sql::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await?;
            sql::query("INSERT INTO ganglion_schema (version, description) VALUES ($1, $2)")
                .bind(migration.version)
                .bind(migration.description)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(service, version = migration.version, "applied migration");
        }
        Ok(())
    }

    /// Takes the database's migration lock until `tx` ends (PostgreSQL;
    /// SQLite has one writer at a time anyway).
    async fn lock_migrations(&self, tx: &mut sql::Transaction) -> Result<(), sqlx::Error> {
        if self.engine == Engine::Postgres {
            // A fixed key: advisory locks belong to one database.
            sql::query("SELECT pg_advisory_xact_lock(716147001)")
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        sql::query_scalar::<i64>("SELECT 1")
            .fetch_one(&self.pool)
            .await
            .is_ok()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MIGRATIONS: &[Migration] = &[Migration {
        version: 1,
        description: "things",
        sql: "CREATE TABLE things (id {serial}, name TEXT NOT NULL)",
    }];

    async fn roundtrip(db: &Database) {
        sql::query("INSERT INTO things (name) VALUES ($1)")
            .bind("a")
            .execute(&db.pool)
            .await
            .expect("insert");
        let name: String = sql::query_scalar("SELECT name FROM things WHERE id = $1")
            .bind(1_i64)
            .fetch_one(&db.pool)
            .await
            .expect("select");
        assert_eq!(name, "a");
        assert!(db.ping().await);
        // Many parameters, bound in order, in rows and in a list.
        let names: Vec<String> = (0..300).map(|i| format!("n{i}")).collect();
        let rows = value_rows(db.engine, 1, names.len(), 1);
        let mut insert = sql::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO things (name) VALUES {rows}"
        )));
        for name in &names {
            insert = insert.bind(name);
        }
        insert.execute(&db.pool).await.expect("insert many");
        let wanted = &names[100..250];
        let select = format!(
            "SELECT name FROM things WHERE name IN ({}) ORDER BY id",
            params(db.engine, 1, wanted.len())
        );
        let mut query = sql::query_scalar::<String>(sqlx::AssertSqlSafe(select));
        for name in wanted {
            query = query.bind(name);
        }
        assert_eq!(
            query.fetch_all(&db.pool).await.expect("select many"),
            wanted
        );
    }

    /// Data the database refuses is told from trouble a retry may pass.
    async fn classifies_refused_data(db: &Database) {
        sql::query("CREATE TABLE keyed (name TEXT NOT NULL, CONSTRAINT keyed_name UNIQUE (name))")
            .execute(&db.pool)
            .await
            .expect("create");
        let insert = |name: Option<String>| {
            let pool = db.pool.clone();
            async move {
                sql::query("INSERT INTO keyed (name) VALUES ($1)")
                    .bind(name)
                    .execute(&pool)
                    .await
                    .map(|_| ())
            }
        };
        insert(Some("a".into())).await.expect("insert");
        let again = insert(Some("a".into())).await.expect_err("unique");
        assert!(
            !refuses_the_data(&again),
            "a taken key may be a race: {again}"
        );
        let null = insert(None).await.expect_err("not null");
        assert!(refuses_the_data(&null), "{null}");
        if db.engine == Engine::Postgres {
            // A value no index can hold, and text PostgreSQL cannot store.
            let huge: String = {
                use rand::Rng;
                rand::thread_rng()
                    .sample_iter(rand::distributions::Alphanumeric)
                    .take(20_000)
                    .map(char::from)
                    .collect()
            };
            let too_big = insert(Some(huge)).await.expect_err("index row too large");
            assert!(refuses_the_data(&too_big), "{too_big}");
            let nul = insert(Some("a\u{0}b".into())).await.expect_err("NUL");
            assert!(refuses_the_data(&nul), "{nul}");
        }
        let closed = sqlx::Error::PoolClosed;
        assert!(!refuses_the_data(&closed));
    }

    /// A database error raised with `code` by the engine itself.
    async fn raised(db: &Database, code: &str) -> sqlx::Error {
        let sql = format!(
            "DO $$ BEGIN RAISE EXCEPTION 'raised by the test' USING ERRCODE = '{code}'; END $$"
        );
        sql::query(sqlx::AssertSqlSafe(sql))
            .execute(&db.pool)
            .await
            .expect_err("raised")
    }

    #[tokio::test]
    async fn postgres_errors_that_pass_with_time_are_transient() {
        let url = crate::testing::scratch_postgres("base_transient").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open("test", Some(&url), dir.path(), None, MIGRATIONS)
            .await
            .expect("open");
        for code in [
            "57P01", "57P03", "08006", "08001", "53300", "40001", "40P01",
        ] {
            let error = raised(&db, code).await;
            assert!(is_transient(&error), "{code}: {error}");
        }
        for code in ["23505", "22001", "42601", "XX000"] {
            let error = raised(&db, code).await;
            assert!(!is_transient(&error), "{code}: {error}");
        }
    }

    /// Transactions that read what they then rewrite, side by side with
    /// other writers: none is refused as a stale snapshot, none loses
    /// another's change.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_read_then_write_transactions_take_turns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open("test", None, dir.path(), Some(4), MIGRATIONS)
            .await
            .expect("open");
        sql::query("INSERT INTO things (name) VALUES ('0')")
            .execute(&db.pool)
            .await
            .expect("seed");
        let counters = (0..20).map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.pool.begin_write().await.expect("begin");
                let n: String = sql::query_scalar("SELECT name FROM things WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await
                    .expect("read");
                tokio::task::yield_now().await;
                let next = (n.parse::<i64>().expect("number") + 1).to_string();
                sql::query("UPDATE things SET name = $1 WHERE id = 1")
                    .bind(next)
                    .execute(&mut *tx)
                    .await
                    .expect("write");
                tx.commit().await.expect("commit");
            })
        });
        let others = (0..20).map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                sql::query("INSERT INTO things (name) VALUES ('x')")
                    .execute(&db.pool)
                    .await
                    .expect("insert");
            })
        });
        for task in counters.chain(others).collect::<Vec<_>>() {
            task.await.expect("task");
        }
        let n: String = sql::query_scalar("SELECT name FROM things WHERE id = 1")
            .fetch_one(&db.pool)
            .await
            .expect("read");
        assert_eq!(n, "20");
    }

    /// Another process holding SQLite's write lock past the busy timeout
    /// is a wait, not a fault.
    #[tokio::test]
    async fn sqlite_busy_is_transient() {
        use sqlx::Connection as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open("test", None, dir.path(), None, MIGRATIONS)
            .await
            .expect("open");
        let url = format!("sqlite:{}", dir.path().join("test.db").display());
        let mut holder = sqlx::AnyConnection::connect(&url).await.expect("connect");
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .expect("take the write lock");
        let mut other = db.pool.acquire().await.expect("acquire");
        sql::raw_sql("PRAGMA busy_timeout = 0")
            .execute(&mut other)
            .await
            .expect("no waiting");
        let busy = sql::query("INSERT INTO things (name) VALUES ('b')")
            .execute(&mut other)
            .await
            .expect_err("busy");
        assert!(is_transient(&busy), "{busy}");
        let refused = sql::query("INSERT INTO nowhere (name) VALUES ('b')")
            .execute(&mut other)
            .await
            .expect_err("no such table");
        assert!(!is_transient(&refused), "{refused}");
        other.close_on_drop();
        drop(other);
        sqlx::query("ROLLBACK")
            .execute(&mut holder)
            .await
            .expect("release");
        db.close().await;
    }

    async fn refuses_newer_schema(db: &Database) {
        sql::query("INSERT INTO ganglion_schema (version, description) VALUES (99, 'future')")
            .execute(&db.pool)
            .await
            .expect("insert");
        let err = db
            .migrate("test", MIGRATIONS)
            .await
            .expect_err("newer refused");
        assert!(matches!(
            err,
            DatabaseError::SchemaTooNew {
                found: 99,
                known: 1,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn sqlite_migrates_and_refuses_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open("test", None, dir.path(), None, MIGRATIONS)
            .await
            .expect("open");
        assert_eq!(db.engine, Engine::Sqlite);
        roundtrip(&db).await;
        classifies_refused_data(&db).await;
        // Re-running migrations is a no-op.
        db.migrate("test", MIGRATIONS).await.expect("idempotent");
        refuses_newer_schema(&db).await;
        db.close().await;
        let reopened = Database::open("test", None, dir.path(), None, MIGRATIONS).await;
        assert!(matches!(reopened, Err(DatabaseError::SchemaTooNew { .. })));
    }

    /// Writers from many tasks at once on a one-writer SQLite database
    /// all commit, queued in the pool; a configured size still rules.
    #[tokio::test]
    async fn one_writer_sqlite_queues_concurrent_writers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = crate::Config {
            data_dir: dir.path().to_owned(),
            ..crate::Config::default()
        };
        let db = Database::open_for_service_one_writer(&config, "test", MIGRATIONS)
            .await
            .expect("open");
        assert_eq!(db.pool.max_connections(), 1);
        let writers = (0..4).map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let mut tx = db.pool.begin_write().await.expect("begin");
                    sql::query("INSERT INTO things (name) VALUES ($1)")
                        .bind(format!("w{w}-{i}"))
                        .execute(&mut *tx)
                        .await
                        .expect("insert");
                    tx.commit().await.expect("commit");
                }
            })
        });
        for writer in writers.collect::<Vec<_>>() {
            writer.await.expect("writer");
        }
        let count: i64 = sql::query_scalar("SELECT COUNT(*) FROM things")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        assert_eq!(count, 200);
        db.close().await;
        config
            .services
            .entry("test".to_owned())
            .or_default()
            .database_max_connections = Some(3);
        let db = Database::open_for_service_one_writer(&config, "test", MIGRATIONS)
            .await
            .expect("reopen");
        assert_eq!(db.pool.max_connections(), 3);
        db.close().await;
    }

    /// Replicas starting together on one empty PostgreSQL database all
    /// open it: the migrations run once, in turn (they raced before and
    /// one replica failed on a duplicate table).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_replicas_migrate_one_database_together() {
        const MANY: &[Migration] = &[
            Migration {
                version: 1,
                description: "things",
                sql: "CREATE TABLE things (id {serial}, name TEXT NOT NULL)",
            },
            Migration {
                version: 2,
                description: "more",
                sql: "CREATE TABLE more_things (id {serial}); CREATE INDEX more_by_id ON more_things (id)",
            },
        ];
        for round in 0..3 {
            let url = crate::testing::scratch_postgres(&format!("base_race{round}")).await;
            let opening: Vec<_> = (0..6)
                .map(|_| {
                    let url = url.clone();
                    tokio::spawn(async move {
                        let dir = tempfile::tempdir().expect("tempdir");
                        Database::open("test", Some(&url), dir.path(), Some(2), MANY).await
                    })
                })
                .collect();
            for opened in opening {
                let db = opened.await.expect("task").expect("every replica opens");
                let versions: i64 = sql::query_scalar("SELECT COUNT(*) FROM ganglion_schema")
                    .fetch_one(&db.pool)
                    .await
                    .expect("count");
                assert_eq!(versions, 2);
                db.close().await;
            }
        }
    }

    #[tokio::test]
    async fn postgres_migrates_and_refuses_newer_schema() {
        let url = crate::testing::scratch_postgres("base_migrate").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open("test", Some(&url), dir.path(), None, MIGRATIONS)
            .await
            .expect("open");
        assert_eq!(db.engine, Engine::Postgres);
        roundtrip(&db).await;
        classifies_refused_data(&db).await;
        db.migrate("test", MIGRATIONS).await.expect("idempotent");
        refuses_newer_schema(&db).await;
        db.close().await;
    }
}

/// The placeholder of a statement's `n`th parameter (from 1), for
/// statements of many parameters, each bound once in the order they appear:
/// `?` on SQLite, `$n` on PostgreSQL. sqlx looks up the name of every
/// parameter of a SQLite statement, and SQLite finds a numbered parameter's
/// name by a linear search, so hundreds of `$n` cost quadratic time; an
/// anonymous `?` has no name to search for. Every placeholder of such a
/// statement must come from here.
pub fn param(engine: Engine, n: usize) -> String {
    match engine {
        Engine::Sqlite => "?".to_owned(),
        Engine::Postgres => format!("${n}"),
    }
}

/// `count` placeholders from the `first` parameter on, comma-separated (an
/// `IN (…)` list; see [`param`]).
pub fn params(engine: Engine, first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| param(engine, n))
        .collect::<Vec<_>>()
        .join(",")
}

/// `($first,…),(…)`: `rows` rows of `width` placeholders from the `first`
/// parameter on (see [`param`]), for a statement that writes many rows at
/// once.
pub fn value_rows(engine: Engine, first: usize, rows: usize, width: usize) -> String {
    let mut sql = String::with_capacity(rows * width * 5);
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push('(');
        for column in 0..width {
            if column > 0 {
                sql.push(',');
            }
            sql.push_str(&param(engine, first + row * width + column));
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod value_rows_tests {
    use super::Engine;

    #[test]
    fn numbered_rows() {
        let rows = super::value_rows;
        assert_eq!(rows(Engine::Postgres, 2, 2, 3), "($2,$3,$4),($5,$6,$7)");
        assert_eq!(rows(Engine::Postgres, 1, 1, 1), "($1)");
        assert_eq!(rows(Engine::Sqlite, 2, 2, 2), "(?,?),(?,?)");
    }
}
