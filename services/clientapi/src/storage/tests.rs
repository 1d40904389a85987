//! The transaction and User-Interactive Auth session tables against both
//! database engines.

use super::{MIGRATIONS, Storage};

const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";

async fn open(database_url: Option<String>) -> (Storage, tempfile::TempDir) {
    let (db, dir) =
        ganglion_base::testing::open_scratch("clientapi", MIGRATIONS, database_url).await;
    (Storage { db }, dir)
}

async fn transactions(storage: Storage) {
    use super::Claim;
    let claim = |user: &'static str, device: &'static str, txn: &'static str, now: i64| {
        let storage = storage.clone();
        async move {
            storage
                .claim_transaction(user, device, txn, now, now - 120_000)
                .await
                .expect("claim")
        }
    };
    // The first claims; a racing retry finds it pending, then sent.
    assert_eq!(claim(ALICE, "PHONE", "txn1", 1_000).await, Claim::Ours);
    assert_eq!(claim(ALICE, "PHONE", "txn1", 1_001).await, Claim::Pending);
    storage
        .complete_transaction(ALICE, "PHONE", "txn1", "$first")
        .await
        .expect("complete");
    assert_eq!(
        claim(ALICE, "PHONE", "txn1", 2_000).await,
        Claim::Sent("$first".into())
    );
    // A sent transaction is never released.
    storage
        .release_transaction(ALICE, "PHONE", "txn1")
        .await
        .expect("release");
    assert_eq!(
        claim(ALICE, "PHONE", "txn1", 2_000).await,
        Claim::Sent("$first".into())
    );

    // A failed send gives its claim back; a retry claims it again.
    assert_eq!(claim(ALICE, "PHONE", "txn2", 3_000).await, Claim::Ours);
    storage
        .release_transaction(ALICE, "PHONE", "txn2")
        .await
        .expect("release");
    assert_eq!(claim(ALICE, "PHONE", "txn2", 3_001).await, Claim::Ours);
    // A claim left by a request that died is taken over once stale.
    assert_eq!(claim(ALICE, "PHONE", "txn2", 3_002).await, Claim::Pending);
    assert_eq!(claim(ALICE, "PHONE", "txn2", 200_000).await, Claim::Ours);

    // Transaction IDs are scoped to one device of one user.
    for (user, device) in [(ALICE, "LAPTOP"), (BOB, "PHONE")] {
        assert_eq!(
            claim(user, device, "txn1", 4_000).await,
            Claim::Ours,
            "{user} {device}"
        );
    }

    // Pruning forgets the old ones only.
    let pruned = storage.prune_transactions(4_000).await.expect("prune");
    assert_eq!(pruned, 1, "alice's txn1 on her phone, claimed at 1 000");
    assert_eq!(claim(ALICE, "PHONE", "txn1", 5_000).await, Claim::Ours);
    assert_eq!(claim(BOB, "PHONE", "txn1", 5_000).await, Claim::Pending);
}

#[tokio::test]
async fn sqlite_transactions() {
    let (storage, _dir) = open(None).await;
    transactions(storage).await;
}

#[tokio::test]
async fn postgres_transactions() {
    let url = ganglion_base::testing::scratch_postgres("client_storage").await;
    let (storage, _dir) = open(Some(url)).await;
    transactions(storage).await;
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
