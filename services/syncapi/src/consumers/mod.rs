//! What the syncapi consumes: `roomserver.output` in its own file, the
//! ephemeral and per-user topics in `ephemeral.rs`.
pub(crate) mod ephemeral;
pub(crate) mod roomserver_output;
