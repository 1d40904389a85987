//! matrix-rust-sdk (matrix-sdk 0.18) as the client: it discovers simplified
//! sliding sync from `/versions`, logs in, and drives a sliding sync
//! connection with a list and every extension; the test asserts what the
//! SDK's own room state shows (membership, name, messages, typing,
//! receipts, tags, list counts).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ganglion_integration_tests::client::{Client, encode};
use ganglion_integration_tests::process::Monolith;
use matrix_sdk::config::RequestConfig;
use matrix_sdk::ruma::events::StateEventType;
use matrix_sdk::ruma::events::receipt::ReceiptThread;
use matrix_sdk::ruma::events::receipt::ReceiptType;
use matrix_sdk::ruma::events::room::message::OriginalSyncRoomMessageEvent;
use matrix_sdk::ruma::events::tag::{TagInfo, TagName};
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId};
use matrix_sdk::sliding_sync::{SlidingSyncList, SlidingSyncMode, Version, VersionBuilder};
use matrix_sdk::{Room, RoomState};
use reqwest::Method;
use serde_json::json;

/// Polls `check` until it holds, or fails the test with `what`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the SDK never showed: {what}");
}

#[tokio::test]
async fn matrix_sdk_drives_simplified_sliding_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let bob = Client::register(&server.base_url, "sdk_bob", "pw-bob-sdk").await;
    let alice_http = Client::register(&server.base_url, "sdk_alice", "pw-alice-sdk").await;
    let room_id = bob
        .create_room(json!({"name": "sdk room", "invite": [alice_http.user_id]}))
        .await;
    let hello = bob.send_text(&room_id, "h1", "hello from bob").await;
    assert_eq!(hello.status, 200);

    // The SDK finds sliding sync in /versions and logs in with a password.
    let client = matrix_sdk::Client::builder()
        .homeserver_url(&server.base_url)
        .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
        .request_config(RequestConfig::new().disable_retry())
        .build()
        .await
        .expect("SDK client");
    assert!(matches!(client.sliding_sync_version(), Version::Native));
    client
        .matrix_auth()
        .login_username("sdk_alice", "pw-alice-sdk")
        .initial_device_display_name("sdk test")
        .send()
        .await
        .expect("SDK login");

    let messages: Arc<Mutex<Vec<String>>> = Arc::default();
    client.add_event_handler({
        let messages = messages.clone();
        move |event: OriginalSyncRoomMessageEvent| {
            let messages = messages.clone();
            async move {
                messages
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(event.content.body().to_owned());
            }
        }
    });
    let seen = |text: &'static str| {
        let messages = messages.clone();
        move || {
            let messages = messages.clone();
            async move {
                messages
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .any(|m| m == text)
            }
        }
    };

    let sliding = client
        .sliding_sync("ganglion")
        .expect("sliding sync builder")
        .add_list(
            SlidingSyncList::builder("all")
                .sync_mode(SlidingSyncMode::new_selective().add_range(0..=19))
                .timeline_limit(10)
                .required_state(vec![
                    (StateEventType::RoomName, String::new()),
                    (StateEventType::RoomCreate, String::new()),
                    (StateEventType::RoomMember, "$LAZY".to_owned()),
                    (StateEventType::RoomMember, "$ME".to_owned()),
                ]),
        )
        .with_all_extensions()
        .poll_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("sliding sync");
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let driver = {
        let sliding = sliding.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            let stream = sliding.sync();
            futures::pin_mut!(stream);
            while let Some(update) = stream.next().await {
                if let Err(error) = update {
                    errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(error.to_string());
                }
            }
        })
    };
    let room_id: OwnedRoomId = room_id.as_str().try_into().expect("room ID");
    let room = |client: &matrix_sdk::Client| client.get_room(&room_id);
    let bob_id: OwnedUserId = bob.user_id.as_str().try_into().expect("user ID");

    // The invite shows, with the room's name from its stripped state.
    eventually("the invite", || async {
        room(&client).is_some_and(|r| r.state() == RoomState::Invited)
    })
    .await;
    let count = sliding
        .on_list("all", |list| {
            std::future::ready(list.maximum_number_of_rooms())
        })
        .await;
    assert_eq!(count.flatten(), Some(1), "the list counts the invite");

    // Joining through the SDK: the room comes whole, with bob's message.
    client.join_room_by_id(&room_id).await.expect("join");
    eventually("joined, named, with bob's message", || async {
        let joined = room(&client).is_some_and(|r| {
            r.state() == RoomState::Joined && r.name().as_deref() == Some("sdk room")
        });
        joined && seen("hello from bob")().await
    })
    .await;
    let second = bob.send_text(room_id.as_str(), "h2", "second").await;
    let second_id = second.body["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    eventually("bob's second message, live", seen("second")).await;

    // Typing from bob reaches the SDK's typing subscription.
    let joined: Room = room(&client).expect("room");
    let (_guard, mut typing) = joined.subscribe_to_typing_notifications();
    let reply = bob
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                encode(room_id.as_str()),
                encode(&bob.user_id)
            ),
            Some(json!({"typing": true, "timeout": 30000})),
        )
        .await;
    assert_eq!(reply.status, 200);
    let typers = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match typing.recv().await {
                Ok(users) if !users.is_empty() => return users,
                Ok(_) => continue,
                Err(e) => panic!("typing subscription: {e}"),
            }
        }
    })
    .await
    .expect("typing shown");
    assert_eq!(typers, vec![bob_id.clone()]);

    // Bob's read receipt lands in the SDK's receipt store.
    let reply = bob
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                encode(room_id.as_str()),
                encode(&second_id)
            ),
            Some(json!({})),
        )
        .await;
    assert_eq!(reply.status, 200);
    eventually("bob's read receipt", || async {
        joined
            .load_user_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, &bob_id)
            .await
            .ok()
            .flatten()
            .is_some_and(|(event, _)| event.as_str() == second_id)
    })
    .await;

    // A tag set through the SDK comes back as room account data.
    joined
        .set_tag(TagName::Favorite, TagInfo::new())
        .await
        .expect("set tag");
    eventually("the favourite tag", || async {
        joined
            .tags()
            .await
            .ok()
            .flatten()
            .is_some_and(|tags| tags.contains_key(&TagName::Favorite))
    })
    .await;

    // Leaving: the SDK moves the room to left.
    joined.leave().await.expect("leave");
    eventually("the room left", || async {
        room(&client).is_some_and(|r| r.state() == RoomState::Left)
    })
    .await;

    driver.abort();
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(errors.is_empty(), "sliding sync errors: {errors:?}");
}
