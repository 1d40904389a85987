//! Topic names and payload coding. Payloads are the prost messages of
//! `proto/topics.proto`; `version` is stamped by producers.

use ganglion_log::{Log, OutgoingRecord};
use prost::Message;

use crate::ApiError;
use crate::proto::common::LogPosition;

/// The payload schema version this build produces.
pub const PAYLOAD_VERSION: u32 = 1;

/// Every topic's full name (with the deployment's prefix).
#[derive(Debug, Clone)]
pub struct Topics {
    /// Requests to change rooms, keyed by room ID; consumed by the roomserver group.
    pub roomserver_input: String,
    /// Every accepted event with its state change, keyed by room ID; kept forever.
    pub roomserver_output: String,
    /// Typing notices, keyed by room ID.
    pub edu_typing: String,
    /// Read receipts, keyed by room ID.
    pub edu_receipt: String,
    /// Presence changes, keyed by user ID.
    pub edu_presence: String,
    /// Send-to-device messages, keyed by the recipient's user ID.
    pub edu_to_device: String,
    /// Account data changes, keyed by user ID.
    pub userapi_account_data: String,
    /// Changes of devices' identity keys (local ones, and remote ones the
    /// keyserver heard of), keyed by user ID.
    pub keyserver_key_changes: String,
    /// Other servers' device list updates, keyed by user ID.
    pub federation_device_list_updates: String,
    /// Destinations with queued work, keyed by destination; spreads
    /// destinations over the federationsender's replicas.
    pub federationsender_destinations: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Topics {
            roomserver_input: format!("{prefix}roomserver.input"),
            roomserver_output: format!("{prefix}roomserver.output"),
            edu_typing: format!("{prefix}edu.typing"),
            edu_receipt: format!("{prefix}edu.receipt"),
            edu_presence: format!("{prefix}edu.presence"),
            edu_to_device: format!("{prefix}edu.to_device"),
            userapi_account_data: format!("{prefix}userapi.account_data"),
            keyserver_key_changes: format!("{prefix}keyserver.key_changes"),
            federation_device_list_updates: format!("{prefix}federation.device_list_updates"),
            federationsender_destinations: format!("{prefix}federationsender.destinations"),
        }
    }

    pub fn all(&self) -> [&str; 10] {
        [
            &self.roomserver_input,
            &self.roomserver_output,
            &self.edu_typing,
            &self.edu_receipt,
            &self.edu_presence,
            &self.edu_to_device,
            &self.userapi_account_data,
            &self.keyserver_key_changes,
            &self.federation_device_list_updates,
            &self.federationsender_destinations,
        ]
    }

    /// Topics of requests whose every producer awaits the outcome (the
    /// roomserver API's `submit`), so a record need not be on disk before
    /// it is taken: a power cut that loses one loses a request nobody was
    /// answered, and its consumer flushes what it makes of it.
    pub fn awaited_requests(&self) -> Vec<String> {
        vec![self.roomserver_input.clone()]
    }
}

pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

/// Decodes a payload; a record that does not decode is a permanent error.
pub fn decode<M: Message + Default>(payload: &[u8]) -> Result<M, ApiError> {
    M::decode(payload).map_err(|e| ApiError::InvalidInput(format!("undecodable record: {e}")))
}

/// Appends `message` to `topic` under `key`, carrying the current trace,
/// and answers where it was written once it is durable.
pub async fn produce<M: Message>(
    log: &dyn Log,
    topic: &str,
    key: &str,
    message: &M,
) -> Result<LogPosition, ApiError> {
    let mut headers = Vec::new();
    ganglion_base::telemetry::inject_into_headers(&mut headers);
    let position = log
        .produce(
            topic,
            OutgoingRecord {
                key: key.as_bytes().to_vec(),
                headers,
                payload: encode(message),
            },
        )
        .await
        .map_err(|e| ApiError::Unavailable(format!("log: {e}")))?;
    Ok(LogPosition {
        topic: topic.to_owned(),
        partition: position.partition,
        offset: position.offset,
    })
}
