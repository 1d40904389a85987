//! The real Synapse the federation tests run against: the harness itself.

use ganglion_integration_tests::client::encode;
use ganglion_integration_tests::process::rss_kib;
use ganglion_integration_tests::synapse::Synapse;
use serde_json::json;

#[tokio::test]
async fn synapse_starts_registers_creates_a_room_and_serves_its_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let synapse = Synapse::start(dir.path()).await;
    let rss = synapse.pid().and_then(rss_kib).unwrap_or_default();
    println!(
        "synapse {} answered after {:?}, RSS {} MiB",
        synapse.server_name,
        synapse.startup,
        rss / 1024
    );

    let alice = synapse.register("alice", "pw").await;
    assert_eq!(
        alice.user_id,
        format!("@alice:{}", synapse.server_name),
        "{}",
        synapse.logs()
    );
    let room_id = alice
        .create_room(json!({"name": "harness", "preset": "public_chat"}))
        .await;
    assert!(room_id.starts_with('!'), "room id {room_id}");
    let state = alice
        .call(
            reqwest::Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                encode(&room_id)
            ),
            None,
        )
        .await;
    assert_eq!(state.status, 200, "{state:?}\n{}", synapse.logs());
    assert_eq!(state.body["name"], "harness");

    // The key API over the same TLS listener, as a federating server sees it.
    let keys: serde_json::Value = synapse
        .http()
        .get(format!("{}/_matrix/key/v2/server", synapse.base_url))
        .send()
        .await
        .expect("key request")
        .error_for_status()
        .expect("key status")
        .json()
        .await
        .expect("key json");
    assert_eq!(
        keys["server_name"],
        synapse.server_name,
        "{keys}\n{}",
        synapse.logs()
    );
    assert!(
        keys["verify_keys"]["ed25519:a_test"]["key"].is_string(),
        "{keys}"
    );
    assert!(keys["signatures"][&synapse.server_name]["ed25519:a_test"].is_string());
    let rss_after = synapse.pid().and_then(rss_kib).unwrap_or_default();
    println!("synapse RSS after the scenario: {} MiB", rss_after / 1024);
}
