//! What every Ganglion process shares and no service owns: configuration,
//! telemetry, database pools and migrations, keys, health endpoints, metrics
//! and the Matrix error plumbing of HTTP handlers.
#![forbid(unsafe_code)]

pub mod bounded;
pub mod clock;
pub mod config;
pub mod database;
pub mod health;
pub mod http;
pub mod internal_auth;
pub mod keys;
pub mod limits;
pub mod matrix_error;
pub mod metrics;
pub mod parallel;
pub mod pruning;
pub mod push_rules;
pub mod random;
pub mod rate_limit;
pub mod shutdown;
pub mod sql;
pub mod telemetry;
pub mod testing;

pub use config::Config;
pub use database::{Database, DatabaseError, Engine, Migration};
pub use matrix_error::MatrixError;
