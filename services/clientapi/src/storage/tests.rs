//! The User-Interactive Auth session table against both database engines.

use super::{MIGRATIONS, Storage};

const ALICE: &str = "@alice:example.org";

async fn open(database_url: Option<String>) -> (Storage, tempfile::TempDir) {
    let (db, dir) =
        ganglion_base::testing::open_scratch("clientapi", MIGRATIONS, database_url).await;
    (Storage { db }, dir)
}

/// User-Interactive Auth sessions: kept as given, read back only while
/// young, marked with the user a registration made, pruned by age.
async fn uia_sessions(storage: Storage) {
    let session = super::UiaSession {
        method: "POST".into(),
        path: "/_matrix/client/v3/register".into(),
        user_id: String::new(),
        params: r#"{"username":"fay"}"#.into(),
        registered_user_id: None,
    };
    storage
        .insert_uia_session("s1", &session, 1_000)
        .await
        .expect("kept");
    assert_eq!(
        storage.uia_session("s1", 500).await.expect("read"),
        Some(session.clone())
    );
    assert_eq!(storage.uia_session("s1", 2_000).await.expect("read"), None);
    assert_eq!(storage.uia_session("s2", 0).await.expect("read"), None);
    storage
        .set_uia_registered("s1", ALICE)
        .await
        .expect("marked");
    assert_eq!(
        storage
            .uia_session("s1", 0)
            .await
            .expect("read")
            .and_then(|s| s.registered_user_id)
            .as_deref(),
        Some(ALICE)
    );
    assert!(
        storage
            .insert_uia_session("s1", &session, 1_500)
            .await
            .is_err(),
        "a session ID is given out once"
    );
    assert_eq!(storage.prune_uia_sessions(1_001).await.expect("pruned"), 1);
    assert_eq!(storage.uia_session("s1", 0).await.expect("read"), None);
}

#[tokio::test]
async fn sqlite_uia_sessions() {
    let (storage, _dir) = open(None).await;
    uia_sessions(storage).await;
}

#[tokio::test]
async fn postgres_uia_sessions() {
    let url = ganglion_base::testing::scratch_postgres("client_uia").await;
    let (storage, _dir) = open(Some(url)).await;
    uia_sessions(storage).await;
}
