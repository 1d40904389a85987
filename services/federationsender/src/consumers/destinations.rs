//! `federationsender.destinations`: a destination has queued work. This
//! replica's partitions name the destinations it delivers to; the record
//! wakes (or starts) the destination's sender here.

use std::sync::Arc;

use async_trait::async_trait;
use ganglion_api::consume::{HandleError, RecordHandler};
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::decode;
use ganglion_log::Record;

use crate::queues::Queues;

pub(crate) struct DestinationConsumer {
    pub(crate) queues: Arc<Queues>,
}

#[async_trait]
impl RecordHandler for DestinationConsumer {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        let work: topic_pb::DestinationWork =
            decode(&record.payload).map_err(|e| HandleError::Permanent(e.to_string()))?;
        if ruma::ServerName::parse(&work.destination).is_err() {
            return Err(HandleError::Permanent(format!(
                "not a server name: {:?}",
                work.destination
            )));
        }
        self.queues.wake(&[work.destination]);
        Ok(())
    }
}
