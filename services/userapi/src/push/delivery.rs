//! Sending queued notifications to push gateways (the push gateway API,
//! `POST …/_matrix/push/v1/notify`). A replica leases the pushers it
//! sends for, so each pusher's notifications go out once and in order
//! whichever replica queued them; a gateway that fails is retried with
//! backoff (recorded on the pusher), a notification older than the
//! configured age is given up, and pushkeys a gateway rejects lose their
//! pushers, as the spec says.

use std::sync::Arc;
use std::time::Duration;

use ganglion_outbound::GuardedClient;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::internal_events::{PUSHES_DROPPED, PUSHES_FAILED, PUSHES_SENT};
use crate::storage::{Pusher, Queued, Storage};

/// How delivery behaves (from `push.*` in the configuration).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// This replica, as lease owner.
    pub(crate) owner: String,
    pub(crate) lease_ms: i64,
    pub(crate) request_timeout: Duration,
    /// A notification not delivered by then is given up.
    pub(crate) max_notification_age_ms: i64,
    /// The longest wait between attempts of a failing gateway.
    pub(crate) max_backoff_ms: i64,
}

/// The pushers sent for at once by one replica.
const PUSHERS_AT_ONCE: i64 = 32;
/// The notifications sent per pusher per lease.
const NOTIFICATIONS_PER_TURN: i64 = 50;
/// How often the queue is looked at without being woken (work other
/// replicas queued, retries falling due).
const POLL: Duration = Duration::from_millis(500);

pub(crate) struct Delivery {
    storage: Storage,
    client: GuardedClient,
    settings: Settings,
    wake: Notify,
}

impl Delivery {
    pub(crate) fn new(storage: Storage, client: GuardedClient, settings: Settings) -> Arc<Self> {
        Arc::new(Delivery {
            storage,
            client,
            settings,
            wake: Notify::new(),
        })
    }

    /// Something was queued: look now.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sends until `shutdown` turns true.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let sent = match self.turn().await {
                Ok(pushers) => pushers,
                Err(error) => {
                    tracing::warn!(%error, "push delivery: reading the queue failed");
                    0
                }
            };
            if sent > 0 {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One round: lease the pushers with notifications due and send for
    /// them side by side. Answers how many were leased.
    async fn turn(self: &Arc<Self>) -> Result<usize, crate::storage::StorageError> {
        let now = ganglion_base::clock::now_ms();
        let claimed = self
            .storage
            .claim_due_pushers(
                &self.settings.owner,
                now,
                now + self.settings.lease_ms,
                PUSHERS_AT_ONCE,
            )
            .await?;
        let count = claimed.len();
        let sends = claimed.into_iter().map(|id| {
            let this = self.clone();
            async move {
                if let Err(error) = this.send_for(id).await {
                    tracing::warn!(%error, pusher = id, "push delivery failed");
                }
                if let Err(error) = this.storage.release_pusher(id, &this.settings.owner).await {
                    tracing::warn!(%error, pusher = id, "releasing a pusher's lease failed");
                }
            }
        });
        futures::future::join_all(sends).await;
        Ok(count)
    }

    /// Sends a leased pusher's notifications in order, until one fails.
    /// Those done with leave the queue together at the end of the turn (a
    /// crash in between sends them again: gateways drop a repeated event
    /// ID, as the push gateway API asks of them).
    async fn send_for(&self, id: i64) -> Result<(), crate::storage::StorageError> {
        let Some((pusher, failing)) = self.storage.pusher(id).await? else {
            return Ok(());
        };
        let mut done = Vec::new();
        let sent = self.send_queued(&pusher, &failing, &mut done).await;
        self.storage.dequeue(&done).await?;
        sent
    }

    async fn send_queued(
        &self,
        pusher: &Pusher,
        failing: &crate::storage::Failing,
        done: &mut Vec<i64>,
    ) -> Result<(), crate::storage::StorageError> {
        let id = pusher.id;
        // Whether a success has a failure to clear.
        let mut was_failing = failing.attempts > 0 || failing.since_ms.is_some();
        for queued in self.storage.queued(id, NOTIFICATIONS_PER_TURN).await? {
            let now = ganglion_base::clock::now_ms();
            if now - queued.created_ms > self.settings.max_notification_age_ms {
                PUSHES_DROPPED.inc();
                tracing::warn!(pusher = id, event_id = %queued.event_id, "push given up: too old");
                done.push(queued.id);
                continue;
            }
            match self.send(pusher, &queued).await {
                Outcome::Sent { rejected } => {
                    PUSHES_SENT.inc();
                    done.push(queued.id);
                    if was_failing {
                        self.storage.pusher_succeeded(id).await?;
                        was_failing = false;
                    }
                    if rejected {
                        tracing::info!(pusher = id, app_id = %pusher.app_id, "pushkey rejected by its gateway: pusher removed");
                        self.storage
                            .delete_rejected(&pusher.app_id, &pusher.pushkey)
                            .await?;
                        return Ok(());
                    }
                }
                Outcome::Refused(error) => {
                    // The gateway will never take this one: not retried.
                    PUSHES_DROPPED.inc();
                    tracing::warn!(pusher = id, %error, "push refused by its gateway");
                    done.push(queued.id);
                    self.storage.pusher_failed(id, &error, now, 0).await?;
                    was_failing = true;
                }
                Outcome::Failed(error) => {
                    PUSHES_FAILED.inc();
                    let wait = backoff_ms(failing.attempts, self.settings.max_backoff_ms);
                    tracing::info!(pusher = id, %error, wait_ms = wait, "push gateway failed; retrying later");
                    self.storage
                        .pusher_failed(id, &error, now, now + wait)
                        .await?;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// One request to the pusher's gateway.
    async fn send(&self, pusher: &Pusher, queued: &Queued) -> Outcome {
        let Ok(data) = serde_json::from_str::<Value>(&pusher.data) else {
            return Outcome::Refused("the pusher's data is not JSON".into());
        };
        let Some(url) = data["url"].as_str() else {
            return Outcome::Refused("the pusher has no URL".into());
        };
        let Ok(stored) = serde_json::from_str::<Value>(&queued.notification) else {
            return Outcome::Refused("the queued notification is not JSON".into());
        };
        let body = request_body(pusher, &data, stored);
        let response = match self
            .client
            .post_json(url, &body, self.settings.request_timeout)
            .await
        {
            Ok(response) => response,
            Err(ganglion_outbound::GuardedError::Denied(what)) => {
                return Outcome::Refused(format!("{what} is an address pushes may not go to"));
            }
            Err(ganglion_outbound::GuardedError::BadUrl(url)) => {
                return Outcome::Refused(format!("not an http(s) URL: {url}"));
            }
            Err(error) => return Outcome::Failed(error.to_string()),
        };
        let status = response.status();
        if status.is_success() {
            let answer: Value = ganglion_outbound::read_capped(response, 64 * 1024)
                .await
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default();
            let rejected = answer["rejected"]
                .as_array()
                .is_some_and(|keys| keys.iter().any(|key| key == pusher.pushkey.as_str()));
            return Outcome::Sent { rejected };
        }
        if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Outcome::Refused(format!("gateway answered {status}"));
        }
        Outcome::Failed(format!("gateway answered {status}"))
    }
}

enum Outcome {
    Sent {
        rejected: bool,
    },
    /// Retrying cannot help this notification.
    Refused(String),
    /// Worth another try later.
    Failed(String),
}

/// The gateway request: the queued notification with the pusher as its
/// device (its data without the URL, the tweaks of the user's rules).
fn request_body(pusher: &Pusher, data: &Value, stored: Value) -> Value {
    let mut device_data = data.as_object().cloned().unwrap_or_default();
    device_data.remove("url");
    let mut notification = stored["notification"].clone();
    let tweaks = stored["tweaks"].clone();
    notification["devices"] = json!([{
        "app_id": pusher.app_id,
        "pushkey": pusher.pushkey,
        "pushkey_ts": pusher.pushkey_ts,
        "data": device_data,
        "tweaks": if tweaks.is_object() { tweaks } else { json!({}) },
    }]);
    json!({ "notification": notification })
}

/// The wait before the next attempt after `attempts` failures: one
/// second, doubling, at most `max_ms`.
fn backoff_ms(attempts: i64, max_ms: i64) -> i64 {
    let exponent = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
    1000_i64.saturating_mul(1 << exponent).min(max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        assert_eq!(backoff_ms(0, 600_000), 1000);
        assert_eq!(backoff_ms(3, 600_000), 8000);
        assert_eq!(backoff_ms(40, 600_000), 600_000);
        assert_eq!(backoff_ms(-1, 600_000), 1000);
    }

    #[test]
    fn the_request_carries_the_pusher_without_its_url() {
        let pusher = Pusher {
            id: 1,
            user_id: "@a:hs".into(),
            device_id: "D".into(),
            app_id: "org.example.app".into(),
            pushkey: "key".into(),
            kind: "http".into(),
            app_display_name: "App".into(),
            device_display_name: "Phone".into(),
            profile_tag: None,
            lang: "en".into(),
            data: r#"{"url":"https://gw/_matrix/push/v1/notify","format":"event_id_only"}"#.into(),
            pushkey_ts: 12,
        };
        let data: Value = serde_json::from_str(&pusher.data).unwrap();
        let stored = json!({
            "notification": {"event_id": "$e", "room_id": "!r:hs", "prio": "high"},
            "tweaks": {"sound": "default"},
        });
        let body = request_body(&pusher, &data, stored);
        let device = &body["notification"]["devices"][0];
        assert_eq!(device["pushkey"], "key");
        assert_eq!(device["pushkey_ts"], 12);
        assert_eq!(device["data"], json!({"format": "event_id_only"}));
        assert_eq!(device["tweaks"], json!({"sound": "default"}));
        assert_eq!(body["notification"]["event_id"], "$e");
    }
}
