//! Reading push rules: `GET /pushrules/`, `/pushrules/global/`, one rule,
//! and its `enabled` and `actions`. Every user's rules are the spec's
//! server-default ruleset, the same the syncapi evaluates for notification
//! counts; changing rules (PUT/DELETE) is not offered yet, and
//! `m.push_rules` account data is server-controlled.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, respond};
use serde_json::{Value, json};

use crate::ClientApi;

/// The kinds of rule a ruleset holds, in the spec's order of evaluation.
const KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

async fn ruleset(api: &ClientApi, headers: &HeaderMap, uri: &Uri) -> Result<Value, MatrixError> {
    let device = api.authenticate(headers, uri).await?;
    let user_id = ruma::UserId::parse(&device.user_id)
        .map_err(|_| MatrixError::unknown("the device's user ID is invalid"))?;
    let mut rules = serde_json::to_value(ruma::push::Ruleset::server_default(&user_id))
        .map_err(|_| MatrixError::unknown("serializing push rules"))?;
    // Every kind is listed, an empty one too.
    for kind in KINDS {
        if rules.get(kind).is_none() {
            rules[kind] = json!([]);
        }
    }
    Ok(rules)
}

pub(crate) async fn all(
    State(api): State<Arc<ClientApi>>,
    headers: HeaderMap,
    uri: Uri,
) -> MatrixResult {
    respond(json!({ "global": ruleset(&api, &headers, &uri).await? }))
}

pub(crate) async fn global(
    State(api): State<Arc<ClientApi>>,
    headers: HeaderMap,
    uri: Uri,
) -> MatrixResult {
    respond(ruleset(&api, &headers, &uri).await?)
}

/// One rule of the global ruleset.
async fn rule(
    api: &ClientApi,
    headers: &HeaderMap,
    uri: &Uri,
    (scope, kind, rule_id): (&str, &str, &str),
) -> Result<Value, MatrixError> {
    if scope != "global" {
        return Err(MatrixError::invalid_param("the only scope is global"));
    }
    if !KINDS.contains(&kind) {
        return Err(MatrixError::invalid_param("unknown push rule kind"));
    }
    let rules = ruleset(api, headers, uri).await?;
    rules[kind]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["rule_id"] == rule_id)
        .cloned()
        .ok_or_else(|| MatrixError::not_found("no such push rule"))
}

pub(crate) async fn one(
    State(api): State<Arc<ClientApi>>,
    headers: HeaderMap,
    uri: Uri,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
) -> MatrixResult {
    respond(rule(&api, &headers, &uri, (&scope, &kind, &rule_id)).await?)
}

pub(crate) async fn enabled(
    State(api): State<Arc<ClientApi>>,
    headers: HeaderMap,
    uri: Uri,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
) -> MatrixResult {
    let rule = rule(&api, &headers, &uri, (&scope, &kind, &rule_id)).await?;
    respond(json!({ "enabled": rule["enabled"] }))
}

pub(crate) async fn actions(
    State(api): State<Arc<ClientApi>>,
    headers: HeaderMap,
    uri: Uri,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
) -> MatrixResult {
    let rule = rule(&api, &headers, &uri, (&scope, &kind, &rule_id)).await?;
    respond(json!({ "actions": rule["actions"] }))
}
