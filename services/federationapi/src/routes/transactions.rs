//! `PUT /send/{txnId}`: a transaction of PDUs and EDUs from another
//! server. Each PDU's signatures are checked here, then the roomserver
//! checks it against the auth rules and takes it, room by room in the
//! order sent. A transaction ID seen before from the same origin is
//! answered as the first time and changes nothing.

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
    for pdu in &transaction.pdus {
        let (event_id, result) = receive_pdu(&service, &origin, pdu).await;
        if let Some(event_id) = event_id {
            results.insert(event_id, result);
        }
    }
    // Typing and receipts are taken; presence, device lists and to-device
    // not yet (they are acknowledged all the same).
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
) -> (Option<String>, Value) {
    let Some(room_id) = pdu["room_id"].as_str() else {
        return (None, json!({}));
    };
    let version = match service
        .roomserver
        .query_room_version(pb::QueryRoomVersionRequest {
            room_id: room_id.to_owned(),
        })
        .await
    {
        Ok(version) => version.room_version,
        Err(_) => return (None, json!({})),
    };
    if !service.acl_allows(room_id, origin).await.unwrap_or(false) {
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
