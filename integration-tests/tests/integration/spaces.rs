//! Spaces (`GET /rooms/{roomId}/hierarchy`): a space's tree depth first,
//! in the spec's child order, as far as the user may see it; pages whose
//! parameters cannot change; loops broken; and across federation both
//! ways with a real Synapse (`GET /hierarchy/{roomId}`).

use std::time::Duration;

use ganglion_integration_tests::client::{Client, Reply, encode};
use reqwest::Method;
use serde_json::{Value, json};

async fn hierarchy(client: &Client, room_id: &str, query: &str) -> Reply {
    client
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v1/rooms/{}/hierarchy{query}",
                encode(room_id)
            ),
            None,
        )
        .await
}

/// The room IDs of a hierarchy page, in order.
fn ids(reply: &Reply) -> Vec<String> {
    reply.body["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|room| room["room_id"].as_str().map(str::to_owned))
        .collect()
}

/// The rooms of a hierarchy once it shows exactly `expected` (a view may
/// lag behind a write in the polylith).
async fn until_rooms(client: &Client, space: &str, query: &str, expected: &[&str]) -> Reply {
    until_rooms_or_logs(client, space, query, expected, &String::new).await
}

/// [`until_rooms`], with the servers' logs on failure.
async fn until_rooms_or_logs(
    client: &Client,
    space: &str,
    query: &str,
    expected: &[&str],
    logs: &dyn Fn() -> String,
) -> Reply {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = hierarchy(client, space, query).await;
        if reply.status == 200 && ids(&reply) == expected {
            return reply;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{query}: {reply:?}, not {expected:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn add_child(admin: &Client, space: &str, child: &str, content: Value) {
    let reply = admin
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                encode(space),
                encode(child)
            ),
            Some(content),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

async fn create_space(client: &Client, name: &str, preset: &str) -> String {
    client
        .create_room(json!({
            "preset": preset,
            "name": name,
            "creation_content": {"type": "m.space"},
        }))
        .await
}

/// A public space of `owner`'s on `server` with two children: a public
/// room ("{prefix} room", first) and an invite-only one. Their IDs.
async fn space_of_two(owner: &Client, server: &str, prefix: &str) -> (String, String, String) {
    let space = create_space(owner, &format!("{prefix} space"), "public_chat").await;
    let public = owner
        .create_room(json!({"preset": "public_chat", "name": format!("{prefix} room")}))
        .await;
    let private = owner
        .create_room(json!({"preset": "private_chat", "name": format!("{prefix} secret")}))
        .await;
    for (child, order) in [(&public, "1"), (&private, "2")] {
        add_child(
            owner,
            &space,
            child,
            json!({"via": [server], "order": order}),
        )
        .await;
    }
    (space, public, private)
}

/// A room whose join rule lets the members of `space` in.
async fn create_restricted(client: &Client, name: &str, space: &str) -> String {
    client
        .create_room(json!({
            "preset": "private_chat",
            "name": name,
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": {"join_rule": "restricted", "allow": [
                    {"type": "m.room_membership", "room_id": space}
                ]}
            }],
        }))
        .await
}

fn server_of(user_id: &str) -> &str {
    user_id
        .split_once(':')
        .map(|(_, server)| server)
        .unwrap_or_default()
}

pub(crate) async fn space_hierarchy(base_url: &str) {
    let alice = Client::register(base_url, "sp_alice", "pw-sp-alice").await;
    let bob = Client::register(base_url, "sp_bob", "pw-sp-bob").await;
    let carol = Client::register(base_url, "sp_carol", "pw-sp-carol").await;
    let server = server_of(&alice.user_id).to_owned();
    let via = json!([server]);

    let space = create_space(&alice, "Space", "public_chat").await;
    let sub = create_space(&alice, "Subspace", "public_chat").await;
    let public = alice
        .create_room(json!({"preset": "public_chat", "name": "Alpha", "topic": "first"}))
        .await;
    let private = alice
        .create_room(json!({"preset": "private_chat", "name": "Private"}))
        .await;
    let shared = alice
        .create_room(json!({"preset": "private_chat", "name": "Shared", "invite": [bob.user_id]}))
        .await;
    assert_eq!(bob.join(&shared).await.status, 200);
    let nested = alice
        .create_room(json!({"preset": "public_chat", "name": "Charlie"}))
        .await;
    let restricted = create_restricted(&alice, "Members of the space", &space).await;
    add_child(
        &alice,
        &space,
        &sub,
        json!({"via": via, "order": "a", "suggested": true}),
    )
    .await;
    add_child(
        &alice,
        &space,
        &public,
        json!({"via": via, "order": "b", "suggested": true}),
    )
    .await;
    add_child(&alice, &space, &private, json!({"via": via})).await;
    add_child(&alice, &space, &shared, json!({"via": via})).await;
    add_child(&alice, &space, &restricted, json!({"via": via})).await;
    // Not children: no via, an empty via, a via that is no server name.
    let stray = alice.create_room(json!({"preset": "public_chat"})).await;
    add_child(&alice, &space, &stray, json!({})).await;
    add_child(
        &alice,
        &space,
        &format!("!gone:{server}"),
        json!({"via": []}),
    )
    .await;
    add_child(
        &alice,
        &space,
        &format!("!bad:{server}"),
        json!({"via": ["not a server!"]}),
    )
    .await;
    // A room nobody here knows (no server to ask but ourselves): left out.
    add_child(
        &alice,
        &space,
        &format!("!nowhere:{server}"),
        json!({"via": via}),
    )
    .await;
    add_child(&alice, &sub, &nested, json!({"via": via})).await;
    // A loop back to the top.
    add_child(&alice, &sub, &space, json!({"via": via})).await;
    assert_eq!(bob.join(&space).await.status, 200);

    // Depth first, children in order (`order` first, then timestamp); the
    // private room Bob is not in is left out, the one he is in is shown;
    // the restricted one too, as he is in the space it allows.
    let expected = [
        space.as_str(),
        sub.as_str(),
        nested.as_str(),
        public.as_str(),
        shared.as_str(),
        restricted.as_str(),
    ];
    let whole = until_rooms(&bob, &space, "", &expected).await;
    assert!(whole.body.get("next_batch").is_none(), "{whole:?}");
    let rooms = whole.body["rooms"].as_array().expect("present");
    let top = &rooms[0];
    assert_eq!(top["name"], "Space");
    assert_eq!(top["room_type"], "m.space");
    assert_eq!(top["join_rule"], "public");
    assert_eq!(top["num_joined_members"], 2);
    assert_eq!(top["world_readable"], false);
    assert_eq!(top["guest_can_join"], false);
    assert!(top.get("allowed_room_ids").is_none(), "{top}");
    let children: Vec<&str> = top["children_state"]
        .as_array()
        .expect("present")
        .iter()
        .map(|child| child["state_key"].as_str().expect("present"))
        .collect();
    for child in [&sub, &public, &private, &shared, &restricted] {
        assert!(children.contains(&child.as_str()), "{child}: {children:?}");
    }
    assert!(!children.contains(&stray.as_str()), "{children:?}");
    assert!(
        !children
            .iter()
            .any(|c| c.starts_with("!gone") || c.starts_with("!bad"))
    );
    let first = &top["children_state"][0];
    assert_eq!(first["type"], "m.space.child");
    assert_eq!(first["sender"], alice.user_id.as_str());
    assert!(first["origin_server_ts"].is_u64(), "{first}");
    assert_eq!(first["content"]["via"], via);
    let alpha = &rooms[3];
    assert_eq!(alpha["name"], "Alpha");
    assert_eq!(alpha["topic"], "first");
    assert_eq!(alpha["children_state"], json!([]));
    assert!(alpha.get("room_type").is_none(), "{alpha}");
    assert_eq!(rooms[5]["join_rule"], "restricted");

    // Pages of two, then the rest; a token carries its walk on.
    let first_page = hierarchy(&bob, &space, "?limit=2").await;
    assert_eq!(ids(&first_page), &expected[..2], "{first_page:?}");
    let token = first_page.body["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let second = hierarchy(&bob, &space, &format!("?limit=2&from={}", encode(&token))).await;
    assert_eq!(ids(&second), &expected[2..4], "{second:?}");
    let token2 = second.body["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let third = hierarchy(&bob, &space, &format!("?limit=2&from={}", encode(&token2))).await;
    assert_eq!(ids(&third), &expected[4..], "{third:?}");
    assert!(third.body.get("next_batch").is_none(), "{third:?}");

    // suggested_only and max_depth may not change between pages; a token
    // the server never gave is refused; limit and max_depth are checked.
    for query in [
        format!("?limit=2&suggested_only=true&from={}", encode(&token)),
        format!("?limit=2&max_depth=3&from={}", encode(&token)),
        "?from=nonsense".to_owned(),
        "?limit=0".to_owned(),
        "?limit=-1".to_owned(),
        "?limit=many".to_owned(),
        "?max_depth=-1".to_owned(),
        "?suggested_only=perhaps".to_owned(),
    ] {
        let reply = hierarchy(&bob, &space, &query).await;
        assert_eq!(reply.status, 400, "{query}: {reply:?}");
        assert_eq!(reply.errcode(), "M_INVALID_PARAM", "{query}: {reply:?}");
    }

    // How deep: the space alone, then its children without grandchildren.
    until_rooms(&bob, &space, "?max_depth=0", &[space.as_str()]).await;
    until_rooms(
        &bob,
        &space,
        "?max_depth=1",
        &[&space, &sub, &public, &shared, &restricted],
    )
    .await;
    // Suggested children only (and only they in children_state).
    let suggested = until_rooms(
        &bob,
        &space,
        "?suggested_only=true",
        &[&space, &sub, &public],
    )
    .await;
    assert_eq!(
        suggested.body["rooms"][0]["children_state"]
            .as_array()
            .expect("present")
            .len(),
        2,
        "{suggested:?}"
    );

    // Carol is in nothing: the public space shows her the public rooms
    // only (not the restricted one, not the shared one).
    until_rooms(&carol, &space, "", &[&space, &sub, &nested, &public]).await;
    // A private space she is not in, and a room that does not exist: 403.
    let hidden = create_space(&alice, "Hidden", "private_chat").await;
    for room in [hidden.clone(), format!("!unknown:{server}")] {
        let reply = hierarchy(&carol, &room, "").await;
        assert_eq!(reply.status, 403, "{reply:?}");
        assert_eq!(reply.errcode(), "M_FORBIDDEN", "{reply:?}");
    }
    // Not a room ID at all.
    let reply = hierarchy(&carol, "not-a-room", "").await;
    assert_eq!(reply.status, 400, "{reply:?}");
    // Alice, in the hidden space, sees it.
    until_rooms(&alice, &hidden, "", &[&hidden]).await;

    // A child whose event loses its via leaves the space.
    add_child(&alice, &space, &public, json!({})).await;
    until_rooms(&carol, &space, "", &[&space, &sub, &nested]).await;
}

/// Both ways with Synapse: our user walks a Synapse space whose rooms we
/// are not in (our server asks Synapse), and a Synapse user walks ours
/// (Synapse asks us).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_hierarchy_across_federation_with_synapse() {
    let (synapse, ours, our_name, _dirs) = crate::federation_queries::with_synapse().await;
    let logs = || crate::federation_queries::logs_with_synapse(&synapse, &ours);
    let alice = Client::register(&ours.base_url, "alice", "pw-alice-spaces").await;
    let sam = synapse.register("sam", "pw-sam-spaces").await;

    // Synapse's space: a public room, an invite-only one and two public
    // spaces with a room each, none with anyone of ours in them (the two
    // sub-spaces are asked about together).
    let (their_space, their_room, _) = space_of_two(&sam, &synapse.server_name, "Their").await;
    let mut subs = Vec::new();
    for (name, order) in [("A", "3"), ("B", "4")] {
        let sub = create_space(&sam, &format!("Sub {name}"), "public_chat").await;
        let room = sam
            .create_room(json!({"preset": "public_chat", "name": format!("{name} room")}))
            .await;
        add_child(&sam, &sub, &room, json!({"via": [synapse.server_name]})).await;
        add_child(
            &sam,
            &their_space,
            &sub,
            json!({"via": [synapse.server_name], "order": order}),
        )
        .await;
        subs.push((sub, room));
    }
    let join = alice.join_via(&their_space, &synapse.server_name).await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    let reply = until_rooms_or_logs(
        &alice,
        &their_space,
        "",
        &[
            &their_space,
            &their_room,
            &subs[0].0,
            &subs[0].1,
            &subs[1].0,
            &subs[1].1,
        ],
        &logs,
    )
    .await;
    assert_eq!(reply.body["rooms"][5]["name"], "B room", "{reply:?}");
    let room = &reply.body["rooms"][1];
    assert_eq!(room["name"], "Their room", "{reply:?}");
    assert_eq!(room["join_rule"], "public");
    assert_eq!(room["num_joined_members"], 1);

    // Our space, walked from Synapse: a public room and a private one.
    let (our_space, our_room, _) = space_of_two(&alice, &our_name, "Our").await;
    let join = sam.join_via(&our_space, &our_name).await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    let reply = until_rooms_or_logs(&sam, &our_space, "", &[&our_space, &our_room], &logs).await;
    assert_eq!(reply.body["rooms"][1]["name"], "Our room", "{reply:?}");
}

/// Our `GET /hierarchy/{roomId}` as another server sees it: only to a
/// signed request; a space and its children as far as the asking server
/// could peek or join them (a restricted room once it has a user in the
/// room that lets members in), the rest listed as inaccessible; rooms we
/// do not have, or it could not reach, 404 `M_NOT_FOUND`.
#[tokio::test]
async fn our_hierarchy_answers_other_servers() {
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let fake = ganglion_integration_tests::fake_server::FakeServer::start(dirs[0].path()).await;
    let (ours, our_name) =
        ganglion_integration_tests::process::Monolith::federating(dirs[1].path()).await;
    let base = format!(
        "https://127.0.0.1:{}",
        our_name
            .rsplit_once(':')
            .map(|(_, p)| p)
            .unwrap_or_default()
    );
    let logs = || ours.process.log_tail();
    let alice = Client::register(&ours.base_url, "alice", "pw-alice-fedspace").await;
    let via = json!([our_name]);
    let (space, public, private) = space_of_two(&alice, &our_name, "Open").await;
    let restricted = create_restricted(&alice, "Restricted", &space).await;
    add_child(
        &alice,
        &space,
        &public,
        json!({"via": via, "order": "1", "suggested": true}),
    )
    .await;
    add_child(&alice, &space, &restricted, json!({"via": via})).await;
    add_child(
        &alice,
        &space,
        "!unknown:elsewhere.test",
        json!({"via": ["elsewhere.test"]}),
    )
    .await;
    let hidden = create_space(&alice, "Hidden", "private_chat").await;

    let ask = |room: &str, query: &str| {
        let path = format!("/_matrix/federation/v1/hierarchy/{}{query}", encode(room));
        let (fake, base, our_name) = (&fake, base.clone(), our_name.clone());
        async move {
            fake.request(&base, &our_name, Method::GET, &path, None)
                .await
        }
    };
    let (status, body) = ask(&space, "").await;
    assert_eq!(status, 200, "{body}\n{}", logs());
    assert_eq!(body["room"]["room_id"], space.as_str());
    assert_eq!(body["room"]["room_type"], "m.space");
    assert_eq!(body["room"]["allowed_room_ids"], json!([]));
    assert_eq!(
        body["room"]["children_state"]
            .as_array()
            .expect("present")
            .len(),
        4,
        "{body}"
    );
    let children: Vec<&str> = body["children"]
        .as_array()
        .expect("present")
        .iter()
        .filter_map(|c| c["room_id"].as_str())
        .collect();
    assert_eq!(children, [public.as_str()], "{body}");
    assert_eq!(body["children"][0]["name"], "Open room");
    let mut inaccessible: Vec<&str> = body["inaccessible_children"]
        .as_array()
        .expect("present")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    inaccessible.sort_unstable();
    let mut expected = [private.as_str(), restricted.as_str()];
    expected.sort_unstable();
    assert_eq!(inaccessible, expected, "{body}");

    // Suggested children only.
    let (status, body) = ask(&space, "?suggested_only=true").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["room"]["children_state"]
            .as_array()
            .expect("present")
            .len(),
        1,
        "{body}"
    );
    assert_eq!(body["inaccessible_children"], json!([]), "{body}");
    let (status, body) = ask(&space, "?suggested_only=perhaps").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );

    // Rooms it cannot reach or we do not have: 404.
    for room in [
        hidden.clone(),
        format!("!nothing:{our_name}"),
        private.clone(),
    ] {
        let (status, body) = ask(&room, "").await;
        assert_eq!(status, 404, "{room}: {body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND", "{body}");
    }
    // Unsigned: 401.
    let unsigned = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("present")
        .get(format!(
            "{base}/_matrix/federation/v1/hierarchy/{}",
            encode(&space)
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(unsigned.status(), 401);

    // Once one of its users is in the space, the restricted room is open
    // to the fake server.
    let member = format!("@visitor:{}", fake.server_name);
    fake.join_room((&base, &our_name), &space, &member).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = ask(&restricted, "").await;
        if status == 200 {
            assert_eq!(body["room"]["join_rule"], "restricted");
            assert_eq!(body["room"]["allowed_room_ids"], json!([space]), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{status} {body}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
