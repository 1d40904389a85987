//! Statements for both engines, written once (`$n` placeholders, which
//! both accept), run the cheapest way each engine allows.
//!
//! PostgreSQL goes through sqlx's `Any` driver as before. SQLite does not:
//! sqlx runs every SQLite statement on a worker thread of its own, so each
//! statement, `BEGIN` and `COMMIT` was a round trip between threads (two
//! to four context switches, about 25 µs of CPU each, measured). Here a
//! statement runs on the calling task's thread, in place: preparing,
//! binding and stepping an SQLite statement takes microseconds. Writers of
//! one database take turns through an async lock (SQLite has one writer at
//! a time anyway), taken when a transaction first writes, so no task ever
//! blocks a thread waiting for SQLite's own lock; a commit that flushes to
//! disk runs with [`tokio::task::block_in_place`] on the multi-threaded
//! runtime, so the thread's other tasks move on meanwhile.
//!
//! The builders mirror sqlx's (`query(..).bind(..).fetch_all(&pool)`) and
//! errors are `sqlx::Error`, so code reads the same for both engines.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::types::{Value, ValueRef};
use sqlx::Any;
use sqlx::AnyPool;
use sqlx::any::{AnyArguments, AnyRow};
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

// ---------------------------------------------------------------- values in

/// One bound value, typed even when null (PostgreSQL wants a typed NULL).
#[derive(Debug, Clone)]
pub enum Arg {
    Int(Option<i64>),
    Int4(Option<i32>),
    Real(Option<f64>),
    Bool(Option<bool>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

/// A value a statement can take as a parameter.
pub trait Bind {
    fn into_arg(self) -> Arg;
    /// This type's NULL, for `None`.
    fn null() -> Arg
    where
        Self: Sized;
}

macro_rules! bind_by_value {
    ($($t:ty => $variant:ident $(as $cast:ty)?),* $(,)?) => {$(
        impl Bind for $t {
            fn into_arg(self) -> Arg {
                Arg::$variant(Some(self $(as $cast)?))
            }
            fn null() -> Arg {
                Arg::$variant(None)
            }
        }
        impl Bind for &$t {
            fn into_arg(self) -> Arg {
                Arg::$variant(Some(*self $(as $cast)?))
            }
            fn null() -> Arg {
                Arg::$variant(None)
            }
        }
    )*};
}

bind_by_value!(i64 => Int, i32 => Int4, u32 => Int as i64, i16 => Int4 as i32, f64 => Real, bool => Bool);

/// Text and bytes, taken as they are or copied.
macro_rules! bind_converted {
    ($($t:ty => $variant:ident, |$v:ident| $conv:expr);* $(;)?) => {$(
        impl Bind for $t {
            fn into_arg(self) -> Arg {
                let $v = self;
                Arg::$variant(Some($conv))
            }
            fn null() -> Arg {
                Arg::$variant(None)
            }
        }
    )*};
}

bind_converted!(
    String => Text, |v| v;
    &String => Text, |v| v.clone();
    &str => Text, |v| v.to_owned();
    &&str => Text, |v| (*v).to_owned();
    Cow<'_, str> => Text, |v| v.into_owned();
    Vec<u8> => Blob, |v| v;
    &Vec<u8> => Blob, |v| v.clone();
    &[u8] => Blob, |v| v.to_vec();
);

impl<T: Bind> Bind for Option<T> {
    fn into_arg(self) -> Arg {
        self.map_or_else(T::null, T::into_arg)
    }
    fn null() -> Arg {
        T::null()
    }
}

impl<T> Bind for &Option<T>
where
    for<'a> &'a T: Bind,
    T: Bind,
{
    fn into_arg(self) -> Arg {
        self.as_ref().map_or_else(T::null, <&T>::into_arg)
    }
    fn null() -> Arg {
        T::null()
    }
}

impl rusqlite::ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput::Borrowed;
        Ok(match self {
            Arg::Int(Some(v)) => Borrowed(ValueRef::Integer(*v)),
            Arg::Int4(Some(v)) => Borrowed(ValueRef::Integer(i64::from(*v))),
            Arg::Bool(Some(v)) => Borrowed(ValueRef::Integer(i64::from(*v))),
            Arg::Real(Some(v)) => Borrowed(ValueRef::Real(*v)),
            Arg::Text(Some(v)) => Borrowed(ValueRef::Text(v.as_bytes())),
            Arg::Blob(Some(v)) => Borrowed(ValueRef::Blob(v)),
            _ => Borrowed(ValueRef::Null),
        })
    }
}

fn bind_any<'q>(
    query: sqlx::query::Query<'q, Any, AnyArguments>,
    arg: Arg,
) -> sqlx::query::Query<'q, Any, AnyArguments> {
    match arg {
        Arg::Int(v) => query.bind(v),
        Arg::Int4(v) => query.bind(v),
        Arg::Real(v) => query.bind(v),
        Arg::Bool(v) => query.bind(v),
        Arg::Text(v) => query.bind(v),
        Arg::Blob(v) => query.bind(v),
    }
}

// --------------------------------------------------------------- values out

/// A value a column can be read as.
pub trait Decode: Sized + for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any> {
    fn from_sqlite(value: &Value) -> Result<Self, BoxError>;

    /// [`from_sqlite`](Decode::from_sqlite) from a value the row gives
    /// up: text and bytes move rather than copy.
    fn from_sqlite_owned(value: Value) -> Result<Self, BoxError> {
        Self::from_sqlite(&value)
    }
}

fn wrong_type(wanted: &str, value: &Value) -> BoxError {
    format!("cannot read {:?} as {wanted}", value.data_type()).into()
}

impl Decode for i64 {
    fn from_sqlite(value: &Value) -> Result<Self, BoxError> {
        match value {
            Value::Integer(v) => Ok(*v),
            other => Err(wrong_type("an integer", other)),
        }
    }
}

impl Decode for i32 {
    fn from_sqlite(value: &Value) -> Result<Self, BoxError> {
        match value {
            Value::Integer(v) => Ok(i32::try_from(*v)?),
            other => Err(wrong_type("an integer", other)),
        }
    }
}

impl Decode for bool {
    fn from_sqlite(value: &Value) -> Result<Self, BoxError> {
        match value {
            Value::Integer(v) => Ok(*v != 0),
            other => Err(wrong_type("a boolean", other)),
        }
    }
}

impl Decode for f64 {
    fn from_sqlite(value: &Value) -> Result<Self, BoxError> {
        match value {
            Value::Real(v) => Ok(*v),
            Value::Integer(v) => Ok(*v as f64),
            other => Err(wrong_type("a number", other)),
        }
    }
}

impl Decode for String {
    fn from_sqlite(value: &Value) -> Result<Self, BoxError> {
        match value {
            Value::Text(v) => Ok(v.clone()),
            other => Err(wrong_type("text", other)),
        }
    }

    fn from_sqlite_owned(value: Value) -> Result<Self, BoxError> {
        match value {
            Value::Text(v) => Ok(v),
            other => Err(wrong_type("text", &other)),
        }
    }
}

impl Decode for Vec<u8> {
    fn from_sqlite(value: &Value) -> Result<Self, BoxError> {
        match value {
            Value::Blob(v) => Ok(v.clone()),
            Value::Text(v) => Ok(v.clone().into_bytes()),
            other => Err(wrong_type("bytes", other)),
        }
    }

    fn from_sqlite_owned(value: Value) -> Result<Self, BoxError> {
        match value {
            Value::Blob(v) => Ok(v),
            Value::Text(v) => Ok(v.into_bytes()),
            other => Err(wrong_type("bytes", &other)),
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn from_sqlite(value: &Value) -> Result<Self, BoxError> {
        match value {
            Value::Null => Ok(None),
            other => T::from_sqlite(other).map(Some),
        }
    }

    fn from_sqlite_owned(value: Value) -> Result<Self, BoxError> {
        match value {
            Value::Null => Ok(None),
            other => T::from_sqlite_owned(other).map(Some),
        }
    }
}

/// A column named by position or by name.
pub trait ColumnIndex: sqlx::ColumnIndex<AnyRow> + std::fmt::Debug + Copy {
    fn position(&self, columns: &[Box<str>]) -> Result<usize, sqlx::Error>;
}

impl ColumnIndex for usize {
    fn position(&self, columns: &[Box<str>]) -> Result<usize, sqlx::Error> {
        if *self < columns.len() {
            Ok(*self)
        } else {
            Err(sqlx::Error::ColumnIndexOutOfBounds {
                index: *self,
                len: columns.len(),
            })
        }
    }
}

impl ColumnIndex for &str {
    fn position(&self, columns: &[Box<str>]) -> Result<usize, sqlx::Error> {
        columns
            .iter()
            .position(|name| &**name == *self)
            .ok_or_else(|| sqlx::Error::ColumnNotFound((*self).to_owned()))
    }
}

/// One row of a result.
pub struct Row(RowInner);

enum RowInner {
    Sqlite {
        columns: Arc<[Box<str>]>,
        values: Vec<Value>,
    },
    Any(AnyRow),
}

impl Row {
    /// The column at `index` as a `T`.
    pub fn try_get<T: Decode, I: ColumnIndex>(&self, index: I) -> Result<T, sqlx::Error> {
        match &self.0 {
            RowInner::Sqlite { columns, values } => {
                let position = index.position(columns)?;
                T::from_sqlite(&values[position]).map_err(|source| sqlx::Error::ColumnDecode {
                    index: format!("{index:?}"),
                    source,
                })
            }
            RowInner::Any(row) => sqlx::Row::try_get(row, index),
        }
    }

    /// [`try_get`](Row::try_get), moving the column's text or bytes out
    /// of the row rather than copying them (a row of large JSON read once):
    /// the column reads as NULL afterwards.
    pub fn take<T: Decode, I: ColumnIndex>(&mut self, index: I) -> Result<T, sqlx::Error> {
        match &mut self.0 {
            RowInner::Sqlite { columns, values } => {
                let position = index.position(columns)?;
                let value = std::mem::replace(&mut values[position], Value::Null);
                T::from_sqlite_owned(value).map_err(|source| sqlx::Error::ColumnDecode {
                    index: format!("{index:?}"),
                    source,
                })
            }
            RowInner::Any(row) => sqlx::Row::try_get(row, index),
        }
    }
}

/// A whole row as a Rust value (tuples of columns, in order).
pub trait FromRow: Sized {
    fn from_row(row: &Row) -> Result<Self, sqlx::Error>;
}

macro_rules! tuple_from_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Decode),+> FromRow for ($($t,)+) {
            fn from_row(row: &Row) -> Result<Self, sqlx::Error> {
                Ok(($(row.try_get::<$t, usize>($i)?,)+))
            }
        }
    };
}

tuple_from_row!(A 0);
tuple_from_row!(A 0, B 1);
tuple_from_row!(A 0, B 1, C 2);
tuple_from_row!(A 0, B 1, C 2, D 3);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);

/// What a statement did.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryResult {
    rows_affected: u64,
}

impl QueryResult {
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

// ------------------------------------------------------------------ errors

/// An error SQLite reported, as sqlx reports database errors: `code()` is
/// the extended result code in decimal (SQLITE_BUSY_SNAPSHOT is "517").
#[derive(Debug)]
pub struct SqliteError {
    extended: i32,
    message: String,
}

impl SqliteError {
    /// The extended result code.
    pub fn extended_code(&self) -> i32 {
        self.extended
    }
}

impl std::fmt::Display for SqliteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(code: {}) {}", self.extended, self.message)
    }
}

impl std::error::Error for SqliteError {}

impl sqlx::error::DatabaseError for SqliteError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(self.extended.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use sqlx::error::ErrorKind;
        match self.extended {
            // SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY
            2067 | 1555 => ErrorKind::UniqueViolation,
            // SQLITE_CONSTRAINT_FOREIGNKEY
            787 => ErrorKind::ForeignKeyViolation,
            // SQLITE_CONSTRAINT_NOTNULL
            1299 => ErrorKind::NotNullViolation,
            // SQLITE_CONSTRAINT_CHECK
            275 => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

fn sqlite_error(error: rusqlite::Error) -> sqlx::Error {
    match error {
        rusqlite::Error::SqliteFailure(failure, message) => {
            sqlx::Error::Database(Box::new(SqliteError {
                extended: failure.extended_code,
                message: message.unwrap_or_else(|| failure.to_string()),
            }))
        }
        other => sqlx::Error::Protocol(format!("sqlite: {other}")),
    }
}

// ------------------------------------------------------------------- pools

/// A database's connections.
#[derive(Clone)]
pub struct Pool(PoolInner);

#[derive(Clone)]
enum PoolInner {
    Sqlite(Arc<SqlitePool>),
    Any(AnyPool),
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            PoolInner::Sqlite(pool) => write!(f, "Pool(sqlite {})", pool.path.display()),
            PoolInner::Any(pool) => write!(f, "Pool({pool:?})"),
        }
    }
}

/// How SQLite connections are opened.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The file; `:memory:` for a database in memory shared by the pool.
    pub path: PathBuf,
    /// Create the file if it does not exist.
    pub create: bool,
    /// Open it read-only.
    pub read_only: bool,
    /// Pragmas each connection runs once opened.
    pub pragmas: String,
    /// Whether commits are flushed to disk (`synchronous=FULL`).
    pub flushed: bool,
    pub max_connections: u32,
}

impl SqliteOptions {
    /// From a `sqlite:` URL (`sqlite://path?mode=rwc`, `sqlite:path`).
    pub fn from_url(url: &str) -> Result<SqliteOptions, sqlx::Error> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| {
                sqlx::Error::Configuration(format!("not an SQLite URL: {url}").into())
            })?;
        let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
        let mut options = SqliteOptions {
            path: PathBuf::from(path),
            create: false,
            read_only: false,
            pragmas: String::new(),
            flushed: true,
            max_connections: 4,
        };
        for param in params.split('&').filter(|p| !p.is_empty()) {
            match param.split_once('=') {
                Some(("mode", "rwc")) => options.create = true,
                Some(("mode", "rw")) => {}
                Some(("mode", "ro")) => options.read_only = true,
                Some(("mode", "memory")) => options.path = PathBuf::from(":memory:"),
                _ => {
                    return Err(sqlx::Error::Configuration(
                        format!("unsupported SQLite URL parameter {param}").into(),
                    ));
                }
            }
        }
        Ok(options)
    }
}

struct SqlitePool {
    path: PathBuf,
    flags: rusqlite::OpenFlags,
    pragmas: String,
    /// For a file written to: who copies its log back.
    checkpointer: Option<Arc<Checkpointer>>,
    flushed: bool,
    idle: Mutex<Vec<rusqlite::Connection>>,
    permits: Arc<Semaphore>,
    write: Arc<tokio::sync::Mutex<()>>,
    closed: AtomicBool,
    max_connections: u32,
}

static MEMORY_DATABASES: AtomicU64 = AtomicU64::new(0);

/// The write-ahead log's size, in pages, past which a commit asks for a
/// checkpoint (SQLite's own default for the checkpoint it would otherwise
/// run inside that commit).
const CHECKPOINT_PAGES: i32 = 1000;

/// How often the checkpointer looks unasked (a quiet database's last
/// commits, writes outside a transaction).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Past this many pages a writer checkpoints itself after its commit, should
/// the checkpointer have fallen far behind (or have no thread).
const CHECKPOINT_PAGES_INLINE: i32 = 10_000;

thread_local! {
    /// The log's size after this thread's last commit, as SQLite's
    /// write-ahead log hook reported it.
    static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages));
    Ok(())
}

/// Copies a database's write-ahead log back into its file, on a thread and
/// connection of its own. SQLite otherwise checkpoints inside the commit
/// that finds the log past 1 000 pages: every few hundred transactions one
/// writer (a consumer on an event's path to `/sync`) spent milliseconds
/// writing and flushing pages that were not its own, and everyone waiting
/// on it waited too. Here that commit only asks, and the thread runs a
/// passive checkpoint, which waits for nobody and holds up no reader or
/// writer; it flushes as the pool's `synchronous` says.
#[derive(Default)]
struct Checkpointer {
    /// (a commit asked for a checkpoint, the pool is closed or gone)
    state: Mutex<(bool, bool)>,
    wake: std::sync::Condvar,
    /// Whether the thread runs (if not, writers checkpoint themselves).
    running: AtomicBool,
    /// Checkpoints the thread ran, and writers after their commits.
    by_thread: AtomicU64,
    by_writers: AtomicU64,
}

impl Checkpointer {
    /// Starts the thread for `pool`'s file; it ends once the pool is
    /// closed or dropped.
    fn spawn(pool: &SqlitePool) {
        let Some(me) = pool.checkpointer.clone() else {
            return;
        };
        let (path, flags) = (pool.path.clone(), pool.flags);
        let pragmas = pool.pragmas.clone();
        let thread = me.clone();
        let spawned = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                let me = thread;
                let mut conn: Option<rusqlite::Connection> = None;
                loop {
                    {
                        let state = lock(&me.state);
                        let (mut state, _) = me
                            .wake
                            .wait_timeout_while(state, CHECKPOINT_EVERY, |(asked, gone)| {
                                !*asked && !*gone
                            })
                            .unwrap_or_else(|p| p.into_inner());
                        if state.1 {
                            return;
                        }
                        state.0 = false;
                    }
                    if conn.is_none() {
                        conn = rusqlite::Connection::open_with_flags(&path, flags)
                            .and_then(|c| c.execute_batch(&pragmas).map(|()| c))
                            .ok();
                    }
                    let Some(open) = &conn else { continue };
                    match open.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        Ok(()) => {
                            me.by_thread.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            tracing::debug!(%error, "checkpoint failed; trying again");
                            conn = None;
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => me.running.store(true, Ordering::Release),
            Err(error) => {
                tracing::warn!(%error, "no checkpointer thread: writers checkpoint themselves");
            }
        }
    }

    /// After a commit on `conn`: asks for a checkpoint once the log has
    /// grown past [`CHECKPOINT_PAGES`]; checkpoints in place past
    /// [`CHECKPOINT_PAGES_INLINE`] or when no thread runs.
    fn after_commit(&self, conn: &rusqlite::Connection) {
        let pages = WAL_PAGES.with(|p| p.replace(0));
        if pages < CHECKPOINT_PAGES {
            return;
        }
        let running = self.running.load(Ordering::Acquire);
        if running {
            lock(&self.state).0 = true;
            self.wake.notify_one();
        }
        if !running || pages >= CHECKPOINT_PAGES_INLINE {
            self.by_writers.fetch_add(1, Ordering::Relaxed);
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
    }

    /// Ends the thread (its connection closes with it).
    fn stop(&self) {
        lock(&self.state).1 = true;
        self.wake.notify_one();
    }
}

impl Drop for SqlitePool {
    fn drop(&mut self) {
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.stop();
        }
    }
}

impl Pool {
    /// A pool over sqlx's `Any` driver (PostgreSQL).
    pub fn from_any(pool: AnyPool) -> Pool {
        Pool(PoolInner::Any(pool))
    }

    /// A pool of SQLite connections run in place; opens one at once, so a
    /// file that cannot be opened fails here.
    pub async fn sqlite(options: SqliteOptions) -> Result<Pool, sqlx::Error> {
        use rusqlite::OpenFlags;
        let mut flags = if options.read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        if options.create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        flags |= OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let path = if options.path.as_os_str() == ":memory:" {
            // Every connection of the pool sees the same database.
            let n = MEMORY_DATABASES.fetch_add(1, Ordering::Relaxed);
            flags |= OpenFlags::SQLITE_OPEN_MEMORY | OpenFlags::SQLITE_OPEN_SHARED_CACHE;
            PathBuf::from(format!(
                "file:ganglion-memory-{}-{n}?mode=memory&cache=shared",
                std::process::id()
            ))
        } else {
            options.path
        };
        // A file written to gets its write-ahead log copied back by a
        // thread of its own (see `Checkpointer`).
        let checkpointed = !options.read_only && !flags.contains(OpenFlags::SQLITE_OPEN_MEMORY);
        let mut pragmas = options.pragmas;
        if checkpointed {
            pragmas.push_str(" PRAGMA journal_size_limit=67108864;");
        }
        let pool = Arc::new(SqlitePool {
            path,
            flags,
            pragmas,
            checkpointer: checkpointed.then(Arc::default),
            flushed: options.flushed,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(options.max_connections.max(1) as usize)),
            write: Arc::new(tokio::sync::Mutex::new(())),
            closed: AtomicBool::new(false),
            max_connections: options.max_connections.max(1),
        });
        let first = pool.open()?;
        lock(&pool.idle).push(first);
        if checkpointed {
            Checkpointer::spawn(&pool);
        }
        Ok(Pool(PoolInner::Sqlite(pool)))
    }

    /// The most connections the pool opens.
    pub fn max_connections(&self) -> u32 {
        match &self.0 {
            PoolInner::Any(pool) => pool.options().get_max_connections(),
            PoolInner::Sqlite(pool) => pool.max_connections,
        }
    }

    /// A connection of the pool, back in it when dropped.
    pub async fn acquire(&self) -> Result<PoolConnection, sqlx::Error> {
        Ok(PoolConnection(self.connection().await?))
    }

    async fn connection(&self) -> Result<Connection, sqlx::Error> {
        match &self.0 {
            PoolInner::Any(pool) => Ok(Connection(ConnInner::AnyConn(pool.acquire().await?))),
            PoolInner::Sqlite(pool) => {
                if pool.closed.load(Ordering::Acquire) {
                    return Err(sqlx::Error::PoolClosed);
                }
                let permit =
                    tokio::time::timeout(ACQUIRE_WAIT, pool.permits.clone().acquire_owned())
                        .await
                        .map_err(|_| sqlx::Error::PoolTimedOut)?
                        .map_err(|_| sqlx::Error::PoolClosed)?;
                let idle = lock(&pool.idle).pop();
                let conn = match idle {
                    Some(conn) => conn,
                    None => pool.open()?,
                };
                Ok(Connection(ConnInner::Sqlite(SqliteConn {
                    conn: Some(conn),
                    pool: pool.clone(),
                    _permit: Some(permit),
                    write: None,
                    flushed: pool.flushed,
                    discard: false,
                })))
            }
        }
    }

    /// A connection for one statement on the pool. When every connection
    /// is taken and the statement only reads (`SELECT`), one more is opened
    /// for it and closed after: the holders may be transactions waiting for
    /// the write turn of a task that needs this very read to finish, and a
    /// reader must never wait for a writer. A read runs without a pause, so
    /// these are at most one a thread; a write waits its turn like the rest
    /// (it would hold an extra connection while it waits).
    async fn statement_connection(&self, sql: &str) -> Result<Connection, sqlx::Error> {
        let PoolInner::Sqlite(pool) = &self.0 else {
            return self.connection().await;
        };
        if pool.closed.load(Ordering::Acquire)
            || pool.permits.available_permits() > 0
            || !reads_only(sql)
        {
            return self.connection().await;
        }
        Ok(Connection(ConnInner::Sqlite(SqliteConn {
            conn: Some(pool.open()?),
            pool: pool.clone(),
            _permit: None,
            write: None,
            flushed: pool.flushed,
            discard: true,
        })))
    }

    /// Starts a transaction.
    pub async fn begin(&self) -> Result<Transaction, sqlx::Error> {
        match &self.0 {
            PoolInner::Any(pool) => Ok(Transaction {
                conn: Connection(ConnInner::AnyTx(pool.begin().await?)),
            }),
            PoolInner::Sqlite(_) => {
                let mut conn = self.connection().await?;
                conn.sqlite_batch("BEGIN")?;
                Ok(Transaction { conn })
            }
        }
    }

    /// Starts a transaction that reads what it then rewrites: on SQLite
    /// it takes this database's write turn and SQLite's write lock first
    /// (`BEGIN IMMEDIATE`), so no other writer commits between its read and
    /// its write (which SQLite would refuse as a stale snapshot). On
    /// PostgreSQL, as [`begin`](Self::begin): callers there serialise with
    /// a lock of their own where it matters.
    pub async fn begin_write(&self) -> Result<Transaction, sqlx::Error> {
        match &self.0 {
            PoolInner::Any(_) => self.begin().await,
            PoolInner::Sqlite(pool) => {
                let mut conn = self.connection().await?;
                if let ConnInner::Sqlite(sqlite) = &mut conn.0 {
                    sqlite.write = Some(pool.write_turn().await?);
                }
                conn.sqlite_batch("BEGIN IMMEDIATE")?;
                Ok(Transaction { conn })
            }
        }
    }

    /// Closes the pool: connections in use close when given back.
    pub async fn close(&self) {
        match &self.0 {
            PoolInner::Any(pool) => pool.close().await,
            PoolInner::Sqlite(pool) => {
                pool.closed.store(true, Ordering::Release);
                if let Some(checkpointer) = &pool.checkpointer {
                    checkpointer.stop();
                }
                pool.permits.close();
                lock(&pool.idle).clear();
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long a writer waits for its turn before giving up with
/// SQLITE_BUSY (as SQLite's busy timeout would have).
const WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a statement waits for a free connection.
const ACQUIRE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl SqlitePool {
    /// Waits for this database's write turn.
    async fn write_turn(self: &Arc<Self>) -> Result<OwnedMutexGuard<()>, sqlx::Error> {
        tokio::time::timeout(WRITE_WAIT, self.write.clone().lock_owned())
            .await
            .map_err(|_| {
                sqlx::Error::Database(Box::new(SqliteError {
                    extended: 5,
                    message: "database is locked: another writer kept it too long".to_owned(),
                }))
            })
    }

    fn open(&self) -> Result<rusqlite::Connection, sqlx::Error> {
        let conn =
            rusqlite::Connection::open_with_flags(&self.path, self.flags).map_err(sqlite_error)?;
        conn.set_prepared_statement_cache_capacity(256);
        if !self.pragmas.is_empty() {
            conn.execute_batch(&self.pragmas).map_err(sqlite_error)?;
        }
        if self.checkpointer.is_some() {
            // Replaces SQLite's checkpoint inside commits.
            conn.wal_hook(Some(note_wal_pages));
        }
        Ok(conn)
    }
}

// ------------------------------------------------------------- connections

/// A connection, in a transaction or not; statements run on it with
/// `&mut connection`.
pub struct Connection(ConnInner);

enum ConnInner {
    Sqlite(SqliteConn),
    AnyTx(sqlx::Transaction<'static, Any>),
    AnyConn(sqlx::pool::PoolConnection<Any>),
    /// Committed or rolled back: nothing runs on it any more.
    Detached,
}

struct SqliteConn {
    conn: Option<rusqlite::Connection>,
    pool: Arc<SqlitePool>,
    /// None for a connection opened beyond the pool's size (see
    /// [`Pool::statement_connection`]), closed after its statement.
    _permit: Option<OwnedSemaphorePermit>,
    /// This database's write turn, held from the first write of a
    /// transaction to its end.
    write: Option<OwnedMutexGuard<()>>,
    /// Whether commits flush to disk (`synchronous=FULL`).
    flushed: bool,
    /// Closed rather than given back to the pool.
    discard: bool,
}

impl SqliteConn {
    fn db(&self) -> &rusqlite::Connection {
        self.conn.as_ref().expect("a connection in use")
    }

    /// Runs `work` on the connection: in this database's write turn when
    /// it `writes` (held to the end of the transaction, if one is open),
    /// under [`in_place`] when it is a write that commits by itself and
    /// flushes.
    async fn run<T>(
        &mut self,
        writes: bool,
        work: impl FnOnce(&rusqlite::Connection) -> T,
    ) -> Result<T, sqlx::Error> {
        if writes && self.write.is_none() {
            self.write = Some(self.pool.write_turn().await?);
        }
        let db = self.db();
        let flush = self.flushed && self.write.is_some() && db.is_autocommit();
        let done = in_place(flush, || work(db));
        if self.db().is_autocommit() {
            self.write = None;
        }
        Ok(done)
    }

    /// Ends the open transaction with `COMMIT` or `ROLLBACK`; dropping the
    /// connection after rolls back what a failed commit left.
    fn end(self, statement: &str) -> Result<(), sqlx::Error> {
        let flush = statement == "COMMIT" && self.flushed && self.write.is_some();
        in_place(flush, || {
            self.db().execute_batch(statement)?;
            if statement == "COMMIT"
                && let Some(checkpointer) = &self.pool.checkpointer
            {
                checkpointer.after_commit(self.db());
            }
            Ok(())
        })
        .map_err(sqlite_error)
    }
}

impl Drop for SqliteConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut reusable = !self.discard && !self.pool.closed.load(Ordering::Acquire);
            if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
                reusable = false;
            }
            if self.flushed != self.pool.flushed {
                reusable = false;
            }
            if reusable {
                lock(&self.pool.idle).push(conn);
            }
        }
        self.write = None;
    }
}

/// A connection borrowed from a [`Pool`].
pub struct PoolConnection(Connection);

impl PoolConnection {
    /// Closes the connection when dropped instead of giving it back (its
    /// session holds something only closing frees, or a setting changed).
    pub fn close_on_drop(&mut self) {
        match &mut self.0.0 {
            ConnInner::Sqlite(conn) => conn.discard = true,
            ConnInner::AnyConn(conn) => conn.close_on_drop(),
            ConnInner::AnyTx(_) | ConnInner::Detached => {}
        }
    }
}

impl std::ops::Deref for PoolConnection {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.0
    }
}

impl std::ops::DerefMut for PoolConnection {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.0
    }
}

/// A transaction: rolled back when dropped without [`Transaction::commit`].
pub struct Transaction {
    conn: Connection,
}

impl std::ops::Deref for Transaction {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Transaction {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Transaction {
    /// Makes the transaction's changes permanent (flushed to disk first
    /// when the connection flushes its commits).
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        match std::mem::replace(&mut self.conn.0, ConnInner::Detached) {
            ConnInner::AnyTx(tx) => tx.commit().await,
            ConnInner::Sqlite(conn) => conn.end("COMMIT"),
            ConnInner::AnyConn(_) | ConnInner::Detached => Ok(()),
        }
    }

    /// Gives up the transaction's changes.
    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        match std::mem::replace(&mut self.conn.0, ConnInner::Detached) {
            ConnInner::AnyTx(tx) => tx.rollback().await,
            ConnInner::Sqlite(conn) => conn.end("ROLLBACK"),
            ConnInner::AnyConn(_) | ConnInner::Detached => Ok(()),
        }
    }
}

impl Connection {
    /// Flushes this connection's commits to disk (SQLite
    /// `synchronous=FULL`) or not (`NORMAL`); nothing on PostgreSQL.
    pub async fn set_flushed(&mut self, flushed: bool) -> Result<(), sqlx::Error> {
        if let ConnInner::Sqlite(conn) = &mut self.0 {
            conn.flushed = flushed;
            let pragma = if flushed {
                "PRAGMA synchronous=FULL"
            } else {
                "PRAGMA synchronous=NORMAL"
            };
            self.sqlite_batch(pragma)?;
        }
        Ok(())
    }

    /// Puts back the pool's own setting of [`Connection::set_flushed`].
    pub async fn restore_flushed(&mut self) -> Result<(), sqlx::Error> {
        let ConnInner::Sqlite(conn) = &self.0 else {
            return Ok(());
        };
        let flushed = conn.pool.flushed;
        self.set_flushed(flushed).await
    }

    fn sqlite_batch(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match &mut self.0 {
            ConnInner::Sqlite(conn) => conn.db().execute_batch(sql).map_err(sqlite_error),
            _ => Ok(()),
        }
    }
}

/// Runs `work` in place, moving the thread's other tasks elsewhere first
/// when it waits for the disk (a flushed commit) on the multi-threaded
/// runtime.
fn in_place<T>(waits_for_disk: bool, work: impl FnOnce() -> T) -> T {
    if waits_for_disk
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
    {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

// -------------------------------------------------------------- executing

/// Where a statement runs: on a pool (a connection of it, for this
/// statement alone) or on a connection (in its transaction, if any).
pub enum Exec<'e> {
    Pool(&'e Pool),
    Conn(&'e mut Connection),
}

impl<'e> From<&'e Pool> for Exec<'e> {
    fn from(pool: &'e Pool) -> Self {
        Exec::Pool(pool)
    }
}

impl<'e> From<&'e mut Connection> for Exec<'e> {
    fn from(conn: &'e mut Connection) -> Self {
        Exec::Conn(conn)
    }
}

impl<'e> From<&'e mut Transaction> for Exec<'e> {
    fn from(tx: &'e mut Transaction) -> Self {
        Exec::Conn(&mut tx.conn)
    }
}

impl<'e> From<&'e mut PoolConnection> for Exec<'e> {
    fn from(conn: &'e mut PoolConnection) -> Self {
        Exec::Conn(&mut conn.0)
    }
}

/// SQL text: written in the code, or built at run time (then wrapped in
/// `sqlx::AssertSqlSafe`, as with sqlx, to say no input went into it).
pub enum Sql {
    Static(&'static str),
    Built(String),
}

impl Sql {
    fn as_str(&self) -> &str {
        match self {
            Sql::Static(sql) => sql,
            Sql::Built(sql) => sql,
        }
    }
}

impl From<&'static str> for Sql {
    fn from(sql: &'static str) -> Sql {
        Sql::Static(sql)
    }
}

impl From<sqlx::AssertSqlSafe<String>> for Sql {
    fn from(sql: sqlx::AssertSqlSafe<String>) -> Sql {
        Sql::Built(sql.0)
    }
}

impl From<sqlx::AssertSqlSafe<&'static str>> for Sql {
    fn from(sql: sqlx::AssertSqlSafe<&'static str>) -> Sql {
        Sql::Static(sql.0)
    }
}

/// What to collect from a statement.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Nothing,
    One,
    All,
}

enum Outcome {
    Done(QueryResult),
    Rows(Vec<Row>),
}

/// A statement with its parameters.
pub struct Query {
    sql: Sql,
    args: Vec<Arg>,
}

/// A statement, written once for both engines.
pub fn query(sql: impl Into<Sql>) -> Query {
    Query {
        sql: sql.into(),
        args: Vec::new(),
    }
}

/// A statement whose rows are read as the first column's value.
pub fn query_scalar<O: Decode>(sql: impl Into<Sql>) -> QueryScalar<O> {
    QueryAs {
        query: query(sql),
        read: |row| row.try_get(0_usize),
    }
}

/// A statement whose rows are read as `O` (a tuple of columns).
pub fn query_as<O: FromRow>(sql: impl Into<Sql>) -> QueryAs<O> {
    QueryAs {
        query: query(sql),
        read: O::from_row,
    }
}

/// Statements without parameters, run together (schema changes).
pub fn raw_sql(sql: impl Into<Sql>) -> RawSql {
    RawSql(sql.into())
}

impl Query {
    pub fn bind(mut self, value: impl Bind) -> Self {
        self.args.push(value.into_arg());
        self
    }

    pub async fn execute<'e>(self, on: impl Into<Exec<'e>>) -> Result<QueryResult, sqlx::Error> {
        match self.run(on.into(), Want::Nothing).await? {
            Outcome::Done(result) => Ok(result),
            Outcome::Rows(_) => Ok(QueryResult::default()),
        }
    }

    pub async fn fetch_all<'e>(self, on: impl Into<Exec<'e>>) -> Result<Vec<Row>, sqlx::Error> {
        match self.run(on.into(), Want::All).await? {
            Outcome::Rows(rows) => Ok(rows),
            Outcome::Done(_) => Ok(Vec::new()),
        }
    }

    pub async fn fetch_optional<'e>(
        self,
        on: impl Into<Exec<'e>>,
    ) -> Result<Option<Row>, sqlx::Error> {
        match self.run(on.into(), Want::One).await? {
            Outcome::Rows(rows) => Ok(rows.into_iter().next()),
            Outcome::Done(_) => Ok(None),
        }
    }

    pub async fn fetch_one<'e>(self, on: impl Into<Exec<'e>>) -> Result<Row, sqlx::Error> {
        self.fetch_optional(on)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    async fn run(self, on: Exec<'_>, want: Want) -> Result<Outcome, sqlx::Error> {
        match on {
            Exec::Pool(pool) => match &pool.0 {
                PoolInner::Any(any) => self.run_any(any, want).await,
                PoolInner::Sqlite(_) => {
                    let mut conn = pool.statement_connection(self.sql.as_str()).await?;
                    self.run_sqlite(&mut conn, want).await
                }
            },
            Exec::Conn(conn) => {
                if matches!(conn.0, ConnInner::Sqlite(_)) {
                    return self.run_sqlite(conn, want).await;
                }
                match &mut conn.0 {
                    ConnInner::AnyTx(tx) => self.run_any(&mut **tx, want).await,
                    ConnInner::AnyConn(c) => self.run_any(&mut **c, want).await,
                    ConnInner::Sqlite(_) | ConnInner::Detached => Err(sqlx::Error::PoolClosed),
                }
            }
        }
    }

    async fn run_any<'c, E>(self, on: E, want: Want) -> Result<Outcome, sqlx::Error>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        let Query { sql, args } = self;
        let mut query = match sql {
            Sql::Static(sql) => sqlx::query(sql),
            Sql::Built(sql) => sqlx::query(sqlx::AssertSqlSafe(sql)),
        };
        for arg in args {
            query = bind_any(query, arg);
        }
        Ok(match want {
            Want::Nothing => {
                let done = query.execute(on).await?;
                Outcome::Done(QueryResult {
                    rows_affected: done.rows_affected(),
                })
            }
            Want::One => Outcome::Rows(
                query
                    .fetch_optional(on)
                    .await?
                    .map(|row| Row(RowInner::Any(row)))
                    .into_iter()
                    .collect(),
            ),
            Want::All => Outcome::Rows(
                query
                    .fetch_all(on)
                    .await?
                    .into_iter()
                    .map(|row| Row(RowInner::Any(row)))
                    .collect(),
            ),
        })
    }

    async fn run_sqlite(self, conn: &mut Connection, want: Want) -> Result<Outcome, sqlx::Error> {
        let ConnInner::Sqlite(sqlite) = &mut conn.0 else {
            return Err(sqlx::Error::PoolClosed);
        };
        let sql = self.sql.as_str();
        tracing::trace!(target: "ganglion_sql", sql, "statement");
        // Whether it writes, from SQLite itself unless it is a plain
        // SELECT or the write turn is held already.
        let writes = sqlite.write.is_none()
            && !reads_only(sql)
            && !sqlite
                .db()
                .prepare_cached(sql)
                .map_err(sqlite_error)?
                .readonly();
        sqlite
            .run(writes, |db| step(db, sql, &self.args, want))
            .await?
    }
}

/// Whether `sql` is a plain `SELECT`, which never writes: it skips the
/// look at the prepared statement that tells other statements apart.
fn reads_only(sql: &str) -> bool {
    sql.trim_start()
        .get(..6)
        .is_some_and(|word| word.eq_ignore_ascii_case("select"))
}

/// Statements with more parameters than this have their argument order
/// remembered (see [`remembered_order`]).
const REMEMBERED_FROM: usize = 16;

/// Per statement text, the argument each parameter takes.
type ArgumentOrders = crate::bounded::Bounded<Box<str>, Arc<[usize]>>;

/// Argument orders of statements with many parameters, by statement text.
static ARGUMENT_ORDERS: std::sync::LazyLock<Mutex<ArgumentOrders>> =
    std::sync::LazyLock::new(|| Mutex::new(ArgumentOrders::new(256)));

/// The (1-based) argument the statement's parameter `index` takes: `$n`
/// names the n-th argument wherever it appears, where SQLite numbers
/// parameters by first appearance.
fn argument_of(statement: &rusqlite::Statement<'_>, index: usize) -> usize {
    statement
        .parameter_name(index)
        .and_then(|name| name.strip_prefix('$').or_else(|| name.strip_prefix('?')))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(index)
}

/// [`argument_of`] each parameter of a statement with many, worked out
/// once per statement text: SQLite finds a parameter's name by walking the
/// list of all of them, so asking for each in turn is quadratic (for a
/// list of 1 000 IDs, 6 % of an initial `/sync`).
fn remembered_order(statement: &rusqlite::Statement<'_>, sql: &str) -> Arc<[usize]> {
    if let Some(order) = lock(&ARGUMENT_ORDERS).get(sql) {
        return order;
    }
    let order: Arc<[usize]> = (1..=statement.parameter_count())
        .map(|index| argument_of(statement, index))
        .collect();
    lock(&ARGUMENT_ORDERS).insert(sql.into(), order.clone());
    order
}

/// Prepares (from the connection's cache), binds and runs one statement.
fn step(
    db: &rusqlite::Connection,
    sql: &str,
    args: &[Arg],
    want: Want,
) -> Result<Outcome, sqlx::Error> {
    let mut statement = db.prepare_cached(sql).map_err(sqlite_error)?;
    let count = statement.parameter_count();
    let remembered = (count > REMEMBERED_FROM).then(|| remembered_order(&statement, sql));
    for index in 1..=count {
        let n = match &remembered {
            Some(order) => order[index - 1],
            None => argument_of(&statement, index),
        };
        let arg = n.checked_sub(1).and_then(|i| args.get(i)).ok_or_else(|| {
            sqlx::Error::Protocol(format!(
                "statement wants parameter {n}, {} given",
                args.len()
            ))
        })?;
        statement
            .raw_bind_parameter(index, arg)
            .map_err(sqlite_error)?;
    }
    if want == Want::Nothing && statement.column_count() == 0 {
        let changed = statement.raw_execute().map_err(sqlite_error)?;
        return Ok(Outcome::Done(QueryResult {
            rows_affected: changed as u64,
        }));
    }
    let width = statement.column_count();
    let columns: Arc<[Box<str>]> = (0..width)
        .map(|i| statement.column_name(i).map(Box::from).unwrap_or_default())
        .collect();
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite_error)? {
        if want != Want::Nothing {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(owned(row.get_ref(i).map_err(sqlite_error)?)?);
            }
            out.push(Row(RowInner::Sqlite {
                columns: columns.clone(),
                values,
            }));
            if want == Want::One {
                break;
            }
        }
    }
    drop(rows);
    if want == Want::Nothing {
        return Ok(Outcome::Done(QueryResult {
            rows_affected: db.changes(),
        }));
    }
    Ok(Outcome::Rows(out))
}

/// A column's value, copied out of SQLite's buffers.
fn owned(value: ValueRef<'_>) -> Result<Value, sqlx::Error> {
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) => Value::Integer(v),
        ValueRef::Real(v) => Value::Real(v),
        ValueRef::Text(v) => Value::Text(
            String::from_utf8(v.to_vec()).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        ),
        ValueRef::Blob(v) => Value::Blob(v.to_vec()),
    })
}

/// A statement whose rows are read as `O`: the first column's value
/// ([`query_scalar`]) or a tuple of columns ([`query_as`]).
pub struct QueryAs<O> {
    query: Query,
    read: fn(&Row) -> Result<O, sqlx::Error>,
}

/// [`QueryAs`] reading the first column.
pub type QueryScalar<O> = QueryAs<O>;

impl<O> QueryAs<O> {
    pub fn bind(mut self, value: impl Bind) -> Self {
        self.query = self.query.bind(value);
        self
    }

    pub async fn fetch_all<'e>(self, on: impl Into<Exec<'e>>) -> Result<Vec<O>, sqlx::Error> {
        self.query
            .fetch_all(on)
            .await?
            .iter()
            .map(self.read)
            .collect()
    }

    pub async fn fetch_optional<'e>(
        self,
        on: impl Into<Exec<'e>>,
    ) -> Result<Option<O>, sqlx::Error> {
        self.query
            .fetch_optional(on)
            .await?
            .as_ref()
            .map(self.read)
            .transpose()
    }

    pub async fn fetch_one<'e>(self, on: impl Into<Exec<'e>>) -> Result<O, sqlx::Error> {
        (self.read)(&self.query.fetch_one(on).await?)
    }
}

/// Statements without parameters.
pub struct RawSql(Sql);

impl RawSql {
    pub async fn execute<'e>(self, on: impl Into<Exec<'e>>) -> Result<QueryResult, sqlx::Error> {
        let any = |sql: Sql| match sql {
            Sql::Static(sql) => sqlx::raw_sql(sql),
            Sql::Built(sql) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql)),
        };
        let done = match on.into() {
            Exec::Pool(pool) => match &pool.0 {
                PoolInner::Any(pool) => any(self.0).execute(pool).await?,
                PoolInner::Sqlite(_) => {
                    let mut conn = pool.connection().await?;
                    return raw_sqlite(&mut conn, self.0.as_str()).await;
                }
            },
            Exec::Conn(conn) => {
                if matches!(conn.0, ConnInner::Sqlite(_)) {
                    return raw_sqlite(conn, self.0.as_str()).await;
                }
                match &mut conn.0 {
                    ConnInner::AnyTx(tx) => any(self.0).execute(&mut **tx).await?,
                    ConnInner::AnyConn(c) => any(self.0).execute(&mut **c).await?,
                    ConnInner::Sqlite(_) | ConnInner::Detached => {
                        return Err(sqlx::Error::PoolClosed);
                    }
                }
            }
        };
        Ok(QueryResult {
            rows_affected: done.rows_affected(),
        })
    }
}

/// Runs statements without parameters on an SQLite connection, in this
/// database's write turn (schema changes and pragmas).
async fn raw_sqlite(conn: &mut Connection, sql: &str) -> Result<QueryResult, sqlx::Error> {
    let ConnInner::Sqlite(sqlite) = &mut conn.0 else {
        return Err(sqlx::Error::PoolClosed);
    };
    let (result, changed) = sqlite
        .run(true, |db| (db.execute_batch(sql), db.changes()))
        .await?;
    result.map_err(sqlite_error)?;
    Ok(QueryResult {
        rows_affected: changed,
    })
}

#[cfg(test)]
mod tests;
