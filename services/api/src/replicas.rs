//! The replicas of a service as its callers see them: which are ready, which
//! one serves a user, and the order to try them in. The gateway (HTTP) and
//! the gRPC clients share this, so every process that reads the same
//! replica list with the same readiness sends a user to the same replica.
//!
//! Readiness is each replica's own `/readyz` (database up, consumers caught
//! up), polled every [`PROBE_INTERVAL`], and a call that cannot connect
//! marks its replica down until its next good probe. A replica that is not
//! ready gets no calls while another is ready.
//!
//! Users are assigned by rendezvous hashing: each user goes to the ready
//! replica whose hash with the user's ID is highest. When a replica joins
//! or leaves, only the users whose highest hash was that replica move.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ganglion_base::config::ReplicaConfig;
use ganglion_base::metrics::gauge_vec;

/// How often each replica's `/readyz` is asked.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// One replica and what its callers know of it.
#[derive(Debug)]
pub struct Replica {
    pub config: ReplicaConfig,
    ready: AtomicBool,
}

impl Replica {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// The replicas of one service.
#[derive(Debug)]
pub struct ReplicaSet {
    service: &'static str,
    replicas: Vec<Replica>,
    next: AtomicUsize,
}

static READY_REPLICAS: std::sync::LazyLock<prometheus::IntGaugeVec> =
    std::sync::LazyLock::new(|| {
        gauge_vec(
            "ganglion_replicas_ready",
            "Replicas of a service this process sees as ready",
            &["service"],
        )
    });

impl ReplicaSet {
    /// The replicas of `service`, all taken as ready until probed.
    pub fn new(service: &'static str, replicas: Vec<ReplicaConfig>) -> Arc<ReplicaSet> {
        Arc::new(ReplicaSet {
            service,
            replicas: replicas
                .into_iter()
                .map(|config| Replica {
                    config,
                    ready: AtomicBool::new(true),
                })
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&Replica> {
        self.replicas.get(index)
    }

    /// A call to replica `index` could not connect: it takes no calls until
    /// a probe finds it ready again.
    pub fn mark_down(&self, index: usize) {
        if let Some(replica) = self.replicas.get(index)
            && replica.ready.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(
                service = self.service,
                replica = replica.config.key(),
                "replica unreachable"
            );
            self.count_ready();
        }
    }

    fn set_ready(&self, index: usize, ready: bool) {
        if let Some(replica) = self.replicas.get(index)
            && replica.ready.swap(ready, Ordering::Relaxed) != ready
        {
            tracing::info!(
                service = self.service,
                replica = replica.config.key(),
                ready,
                "replica readiness changed"
            );
            self.count_ready();
        }
    }

    fn count_ready(&self) {
        READY_REPLICAS
            .with_label_values(&[self.service])
            .set(self.replicas.iter().filter(|r| r.is_ready()).count() as i64);
    }

    /// The replicas in the order to try for `user_id`: by rendezvous hash,
    /// the ready ones first. The first is the replica that serves the user.
    pub fn for_user(&self, user_id: &str) -> Vec<usize> {
        let mut order: Vec<(bool, u64, usize)> = self
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| (r.is_ready(), rendezvous(r.config.key(), user_id), i))
            .collect();
        order.sort_unstable_by(|a, b| b.cmp(a));
        order.into_iter().map(|(_, _, i)| i).collect()
    }

    /// The replicas in the order to try for a call anyone may serve: the
    /// ready ones from a turn that moves on with every call, then the rest.
    pub fn spread(&self) -> Vec<usize> {
        let count = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<usize> = (0..count).map(|k| (start + k) % count.max(1)).collect();
        order.sort_by_key(|&i| !self.replicas[i].is_ready());
        order
    }

    /// The ready replicas.
    pub fn ready(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|&i| self.replicas[i].is_ready())
            .collect()
    }

    /// Asks each replica's `/readyz` every [`PROBE_INTERVAL`] until the set
    /// is dropped. Replicas without an operator address are left as they
    /// are (ready unless a call failed; a later good call does not revive
    /// them, a restart of this process does).
    pub fn spawn_probes(self: &Arc<Self>) {
        if self
            .replicas
            .iter()
            .all(|r| r.config.operator_address.is_none())
        {
            return;
        }
        // Outside a runtime (a configuration check) there is nothing to route.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let set = Arc::downgrade(self);
        let client = probe_client(Duration::from_secs(2));
        runtime.spawn(async move {
            loop {
                let Some(replicas) = set.upgrade() else {
                    return;
                };
                replicas.probe(&client).await;
                drop(replicas);
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        });
    }

    /// Asks every replica with an operator address for its `/readyz` once,
    /// at once, and records the answers.
    async fn probe(&self, client: &reqwest::Client) {
        let probes = self.replicas.iter().enumerate().filter_map(|(i, r)| {
            let url = format!("{}/readyz", r.config.operator_address.as_ref()?);
            Some(async move {
                let ready = matches!(client.get(url).send().await, Ok(answer) if answer.status().is_success());
                (i, ready)
            })
        });
        for (i, ready) in futures::future::join_all(probes).await {
            self.set_ready(i, ready);
        }
    }

    /// Waits until every replica has been probed once, at most `timeout`,
    /// so a process that has just started does not send its first users
    /// to replicas it has not asked about yet.
    pub async fn wait_probed(&self, timeout: Duration) {
        self.probe(&probe_client(timeout)).await;
    }
}

/// The client readiness probes go out with: no redirects, `timeout` each.
fn probe_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// The rendezvous weight of `replica` for `user`: FNV-1a over both, then a
/// 64-bit finaliser so that similar names spread. Fixed here (not std's
/// hasher, which may change between builds) because processes of different
/// builds must agree during a rolling upgrade.
pub fn rendezvous(replica: &str, user: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in replica.bytes().chain([0xff]).chain(user.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser.
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> Arc<ReplicaSet> {
        ReplicaSet::new(
            "syncapi",
            names
                .iter()
                .map(|n| ReplicaConfig {
                    name: Some((*n).to_owned()),
                    address: format!("http://{n}:1"),
                    http_address: None,
                    operator_address: None,
                })
                .collect(),
        )
    }

    fn owners(set: &ReplicaSet, users: &[String]) -> Vec<String> {
        users
            .iter()
            .map(|u| set.replicas[set.for_user(u)[0]].config.key().to_owned())
            .collect()
    }

    /// A replica leaving moves exactly its users; joining again moves them
    /// back and nobody else.
    #[test]
    fn only_the_users_of_a_leaving_or_joining_replica_move() {
        let users: Vec<String> = (0..3000).map(|i| format!("@user{i}:example.org")).collect();
        let three = set(&["syncapi-0", "syncapi-1", "syncapi-2"]);
        let before = owners(&three, &users);
        // Spread: each replica gets a fair share.
        for name in ["syncapi-0", "syncapi-1", "syncapi-2"] {
            let share = before.iter().filter(|o| *o == name).count();
            assert!((800..1200).contains(&share), "{name}: {share}");
        }
        three.mark_down(1);
        let after = owners(&three, &users);
        for (was, is) in before.iter().zip(&after) {
            if was == "syncapi-1" {
                assert_ne!(is, "syncapi-1");
            } else {
                assert_eq!(was, is, "a user of a staying replica moved");
            }
        }
        three.set_ready(1, true);
        assert_eq!(owners(&three, &users), before);
    }

    /// Every process computes the same owner, whatever its build: the
    /// weights are fixed values (computed here by hand from the definition).
    #[test]
    fn weights_are_the_same_in_every_build() {
        assert_eq!(
            rendezvous("syncapi-0", "@alice:example.org"),
            0x4a0b_5425_26d4_ede7
        );
        assert_eq!(
            rendezvous("syncapi-1", "@alice:example.org"),
            0x8c7a_4181_f12b_9fff
        );
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(rendezvous("ab", "c"), rendezvous("a", "bc"));
    }

    /// With nothing ready, every replica is still tried (better than none).
    #[test]
    fn spread_puts_ready_replicas_first_and_turns() {
        let replicas = set(&["a", "b", "c"]);
        let first = replicas.spread()[0];
        let second = replicas.spread()[0];
        assert_ne!(first, second);
        replicas.mark_down(0);
        replicas.mark_down(1);
        for _ in 0..5 {
            let order = replicas.spread();
            assert_eq!(order[0], 2);
            assert_eq!(order.len(), 3);
        }
        replicas.mark_down(2);
        assert_eq!(replicas.spread().len(), 3);
        assert_eq!(replicas.for_user("@u:x").len(), 3);
    }
}
