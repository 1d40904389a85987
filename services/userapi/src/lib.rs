//! userapi: accounts, devices and access tokens.
//!
//! - Serves: the [`UsersApi`](ganglion_api::users::UsersApi) (login, token
//!   lookup, registration, logout), in-process or over gRPC.
//! - Consumes: nothing yet (push rules over `roomserver.output` come later).
//! - Produces: nothing yet (`userapi.account_data`, `userapi.profile` later).
//! - Owns: its database (accounts, devices).
#![forbid(unsafe_code)]

mod api;
mod internal_events;
mod passwords;
mod storage;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use ganglion_base::health::{DatabaseReady, Health};
use ganglion_base::{Config, Database, DatabaseError};

use storage::Storage;

/// The userapi service; implements `UsersApi`.
pub struct UserApi {
    storage: Storage,
    passwords: passwords::Passwords,
    server_name: String,
}

/// A started userapi.
pub struct Started {
    pub api: Arc<UserApi>,
    pub health: Health,
}

/// Opens the database (migrating it) and returns the service.
pub async fn start(config: &Config) -> Result<Started, DatabaseError> {
    let db = Database::open_for_service(config, "userapi", storage::MIGRATIONS).await?;
    let mut health = Health::default();
    health.add(Arc::new(DatabaseReady {
        service: "userapi",
        db: db.clone(),
    }));
    Ok(Started {
        api: Arc::new(UserApi {
            storage: Storage { db },
            passwords: passwords::Passwords::start()?,
            server_name: config.server_name.clone(),
        }),
        health,
    })
}
