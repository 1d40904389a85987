//! Received PDUs: their event ID as their room version computes it, and
//! the signatures of the servers that must have signed them, checked with
//! keys valid when the event was sent. (The roomserver checks the content
//! hash, redacting an event whose hash fails, and the auth rules.)
//!
//! The reference hash and the signatures cover the same bytes (the
//! redacted event without `signatures` and `unsigned`), so each PDU is
//! redacted and serialised once for both; a signer's key is decoded and
//! decompressed once per batch, not once per event.

use ganglion_base::limits::MAX_PDU_BYTES;
use std::collections::{BTreeMap, HashMap};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use ruma::canonical_json::{CanonicalJsonObject, RedactingSerializer};
use ruma::room_version_rules::{EventIdFormatVersion, RoomVersionRules};
use ruma::serde::Base64;
use ruma::serde::base64::{Standard, UrlSafe};
use ruma::{CanonicalJsonValue, RoomVersionId};
use serde_json::Value;
use sha2::{Digest, Sha256};

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

    /// Whether the event closes its room to guests.
    pub(crate) fn closes_to_guests(&self) -> bool {
        let content = self
            .object
            .get("content")
            .and_then(|c| serde_json::to_value(c).ok())
            .unwrap_or_default();
        ganglion_api::roomserver::closes_to_guests(
            self.field("type").unwrap_or_default(),
            self.field("state_key"),
            &content,
        )
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

/// The top-level fields left out, after redaction, of the bytes that are
/// hashed for the event ID and signed.
const UNSIGNED_FIELDS: &[&str] = &["signatures", "unsigned"];

/// The bytes of a PDU its reference hash and its signatures cover.
fn signed_bytes(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<String, PduError> {
    let json = RedactingSerializer::new()
        .rules(&rules.redaction)
        .custom_redacted_root_fields(UNSIGNED_FIELDS)
        .serialize(object)
        .map_err(|e| PduError::Malformed(format!("cannot be redacted: {e}")))?;
    if json.len() > MAX_PDU_BYTES {
        return Err(PduError::Malformed("larger than a PDU may be".into()));
    }
    Ok(json)
}

/// The event ID of a PDU whose [`signed_bytes`] are `signed`.
fn event_id_from(
    object: &CanonicalJsonObject,
    signed: &str,
    rules: &RoomVersionRules,
) -> Result<String, PduError> {
    let hash = || -> [u8; 32] { Sha256::digest(signed.as_bytes()).into() };
    Ok(match rules.event_id_format {
        EventIdFormatVersion::V1 => match object.get("event_id") {
            Some(CanonicalJsonValue::String(id)) => id.clone(),
            _ => return Err(PduError::Malformed("no event_id".into())),
        },
        EventIdFormatVersion::V2 => format!("${}", Base64::<Standard, _>::new(hash()).encode()),
        _ => format!("${}", Base64::<UrlSafe, _>::new(hash()).encode()),
    })
}

/// The event ID of a PDU in a room of `rules`.
pub(crate) fn event_id_of(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<String, PduError> {
    if rules.event_id_format == EventIdFormatVersion::V1 {
        return event_id_from(object, "", rules);
    }
    event_id_from(object, &signed_bytes(object, rules)?, rules)
}

/// Parses a PDU as canonical JSON (floats and out-of-range integers are
/// not) and checks its signatures.
pub(crate) async fn check(
    key_ring: &KeyRing,
    room_version: &str,
    pdu: &Value,
) -> Result<CheckedPdu, PduError> {
    let rules = rules_for(room_version)?;
    let object = canonical(pdu.clone())?;
    verify(
        prepare_object(key_ring, object, &rules, &mut DecodedKeys::default()).await?,
        &rules,
    )
}

/// A PDU parsed, with the keys of its signers, to be verified.
struct Prepared {
    object: CanonicalJsonObject,
    /// Server → key ID → the key (`None`: not a valid ed25519 key).
    keys: BTreeMap<String, BTreeMap<String, Option<VerifyingKey>>>,
}

/// Signers' public keys decoded and decompressed, by their base64 text:
/// once per batch of PDUs however many each key signed.
#[derive(Default)]
struct DecodedKeys(HashMap<String, Option<VerifyingKey>>);

impl DecodedKeys {
    /// The key `base64` encodes, `None` when it is not a point of the
    /// curve; `Err` when it is not even 32 bytes of base64 (a key that
    /// cannot be had).
    fn get(&mut self, base64: &str) -> Result<Option<VerifyingKey>, ()> {
        if let Some(key) = self.0.get(base64) {
            return Ok(*key);
        }
        let bytes = Base64::<Standard, [u8; 32]>::parse(base64).map_err(|_| ())?;
        let key = VerifyingKey::from_bytes(bytes.as_inner()).ok();
        self.0.insert(base64.to_owned(), key);
        Ok(key)
    }
}

/// A PDU as canonical JSON (floats and out-of-range integers are not).
fn canonical(pdu: Value) -> Result<CanonicalJsonObject, PduError> {
    serde_json::from_value(pdu).map_err(|e| PduError::Malformed(format!("not canonical JSON: {e}")))
}

/// A PDU given as JSON text, parsed straight into canonical JSON.
pub(crate) fn canonical_from_str(pdu: &str) -> Result<CanonicalJsonObject, PduError> {
    serde_json::from_str(pdu).map_err(|e| PduError::Malformed(format!("not canonical JSON: {e}")))
}

/// Finds the keys, valid when it was sent, of the servers that must have
/// signed a parsed PDU. Other servers named in `signatures` are not asked
/// for keys: a PDU cannot make us fetch keys from servers of its choosing.
async fn prepare_object(
    key_ring: &KeyRing,
    object: CanonicalJsonObject,
    rules: &RoomVersionRules,
    decoded: &mut DecodedKeys,
) -> Result<Prepared, PduError> {
    let required: Vec<String> =
        ruma::signatures::required_server_signatures_to_verify_event(&object, &rules.signatures)
            .map_err(|e| PduError::Signature(e.to_string()))?
            .into_iter()
            .map(|server| server.to_string())
            .collect();
    let at_ms = match object.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => i64::from(*ts),
        _ => return Err(PduError::Malformed("no origin_server_ts".into())),
    };
    let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
        return Err(PduError::Signature("unsigned".into()));
    };
    let mut keys: BTreeMap<String, BTreeMap<String, Option<VerifyingKey>>> = BTreeMap::new();
    for (server, server_keys) in signatures {
        if !required.contains(server) {
            continue;
        }
        let CanonicalJsonValue::Object(server_keys) = server_keys else {
            continue;
        };
        let key_ids: Vec<String> = server_keys.keys().cloned().collect();
        let found = key_ring
            .keys_for(server, &key_ids, at_ms)
            .await
            .map_err(|e| PduError::Signature(e.to_string()))?;
        let set: BTreeMap<String, Option<VerifyingKey>> = found
            .into_iter()
            .filter_map(|(id, key)| Some((id, decoded.get(&key).ok()?)))
            .collect();
        if !set.is_empty() {
            keys.insert(server.clone(), set);
        }
    }
    Ok(Prepared { object, keys })
}

/// The event ID and signature check of a prepared PDU (CPU only): every
/// server the spec requires (the sender's; the event ID's in rooms of
/// versions 1 and 2; a restricted join's authorising server) must have
/// signed it with a key we hold, and every signature by such a server with
/// a key we hold must verify.
fn verify(prepared: Prepared, rules: &RoomVersionRules) -> Result<CheckedPdu, PduError> {
    let Prepared { object, keys } = prepared;
    let has_hash = matches!(
        object.get("hashes"),
        Some(CanonicalJsonValue::Object(hashes))
            if matches!(hashes.get("sha256"), Some(CanonicalJsonValue::String(_)))
    );
    if !has_hash {
        return Err(PduError::Malformed("no hashes.sha256".into()));
    }
    let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
        return Err(PduError::Signature("unsigned".into()));
    };
    let servers =
        ruma::signatures::required_server_signatures_to_verify_event(&object, &rules.signatures)
            .map_err(|e| PduError::Signature(e.to_string()))?;
    let signed = signed_bytes(&object, rules)?;
    for server in &servers {
        let server = server.as_str();
        let Some(CanonicalJsonValue::Object(by_key)) = signatures.get(server) else {
            return Err(PduError::Signature(format!("not signed by {server}")));
        };
        let held = keys.get(server);
        let mut verified = false;
        for (key_id, signature) in by_key {
            let Some(key) = held.and_then(|held| held.get(key_id)) else {
                continue;
            };
            if !key_id
                .split_once(':')
                .is_some_and(|(algorithm, name)| algorithm == "ed25519" && !name.is_empty())
            {
                continue;
            }
            let wrong = |why: &str| PduError::Signature(format!("{server}'s {key_id}: {why}"));
            let CanonicalJsonValue::String(signature) = signature else {
                return Err(wrong("the signature is not a string"));
            };
            let signature = Base64::<Standard, [u8; 64]>::parse(signature)
                .map_err(|_| wrong("the signature is not 64 bytes of base64"))?;
            let key = key.ok_or_else(|| wrong("the key is not an ed25519 key"))?;
            key.verify(
                signed.as_bytes(),
                &Signature::from_bytes(signature.as_inner()),
            )
            .map_err(|_| wrong("the signature does not verify"))?;
            verified = true;
        }
        if !verified {
            return Err(PduError::Signature(format!(
                "no signature by {server} with a key we hold"
            )));
        }
    }
    let event_id = event_id_from(&object, &signed, rules)?;
    Ok(CheckedPdu { event_id, object })
}

/// [`check`] for many PDUs (a join's state and auth chain): keys are found
/// in turn (the key ring caches them), then the event IDs and signatures
/// are checked on every core. Results in the order given.
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
    let mut decoded = DecodedKeys::default();
    for pdu in pdus {
        prepared.push(match pdu {
            Ok(object) => prepare_object(key_ring, object, &rules, &mut decoded).await,
            Err(error) => Err(error),
        });
    }
    let prepared_ms = started.elapsed().as_millis() as u64;
    let checked = tokio::task::spawn_blocking(move || {
        ganglion_base::parallel::map_owned(prepared, |p| p.and_then(|p| verify(p, &rules)))
    })
    .await
    .map_err(|e| PduError::Signature(format!("checking: {e}")))?;
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
        let outcome = response
            .outcomes
            .into_iter()
            .next()
            .ok_or_else(|| ganglion_api::ApiError::Internal("no outcome for the PDU".into()))?;
        // A remote server closed the room to guests: ours leave it.
        if outcome.outcome == "accepted" && pdu.closes_to_guests() {
            let (roomserver, users) = (self.roomserver.clone(), self.users.clone());
            let (room_id, server_name) =
                (room_id.to_owned(), self.client.server_name().to_string());
            tokio::spawn(async move {
                ganglion_api::roomserver::remove_guests(
                    &roomserver,
                    &users,
                    &room_id,
                    &server_name,
                )
                .await;
            });
        }
        Ok(outcome)
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

#[cfg(test)]
mod verify_tests {
    use std::collections::BTreeMap;

    use ed25519_dalek::VerifyingKey;
    use ruma::CanonicalJsonValue;
    use ruma::canonical_json::CanonicalJsonObject;
    use ruma::room_version_rules::{EventIdFormatVersion, RoomVersionRules};
    use ruma::serde::Base64;
    use ruma::signatures::Ed25519KeyPair;
    use serde_json::json;

    use super::{Prepared, rules_for, verify};

    struct Server {
        name: &'static str,
        pair: Ed25519KeyPair,
    }

    impl Server {
        fn new(name: &'static str, version: &str) -> Self {
            let der = Ed25519KeyPair::generate();
            let pair = Ed25519KeyPair::from_der(&der, version.to_owned()).expect("key pair");
            Server { name, pair }
        }

        fn key_id(&self) -> String {
            format!("ed25519:{}", self.pair.version())
        }

        fn sign(&self, object: &mut CanonicalJsonObject, rules: &RoomVersionRules) {
            ruma::signatures::sign_event(self.name, &self.pair, object, &rules.redaction)
                .expect("signed");
        }
    }

    /// Checks `object` with `held` keys both ways (ours and ruma's
    /// `verify_event`), asserting they agree; whether it passed.
    fn agree(object: &CanonicalJsonObject, held: &[&Server], rules: &RoomVersionRules) -> bool {
        let mut ours = BTreeMap::new();
        let mut theirs = BTreeMap::new();
        for server in held {
            let public = server.pair.public_key();
            ours.entry(server.name.to_owned())
                .or_insert_with(BTreeMap::new)
                .insert(server.key_id(), VerifyingKey::from_bytes(&public).ok());
            theirs
                .entry(server.name.to_owned())
                .or_insert_with(BTreeMap::new)
                .insert(server.key_id(), Base64::new(public.to_vec()));
        }
        let checked = verify(
            Prepared {
                object: object.clone(),
                keys: ours,
            },
            rules,
        );
        let expected = ruma::signatures::verify_event(&theirs, object, rules);
        assert_eq!(
            checked.is_ok(),
            expected.is_ok(),
            "ours {checked:?}, ruma's {expected:?}"
        );
        if let Ok(checked) = checked {
            let event_id = if rules.event_id_format == EventIdFormatVersion::V1 {
                object["event_id"].to_string().trim_matches('"').to_owned()
            } else {
                format!(
                    "${}",
                    ruma::signatures::reference_hash(object, rules).expect("hash")
                )
            };
            assert_eq!(checked.event_id, event_id);
            true
        } else {
            false
        }
    }

    fn event(
        version: &str,
        sender: &str,
        kind: &str,
        content: serde_json::Value,
    ) -> CanonicalJsonObject {
        let mut event = json!({
            "room_id": "!room:a.example",
            "sender": sender,
            "origin_server_ts": 1_700_000_000_000_i64,
            "type": kind,
            "content": content,
            "prev_events": [],
            "auth_events": [],
            "depth": 3,
        });
        if kind == "m.room.member" {
            event["state_key"] = json!(sender);
        }
        if version == "1" {
            event["event_id"] = json!("$abc:a.example");
        }
        let mut object: CanonicalJsonObject = serde_json::from_value(event).expect("object");
        ruma::signatures::add_content_hash_to_event(&mut object).expect("hashed");
        object
    }

    fn by_server<'a>(
        object: &'a mut CanonicalJsonObject,
        server: &str,
    ) -> &'a mut CanonicalJsonObject {
        let Some(CanonicalJsonValue::Object(signatures)) = object.get_mut("signatures") else {
            panic!("no signatures")
        };
        let Some(CanonicalJsonValue::Object(by_server)) = signatures.get_mut(server) else {
            panic!("no signatures by {server}")
        };
        by_server
    }

    fn signature_of(
        object: &CanonicalJsonObject,
        server: &str,
        key_id: &str,
    ) -> CanonicalJsonValue {
        by_server(&mut object.clone(), server)[key_id].clone()
    }

    fn set_signature(
        object: &mut CanonicalJsonObject,
        server: &str,
        key_id: &str,
        signature: CanonicalJsonValue,
    ) {
        by_server(object, server).insert(key_id.to_owned(), signature);
    }

    #[test]
    fn signatures_are_checked_as_ruma_checks_them_in_every_version() {
        let a = Server::new("a.example", "a1");
        let a_other = Server::new("a.example", "a2");
        let b = Server::new("b.example", "b1");
        for version in ["1", "10", "11", "12"] {
            let rules = rules_for(version).expect("rules");
            let message = || {
                event(
                    version,
                    "@alice:a.example",
                    "m.room.message",
                    json!({"body": "hi"}),
                )
            };

            let mut valid = message();
            a.sign(&mut valid, &rules);
            assert!(agree(&valid, &[&a], &rules), "v{version}: a valid event");
            assert!(
                !agree(&valid, &[&b], &rules),
                "v{version}: no key of the sender's server"
            );
            assert!(
                !agree(&valid, &[&a_other], &rules),
                "v{version}: a key it did not sign with"
            );

            let mut body_changed = valid.clone();
            body_changed.insert(
                "content".into(),
                CanonicalJsonValue::Object(Default::default()),
            );
            assert!(
                agree(&body_changed, &[&a], &rules),
                "v{version}: content is not signed (its hash is the roomserver's)"
            );

            let mut forged = valid.clone();
            forged.insert(
                "origin_server_ts".into(),
                CanonicalJsonValue::Integer(5_u32.into()),
            );
            assert!(
                !agree(&forged, &[&a], &rules),
                "v{version}: a forged timestamp"
            );

            let mut unsigned = valid.clone();
            unsigned.insert(
                "signatures".into(),
                CanonicalJsonValue::Object(Default::default()),
            );
            assert!(
                !agree(&unsigned, &[&a], &rules),
                "v{version}: no signatures"
            );

            let mut elsewhere = message();
            b.sign(&mut elsewhere, &rules);
            assert!(
                !agree(&elsewhere, &[&a, &b], &rules),
                "v{version}: signed by another server"
            );

            let mut twice = message();
            a.sign(&mut twice, &rules);
            a_other.sign(&mut twice, &rules);
            assert!(
                agree(&twice, &[&a, &a_other], &rules),
                "v{version}: two good keys"
            );
            let good = signature_of(&twice, "a.example", &a.key_id());
            set_signature(&mut twice, "a.example", &a_other.key_id(), good);
            assert!(
                !agree(&twice, &[&a, &a_other], &rules),
                "v{version}: one bad signature of two"
            );
            set_signature(
                &mut twice,
                "a.example",
                &a_other.key_id(),
                CanonicalJsonValue::String("not base64!".into()),
            );
            assert!(
                !agree(&twice, &[&a, &a_other], &rules),
                "v{version}: a signature not base64"
            );
            assert!(
                agree(&twice, &[&a], &rules),
                "v{version}: a signature by a key not held is ignored"
            );

            let mut no_hash = message();
            no_hash.remove("hashes");
            a.sign(&mut no_hash, &rules);
            assert!(
                !agree(&no_hash, &[&a], &rules),
                "v{version}: no content hash"
            );
        }
    }

    #[test]
    fn a_restricted_join_needs_its_authorising_server() {
        let a = Server::new("a.example", "a1");
        let b = Server::new("b.example", "b1");
        for version in ["10", "11", "12"] {
            let rules = rules_for(version).expect("rules");
            let mut join = event(
                version,
                "@alice:a.example",
                "m.room.member",
                json!({"membership": "join", "join_authorised_via_users_server": "@bob:b.example"}),
            );
            a.sign(&mut join, &rules);
            assert!(
                !agree(&join, &[&a, &b], &rules),
                "v{version}: not countersigned"
            );
            b.sign(&mut join, &rules);
            assert!(agree(&join, &[&a, &b], &rules), "v{version}: countersigned");
            assert!(
                !agree(&join, &[&a], &rules),
                "v{version}: the authorising key not held"
            );
        }
    }
}
