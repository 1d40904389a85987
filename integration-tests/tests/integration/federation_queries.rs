//! Federation foundations against a real Synapse, both ways: each server
//! fetches the other's signing keys and checks the `X-Matrix` signature of
//! every request; aliases and device keys are looked up across servers;
//! we vouch for Synapse's keys as a notary; requests without a valid
//! signature are refused with 401 `M_UNAUTHORIZED`.

use ganglion_integration_tests::client::{Client, encode};
use ganglion_integration_tests::cross_signing::{self, CrossSigning};
use ganglion_integration_tests::process::Monolith;
use ganglion_integration_tests::synapse::Synapse;
use reqwest::Method;
use serde_json::{Value, json};

/// A monolith that federates over loopback (see [`Monolith::federating`]).
pub(crate) async fn federating_monolith(dir: &std::path::Path) -> (Monolith, String) {
    Monolith::federating(dir).await
}

/// A real Synapse and one of our monoliths, federating over loopback:
/// (Synapse, ours, our server name, the folders they keep their data in).
pub(crate) async fn with_synapse() -> (Synapse, Monolith, String, [tempfile::TempDir; 2]) {
    with_synapse_configured(json!({})).await
}

/// [`with_synapse`] with Synapse's configuration changed by `overrides`
/// (see [`Synapse::start_with`]).
pub(crate) async fn with_synapse_configured(
    overrides: Value,
) -> (Synapse, Monolith, String, [tempfile::TempDir; 2]) {
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let synapse = Synapse::start_with(dirs[0].path(), overrides).await;
    let (ours, our_name) = federating_monolith(dirs[1].path()).await;
    (synapse, ours, our_name, dirs)
}

/// Both servers' recent logs, for a failure's message.
pub(crate) fn logs_with_synapse(synapse: &Synapse, ours: &Monolith) -> String {
    format!(
        "{}\n--- ours ---\n{}",
        synapse.logs(),
        ours.process.log_tail()
    )
}

/// Two monoliths that federate with each other over loopback.
pub(crate) struct GanglionPair {
    pub(crate) a: Monolith,
    pub(crate) a_name: String,
    pub(crate) b: Monolith,
    _dirs: [tempfile::TempDir; 2],
}

impl GanglionPair {
    pub(crate) async fn start() -> GanglionPair {
        let dirs = [
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        ];
        let (a, a_name) = federating_monolith(dirs[0].path()).await;
        let (b, _) = federating_monolith(dirs[1].path()).await;
        GanglionPair {
            a,
            a_name,
            b,
            _dirs: dirs,
        }
    }

    /// Both servers' recent logs, for a failure's message.
    pub(crate) fn logs(&self) -> String {
        format!(
            "--- a ---\n{}\n--- b ---\n{}",
            self.a.process.log_tail(),
            self.b.process.log_tail()
        )
    }
}

/// `client`'s `/keys/query` for every device of `user_id`.
pub(crate) async fn query_keys(
    client: &Client,
    user_id: &str,
) -> ganglion_integration_tests::client::Reply {
    let query = client
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({ "device_keys": { user_id: [] } })),
        )
        .await;
    assert_eq!(query.status, 200, "{query:?}");
    query
}

/// A client of a federation port (TLS, self-signed).
fn federation_http() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client")
}

fn device_keys(client: &Client) -> Value {
    let device = &client.device_id;
    json!({
        "user_id": client.user_id, "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device}"): "9TVnY0k/SyjWN1UVdjLs4/XOPZw6GnS7u8cj1lRYZE0",
            format!("ed25519:{device}"): "uC2KYDUE7N2KFxoFuAnQ+wuaWqsv9lvfTsfkdZjZsRE",
        },
        "signatures": { client.user_id.clone(): {
            format!("ed25519:{device}"): "9H6jU0JYOb3oQGsnkr0l2RMVUOhxIHh2tfrctSMUJ3BCnYbYxxYJqwNMU6KG3h3ipgEWRNnPUyNShKqDw6dFCA"
        } },
    })
}

async fn upload_keys(client: &Client, with_one_time_key: bool) {
    let mut body = json!({ "device_keys": device_keys(client) });
    if with_one_time_key {
        body["one_time_keys"] = json!({ "signed_curve25519:AAAAHQ": {
            "key": "zKbLg+NrIjpnagy+pIY6uPL4ZwEG2v+8F9lmgsnlZzs",
            "signatures": { client.user_id.clone(): {
                format!("ed25519:{}", client.device_id): "IQeCEPb9HFk217cU9kw9EOiusC6kMIkoIRnbnfOh5Oc63S1ghgyjShBGpu34blQomoalCyXWyhaaT3MrLZYQAA"
            } },
        } });
    }
    let reply = client
        .call(Method::POST, "/_matrix/client/v3/keys/upload", Some(body))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_aliases_and_device_keys_across_servers_with_synapse() {
    let (synapse, ours, our_name, _dirs) = crate::federation_queries::with_synapse().await;
    let our_federation = format!(
        "https://127.0.0.1:{}",
        our_name
            .rsplit_once(':')
            .map(|(_, p)| p)
            .unwrap_or_default()
    );

    let alice = Client::register(&ours.base_url, "alice", "pw-alice-fed").await;
    assert_eq!(alice.user_id, format!("@alice:{our_name}"));
    let bob = synapse.register("bob", "pw-bob-fed").await;

    // Synapse → us: bob's server resolves our alias, and so fetches our
    // keys to check our answer's... and we check its request's signature.
    let room_id = alice
        .create_room(json!({ "preset": "public_chat", "room_alias_name": "fed" }))
        .await;
    let our_alias = format!("#fed:{our_name}");
    let looked_up = bob
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/directory/room/{}", encode(&our_alias)),
            None,
        )
        .await;
    assert_eq!(looked_up.status, 200, "{looked_up:?}\n{}", synapse.logs());
    assert_eq!(looked_up.body["room_id"], room_id.as_str());
    let unknown = bob
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                encode(&format!("#nothing:{our_name}"))
            ),
            None,
        )
        .await;
    assert_eq!(unknown.status, 404, "{unknown:?}");

    // Us → Synapse: alice resolves bob's alias.
    let their_room = bob
        .create_room(json!({ "preset": "public_chat", "room_alias_name": "syn" }))
        .await;
    let their_alias = format!("#syn:{}", synapse.server_name);
    let looked_up = alice
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/directory/room/{}", encode(&their_alias)),
            None,
        )
        .await;
    assert_eq!(looked_up.status, 200, "{looked_up:?}\n{}", synapse.logs());
    assert_eq!(looked_up.body["room_id"], their_room.as_str());
    assert!(
        looked_up.body["servers"]
            .as_array()
            .is_some_and(|s| s.contains(&json!(synapse.server_name))),
        "{looked_up:?}"
    );
    let missing = alice
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                encode(&format!("#nothing:{}", synapse.server_name))
            ),
            None,
        )
        .await;
    assert_eq!(
        (missing.status, missing.errcode()),
        (404, "M_NOT_FOUND"),
        "{missing:?}"
    );

    // Profiles both ways (`/query/profile`): a new user is named by their
    // localpart; a change shows on the other server.
    let set_name = |client: &Client, name: &str| {
        let client = client.clone();
        let name = name.to_owned();
        async move {
            let reply = client
                .call(
                    Method::PUT,
                    &format!(
                        "/_matrix/client/v3/profile/{}/displayname",
                        encode(&client.user_id)
                    ),
                    Some(json!({ "displayname": name })),
                )
                .await;
            assert_eq!(reply.status, 200, "{reply:?}");
        }
    };
    let profile = |client: &Client, user_id: &str, field: &str| {
        let client = client.clone();
        let path = format!("/_matrix/client/v3/profile/{}{field}", encode(user_id));
        async move { client.call(Method::GET, &path, None).await }
    };
    let fresh = profile(&bob, &alice.user_id, "").await;
    assert_eq!(fresh.status, 200, "{fresh:?}\n{}", synapse.logs());
    assert_eq!(fresh.body["displayname"], "alice", "{fresh:?}");
    set_name(&alice, "Alice of Ganglion").await;
    let changed = profile(&bob, &alice.user_id, "/displayname").await;
    assert_eq!(
        changed.body,
        json!({ "displayname": "Alice of Ganglion" }),
        "{changed:?}"
    );
    set_name(&bob, "Bob of Synapse").await;
    let theirs = profile(&alice, &bob.user_id, "").await;
    assert_eq!(theirs.status, 200, "{theirs:?}");
    assert_eq!(theirs.body["displayname"], "Bob of Synapse", "{theirs:?}");
    let nobody = profile(&alice, &format!("@nobody:{}", synapse.server_name), "").await;
    assert_eq!(
        (nobody.status, nobody.errcode()),
        (404, "M_NOT_FOUND"),
        "{nobody:?}"
    );
    // Unset: Synapse answers `200 {}` (the spec allows that or a 404).
    let no_avatar = profile(&bob, &alice.user_id, "/avatar_url").await;
    assert!(
        no_avatar.status == 200 && no_avatar.body == json!({}),
        "{no_avatar:?}"
    );

    // Our public rooms, listed on Synapse (federation `/publicRooms`).
    let published = alice
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/directory/list/room/{}",
                encode(&room_id)
            ),
            Some(json!({ "visibility": "public" })),
        )
        .await;
    assert_eq!(published.status, 200, "{published:?}");
    let listed = bob
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/publicRooms?server={}",
                encode(&our_name)
            ),
            None,
        )
        .await;
    assert_eq!(listed.status, 200, "{listed:?}\n{}", synapse.logs());
    assert!(
        listed.body["chunk"]
            .as_array()
            .is_some_and(|c| c
                .iter()
                .any(|r| r["room_id"] == room_id.as_str()
                    && r["canonical_alias"] == our_alias.as_str())),
        "{listed:?}"
    );

    // Device keys both ways, and a one-time key claimed across servers.
    upload_keys(&alice, false).await;
    upload_keys(&bob, true).await;
    let query = query_keys(&bob, &alice.user_id).await;
    assert_eq!(
        query.body["device_keys"][&alice.user_id][&alice.device_id]["keys"],
        device_keys(&alice)["keys"],
        "{query:?}\n{}",
        synapse.logs()
    );
    let query = query_keys(&alice, &bob.user_id).await;
    assert_eq!(
        query.body["device_keys"][&bob.user_id][&bob.device_id]["keys"],
        device_keys(&bob)["keys"],
        "{query:?}"
    );
    assert_eq!(query.body["failures"], json!({}), "{query:?}");

    // Bob's cross-signing keys come with his devices.
    let bob_keys = CrossSigning::new(&bob.user_id);
    let body = json!({
        "master_key": bob_keys.master_key,
        "self_signing_key": bob_keys.self_signing_key,
    });
    let uploaded = cross_signing::upload(&bob, "pw-bob-fed", &body).await;
    assert_eq!(uploaded.status, 200, "{uploaded:?}");
    let query = query_keys(&alice, &bob.user_id).await;
    assert_eq!(
        query.body["master_keys"][&bob.user_id]["keys"], bob_keys.master_key["keys"],
        "{query:?}"
    );
    assert_eq!(
        query.body["self_signing_keys"][&bob.user_id]["keys"], bob_keys.self_signing_key["keys"],
        "{query:?}"
    );
    let claim = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/claim",
            Some(json!({ "one_time_keys": {
                bob.user_id.clone(): { bob.device_id.clone(): "signed_curve25519" }
            } })),
        )
        .await;
    assert_eq!(claim.status, 200, "{claim:?}");
    assert_eq!(
        claim.body["one_time_keys"][&bob.user_id][&bob.device_id]["signed_curve25519:AAAAHQ"]["key"],
        "zKbLg+NrIjpnagy+pIY6uPL4ZwEG2v+8F9lmgsnlZzs",
        "{claim:?}"
    );

    // As a notary we vouch for Synapse's keys: its signature and ours.
    let http = federation_http();
    let notary: Value = http
        .get(format!(
            "{our_federation}/_matrix/key/v2/query/{}",
            synapse.server_name
        ))
        .send()
        .await
        .expect("notary query")
        .json()
        .await
        .expect("notary JSON");
    let response = &notary["server_keys"][0];
    assert_eq!(
        response["server_name"],
        synapse.server_name.as_str(),
        "{notary}"
    );
    assert!(
        response["signatures"][&synapse.server_name].is_object(),
        "{notary}"
    );
    assert!(response["signatures"][&our_name].is_object(), "{notary}");
    let own: Value = http
        .post(format!("{our_federation}/_matrix/key/v2/query"))
        .json(&json!({ "server_keys": { our_name.clone(): {} } }))
        .send()
        .await
        .expect("notary query")
        .json()
        .await
        .expect("notary JSON");
    assert_eq!(
        own["server_keys"][0]["server_name"],
        our_name.as_str(),
        "{own}"
    );

    // Requests without a valid signature are refused, whatever they ask.
    let directory = format!(
        "{our_federation}/_matrix/federation/v1/query/directory?room_alias={}",
        encode(&our_alias)
    );
    let unsigned = http.get(&directory).send().await.expect("request");
    assert_eq!(unsigned.status(), 401);
    let body: Value = unsigned.json().await.expect("JSON");
    assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");
    let forged = format!(
        "X-Matrix origin=\"{}\",destination=\"{our_name}\",key=\"ed25519:a_test\",sig=\"dGhpcyBpcyBub3QgYSBzaWduYXR1cmUgYXQgYWxsLCBub3QgYXQgYWxsLCBubyBubyBubyBubw\"",
        synapse.server_name
    );
    let wrong_destination = format!(
        "X-Matrix origin=\"{}\",destination=\"elsewhere.example\",key=\"ed25519:a_test\",sig=\"dGhpcyBpcyBub3QgYSBzaWduYXR1cmUgYXQgYWxsLCBub3QgYXQgYWxsLCBubyBubyBubyBubw\"",
        synapse.server_name
    );
    let unknown_key = format!(
        "X-Matrix origin=\"{}\",destination=\"{our_name}\",key=\"ed25519:nope\",sig=\"dGhpcyBpcyBub3QgYSBzaWduYXR1cmUgYXQgYWxsLCBub3QgYXQgYWxsLCBubyBubyBubyBubw\"",
        synapse.server_name
    );
    for header in [
        forged,
        wrong_destination,
        unknown_key,
        "X-Matrix nonsense".to_owned(),
    ] {
        let reply = http
            .get(&directory)
            .header("authorization", &header)
            .send()
            .await
            .expect("request");
        assert_eq!(reply.status(), 401, "{header}");
        let body: Value = reply.json().await.expect("JSON");
        assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{header}: {body}");
    }
    let forged_keys = http
        .post(format!(
            "{our_federation}/_matrix/federation/v1/user/keys/claim"
        ))
        .json(&json!({ "one_time_keys": {} }))
        .send()
        .await
        .expect("request");
    assert_eq!(forged_keys.status(), 401);
    drop(ours);
}

/// Polls `client`'s `/keys/query` of `user_id` until `wanted` holds.
async fn until_keys(
    client: &Client,
    user_id: &str,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
    logs: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let query = query_keys(client, user_id).await;
        if wanted(&query.body) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never saw {what}: {query:?}\n{}",
            client.user_id,
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Long-polls `client`'s `/sync` from `since` until `user_id` is listed
/// in `device_lists.changed`; the `next_batch` that listed them.
async fn until_listed_changed(
    client: &Client,
    since: &str,
    user_id: &str,
    logs: impl Fn() -> String,
) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut since = since.to_owned();
    loop {
        let body = client.sync_all(Some(&since), 3_000).await;
        since = body["next_batch"].as_str().unwrap_or_default().to_owned();
        if body["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == user_id))
        {
            return since;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never heard that {user_id}'s keys changed\n{}",
            client.user_id,
            logs()
        );
    }
}

/// Our user's cross-signing keys on Synapse: Synapse's user, in a room
/// with ours, sees them (our `/user/devices` and `/user/keys/query`), sees
/// her device signed by her self-signing key once it is (an
/// `m.device_list_update` with the new signature), and hears of her new
/// keys when she replaces them (an `m.signing_key_update`, which Synapse
/// lists in `device_lists.changed` and stores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_cross_signing_keys_reach_synapse() {
    let (synapse, ours, our_name, _dirs) = crate::federation_queries::with_synapse().await;
    let logs = || crate::federation_queries::logs_with_synapse(&synapse, &ours);
    let alice = Client::register(&ours.base_url, "alice", "pw-alice-xs").await;
    let bob = synapse.register("bob", "pw-bob-xs").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let join = bob.join_via(&room_id, &our_name).await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    crate::federation_rooms::until_membership(&alice, &room_id, &bob.user_id, "join", logs).await;

    let (device, _) = cross_signing::upload_device_keys(&alice).await;
    let keys = CrossSigning::new(&alice.user_id);
    let uploaded = cross_signing::upload(&alice, "pw-alice-xs", &keys.body()).await;
    assert_eq!(uploaded.status, 200, "{uploaded:?}");
    until_keys(
        &bob,
        &alice.user_id,
        "her master and self-signing keys",
        |body| {
            body["master_keys"][&alice.user_id]["keys"] == keys.master_key["keys"]
                && body["self_signing_keys"][&alice.user_id]["keys"]
                    == keys.self_signing_key["keys"]
                && body["device_keys"][&alice.user_id][&alice.device_id]["keys"] == device["keys"]
        },
        logs,
    )
    .await;

    // Her device, signed by her self-signing key.
    let failures = cross_signing::upload_signatures(
        &alice,
        &json!({ alice.user_id.clone(): {
            alice.device_id.clone(): cross_signing::signed(&device, &alice.user_id, &keys.self_signing),
        } }),
    )
    .await;
    assert_eq!(failures, json!({}));
    let ssk = format!("ed25519:{}", keys.self_signing_public());
    until_keys(
        &bob,
        &alice.user_id,
        "her device signed by her self-signing key",
        |body| {
            body["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id]
                [&ssk]
                .is_string()
        },
        logs,
    )
    .await;

    // New keys: Synapse hears of them unasked.
    let since = bob.sync_all(None, 0).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let renewed = CrossSigning::new(&alice.user_id);
    let taken = cross_signing::upload(&alice, "pw-alice-xs", &renewed.body()).await;
    assert_eq!(taken.status, 200, "{taken:?}");
    until_listed_changed(&bob, &since, &alice.user_id, logs).await;
    until_keys(
        &bob,
        &alice.user_id,
        "her new master key",
        |body| body["master_keys"][&alice.user_id]["keys"] == renewed.master_key["keys"],
        logs,
    )
    .await;
}

/// The same between two of ours: a user of one server sees the other's
/// user's cross-signing keys, and hears of new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_signing_keys_between_two_ganglions() {
    let pair = GanglionPair::start().await;
    let logs = || pair.logs();
    let alice = Client::register(&pair.a.base_url, "alice", "pw-alice-xs2").await;
    let bob = Client::register(&pair.b.base_url, "bob", "pw-bob-xs2").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let join = bob.join_via(&room_id, &pair.a_name).await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    crate::federation_rooms::until_membership(&alice, &room_id, &bob.user_id, "join", logs).await;
    let since = bob.sync_all(None, 0).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let keys = CrossSigning::new(&alice.user_id);
    let uploaded = cross_signing::upload(&alice, "pw-alice-xs2", &keys.body()).await;
    assert_eq!(uploaded.status, 200, "{uploaded:?}");
    let since = until_listed_changed(&bob, &since, &alice.user_id, logs).await;
    let seen = query_keys(&bob, &alice.user_id).await;
    assert_eq!(
        seen.body["master_keys"][&alice.user_id], keys.master_key,
        "{seen:?}"
    );
    assert!(
        seen.body["user_signing_keys"][&alice.user_id].is_null(),
        "{seen:?}"
    );
    let renewed = CrossSigning::new(&alice.user_id);
    let taken = cross_signing::upload(&alice, "pw-alice-xs2", &renewed.body()).await;
    assert_eq!(taken.status, 200, "{taken:?}");
    until_listed_changed(&bob, &since, &alice.user_id, logs).await;
    let seen = query_keys(&bob, &alice.user_id).await;
    assert_eq!(
        seen.body["master_keys"][&alice.user_id], renewed.master_key,
        "{seen:?}"
    );
}
