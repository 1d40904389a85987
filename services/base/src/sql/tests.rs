//! The statement layer on both engines: the same statements, the same
//! answers, the same errors.

use super::*;
use crate::database::{Database, Migration, refuses_the_data};

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "things",
    sql: "CREATE TABLE things (
        id {serial},
        name TEXT NOT NULL,
        size BIGINT,
        data {bytes},
        CONSTRAINT things_name UNIQUE (name)
    )",
}];

async fn sqlite(dir: &tempfile::TempDir) -> Database {
    Database::open("test", None, dir.path(), None, MIGRATIONS)
        .await
        .expect("open")
}

async fn postgres(name: &str) -> Database {
    let url = crate::testing::scratch_postgres(name).await;
    let dir = tempfile::tempdir().expect("tempdir");
    Database::open("test", Some(&url), dir.path(), None, MIGRATIONS)
        .await
        .expect("open")
}

/// Numbered parameters name their argument wherever they appear, in any
/// order and more than once; NULLs are typed; values read back as written.
async fn parameters_and_values(db: &Database) {
    query("INSERT INTO things (name, size, data) VALUES ($2, $1, $3)")
        .bind(7_i64)
        .bind("seven")
        .bind(vec![0_u8, 1, 255])
        .execute(&db.pool)
        .await
        .expect("insert");
    query("INSERT INTO things (name, size, data) VALUES ($1, $2, $3)")
        .bind("none")
        .bind(None::<i64>)
        .bind(None::<Vec<u8>>)
        .execute(&db.pool)
        .await
        .expect("insert nulls");
    let row =
        query("SELECT name, size, data FROM things WHERE name = $1 AND (size = $2 OR $2 IS NULL)")
            .bind("seven")
            .bind(Some(7_i64))
            .fetch_one(&db.pool)
            .await
            .expect("select");
    assert_eq!(row.try_get::<String, _>("name").expect("name"), "seven");
    assert_eq!(row.try_get::<i64, _>(1).expect("size"), 7);
    assert_eq!(
        row.try_get::<Vec<u8>, _>("data").expect("data"),
        vec![0, 1, 255]
    );
    let (name, size, data): (String, Option<i64>, Option<Vec<u8>>) =
        query_as("SELECT name, size, data FROM things WHERE name = $1")
            .bind("none")
            .fetch_one(&db.pool)
            .await
            .expect("select nulls");
    assert_eq!((name.as_str(), size, data), ("none", None, None));
    let count: i64 = query_scalar("SELECT COUNT(*) FROM things")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(count, 2);
}

/// A statement with many parameters (as an `IN` list has; their argument
/// order is remembered per statement text), named out of order and more
/// than once, binds each to its argument, the first time and again.
async fn many_parameters(db: &Database) {
    // `$40, $39 … $1`, then `$1` and `$40` once more.
    let n = 40;
    let list: Vec<String> = (1..=n).rev().map(|i| format!("${i}")).collect();
    let sql = format!("SELECT {}, $1 + 1000, $40 + 1000", list.join(", "));
    for round in 0..3_i64 {
        let mut statement = query(sqlx::AssertSqlSafe(sql.clone()));
        for i in 1..=n {
            statement = statement.bind(i64::from(i) * 10 + round);
        }
        let row = statement.fetch_one(&db.pool).await.expect("select");
        for (column, i) in (1..=n).rev().enumerate() {
            assert_eq!(
                row.try_get::<i64, _>(column).expect("column"),
                i64::from(i) * 10 + round
            );
        }
        assert_eq!(row.try_get::<i64, _>(40).expect("$1 again"), 1010 + round);
        assert_eq!(row.try_get::<i64, _>(41).expect("$40 again"), 1400 + round);
    }
    // Too few arguments for the statement is an error, not a panic.
    let mut short = query(sqlx::AssertSqlSafe(sql));
    for i in 1..n {
        short = short.bind(i64::from(i));
    }
    assert!(short.fetch_one(&db.pool).await.is_err());
}

/// Reading a column that is not there, or as the wrong type, is an
/// error, never a panic; so is a missing row or a missing argument.
async fn misreads_are_errors(db: &Database) {
    query("INSERT INTO things (name, size) VALUES ('a', 1)")
        .execute(&db.pool)
        .await
        .expect("insert");
    let row = query("SELECT name, size FROM things")
        .fetch_one(&db.pool)
        .await
        .expect("select");
    assert!(matches!(
        row.try_get::<String, _>("nothing"),
        Err(sqlx::Error::ColumnNotFound(_))
    ));
    assert!(matches!(
        row.try_get::<String, _>(5),
        Err(sqlx::Error::ColumnIndexOutOfBounds { .. })
    ));
    assert!(row.try_get::<i64, _>("name").is_err());
    assert!(matches!(
        query("SELECT name FROM things WHERE name = 'b'")
            .fetch_one(&db.pool)
            .await,
        Err(sqlx::Error::RowNotFound)
    ));
    assert!(
        query("SELECT name FROM things WHERE name = $1 AND size = $2")
            .bind("a")
            .fetch_all(&db.pool)
            .await
            .is_err()
    );
    let taken = query("INSERT INTO things (name) VALUES ('a')")
        .execute(&db.pool)
        .await
        .expect_err("taken");
    match &taken {
        sqlx::Error::Database(error) => assert!(error.is_unique_violation(), "{taken}"),
        other => panic!("not a database error: {other}"),
    }
    assert!(!refuses_the_data(&taken));
    let null = query("INSERT INTO things (name) VALUES ($1)")
        .bind(None::<String>)
        .execute(&db.pool)
        .await
        .expect_err("not null");
    assert!(refuses_the_data(&null), "{null}");
}

/// A transaction's writes land at commit, vanish at rollback or when it
/// is dropped, and the connection goes back to the pool fit for use.
async fn transactions(db: &Database) {
    let mut tx = db.pool.begin().await.expect("begin");
    let done = query("INSERT INTO things (name) VALUES ('kept')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    assert_eq!(done.rows_affected(), 1);
    tx.commit().await.expect("commit");
    let mut tx = db.pool.begin().await.expect("begin");
    query("INSERT INTO things (name) VALUES ('rolled back')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    tx.rollback().await.expect("rollback");
    {
        let mut tx = db.pool.begin().await.expect("begin");
        query("INSERT INTO things (name) VALUES ('dropped')")
            .execute(&mut *tx)
            .await
            .expect("insert");
    }
    // A failed statement in a transaction leaves the rest to the caller.
    let mut tx = db.pool.begin().await.expect("begin");
    query("INSERT INTO things (name) VALUES ('kept')")
        .execute(&mut *tx)
        .await
        .expect_err("taken");
    drop(tx);
    let names: Vec<String> = query_scalar("SELECT name FROM things ORDER BY name")
        .fetch_all(&db.pool)
        .await
        .expect("names");
    assert_eq!(names, ["kept"]);
    let updated = query("UPDATE things SET size = 1")
        .execute(&db.pool)
        .await
        .expect("update");
    assert_eq!(updated.rows_affected(), 1);
}

macro_rules! both_engines {
    ($($body:ident),*) => {$(
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tempdir");
                super::$body(&super::sqlite(&dir).await).await;
            }

            #[tokio::test]
            async fn sqlite_on_one_thread() {
                let dir = tempfile::tempdir().expect("tempdir");
                super::$body(&super::sqlite(&dir).await).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$body(&super::postgres(stringify!($body)).await).await;
            }
        }
    )*};
}

both_engines!(
    parameters_and_values,
    many_parameters,
    misreads_are_errors,
    transactions
);

/// Writers take turns without SQLite's busy waits: many tasks, each
/// reading then writing in its own transaction, all land; a reader is
/// never held up by a transaction that holds the write turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writers_take_turns_and_readers_do_not_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sqlite(&dir).await;
    let mut tasks = Vec::new();
    for task in 0..8 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let mut tx = pool.begin().await.expect("begin");
                query("INSERT INTO things (name, size) VALUES ($1, $2)")
                    .bind(format!("{task}-{i}"))
                    .bind(i64::from(i))
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
                tokio::task::yield_now().await;
                tx.commit().await.expect("commit");
            }
        }));
    }
    let mut holder = db.pool.begin().await.expect("begin");
    query("INSERT INTO things (name) VALUES ('held')")
        .execute(&mut *holder)
        .await
        .expect("take the write turn");
    let seen: i64 = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        query_scalar("SELECT COUNT(*) FROM things WHERE name = 'held'").fetch_one(&db.pool),
    )
    .await
    .expect("a reader does not wait for a writer")
    .expect("count");
    assert_eq!(seen, 0, "uncommitted writes are not seen");
    holder.commit().await.expect("commit");
    for task in tasks {
        task.await.expect("writer");
    }
    let count: i64 = query_scalar("SELECT COUNT(*) FROM things")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(count, 8 * 25 + 1);
}

/// Commits leave the write-ahead log to the checkpointer thread: once the
/// log passes 1 000 pages its pages reach the database file soon after,
/// with nothing lost, and writers go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_log_is_checkpointed_by_its_own_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sqlite(&dir).await;
    let file = dir.path().join("test.db");
    let before = std::fs::metadata(&file).expect("file").len();
    let blob = vec![7u8; 4000];
    for batch in 0..30 {
        let mut tx = db.pool.begin().await.expect("begin");
        for row in 0..40 {
            query("INSERT INTO things (name, data) VALUES ($1, $2)")
                .bind(format!("{batch}-{row}"))
                .bind(blob.clone())
                .execute(&mut *tx)
                .await
                .expect("insert");
        }
        tx.commit().await.expect("commit");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&file).expect("file").len() < before + 4_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the log was not copied back: {} bytes",
            std::fs::metadata(&file).expect("file").len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (count, bytes): (i64, i64) = {
        let row = query("SELECT COUNT(*), SUM(LENGTH(data)) FROM things")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        (row.try_get(0).expect("count"), row.try_get(1).expect("sum"))
    };
    assert_eq!((count, bytes), (1200, 1200 * 4000));
    let PoolInner::Sqlite(pool) = &db.pool.0 else {
        panic!("an SQLite pool")
    };
    let checkpointer = pool.checkpointer.as_ref().expect("a checkpointer");
    assert!(checkpointer.by_thread.load(Ordering::Relaxed) >= 1);
    assert_eq!(checkpointer.by_writers.load(Ordering::Relaxed), 0);
    db.pool.close().await;
}

/// The URL forms the configuration accepts, and the ones it refuses.
#[test]
fn sqlite_urls() {
    let options = SqliteOptions::from_url("sqlite:///data/x.db?mode=rwc").expect("url");
    assert_eq!(options.path, std::path::Path::new("/data/x.db"));
    assert!(options.create && !options.read_only);
    let options = SqliteOptions::from_url("sqlite:x.db").expect("url");
    assert_eq!(options.path, std::path::Path::new("x.db"));
    assert!(!options.create);
    assert!(
        SqliteOptions::from_url("sqlite:x.db?mode=ro")
            .expect("url")
            .read_only
    );
    assert!(SqliteOptions::from_url("sqlite:x.db?journal=off").is_err());
    assert!(SqliteOptions::from_url("postgres://x").is_err());
}

/// An in-memory database is one database for every connection of its pool.
#[tokio::test]
async fn sqlite_in_memory_is_shared_by_the_pool() {
    let mut options = SqliteOptions::from_url("sqlite::memory:").expect("url");
    options.max_connections = 2;
    let pool = Pool::sqlite(options).await.expect("open");
    raw_sql("CREATE TABLE t (x BIGINT)")
        .execute(&pool)
        .await
        .expect("create");
    let mut first = pool.acquire().await.expect("first");
    query("INSERT INTO t VALUES (1)")
        .execute(&mut first)
        .await
        .expect("insert");
    let mut second = pool.acquire().await.expect("second");
    let x: i64 = query_scalar("SELECT x FROM t")
        .fetch_one(&mut second)
        .await
        .expect("seen by another connection");
    assert_eq!(x, 1);
}
