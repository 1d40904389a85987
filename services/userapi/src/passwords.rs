//! Password hashing (argon2id) on one dedicated thread.
//!
//! Each hash needs a 19 MiB working set. Allocated per hash, glibc's
//! fragmentation kept most of them resident (174 MB after nine
//! registrations); the hashing thread owns one buffer and reuses it, so the
//! cost is 19 MiB once, and the async runtime is never blocked. Throughput is
//! one hash at a time (~30 ms each here), which bounds logins and
//! registrations per process, as rate limits do anyway.

use std::sync::mpsc;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use ganglion_api::ApiError;
use tokio::sync::oneshot;

enum Job {
    Hash(String, oneshot::Sender<Result<String, ApiError>>),
    Verify(String, String, oneshot::Sender<Result<bool, ApiError>>),
}

/// A handle on the hashing thread; the thread ends when the last handle drops.
pub(crate) struct Passwords {
    jobs: mpsc::Sender<Job>,
}

impl Passwords {
    pub(crate) fn start() -> std::io::Result<Passwords> {
        let (jobs, receiver) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("password-hashing".into())
            .spawn(move || {
                let mut memory = Memory { blocks: Vec::new() };
                for job in receiver {
                    match job {
                        Job::Hash(password, reply) => {
                            let _ = reply.send(memory.hash(&password));
                        }
                        Job::Verify(password, stored, reply) => {
                            let _ = reply.send(memory.verify(&password, &stored));
                        }
                    }
                }
            })?;
        Ok(Passwords { jobs })
    }

    pub(crate) async fn hash(&self, password: String) -> Result<String, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Hash(password, reply))
            .map_err(|_| ApiError::Internal("password hashing stopped".into()))?;
        answer
            .await
            .map_err(|_| ApiError::Internal("password hashing stopped".into()))?
    }

    pub(crate) async fn verify(&self, password: String, stored: String) -> Result<bool, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Verify(password, stored, reply))
            .map_err(|_| ApiError::Internal("password hashing stopped".into()))?;
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
    #[tokio::test]
    async fn hashes_verify_and_differ_by_salt() {
        let passwords = super::Passwords::start().expect("thread");
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
