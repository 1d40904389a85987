//! A remote server we control joins our room over real TLS and
//! signatures, then tries what a real one should not: a gap in the DAG
//! (filled with `get_missing_events`), forged signatures, events the auth
//! rules forbid, a transaction whose origin is not its signer, a replayed
//! transaction ID, an oversized transaction, talking in a room whose ACL
//! bans it. Each is refused with the spec's error, and nothing refused is
//! ever seen by our users.

use ganglion_integration_tests::client::{Client, encode, message_bodies};
use ganglion_integration_tests::fake_server::FakeServer;
use ganglion_integration_tests::process::Monolith;
use reqwest::Method;
use serde_json::{Value, json};

use crate::federation_rooms::until_message;

/// Long-polls `client`'s `/sync` from `since` until `user_id` is in its
/// `device_lists.changed`.
async fn until_device_list_change(
    client: &Client,
    mut since: String,
    user_id: &str,
    logs: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let sync = client.sync(Some(&since), 2_000, 1).await;
        let changed = sync["device_lists"]["changed"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if changed.contains(&json!(user_id)) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{sync}\n{}", logs());
        since = sync["next_batch"].as_str().unwrap_or_default().to_owned();
    }
}

/// Where a federating test monolith named `localhost:<port>` takes
/// federation requests.
fn federation_url(our_name: &str) -> String {
    format!(
        "https://127.0.0.1:{}",
        our_name
            .rsplit_once(':')
            .map(|(_, p)| p)
            .unwrap_or_default()
    )
}

/// The ID of the state event of type `kind` in a `send_join` answer.
fn state_event_id(joined: &Value, version: &str, kind: &str) -> String {
    joined["state"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["type"] == kind)
        .and_then(|e| {
            let object: ruma::canonical_json::CanonicalJsonObject =
                serde_json::from_value(e.clone()).ok()?;
            let rules = ruma::RoomVersionId::try_from(version).ok()?.rules()?;
            ruma::signatures::reference_hash(&object, &rules)
                .ok()
                .map(|h| format!("${h}"))
        })
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A message from `sender` after `prev` (depth `depth`), in `room_id`.
fn message(
    room_id: &str,
    sender: &str,
    prev: &str,
    auth: &[String],
    depth: i64,
    body: &str,
) -> Value {
    json!({
        "type": "m.room.message", "room_id": room_id, "sender": sender,
        "content": { "msgtype": "m.text", "body": body },
        "prev_events": [prev], "auth_events": auth, "depth": depth,
        "origin_server_ts": now_ms(),
    })
}

/// Mallory, of a fake server, joined (make_join, send_join) to a public
/// room Alice made on our monolith; what her events need to follow.
struct MalloryJoined {
    fake: FakeServer,
    ours: Monolith,
    our_name: String,
    base: String,
    alice: Client,
    room_id: String,
    mallory: String,
    version: String,
    join_id: String,
    /// What her events name as auth events: the create event (before room
    /// version 12, where it is implied), the power levels and her join.
    auth: Vec<String>,
    /// Her join's depth.
    depth: i64,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn mallory_joins() -> MalloryJoined {
    let fake_dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeServer::start(fake_dir.path()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ours, our_name) = crate::federation_queries::federating_monolith(dir.path()).await;
    let base = federation_url(&our_name);
    let alice = Client::register(&ours.base_url, "alice", "pw-alice-sec").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mallory = format!("@mallory:{}", fake.server_name);
    let (version, join_id, join, joined) =
        fake.join_room((&base, &our_name), &room_id, &mallory).await;
    assert!(
        joined["state"].as_array().is_some_and(|s| s.len() >= 5),
        "{joined}"
    );
    let state_id = |kind: &str| state_event_id(&joined, &version, kind);
    let mut auth = vec![state_id("m.room.power_levels"), join_id.clone()];
    if version != "12" {
        auth.insert(0, state_id("m.room.create"));
    }
    let depth = join["depth"].as_i64().unwrap_or(1);
    MalloryJoined {
        fake,
        ours,
        our_name,
        base,
        alice,
        room_id,
        mallory,
        version,
        join_id,
        auth,
        depth,
        _dirs: (fake_dir, dir),
    }
}

/// A transaction of `pdus` from the fake server to ours.
async fn send_transaction(
    fake: &FakeServer,
    (base, our_name): (&str, &str),
    txn: String,
    pdus: Vec<Value>,
) -> (u16, Value) {
    let body = json!({ "origin": fake.server_name, "origin_server_ts": now_ms(), "pdus": pdus });
    fake.request(
        base,
        our_name,
        Method::PUT,
        &format!("/_matrix/federation/v1/send/{txn}"),
        Some(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_server_fills_gaps_and_cannot_forge() {
    let MalloryJoined {
        fake,
        ours,
        our_name,
        base,
        alice,
        room_id,
        mallory,
        version,
        join_id,
        auth,
        depth,
        _dirs,
    } = mallory_joins().await;
    let logs = || ours.process.log_tail();
    let send =
        |txn: String, pdus: Vec<Value>| send_transaction(&fake, (&base, &our_name), txn, pdus);

    // A message, then three more of which only the last is sent: the
    // first two are fetched with get_missing_events.
    let (m0, pdu0) = fake.sign_event(
        &version,
        message(&room_id, &mallory, &join_id, &auth, depth + 1, "m0"),
    );
    let (status, answer) = send("t0".into(), vec![pdu0]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][&m0], json!({}), "{answer}");
    until_message(&alice, &room_id, "m0", logs).await;
    let (m1, _) = fake.sign_event(
        &version,
        message(&room_id, &mallory, &m0, &auth, depth + 2, "m1"),
    );
    let (m2, _) = fake.sign_event(
        &version,
        message(&room_id, &mallory, &m1, &auth, depth + 3, "m2"),
    );
    let (m3, pdu3) = fake.sign_event(
        &version,
        message(&room_id, &mallory, &m2, &auth, depth + 4, "m3"),
    );
    fake.set_missing(vec![m1, m2]);
    let (status, answer) = send("t1".into(), vec![pdu3]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][&m3], json!({}), "{answer}\n{}", logs());
    until_message(&alice, &room_id, "m3", logs).await;
    let history = alice.messages(&room_id, None, "b", 20).await;
    let bodies: Vec<String> = message_bodies(&history["chunk"])
        .into_iter()
        .rev()
        .collect();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3"], "{history}");

    // A forged signature: refused, never seen.
    let (_, mut forged) = fake.sign_event(
        &version,
        message(&room_id, &mallory, &m3, &auth, depth + 5, "forged"),
    );
    forged["content"]["body"] = json!("forged, changed after signing");
    forged["signatures"][&fake.server_name] =
        json!({ format!("ed25519:{}", "a_nokey"): "c2lnbmF0dXJl" });
    let (status, answer) = send("t2".into(), vec![forged]).await;
    assert_eq!(status, 200, "{answer}");
    let results: Vec<&Value> = answer["pdus"]
        .as_object()
        .map(|m| m.values().collect())
        .unwrap_or_default();
    assert!(results.iter().all(|r| r["error"].is_string()), "{answer}");

    // Raising her own power level breaks the auth rules: rejected.
    let (pl_id, power) = fake.sign_event(
        &version,
        json!({
            "type": "m.room.power_levels", "state_key": "", "room_id": room_id, "sender": mallory,
            "content": { "users": { mallory.clone(): 100 } },
            "prev_events": [m3], "auth_events": auth, "depth": depth + 5,
            "origin_server_ts": now_ms(),
        }),
    );
    let (status, answer) = send("t3".into(), vec![power]).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["pdus"][&pl_id]["error"].is_string(), "{answer}");
    let levels = alice
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                encode(&room_id)
            ),
            None,
        )
        .await;
    assert_eq!(levels.body["users"].get(&mallory), None, "{levels:?}");

    // A transaction ID again: answered as before, its new content ignored.
    let (r1, replay) = fake.sign_event(
        &version,
        message(&room_id, &mallory, &m3, &auth, depth + 5, "replayed"),
    );
    let (status, again) = send("t0".into(), vec![replay]).await;
    assert_eq!(status, 200, "{again}");
    assert!(again["pdus"].get(&r1).is_none(), "{again}");

    // The origin in the body must be the signer; at most 50 PDUs.
    let body = json!({ "origin": "someone.else", "origin_server_ts": now_ms(), "pdus": [] });
    let (status, answer) = fake
        .request(
            &base,
            &our_name,
            Method::PUT,
            "/_matrix/federation/v1/send/t4",
            Some(body),
        )
        .await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{answer}"
    );
    let many: Vec<Value> = (0..51)
        .map(|i| {
            message(
                &room_id,
                &mallory,
                &m3,
                &auth,
                depth + 5,
                &format!("flood {i}"),
            )
        })
        .collect();
    let (status, answer) = send("t5".into(), many).await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (413, Some("M_TOO_LARGE")),
        "{answer}"
    );

    // A request signed for another destination, or by a key it lacks.
    let path = format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        encode(&room_id),
        encode(&m3)
    );
    let elsewhere = fake.authorization("elsewhere.example", "GET", &path, None);
    let (status, _) = fake
        .request_with(&base, Method::GET, &path, None, &elsewhere)
        .await;
    assert_eq!(status, 401);
    let (status, state) = fake
        .request(&base, &our_name, Method::GET, &path, None)
        .await;
    assert_eq!(status, 200, "{state}");
    assert!(
        state["pdu_ids"]
            .as_array()
            .is_some_and(|ids| ids.len() >= 5),
        "{state}"
    );

    // Our users saw only what was allowed.
    let sync = alice.sync(None, 0, 50).await;
    let seen = message_bodies(&sync["rooms"]["join"][&room_id]["timeline"]["events"]);
    assert!(
        !seen
            .iter()
            .any(|b| b.contains("forged") || b == "replayed" || b.starts_with("flood")),
        "{seen:?}"
    );
    // One transaction fills a handful of gaps, not one per PDU: eight
    // PDUs after eight events we never saw cost at most five
    // get_missing_events, and the transaction is still answered.
    fake.set_missing(Vec::new());
    let asked_before = fake.missing_events_asked();
    let gappy: Vec<Value> = (0..8)
        .map(|i| {
            fake.sign_event(
                &version,
                message(
                    &room_id,
                    &mallory,
                    &format!("$never-seen-{i}"),
                    &auth,
                    depth + 20,
                    &format!("gappy {i}"),
                ),
            )
            .1
        })
        .collect();
    let (status, answer) = send("t-gaps".into(), gappy).await;
    assert_eq!(status, 200, "{answer}");
    let asked = fake.missing_events_asked() - asked_before;
    assert!(
        (1..=5).contains(&asked),
        "{asked} gaps filled in one transaction\n{}",
        logs()
    );
    // Typing counts only in rooms the origin is in: one notice for a room
    // of alice's that mallory's server is not in is dropped, the other
    // (same transaction, after it) shown.
    let private_room = alice.create_room(json!({ "preset": "private_chat" })).await;
    let typing = |room: &str| {
        json!({ "edu_type": "m.typing", "content": {
            "room_id": room, "user_id": mallory, "typing": true } })
    };
    let body = json!({
        "origin": fake.server_name, "origin_server_ts": now_ms(), "pdus": [],
        "edus": [typing(&private_room), typing(&room_id)],
    });
    let (status, _) = fake
        .request(
            &base,
            &our_name,
            Method::PUT,
            "/_matrix/federation/v1/send/t7b",
            Some(body),
        )
        .await;
    assert_eq!(status, 200);
    let typing_in = |sync: &Value, room: &str| {
        sync["rooms"]["join"][room]["ephemeral"]["events"]
            .as_array()
            .is_some_and(|events| {
                events.iter().any(|e| {
                    e["type"] == "m.typing"
                        && e["content"]["user_ids"]
                            .as_array()
                            .is_some_and(|u| u.contains(&json!(mallory)))
                })
            })
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let sync = alice.sync(None, 0, 1).await;
        if typing_in(&sync, &room_id) {
            assert!(!typing_in(&sync, &private_room), "{sync}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{sync}\n{}", logs());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Once the room's ACL denies the server, nothing of it is heard.
    let acl = alice
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
                encode(&room_id)
            ),
            Some(json!({ "allow": ["*"], "deny": ["localhost"], "allow_ip_literals": false })),
        )
        .await;
    assert_eq!(acl.status, 200, "{acl:?}");
    let (banned_id, banned) = fake.sign_event(
        &version,
        message(&room_id, &mallory, &m3, &auth, depth + 6, "after the ACL"),
    );
    let (status, answer) = send("t6".into(), vec![banned]).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["pdus"][&banned_id]["error"].is_string(), "{answer}");
    let (status, refused) = fake
        .request(
            &base,
            &our_name,
            Method::GET,
            &format!(
                "/_matrix/federation/v1/make_join/{}/{}?ver=10",
                encode(&room_id),
                encode(&format!("@eve:{}", fake.server_name))
            ),
            None,
        )
        .await;
    assert_eq!(
        (status, refused["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{refused}"
    );
    let sync = alice.sync(None, 0, 50).await;
    let seen = message_bodies(&sync["rooms"]["join"][&room_id]["timeline"]["events"]);
    assert!(!seen.iter().any(|b| b == "after the ACL"), "{seen:?}");

    // Mallory's server says her device changed: alice is told to fetch her
    // device list again.
    let before = alice.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let body = json!({
        "origin": fake.server_name, "origin_server_ts": now_ms(), "pdus": [],
        "edus": [{ "edu_type": "m.device_list_update", "content": {
            "user_id": mallory, "device_id": "MALLORYDEV", "stream_id": 7, "prev_id": [],
            "deleted": false, "keys": { "user_id": mallory, "device_id": "MALLORYDEV" },
        } }],
    });
    let (status, _) = fake
        .request(
            &base,
            &our_name,
            Method::PUT,
            "/_matrix/federation/v1/send/t7",
            Some(body),
        )
        .await;
    assert_eq!(status, 200);
    until_device_list_change(&alice, before, &mallory, logs).await;

    // Her cross-signing keys changed: alice is told again.
    let since = alice.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let body = json!({
        "origin": fake.server_name, "origin_server_ts": now_ms(), "pdus": [],
        "edus": [{ "edu_type": "m.signing_key_update", "content": {
            "user_id": mallory,
            "master_key": { "user_id": mallory, "usage": ["master"], "keys": { "ed25519:m": "m" } },
        } }],
    });
    let (status, _) = fake
        .request(
            &base,
            &our_name,
            Method::PUT,
            "/_matrix/federation/v1/send/t7c",
            Some(body),
        )
        .await;
    assert_eq!(status, 200);
    until_device_list_change(&alice, since, &mallory, logs).await;

    // Presence both ways.
    let body = json!({
        "origin": fake.server_name, "origin_server_ts": now_ms(), "pdus": [],
        "edus": [{ "edu_type": "m.presence", "content": { "push": [{
            "user_id": mallory, "presence": "online", "last_active_ago": 1000,
            "currently_active": true, "status_msg": "plotting",
        }] } }],
    });
    let (status, _) = fake
        .request(
            &base,
            &our_name,
            Method::PUT,
            "/_matrix/federation/v1/send/t8",
            Some(body),
        )
        .await;
    assert_eq!(status, 200);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let sync = alice.sync(None, 0, 1).await;
        let seen = sync["presence"]["events"].as_array().is_some_and(|events| {
            events.iter().any(|e| {
                e["sender"] == mallory.as_str() && e["content"]["status_msg"] == "plotting"
            })
        });
        if seen {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{sync}\n{}", logs());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let set = alice
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/presence/{}/status",
                encode(&alice.user_id)
            ),
            Some(json!({ "presence": "unavailable", "status_msg": "at lunch" })),
        )
        .await;
    assert_eq!(set.status, 200, "{set:?}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let heard = fake.received().iter().any(|(_, body)| {
            body["edus"].as_array().is_some_and(|edus| {
                edus.iter().any(|e| {
                    e["edu_type"] == "m.presence"
                        && e["content"]["push"][0]["user_id"] == alice.user_id.as_str()
                        && e["content"]["push"][0]["status_msg"] == "at lunch"
                })
            })
        });
        if heard {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", logs());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Our users' device lists, for the servers they talk to.
    let device = &alice.device_id;
    let keys = json!({
        "user_id": alice.user_id, "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": { format!("ed25519:{device}"): "ed" },
        "signatures": {},
    });
    let upload = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(json!({ "device_keys": keys })),
        )
        .await;
    assert_eq!(upload.status, 200, "{upload:?}");
    // The server in her room hears of the change.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let update = fake.received().into_iter().find_map(|(_, body)| {
            body["edus"].as_array().and_then(|edus| {
                edus.iter()
                    .find(|e| {
                        e["edu_type"] == "m.device_list_update"
                            && e["content"]["user_id"] == alice.user_id.as_str()
                    })
                    .cloned()
            })
        });
        if let Some(update) = update {
            assert_eq!(update["content"]["device_id"], device.as_str(), "{update}");
            assert_eq!(update["content"]["keys"], keys, "{update}");
            assert_eq!(update["content"]["deleted"], false, "{update}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", logs());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, devices) = fake
        .request(
            &base,
            &our_name,
            Method::GET,
            &format!(
                "/_matrix/federation/v1/user/devices/{}",
                encode(&alice.user_id)
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{devices}");
    assert_eq!(devices["user_id"], alice.user_id.as_str());
    assert!(
        devices["stream_id"].as_i64().is_some_and(|id| id > 0),
        "{devices}"
    );
    assert_eq!(
        devices["devices"][0]["device_id"],
        device.as_str(),
        "{devices}"
    );
    assert_eq!(devices["devices"][0]["keys"], keys, "{devices}");
    let (status, _) = fake
        .request(
            &base,
            &our_name,
            Method::GET,
            &format!("/_matrix/federation/v1/user/devices/{}", encode(&mallory)),
            None,
        )
        .await;
    assert_eq!(status, 404, "not our user");

    // And our own messages reach the remote server.
    alice.send_text(&room_id, "a1", "to mallory").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let delivered = fake.received().iter().any(|(_, body)| {
            body["pdus"]
                .as_array()
                .is_some_and(|p| p.iter().any(|e| e["content"]["body"] == "to mallory"))
        });
        if delivered {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", logs());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A server whose keys cannot be had from it is vouched for by the
/// notary we trust: its requests to us are refused until the notary has
/// its keys, then accepted with the keys the notary gives (signed by the
/// server and countersigned by the notary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_a_trusted_notary_when_the_server_gives_none() {
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let fake = FakeServer::start(dirs[0].path()).await;
    let (notary, notary_name) =
        crate::federation_queries::federating_monolith(dirs[1].path()).await;
    let (ours_name, mut env) = ganglion_integration_tests::process::federating_env();
    let mut monolith_env = Monolith::default_env(dirs[2].path());
    monolith_env.retain(|(k, _)| k != "GANGLION_FEDERATION__LISTEN");
    env.push((
        "GANGLION_FEDERATION__TRUSTED_KEY_SERVERS".to_owned(),
        format!(r#"["{notary_name}"]"#),
    ));
    monolith_env.extend(env);
    let ours = Monolith::start_with(dirs[2].path(), monolith_env).await;
    let base_of = |name: &str| {
        format!(
            "https://127.0.0.1:{}",
            name.rsplit_once(':').map(|(_, p)| p).unwrap_or_default()
        )
    };
    let logs = || {
        format!(
            "{}\n--- notary ---\n{}",
            ours.process.log_tail(),
            notary.process.log_tail()
        )
    };
    Client::register(&ours.base_url, "alice", "pw-alice-notary").await;
    let profile = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        encode(&format!("@alice:{ours_name}"))
    );
    let ours_base = base_of(&ours_name);
    let ask = || fake.request(&ours_base, &ours_name, reqwest::Method::GET, &profile, None);

    // Neither we nor the notary can get the fake server's keys.
    fake.serve_keys(false);
    let (status, body) = ask().await;
    assert_eq!(status, 401, "{body}\n{}", logs());
    assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");

    // The notary learns them while the server gives them (checking a
    // request the server signed), then the server gives none again.
    fake.serve_keys(true);
    let (status, body) = fake
        .request(
            &base_of(&notary_name),
            &notary_name,
            reqwest::Method::GET,
            &format!(
                "/_matrix/federation/v1/query/profile?user_id={}",
                encode(&format!("@nobody:{notary_name}"))
            ),
            None,
        )
        .await;
    assert_ne!(status, 401, "the notary fetched the keys itself: {body}");
    fake.serve_keys(false);

    // We still cannot fetch them from the server, and take them from the
    // notary.
    let (status, body) = ask().await;
    assert_eq!(status, 200, "{body}\n{}", logs());
    assert!(body["displayname"].is_string(), "{body}");
}

/// A server that joins today reads what its users may see: events sent
/// under `joined` history visibility before its user joined come redacted
/// from `/event`, `/backfill` and `/get_missing_events`, and the state at
/// them is refused; under `shared` history, and after the join, everything
/// comes whole.
#[tokio::test]
async fn remote_servers_read_history_as_its_visibility_allows() {
    let fake_dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeServer::start(fake_dir.path()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ours, our_name) = crate::federation_queries::federating_monolith(dir.path()).await;
    let base = federation_url(&our_name);
    let alice = Client::register(&ours.base_url, "alice", "pw-alice-vis").await;
    let room_id = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"}
            }]
        }))
        .await;
    let secret = alice.send_text(&room_id, "s1", "before you came").await;
    assert_eq!(secret.status, 200);
    let secret_id = secret.body["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned();

    let mallory = format!("@mallory:{}", fake.server_name);
    fake.join_room((&base, &our_name), &room_id, &mallory).await;
    let after = alice.send_text(&room_id, "s2", "now you are here").await;
    assert_eq!(after.status, 200);
    let after_id = after.body["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned();

    let get = |path: String| {
        let fake = &fake;
        let base = &base;
        let our_name = &our_name;
        async move { fake.request(base, our_name, Method::GET, &path, None).await }
    };
    // /event: the earlier message redacted, the later one whole.
    let (status, answer) = get(format!(
        "/_matrix/federation/v1/event/{}",
        encode(&secret_id)
    ))
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][0]["content"], json!({}), "{answer}");
    assert_eq!(answer["pdus"][0]["type"], "m.room.message");
    let (status, answer) = get(format!(
        "/_matrix/federation/v1/event/{}",
        encode(&after_id)
    ))
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][0]["content"]["body"], "now you are here");

    // /backfill from the latest: the same, event by event.
    let (status, answer) = get(format!(
        "/_matrix/federation/v1/backfill/{}?v={}&limit=20",
        encode(&room_id),
        encode(&after_id)
    ))
    .await;
    assert_eq!(status, 200, "{answer}");
    let bodies: Vec<Value> = answer["pdus"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|pdu| pdu["type"] == "m.room.message")
        .map(|pdu| pdu["content"].clone())
        .collect();
    assert!(bodies.contains(&json!({})), "{answer}");
    assert!(
        bodies.iter().any(|c| c["body"] == "now you are here"),
        "{answer}"
    );
    assert!(
        !bodies.iter().any(|c| c["body"] == "before you came"),
        "{answer}"
    );

    // The state at the hidden event is refused; at the later one given.
    let (status, _) = get(format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        encode(&room_id),
        encode(&secret_id)
    ))
    .await;
    assert_eq!(status, 403);
    let (status, answer) = get(format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        encode(&room_id),
        encode(&after_id)
    ))
    .await;
    assert_eq!(status, 200, "{answer}");

    // /get_missing_events between the join and the latest hides nothing
    // after the join, and redacts what came before.
    let (status, answer) = fake
        .request(
            &base,
            &our_name,
            Method::POST,
            &format!(
                "/_matrix/federation/v1/get_missing_events/{}",
                encode(&room_id)
            ),
            Some(json!({"earliest_events": [], "latest_events": [after_id], "limit": 20})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let events = answer["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .all(|e| e["content"] == json!({})),
        "only the hidden message is before the latest: {answer}"
    );

    // Under shared history the same server reads it all.
    let shared_room = alice.create_room(json!({"preset": "public_chat"})).await;
    let early = alice.send_text(&shared_room, "t1", "shared history").await;
    let early_id = early.body["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned();
    fake.join_room((&base, &our_name), &shared_room, &mallory)
        .await;
    let (status, answer) = get(format!(
        "/_matrix/federation/v1/event/{}",
        encode(&early_id)
    ))
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][0]["content"]["body"], "shared history");
    drop(ours);
}

/// A server sends into rooms it is in: a PDU from a server with no user in
/// the room is refused before anything is fetched or stored (its own
/// user's join aside). Presence of a user who shares no room with us is
/// dropped; once they join a room of ours it counts.
#[tokio::test]
async fn a_server_outside_a_room_cannot_send_into_it() {
    let fake_dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeServer::start(fake_dir.path()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ours, our_name) = crate::federation_queries::federating_monolith(dir.path()).await;
    let base = federation_url(&our_name);
    let alice = Client::register(&ours.base_url, "alice", "pw-alice-out").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mallory = format!("@mallory:{}", fake.server_name);
    let version = "10";
    let (event_id, pdu) = fake.sign_event(
        version,
        json!({
            "type": "m.room.message",
            "room_id": room_id,
            "sender": mallory,
            "content": { "msgtype": "m.text", "body": "let me in" },
            "origin_server_ts": now_ms(),
            "depth": 10,
            "prev_events": ["$unknown"],
            "auth_events": [],
        }),
    );
    let presence = json!({ "edu_type": "m.presence", "content": { "push": [{
        "user_id": mallory, "presence": "online", "last_active_ago": 1 }] } });
    let (status, answer) = fake
        .request(
            &base,
            &our_name,
            Method::PUT,
            "/_matrix/federation/v1/send/outside",
            Some(
                json!({ "origin": fake.server_name, "origin_server_ts": now_ms(),
                         "pdus": [pdu], "edus": [presence] }),
            ),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["pdus"][&event_id]["error"], "the origin has no user in the room",
        "{answer}"
    );
    assert_eq!(fake.missing_events_asked(), 0, "nothing was fetched for it");
    let synced = alice.sync_all(None, 0).await;
    let timeline = &synced["rooms"]["join"][&room_id]["timeline"]["events"];
    assert!(!message_bodies(timeline).contains(&"let me in".to_owned()));
    let present = |sync: &Value| {
        sync["presence"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["sender"] == mallory.as_str())
    };
    assert!(!present(&synced), "presence of a stranger: {synced}");

    // Mallory joins: now her server speaks for her.
    fake.join_room((&base, &our_name), &room_id, &mallory).await;
    let presence = json!({ "edu_type": "m.presence", "content": { "push": [{
        "user_id": mallory, "presence": "online", "last_active_ago": 1 }] } });
    let (status, _) = fake
        .request(
            &base,
            &our_name,
            Method::PUT,
            "/_matrix/federation/v1/send/inside",
            Some(
                json!({ "origin": fake.server_name, "origin_server_ts": now_ms(),
                         "pdus": [], "edus": [presence] }),
            ),
        )
        .await;
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut since = synced["next_batch"].as_str().unwrap_or_default().to_owned();
    loop {
        let sync = alice.sync_all(Some(&since), 1_000).await;
        if present(&sync) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "presence after joining"
        );
        since = sync["next_batch"].as_str().unwrap_or_default().to_owned();
    }
}

/// Requests naming an origin whose keys cannot be had (forged, or a server
/// that is down) cost one outbound fetch of its keys, not one each: the
/// origin is not asked again for a while, and every request is still
/// refused with 401.
#[tokio::test]
async fn an_origin_without_keys_is_fetched_once_not_per_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ours, our_name) = crate::federation_queries::federating_monolith(dir.path()).await;
    let base = federation_url(&our_name);
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client");
    let fetches = |outcome: &'static str| {
        let url = format!("{}/metrics", ours.operator_url);
        async move {
            let text = reqwest::get(url)
                .await
                .expect("metrics")
                .text()
                .await
                .unwrap_or_default();
            let series = format!("ganglion_server_key_fetches_total{{outcome=\"{outcome}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str())?.parse::<u64>().ok())
                .unwrap_or(0)
        }
    };
    let (failed, skipped) = (fetches("failed").await, fetches("skipped").await);
    let header = format!(
        "X-Matrix origin=\"unreachable.invalid\",destination=\"{our_name}\",key=\"ed25519:a\",sig=\"AAAA\""
    );
    for _ in 0..10 {
        let answer = http
            .get(format!(
                "{base}/_matrix/federation/v1/query/profile?user_id=%40alice%3A{}",
                encode(&our_name)
            ))
            .header("authorization", &header)
            .send()
            .await
            .expect("request");
        assert_eq!(answer.status(), 401);
    }
    assert_eq!(fetches("failed").await - failed, 1, "one fetch");
    assert_eq!(fetches("skipped").await - skipped, 9, "then none");
}

/// A remote server that closes a room to guests (its user has the power
/// to) makes our guests in the room leave it, as the spec requires of
/// every server for its own guests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_revocation_of_guest_access_removes_our_guests() {
    let fake_dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeServer::start(fake_dir.path()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (our_name, federating) = ganglion_integration_tests::process::federating_env();
    let mut env = Monolith::default_env(dir.path());
    env.retain(|(k, _)| k != "GANGLION_FEDERATION__LISTEN");
    env.extend(federating);
    env.push((
        "GANGLION_CLIENT__GUEST_ACCESS_ENABLED".to_owned(),
        "true".to_owned(),
    ));
    let ours = Monolith::start_with(dir.path(), env).await;
    let base = federation_url(&our_name);
    let alice = Client::register(&ours.base_url, "alice", "pw-alice-guests").await;
    let mallory = format!("@mallory:{}", fake.server_name);
    let room_id = alice
        .create_room(json!({
            "preset": "public_chat",
            "room_version": "10",
            "initial_state": [{"type": "m.room.guest_access", "state_key": "",
                               "content": {"guest_access": "can_join"}}],
            "power_level_content_override": {"users": {alice.user_id.clone(): 100, mallory.clone(): 100}},
        }))
        .await;
    let registered = ganglion_integration_tests::client::request(
        &reqwest::Client::new(),
        Method::POST,
        &format!("{}/_matrix/client/v3/register?kind=guest", ours.base_url),
        None,
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(registered.status, 200, "{registered:?}");
    let guest = registered.body["user_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let guest_client = Client {
        base_url: ours.base_url.clone(),
        http: reqwest::Client::new(),
        user_id: guest.clone(),
        access_token: registered.body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        device_id: String::new(),
    };
    assert_eq!(guest_client.join(&room_id).await.status, 200);

    let (version, join_id, join, joined) =
        fake.join_room((&base, &our_name), &room_id, &mallory).await;
    let state_id = |kind: &str| state_event_id(&joined, &version, kind);
    let (_, revoke) = fake.sign_event(
        &version,
        json!({
            "type": "m.room.guest_access", "state_key": "", "room_id": room_id,
            "sender": mallory, "content": {"guest_access": "forbidden"},
            "prev_events": [join_id],
            "auth_events": [state_id("m.room.create"), state_id("m.room.power_levels"), join_id],
            "depth": join["depth"].as_i64().unwrap_or(1) + 1,
            "origin_server_ts": now_ms(),
        }),
    );
    let (status, answer) = fake
        .request(
            &base,
            &our_name,
            Method::PUT,
            "/_matrix/federation/v1/send/revoke",
            Some(json!({ "origin": fake.server_name, "origin_server_ts": now_ms(), "pdus": [revoke] })),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let member_path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        encode(&room_id),
        encode(&guest)
    );
    for _ in 0..100 {
        let member = alice.call(Method::GET, &member_path, None).await;
        if member.body["membership"] == "leave" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "the guest is still in the room: {answer}\n{}",
        ours.process.log_tail()
    );
}

/// Transactions from one origin are taken one at a time: while a slow one
/// waits on the origin's own `get_missing_events`, a second transaction
/// from the same origin, sent meanwhile, is answered only after it (its
/// events are not taken out of order past the first's), and both land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_origin_s_transactions_are_taken_one_at_a_time() {
    let MalloryJoined {
        fake,
        ours,
        our_name,
        base,
        alice,
        room_id,
        mallory,
        version,
        join_id,
        auth,
        depth,
        _dirs,
    } = mallory_joins().await;
    let logs = || ours.process.log_tail();
    let send = |txn: &'static str, pdus: Vec<Value>| {
        let sent = send_transaction(&fake, (&base, &our_name), txn.to_owned(), pdus);
        async move { (sent.await, std::time::Instant::now()) }
    };
    // The slow one: its event follows one we have not seen, which the
    // origin takes 1.5 s to hand over.
    let (gap, _) = fake.sign_event(
        &version,
        message(&room_id, &mallory, &join_id, &auth, depth + 1, "gap"),
    );
    let (after_gap, slow_pdu) = fake.sign_event(
        &version,
        message(&room_id, &mallory, &gap, &auth, depth + 2, "after the gap"),
    );
    fake.set_missing(vec![gap]);
    fake.set_missing_delay(std::time::Duration::from_millis(1500));
    // The quick one: follows the join, needs nothing.
    let (quick, quick_pdu) = fake.sign_event(
        &version,
        message(&room_id, &mallory, &join_id, &auth, depth + 1, "quick"),
    );
    let slow = send("slow", vec![slow_pdu]);
    let quick_sent = async {
        // Sent once the slow one is surely being taken.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        send("quick", vec![quick_pdu]).await
    };
    let (((slow_status, slow_answer), slow_done), ((quick_status, quick_answer), quick_done)) =
        tokio::join!(slow, quick_sent);
    assert_eq!(slow_status, 200, "{slow_answer}\n{}", logs());
    assert_eq!(quick_status, 200, "{quick_answer}\n{}", logs());
    assert_eq!(slow_answer["pdus"][&after_gap], json!({}), "{slow_answer}");
    assert_eq!(quick_answer["pdus"][&quick], json!({}), "{quick_answer}");
    assert!(
        quick_done >= slow_done,
        "the second transaction was answered {:?} before the first",
        slow_done - quick_done
    );
    until_message(&alice, &room_id, "quick", logs).await;
    until_message(&alice, &room_id, "after the gap", logs).await;
}

/// Killed while it takes an origin's transaction, we hold that origin up
/// for a few seconds after the restart, not until its sender gives up (a
/// lease left behind by the dead process expires soon), and a transaction
/// whose sender hung up gives its turn back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_is_not_held_up_by_a_transaction_that_never_ended() {
    use std::time::Duration;
    let MalloryJoined {
        fake,
        mut ours,
        our_name,
        base,
        alice,
        room_id,
        mallory,
        version,
        join_id,
        auth,
        depth,
        _dirs,
    } = mallory_joins().await;
    // Each slow transaction's event follows one we have not seen, which
    // the origin never hands over in time.
    fake.set_missing_delay(Duration::from_secs(120));
    let slow = |n: i64| {
        let (gap, _) = fake.sign_event(
            &version,
            message(
                &room_id,
                &mallory,
                &join_id,
                &auth,
                depth + n,
                &format!("gap {n}"),
            ),
        );
        let (_, pdu) = fake.sign_event(
            &version,
            message(
                &room_id,
                &mallory,
                &gap,
                &auth,
                depth + n + 1,
                &format!("after gap {n}"),
            ),
        );
        (gap, pdu)
    };
    // A transaction whose event follows the join is taken and answered.
    let taken_at_once = |txn: &'static str, body: &'static str| {
        let (event_id, pdu) = fake.sign_event(
            &version,
            message(&room_id, &mallory, &join_id, &auth, depth + 1, body),
        );
        let sent = send_transaction(&fake, (&base, &our_name), txn.to_owned(), vec![pdu]);
        async move {
            let (status, answer) = sent.await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["pdus"][&event_id], json!({}), "{answer}");
        }
    };

    // The sender hangs up on a slow transaction: the next one is taken.
    let (gap, pdu) = slow(1);
    fake.set_missing(vec![gap]);
    let hung_up = tokio::time::timeout(
        Duration::from_millis(500),
        send_transaction(&fake, (&base, &our_name), "hung-up".to_owned(), vec![pdu]),
    )
    .await;
    assert!(
        hung_up.is_err(),
        "the slow transaction was answered: {hung_up:?}"
    );
    taken_at_once("quick-1", "after a hang-up").await;

    // We die in the middle of a slow one: after the restart the origin's
    // next transaction is taken, not refused as busy.
    let (gap, pdu) = slow(3);
    fake.set_missing(vec![gap]);
    tokio::select! {
        sent = send_transaction(&fake, (&base, &our_name), "killed".to_owned(), vec![pdu]) => {
            panic!("the slow transaction was answered: {sent:?}");
        }
        // Killed in the same poll, so the request is not polled again.
        () = tokio::time::sleep(Duration::from_millis(500)) => ours.process.kill9(),
    }
    ours.restart().await;
    taken_at_once("quick-2", "after a restart").await;
    until_message(&alice, &room_id, "after a restart", || {
        ours.process.log_tail()
    })
    .await;
}
