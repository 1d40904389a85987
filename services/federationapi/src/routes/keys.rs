//! `/_matrix/key/v2/server`: our signing key, signed by itself, valid for a week.

use axum::extract::State;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, respond};
use ruma::canonical_json::CanonicalJsonObject;
use serde_json::json;

use super::FederationState;

const VALIDITY_MS: u64 = 7 * 24 * 3600 * 1000;

pub(crate) async fn server_keys(State(state): State<FederationState>) -> MatrixResult {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let key_id = format!("ed25519:{}", state.key.version);
    let body = json!({
        "server_name": state.server_name,
        "valid_until_ts": now + VALIDITY_MS,
        "verify_keys": { key_id: { "key": state.key.public_key_base64 } },
        "old_verify_keys": {},
    });
    let mut object: CanonicalJsonObject =
        serde_json::from_value(body).map_err(|e| MatrixError::unknown(e.to_string()))?;
    ruma::signatures::sign_json(&state.server_name, &state.key.key_pair, &mut object)
        .map_err(|e| MatrixError::unknown(e.to_string()))?;
    respond(serde_json::to_value(object).map_err(|e| MatrixError::unknown(e.to_string()))?)
}

pub(crate) async fn version() -> MatrixResult {
    respond(json!({ "server": { "name": "Ganglion", "version": env!("CARGO_PKG_VERSION") } }))
}
