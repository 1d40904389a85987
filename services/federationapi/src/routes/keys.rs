//! The key API: our signing key (`/_matrix/key/v2/server`, signed by
//! itself, valid for a week), and as a notary other servers' key
//! responses (`/_matrix/key/v2/query`), countersigned by us.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::Uri;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixJson, MatrixResult, parse_query, respond};
use ruma::canonical_json::CanonicalJsonObject;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::FederationService;
use crate::key_ring::now_ms;

const VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;

fn internal(error: impl ToString) -> MatrixError {
    MatrixError::unknown(error.to_string())
}

/// Our key response, signed.
pub(crate) fn own_key_response(
    service: &FederationService,
) -> Result<CanonicalJsonObject, MatrixError> {
    let key_id = format!("ed25519:{}", service.key.version);
    let body = json!({
        "server_name": service.server_name,
        "valid_until_ts": now_ms() + VALIDITY_MS,
        "verify_keys": { key_id: { "key": service.key.public_key_base64 } },
        "old_verify_keys": {},
    });
    let mut object: CanonicalJsonObject = serde_json::from_value(body).map_err(internal)?;
    ruma::signatures::sign_json(&service.server_name, &service.key.key_pair, &mut object)
        .map_err(internal)?;
    Ok(object)
}

pub(crate) async fn server_keys(State(service): State<Arc<FederationService>>) -> MatrixResult {
    respond(serde_json::to_value(own_key_response(&service)?).map_err(internal)?)
}

pub(crate) async fn version() -> MatrixResult {
    respond(json!({ "server": { "name": "Ganglion", "version": env!("CARGO_PKG_VERSION") } }))
}

/// The most servers one notary query may name.
const MAX_SERVERS_PER_QUERY: usize = 100;

#[derive(Deserialize)]
pub(crate) struct QueryBody {
    server_keys: BTreeMap<String, BTreeMap<String, KeyCriteria>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct KeyCriteria {
    minimum_valid_until_ts: Option<i64>,
}

#[derive(Deserialize)]
pub(crate) struct QueryOne {
    minimum_valid_until_ts: Option<i64>,
}

/// A server's key response as we hold (or fetch) it, with our signature.
async fn vouched(
    service: &FederationService,
    server: &str,
    minimum_valid_until_ts: i64,
) -> Result<Option<Value>, MatrixError> {
    if ruma::ServerName::parse(server).is_err() {
        return Ok(None);
    }
    let object = if server == service.server_name {
        Some(own_key_response(service)?)
    } else {
        service
            .key_ring
            .response_for_notary(server, minimum_valid_until_ts)
            .await
            .map_err(internal)?
            .map(|mut object| {
                ruma::signatures::sign_json(
                    &service.server_name,
                    &service.key.key_pair,
                    &mut object,
                )
                .map(|()| object)
            })
            .transpose()
            .map_err(internal)?
    };
    object
        .map(|o| serde_json::to_value(o).map_err(internal))
        .transpose()
}

pub(crate) async fn query_many(
    State(service): State<Arc<FederationService>>,
    MatrixJson(body): MatrixJson<QueryBody>,
) -> MatrixResult {
    if body.server_keys.len() > MAX_SERVERS_PER_QUERY {
        return Err(MatrixError::too_large("too many servers in one query"));
    }
    let mut responses = Vec::new();
    for (server, keys) in &body.server_keys {
        let minimum = keys
            .values()
            .filter_map(|k| k.minimum_valid_until_ts)
            .max()
            .unwrap_or(0);
        if let Some(response) = vouched(&service, server, minimum).await? {
            responses.push(response);
        }
    }
    respond(json!({ "server_keys": responses }))
}

pub(crate) async fn query_one(
    State(service): State<Arc<FederationService>>,
    Path(server): Path<String>,
    uri: Uri,
) -> MatrixResult {
    let query: QueryOne = parse_query(&uri)?;
    let minimum = query.minimum_valid_until_ts.unwrap_or(0);
    let responses: Vec<Value> = vouched(&service, &server, minimum)
        .await?
        .into_iter()
        .collect();
    respond(json!({ "server_keys": responses }))
}
