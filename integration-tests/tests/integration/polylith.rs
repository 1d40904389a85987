//! The polylith: every service in its own process, gRPC between them, Kafka
//! (tansu) as the log, PostgreSQL per service, clients through the gateway.

use ganglion_integration_tests::client::message_bodies;
use ganglion_integration_tests::process::{POLYLITH_SERVICES, Polylith};

use crate::conversation::{first_conversation, history_forwards, history_via_prev_batch};

async fn start(dir: &std::path::Path, name: &str) -> Polylith {
    let mut urls = Vec::new();
    for service in POLYLITH_SERVICES {
        urls.push((
            service,
            ganglion_base::testing::scratch_postgres(&format!("poly_{name}_{service}")).await,
        ));
    }
    Polylith::start(dir, &urls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polylith_conversation_and_syncapi_kill9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path(), "conv").await;
    let (alice, bob, room_id) = first_conversation(&server.base_url, "").await;
    let mut expected: Vec<String> = (0..3)
        .flat_map(|r| [format!("alice says {r}"), format!("bob says {r}")])
        .collect();
    assert_eq!(history_via_prev_batch(&bob, &room_id).await, expected);

    // Kill the syncapi mid-conversation; everything acknowledged survives once.
    for i in 0..10 {
        let text = format!("before kill {i}");
        assert_eq!(
            alice
                .send_text(&room_id, &format!("k{i}"), &text)
                .await
                .status,
            200
        );
        expected.push(text);
    }
    server.kill9_and_restart("syncapi").await;
    let text = "after kill".to_owned();
    let reply = bob.send_text(&room_id, "after", &text).await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", server.logs());
    expected.push(text);
    let body = alice.sync(None, 0, 100).await;
    let timeline = &body["rooms"]["join"][&room_id]["timeline"]["events"];
    assert_eq!(message_bodies(timeline), expected, "{}", server.logs());
    assert_eq!(history_forwards(&bob, &room_id).await, expected);
}
