//! Received PDUs: their event ID as their room version computes it, and
//! the signatures of the servers that must have signed them, checked with
//! keys valid when the event was sent. (The roomserver checks the content
//! hash, redacting an event whose hash fails, and the auth rules.)

use std::collections::BTreeMap;

use ruma::canonical_json::CanonicalJsonObject;
use ruma::room_version_rules::{EventIdFormatVersion, RoomVersionRules};
use ruma::serde::Base64;
use ruma::{CanonicalJsonValue, RoomVersionId};
use serde_json::Value;

use crate::key_ring::KeyRing;

/// Why a PDU was refused before it reached the roomserver.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PduError {
    #[error("not a PDU: {0}")]
    Malformed(String),
    #[error("unsupported room version {0}")]
    RoomVersion(String),
    #[error("signature check failed: {0}")]
    Signature(String),
}

/// A PDU whose signatures were checked.
#[derive(Debug, Clone)]
pub(crate) struct CheckedPdu {
    pub(crate) event_id: String,
    pub(crate) object: CanonicalJsonObject,
}

impl CheckedPdu {
    pub(crate) fn json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.object).unwrap_or_default()
    }

    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        match self.object.get(name) {
            Some(CanonicalJsonValue::String(s)) => Some(s),
            _ => None,
        }
    }
}

pub(crate) fn rules_for(version: &str) -> Result<RoomVersionRules, PduError> {
    RoomVersionId::try_from(version)
        .ok()
        .and_then(|id| id.rules())
        .ok_or_else(|| PduError::RoomVersion(version.to_owned()))
}

/// The event ID of a PDU in a room of `rules`.
pub(crate) fn event_id_of(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<String, PduError> {
    if rules.event_id_format == EventIdFormatVersion::V1 {
        return match object.get("event_id") {
            Some(CanonicalJsonValue::String(id)) => Ok(id.clone()),
            _ => Err(PduError::Malformed("no event_id".into())),
        };
    }
    ruma::signatures::reference_hash(object, rules)
        .map(|hash| format!("${hash}"))
        .map_err(|e| PduError::Malformed(e.to_string()))
}

/// Parses a PDU as canonical JSON (floats and out-of-range integers are
/// not) and checks its signatures.
pub(crate) async fn check(
    key_ring: &KeyRing,
    room_version: &str,
    pdu: &Value,
) -> Result<CheckedPdu, PduError> {
    let rules = rules_for(room_version)?;
    verify(prepare(key_ring, pdu.clone()).await?, &rules)
}

/// A PDU parsed, with the keys of its signers, to be verified.
struct Prepared {
    object: CanonicalJsonObject,
    keys: BTreeMap<String, BTreeMap<String, Base64>>,
}

/// A PDU as canonical JSON (floats and out-of-range integers are not).
fn canonical(pdu: Value) -> Result<CanonicalJsonObject, PduError> {
    serde_json::from_value(pdu).map_err(|e| PduError::Malformed(format!("not canonical JSON: {e}")))
}

/// A PDU given as JSON text, parsed straight into canonical JSON.
pub(crate) fn canonical_from_str(pdu: &str) -> Result<CanonicalJsonObject, PduError> {
    serde_json::from_str(pdu).map_err(|e| PduError::Malformed(format!("not canonical JSON: {e}")))
}

/// Parses a PDU and finds its signers' keys valid when it was sent.
async fn prepare(key_ring: &KeyRing, pdu: Value) -> Result<Prepared, PduError> {
    prepare_object(key_ring, canonical(pdu)?).await
}

/// Finds a parsed PDU's signers' keys valid when it was sent.
async fn prepare_object(
    key_ring: &KeyRing,
    object: CanonicalJsonObject,
) -> Result<Prepared, PduError> {
    let at_ms = match object.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => i64::from(*ts),
        _ => return Err(PduError::Malformed("no origin_server_ts".into())),
    };
    let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
        return Err(PduError::Signature("unsigned".into()));
    };
    let mut keys: BTreeMap<String, BTreeMap<String, Base64>> = BTreeMap::new();
    for (server, server_keys) in signatures {
        let CanonicalJsonValue::Object(server_keys) = server_keys else {
            continue;
        };
        let key_ids: Vec<String> = server_keys.keys().cloned().collect();
        let found = key_ring
            .keys_for(server, &key_ids, at_ms)
            .await
            .map_err(|e| PduError::Signature(e.to_string()))?;
        let set: BTreeMap<String, Base64> = found
            .into_iter()
            .filter_map(|(id, key)| Some((id, Base64::parse(&key).ok()?)))
            .collect();
        if !set.is_empty() {
            keys.insert(server.clone(), set);
        }
    }
    Ok(Prepared { object, keys })
}

/// The event ID and signature check of a prepared PDU (CPU only).
fn verify(prepared: Prepared, rules: &RoomVersionRules) -> Result<CheckedPdu, PduError> {
    let event_id = event_id_of(&prepared.object, rules)?;
    ruma::signatures::verify_event(&prepared.keys, &prepared.object, rules)
        .map_err(|e| PduError::Signature(e.to_string()))?;
    Ok(CheckedPdu {
        event_id,
        object: prepared.object,
    })
}

/// [`check`] for many PDUs (a join's state and auth chain): keys are found
/// in turn (the key ring caches them), then the hashes and signatures are
/// checked on two threads. Results in the order given.
pub(crate) async fn check_many(
    key_ring: &KeyRing,
    room_version: &str,
    pdus: Vec<Value>,
) -> Result<Vec<Result<CheckedPdu, PduError>>, PduError> {
    check_many_parsed(
        key_ring,
        room_version,
        pdus.into_iter().map(canonical).collect(),
    )
    .await
}

/// [`check_many`] for PDUs parsed already (those that did not parse stay
/// refused, in their place).
pub(crate) async fn check_many_parsed(
    key_ring: &KeyRing,
    room_version: &str,
    pdus: Vec<Result<CanonicalJsonObject, PduError>>,
) -> Result<Vec<Result<CheckedPdu, PduError>>, PduError> {
    let rules = rules_for(room_version)?;
    let started = std::time::Instant::now();
    let mut prepared = Vec::with_capacity(pdus.len());
    for pdu in pdus {
        prepared.push(match pdu {
            Ok(object) => prepare_object(key_ring, object).await,
            Err(error) => Err(error),
        });
    }
    let prepared_ms = started.elapsed().as_millis() as u64;
    let second = prepared.split_off(prepared.len() / 2);
    let run = |part: Vec<Result<Prepared, PduError>>, rules: RoomVersionRules| {
        tokio::task::spawn_blocking(move || {
            part.into_iter()
                .map(|p| p.and_then(|p| verify(p, &rules)))
                .collect::<Vec<_>>()
        })
    };
    let (first, second) = tokio::join!(run(prepared, rules.clone()), run(second, rules));
    let joined = |e: tokio::task::JoinError| PduError::Signature(format!("checking: {e}"));
    let mut checked = first.map_err(joined)?;
    checked.extend(second.map_err(joined)?);
    tracing::debug!(
        events = checked.len(),
        prepared_ms,
        verified_ms = started.elapsed().as_millis() as u64,
        "checked a batch of PDUs"
    );
    Ok(checked)
}

impl crate::FederationService {
    /// Hands a checked PDU to the roomserver as a new event of the room;
    /// the roomserver's outcome for it.
    pub(crate) async fn input_new_pdu(
        &self,
        room_id: &str,
        room_version: String,
        pdu: &CheckedPdu,
    ) -> Result<ganglion_api::proto::roomserver::PduOutcome, ganglion_api::ApiError> {
        use ganglion_api::proto::roomserver as pb;
        let response = self
            .roomserver
            .input_pdus(pb::InputPdusRequest {
                room_id: room_id.to_owned(),
                room_version,
                pdus: vec![pb::InputPdu {
                    kind: pb::input_pdu::Kind::New as i32,
                    event_json: pdu.json_bytes(),
                    ..Default::default()
                }],
            })
            .await?;
        response
            .outcomes
            .into_iter()
            .next()
            .ok_or_else(|| ganglion_api::ApiError::Internal("no outcome for the PDU".into()))
    }
}

impl crate::FederationService {
    /// Hands checked events to the roomserver as outliers, in chunks (each
    /// chunk one input record), in the order given (auth order); those in
    /// `announce` (a join's state, about to become current) are announced
    /// to the views as they are stored.
    pub(crate) async fn input_outliers(
        &self,
        room_id: &str,
        room_version: &str,
        events: &[CheckedPdu],
        announce: &std::collections::HashSet<String>,
    ) -> Result<(), ganglion_api::ApiError> {
        use ganglion_api::proto::roomserver as pb;
        let pdus = events
            .iter()
            .map(|e| pb::InputPdu {
                kind: pb::input_pdu::Kind::Outlier as i32,
                event_json: e.json_bytes(),
                announce: announce.contains(&e.event_id),
                ..Default::default()
            })
            .collect();
        for pdus in input_records(pdus) {
            let stored = self
                .roomserver
                .input_pdus(pb::InputPdusRequest {
                    room_id: room_id.to_owned(),
                    room_version: room_version.to_owned(),
                    pdus,
                })
                .await?;
            for outcome in stored.outcomes.iter().filter(|o| o.outcome != "outlier") {
                tracing::warn!(room_id, event_id = %outcome.event_id, outcome = %outcome.outcome, reason = %outcome.reason, "an outlier was not stored");
            }
        }
        Ok(())
    }
}

/// PDUs handed to the roomserver per input record (some 300 KB of a
/// join's member events).
const PDUS_PER_INPUT: usize = 500;
/// The most bytes of PDUs one input record carries, whatever their
/// number (well under the log's record size limits; a PDU is at most
/// 64 KiB).
const INPUT_BYTES: usize = 512 * 1024;

/// PDUs split, in order, into input records of at most [`PDUS_PER_INPUT`]
/// events and [`INPUT_BYTES`] bytes.
pub(crate) fn input_records(
    pdus: Vec<ganglion_api::proto::roomserver::InputPdu>,
) -> Vec<Vec<ganglion_api::proto::roomserver::InputPdu>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut bytes = 0;
    for pdu in pdus {
        if !record.is_empty()
            && (record.len() == PDUS_PER_INPUT || bytes + pdu.event_json.len() > INPUT_BYTES)
        {
            records.push(std::mem::take(&mut record));
            bytes = 0;
        }
        bytes += pdu.event_json.len();
        record.push(pdu);
    }
    if !record.is_empty() {
        records.push(record);
    }
    records
}

/// The answer for an event of ours the roomserver was to take (a join, an
/// invite): its ID and output position when taken, else why not.
pub(crate) fn taken(
    what: &str,
    event_id: String,
    response: ganglion_api::proto::roomserver::InputPdusResponse,
) -> Result<ganglion_api::proto::federationapi::JoinRoomResponse, ganglion_api::ApiError> {
    match response.outcomes.first() {
        Some(o) if matches!(o.outcome.as_str(), "accepted" | "duplicate") => {
            Ok(ganglion_api::proto::federationapi::JoinRoomResponse {
                event_id,
                output_position: response.output_position,
            })
        }
        Some(o) => Err(ganglion_api::ApiError::Forbidden(format!(
            "the {what} was not accepted: {} {}",
            o.outcome, o.reason
        ))),
        None => Err(ganglion_api::ApiError::Internal(format!(
            "no outcome for the {what}"
        ))),
    }
}

#[cfg(test)]
mod input_records_tests {
    use ganglion_api::proto::roomserver::InputPdu;

    fn pdu(bytes: usize) -> InputPdu {
        InputPdu {
            event_json: vec![b'x'; bytes],
            ..Default::default()
        }
    }

    #[test]
    fn records_are_bounded_by_count_and_bytes_in_order() {
        let sizes: Vec<usize> = super::input_records((0..1_001).map(|_| pdu(10)).collect())
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![500, 500, 1]);
        let big: Vec<InputPdu> = (0..20).map(|i| pdu(60_000 + i)).collect();
        let records = super::input_records(big);
        assert!(
            records
                .iter()
                .all(|r| r.iter().map(|p| p.event_json.len()).sum::<usize>() <= 512 * 1024)
        );
        let order: Vec<usize> = records
            .iter()
            .flatten()
            .map(|p| p.event_json.len())
            .collect();
        assert_eq!(order, (0..20).map(|i| 60_000 + i).collect::<Vec<_>>());
        assert!(super::input_records(Vec::new()).is_empty());
    }
}
