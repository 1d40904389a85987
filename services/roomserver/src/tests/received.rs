//! The roomserver receiving a hand-built DAG through its input topic, as
//! federation will feed it: accepted, duplicate, soft-failed, rejected and
//! outlier events, a fork merged by state resolution, and what reaches
//! `roomserver.output`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ganglion_api::proto::roomserver as pb;
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::roomserver::RoomserverApi;
use ganglion_api::topics::{Topics, decode};
use ganglion_base::Config;
use ganglion_log::Log;
use tokio::sync::watch;

use super::{ALICE, BOB, CAROL, Dag, after};
use crate::RoomserverService;
use crate::events::Pdu;

pub(super) struct Running {
    pub(super) service: Arc<RoomserverService>,
    log: Arc<dyn Log>,
    topics: Topics,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

pub(super) async fn start() -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        server_name: "localhost".into(),
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let log: Arc<dyn Log> =
        Arc::new(ganglion_log::EmbeddedLog::open(dir.path().join("log")).expect("log"));
    let key = Arc::new(ganglion_base::keys::load_or_generate_signing_key(&config).expect("key"));
    let (stop, shutdown) = watch::channel(false);
    let started = crate::start(
        &config,
        log.clone(),
        key,
        "local".into(),
        ganglion_base::internal_auth::InternalSecret::ephemeral(),
        shutdown,
    )
    .await
    .expect("roomserver starts");
    Running {
        service: started.api,
        log,
        topics: Topics::new(&config.log.topic_prefix),
        _stop: stop,
        _dir: dir,
    }
}

fn input(kind: pb::input_pdu::Kind, pdu: &Pdu) -> pb::InputPdu {
    pb::InputPdu {
        kind: kind as i32,
        event_json: pdu.json.as_bytes().to_vec(),
        ..Default::default()
    }
}

async fn send(
    running: &Running,
    dag: &Dag,
    version: &str,
    pdus: Vec<pb::InputPdu>,
) -> HashMap<String, String> {
    let response = running
        .service
        .input_pdus(pb::InputPdusRequest {
            room_id: dag.room_id.clone(),
            room_version: version.into(),
            pdus,
        })
        .await
        .expect("input answered");
    response
        .outcomes
        .into_iter()
        .map(|o| (o.event_id, o.outcome))
        .collect()
}

pub(super) async fn current_state(
    running: &Running,
    room_id: &str,
) -> HashMap<(String, String), String> {
    let state = running
        .service
        .query_state(pb::QueryStateRequest {
            room_id: room_id.into(),
            event_id: String::new(),
        })
        .await
        .expect("state");
    state
        .state_events_json
        .iter()
        .zip(&state.state_event_ids)
        .map(|(json, id)| {
            let event: serde_json::Value = serde_json::from_slice(json).expect("json");
            (
                (
                    event["type"].as_str().unwrap_or_default().to_owned(),
                    event["state_key"].as_str().unwrap_or_default().to_owned(),
                ),
                id.clone(),
            )
        })
        .collect()
}

async fn extremities(running: &Running, room_id: &str) -> Vec<String> {
    let mut ids = running
        .service
        .query_forward_extremities(pb::QueryForwardExtremitiesRequest {
            room_id: room_id.into(),
        })
        .await
        .expect("extremities")
        .event_ids;
    ids.sort();
    ids
}

/// Every record of `roomserver.output` so far, decoded.
pub(super) async fn all_outputs(running: &Running) -> Vec<topic_pb::RoomserverOutput> {
    let ends = running
        .log
        .end_offsets(&running.topics.roomserver_output)
        .await
        .expect("ends");
    let total: u64 = ends.iter().sum();
    let mut reader = running
        .log
        .reader(&[(&running.topics.roomserver_output, vec![0; ends.len()])])
        .await
        .expect("reader");
    let mut seen = Vec::new();
    for _ in 0..total {
        let record = tokio::time::timeout(Duration::from_secs(5), reader.next())
            .await
            .expect("record in time")
            .expect("record");
        seen.push(decode(&record.payload).expect("decodes"));
    }
    seen
}

/// The events announced in outlier batches so far.
async fn announced_outliers(running: &Running) -> Vec<String> {
    all_outputs(running)
        .await
        .into_iter()
        .filter_map(|output| match output.kind {
            Some(topic_pb::roomserver_output::Kind::OutlierBatch(batch)) => Some(batch.event_ids),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Every new-event output so far: (event ID, historical).
async fn outputs(running: &Running) -> Vec<(String, bool)> {
    all_outputs(running)
        .await
        .into_iter()
        .filter_map(|output| match output.kind {
            Some(topic_pb::roomserver_output::Kind::NewRoomEvent(event)) => {
                Some((event.event_id, event.historical))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_received_dag_is_checked_resolved_and_announced() {
    for version in ["1", "10", "12"] {
        let running = start().await;
        let (mut dag, base, state) = Dag::new(version);
        use pb::input_pdu::Kind::{New, Old, Outlier};

        // The room's history arrives in order: every event accepted.
        let history: Vec<pb::InputPdu> = dag.order.iter().map(|p| input(New, p)).collect();
        let outcomes = send(&running, &dag, version, history.clone()).await;
        assert!(
            outcomes.values().all(|o| o == "accepted"),
            "v{version}: {outcomes:?}"
        );
        assert_eq!(
            extremities(&running, &dag.room_id).await,
            vec![base.event_id.to_string()]
        );
        // Again: nothing changes.
        let again = send(&running, &dag, version, history).await;
        assert!(
            again.values().all(|o| o == "duplicate"),
            "v{version}: {again:?}"
        );

        // Alice bans Bob; Bob, from the same point, changes the topic: his
        // event passes against the state before it but not the current
        // state, so it is soft-failed. Carol's concurrent message is fine.
        let ban = dag.event(
            ALICE,
            "m.room.member",
            Some(BOB),
            serde_json::json!({"membership": "ban"}),
            &[&base],
            &state,
        );
        let topic = dag.event(
            BOB,
            "m.room.topic",
            Some(""),
            serde_json::json!({"topic": "bob's"}),
            &[&base],
            &state,
        );
        let carol = dag.event(
            CAROL,
            "m.room.message",
            None,
            serde_json::json!({"body": "hi"}),
            &[&base],
            &state,
        );
        let outcomes = send(
            &running,
            &dag,
            version,
            vec![input(New, &ban), input(New, &topic), input(New, &carol)],
        )
        .await;
        assert_eq!(outcomes[ban.event_id.as_str()], "accepted", "v{version}");
        assert_eq!(
            outcomes[topic.event_id.as_str()],
            "soft_failed",
            "v{version}"
        );
        assert_eq!(outcomes[carol.event_id.as_str()], "accepted", "v{version}");
        let mut forks = vec![ban.event_id.to_string(), carol.event_id.to_string()];
        forks.sort();
        assert_eq!(
            extremities(&running, &dag.room_id).await,
            forks,
            "v{version}"
        );
        let current = current_state(&running, &dag.room_id).await;
        assert_eq!(
            current[&("m.room.member".to_owned(), BOB.to_owned())],
            ban.event_id.to_string()
        );
        assert_eq!(
            current[&("m.room.topic".to_owned(), String::new())],
            super::get(&state, "m.room.topic", "").event_id.to_string(),
            "v{version}: the soft-failed topic is not state"
        );

        // Alice merges the forks.
        let merged_state = dag.resolve(&[&after(&state, &ban), &after(&state, &carol)]);
        let merge = dag.event(
            ALICE,
            "m.room.message",
            None,
            serde_json::json!({"body": "merged"}),
            &[&ban, &carol],
            &merged_state,
        );
        let outcomes = send(&running, &dag, version, vec![input(New, &merge)]).await;
        assert_eq!(outcomes[merge.event_id.as_str()], "accepted", "v{version}");
        assert_eq!(
            extremities(&running, &dag.room_id).await,
            vec![merge.event_id.to_string()]
        );

        // Bob, banned, sends on top of the merge with his old auth events:
        // they allow it, the state before it does not. Rejected, stored as
        // such, never state or an extremity.
        let late = dag.event(
            BOB,
            "m.room.message",
            None,
            serde_json::json!({"body": "after my ban"}),
            &[&merge],
            &state,
        );
        let outcomes = send(&running, &dag, version, vec![input(New, &late)]).await;
        assert_eq!(outcomes[late.event_id.as_str()], "rejected", "v{version}");
        let stored = running
            .service
            .query_events(pb::QueryEventsRequest {
                event_ids: vec![late.event_id.to_string(), topic.event_id.to_string()],
            })
            .await
            .expect("events");
        assert!(stored.events[0].rejected, "v{version}");
        assert!(stored.events[1].soft_failed, "v{version}");
        assert_eq!(
            extremities(&running, &dag.room_id).await,
            vec![merge.event_id.to_string()]
        );

        // An outlier: stored without state.
        let outlier = dag.event(
            CAROL,
            "m.room.message",
            None,
            serde_json::json!({"body": "out of band"}),
            &[&carol],
            &state,
        );
        let outcomes = send(&running, &dag, version, vec![input(Outlier, &outlier)]).await;
        assert_eq!(outcomes[outlier.event_id.as_str()], "outlier", "v{version}");
        let at_outlier = running
            .service
            .query_state(pb::QueryStateRequest {
                room_id: dag.room_id.clone(),
                event_id: outlier.event_id.to_string(),
            })
            .await;
        assert!(at_outlier.is_err(), "v{version}: no state at an outlier");
        // Backfilled history: accepted, announced as historical, the
        // extremities stay.
        let old = dag.event(
            CAROL,
            "m.room.message",
            None,
            serde_json::json!({"body": "from the past"}),
            &[&base],
            &state,
        );
        let outcomes = send(&running, &dag, version, vec![input(Old, &old)]).await;
        assert_eq!(outcomes[old.event_id.as_str()], "accepted", "v{version}");
        assert_eq!(
            extremities(&running, &dag.room_id).await,
            vec![merge.event_id.to_string()]
        );

        // History that was an outlier, and history after it, in one
        // input: the first is found with its state by the second.
        let old_topic = dag.event(
            ALICE,
            "m.room.topic",
            Some(""),
            serde_json::json!({"topic": "long ago"}),
            &[&base],
            &state,
        );
        // A join's state is announced as it is stored; other outliers
        // only once they become current.
        let joined_state = dag.event(
            ALICE,
            "m.room.name",
            Some(""),
            serde_json::json!({"name": "as the join saw it"}),
            &[&base],
            &state,
        );
        let announced = pb::InputPdu {
            announce: true,
            ..input(Outlier, &joined_state)
        };
        let outcomes = send(&running, &dag, version, vec![announced]).await;
        assert_eq!(
            outcomes[joined_state.event_id.as_str()],
            "outlier",
            "v{version}"
        );
        let outcomes = send(&running, &dag, version, vec![input(Outlier, &old_topic)]).await;
        assert_eq!(
            outcomes[old_topic.event_id.as_str()],
            "outlier",
            "v{version}"
        );
        let after_topic = dag.event(
            CAROL,
            "m.room.message",
            None,
            serde_json::json!({"body": "after the old topic"}),
            &[&old_topic],
            &state,
        );
        let outcomes = send(
            &running,
            &dag,
            version,
            vec![input(Old, &old_topic), input(Old, &after_topic)],
        )
        .await;
        assert_eq!(
            outcomes[old_topic.event_id.as_str()],
            "accepted",
            "v{version}"
        );
        assert_eq!(
            outcomes[after_topic.event_id.as_str()],
            "accepted",
            "v{version}"
        );
        let announced = announced_outliers(&running).await;
        assert!(
            announced.contains(&joined_state.event_id.to_string()),
            "v{version}"
        );
        assert!(
            !announced.contains(&old_topic.event_id.to_string()),
            "v{version}"
        );
        assert!(
            !announced.contains(&outlier.event_id.to_string()),
            "v{version}"
        );

        // The state before an event can be asked for.
        let before_merge = running
            .service
            .query_state(pb::QueryStateRequest {
                room_id: dag.room_id.clone(),
                event_id: merge.event_id.to_string(),
            })
            .await
            .expect("state at merge");
        assert!(
            before_merge
                .state_event_ids
                .contains(&ban.event_id.to_string())
        );

        // Missing auth events: not stored, the caller must fetch them.
        let unknown = Dag::new(version).0;
        let stray = unknown.order[3].clone();
        let outcomes = send(&running, &unknown, version, vec![input(New, &stray)]).await;
        assert_eq!(
            outcomes[stray.event_id.as_str()],
            "missing_auth_events",
            "v{version}"
        );

        // Three concurrent events in one input: each fork's state is read
        // back from inside the same transaction.
        let merged = after(&after(&state, &ban), &merge);
        let topic2 = dag.event(
            ALICE,
            "m.room.topic",
            Some(""),
            serde_json::json!({"topic": "T3"}),
            &[&merge],
            &merged,
        );
        let chat = dag.event(
            CAROL,
            "m.room.message",
            None,
            serde_json::json!({"body": "concurrent"}),
            &[&merge],
            &merged,
        );
        let name = dag.event(
            ALICE,
            "m.room.name",
            Some(""),
            serde_json::json!({"name": "N"}),
            &[&merge],
            &merged,
        );
        let outcomes = send(
            &running,
            &dag,
            version,
            vec![input(New, &topic2), input(New, &chat), input(New, &name)],
        )
        .await;
        assert!(
            outcomes.values().all(|o| o == "accepted"),
            "v{version}: {outcomes:?}"
        );
        let current = current_state(&running, &dag.room_id).await;
        assert_eq!(
            current[&("m.room.topic".to_owned(), String::new())],
            topic2.event_id.to_string()
        );
        assert_eq!(
            current[&("m.room.name".to_owned(), String::new())],
            name.event_id.to_string()
        );
        assert_eq!(extremities(&running, &dag.room_id).await.len(), 3);

        // roomserver.output: every accepted event once; the soft-failed,
        // rejected and outlier events never.
        let seen = outputs(&running).await;
        let ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
        for pdu in dag.order.iter().take(9) {
            assert_eq!(
                ids.iter()
                    .filter(|id| **id == pdu.event_id.as_str())
                    .count(),
                1,
                "v{version}: {} announced once",
                pdu.kind
            );
        }
        for absent in [&topic, &late, &outlier] {
            assert!(!ids.contains(&absent.event_id.as_str()), "v{version}");
        }
        assert!(
            seen.contains(&(old.event_id.to_string(), true)),
            "v{version}"
        );
        assert!(
            seen.contains(&(merge.event_id.to_string(), false)),
            "v{version}"
        );
    }
}

/// A replica that committed an input and died before its outputs reached
/// the log leaves them in the outbox; whoever processes the redelivered
/// input (the partition's next owner) publishes them before answering, so
/// nothing newer of the room overtakes them and nothing waits for a restart.
#[tokio::test]
async fn a_redelivered_input_publishes_the_outputs_its_first_processing_left() {
    const LOCAL_ALICE: &str = "@alice:localhost";
    let running = start().await;
    let created = running
        .service
        .create_room(pb::CreateRoomRequest {
            room_version: "10".into(),
            creator: LOCAL_ALICE.into(),
            create_content_json: b"{}".to_vec(),
            initial_state: vec![pb::EventTemplate {
                event_type: "m.room.member".into(),
                state_key: Some(LOCAL_ALICE.into()),
                sender: LOCAL_ALICE.into(),
                content_json: br#"{"membership":"join"}"#.to_vec(),
                redacts: None,
            }],
            ..Default::default()
        })
        .await
        .expect("room");
    let input = topic_pb::RoomserverInput {
        version: ganglion_api::topics::PAYLOAD_VERSION,
        request_id: "txn/one".into(),
        reply_to: "local".into(),
        room_id: created.room_id.clone(),
        kind: None,
    };
    let message = topic_pb::NewLocalEvents {
        templates: vec![pb::EventTemplate {
            event_type: "m.room.message".into(),
            state_key: None,
            sender: LOCAL_ALICE.into(),
            content_json: br#"{"body":"left behind","msgtype":"m.text"}"#.to_vec(),
            redacts: None,
        }],
        device_id: "D".into(),
        transaction_id: "t1".into(),
    };
    // Committed, then "died": its outputs were never produced.
    let first = running
        .service
        .new_local_events(&input, &message)
        .await
        .unwrap_or_else(|_| panic!("processed"));
    assert_eq!(first.outputs.len(), 1);
    // The redelivery answers the same event and carries the output to publish.
    let again = running
        .service
        .new_local_events(&input, &message)
        .await
        .unwrap_or_else(|_| panic!("processed again"));
    let crate::consumers::input::Answer::Events(answer) = &again.answer else {
        panic!("events answered");
    };
    let crate::consumers::input::Answer::Events(first_answer) = &first.answer else {
        panic!("events answered");
    };
    assert_eq!(answer.event_ids, first_answer.event_ids);
    assert_eq!(
        again
            .outputs
            .iter()
            .map(|(seq, _)| *seq)
            .collect::<Vec<_>>(),
        first
            .outputs
            .iter()
            .map(|(seq, _)| *seq)
            .collect::<Vec<_>>()
    );
}
