//! The federationsender's storage against both database engines.

use crate::storage::{MemberChange, Storage};

fn join(user: &str) -> MemberChange {
    MemberChange {
        user_id: user.into(),
        joined: true,
    }
}

fn leave(user: &str) -> MemberChange {
    MemberChange {
        user_id: user.into(),
        joined: false,
    }
}

async fn queues_follow_membership(database_url: Option<String>) {
    let (db, _dir) = ganglion_base::testing::open_scratch(
        "federationsender",
        crate::storage::MIGRATIONS,
        database_url,
    )
    .await;
    let storage = Storage { db };
    let own = "ours.example";
    // Our user creates the room: nobody else to send to.
    let sent = storage
        .apply_event(
            "!r",
            &[join("@a:ours.example")],
            Some(("$1", "{\"n\":1}")),
            None,
            own,
        )
        .await
        .expect("apply");
    assert!(sent.is_empty());
    // A remote join (not ours to send), then our message goes to them.
    storage
        .apply_event("!r", &[join("@b:them.example")], None, None, own)
        .await
        .expect("apply");
    let sent = storage
        .apply_event("!r", &[], Some(("$2", "{\"n\":2}")), None, own)
        .await
        .expect("apply");
    assert_eq!(sent, ["them.example"]);
    // Redelivered: queued once.
    storage
        .apply_event("!r", &[], Some(("$2", "{\"n\":2}")), None, own)
        .await
        .expect("apply");
    // An invite reaches the invitee's server though it is not in the room.
    let sent = storage
        .apply_event(
            "!r",
            &[leave("@c:third.example")],
            Some(("$3", "{\"n\":3}")),
            Some("third.example"),
            own,
        )
        .await
        .expect("apply");
    assert_eq!(sent, ["them.example", "third.example"]);
    // A kick reaches the kicked user's server, then nothing more does.
    let sent = storage
        .apply_event(
            "!r",
            &[leave("@b:them.example")],
            Some(("$4", "{\"n\":4}")),
            Some("them.example"),
            own,
        )
        .await
        .expect("apply");
    assert_eq!(sent, ["them.example"]);
    let sent = storage
        .apply_event("!r", &[], Some(("$5", "{\"n\":5}")), None, own)
        .await
        .expect("apply");
    assert!(sent.is_empty());

    let queued = storage.queued("them.example", 50).await.expect("queued");
    let bodies: Vec<&str> = queued.iter().map(|q| q.json.as_str()).collect();
    assert_eq!(bodies, ["{\"n\":2}", "{\"n\":3}", "{\"n\":4}"]);
    assert_eq!(
        storage
            .unleased_destinations_with_work(0)
            .await
            .expect("work")
            .len(),
        2
    );
    // Leases: one replica at a time per destination; renewed by its
    // holder, taken over once expired, free again once released. A leased
    // destination is not swept.
    assert!(
        storage
            .claim_lease("them.example", "a", 1_000, 61_000)
            .await
            .expect("claim")
    );
    assert!(
        !storage
            .claim_lease("them.example", "b", 2_000, 62_000)
            .await
            .expect("claim")
    );
    assert!(
        storage
            .claim_lease("them.example", "a", 30_000, 90_000)
            .await
            .expect("renew")
    );
    assert_eq!(
        storage
            .unleased_destinations_with_work(40_000)
            .await
            .expect("work")
            .len(),
        1,
        "them.example is held"
    );
    assert!(
        !storage
            .claim_lease("them.example", "b", 89_000, 149_000)
            .await
            .expect("claim")
    );
    assert!(
        storage
            .claim_lease("them.example", "b", 91_000, 151_000)
            .await
            .expect("expired")
    );
    assert!(
        !storage
            .claim_lease("them.example", "a", 92_000, 152_000)
            .await
            .expect("lost")
    );
    storage
        .release_lease("them.example", "a")
        .await
        .expect("not held: nothing");
    assert!(
        !storage
            .claim_lease("them.example", "a", 93_000, 153_000)
            .await
            .expect("claim")
    );
    storage
        .release_lease("them.example", "b")
        .await
        .expect("release");
    assert!(
        storage
            .claim_lease("them.example", "a", 94_000, 154_000)
            .await
            .expect("free")
    );
    storage
        .release_lease("them.example", "a")
        .await
        .expect("release");
    // Failures count up; delivery clears them and the queue.
    let until = storage
        .failed("them.example", 100, 123)
        .await
        .expect("failed");
    assert_eq!(until, 1);
    assert_eq!(
        storage
            .failed("them.example", 100, 456)
            .await
            .expect("failed"),
        2
    );
    assert_eq!(
        storage.retry_state("them.example").await.expect("state"),
        (2, 456)
    );
    storage
        .delivered("them.example", Some(queued[1].id), None)
        .await
        .expect("delivered");
    let left = storage.queued("them.example", 50).await.expect("queued");
    assert_eq!(left.len(), 1);
    assert_eq!(
        storage.retry_state("them.example").await.expect("state"),
        (0, 0)
    );

    // A destination failing since long ago has its queue dropped; one
    // failing since recently keeps it.
    storage
        .failed("them.example", 1_000, 2_000)
        .await
        .expect("failed");
    assert_eq!(
        storage.prune_dead_destinations(1_000).await.expect("prune"),
        0
    );
    assert_eq!(
        storage.prune_dead_destinations(1_001).await.expect("prune"),
        1
    );
    assert!(
        storage
            .queued("them.example", 50)
            .await
            .expect("queued")
            .is_empty()
    );
    assert_eq!(
        storage.retry_state("them.example").await.expect("state").0,
        1,
        "still tried"
    );
}

#[tokio::test]
async fn sqlite_queues_follow_membership() {
    queues_follow_membership(None).await;
}

#[tokio::test]
async fn postgres_queues_follow_membership() {
    queues_follow_membership(Some(
        ganglion_base::testing::scratch_postgres("federationsender").await,
    ))
    .await;
}

#[test]
fn to_device_messages_of_local_senders_go_to_the_recipients_server() {
    use crate::consumers::edus::to_device_edu;
    use ganglion_api::proto::topics as topic_pb;
    let message = |sender: &str, recipient: &str| topic_pb::ToDeviceEdu {
        version: 1,
        sender: sender.into(),
        recipient: recipient.into(),
        event_type: "m.room.encrypted".into(),
        message_id: "f".repeat(64),
        messages: vec![
            topic_pb::DeviceMessage {
                device_id: "*".into(),
                content_json: br#"{"a":1}"#.to_vec(),
            },
            topic_pb::DeviceMessage {
                device_id: "D".into(),
                content_json: br#"{"b":2}"#.to_vec(),
            },
        ],
    };
    let (destination, edu) =
        to_device_edu("ours", &message("@s:ours", "@r:theirs")).expect("an EDU");
    assert_eq!(destination, "theirs");
    assert_eq!(edu["edu_type"], "m.direct_to_device");
    let content = &edu["content"];
    assert_eq!(content["sender"], "@s:ours");
    assert_eq!(content["type"], "m.room.encrypted");
    assert_eq!(content["messages"]["@r:theirs"]["*"]["a"], 1);
    assert_eq!(content["messages"]["@r:theirs"]["D"]["b"], 2);
    let id = content["message_id"].as_str().expect("message_id");
    assert_eq!(id.chars().count(), 32, "the spec's maximum");
    // Another recipient of the same send: another ID.
    let (_, other) = to_device_edu("ours", &message("@s:ours", "@q:theirs")).expect("an EDU");
    assert_ne!(other["content"]["message_id"], id);
    // Not ours to send: a remote sender, or a local recipient.
    assert!(to_device_edu("ours", &message("@s:theirs", "@r:other")).is_none());
    assert!(to_device_edu("ours", &message("@s:ours", "@r:ours")).is_none());
}
