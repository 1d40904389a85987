//! Random names: session IDs, media IDs, key versions, staging files.

use rand::Rng;

/// `len` random letters and digits (`A-Za-z0-9`: about 5.95 bits each).
pub fn alphanumeric(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
        .collect()
}
