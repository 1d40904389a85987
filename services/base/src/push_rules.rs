//! Push rules: a user's ruleset as stored (the content of their
//! `m.push_rules` account data, `{"global": ruleset}`) on top of the
//! server's default rules, and the changes the push rules API makes to it.
//! The clientapi checks and serves them, the userapi applies changes, the
//! syncapi and the pusher evaluate events with them: one set of rules, one
//! reading of a request, in one place.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent};
use ruma::push::{
    Action, InsertPushRuleError, NewConditionalPushRule, NewPatternedPushRule, NewPushRule,
    NewSimplePushRule, PushCondition, PushConditionPowerLevelsCtx, PushConditionRoomCtx,
    RemovePushRuleError, RuleKind, Ruleset,
};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedUserId, RoomVersionId, UInt, UserId};
use serde_json::{Map, Value, json};

/// The account data type that holds a user's push rules.
pub const ACCOUNT_DATA_TYPE: &str = "m.push_rules";

/// The kinds of rule a ruleset holds, in the spec's order of evaluation.
pub const KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

/// The only scope the spec defines.
pub const SCOPE: &str = "global";

/// The rules a user has now: the ones they made and their changes to the
/// server's defaults (from `stored`, an `m.push_rules` content), with the
/// defaults of this server version. Stored content that cannot be read
/// counts as no change at all.
pub fn effective(user_id: &UserId, stored: Option<&str>) -> Ruleset {
    let defaults = Ruleset::server_default(user_id);
    let Some(mut rules) = stored.and_then(stored_ruleset) else {
        return defaults;
    };
    rules.update_with_server_default(defaults);
    rules
}

fn stored_ruleset(json: &str) -> Option<Ruleset> {
    let mut content: Value = serde_json::from_str(json).ok()?;
    serde_json::from_value(content.get_mut(SCOPE)?.take()).ok()
}

/// A ruleset as the API shows it: every kind listed, an empty one too.
pub fn ruleset_json(rules: &Ruleset) -> Value {
    let mut value = serde_json::to_value(rules).unwrap_or_else(|_| json!({}));
    for kind in KINDS {
        if value.get(kind).is_none() {
            value[kind] = json!([]);
        }
    }
    value
}

/// The `m.push_rules` account data content of a ruleset.
pub fn content(rules: &Ruleset) -> Value {
    json!({ SCOPE: ruleset_json(rules) })
}

/// One rule of a ruleset as the API shows it.
pub fn rule_json(rules: &Ruleset, kind: &str, rule_id: &str) -> Result<Value, ChangeError> {
    check_kind(kind)?;
    ruleset_json(rules)[kind]
        .as_array()
        .into_iter()
        .flatten()
        .find(|rule| rule["rule_id"] == rule_id)
        .cloned()
        .ok_or_else(|| ChangeError::NotFound("no such push rule".into()))
}

/// Why a change cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The rule (to change or remove) does not exist: 404 `M_NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// The request is not a valid change: 400.
    #[error("{0}")]
    Invalid(String),
}

/// A change the push rules API makes to one rule, as the request gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Adds or replaces a user-defined rule (`PUT …/{kind}/{ruleId}`), its
    /// body as sent, placed relative to another user-defined rule.
    Put {
        body: Value,
        before: Option<String>,
        after: Option<String>,
    },
    /// Removes a user-defined rule.
    Delete,
    /// Enables or disables a rule.
    Enabled(bool),
    /// Replaces a rule's actions (the array as sent).
    Actions(Value),
}

/// The scope of a request: only `global` exists.
pub fn check_scope(scope: &str) -> Result<(), ChangeError> {
    if scope == SCOPE {
        Ok(())
    } else {
        Err(ChangeError::Invalid(
            "the only push rule scope is global".into(),
        ))
    }
}

fn check_kind(kind: &str) -> Result<RuleKind, ChangeError> {
    if !KINDS.contains(&kind) {
        return Err(ChangeError::Invalid(format!(
            "unknown push rule kind {kind:?}"
        )));
    }
    Ok(RuleKind::from(kind))
}

/// Checks what can be checked of a change without the user's rules; the
/// clientapi answers with this before it asks the userapi.
pub fn check(kind: &str, rule_id: &str, change: &Change) -> Result<(), ChangeError> {
    check_kind(kind)?;
    if rule_id.is_empty() || rule_id.len() > 255 {
        return Err(ChangeError::Invalid("a rule ID is 1 to 255 bytes".into()));
    }
    match change {
        Change::Put { body, .. } => new_rule(kind, rule_id, body).map(|_| ()),
        Change::Actions(actions) => parse_actions(actions).map(|_| ()),
        Change::Delete | Change::Enabled(_) => Ok(()),
    }
}

/// Applies a change to a user's rules.
pub fn apply(
    rules: &mut Ruleset,
    kind: &str,
    rule_id: &str,
    change: &Change,
) -> Result<(), ChangeError> {
    check(kind, rule_id, change)?;
    let rule_kind = check_kind(kind)?;
    let not_found = |_| ChangeError::NotFound("no such push rule".into());
    match change {
        Change::Put {
            body,
            before,
            after,
        } => {
            let rule = new_rule(kind, rule_id, body)?;
            rules
                .insert(rule, after.as_deref(), before.as_deref())
                .map_err(|error| match error {
                    InsertPushRuleError::UnknownRuleId => {
                        ChangeError::Invalid("before/after rule not found".into())
                    }
                    InsertPushRuleError::ServerDefaultRuleId => {
                        ChangeError::Invalid("rule IDs starting with a dot are the server's".into())
                    }
                    other => ChangeError::Invalid(other.to_string()),
                })
        }
        Change::Delete => rules
            .remove(rule_kind, rule_id)
            .map_err(|error| match error {
                RemovePushRuleError::ServerDefault => {
                    ChangeError::Invalid("the server's default rules cannot be removed".into())
                }
                _ => ChangeError::NotFound("no such push rule".into()),
            }),
        Change::Enabled(enabled) => rules
            .set_enabled(rule_kind, rule_id, *enabled)
            .map_err(not_found),
        Change::Actions(actions) => rules
            .set_actions(rule_kind, rule_id, parse_actions(actions)?)
            .map_err(not_found),
    }
}

/// The rule a `PUT` body describes, checked per its kind.
fn new_rule(kind: &str, rule_id: &str, body: &Value) -> Result<NewPushRule, ChangeError> {
    let invalid = |message: &str| ChangeError::Invalid(message.to_owned());
    if rule_id.starts_with('.') {
        return Err(invalid("rule IDs starting with a dot are the server's"));
    }
    if rule_id.contains('/') || rule_id.contains('\\') {
        return Err(invalid("a rule ID has no slash or backslash"));
    }
    let body = body
        .as_object()
        .ok_or_else(|| invalid("the rule is a JSON object"))?;
    let actions = parse_actions(
        body.get("actions")
            .ok_or_else(|| invalid("a rule has actions"))?,
    )?;
    Ok(match kind {
        "override" | "underride" => {
            let conditions = match body.get("conditions") {
                None => Vec::new(),
                Some(conditions) => parse_conditions(conditions)?,
            };
            let rule = NewConditionalPushRule::new(rule_id.to_owned(), conditions, actions);
            if kind == "override" {
                NewPushRule::Override(rule)
            } else {
                NewPushRule::Underride(rule)
            }
        }
        "content" => {
            let pattern = body
                .get("pattern")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("a content rule has a pattern"))?;
            NewPushRule::Content(NewPatternedPushRule::new(
                rule_id.to_owned(),
                pattern.to_owned(),
                actions,
            ))
        }
        "room" => {
            let room_id = OwnedRoomId::try_from(rule_id)
                .map_err(|_| invalid("a room rule's ID is a room ID"))?;
            NewPushRule::Room(NewSimplePushRule::new(room_id, actions))
        }
        "sender" => {
            let user_id = OwnedUserId::try_from(rule_id)
                .map_err(|_| invalid("a sender rule's ID is a user ID"))?;
            NewPushRule::Sender(NewSimplePushRule::new(user_id, actions))
        }
        _ => return Err(invalid("unknown push rule kind")),
    })
}

/// A rule's actions: `notify` and `set_tweak` objects; the historical
/// `dont_notify` and `coalesce` are dropped, as the spec says; anything
/// else is refused.
fn parse_actions(actions: &Value) -> Result<Vec<Action>, ChangeError> {
    let invalid = |message: String| ChangeError::Invalid(message);
    let actions = actions
        .as_array()
        .ok_or_else(|| invalid("actions are an array".into()))?;
    let mut parsed = Vec::with_capacity(actions.len());
    for action in actions {
        match action {
            Value::String(name) if name == "notify" => parsed.push(Action::Notify),
            Value::String(name) if name == "dont_notify" || name == "coalesce" => {}
            Value::Object(object) if object.get("set_tweak").is_some_and(Value::is_string) => {
                let action = serde_json::from_value::<Action>(action.clone())
                    .map_err(|e| invalid(format!("invalid tweak: {e}")))?;
                parsed.push(action);
            }
            other => return Err(invalid(format!("unrecognised action {other}"))),
        }
    }
    Ok(parsed)
}

/// A rule's conditions: each an object with a `kind`; known kinds must be
/// well formed, unknown ones are kept (and never match, as the spec says).
fn parse_conditions(conditions: &Value) -> Result<Vec<PushCondition>, ChangeError> {
    let invalid = |message: String| ChangeError::Invalid(message);
    let conditions = conditions
        .as_array()
        .ok_or_else(|| invalid("conditions are an array".into()))?;
    conditions
        .iter()
        .map(|condition| {
            if !condition.get("kind").is_some_and(Value::is_string) {
                return Err(invalid("a condition has a kind".into()));
            }
            serde_json::from_value::<PushCondition>(condition.clone())
                .map_err(|e| invalid(format!("invalid condition: {e}")))
        })
        .collect()
}

/// The room's power levels as push rules see them (who may notify
/// `@room`), from its `m.room.create` and `m.room.power_levels` events:
/// the room version decides the rules, and from v12 the creators' power.
pub fn power_levels_context(
    create_json: Option<&str>,
    power_levels_json: Option<&str>,
) -> Option<PushConditionPowerLevelsCtx> {
    let create: Value = serde_json::from_str(create_json?).ok()?;
    let version = create["content"]["room_version"].as_str().unwrap_or("1");
    let rules = RoomVersionId::try_from(version).ok()?.rules()?;
    let mut creators = vec![OwnedUserId::try_from(create["sender"].as_str()?).ok()?];
    creators.extend(
        create["content"]["additional_creators"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|user| OwnedUserId::try_from(user.as_str()?).ok()),
    );
    let content: Option<RoomPowerLevelsEventContent> = power_levels_json
        .and_then(|json| serde_json::from_str::<Value>(json).ok())
        .and_then(|event| serde_json::from_value(event["content"].clone()).ok());
    let levels = RoomPowerLevels::new(content.into(), &rules.authorization, creators);
    Some(levels.into())
}

/// The server's default rules for `user` (they name the user), kept for
/// the last few hundred users (a few KiB each): every event is run through
/// the rules of each local member, and most have only the defaults.
fn server_default(user: &UserId) -> Arc<Ruleset> {
    static DEFAULTS: std::sync::LazyLock<
        std::sync::Mutex<crate::bounded::Bounded<OwnedUserId, Arc<Ruleset>>>,
    > = std::sync::LazyLock::new(|| std::sync::Mutex::new(crate::bounded::Bounded::new(512)));
    let mut defaults = DEFAULTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rules) = defaults.get(user) {
        return rules;
    }
    let rules = Arc::new(Ruleset::server_default(user));
    defaults.insert(user.to_owned(), rules.clone());
    rules
}

/// What an event does for one user it notifies.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub user_id: String,
    /// Whether it highlights (the `highlight` tweak, true when given
    /// without a value).
    pub highlight: bool,
    /// The tweaks its actions set, for a push gateway.
    pub tweaks: Map<String, Value>,
}

/// Who among `members` (local users) the event notifies, and whether it
/// highlights them: each by their rules in `custom`, else by the server's
/// defaults. The spec's current default rules match intentional mentions
/// (`m.mentions`), not display names, so none is looked up;
/// `power_levels` decides whether the sender may mention `@room`.
pub async fn evaluate(
    event_json: &str,
    room_id: &str,
    member_count: usize,
    members: &[String],
    custom: &HashMap<String, Arc<Ruleset>>,
    power_levels: Option<PushConditionPowerLevelsCtx>,
) -> Vec<Notification> {
    let (Ok(room_id), Ok(raw)) = (
        OwnedRoomId::try_from(room_id),
        serde_json::from_str::<Raw<Value>>(event_json),
    ) else {
        return Vec::new();
    };
    let count = UInt::try_from(member_count as u64).unwrap_or_default();
    let mut notified = Vec::new();
    for user_id in members {
        let Ok(user) = OwnedUserId::try_from(user_id.as_str()) else {
            continue;
        };
        let default;
        let rules = match custom.get(user_id) {
            Some(rules) => rules.as_ref(),
            None => {
                default = server_default(&user);
                default.as_ref()
            }
        };
        let mut context =
            PushConditionRoomCtx::new(room_id.clone(), count, user.clone(), String::new());
        context.power_levels = power_levels.clone();
        let actions = rules.get_actions(&raw, &context).await;
        if actions.iter().any(|a| a.should_notify()) {
            notified.push(Notification {
                user_id: user_id.clone(),
                highlight: actions.iter().any(|a| a.is_highlight()),
                tweaks: tweaks(actions),
            });
        }
    }
    notified
}

impl Notification {
    /// The actions that notified, as the API shows them: `notify` and
    /// each tweak.
    pub fn actions(&self) -> Value {
        let mut actions = vec![json!("notify")];
        for (name, value) in &self.tweaks {
            actions.push(json!({ "set_tweak": name, "value": value }));
        }
        Value::Array(actions)
    }
}

/// The tweaks actions set: name → value (a highlight without a value is
/// true).
fn tweaks(actions: &[Action]) -> Map<String, Value> {
    let mut tweaks = Map::new();
    for action in actions {
        let Action::SetTweak(tweak) = action else {
            continue;
        };
        let Ok(Value::Object(object)) = serde_json::to_value(tweak) else {
            continue;
        };
        let Some(name) = object.get("set_tweak").and_then(Value::as_str) else {
            continue;
        };
        let value = match object.get("value") {
            Some(value) => value.clone(),
            None if name == "highlight" => Value::Bool(true),
            None => continue,
        };
        tweaks.insert(name.to_owned(), value);
    }
    tweaks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> OwnedUserId {
        OwnedUserId::try_from("@alice:example.org").unwrap()
    }

    fn put(body: Value) -> Change {
        Change::Put {
            body,
            before: None,
            after: None,
        }
    }

    fn ids(rules: &Ruleset, kind: &str) -> Vec<String> {
        ruleset_json(rules)[kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|rule| rule["rule_id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn nothing_stored_is_the_server_default() {
        let rules = effective(&alice(), None);
        assert_eq!(ids(&rules, "override")[0], ".m.rule.master");
        assert_eq!(ruleset_json(&rules)["room"], json!([]));
        // Unreadable content counts as nothing stored.
        let rules = effective(&alice(), Some("{\"global\": 7}"));
        assert_eq!(ids(&rules, "override")[0], ".m.rule.master");
    }

    #[test]
    fn a_new_rule_goes_first_of_its_kind_after_the_master_rule() {
        let mut rules = effective(&alice(), None);
        let body = json!({"conditions": [], "actions": ["notify"]});
        apply(&mut rules, "override", "mine", &put(body)).unwrap();
        let overrides = ids(&rules, "override");
        assert_eq!(&overrides[..2], [".m.rule.master", "mine"]);
        // Stored and read back, it keeps its place and is enabled.
        let stored = content(&rules).to_string();
        let again = effective(&alice(), Some(&stored));
        assert_eq!(ids(&again, "override"), overrides);
        let rule = rule_json(&again, "override", "mine").unwrap();
        assert_eq!(rule["enabled"], true);
        assert_eq!(rule["default"], false);
    }

    #[test]
    fn before_and_after_place_a_rule() {
        let mut rules = effective(&alice(), None);
        for id in ["a", "b"] {
            let body = json!({"pattern": id, "actions": []});
            apply(&mut rules, "content", id, &put(body)).unwrap();
        }
        assert_eq!(&ids(&rules, "content")[..2], ["b", "a"]);
        let after = Change::Put {
            body: json!({"pattern": "c", "actions": []}),
            before: None,
            after: Some("a".into()),
        };
        apply(&mut rules, "content", "c", &after).unwrap();
        assert_eq!(&ids(&rules, "content")[..3], ["b", "a", "c"]);
        let before = Change::Put {
            body: json!({"pattern": "d", "actions": []}),
            before: Some("b".into()),
            after: None,
        };
        apply(&mut rules, "content", "d", &before).unwrap();
        assert_eq!(&ids(&rules, "content")[..4], ["d", "b", "a", "c"]);
        // Relative to a missing rule, or to a server default: refused.
        for anchor in ["nope", ".m.rule.contains_user_name"] {
            let change = Change::Put {
                body: json!({"pattern": "e", "actions": []}),
                before: Some(anchor.into()),
                after: None,
            };
            assert!(matches!(
                apply(&mut rules, "content", "e", &change),
                Err(ChangeError::Invalid(_))
            ));
        }
    }

    #[test]
    fn default_rules_can_be_disabled_and_given_actions_but_not_removed() {
        let user = alice();
        let mut rules = effective(&user, None);
        apply(
            &mut rules,
            "override",
            ".m.rule.master",
            &Change::Enabled(true),
        )
        .unwrap();
        let actions = Change::Actions(json!(["notify", {"set_tweak": "sound", "value": "x"}]));
        apply(&mut rules, "underride", ".m.rule.message", &actions).unwrap();
        assert!(matches!(
            apply(&mut rules, "underride", ".m.rule.message", &Change::Delete),
            Err(ChangeError::Invalid(_))
        ));
        // Kept across a store and an update of the defaults.
        let again = effective(&user, Some(&content(&rules).to_string()));
        assert_eq!(
            rule_json(&again, "override", ".m.rule.master").unwrap()["enabled"],
            true
        );
        assert_eq!(
            rule_json(&again, "underride", ".m.rule.message").unwrap()["actions"][1]["value"],
            "x"
        );
    }

    #[test]
    fn missing_rules_are_not_found() {
        let mut rules = effective(&alice(), None);
        for change in [
            Change::Delete,
            Change::Enabled(false),
            Change::Actions(json!([])),
        ] {
            assert!(matches!(
                apply(&mut rules, "room", "!nope:example.org", &change),
                Err(ChangeError::NotFound(_))
            ));
        }
        assert!(matches!(
            rule_json(&rules, "room", "!nope:example.org"),
            Err(ChangeError::NotFound(_))
        ));
    }

    #[test]
    fn bad_requests_are_invalid() {
        let notify = json!({"actions": ["notify"]});
        let cases: Vec<(&str, &str, Value)> = vec![
            ("nokind", "x", notify.clone()),
            ("override", ".mine", notify.clone()),
            ("override", "a/b", notify.clone()),
            ("override", "a\\b", notify.clone()),
            ("override", "", notify.clone()),
            ("override", "x", json!({})),
            ("override", "x", json!({"actions": "notify"})),
            ("override", "x", json!({"actions": ["explode"]})),
            ("override", "x", json!({"actions": [{"sound": "x"}]})),
            ("override", "x", json!({"actions": [], "conditions": {}})),
            (
                "override",
                "x",
                json!({"actions": [], "conditions": [{"key": "type"}]}),
            ),
            (
                "override",
                "x",
                json!({"actions": [], "conditions": [{"kind": "event_match"}]}),
            ),
            ("content", "x", notify.clone()),
            ("content", "x", json!({"actions": [], "pattern": 5})),
            ("room", "not-a-room", notify.clone()),
            ("sender", "not-a-user", notify.clone()),
            ("override", "x", json!([1])),
        ];
        for (kind, rule_id, body) in cases {
            let mut rules = effective(&alice(), None);
            let result = apply(&mut rules, kind, rule_id, &put(body.clone()));
            assert!(
                matches!(result, Err(ChangeError::Invalid(_))),
                "{kind} {rule_id} {body}: {result:?}"
            );
        }
        assert!(check_scope("device").is_err());
        assert!(check_scope("global").is_ok());
    }

    #[test]
    fn historical_actions_are_dropped_and_unknown_conditions_kept() {
        let mut rules = effective(&alice(), None);
        let body = json!({
            "actions": ["dont_notify", "coalesce"],
            "conditions": [{"kind": "org.example.future"}],
        });
        apply(&mut rules, "underride", "quiet", &put(body)).unwrap();
        let rule = rule_json(&rules, "underride", "quiet").unwrap();
        assert_eq!(rule["actions"], json!([]));
        assert_eq!(rule["conditions"][0]["kind"], "org.example.future");
    }

    #[test]
    fn replacing_a_rule_keeps_its_place_and_enabled_state() {
        let mut rules = effective(&alice(), None);
        for id in ["!a:example.org", "!b:example.org"] {
            apply(&mut rules, "room", id, &put(json!({"actions": []}))).unwrap();
        }
        apply(
            &mut rules,
            "room",
            "!a:example.org",
            &Change::Enabled(false),
        )
        .unwrap();
        let body = json!({"actions": ["notify"]});
        apply(&mut rules, "room", "!a:example.org", &put(body)).unwrap();
        assert_eq!(ids(&rules, "room"), ["!b:example.org", "!a:example.org"]);
        let rule = rule_json(&rules, "room", "!a:example.org").unwrap();
        assert_eq!(rule["enabled"], false);
        assert_eq!(rule["actions"], json!(["notify"]));
    }
}

#[cfg(test)]
mod evaluation_tests {
    use super::*;

    /// Who is notified, and highlighted.
    async fn notified(
        event_json: &str,
        room_id: &str,
        member_count: usize,
        members: &[String],
        custom: &HashMap<String, Arc<Ruleset>>,
        power_levels: Option<PushConditionPowerLevelsCtx>,
    ) -> Vec<(String, bool)> {
        evaluate(
            event_json,
            room_id,
            member_count,
            members,
            custom,
            power_levels,
        )
        .await
        .into_iter()
        .map(|n| (n.user_id, n.highlight))
        .collect()
    }

    #[tokio::test]
    async fn tweaks_come_with_the_notification() {
        let members = vec!["@bob:hs".to_owned()];
        let message = serde_json::json!({
            "type": "m.room.message", "sender": "@alice:hs", "room_id": "!r:hs",
            "event_id": "$e", "origin_server_ts": 1,
            "content": {"msgtype": "m.text", "body": "hi", "m.mentions": {"user_ids": ["@bob:hs"]}},
        })
        .to_string();
        let found = evaluate(&message, "!r:hs", 3, &members, &HashMap::new(), None).await;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].tweaks["highlight"], true);
        assert_eq!(found[0].tweaks["sound"], "default");
    }

    #[tokio::test]
    async fn default_rules_notify_and_highlight() {
        let members = vec!["@alice:hs".to_owned(), "@bob:hs".to_owned()];
        let message = |body: &str, mentions: &[&str]| {
            serde_json::json!({
                "type": "m.room.message", "sender": "@alice:hs", "room_id": "!r:hs",
                "event_id": "$e", "origin_server_ts": 1,
                "content": {"msgtype": "m.text", "body": body,
                            "m.mentions": {"user_ids": mentions}},
            })
            .to_string()
        };
        // A message in a busy room notifies everyone but its sender.
        assert_eq!(
            notified(
                &message("hello", &[]),
                "!r:hs",
                3,
                &members,
                &HashMap::new(),
                None
            )
            .await,
            vec![("@bob:hs".to_owned(), false)]
        );
        // An intentional mention highlights.
        assert_eq!(
            notified(
                &message("hi Bob, look", &["@bob:hs"]),
                "!r:hs",
                3,
                &members,
                &HashMap::new(),
                None
            )
            .await,
            vec![("@bob:hs".to_owned(), true)]
        );
        // Notices do not notify.
        let notice = serde_json::json!({
            "type": "m.room.message", "sender": "@alice:hs", "room_id": "!r:hs",
            "event_id": "$n", "origin_server_ts": 1,
            "content": {"msgtype": "m.notice", "body": "bot says"},
        })
        .to_string();
        assert_eq!(
            notified(&notice, "!r:hs", 3, &members, &HashMap::new(), None).await,
            vec![]
        );
    }

    #[tokio::test]
    async fn room_mentions_need_the_power_to_notify_the_room() {
        let members = vec!["@bob:hs".to_owned()];
        let create = |version: &str| {
            serde_json::json!({"type": "m.room.create", "sender": "@alice:hs", "state_key": "",
                               "content": {"room_version": version}})
            .to_string()
        };
        let levels = serde_json::json!({"type": "m.room.power_levels", "state_key": "",
            "content": {"users": {"@alice:hs": 100}, "users_default": 0}})
        .to_string();
        let mention = |sender: &str| {
            serde_json::json!({
                "type": "m.room.message", "sender": sender, "room_id": "!r:hs",
                "event_id": "$m", "origin_server_ts": 1,
                "content": {"msgtype": "m.text", "body": "everyone!", "m.mentions": {"room": true}},
            })
            .to_string()
        };
        let context = power_levels_context(Some(&create("10")), Some(&levels));
        assert!(context.is_some());
        // The room's admin may: a highlight. Someone at level 0 may not.
        assert_eq!(
            notified(
                &mention("@alice:hs"),
                "!r:hs",
                3,
                &members,
                &HashMap::new(),
                context.clone()
            )
            .await,
            vec![("@bob:hs".to_owned(), true)]
        );
        let others = vec!["@alice:hs".to_owned()];
        assert_eq!(
            notified(
                &mention("@carol:hs"),
                "!r:hs",
                3,
                &others,
                &HashMap::new(),
                context
            )
            .await,
            vec![("@alice:hs".to_owned(), false)]
        );
        // In v12 the creator may, without a power levels event.
        let v12 = power_levels_context(Some(&create("12")), None);
        assert_eq!(
            notified(
                &mention("@alice:hs"),
                "!r:hs",
                3,
                &members,
                &HashMap::new(),
                v12
            )
            .await,
            vec![("@bob:hs".to_owned(), true)]
        );
        assert!(power_levels_context(None, Some(&levels)).is_none());
    }

    #[tokio::test]
    async fn a_users_own_rules_decide_for_them() {
        let members = vec!["@bob:hs".to_owned(), "@carol:hs".to_owned()];
        let message = serde_json::json!({
            "type": "m.room.message", "sender": "@alice:hs", "room_id": "!r:hs",
            "event_id": "$e", "origin_server_ts": 1,
            "content": {"msgtype": "m.text", "body": "cake for everyone"},
        })
        .to_string();
        let changed = |kind: &str, rule_id: &str, change: Change| {
            let user = ruma::UserId::parse("@bob:hs").unwrap();
            let mut rules = effective(&user, None);
            apply(&mut rules, kind, rule_id, &change).unwrap();
            HashMap::from([("@bob:hs".to_owned(), Arc::new(rules))])
        };
        let put = |body: serde_json::Value| Change::Put {
            body,
            before: None,
            after: None,
        };
        // Bob mutes the room; Carol, on the defaults, is still notified.
        let muted = changed("room", "!r:hs", put(serde_json::json!({"actions": []})));
        assert_eq!(
            notified(&message, "!r:hs", 3, &members, &muted, None).await,
            vec![("@carol:hs".to_owned(), false)]
        );
        // A keyword of Bob's highlights him.
        let keyword = serde_json::json!({
            "pattern": "cake", "actions": ["notify", {"set_tweak": "highlight"}],
        });
        let cake = changed("content", "cake", put(keyword));
        assert_eq!(
            notified(&message, "!r:hs", 3, &members, &cake, None).await,
            vec![
                ("@bob:hs".to_owned(), true),
                ("@carol:hs".to_owned(), false)
            ]
        );
        // The master rule silences everything.
        let master = changed("override", ".m.rule.master", Change::Enabled(true));
        assert_eq!(
            notified(&message, "!r:hs", 3, &members, &master, None).await,
            vec![("@carol:hs".to_owned(), false)]
        );
    }
}
