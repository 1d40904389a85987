//! Group commit: the input consumer handed a batch of inputs writes each
//! room's run of single-event inputs in one transaction, and every input
//! comes out as it would alone: answered with its event (or refused),
//! built on the events before it, published in order, recorded once.

use std::collections::HashMap;

use ganglion_api::ApiError;
use ganglion_api::consume::{HandleError, RecordHandler};
use ganglion_api::proto::roomserver as pb;
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::roomserver::RoomserverApi;
use ganglion_api::topics::{PAYLOAD_VERSION, encode};
use ganglion_log::Record;
use tokio::sync::oneshot;

use super::received::{Running, all_outputs, start};
use crate::consumers::input::{Answer, InputConsumer};

const ALICE: &str = "@alice:localhost";
const BOB: &str = "@bob:localhost";

fn template(sender: &str, kind: &str, state_key: Option<&str>, content: &str) -> pb::EventTemplate {
    pb::EventTemplate {
        event_type: kind.into(),
        state_key: state_key.map(str::to_owned),
        sender: sender.into(),
        content_json: content.as_bytes().to_vec(),
        redacts: None,
    }
}

fn message(sender: &str, body: &str) -> pb::EventTemplate {
    template(
        sender,
        "m.room.message",
        None,
        &format!(r#"{{"msgtype":"m.text","body":"{body}"}}"#),
    )
}

/// An input record asking for `templates` in `room_id`, answered to this
/// replica under `request_id`.
fn record(room_id: &str, request_id: &str, templates: Vec<pb::EventTemplate>) -> Record {
    let input = topic_pb::RoomserverInput {
        version: PAYLOAD_VERSION,
        request_id: request_id.into(),
        reply_to: "local".into(),
        room_id: room_id.into(),
        kind: Some(topic_pb::roomserver_input::Kind::NewLocalEvents(
            topic_pb::NewLocalEvents {
                templates,
                device_id: "DEVICE".into(),
                transaction_id: request_id.into(),
            },
        )),
    };
    as_record(&input)
}

/// An input as the consumer receives it.
fn as_record(input: &topic_pb::RoomserverInput) -> Record {
    Record {
        topic: "roomserver.input".into(),
        partition: 0,
        offset: 0,
        key: input.room_id.as_bytes().to_vec(),
        headers: Vec::new(),
        payload: encode(input),
        timestamp_ms: 0,
    }
}

/// A public room Alice created, with Bob joined.
async fn room(running: &Running, consumer: &InputConsumer) -> String {
    let created = running
        .service
        .create_room(pb::CreateRoomRequest {
            room_version: "10".into(),
            creator: ALICE.into(),
            create_content_json: b"{}".to_vec(),
            initial_state: vec![
                template(
                    ALICE,
                    "m.room.member",
                    Some(ALICE),
                    r#"{"membership":"join"}"#,
                ),
                template(
                    ALICE,
                    "m.room.join_rules",
                    Some(""),
                    r#"{"join_rule":"public"}"#,
                ),
            ],
            ..Default::default()
        })
        .await
        .expect("room");
    let join = template(BOB, "m.room.member", Some(BOB), r#"{"membership":"join"}"#);
    consumer
        .handle(&record(&created.room_id, "join/bob", vec![join]))
        .await
        .expect("bob joins");
    created.room_id
}

/// Waits for the answers to `request_ids` as callers of the API would.
fn expect_answers(
    running: &Running,
    request_ids: &[&str],
) -> Vec<oneshot::Receiver<Result<Answer, ApiError>>> {
    request_ids
        .iter()
        .map(|id| running.service.await_outcome(id))
        .collect()
}

async fn answered(
    receivers: Vec<oneshot::Receiver<Result<Answer, ApiError>>>,
) -> Vec<Result<pb::InputResponse, ApiError>> {
    let mut answers = Vec::new();
    for receiver in receivers {
        answers.push(match receiver.await.expect("answered") {
            Ok(Answer::Events(response)) => Ok(response),
            Ok(Answer::Pdus(_)) => panic!("events answered"),
            Err(error) => Err(error),
        });
    }
    answers
}

/// The new events on `roomserver.output` of `room_id`, in log order:
/// (event ID, prev events, position).
async fn room_events(running: &Running, room_id: &str) -> Vec<(String, Vec<String>)> {
    all_outputs(running)
        .await
        .into_iter()
        .filter_map(|output| match output.kind {
            Some(topic_pb::roomserver_output::Kind::NewRoomEvent(event)) => {
                let pdu: serde_json::Value =
                    serde_json::from_slice(&event.event_json).expect("json");
                (pdu["room_id"] == room_id).then(|| {
                    let prev = pdu["prev_events"]
                        .as_array()
                        .expect("prev_events")
                        .iter()
                        .map(|id| id.as_str().expect("id").to_owned())
                        .collect();
                    (event.event_id, prev)
                })
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_group_answers_refuses_and_chains_each_input_as_alone() {
    let running = start().await;
    let consumer = InputConsumer {
        service: running.service.clone(),
    };
    let room_id = room(&running, &consumer).await;
    let before = room_events(&running, &room_id).await;
    let topic = |text: &str| {
        template(
            ALICE,
            "m.room.topic",
            Some(""),
            &format!(r#"{{"topic":"{text}"}}"#),
        )
    };
    let ids = ["g/1", "g/2", "g/3", "g/4", "g/5", "g/6", "g/7"];
    let batch = vec![
        record(&room_id, ids[0], vec![message(BOB, "one")]),
        record(&room_id, ids[1], vec![topic("first")]),
        // Bob leaves: his next message is refused, built on the group's
        // own uncommitted state.
        record(
            &room_id,
            ids[2],
            vec![template(
                BOB,
                "m.room.member",
                Some(BOB),
                r#"{"membership":"leave"}"#,
            )],
        ),
        record(&room_id, ids[3], vec![message(BOB, "too late")]),
        // The same topic again makes no new event: answered with the one
        // in place, written earlier in the group.
        record(&room_id, ids[4], vec![topic("first")]),
        record(&room_id, ids[5], vec![message(ALICE, "two")]),
        // Content that is not a JSON object is refused.
        record(
            &room_id,
            ids[6],
            vec![template(ALICE, "m.room.message", None, "[1]")],
        ),
    ];
    let receivers = expect_answers(&running, &ids);
    consumer.handle_batch(&batch).await.expect("batch applied");
    let answers = answered(receivers).await;

    let accepted = |index: usize| -> &pb::InputResponse {
        answers[index]
            .as_ref()
            .unwrap_or_else(|e| panic!("input {index} accepted: {e}"))
    };
    assert!(
        matches!(answers[3], Err(ApiError::Forbidden(_))),
        "a message after leaving is refused: {:?}",
        answers[3].as_ref().err()
    );
    assert!(
        matches!(answers[6], Err(ApiError::InvalidInput(_))),
        "non-object content is refused: {:?}",
        answers[6].as_ref().err()
    );
    assert_eq!(
        accepted(4).event_ids,
        accepted(1).event_ids,
        "an unchanged topic answers with the event in place"
    );
    assert!(
        accepted(4).output_position.is_none(),
        "an input that wrote nothing has no output to wait for"
    );

    // On the output topic: the four new events, in input order, each
    // following the one before.
    let after = room_events(&running, &room_id).await;
    let new = &after[before.len()..];
    let expected: Vec<&str> = [0, 1, 2, 5]
        .iter()
        .map(|i| accepted(*i).event_ids[0].as_str())
        .collect();
    assert_eq!(
        new.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        expected
    );
    let mut previous = before.last().expect("the room's events").0.clone();
    for (id, prev) in new {
        assert_eq!(
            prev,
            &vec![previous.clone()],
            "{id} follows the event before"
        );
        previous = id.clone();
    }
    // Each answer's position is where its own event was published.
    let positions: Vec<u64> = [0, 1, 2, 5]
        .iter()
        .map(|i| {
            accepted(*i)
                .output_position
                .as_ref()
                .expect("position")
                .offset
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions grow with the inputs: {positions:?}"
    );

    // Recorded once, with what each was answered; the refused ones not.
    let storage = &running.service.storage;
    for (index, id) in ids.iter().enumerate() {
        let recorded = storage.processed_input(id).await.expect("lookup");
        match &answers[index] {
            Ok(answer) => assert_eq!(
                recorded.map(|(_, events)| events),
                Some(answer.event_ids.clone()),
                "{id} recorded"
            ),
            Err(_) => assert!(recorded.is_none(), "{id} refused, not recorded"),
        }
    }

    // Delivered again (a crash before the offsets were committed): the
    // batch is handed back to be taken one at a time, and each input is
    // answered as first, with nothing written twice.
    let again = consumer.handle_batch(&batch).await;
    assert!(
        matches!(again, Err(HandleError::Permanent(_))),
        "a redelivered batch is taken one at a time"
    );
    let receivers = expect_answers(&running, &ids);
    for record in &batch {
        consumer.handle(record).await.expect("redelivery handled");
    }
    let redelivered = answered(receivers).await;
    for (index, (first, second)) in answers.iter().zip(&redelivered).enumerate() {
        match (first, second) {
            (Ok(first), Ok(second)) => assert_eq!(first.event_ids, second.event_ids),
            (Err(_), Err(_)) => {}
            _ => panic!("input {index} answered differently when redelivered"),
        }
    }
    assert_eq!(room_events(&running, &room_id).await.len(), after.len());

    // The cached head moved with the group: the next input follows it.
    let next = record(&room_id, "g/next", vec![message(ALICE, "three")]);
    let receivers = expect_answers(&running, &["g/next"]);
    consumer.handle(&next).await.expect("next input");
    let next_answer = answered(receivers).await.remove(0).expect("accepted");
    let last = room_events(&running, &room_id).await;
    assert_eq!(last.last().map(|(id, _)| id), next_answer.event_ids.first());
    assert_eq!(last.last().expect("last").1, vec![previous]);
}

/// A client's retries of one transaction, appended together before the
/// first was processed: the batch is taken one at a time, one event is
/// made, and every caller waiting here for that request (the first and
/// each retry) is answered with it.
#[tokio::test]
async fn retries_of_one_request_in_a_batch_make_one_event_and_answer_every_caller() {
    let running = start().await;
    let consumer = InputConsumer {
        service: running.service.clone(),
    };
    let room_id = room(&running, &consumer).await;
    let before = room_events(&running, &room_id).await.len();
    let batch = vec![
        record(&room_id, "r/1", vec![message(BOB, "once")]),
        record(&room_id, "r/2", vec![message(ALICE, "other")]),
        record(&room_id, "r/1", vec![message(BOB, "once")]),
        record(&room_id, "r/1", vec![message(BOB, "once")]),
    ];
    // The first attempt and two retries wait for "r/1".
    let receivers = expect_answers(&running, &["r/1", "r/1", "r/1", "r/2"]);
    let grouped = consumer.handle_batch(&batch).await;
    assert!(
        matches!(grouped, Err(HandleError::Permanent(_))),
        "a batch holding one request twice is taken one at a time"
    );
    for record in &batch {
        consumer.handle(record).await.expect("handled alone");
    }
    let answers = answered(receivers).await;
    let event_ids: Vec<Vec<String>> = answers
        .iter()
        .map(|answer| answer.as_ref().expect("accepted").event_ids.clone())
        .collect();
    assert_eq!(event_ids[0], event_ids[1], "a retry gets the first's event");
    assert_eq!(event_ids[0], event_ids[2], "so does the next retry");
    assert_ne!(
        event_ids[0], event_ids[3],
        "another request is another event"
    );
    assert!(
        answers[1]
            .as_ref()
            .expect("accepted")
            .output_position
            .is_some(),
        "callers waiting with the first get its position to wait for"
    );
    assert_eq!(
        room_events(&running, &room_id).await.len(),
        before + 2,
        "two events made for four inputs"
    );
    assert!(
        running.service.lock_pending().is_empty(),
        "no caller left waiting"
    );
}

/// Rooms interleaved in one batch each keep their order, and an input that
/// cannot join a group (a redaction, which looks up its target outside the
/// transaction) comes after what its room had pending and before what
/// followed it.
#[tokio::test]
async fn a_batch_keeps_each_rooms_order_around_inputs_taken_alone() {
    let running = start().await;
    let consumer = InputConsumer {
        service: running.service.clone(),
    };
    let first = room(&running, &consumer).await;
    let second = room(&running, &consumer).await;
    let receivers = expect_answers(&running, &["a/0"]);
    consumer
        .handle(&record(&first, "a/0", vec![message(BOB, "a zero")]))
        .await
        .expect("a zero");
    let target = answered(receivers)
        .await
        .remove(0)
        .expect("accepted")
        .event_ids[0]
        .clone();
    let mut redaction = template(BOB, "m.room.redaction", None, "{}");
    redaction.redacts = Some(target.clone());
    let ids = ["a/1", "b/1", "a/2", "a/redact", "b/2", "a/3"];
    let batch = vec![
        record(&first, ids[0], vec![message(ALICE, "a one")]),
        record(&second, ids[1], vec![message(ALICE, "b one")]),
        record(&first, ids[2], vec![message(BOB, "a two")]),
        record(&first, ids[3], vec![redaction]),
        record(&second, ids[4], vec![message(ALICE, "b two")]),
        record(&first, ids[5], vec![message(ALICE, "a three")]),
    ];
    let receivers = expect_answers(&running, &ids);
    consumer.handle_batch(&batch).await.expect("batch applied");
    let answers = answered(receivers).await;
    let event_of = |index: usize| {
        answers[index]
            .as_ref()
            .unwrap_or_else(|e| panic!("{} accepted: {e}", ids[index]))
            .event_ids[0]
            .clone()
    };
    let in_first: Vec<String> = room_events(&running, &first)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        &in_first[in_first.len() - 5..],
        &[
            target.clone(),
            event_of(0),
            event_of(2),
            event_of(3),
            event_of(5)
        ]
    );
    let in_second: Vec<String> = room_events(&running, &second)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        &in_second[in_second.len() - 2..],
        &[event_of(1), event_of(4)]
    );
    // The redaction was applied and announced.
    let redacted: HashMap<String, String> = all_outputs(&running)
        .await
        .into_iter()
        .filter_map(|output| match output.kind {
            Some(topic_pb::roomserver_output::Kind::RedactedEvent(redacted)) => {
                Some((redacted.redacted_event_id, redacted.redaction_event_id))
            }
            _ => None,
        })
        .collect();
    assert_eq!(redacted.get(&target), Some(&event_of(3)));
}

/// A new-room input for version 10, its create event signed by this
/// server, with Alice joined and `extra` initial state after that.
fn new_room_record(
    running: &Running,
    request_id: &str,
    alias: Option<&str>,
    extra: Vec<pb::EventTemplate>,
) -> (String, Record) {
    let signer = crate::events::Signer {
        server_name: &running.service.server_name,
        key: &running.service.signing_key.key_pair,
    };
    let (room_id, create) = crate::events::build_create_event(
        "10",
        ALICE,
        ruma::canonical_json::CanonicalJsonObject::new(),
        &format!("!{request_id}:localhost").replace('/', "_"),
        &signer,
    )
    .expect("create event");
    let mut initial_state = vec![template(
        ALICE,
        "m.room.member",
        Some(ALICE),
        r#"{"membership":"join"}"#,
    )];
    initial_state.extend(extra);
    let input = topic_pb::RoomserverInput {
        version: PAYLOAD_VERSION,
        request_id: request_id.into(),
        reply_to: "local".into(),
        room_id: room_id.to_string(),
        kind: Some(topic_pb::roomserver_input::Kind::NewRoom(
            topic_pb::NewRoom {
                room_version: "10".into(),
                create_event_json: create.json.as_bytes().to_vec(),
                initial_state,
                alias: alias.map(str::to_owned),
            },
        )),
    };
    (room_id.to_string(), as_record(&input))
}

/// New rooms join a group like other inputs: each created with its
/// initial state and alias, a taken alias refused without stopping the
/// others, and messages into the new rooms later in the batch built on
/// their heads.
#[tokio::test]
async fn new_rooms_are_created_in_a_group_and_a_taken_alias_is_refused() {
    let running = start().await;
    let consumer = InputConsumer {
        service: running.service.clone(),
    };
    let existing = room(&running, &consumer).await;
    let (first, first_record) = new_room_record(&running, "n/1", Some("#one:localhost"), vec![]);
    let (second, second_record) = new_room_record(
        &running,
        "n/2",
        None,
        vec![template(
            ALICE,
            "m.room.name",
            Some(""),
            r#"{"name":"Second"}"#,
        )],
    );
    let (_, clash_record) = new_room_record(&running, "n/3", Some("#one:localhost"), vec![]);
    let ids = ["n/1", "m/1", "n/2", "n/3", "m/2", "m/3"];
    let batch = vec![
        first_record,
        record(&existing, ids[1], vec![message(ALICE, "elsewhere")]),
        second_record,
        clash_record,
        record(&first, ids[4], vec![message(ALICE, "first message")]),
        // Two events in one input.
        record(
            &second,
            ids[5],
            vec![message(ALICE, "one of two"), message(ALICE, "two of two")],
        ),
    ];
    let receivers = expect_answers(&running, &ids);
    consumer.handle_batch(&batch).await.expect("batch applied");
    let answers = answered(receivers).await;
    for index in [0, 1, 2, 4, 5] {
        assert!(
            answers[index].is_ok(),
            "{} accepted: {:?}",
            ids[index],
            answers[index].as_ref().err()
        );
    }
    assert!(
        matches!(answers[3], Err(ApiError::RoomInUse)),
        "an alias taken earlier in the group is refused: {:?}",
        answers[3].as_ref().err()
    );
    assert_eq!(
        running
            .service
            .storage
            .resolve_alias("#one:localhost")
            .await
            .expect("alias lookup"),
        Some(first.clone())
    );
    let second_events = room_events(&running, &second).await;
    let created = &answers[2].as_ref().expect("second room").event_ids;
    assert_eq!(created.len(), 3, "create, join, name");
    let two = &answers[5].as_ref().expect("two events").event_ids;
    assert_eq!(
        second_events
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>(),
        created.iter().chain(two).cloned().collect::<Vec<_>>()
    );
    // Each follows the one before, the messages on the room's initial state.
    for pair in second_events.windows(2) {
        assert_eq!(pair[1].1, vec![pair[0].0.clone()]);
    }
    let first_events = room_events(&running, &first).await;
    assert_eq!(
        first_events.last().map(|(id, _)| id),
        answers[4].as_ref().expect("message").event_ids.first()
    );
    let state = super::received::current_state(&running, &second).await;
    assert_eq!(
        state.get(&("m.room.name".to_owned(), String::new())),
        Some(&created[2])
    );
    // The new room's events, written together, each hold the state before
    // it (the events before it) and after it (those and itself).
    let storage = &running.service.storage;
    let refs: Vec<&str> = created.iter().map(String::as_str).collect();
    let stored = storage.events_by_id(&refs).await.expect("stored");
    let ids_at = |snapshot: Option<i64>| async move {
        let (state, _) = storage
            .load_state(snapshot.expect("a state"))
            .await
            .expect("state");
        let mut ids: Vec<String> = state.values().map(|e| e.event_id.to_string()).collect();
        ids.sort();
        ids
    };
    for (k, id) in created.iter().enumerate() {
        let event = stored
            .values()
            .find(|e| e.pdu.event_id.as_str() == id)
            .expect("stored event");
        let mut before: Vec<String> = created[..k].to_vec();
        before.sort();
        let mut after: Vec<String> = created[..=k].to_vec();
        after.sort();
        assert_eq!(ids_at(event.state_before).await, before, "before {id}");
        assert_eq!(ids_at(event.state_after).await, after, "after {id}");
    }
}

/// A new room whose initial state is refused after its create event was
/// written fails its group, which is then taken one input at a time: that
/// room alone is refused and the rest of the batch goes ahead.
#[tokio::test]
async fn a_new_room_refused_midway_leaves_the_rest_of_its_group_to_go_ahead_alone() {
    let running = start().await;
    let consumer = InputConsumer {
        service: running.service.clone(),
    };
    let existing = room(&running, &consumer).await;
    // Bob is in no such room: his state event is refused.
    let (bad, bad_record) = new_room_record(
        &running,
        "bad/1",
        None,
        vec![template(BOB, "m.room.name", Some(""), r#"{"name":"no"}"#)],
    );
    let (good, good_record) = new_room_record(&running, "good/1", None, vec![]);
    let ids = ["m/1", "bad/1", "good/1", "m/2"];
    let batch = vec![
        record(&existing, ids[0], vec![message(ALICE, "before")]),
        bad_record,
        good_record,
        record(&existing, ids[3], vec![message(BOB, "after")]),
    ];
    let receivers = expect_answers(&running, &ids);
    let grouped = consumer.handle_batch(&batch).await;
    assert!(
        matches!(grouped, Err(HandleError::Permanent(_))),
        "the group fails for good"
    );
    // What the consumer does next: one record at a time.
    for record in &batch {
        consumer.handle(record).await.expect("handled alone");
    }
    let answers = answered(receivers).await;
    assert!(answers[0].is_ok() && answers[2].is_ok() && answers[3].is_ok());
    assert!(
        matches!(answers[1], Err(ApiError::Forbidden(_))),
        "{:?}",
        answers[1].as_ref().err()
    );
    let storage = &running.service.storage;
    assert!(storage.room(&bad).await.expect("lookup").is_none());
    assert!(storage.room(&good).await.expect("lookup").is_some());
    let events: Vec<String> = room_events(&running, &existing)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        &events[events.len() - 2..],
        &[
            answers[0].as_ref().expect("before").event_ids[0].clone(),
            answers[3].as_ref().expect("after").event_ids[0].clone(),
        ]
    );
}
