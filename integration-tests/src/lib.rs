//! Drives real `ganglion` processes over HTTP, as a client would: the
//! fixtures shared by the integration tests and the load generator.
#![forbid(unsafe_code)]

pub mod client;
pub mod cross_signing;
pub mod fake_server;
pub mod postgres;
pub mod process;
pub mod push_gateway;
pub mod synapse;
