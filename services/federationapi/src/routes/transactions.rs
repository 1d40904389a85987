//! `PUT /send/{txnId}`: a transaction of PDUs and EDUs from another
//! server. Each PDU's signatures are checked here, then the roomserver
//! checks it against the auth rules and takes it, room by room in the
//! order sent. A transaction ID seen before from the same origin is
//! answered as the first time and changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixJson, MatrixResult, respond};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::FederationService;
use crate::auth::Origin;
use crate::pdus;

/// The spec's limits on one transaction.
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;

/// Gaps before a transaction's PDUs filled at most, and the time all of
/// that may take: one origin's events cannot make us fetch without end.
const GAPS_PER_TRANSACTION: usize = 5;
const GAP_TIME_PER_TRANSACTION: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Deserialize)]
pub(crate) struct Transaction {
    origin: String,
    #[serde(default)]
    pdus: Vec<Value>,
    #[serde(default)]
    edus: Vec<Value>,
}

pub(crate) async fn send(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(txn_id): Path<String>,
    MatrixJson(transaction): MatrixJson<Transaction>,
) -> MatrixResult {
    if transaction.origin != origin {
        return Err(MatrixError::forbidden(
            "the transaction's origin is not its signer",
        ));
    }
    if transaction.pdus.len() > MAX_PDUS || transaction.edus.len() > MAX_EDUS {
        return Err(MatrixError::too_large(format!(
            "a transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
        )));
    }
    if let Some(answer) = service.storage.transaction_answer(&origin, &txn_id).await? {
        return respond(answer);
    }
    let turn = service.origin_turn(&origin).await?;
    let answer = take_transaction(&service, &origin, &txn_id, transaction).await;
    turn.end().await;
    respond(answer?)
}

/// A transaction, in the origin's turn: its PDUs in order, then its EDUs.
async fn take_transaction(
    service: &FederationService,
    origin: &str,
    txn_id: &str,
    transaction: Transaction,
) -> Result<Value, MatrixError> {
    // A retry may have been answered while this one waited for its turn.
    if let Some(answer) = service.storage.transaction_answer(origin, txn_id).await? {
        return Ok(answer);
    }
    let mut results = Map::new();
    // Each room's version, ACL verdict and whether the origin is in it,
    // asked once per transaction.
    let mut rooms = HashMap::new();
    let mut budget = crate::inbound::GapBudget::new(GAPS_PER_TRANSACTION, GAP_TIME_PER_TRANSACTION);
    for pdu in &transaction.pdus {
        let (event_id, result) = receive_pdu(service, origin, pdu, &mut rooms, &mut budget).await;
        if let Some(event_id) = event_id {
            results.insert(event_id, result);
        }
    }
    // EDUs of kinds not taken are acknowledged all the same.
    service.take_edus(origin, &transaction.edus).await;
    let answer = json!({ "pdus": results });
    service
        .storage
        .remember_transaction(origin, txn_id, &answer)
        .await?;
    Ok(answer)
}

/// Whether a PDU is `origin`'s own user's membership: a server joining
/// (or knocking, or leaving) sends it before it is in the room.
fn own_membership(pdu: &Value, origin: &str) -> bool {
    pdu["type"] == "m.room.member"
        && pdu["state_key"]
            .as_str()
            .and_then(ganglion_api::users::server_of)
            == Some(origin)
}

/// One PDU of a transaction: its event ID (if it has one to report) and
/// `{}` when taken, `{"error": …}` when not.
async fn receive_pdu(
    service: &FederationService,
    origin: &str,
    pdu: &Value,
    rooms: &mut HashMap<String, Option<(String, bool, bool)>>,
    budget: &mut crate::inbound::GapBudget,
) -> (Option<String>, Value) {
    let Some(room_id) = pdu["room_id"].as_str() else {
        return (None, json!({}));
    };
    let room = match rooms.get(room_id) {
        Some(room) => room.clone(),
        None => {
            let room = match service.room_version(room_id).await {
                Ok(version) => Some((
                    version,
                    service.acl_allows(room_id, origin).await.unwrap_or(false),
                    service
                        .server_in_room(room_id, origin)
                        .await
                        .is_ok_and(|(_, joined)| joined),
                )),
                Err(_) => None,
            };
            rooms.insert(room_id.to_owned(), room.clone());
            room
        }
    };
    let Some((version, acl_allows, origin_in_room)) = room else {
        return (None, json!({}));
    };
    // A new ACL, or a membership of the origin's, counts from the next
    // PDU on.
    if pdu["type"] == "m.room.server_acl" || own_membership(pdu, origin) {
        rooms.remove(room_id);
    }
    let event_id_of = || {
        pdus::rules_for(&version).ok().and_then(|rules| {
            serde_json::from_value(pdu.clone())
                .ok()
                .and_then(|object| pdus::event_id_of(&object, &rules).ok())
        })
    };
    // A server sends into rooms it is in (or is joining).
    if !origin_in_room && !own_membership(pdu, origin) {
        return (
            event_id_of(),
            json!({ "error": "the origin has no user in the room" }),
        );
    }
    if !acl_allows {
        let event_id = pdus::rules_for(&version).ok().and_then(|rules| {
            serde_json::from_value(pdu.clone())
                .ok()
                .and_then(|object| pdus::event_id_of(&object, &rules).ok())
        });
        return (
            event_id,
            json!({ "error": "the origin is banned from the room by its ACL" }),
        );
    }
    let checked = match pdus::check(&service.key_ring, &version, pdu).await {
        Ok(checked) => checked,
        Err(error) => {
            let event_id = pdus::rules_for(&version).ok().and_then(|rules| {
                serde_json::from_value(pdu.clone())
                    .ok()
                    .and_then(|object| pdus::event_id_of(&object, &rules).ok())
            });
            return (event_id, json!({ "error": error.to_string() }));
        }
    };
    let result = match service
        .input_filling_gaps(origin, room_id, &version, &checked, budget)
        .await
    {
        Ok(o) if matches!(o.outcome.as_str(), "accepted" | "duplicate" | "soft_failed") => {
            json!({})
        }
        Ok(o) => json!({ "error": format!("{}: {}", o.outcome, o.reason) }),
        Err(error) => json!({ "error": error.to_string() }),
    };
    (Some(checked.event_id), result)
}
