//! Test support shared by every service's storage tests: a scratch
//! PostgreSQL database per test. CI provides PostgreSQL; a test that needs it
//! fails loudly when it is missing rather than skipping.

use sqlx::{AnyPool, AssertSqlSafe};

/// The server storage tests use (`GANGLION_TEST_POSTGRES`, default local).
pub fn postgres_server() -> String {
    std::env::var("GANGLION_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Creates an empty database `ganglion_t_<name>_<pid>_<n>` and returns its
/// URL. The first call of a process drops the scratch databases left by
/// processes that have exited, so repeated test runs do not fill the disk.
pub async fn scratch_postgres(name: &str) -> String {
    scratch_postgres_on(&postgres_server(), name).await
}

/// As [`scratch_postgres`], on `server` (`postgres://user@host:port`).
pub async fn scratch_postgres_on(server: &str, name: &str) -> String {
    sqlx::any::install_default_drivers();
    let admin = AnyPool::connect(&format!("{server}/postgres"))
        .await
        .expect("PostgreSQL must be reachable (the test command starts it)");
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT.get_or_init(|| drop_left_behind(&admin)).await;
    // Numbered within the process too: two tests asking for the same name
    // must not drop each other's database.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let db: String = format!("ganglion_t_{name}_{}_{n}", std::process::id())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    create_afresh(&admin, &db).await;
    admin.close().await;
    format!("{server}/{db}")
}

/// Drops database `db` if it exists and creates it empty.
async fn create_afresh(admin: &AnyPool, db: &str) {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(admin)
    .await
    .expect("drop scratch database");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(admin)
        .await
        .expect("create scratch database");
}

/// Drops every scratch database whose process (the `<pid>` in its name)
/// no longer runs. A database still in use by a live process is left
/// alone; one that cannot be dropped is left for the next sweep.
async fn drop_left_behind(admin: &AnyPool) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'ganglion_t_%'",
    )
    .fetch_all(admin)
    .await
    .unwrap_or_default();
    for name in names {
        if scratch_owner(&name).is_some_and(|pid| !process_runs(pid)) {
            let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(admin)
            .await;
        }
    }
}

/// The process a scratch database `ganglion_t_<name>_<pid>_<n>` was made by.
fn scratch_owner(database: &str) -> Option<u32> {
    let mut parts = database.rsplit('_');
    let n = parts.next()?;
    let pid = parts.next()?;
    if !database.starts_with("ganglion_t_") || n.parse::<u64>().is_err() {
        return None;
    }
    pid.parse().ok()
}

fn process_runs(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_database_names_its_process() {
        assert_eq!(
            scratch_owner("ganglion_t_poly_writers_syncapi2_32252_7"),
            Some(32252)
        );
        assert_eq!(scratch_owner("ganglion_t_x_1_0"), Some(1));
        assert_eq!(scratch_owner("ganglion_t_x_y_0"), None);
        assert_eq!(scratch_owner("ganglion_t_x_1_y"), None);
        assert_eq!(scratch_owner("other_1_0"), None);
    }

    #[tokio::test]
    async fn databases_of_exited_processes_are_dropped_and_live_ones_kept() {
        sqlx::any::install_default_drivers();
        let admin = AnyPool::connect(&format!("{}/postgres", postgres_server()))
            .await
            .expect("PostgreSQL must be reachable (the test command starts it)");
        // No process has this ID (above the kernel's largest, 2^22).
        let gone = "ganglion_t_sweep_99999999_0";
        let mine = format!("ganglion_t_sweep_{}_9999", std::process::id());
        for db in [gone, mine.as_str()] {
            create_afresh(&admin, db).await;
        }
        drop_left_behind(&admin).await;
        let left: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'ganglion_t_sweep_%'",
        )
        .fetch_all(&admin)
        .await
        .expect("databases");
        assert_eq!(left, std::slice::from_ref(&mine));
        sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE {mine}")))
            .execute(&admin)
            .await
            .expect("drop");
    }
}
