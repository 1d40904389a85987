//! Cross-signing: a user's master, self-signing and user-signing keys
//! (`/keys/device_signing/upload`), the signatures made with them and
//! with devices (`/keys/signatures/upload`), and how both show in what is
//! read: a key's signatures by its own user are everyone's to see; a
//! signature of another user's master key only its signer's.
//!
//! What is checked: each key is its user's, of its usage, one ed25519 key
//! whose ID names its public key, and no device ID; the self-signing and
//! user-signing keys are signed by the master key. A user's device is
//! signed by their self-signing key, their master key by one of their
//! devices, another user's master key by their user-signing key; each
//! signed object must be what is stored, signatures aside (another
//! server's user's master key is not stored here: its object is taken as
//! given, and a signature of a stale one only fails to verify for whoever
//! checks it).

use std::collections::BTreeMap;

use ganglion_api::ApiError;
use ganglion_api::proto::keyserver as pb;
use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use serde_json::{Map, Value, json};

use ganglion_api::keys::add_signature;

use crate::KeyServer;
use crate::storage::cross_signing::{Signature, SigningKey};

/// What is seen of a user's keys (see [`KeyServer::keys_seen_by`]).
#[derive(Default)]
pub(crate) struct SeenKeys {
    pub(crate) devices: Vec<(String, String)>,
    pub(crate) signing: BTreeMap<String, Value>,
}

pub(crate) const MASTER: &str = "master";
pub(crate) const SELF_SIGNING: &str = "self_signing";
pub(crate) const USER_SIGNING: &str = "user_signing";

/// The most signatures one upload may carry.
const MAX_SIGNED_OBJECTS: usize = 1_000;

/// A cross-signing key as uploaded, checked to be `user_id`'s, of
/// `usage`, with one ed25519 key whose ID names it; as stored (its JSON
/// written in one key order, so the same key is the same text) and
/// parsed.
fn checked_key(json: &[u8], user_id: &str, usage: &str) -> Result<(SigningKey, Value), ApiError> {
    let invalid = |why: &str| ApiError::InvalidInput(format!("{usage} key: {why}"));
    let value: Value = serde_json::from_slice(json).map_err(|_| invalid("not JSON"))?;
    if value["user_id"] != user_id {
        return Err(invalid("must be the uploading user's"));
    }
    let usages = value["usage"]
        .as_array()
        .ok_or_else(|| invalid("no usage"))?;
    if !usages.iter().any(|u| u == usage) {
        return Err(invalid("wrong usage"));
    }
    let keys = value["keys"]
        .as_object()
        .ok_or_else(|| invalid("no keys"))?;
    let [(key_id, public)] = keys.iter().collect::<Vec<_>>()[..] else {
        return Err(invalid("must hold exactly one key"));
    };
    match key_id.strip_prefix("ed25519:") {
        Some(name) if !name.is_empty() && public.as_str() == Some(name) => {}
        _ => return Err(invalid("its key ID must be ed25519:<public key>")),
    }
    let decoded = ruma::serde::Base64::<ruma::serde::base64::Standard>::parse(name_of(key_id));
    if decoded.map_or(true, |key| key.as_bytes().len() != 32) {
        return Err(invalid("its public key is not an ed25519 key in base64"));
    }
    let key = SigningKey {
        key_id: key_id.clone(),
        json: value.to_string(),
    };
    Ok((key, value))
}

/// The public key (or device ID) a key ID names.
fn name_of(key_id: &str) -> &str {
    key_id.strip_prefix("ed25519:").unwrap_or(key_id)
}

fn canonical(value: &Value) -> Option<CanonicalJsonObject> {
    match serde_json::from_value::<CanonicalJsonValue>(value.clone()).ok()? {
        CanonicalJsonValue::Object(object) => Some(object),
        _ => None,
    }
}

/// Whether `object` carries `signer`'s signature with `key_id`, made by
/// the ed25519 key `public` (unpadded base64); other signatures aside.
pub(crate) fn signed_with(object: &Value, signer: &str, key_id: &str, public: &str) -> bool {
    let Some(signature) = object["signatures"][signer][key_id].as_str() else {
        return false;
    };
    let Some(mut only) = canonical(object) else {
        return false;
    };
    only.remove("unsigned");
    only.insert(
        "signatures".into(),
        CanonicalJsonValue::Object(CanonicalJsonObject::from([(
            signer.to_owned(),
            CanonicalJsonValue::Object(CanonicalJsonObject::from([(
                key_id.to_owned(),
                CanonicalJsonValue::String(signature.to_owned()),
            )])),
        )])),
    );
    let Ok(public) = ruma::serde::Base64::parse(public) else {
        return false;
    };
    let keys = BTreeMap::from([(
        signer.to_owned(),
        BTreeMap::from([(key_id.to_owned(), public)]),
    )]);
    ruma::signatures::verify_json(&keys, &only).is_ok()
}

/// Whether two objects are the same but for their signatures (and
/// `unsigned`).
fn same_but_signatures(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("signatures");
            o.remove("unsigned");
        }
        v
    };
    strip(a) == strip(b)
}

/// The signatures of one key (a device ID or a public key).
fn signed<'a>(signatures: &'a [Signature], target: &str) -> Vec<&'a Signature> {
    signatures
        .iter()
        .filter(|s| s.target_key_id == target)
        .collect()
}

/// Adds signatures to a key object's `signatures`.
fn with_signatures<'a>(json: &str, signatures: impl IntoIterator<Item = &'a Signature>) -> Value {
    let mut value: Value = serde_json::from_str(json).unwrap_or_else(|_| json!({}));
    for one in signatures {
        add_signature(
            &mut value,
            &one.signer_user_id,
            &one.signer_key_id,
            json!(one.signature),
        );
    }
    value
}

/// The signature in `object` made by `signer` with `key_id`, if it
/// carries one.
fn signature_in(object: &Value, signer: &str, key_id: &str) -> Option<String> {
    object["signatures"][signer][key_id]
        .as_str()
        .map(str::to_owned)
}

fn failure(errcode: &str, error: &str) -> Value {
    json!({ "errcode": errcode, "error": error })
}

impl KeyServer {
    /// What `viewer` (`None`: anyone) sees of a user's keys, each with its
    /// signatures by the user and by the viewer (read once for both): the
    /// identity keys of `devices` (every device when empty; none asked
    /// when `None`) as (device ID, JSON), and, with `signing`, the
    /// cross-signing keys by usage.
    pub(crate) async fn keys_seen_by(
        &self,
        user_id: &str,
        devices: Option<&[String]>,
        signing: bool,
        viewer: Option<&str>,
    ) -> Result<SeenKeys, ApiError> {
        let device_keys = match devices {
            Some(devices) => self.storage.device_keys(user_id, devices).await?,
            None => Vec::new(),
        };
        let signing_keys = if signing {
            self.storage.signing_keys(user_id).await?
        } else {
            BTreeMap::new()
        };
        if device_keys.is_empty() && signing_keys.is_empty() {
            return Ok(SeenKeys::default());
        }
        let signatures = self.storage.signatures_of(user_id, viewer).await?;
        let of = |target: &str| signed(&signatures, target);
        Ok(SeenKeys {
            devices: device_keys
                .into_iter()
                .map(|(device, json)| {
                    let own = of(&device);
                    if own.is_empty() {
                        (device, json)
                    } else {
                        let merged = with_signatures(&json, own).to_string();
                        (device, merged)
                    }
                })
                .collect(),
            signing: signing_keys
                .into_iter()
                .map(|(usage, key)| (usage, with_signatures(&key.json, of(name_of(&key.key_id)))))
                .collect(),
        })
    }

    /// The content of an `m.signing_key_update` for a local user: their
    /// master and self-signing keys as everyone sees them.
    pub(crate) async fn signing_key_update(&self, user_id: &str) -> Result<Value, ApiError> {
        let keys = self.keys_seen_by(user_id, None, true, None).await?.signing;
        let mut content = json!({ "user_id": user_id });
        for (usage, field) in [(MASTER, "master_key"), (SELF_SIGNING, "self_signing_key")] {
            if let Some(key) = keys.get(usage) {
                content[field] = key.clone();
            }
        }
        Ok(content)
    }

    pub(crate) async fn upload_signing_keys_of(
        &self,
        request: pb::UploadSigningKeysRequest,
    ) -> Result<pb::UploadSigningKeysResponse, ApiError> {
        let user_id = request.user_id.as_str();
        let mut given: BTreeMap<&str, (SigningKey, Value)> = BTreeMap::new();
        for (usage, json) in [
            (MASTER, &request.master_key_json),
            (SELF_SIGNING, &request.self_signing_key_json),
            (USER_SIGNING, &request.user_signing_key_json),
        ] {
            if let Some(json) = json {
                given.insert(usage, checked_key(json, user_id, usage)?);
            }
        }
        if given.is_empty() {
            return Ok(pb::UploadSigningKeysResponse::default());
        }
        let stored = self.storage.signing_keys(user_id).await?;
        let master = given
            .get(MASTER)
            .map(|(key, _)| key)
            .or_else(|| stored.get(MASTER))
            .ok_or_else(|| ApiError::MissingParam("no master key is available".into()))?
            .clone();
        let devices: Vec<String> = self
            .storage
            .device_keys(user_id, &[])
            .await?
            .into_iter()
            .map(|(device, _)| device)
            .collect();
        for (usage, (key, value)) in &given {
            if devices.iter().any(|d| d == name_of(&key.key_id)) {
                return Err(ApiError::Forbidden(format!(
                    "the {usage} key's ID is one of the user's device IDs"
                )));
            }
            if *usage != MASTER
                && !signed_with(value, user_id, &master.key_id, name_of(&master.key_id))
            {
                return Err(ApiError::InvalidSignature(format!(
                    "the {usage} key is not signed by the master key"
                )));
            }
        }
        // Uploading the same keys again (a retry) changes nothing; setting
        // up the first master key needs no new authentication; replacing
        // keys does.
        let changed: BTreeMap<&str, SigningKey> = given
            .into_iter()
            .map(|(usage, (key, _))| (usage, key))
            .filter(|(usage, key)| stored.get(*usage).is_none_or(|s| s.json != key.json))
            .collect();
        if changed.is_empty() {
            return Ok(pb::UploadSigningKeysResponse::default());
        }
        if stored.contains_key(MASTER) && !request.reauthenticated {
            return Ok(pb::UploadSigningKeysResponse {
                needs_reauthentication: true,
            });
        }
        // Others hear of the master and self-signing keys; the
        // user-signing key is the user's own business.
        let announce = changed.contains_key(MASTER) || changed.contains_key(SELF_SIGNING);
        if let Some(change) = self
            .storage
            .store_signing_keys(user_id, &changed, announce)
            .await?
        {
            self.publish(&[change]).await?;
        }
        Ok(pb::UploadSigningKeysResponse::default())
    }

    pub(crate) async fn upload_signatures_of(
        &self,
        request: pb::UploadSignaturesRequest,
    ) -> Result<pb::UploadSignaturesResponse, ApiError> {
        let signer = request.user_id.as_str();
        let body: Map<String, Value> = serde_json::from_slice(&request.signed_json)
            .map_err(|_| ApiError::InvalidInput("the body must be an object".into()))?;
        let count: usize = body
            .values()
            .map(|keys| keys.as_object().map_or(1, Map::len))
            .sum();
        if count > MAX_SIGNED_OBJECTS {
            return Err(ApiError::TooLarge("too many signed objects".into()));
        }
        let own_keys = self.storage.signing_keys(signer).await?;
        let own_devices: BTreeMap<String, Value> = self
            .storage
            .device_keys(signer, &[])
            .await?
            .into_iter()
            .map(|(device, json)| (device, serde_json::from_str(&json).unwrap_or_default()))
            .collect();
        let mut failures: Map<String, Value> = Map::new();
        let mut accepted: Vec<Signature> = Vec::new();
        let mut changed: Vec<(String, String)> = Vec::new();
        // Other users whose master keys the signer signed: the signer's
        // clients hear of them (and fetch their keys, signature and all).
        let mut signed_others: Vec<String> = Vec::new();
        for (target_user, objects) in &body {
            let Some(objects) = objects.as_object() else {
                failures.insert(
                    target_user.clone(),
                    json!({ "": failure("M_INVALID_PARAM", "not an object of signed keys") }),
                );
                continue;
            };
            for (target_key, object) in objects {
                let outcome = if target_user == signer {
                    self.own_signature(signer, target_key, object, &own_keys, &own_devices)
                } else {
                    self.others_signature(signer, target_user, target_key, object, &own_keys)
                        .await?
                };
                match outcome {
                    Ok((signature, change)) => {
                        if let Some(change) = change
                            && !changed.contains(&change)
                        {
                            changed.push(change);
                        }
                        if target_user != signer && !signed_others.contains(target_user) {
                            signed_others.push(target_user.clone());
                        }
                        accepted.push(signature);
                    }
                    Err(error) => {
                        failures
                            .entry(target_user.clone())
                            .or_insert_with(|| json!({}))[target_key.as_str()] = error;
                    }
                }
            }
        }
        if !accepted.is_empty() {
            let changes = self
                .storage
                .store_signatures(&accepted, &changed, (signer, &signed_others))
                .await?;
            self.publish(&changes).await?;
        }
        Ok(pb::UploadSignaturesResponse {
            failures_json: Value::Object(failures).to_string().into_bytes(),
        })
    }

    /// A signature of one of the signer's own keys: a device signed by the
    /// self-signing key, or the master key signed by a device. With the
    /// change to announce: the device's, or the cross-signing keys'.
    #[allow(clippy::type_complexity)]
    fn own_signature(
        &self,
        user_id: &str,
        target_key: &str,
        object: &Value,
        own_keys: &BTreeMap<String, SigningKey>,
        own_devices: &BTreeMap<String, Value>,
    ) -> Result<(Signature, Option<(String, String)>), Value> {
        let signature = |signer_key_id: &str, signature: String| Signature {
            target_user_id: user_id.to_owned(),
            target_key_id: target_key.to_owned(),
            signer_user_id: user_id.to_owned(),
            signer_key_id: signer_key_id.to_owned(),
            signature,
        };
        if let Some(stored) = own_devices.get(target_key) {
            let Some(self_signing) = own_keys.get(SELF_SIGNING) else {
                return Err(failure(
                    "M_MISSING_PARAM",
                    "no self-signing key is uploaded",
                ));
            };
            if !same_but_signatures(stored, object) {
                return Err(failure(
                    "M_INVALID_PARAM",
                    "the object is not the device's keys",
                ));
            }
            let key_id = &self_signing.key_id;
            if !signed_with(object, user_id, key_id, name_of(key_id)) {
                return Err(failure(
                    "M_INVALID_SIGNATURE",
                    "not signed by the self-signing key",
                ));
            }
            let made = signature_in(object, user_id, key_id).unwrap_or_default();
            return Ok((
                signature(key_id, made),
                Some((user_id.to_owned(), target_key.to_owned())),
            ));
        }
        let Some(master) = own_keys
            .get(MASTER)
            .filter(|m| name_of(&m.key_id) == target_key)
        else {
            return Err(failure("M_NOT_FOUND", "no such device or master key"));
        };
        let stored: Value = serde_json::from_str(&master.json).unwrap_or_default();
        if !same_but_signatures(&stored, object) {
            return Err(failure(
                "M_INVALID_PARAM",
                "the object is not the master key",
            ));
        }
        // Signed by a device of the user's (the signature's key ID names
        // it, its ed25519 key checks it).
        for (device, keys) in own_devices {
            let key_id = format!("ed25519:{device}");
            let Some(public) = keys["keys"][&key_id].as_str() else {
                continue;
            };
            if signed_with(object, user_id, &key_id, public) {
                let made = signature_in(object, user_id, &key_id).unwrap_or_default();
                return Ok((
                    signature(&key_id, made),
                    Some((user_id.to_owned(), String::new())),
                ));
            }
        }
        Err(failure(
            "M_INVALID_SIGNATURE",
            "not signed by one of the user's devices",
        ))
    }

    /// A signature of another user's master key by the signer's
    /// user-signing key. Only the signer hears of it: it is theirs.
    async fn others_signature(
        &self,
        signer: &str,
        target_user: &str,
        target_key: &str,
        object: &Value,
        own_keys: &BTreeMap<String, SigningKey>,
    ) -> Result<Result<(Signature, Option<(String, String)>), Value>, ApiError> {
        let Some(user_signing) = own_keys.get(USER_SIGNING) else {
            return Ok(Err(failure(
                "M_MISSING_PARAM",
                "no user-signing key is uploaded",
            )));
        };
        let master_id = format!("ed25519:{target_key}");
        let local = ganglion_api::users::server_of(target_user) == Some(self.server_name.as_str());
        if local {
            let stored = self.storage.signing_keys(target_user).await?;
            let Some(master) = stored.get(MASTER).filter(|m| m.key_id == master_id) else {
                return Ok(Err(failure("M_NOT_FOUND", "no such master key")));
            };
            let stored: Value = serde_json::from_str(&master.json).unwrap_or_default();
            if !same_but_signatures(&stored, object) {
                return Ok(Err(failure(
                    "M_INVALID_PARAM",
                    "the object is not the user's master key",
                )));
            }
        } else if object["user_id"] != target_user
            || object["keys"][&master_id] != target_key
            || !object["usage"]
                .as_array()
                .is_some_and(|u| u.iter().any(|u| u == MASTER))
        {
            return Ok(Err(failure(
                "M_INVALID_PARAM",
                "the object is not the user's master key",
            )));
        }
        let key_id = &user_signing.key_id;
        if !signed_with(object, signer, key_id, name_of(key_id)) {
            return Ok(Err(failure(
                "M_INVALID_SIGNATURE",
                "not signed by the user-signing key",
            )));
        }
        Ok(Ok((
            Signature {
                target_user_id: target_user.to_owned(),
                target_key_id: target_key.to_owned(),
                signer_user_id: signer.to_owned(),
                signer_key_id: key_id.clone(),
                signature: signature_in(object, signer, key_id).unwrap_or_default(),
            },
            None,
        )))
    }
}
