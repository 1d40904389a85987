//! Topic names and payload coding. Payloads are the prost messages of
//! `proto/topics.proto`; `version` is stamped by producers.

use prost::Message;

use crate::ApiError;

/// The payload schema version this build produces.
pub const PAYLOAD_VERSION: u32 = 1;

/// Every topic's full name (with the deployment's prefix).
#[derive(Debug, Clone)]
pub struct Topics {
    /// Requests to change rooms, keyed by room ID; consumed by the roomserver group.
    pub roomserver_input: String,
    /// Every accepted event with its state change, keyed by room ID; kept forever.
    pub roomserver_output: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Topics {
            roomserver_input: format!("{prefix}roomserver.input"),
            roomserver_output: format!("{prefix}roomserver.output"),
        }
    }

    pub fn all(&self) -> [&str; 2] {
        [&self.roomserver_input, &self.roomserver_output]
    }
}

pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

/// Decodes a payload; a record that does not decode is a permanent error.
pub fn decode<M: Message + Default>(payload: &[u8]) -> Result<M, ApiError> {
    M::decode(payload).map_err(|e| ApiError::InvalidInput(format!("undecodable record: {e}")))
}
