//! `PUT /send/{txnId}`: a transaction of PDUs and EDUs from another
//! server. Each PDU's signatures are checked here, then the roomserver
//! checks it against the auth rules and takes it, room by room in the
//! order sent. A transaction ID seen before from the same origin is
//! answered as the first time and changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use ganglion_api::proto::roomserver as pb;
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
    let mut results = Map::new();
    // Each room's version and ACL verdict, asked once per transaction.
    let mut rooms = HashMap::new();
    for pdu in &transaction.pdus {
        let (event_id, result) = receive_pdu(&service, &origin, pdu, &mut rooms).await;
        if let Some(event_id) = event_id {
            results.insert(event_id, result);
        }
    }
    // EDUs of kinds not taken are acknowledged all the same.
    service.take_edus(&origin, &transaction.edus).await;
    let answer = json!({ "pdus": results });
    service
        .storage
        .remember_transaction(&origin, &txn_id, &answer)
        .await?;
    respond(answer)
}

/// One PDU of a transaction: its event ID (if it has one to report) and
/// `{}` when taken, `{"error": …}` when not.
async fn receive_pdu(
    service: &FederationService,
    origin: &str,
    pdu: &Value,
    rooms: &mut HashMap<String, Option<(String, bool)>>,
) -> (Option<String>, Value) {
    let Some(room_id) = pdu["room_id"].as_str() else {
        return (None, json!({}));
    };
    let room = match rooms.get(room_id) {
        Some(room) => room.clone(),
        None => {
            let room = match service
                .roomserver
                .query_room_version(pb::QueryRoomVersionRequest {
                    room_id: room_id.to_owned(),
                })
                .await
            {
                Ok(version) => Some((
                    version.room_version,
                    service.acl_allows(room_id, origin).await.unwrap_or(false),
                )),
                Err(_) => None,
            };
            rooms.insert(room_id.to_owned(), room.clone());
            room
        }
    };
    let Some((version, acl_allows)) = room else {
        return (None, json!({}));
    };
    // A new ACL counts from the next PDU on.
    if pdu["type"] == "m.room.server_acl" {
        rooms.remove(room_id);
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
        .input_filling_gaps(origin, room_id, &version, &checked)
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
