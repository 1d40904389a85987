//! Password hashing (argon2id) on a bounded pool of dedicated threads with
//! a bounded queue.
//!
//! Each hash needs a 19 MiB working set. Allocated per hash, glibc's
//! fragmentation kept most of them resident (174 MB after nine
//! registrations); each hashing thread owns one buffer and reuses it, so the
//! cost is 19 MiB a thread, and the async runtime is never blocked. A hash
//! takes ~30 ms here. When the queue is full the request is answered 429
//! `M_LIMIT_EXCEEDED` at once: one user sending passwords cannot make
//! everyone else's login wait without end.

use std::sync::{Arc, Mutex, mpsc};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use ganglion_api::ApiError;
use tokio::sync::oneshot;

enum Job {
    Hash(String, oneshot::Sender<Result<String, ApiError>>),
    Verify(String, String, oneshot::Sender<Result<bool, ApiError>>),
}

/// A handle on the hashing threads; they end when the last handle drops.
pub(crate) struct Passwords {
    jobs: mpsc::SyncSender<Job>,
}

/// How long a client turned away by a full queue is told to wait.
const RETRY_AFTER_MS: u64 = 1_000;

impl Passwords {
    /// `threads` hashing threads (at least one) taking jobs from a queue of
    /// at most `queue` waiting ones.
    pub(crate) fn start(threads: usize, queue: usize) -> std::io::Result<Passwords> {
        let (jobs, receiver) = mpsc::sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for n in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("password-hashing-{n}"))
                .spawn(move || {
                    let mut memory = Memory { blocks: Vec::new() };
                    loop {
                        let job = {
                            let receiver = receiver.lock().unwrap_or_else(|p| p.into_inner());
                            receiver.recv()
                        };
                        match job {
                            Ok(Job::Hash(password, reply)) => {
                                let _ = reply.send(memory.hash(&password));
                            }
                            Ok(Job::Verify(password, stored, reply)) => {
                                let _ = reply.send(memory.verify(&password, &stored));
                            }
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Passwords { jobs })
    }

    fn submit(&self, job: Job) -> Result<(), ApiError> {
        self.jobs.try_send(job).map_err(|error| match error {
            mpsc::TrySendError::Full(_) => {
                crate::internal_events::PASSWORD_QUEUE_FULL.inc();
                ApiError::LimitExceeded(RETRY_AFTER_MS)
            }
            mpsc::TrySendError::Disconnected(_) => {
                ApiError::Internal("password hashing stopped".into())
            }
        })
    }

    pub(crate) async fn hash(&self, password: String) -> Result<String, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash(password, reply))?;
        answer
            .await
            .map_err(|_| ApiError::Internal("password hashing stopped".into()))?
    }

    pub(crate) async fn verify(&self, password: String, stored: String) -> Result<bool, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify(password, stored, reply))?;
        answer
            .await
            .map_err(|_| ApiError::Internal("password hashing stopped".into()))?
    }
}

/// The hashing thread's reusable argon2 working memory.
struct Memory {
    blocks: Vec<Block>,
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("password hashing: {error}"))
}

impl Memory {
    fn blocks(&mut self, params: &Params) -> &mut [Block] {
        let count = params.block_count();
        if self.blocks.len() < count {
            self.blocks.resize(count, Block::default());
        }
        &mut self.blocks[..count]
    }

    fn run(
        &mut self,
        argon2: &Argon2<'_>,
        params: &Params,
        password: &str,
        salt: &[u8],
        len: usize,
    ) -> Result<Output, ApiError> {
        let blocks = self.blocks(params);
        Output::init_with(len, |out| {
            argon2
                .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut *blocks)
                .map_err(|_| argon2::password_hash::Error::Crypto)
        })
        .map_err(internal)
    }

    /// An argon2id PHC string with the default (OWASP) parameters.
    fn hash(&mut self, password: &str) -> Result<String, ApiError> {
        let params = Params::default();
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let mut salt_bytes = [0u8; 64];
        let salt_raw = salt
            .as_salt()
            .decode_b64(&mut salt_bytes)
            .map_err(internal)?;
        let output = self.run(
            &argon2,
            &params,
            password,
            salt_raw,
            Params::DEFAULT_OUTPUT_LEN,
        )?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(internal)?,
            salt: Some(salt.as_salt()),
            hash: Some(output),
        };
        Ok(phc.to_string())
    }

    /// Checks `password` against a stored PHC string, with its own parameters.
    fn verify(&mut self, password: &str, stored: &str) -> Result<bool, ApiError> {
        let parsed = PasswordHash::new(stored).map_err(internal)?;
        let algorithm = Algorithm::try_from(parsed.algorithm).map_err(internal)?;
        let version = parsed
            .version
            .map(Version::try_from)
            .transpose()
            .map_err(internal)?
            .unwrap_or_default();
        let params = Params::try_from(&parsed).map_err(internal)?;
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return Err(internal("stored hash without salt or output"));
        };
        let mut salt_bytes = [0u8; 64];
        let salt_raw = salt.decode_b64(&mut salt_bytes).map_err(internal)?;
        let argon2 = Argon2::new(algorithm, version, params.clone());
        let output = self.run(&argon2, &params, password, salt_raw, expected.len())?;
        // `Output` compares in constant time.
        Ok(output == expected)
    }
}

#[cfg(test)]
mod tests {
    /// A burst beyond the queue is turned away at once with a retry time,
    /// and the hashes already queued still complete.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_answers_limit_exceeded() {
        let passwords = std::sync::Arc::new(super::Passwords::start(1, 2).expect("threads"));
        let attempts = (0..12).map(|_| {
            let passwords = passwords.clone();
            tokio::spawn(async move { passwords.hash("secret".into()).await })
        });
        let mut done = 0;
        let mut limited = 0;
        for attempt in attempts.collect::<Vec<_>>() {
            match attempt.await.expect("task") {
                Ok(_) => done += 1,
                Err(ganglion_api::ApiError::LimitExceeded(ms)) => {
                    assert!(ms > 0);
                    limited += 1;
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert!(limited > 0, "some are turned away");
        assert!(done >= 2, "the queued ones complete: {done}");
        assert_eq!(done + limited, 12);
    }

    #[tokio::test]
    async fn hashes_verify_and_differ_by_salt() {
        let passwords = super::Passwords::start(1, 8).expect("thread");
        let first = passwords.hash("secret".into()).await.expect("hash");
        let second = passwords.hash("secret".into()).await.expect("hash");
        assert_ne!(first, second, "salted");
        assert!(
            passwords
                .verify("secret".into(), first.clone())
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify("wrong".into(), first)
                .await
                .expect("verify")
        );
        // Hashes made by the argon2 crate's own API verify too (format compatibility).
        use argon2::password_hash::PasswordHasher as _;
        let salt = argon2::password_hash::SaltString::generate(
            &mut argon2::password_hash::rand_core::OsRng,
        );
        let standard = argon2::Argon2::default()
            .hash_password(b"pw", &salt)
            .expect("hash")
            .to_string();
        assert!(
            passwords
                .verify("pw".into(), standard)
                .await
                .expect("verify")
        );
    }
}
