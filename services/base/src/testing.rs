//! Test support shared by every service's storage tests: a scratch
//! PostgreSQL database per test. CI provides PostgreSQL; a test that needs it
//! fails loudly when it is missing rather than skipping.

use sqlx::{AnyPool, AssertSqlSafe};

/// The server storage tests use (`GANGLION_TEST_POSTGRES`, default local).
pub fn postgres_server() -> String {
    std::env::var("GANGLION_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Creates an empty database `ganglion_t_<name>_<pid>_<n>` and returns its URL.
pub async fn scratch_postgres(name: &str) -> String {
    scratch_postgres_on(&postgres_server(), name).await
}

/// As [`scratch_postgres`], on `server` (`postgres://user@host:port`).
pub async fn scratch_postgres_on(server: &str, name: &str) -> String {
    sqlx::any::install_default_drivers();
    let admin = AnyPool::connect(&format!("{server}/postgres"))
        .await
        .expect("PostgreSQL must be reachable (the test command starts it)");
    // Numbered within the process too: two tests asking for the same name
    // must not drop each other's database.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let db: String = format!("ganglion_t_{name}_{}_{n}", std::process::id())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .expect("drop scratch database");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await
        .expect("create scratch database");
    admin.close().await;
    format!("{server}/{db}")
}

/// A fresh database for a storage test of `service`: SQLite in a new
/// temporary directory when `database_url` is `None`, else that URL (from
/// [`scratch_postgres`]). Keep the directory alive as long as the database.
pub async fn open_scratch(
    service: &str,
    migrations: &[crate::Migration],
    database_url: Option<String>,
) -> (crate::Database, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = crate::Database::open(
        service,
        database_url.as_deref(),
        dir.path(),
        None,
        migrations,
    )
    .await
    .expect("open the test database");
    (db, dir)
}

/// The configuration of a service under test: its data in a new temporary
/// directory, and its database there (SQLite) or at `database_url`. Keep
/// the directory alive as long as the service.
pub fn service_config(
    service: &str,
    database_url: Option<String>,
) -> (crate::Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = crate::Config {
        data_dir: dir.path().to_owned(),
        ..crate::Config::default()
    };
    if let Some(url) = database_url {
        config
            .services
            .entry(service.into())
            .or_default()
            .database_url = Some(url);
    }
    (config, dir)
}
