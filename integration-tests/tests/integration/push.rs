//! Push: the push rules API (every change, every error the spec names),
//! the rules reaching clients through `/sync`, and the notification counts
//! following each user's own rules.

use ganglion_integration_tests::client::{Client, Reply, encode};
use reqwest::Method;
use serde_json::{Value, json};

const RULES: &str = "/_matrix/client/v3/pushrules";

async fn put(client: &Client, path: &str, body: Value) -> Reply {
    client
        .call(Method::PUT, &format!("{RULES}{path}"), Some(body))
        .await
}

async fn get(client: &Client, path: &str) -> Reply {
    client
        .call(Method::GET, &format!("{RULES}{path}"), None)
        .await
}

async fn delete(client: &Client, path: &str) -> Reply {
    client
        .call(Method::DELETE, &format!("{RULES}{path}"), None)
        .await
}

/// The rule IDs of one kind, in order.
fn ids(ruleset: &Value, kind: &str) -> Vec<String> {
    ruleset[kind]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|rule| rule["rule_id"].as_str().map(str::to_owned))
        .collect()
}

/// The global `m.push_rules` content in a sync response's account data.
fn synced_rules(body: &Value) -> Option<Value> {
    body["account_data"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .map(|e| e["content"]["global"].clone())
}

fn assert_error(reply: &Reply, status: u16, errcode: &str, what: &str) {
    assert_eq!(
        (reply.status, reply.errcode()),
        (status, errcode),
        "{what}: {reply:?}"
    );
}

/// Adding, placing, enabling, changing and removing rules, with the
/// spec's errors, and each change reaching the user's next `/sync`.
pub(crate) async fn push_rules_api(base_url: &str) {
    let alice = Client::register(base_url, "pra_alice", "pw-alice-pra").await;
    // A first sync carries the rules, before any change.
    let first = alice.sync_all(None, 0).await;
    let synced = synced_rules(&first).expect("m.push_rules in a first sync");
    assert_eq!(ids(&synced, "override")[0], ".m.rule.master", "{synced}");
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();

    // A new override rule: enabled, not a default, first after the master.
    let beer = json!({
        "conditions": [
            {"kind": "event_match", "key": "content.body", "pattern": "beer"},
            {"kind": "room_member_count", "is": "<=10"},
        ],
        "actions": ["notify", {"set_tweak": "sound", "value": "beeroclock.wav"}],
    });
    let added = put(&alice, "/global/override/beer", beer.clone()).await;
    assert_eq!((added.status, &added.body), (200, &json!({})), "{added:?}");
    let rule = get(&alice, "/global/override/beer").await;
    assert_eq!(rule.status, 200, "{rule:?}");
    assert_eq!(rule.body["enabled"], true);
    assert_eq!(rule.body["default"], false);
    assert_eq!(rule.body["conditions"], beer["conditions"]);
    assert_eq!(rule.body["actions"], beer["actions"]);
    let global = get(&alice, "/global/").await.body;
    assert_eq!(&ids(&global, "override")[..2], [".m.rule.master", "beer"]);
    // The change reaches the next sync, as account data.
    let next = alice.sync_all(Some(&since), 0).await;
    let synced = synced_rules(&next).expect("m.push_rules after a change");
    assert_eq!(synced, global);
    // And GET /account_data/m.push_rules answers the same rules.
    let user = encode(&alice.user_id);
    let content = alice
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/user/{user}/account_data/m.push_rules"),
            None,
        )
        .await;
    assert_eq!(content.body["global"], global, "{content:?}");
    // Which only the server writes.
    let written = alice
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/user/{user}/account_data/m.push_rules"),
            Some(json!({"global": {}})),
        )
        .await;
    assert_eq!(written.status, 405, "{written:?}");

    // Content rules, placed with before and after.
    for id in ["cake", "pie"] {
        let reply = put(
            &alice,
            &format!("/global/content/{id}"),
            json!({"pattern": id, "actions": ["notify"]}),
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let content_ids = |global: &Value| {
        ids(global, "content")
            .into_iter()
            .filter(|id| !id.starts_with('.'))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        content_ids(&get(&alice, "/global/").await.body),
        ["pie", "cake"]
    );
    let reply = put(
        &alice,
        "/global/content/tart?after=cake",
        json!({"pattern": "tart", "actions": []}),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = put(
        &alice,
        "/global/content/scone?before=pie",
        json!({"pattern": "scone", "actions": []}),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        content_ids(&get(&alice, "/global/").await.body),
        ["scone", "pie", "cake", "tart"]
    );

    // Room and sender rules are named by their room and user.
    let room_rule = format!("/global/room/{}", encode("!quiet:example.org"));
    let reply = put(&alice, &room_rule, json!({"actions": []})).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        get(&alice, &room_rule).await.body["rule_id"],
        "!quiet:example.org"
    );
    let sender_rule = format!("/global/sender/{}", encode("@spam:example.org"));
    assert_eq!(
        put(&alice, &sender_rule, json!({"actions": []}))
            .await
            .status,
        200
    );

    // Enabled and actions, of a user's rule and of a default one.
    let reply = put(
        &alice,
        "/global/override/beer/enabled",
        json!({"enabled": false}),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        get(&alice, "/global/override/beer/enabled").await.body,
        json!({"enabled": false})
    );
    // Replacing a disabled rule keeps it disabled and in its place.
    assert_eq!(
        put(&alice, "/global/override/beer", beer.clone())
            .await
            .status,
        200
    );
    assert_eq!(
        get(&alice, "/global/override/beer/enabled").await.body,
        json!({"enabled": false})
    );
    let loud = json!({"actions": ["notify", {"set_tweak": "highlight"}]});
    let reply = put(
        &alice,
        "/global/underride/.m.rule.message/actions",
        loud.clone(),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        get(&alice, "/global/underride/.m.rule.message/actions")
            .await
            .body,
        loud
    );
    // The historical actions are dropped.
    let reply = put(
        &alice,
        "/global/sender/%40spam%3Aexample.org/actions",
        json!({"actions": ["dont_notify", "coalesce"]}),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        get(&alice, &format!("{sender_rule}/actions")).await.body,
        json!({"actions": []})
    );

    // Removing.
    assert_eq!(delete(&alice, "/global/content/tart").await.status, 200);
    assert_error(
        &get(&alice, "/global/content/tart").await,
        404,
        "M_NOT_FOUND",
        "removed",
    );
    assert_error(
        &delete(&alice, "/global/content/tart").await,
        404,
        "M_NOT_FOUND",
        "removed twice",
    );
    let reply = delete(&alice, "/global/override/.m.rule.master").await;
    assert_eq!(reply.status, 400, "a default rule stays: {reply:?}");

    // The spec's errors.
    let notify = json!({"actions": ["notify"]});
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/global/override/.mine",
            notify.clone(),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "/global/override/a%2Fb",
            notify.clone(),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "/global/override/a%5Cb",
            notify.clone(),
            400,
            "M_INVALID_PARAM",
        ),
        ("/global/override/x", json!({}), 400, "M_INVALID_PARAM"),
        (
            "/global/override/x",
            json!({"actions": ["explode"]}),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "/global/override/x",
            json!({"actions": [], "conditions": [{"key": "type", "pattern": "x"}]}),
            400,
            "M_INVALID_PARAM",
        ),
        ("/global/content/x", notify.clone(), 400, "M_INVALID_PARAM"),
        (
            "/global/room/not-a-room",
            notify.clone(),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "/global/sender/not-a-user",
            notify.clone(),
            400,
            "M_INVALID_PARAM",
        ),
        ("/global/sideways/x", notify.clone(), 400, "M_INVALID_PARAM"),
        ("/device/override/x", notify.clone(), 400, "M_INVALID_PARAM"),
        ("/global/override/x", json!([1]), 400, "M_BAD_JSON"),
        (
            "/global/content/y?before=nowhere",
            json!({"pattern": "y", "actions": []}),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "/global/content/y?after=.m.rule.contains_user_name",
            json!({"pattern": "y", "actions": []}),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "/global/override/nope/enabled",
            json!({"enabled": true}),
            404,
            "M_NOT_FOUND",
        ),
        (
            "/global/override/beer/enabled",
            json!({"enabled": "yes"}),
            400,
            "M_BAD_JSON",
        ),
        (
            "/global/override/nope/actions",
            json!({"actions": []}),
            404,
            "M_NOT_FOUND",
        ),
        (
            "/global/override/beer/actions",
            json!({"actions": "notify"}),
            400,
            "M_BAD_JSON",
        ),
        (
            "/global/override/beer/colour",
            json!({}),
            400,
            "M_UNRECOGNIZED",
        ),
    ];
    for (path, body, status, errcode) in cases {
        assert_error(&put(&alice, path, body).await, status, errcode, path);
    }
    let not_json = ganglion_integration_tests::client::request(
        &alice.http,
        Method::PUT,
        &format!("{base_url}{RULES}/global/override/x"),
        Some(&alice.access_token),
        Some(b"{not json".to_vec()),
    )
    .await;
    assert_error(&not_json, 400, "M_NOT_JSON", "not JSON");
    let anonymous = ganglion_integration_tests::client::request(
        &alice.http,
        Method::PUT,
        &format!("{base_url}{RULES}/global/override/x"),
        None,
        Some(notify.to_string().into_bytes()),
    )
    .await;
    assert_error(&anonymous, 401, "M_MISSING_TOKEN", "no token");
    // None of the refused changes touched the rules.
    let after = get(&alice, "/global/").await.body;
    assert!(
        ids(&after, "override")
            .iter()
            .all(|id| id != "x" && id != ".mine")
    );
    assert!(!ids(&after, "content").contains(&"y".to_owned()));
}

fn unread(body: &Value, room_id: &str) -> Value {
    body["rooms"]["join"][room_id]["unread_notifications"].clone()
}

/// Notification counts follow each user's own rules: a muted room, a
/// keyword that highlights, the master switch.
pub(crate) async fn counts_follow_each_users_rules(base_url: &str) {
    let alice = Client::register(base_url, "prc_alice", "pw-alice-prc").await;
    let bob = Client::register(base_url, "prc_bob", "pw-bob-prc").await;
    let carol = Client::register(base_url, "prc_carol", "pw-carol-prc").await;
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    for user in [&bob, &carol] {
        assert_eq!(user.join(&room_id).await.status, 200);
    }
    // Bob mutes the room; Carol highlights on "cake".
    let mute = format!("/global/room/{}", encode(&room_id));
    assert_eq!(put(&bob, &mute, json!({"actions": []})).await.status, 200);
    let keyword = json!({"pattern": "cake", "actions": ["notify", {"set_tweak": "highlight"}]});
    assert_eq!(
        put(&carol, "/global/content/cake", keyword).await.status,
        200
    );
    assert_eq!(
        alice.send_text(&room_id, "c1", "hello all").await.status,
        200
    );
    assert_eq!(
        alice.send_text(&room_id, "c2", "cake at four").await.status,
        200
    );
    assert_eq!(
        unread(&bob.sync_all(None, 0).await, &room_id),
        json!({"notification_count": 0, "highlight_count": 0})
    );
    assert_eq!(
        unread(&carol.sync_all(None, 0).await, &room_id),
        json!({"notification_count": 2, "highlight_count": 1})
    );
    // Bob lifts the mute and turns everything off with the master rule:
    // still nothing. Then turns it back on: the next message counts.
    assert_eq!(delete(&bob, &mute).await.status, 200);
    let master = json!({"enabled": true});
    assert_eq!(
        put(&bob, "/global/override/.m.rule.master/enabled", master)
            .await
            .status,
        200
    );
    assert_eq!(alice.send_text(&room_id, "c3", "anyone").await.status, 200);
    assert_eq!(
        unread(&bob.sync_all(None, 0).await, &room_id),
        json!({"notification_count": 0, "highlight_count": 0})
    );
    let on = json!({"enabled": false});
    assert_eq!(
        put(&bob, "/global/override/.m.rule.master/enabled", on)
            .await
            .status,
        200
    );
    assert_eq!(
        alice.send_text(&room_id, "c4", "still there?").await.status,
        200
    );
    assert_eq!(
        unread(&bob.sync_all(None, 0).await, &room_id),
        json!({"notification_count": 1, "highlight_count": 0})
    );
}

/// Sets the users `client` ignores (`m.ignored_user_list`); the status.
async fn set_ignored(client: &Client, users: Value) -> u16 {
    client
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                encode(&client.user_id)
            ),
            Some(json!({ "ignored_users": users })),
        )
        .await
        .status
}

/// Sets a pusher of `client` at `gateway`; `format` as the pusher's data
/// gives it.
async fn set_pusher(client: &Client, url: &str, pushkey: &str, format: Option<&str>) -> Reply {
    let mut data = json!({"url": url});
    if let Some(format) = format {
        data["format"] = json!(format);
    }
    client
        .call(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(json!({
                "kind": "http",
                "app_id": "org.example.tests",
                "pushkey": pushkey,
                "app_display_name": "Tests",
                "device_display_name": "Test phone",
                "lang": "en",
                "data": data,
            })),
        )
        .await
}

async fn pushers(client: &Client) -> Vec<Value> {
    let reply = client
        .call(Method::GET, "/_matrix/client/v3/pushers", None)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["pushers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The notifications a gateway accepted for a pushkey about an event.
fn pushed<'a>(accepted: &'a [Value], pushkey: &str, event_id: &str) -> Vec<&'a Value> {
    accepted
        .iter()
        .filter(|n| n["event_id"] == event_id && n["devices"][0]["pushkey"] == pushkey)
        .collect()
}

fn event_id(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until the gateway took a notification for `pushkey` about
/// `event_id`; answers it.
async fn until_pushed(
    gateway: &ganglion_integration_tests::push_gateway::PushGateway,
    pushkey: &str,
    event_id: &str,
) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let accepted = gateway.accepted();
        if let Some(found) = pushed(&accepted, pushkey, event_id).first() {
            return (*found).clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no push for {pushkey} about {event_id}: {accepted:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Pushers and what reaches a push gateway: who is pushed for what under
/// the default rules and their own, in which format, with which tweaks;
/// retries when the gateway fails, pushers removed when it rejects their
/// pushkey, with their device, or by another user taking their pushkey.
/// The server must be allowed to reach loopback. Answers how many
/// notifications the gateway took.
pub(crate) async fn pushers_and_delivery(base_url: &str) -> usize {
    let gateway = ganglion_integration_tests::push_gateway::PushGateway::start().await;
    let url = gateway.url.clone();
    let alice = Client::register(base_url, "pd_alice", "pw-alice-pd").await;
    let bob = Client::register(base_url, "pd_bob", "pw-bob-pd").await;
    let carol = Client::register(base_url, "pd_carol", "pw-carol-pd").await;

    // The spec's errors, and nothing stored by them.
    let set = |body: Value| {
        let alice = alice.clone();
        async move {
            alice
                .call(Method::POST, "/_matrix/client/v3/pushers/set", Some(body))
                .await
        }
    };
    let good = json!({
        "kind": "http", "app_id": "org.example.tests", "pushkey": "alice-key",
        "app_display_name": "Tests", "device_display_name": "Phone", "lang": "en",
        "data": {"url": url},
    });
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        body
    };
    let without = |key: &str| {
        let mut body = good.clone();
        body.as_object_mut().expect("an object").remove(key);
        body
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (without("kind"), 400, "M_MISSING_PARAM"),
        (without("app_id"), 400, "M_MISSING_PARAM"),
        (without("pushkey"), 400, "M_MISSING_PARAM"),
        (without("lang"), 400, "M_MISSING_PARAM"),
        (without("data"), 400, "M_MISSING_PARAM"),
        (without("app_display_name"), 400, "M_MISSING_PARAM"),
        (
            with("kind", json!("carrier-pigeon")),
            400,
            "M_INVALID_PARAM",
        ),
        (
            with("data", json!({"url": "https://gw.example/elsewhere"})),
            400,
            "M_INVALID_PARAM",
        ),
        (
            with(
                "data",
                json!({"url": "ftp://gw.example/_matrix/push/v1/notify"}),
            ),
            400,
            "M_INVALID_PARAM",
        ),
        (with("data", json!({})), 400, "M_INVALID_PARAM"),
        (with("data", json!("url")), 400, "M_BAD_JSON"),
        (
            with("app_id", json!("a".repeat(65))),
            400,
            "M_INVALID_PARAM",
        ),
        (
            with("pushkey", json!("k".repeat(513))),
            400,
            "M_INVALID_PARAM",
        ),
        (with("append", json!("yes")), 400, "M_BAD_JSON"),
        (with("pushkey", json!(5)), 400, "M_BAD_JSON"),
    ];
    for (body, status, errcode) in cases {
        assert_error(&set(body.clone()).await, status, errcode, &body.to_string());
    }
    assert!(pushers(&alice).await.is_empty());

    // Pushers: Alice's (she is never pushed her own events), Bob's with
    // the whole event, Carol's with event IDs only.
    assert_eq!(set(good.clone()).await.status, 200);
    assert_eq!(set_pusher(&bob, &url, "bob-key", None).await.status, 200);
    assert_eq!(
        set_pusher(&carol, &url, "carol-key", Some("event_id_only"))
            .await
            .status,
        200
    );
    let bobs = pushers(&bob).await;
    assert_eq!(bobs.len(), 1, "{bobs:?}");
    assert_eq!(bobs[0]["pushkey"], "bob-key");
    assert_eq!(bobs[0]["kind"], "http");
    assert_eq!(bobs[0]["app_id"], "org.example.tests");
    assert_eq!(bobs[0]["lang"], "en");
    assert_eq!(bobs[0]["data"]["url"], url.as_str());

    let room_id = alice
        .create_room(json!({"preset": "public_chat", "name": "Push room"}))
        .await;
    for user in [&bob, &carol] {
        assert_eq!(user.join(&room_id).await.status, 200);
    }
    let hello = event_id(&alice.send_text(&room_id, "p1", "hello push").await);
    let to_bob = until_pushed(&gateway, "bob-key", &hello).await;
    assert_eq!(to_bob["room_id"], room_id.as_str());
    assert_eq!(to_bob["type"], "m.room.message");
    assert_eq!(to_bob["sender"], alice.user_id.as_str());
    assert_eq!(to_bob["content"]["body"], "hello push");
    assert_eq!(to_bob["room_name"], "Push room");
    assert_eq!(to_bob["prio"], "low");
    let device = &to_bob["devices"][0];
    assert_eq!(device["app_id"], "org.example.tests");
    assert!(
        device["pushkey_ts"]
            .as_i64()
            .is_some_and(|ts| ts > 1_600_000_000),
        "{device}"
    );
    assert_eq!(device["data"], json!({}), "the URL stays with us");
    assert_eq!(device["tweaks"], json!({}));
    let to_carol = until_pushed(&gateway, "carol-key", &hello).await;
    assert_eq!(to_carol["room_id"], room_id.as_str());
    assert!(
        to_carol.get("content").is_none() && to_carol.get("sender").is_none(),
        "{to_carol}"
    );
    assert_eq!(
        to_carol["devices"][0]["data"],
        json!({"format": "event_id_only"})
    );

    // A mention of Bob: highlighted, with a sound, high priority.
    let room = encode(&room_id);
    let mention = event_id(
        &alice
            .call(
                Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/p2"),
                Some(json!({"msgtype": "m.text", "body": "bob, look",
                            "m.mentions": {"user_ids": [bob.user_id]}})),
            )
            .await,
    );
    let to_bob = until_pushed(&gateway, "bob-key", &mention).await;
    assert_eq!(to_bob["prio"], "high");
    assert_eq!(
        to_bob["devices"][0]["tweaks"],
        json!({"highlight": true, "sound": "default"})
    );

    // Bob mutes the room: Carol is still pushed, Bob is not.
    let mute = format!("/global/room/{}", encode(&room_id));
    assert_eq!(put(&bob, &mute, json!({"actions": []})).await.status, 200);
    let quiet = event_id(&alice.send_text(&room_id, "p3", "quietly").await);
    until_pushed(&gateway, "carol-key", &quiet).await;
    // An invite pushes the invitee; Alice is never pushed her own events.
    let dave = Client::register(base_url, "pd_dave", "pw-dave-pd").await;
    assert_eq!(set_pusher(&dave, &url, "dave-key", None).await.status, 200);
    let invite = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(json!({"user_id": dave.user_id})),
        )
        .await;
    assert_eq!(invite.status, 200, "{invite:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let to_dave = loop {
        let accepted = gateway.accepted();
        if let Some(found) = accepted
            .iter()
            .find(|n| n["devices"][0]["pushkey"] == "dave-key" && n["type"] == "m.room.member")
        {
            break found.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no invite push: {accepted:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(to_dave["user_is_target"], true);
    assert_eq!(to_dave["content"]["membership"], "invite");
    let accepted = gateway.accepted();
    assert!(
        pushed(&accepted, "bob-key", &quiet).is_empty(),
        "Bob muted the room"
    );
    assert!(
        accepted
            .iter()
            .all(|n| n["devices"][0]["pushkey"] != "alice-key"),
        "Alice was pushed her own events"
    );
    // What Carol was pushed in the room is what her counts say.
    let carols = accepted
        .iter()
        .filter(|n| n["room_id"] == room_id.as_str() && n["devices"][0]["pushkey"] == "carol-key")
        .count();
    let counts = unread(&carol.sync_all(None, 0).await, &room_id);
    assert_eq!(counts["notification_count"], carols, "{counts}");
    // Each push carries her badge: what she was pushed for and has not
    // read, one more each time.
    let to_carol = until_pushed(&gateway, "carol-key", &quiet).await;
    assert_eq!(to_carol["counts"]["unread"], carols, "{to_carol}");
    // She reads the room: her phone hears of the new badge alone (no
    // event), and the next push counts from there.
    let receipt = carol
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/rooms/{room}/receipt/m.read/{}",
                encode(&quiet)
            ),
            Some(json!({})),
        )
        .await;
    assert_eq!(receipt.status, 200, "{receipt:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let badge = loop {
        let accepted = gateway.accepted();
        if let Some(found) = accepted
            .iter()
            .find(|n| n["devices"][0]["pushkey"] == "carol-key" && n.get("event_id").is_none())
        {
            break found.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no badge push: {accepted:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(badge["counts"], json!({"unread": 0}), "{badge}");
    assert!(badge.get("room_id").is_none(), "{badge}");

    // A failing gateway is tried again until it takes the notification.
    gateway.fail_next(2, 503);
    let before = gateway.requests();
    let retried = event_id(&alice.send_text(&room_id, "p4", "after a failure").await);
    let to_carol = until_pushed(&gateway, "carol-key", &retried).await;
    assert_eq!(
        to_carol["counts"]["unread"], 1,
        "counted from her receipt on"
    );
    assert!(
        gateway.requests() >= before + 3,
        "two failures, then the push"
    );

    // Carol ignores Alice: not pushed for her while she does (pushes go
    // out in order, so the one after shows the one before never will).
    assert_eq!(
        set_ignored(&carol, json!({ alice.user_id.clone(): {} })).await,
        200
    );
    let unheard = event_id(&alice.send_text(&room_id, "p4i", "while ignored").await);
    assert_eq!(set_ignored(&carol, json!({})).await, 200);
    let heard = event_id(&alice.send_text(&room_id, "p4h", "heard again").await);
    until_pushed(&gateway, "carol-key", &heard).await;
    assert!(pushed(&gateway.accepted(), "carol-key", &unheard).is_empty());

    // A pushkey the gateway rejects loses its pusher.
    gateway.reject("carol-key");
    let rejected = event_id(&alice.send_text(&room_id, "p5", "rejected").await);
    until_pushed(&gateway, "carol-key", &rejected).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !pushers(&carol).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the rejected pusher stayed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Another user setting the same app and pushkey takes it over, unless
    // appending.
    assert_eq!(set_pusher(&carol, &url, "bob-key", None).await.status, 200);
    assert!(pushers(&bob).await.is_empty(), "taken over by Carol");
    assert_eq!(set_pusher(&bob, &url, "bob-key", None).await.status, 200);
    assert!(pushers(&carol).await.is_empty(), "taken back by Bob");
    let mut appended = good.clone();
    appended["pushkey"] = json!("bob-key");
    appended["append"] = json!(true);
    assert_eq!(set(appended).await.status, 200);
    assert_eq!(pushers(&bob).await.len(), 1, "appending keeps Bob's");
    assert_eq!(pushers(&alice).await.len(), 2);

    // Removing with a null kind.
    let removed = bob
        .call(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(json!({"kind": null, "app_id": "org.example.tests", "pushkey": "bob-key"})),
        )
        .await;
    assert_eq!(removed.status, 200, "{removed:?}");
    assert!(pushers(&bob).await.is_empty());

    // A pusher goes with the device that set it.
    let second = crate::devices::login(base_url, "pd_dave", "pw-dave-pd", "second").await;
    assert_eq!(
        set_pusher(&second, &url, "dave-second", None).await.status,
        200
    );
    assert_eq!(pushers(&dave).await.len(), 2);
    let logout = second
        .call(Method::POST, "/_matrix/client/v3/logout", Some(json!({})))
        .await;
    assert_eq!(logout.status, 200, "{logout:?}");
    let left: Vec<Value> = pushers(&dave).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["pushkey"], "dave-key");

    // No event was pushed to a pushkey twice.
    let accepted = gateway.accepted();
    let mut seen = std::collections::HashSet::new();
    for notification in &accepted {
        let key = (
            notification["event_id"].to_string(),
            notification["devices"][0]["pushkey"].to_string(),
        );
        assert!(seen.insert(key.clone()), "pushed twice: {key:?}");
    }
    accepted.len()
}

/// `GET /notifications`: what notified the user, newest first, read or
/// not as receipts say, with the actions that notified, in pages.
pub(crate) async fn notifications_list(base_url: &str) {
    let alice = Client::register(base_url, "nl_alice", "pw-alice-nl").await;
    let bob = Client::register(base_url, "nl_bob", "pw-bob-nl").await;
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room_id).await.status, 200);
    let room = encode(&room_id);
    let first = event_id(&alice.send_text(&room_id, "n1", "one").await);
    let second = event_id(
        &alice
            .call(
                Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/n2"),
                Some(json!({"msgtype": "m.text", "body": "two, bob",
                            "m.mentions": {"user_ids": [bob.user_id]}})),
            )
            .await,
    );
    let third = event_id(&alice.send_text(&room_id, "n3", "three").await);
    let list = |query: String| {
        let bob = bob.clone();
        async move {
            bob.call(
                Method::GET,
                &format!("/_matrix/client/v3/notifications{query}"),
                None,
            )
            .await
        }
    };
    let ids = |reply: &Reply| -> Vec<String> {
        reply.body["notifications"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                n["event"]["event_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    // Bob's syncapi may be behind Alice's writes (the polylith): wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let all = loop {
        let all = list(String::new()).await;
        assert_eq!(all.status, 200, "{all:?}");
        if ids(&all).len() >= 3 || std::time::Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(ids(&all), [third.clone(), second.clone(), first.clone()]);
    let notifications = all.body["notifications"].as_array().expect("notifications");
    for notification in notifications {
        assert_eq!(notification["read"], false);
        assert_eq!(notification["room_id"], room_id.as_str());
        assert!(notification["ts"].as_i64().is_some_and(|ts| ts > 0));
        assert_eq!(notification["actions"][0], "notify");
        assert_eq!(notification["event"]["room_id"], room_id.as_str());
    }
    assert_eq!(notifications[1]["event"]["content"]["body"], "two, bob");
    assert!(
        notifications[1]["actions"]
            .as_array()
            .is_some_and(|a| a.contains(&json!({"set_tweak": "highlight", "value": true}))),
        "{}",
        notifications[1]
    );
    assert!(all.body.get("next_token").is_none(), "{:?}", all.body);
    // Highlights only.
    assert_eq!(
        ids(&list("?only=highlight".into()).await),
        [second.as_str()]
    );
    // In pages.
    let page = list("?limit=2".into()).await;
    assert_eq!(ids(&page), [third.clone(), second.clone()]);
    let next = page.body["next_token"]
        .as_str()
        .expect("next_token")
        .to_owned();
    let rest = list(format!("?limit=2&from={}", encode(&next))).await;
    assert_eq!(ids(&rest), [first.as_str()]);
    assert!(rest.body.get("next_token").is_none());
    // A receipt reads what it covers; the counts agree.
    let receipt = bob
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/rooms/{room}/receipt/m.read/{}",
                encode(&second)
            ),
            Some(json!({})),
        )
        .await;
    assert_eq!(receipt.status, 200, "{receipt:?}");
    let read: Vec<bool> = list(String::new()).await.body["notifications"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| n["read"].as_bool().unwrap_or_default())
        .collect();
    assert_eq!(read, [false, true, true]);
    assert_eq!(
        unread(&bob.sync_all(None, 0).await, &room_id),
        json!({"notification_count": 1, "highlight_count": 0})
    );
    // Errors.
    assert_error(
        &list("?from=nonsense".into()).await,
        400,
        "M_INVALID_PARAM",
        "bad from",
    );
    let anonymous = ganglion_integration_tests::client::request(
        &bob.http,
        Method::GET,
        &format!("{base_url}/_matrix/client/v3/notifications"),
        None,
        None,
    )
    .await;
    assert_error(&anonymous, 401, "M_MISSING_TOKEN", "no token");
}

fn timeline_bodies(sync: &Value, room_id: &str) -> Vec<String> {
    sync["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// Ignoring users (`m.ignored_user_list`): what they send but state leaves
/// the ignorer's `/sync`, `/messages`, `/context` and `/event`, never
/// notifies them, and their invites are not shown; un-ignored, their new
/// events come through again.
pub(crate) async fn ignoring_users(base_url: &str) {
    let alice = Client::register(base_url, "ig_alice", "pw-alice-ig").await;
    let bob = Client::register(base_url, "ig_bob", "pw-bob-ig").await;
    let carol = Client::register(base_url, "ig_carol", "pw-carol-ig").await;
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    for user in [&bob, &carol] {
        assert_eq!(user.join(&room_id).await.status, 200);
    }
    assert_eq!(
        set_ignored(&carol, json!({ bob.user_id.clone(): {} })).await,
        200
    );
    let from_bob = event_id(&bob.send_text(&room_id, "i1", "from bob").await);
    let from_alice = event_id(&alice.send_text(&room_id, "i2", "from alice").await);
    let room = encode(&room_id);
    let renamed = bob
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
                encode(&bob.user_id)
            ),
            Some(json!({"membership": "join", "displayname": "Bobby Tables"})),
        )
        .await;
    assert_eq!(renamed.status, 200, "{renamed:?}");

    let first = carol.sync_all(None, 0).await;
    assert_eq!(timeline_bodies(&first, &room_id), ["from alice"]);
    let timeline = first["rooms"]["join"][&room_id]["timeline"]["events"].to_string();
    assert!(timeline.contains("Bobby Tables"), "state stays: {timeline}");
    assert_eq!(
        unread(&first, &room_id),
        json!({"notification_count": 1, "highlight_count": 0}),
        "Bob's message does not notify Carol"
    );
    // /messages, /context and /event hide it too.
    let messages = carol
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
            None,
        )
        .await;
    let bodies = ganglion_integration_tests::client::message_bodies(&messages.body["chunk"]);
    assert!(bodies.contains(&"from alice".to_owned()), "{bodies:?}");
    assert!(!bodies.contains(&"from bob".to_owned()), "{bodies:?}");
    assert!(messages.body["chunk"].to_string().contains("Bobby Tables"));
    let context = carol
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{room}/context/{}?limit=10",
                encode(&from_alice)
            ),
            None,
        )
        .await;
    assert_eq!(context.status, 200, "{context:?}");
    assert!(
        !context.body.to_string().contains("from bob"),
        "{context:?}"
    );
    let hidden = carol
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{room}/event/{}",
                encode(&from_bob)
            ),
            None,
        )
        .await;
    assert_eq!(hidden.status, 404, "{hidden:?}");
    // Alice, who ignores nobody, sees it all.
    assert_eq!(
        timeline_bodies(&alice.sync_all(None, 0).await, &room_id),
        ["from bob", "from alice"]
    );

    // An invite from Bob is not shown to Carol.
    let bobs_room = bob.create_room(json!({"preset": "private_chat"})).await;
    let invite = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", encode(&bobs_room)),
            Some(json!({"user_id": carol.user_id})),
        )
        .await;
    assert_eq!(invite.status, 200, "{invite:?}");
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();
    let later = carol.sync_all(Some(&since), 0).await;
    assert!(
        later["rooms"]["invite"].get(&bobs_room).is_none(),
        "{later}"
    );
    assert!(
        carol.sync_all(None, 0).await["rooms"]["invite"]
            .get(&bobs_room)
            .is_none()
    );
    // Nor in sliding sync: not in a list, not counted.
    let sliding = carol
        .call(
            Method::POST,
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            Some(json!({"lists": {"all": {"ranges": [[0, 20]], "timeline_limit": 1}}})),
        )
        .await;
    assert_eq!(sliding.status, 200, "{sliding:?}");
    assert!(
        sliding.body["rooms"].get(&bobs_room).is_none(),
        "{sliding:?}"
    );
    assert_eq!(sliding.body["lists"]["all"]["count"], 1, "{sliding:?}");

    // Un-ignored: Bob's new messages come through again.
    assert_eq!(set_ignored(&carol, json!({})).await, 200);
    let since = later["next_batch"].as_str().expect("next_batch").to_owned();
    assert_eq!(bob.send_text(&room_id, "i3", "bob again").await.status, 200);
    let again = carol.sync_all(Some(&since), 0).await;
    assert_eq!(timeline_bodies(&again, &room_id), ["bob again"]);
}
