//! The transaction table against both database engines.

use super::{MIGRATIONS, Storage};

const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";

async fn open(database_url: Option<String>) -> (Storage, tempfile::TempDir) {
    let (db, dir) =
        ganglion_base::testing::open_scratch("clientapi", MIGRATIONS, database_url).await;
    (Storage { db }, dir)
}

async fn transactions(storage: Storage) {
    assert_eq!(
        storage
            .transaction_event(ALICE, "PHONE", "txn1")
            .await
            .expect("lookup"),
        None
    );
    storage
        .record_transaction(ALICE, "PHONE", "txn1", "$first", 1_000)
        .await
        .expect("record");
    assert_eq!(
        storage
            .transaction_event(ALICE, "PHONE", "txn1")
            .await
            .expect("lookup")
            .as_deref(),
        Some("$first")
    );

    // A racing retry that sent a second event does not replace the first.
    storage
        .record_transaction(ALICE, "PHONE", "txn1", "$second", 2_000)
        .await
        .expect("record again");
    assert_eq!(
        storage
            .transaction_event(ALICE, "PHONE", "txn1")
            .await
            .expect("lookup")
            .as_deref(),
        Some("$first")
    );

    // Transaction IDs are scoped to one device of one user.
    for (user, device, txn) in [
        (ALICE, "LAPTOP", "txn1"),
        (BOB, "PHONE", "txn1"),
        (ALICE, "PHONE", "txn2"),
    ] {
        assert_eq!(
            storage
                .transaction_event(user, device, txn)
                .await
                .expect("lookup"),
            None,
            "{user} {device} {txn}"
        );
    }
    storage
        .record_transaction(ALICE, "LAPTOP", "txn1", "$laptop", 3_000)
        .await
        .expect("record on another device");
    storage
        .record_transaction(BOB, "PHONE", "txn1", "$bob", 3_000)
        .await
        .expect("record for another user");
    for (user, device, expected) in [
        (ALICE, "PHONE", "$first"),
        (ALICE, "LAPTOP", "$laptop"),
        (BOB, "PHONE", "$bob"),
    ] {
        assert_eq!(
            storage
                .transaction_event(user, device, "txn1")
                .await
                .expect("lookup")
                .as_deref(),
            Some(expected),
            "{user} {device}"
        );
    }
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
