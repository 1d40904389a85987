//! The push rules API: `GET /pushrules/` and `/pushrules/global/`, one
//! rule and its `enabled` and `actions`, and their changes (PUT, DELETE).
//! A user's rules are their `m.push_rules` account data on top of the
//! server's defaults (`ganglion_base::push_rules`); the userapi makes each
//! change atomically and publishes the new rules, which reach the user's
//! clients through `/sync` and decide what notifies them.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::Uri;
use ganglion_api::proto::common::Empty;
use ganglion_api::proto::userapi::{self as user_pb, Device, update_push_rule_request};
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixBody, MatrixResult, parse_json, parse_query, respond};
use ganglion_base::push_rules::{self, Change, ChangeError};
use ruma::push::Ruleset;
use serde_json::{Value, json};

use crate::ClientApi;

fn refused(error: ChangeError) -> MatrixError {
    match error {
        ChangeError::NotFound(m) => MatrixError::not_found(m),
        ChangeError::Invalid(m) => MatrixError::invalid_param(m),
    }
}

impl ClientApi {
    /// A user's rules as they are now.
    async fn push_rules(&self, device: &Device) -> Result<Ruleset, MatrixError> {
        let user_id = ruma::UserId::parse(&device.user_id)
            .map_err(|_| MatrixError::unknown("the device's user ID is invalid"))?;
        let stored = self
            .users
            .get_account_data(user_pb::GetAccountDataRequest {
                user_id: device.user_id.clone(),
                room_id: String::new(),
                data_type: push_rules::ACCOUNT_DATA_TYPE.to_owned(),
            })
            .await
            .map_err(MatrixError::from)?
            .content_json
            .and_then(|json| String::from_utf8(json).ok());
        Ok(push_rules::effective(&user_id, stored.as_deref()))
    }

    /// The `m.push_rules` account data content of a user, as `GET
    /// /account_data/m.push_rules` answers it.
    pub(crate) async fn push_rules_content(&self, device: &Device) -> Result<Value, MatrixError> {
        Ok(push_rules::content(&self.push_rules(device).await?))
    }

    /// Checks a change, has the userapi make it, and waits until the
    /// user's next `/sync` carries the new rules.
    async fn change_push_rule(
        &self,
        device: &Device,
        (scope, kind, rule_id): (String, String, String),
        change: Change,
    ) -> MatrixResult {
        push_rules::check_scope(&scope).map_err(refused)?;
        push_rules::check(&kind, &rule_id, &change).map_err(refused)?;
        let change = match change {
            Change::Put {
                body,
                before,
                after,
            } => update_push_rule_request::Change::Put(user_pb::PutPushRule {
                rule_json: body.to_string().into_bytes(),
                before,
                after,
            }),
            Change::Delete => update_push_rule_request::Change::Delete(Empty {}),
            Change::Enabled(enabled) => update_push_rule_request::Change::Enabled(enabled),
            Change::Actions(actions) => {
                update_push_rule_request::Change::ActionsJson(actions.to_string().into_bytes())
            }
        };
        let written = self
            .users
            .update_push_rule(user_pb::UpdatePushRuleRequest {
                user_id: device.user_id.clone(),
                kind,
                rule_id,
                change: Some(change),
            })
            .await
            .map_err(MatrixError::from)?;
        self.read_your_writes(&device.user_id, written.position)
            .await;
        respond(json!({}))
    }
}

// The push rule routes keep their own types: ruma's `Ruleset` leaves out
// the kinds without rules, which we list (empty), and its paths fix the
// scope to `global`, where ours answers another scope with 400
// `M_INVALID_PARAM` (ruma's route would make that 404).
pub(crate) async fn all(State(api): State<Arc<ClientApi>>, User(device): User) -> MatrixResult {
    respond(api.push_rules_content(&device).await?)
}

pub(crate) async fn global(State(api): State<Arc<ClientApi>>, User(device): User) -> MatrixResult {
    respond(push_rules::ruleset_json(&api.push_rules(&device).await?))
}

/// One rule of the global ruleset.
async fn rule(
    api: &ClientApi,
    device: &Device,
    (scope, kind, rule_id): &(String, String, String),
) -> Result<Value, MatrixError> {
    push_rules::check_scope(scope).map_err(refused)?;
    push_rules::rule_json(&api.push_rules(device).await?, kind, rule_id).map_err(refused)
}

pub(crate) async fn one(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(path): Path<(String, String, String)>,
) -> MatrixResult {
    respond(rule(&api, &device, &path).await?)
}

pub(crate) async fn enabled(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(path): Path<(String, String, String)>,
) -> MatrixResult {
    let rule = rule(&api, &device, &path).await?;
    respond(json!({ "enabled": rule["enabled"] }))
}

pub(crate) async fn actions(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(path): Path<(String, String, String)>,
) -> MatrixResult {
    let rule = rule(&api, &device, &path).await?;
    respond(json!({ "actions": rule["actions"] }))
}

/// Where a new rule goes: `?before=` and `?after=` another rule.
#[derive(serde::Deserialize)]
struct Placement {
    before: Option<String>,
    after: Option<String>,
}

/// `PUT /pushrules/global/{kind}/{ruleId}`: adds or replaces a rule.
pub(crate) async fn put(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(path): Path<(String, String, String)>,
    uri: Uri,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let placement: Placement = parse_query(&uri)?;
    let body: Value = parse_json(&body)?;
    if !body.is_object() {
        return Err(MatrixError::bad_json("the rule is a JSON object"));
    }
    let change = Change::Put {
        body,
        before: placement.before,
        after: placement.after,
    };
    api.change_push_rule(&device, path, change).await
}

/// `DELETE /pushrules/global/{kind}/{ruleId}`.
pub(crate) async fn delete(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(path): Path<(String, String, String)>,
) -> MatrixResult {
    api.change_push_rule(&device, path, Change::Delete).await
}

#[derive(serde::Deserialize)]
struct EnabledBody {
    enabled: bool,
}

/// `PUT …/{ruleId}/enabled`.
pub(crate) async fn set_enabled(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(path): Path<(String, String, String)>,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let EnabledBody { enabled } = parse_json(&body)?;
    api.change_push_rule(&device, path, Change::Enabled(enabled))
        .await
}

#[derive(serde::Deserialize)]
struct ActionsBody {
    actions: Vec<Value>,
}

/// `PUT …/{ruleId}/actions`.
pub(crate) async fn set_actions(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(path): Path<(String, String, String)>,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let ActionsBody { actions } = parse_json(&body)?;
    api.change_push_rule(&device, path, Change::Actions(Value::Array(actions)))
        .await
}

/// Any other attribute of a rule: 400 `M_UNRECOGNIZED`.
pub(crate) async fn unknown_attribute(User(_device): User) -> MatrixResult {
    Err(MatrixError::new(
        axum::http::StatusCode::BAD_REQUEST,
        "M_UNRECOGNIZED",
        "a push rule's attributes are enabled and actions",
    ))
}
