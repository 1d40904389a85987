//! Reading push rules: `GET /pushrules/`, `/pushrules/global/`, one rule,
//! and its `enabled` and `actions`. Every user's rules are the spec's
//! server-default ruleset, the same the syncapi evaluates for notification
//! counts; changing rules (PUT/DELETE) is not offered yet, and
//! `m.push_rules` account data is server-controlled.

use axum::extract::Path;
use ganglion_api::proto::userapi::Device;
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, respond};
use serde_json::{Value, json};

/// The kinds of rule a ruleset holds, in the spec's order of evaluation.
const KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

fn ruleset(device: &Device) -> Result<Value, MatrixError> {
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

// The push rule routes keep their own types: ruma's `Ruleset` leaves out
// the kinds without rules, which we list (empty), and its paths fix the
// scope to `global`, where ours answers another scope with 400
// `M_INVALID_PARAM` (ruma's route would make that 404).
pub(crate) async fn all(User(device): User) -> MatrixResult {
    respond(json!({ "global": ruleset(&device)? }))
}

pub(crate) async fn global(User(device): User) -> MatrixResult {
    respond(ruleset(&device)?)
}

/// One rule of the global ruleset.
fn rule(device: &Device, (scope, kind, rule_id): (&str, &str, &str)) -> Result<Value, MatrixError> {
    if scope != "global" {
        return Err(MatrixError::invalid_param("the only scope is global"));
    }
    if !KINDS.contains(&kind) {
        return Err(MatrixError::invalid_param("unknown push rule kind"));
    }
    let rules = ruleset(device)?;
    rules[kind]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["rule_id"] == rule_id)
        .cloned()
        .ok_or_else(|| MatrixError::not_found("no such push rule"))
}

pub(crate) async fn one(
    User(device): User,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
) -> MatrixResult {
    respond(rule(&device, (&scope, &kind, &rule_id))?)
}

pub(crate) async fn enabled(
    User(device): User,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
) -> MatrixResult {
    let rule = rule(&device, (&scope, &kind, &rule_id))?;
    respond(json!({ "enabled": rule["enabled"] }))
}

pub(crate) async fn actions(
    User(device): User,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
) -> MatrixResult {
    let rule = rule(&device, (&scope, &kind, &rule_id))?;
    respond(json!({ "actions": rule["actions"] }))
}
