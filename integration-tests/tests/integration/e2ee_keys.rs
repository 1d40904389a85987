//! End-to-end encryption keys through the keyserver: upload, query and
//! claim, and the one-time key counts and fallback key types in `/sync`
//! and in sliding sync's `e2ee` extension.

use ganglion_integration_tests::client::Client;
use reqwest::Method;
use serde_json::{Value, json};

fn device_keys(client: &Client) -> Value {
    let device = &client.device_id;
    json!({
        "user_id": client.user_id, "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{device}"): "curve", format!("ed25519:{device}"): "ed" },
        "signatures": { client.user_id.clone(): { format!("ed25519:{device}"): "sig" } },
    })
}

fn signed(key: &str) -> Value {
    json!({ "key": key, "signatures": { "@x:localhost": { "ed25519:X": "sig" } } })
}

/// A sliding sync request with the `e2ee` extension, from `pos`.
async fn sliding_e2ee(
    client: &Client,
    pos: Option<&str>,
) -> ganglion_integration_tests::client::Reply {
    let mut path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync".to_owned();
    if let Some(pos) = pos {
        path.push_str(&format!(
            "?pos={}",
            ganglion_integration_tests::client::encode(pos)
        ));
    }
    let reply = client
        .call(
            Method::POST,
            &path,
            Some(json!({ "extensions": { "e2ee": { "enabled": true } } })),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply
}

async fn counts_in_sync(client: &Client) -> (Value, Value) {
    let body = client.sync_all(None, 0).await;
    (
        body["device_one_time_keys_count"].clone(),
        body["device_unused_fallback_key_types"].clone(),
    )
}

pub(crate) async fn upload_query_claim(base_url: &str) {
    let alice = Client::register(base_url, "k_alice", "pw-alice-k").await;
    let bob = Client::register(base_url, "k_bob", "pw-bob-k").await;
    let upload = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(json!({
                "device_keys": device_keys(&alice),
                "one_time_keys": {
                    "signed_curve25519:AAAA": signed("one"),
                    "signed_curve25519:AAAB": signed("two"),
                },
                "fallback_keys": { "signed_curve25519:FFFF": signed("fallback") },
            })),
        )
        .await;
    assert_eq!(upload.status, 200, "{upload:?}");
    assert_eq!(upload.body["one_time_key_counts"]["signed_curve25519"], 2);
    let (counts, fallback) = counts_in_sync(&alice).await;
    assert_eq!(counts["signed_curve25519"], 2, "{counts}");
    assert_eq!(fallback, json!(["signed_curve25519"]));

    // Bob reads alice's device keys; a server federation may not reach (an
    // address on the deny list) is a failure.
    let query = bob
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({ "device_keys": { alice.user_id.clone(): [], "@eve:192.0.2.1": [] } })),
        )
        .await;
    assert_eq!(query.status, 200, "{query:?}");
    assert_eq!(
        query.body["device_keys"][&alice.user_id][&alice.device_id],
        device_keys(&alice)
    );
    assert!(query.body["failures"]["192.0.2.1"].is_object(), "{query:?}");

    // Bob claims a one-time key: alice holds one fewer.
    let claim = bob
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/claim",
            Some(json!({ "one_time_keys": {
                alice.user_id.clone(): { alice.device_id.clone(): "signed_curve25519" }
            } })),
        )
        .await;
    assert_eq!(claim.status, 200, "{claim:?}");
    assert_eq!(
        claim.body["one_time_keys"][&alice.user_id][&alice.device_id]["signed_curve25519:AAAA"],
        signed("one")
    );
    let (counts, _) = counts_in_sync(&alice).await;
    assert_eq!(counts["signed_curve25519"], 1);

    // Sliding sync's e2ee extension carries the same counts.
    let sliding = sliding_e2ee(&alice, None).await;
    let e2ee = &sliding.body["extensions"]["e2ee"];
    assert_eq!(
        e2ee["device_one_time_keys_count"]["signed_curve25519"], 1,
        "{e2ee}"
    );
    assert_eq!(
        e2ee["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );

    // Refused, and nothing changed.
    let bad = [
        json!({ "device_keys": device_keys(&bob) }),
        json!({ "one_time_keys": { "signed_curve25519:AAAB": signed("not two") } }),
        json!({ "one_time_keys": { "no_algorithm": signed("x") } }),
    ];
    for body in bad {
        let reply = alice
            .call(Method::POST, "/_matrix/client/v3/keys/upload", Some(body))
            .await;
        assert_eq!(
            (reply.status, reply.errcode()),
            (400, "M_INVALID_PARAM"),
            "{reply:?}"
        );
    }
    let reply = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(json!({ "device_keys": 5 })),
        )
        .await;
    assert_eq!(
        (reply.status, reply.errcode()),
        (400, "M_BAD_JSON"),
        "{reply:?}"
    );
    let reply = bob
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({ "device_keys": { "not a user": [] } })),
        )
        .await;
    assert_eq!(
        (reply.status, reply.errcode()),
        (400, "M_INVALID_PARAM"),
        "{reply:?}"
    );
    let (counts, _) = counts_in_sync(&alice).await;
    assert_eq!(counts["signed_curve25519"], 1, "nothing changed");
    let no_token = ganglion_integration_tests::client::request(
        &alice.http,
        Method::POST,
        &format!("{base_url}/_matrix/client/v3/keys/upload"),
        None,
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(no_token.status, 401);
}

/// The user IDs in one of a sync body's `device_lists` fields.
fn listed(lists: &Value, field: &str) -> Vec<String> {
    lists[field]
        .as_array()
        .map(|users| {
            users
                .iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Long-polls `/sync` from `since` until `wanted` holds for the response's
/// `device_lists` (a poll may wake for other news first); returns that
/// response's lists and its `next_batch`.
async fn sync_until(
    client: &Client,
    since: &str,
    wanted: impl Fn(&Value) -> bool,
) -> (Value, String) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut since = since.to_owned();
    loop {
        let body = client.sync_all(Some(&since), 5_000).await;
        let lists = body["device_lists"].clone();
        let next = body["next_batch"].as_str().unwrap_or_default().to_owned();
        if wanted(&lists) {
            return (lists, next);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "device lists never became as wanted; last: {lists}"
        );
        since = next;
    }
}

async fn log_in(base_url: &str, client: &Client, password: &str) -> Client {
    let reply = ganglion_integration_tests::client::request(
        &client.http,
        Method::POST,
        &format!("{base_url}/_matrix/client/v3/login"),
        None,
        Some(
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": client.user_id }, "password": password })
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    Client {
        access_token: reply.body["access_token"]
            .as_str()
            .unwrap_or_default()
            .into(),
        device_id: reply.body["device_id"].as_str().unwrap_or_default().into(),
        ..client.clone()
    }
}

async fn upload_device_keys(client: &Client) {
    let reply = client
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(json!({ "device_keys": device_keys(client) })),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

async fn key_changes(client: &Client, from: &str, to: &str) -> Value {
    let reply = client
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/keys/changes?from={}&to={}",
                ganglion_integration_tests::client::encode(from),
                ganglion_integration_tests::client::encode(to)
            ),
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

/// `device_lists` and `/keys/changes`: a user hears of the device changes
/// of the users they share a room with (new keys, a device logged out),
/// of users who start sharing a room, and of those who stop sharing any;
/// never of strangers. Sliding sync's `e2ee` extension carries the same.
pub(crate) async fn device_lists(base_url: &str) {
    let alice = Client::register(base_url, "dl_alice", "pw-dl-alice").await;
    let bob = Client::register(base_url, "dl_bob", "pw-dl-bob").await;
    let carol = Client::register(base_url, "dl_carol", "pw-dl-carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let start = alice.sync_all(None, 0).await;
    assert!(
        start["device_lists"]["changed"]
            .as_array()
            .is_none_or(|c| c.is_empty()),
        "an initial sync lists no changes: {start}"
    );
    let t0 = start["next_batch"].as_str().unwrap_or_default().to_owned();
    let sliding = sliding_e2ee(&alice, None).await;
    let pos = sliding.body["pos"].as_str().unwrap_or_default().to_owned();

    // Bob joins: alice starts sharing a room with him.
    assert_eq!(bob.join(&room_id).await.status, 200);
    let (_, t1) = sync_until(&alice, &t0, |l| listed(l, "changed").contains(&bob.user_id)).await;

    // Bob's new device keys; carol, a stranger, uploads too.
    upload_device_keys(&carol).await;
    upload_device_keys(&bob).await;
    let (lists, t2) =
        sync_until(&alice, &t1, |l| listed(l, "changed").contains(&bob.user_id)).await;
    assert!(
        !listed(&lists, "changed").contains(&carol.user_id),
        "{lists}"
    );
    // And bob hears of his own.
    let bob_start = bob.sync_all(None, 0).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let changes = key_changes(&alice, &t0, &t2).await;
    assert!(
        listed(&changes, "changed").contains(&bob.user_id),
        "{changes}"
    );
    assert!(
        !listed(&changes, "changed").contains(&carol.user_id),
        "{changes}"
    );
    assert_eq!(listed(&changes, "left"), Vec::<String>::new());

    // The same keys again change nothing.
    upload_device_keys(&bob).await;
    let quiet = alice.sync_all(Some(&t2), 0).await;
    assert!(
        !listed(&quiet["device_lists"], "changed").contains(&bob.user_id),
        "{quiet}"
    );

    // Bob renames his device: alice hears of it, and sees the new name.
    let renamed = bob
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/devices/{}",
                ganglion_integration_tests::client::encode(&bob.device_id)
            ),
            Some(json!({ "display_name": "Bob's new name" })),
        )
        .await;
    assert_eq!(renamed.status, 200, "{renamed:?}");
    let (_, t2) = sync_until(&alice, &t2, |l| listed(l, "changed").contains(&bob.user_id)).await;
    let query = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({ "device_keys": { bob.user_id.clone(): [] } })),
        )
        .await;
    assert_eq!(
        query.body["device_keys"][&bob.user_id][&bob.device_id]["unsigned"]["device_display_name"],
        "Bob's new name",
        "{query:?}"
    );

    // Bob's second device uploads keys, then logs out: its keys go, and
    // alice hears of it.
    let bob2 = log_in(base_url, &bob, "pw-dl-bob").await;
    upload_device_keys(&bob2).await;
    let (_, t3) = sync_until(&alice, &t2, |l| listed(l, "changed").contains(&bob.user_id)).await;
    let logout = bob2
        .call(Method::POST, "/_matrix/client/v3/logout", Some(json!({})))
        .await;
    assert_eq!(logout.status, 200, "{logout:?}");
    let (_, t4) = sync_until(&alice, &t3, |l| listed(l, "changed").contains(&bob.user_id)).await;
    let query = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({ "device_keys": { bob.user_id.clone(): [] } })),
        )
        .await;
    let devices: Vec<&String> = query.body["device_keys"][&bob.user_id]
        .as_object()
        .map(|d| d.keys().collect())
        .unwrap_or_default();
    assert_eq!(devices, [&bob.device_id], "{query:?}");

    // Sliding sync's e2ee extension saw bob too.
    let sliding = sliding_e2ee(&alice, Some(&pos)).await;
    assert!(
        listed(
            &sliding.body["extensions"]["e2ee"]["device_lists"],
            "changed"
        )
        .contains(&bob.user_id),
        "{}",
        sliding.body
    );

    // Bob leaves their only shared room: alice may stop tracking him.
    let leave = bob
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/rooms/{}/leave",
                ganglion_integration_tests::client::encode(&room_id)
            ),
            Some(json!({})),
        )
        .await;
    assert_eq!(leave.status, 200, "{leave:?}");
    let (lists, t5) = sync_until(&alice, &t4, |l| listed(l, "left").contains(&bob.user_id)).await;
    assert!(!listed(&lists, "changed").contains(&bob.user_id), "{lists}");
    // Bob, who left, hears alice is gone from his lists.
    let (bob_lists, _) = sync_until(&bob, &bob_start, |l| {
        listed(l, "left").contains(&alice.user_id)
    })
    .await;
    assert!(
        !listed(&bob_lists, "changed").contains(&alice.user_id),
        "{bob_lists}"
    );
    // Once he is gone, his changes are none of alice's business.
    let bob3 = log_in(base_url, &bob, "pw-dl-bob").await;
    upload_device_keys(&bob3).await;
    let after = alice.sync_all(Some(&t5), 0).await;
    assert!(
        !listed(&after["device_lists"], "changed").contains(&bob.user_id),
        "{after}"
    );

    // Refusals.
    for (path, code) in [
        ("/_matrix/client/v3/keys/changes?to=s0", "M_MISSING_PARAM"),
        (
            "/_matrix/client/v3/keys/changes?from=nonsense&to=s0",
            "M_INVALID_PARAM",
        ),
    ] {
        let reply = alice.call(Method::GET, path, None).await;
        assert_eq!((reply.status, reply.errcode()), (400, code), "{reply:?}");
    }
    let no_token = ganglion_integration_tests::client::request(
        &alice.http,
        Method::GET,
        &format!("{base_url}/_matrix/client/v3/keys/changes?from={t0}&to={t5}"),
        None,
        None,
    )
    .await;
    assert_eq!(no_token.status, 401);
}

/// Cross-signing on one server: the first keys need no password, replacing
/// them does (User-Interactive Auth); keys that do not check are refused
/// with the spec's error and change nothing; signatures of one's devices
/// and master key show to everyone, those of another user's master key
/// only to their signer; those who share a room hear of the change.
pub(crate) async fn cross_signing(base_url: &str) {
    use ganglion_integration_tests::cross_signing::{self, CrossSigning, signed};
    let alice = Client::register(base_url, "xs_alice", "pw-xs-alice").await;
    let bob = Client::register(base_url, "xs_bob", "pw-xs-bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room_id).await.status, 200);
    let (device, device_pair) = cross_signing::upload_device_keys(&alice).await;
    let since = bob.sync_all(None, 0).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let query = |client: &Client, user_id: &str| {
        let (client, user_id) = (client.clone(), user_id.to_owned());
        async move {
            crate::federation_queries::query_keys(&client, &user_id)
                .await
                .body
        }
    };

    // Refused, storing nothing: a self-signing key without a master key,
    // one the master key did not sign, a key that is not an object.
    let keys = CrossSigning::new(&alice.user_id);
    let other = CrossSigning::new(&alice.user_id);
    let path = cross_signing::UPLOAD_PATH;
    let refusals = [
        (
            json!({ "self_signing_key": keys.self_signing_key }),
            "M_MISSING_PARAM",
        ),
        (
            json!({ "master_key": keys.master_key, "self_signing_key": other.self_signing_key }),
            "M_INVALID_SIGNATURE",
        ),
        (json!({ "master_key": "no" }), "M_BAD_JSON"),
    ];
    for (body, errcode) in refusals {
        let reply = alice.call(Method::POST, path, Some(body)).await;
        assert_eq!((reply.status, reply.errcode()), (400, errcode), "{reply:?}");
    }
    assert_eq!(
        query(&alice, &alice.user_id).await["master_keys"],
        json!({})
    );

    // The first keys: no password asked; the same again, neither.
    for _ in 0..2 {
        let reply = alice.call(Method::POST, path, Some(keys.body())).await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let own = query(&alice, &alice.user_id).await;
    assert_eq!(own["master_keys"][&alice.user_id], keys.master_key, "{own}");
    assert_eq!(
        own["self_signing_keys"][&alice.user_id],
        keys.self_signing_key
    );
    assert_eq!(
        own["user_signing_keys"][&alice.user_id],
        keys.user_signing_key
    );
    let seen = query(&bob, &alice.user_id).await;
    assert_eq!(
        seen["master_keys"][&alice.user_id], keys.master_key,
        "{seen}"
    );
    assert!(
        seen["user_signing_keys"][&alice.user_id].is_null(),
        "{seen}"
    );
    let (_, since) = sync_until(&bob, &since, |l| {
        listed(l, "changed").contains(&alice.user_id)
    })
    .await;

    // Signatures: her device by her self-signing key, her master key by
    // her device, bob's master key by her user-signing key; a tampered
    // one refused.
    let bob_keys = CrossSigning::new(&bob.user_id);
    let alice_since = alice.sync_all(None, 0).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let reply = bob.call(Method::POST, path, Some(bob_keys.body())).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let (_, alice_since) = sync_until(&alice, &alice_since, |l| {
        listed(l, "changed").contains(&bob.user_id)
    })
    .await;
    let mut tampered = signed(&device, &alice.user_id, &keys.self_signing);
    tampered["keys"][format!("curve25519:{}", alice.device_id)] = json!("other");
    let failures = cross_signing::upload_signatures(
        &alice,
        &json!({ alice.user_id.clone(): { alice.device_id.clone(): tampered } }),
    )
    .await;
    assert_eq!(
        failures[&alice.user_id][&alice.device_id]["errcode"], "M_INVALID_PARAM",
        "{failures}"
    );
    let failures = cross_signing::upload_signatures(
        &alice,
        &json!({
            alice.user_id.clone(): {
                alice.device_id.clone(): signed(&device, &alice.user_id, &keys.self_signing),
                keys.master_public(): signed(&keys.master_key, &alice.user_id, &device_pair),
            },
            bob.user_id.clone(): {
                bob_keys.master_public():
                    signed(&bob_keys.master_key, &alice.user_id, &keys.user_signing),
            },
        }),
    )
    .await;
    assert_eq!(failures, json!({}));
    let ssk = format!("ed25519:{}", keys.self_signing_public());
    let usk = format!("ed25519:{}", keys.user_signing_public());
    let device_sig = format!("ed25519:{}", alice.device_id);
    let seen = query(&bob, &alice.user_id).await;
    assert!(
        seen["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id][&ssk]
            .is_string(),
        "{seen}"
    );
    assert!(
        seen["master_keys"][&alice.user_id]["signatures"][&alice.user_id][&device_sig].is_string(),
        "{seen}"
    );
    let hers = query(&alice, &bob.user_id).await;
    assert!(
        hers["master_keys"][&bob.user_id]["signatures"][&alice.user_id][&usk].is_string(),
        "{hers}"
    );
    let his = query(&bob, &bob.user_id).await;
    assert!(
        his["master_keys"][&bob.user_id]["signatures"][&alice.user_id].is_null(),
        "only the signer sees it: {his}"
    );
    sync_until(&bob, &since, |l| {
        listed(l, "changed").contains(&alice.user_id)
    })
    .await;
    // Her signature of Bob's master key is news to her devices (they fetch
    // his keys again, her signature with them).
    sync_until(&alice, &alice_since, |l| {
        listed(l, "changed").contains(&bob.user_id)
    })
    .await;

    // New keys need her password: asked for, a wrong one refused, then
    // taken.
    let renewed = CrossSigning::new(&alice.user_id);
    let asked = alice.call(Method::POST, path, Some(renewed.body())).await;
    assert_eq!(asked.status, 401, "{asked:?}");
    assert_eq!(
        asked.body["flows"][0]["stages"],
        json!(["m.login.password"])
    );
    let mut wrong = renewed.body();
    wrong["auth"] = json!({
        "type": "m.login.password", "session": asked.body["session"],
        "identifier": { "type": "m.id.user", "user": alice.user_id }, "password": "not-it",
    });
    let refused = alice.call(Method::POST, path, Some(wrong)).await;
    assert_eq!(
        (refused.status, refused.body["errcode"].as_str()),
        (401, Some("M_FORBIDDEN")),
        "{refused:?}"
    );
    assert_eq!(
        query(&bob, &alice.user_id).await["master_keys"][&alice.user_id]["keys"],
        keys.master_key["keys"]
    );
    let taken = cross_signing::upload(&alice, "pw-xs-alice", &renewed.body()).await;
    assert_eq!(taken.status, 200, "{taken:?}");
    let seen = query(&bob, &alice.user_id).await;
    assert_eq!(
        seen["master_keys"][&alice.user_id], renewed.master_key,
        "the old key's signatures went with it: {seen}"
    );
}
