//! The ephemeral and per-user topics: `edu.typing`, `edu.receipt`,
//! `edu.presence`, `edu.to_device`, `userapi.account_data` and
//! `keyserver.key_changes`. Each record
//! is stored with its position in one transaction, then wakes the users it
//! concerns.

use std::sync::Arc;

use async_trait::async_trait;
use ganglion_api::consume::{HandleError, RecordHandler};
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::decode;
use ganglion_log::Record;

use crate::SyncService;
use crate::storage::At;
use crate::sync_token::Stream;

pub(crate) struct StreamConsumer {
    pub(crate) service: Arc<SyncService>,
    pub(crate) stream: Stream,
}

fn permanent(error: impl ToString) -> HandleError {
    HandleError::Permanent(error.to_string())
}

#[async_trait]
impl RecordHandler for StreamConsumer {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        let at = At {
            partition: record.partition,
            offset: record.offset,
        };
        let storage = &self.service.storage;
        let notifier = &self.service.notifier;
        match self.stream {
            Stream::Typing => {
                let edu: topic_pb::TypingEdu = decode(&record.payload).map_err(permanent)?;
                storage
                    .apply_typing(at, &edu)
                    .await
                    .map_err(HandleError::storage)?;
                self.service.advance(self.stream, record);
                notifier.room_members(&edu.room_id);
            }
            Stream::Receipt => {
                let edu: topic_pb::ReceiptEdu = decode(&record.payload).map_err(permanent)?;
                storage
                    .apply_receipt(at, &edu)
                    .await
                    .map_err(HandleError::storage)?;
                self.service.advance(self.stream, record);
                if edu.receipt_type == "m.read.private" {
                    notifier.wake_users([edu.user_id.as_str()]);
                } else {
                    notifier.room_members(&edu.room_id);
                }
            }
            Stream::Presence => {
                let edu: topic_pb::PresenceEdu = decode(&record.payload).map_err(permanent)?;
                storage
                    .apply_presence(at, &edu)
                    .await
                    .map_err(HandleError::storage)?;
                self.service.advance(self.stream, record);
                notifier.co_members(&edu.user_id);
            }
            Stream::ToDevice => {
                let mut edu: topic_pb::ToDeviceEdu = decode(&record.payload).map_err(permanent)?;
                if ganglion_api::users::server_of(&edu.recipient)
                    != Some(self.service.server_name.as_str())
                {
                    // For another server: the federationsender's.
                    edu.messages.clear();
                }
                storage
                    .apply_to_device(at, &edu)
                    .await
                    .map_err(HandleError::storage)?;
                self.service.advance(self.stream, record);
                notifier.wake_users([edu.recipient.as_str()]);
            }
            Stream::AccountData => {
                let update: topic_pb::AccountDataUpdate =
                    decode(&record.payload).map_err(permanent)?;
                storage
                    .apply_account_data(at, &update)
                    .await
                    .map_err(HandleError::storage)?;
                if update.room_id.is_empty() {
                    let service = &self.service;
                    service
                        .push_rules
                        .consumed(&update.user_id, &update.data_type);
                    service
                        .ignored_users
                        .consumed(&update.user_id, &update.data_type);
                }
                self.service.advance(self.stream, record);
                notifier.wake_users([update.user_id.as_str()]);
            }
            Stream::KeyChanges => {
                let change: topic_pb::DeviceKeyChange =
                    decode(&record.payload).map_err(permanent)?;
                storage
                    .apply_key_change(at, &change)
                    .await
                    .map_err(HandleError::storage)?;
                self.service.advance(self.stream, record);
                notifier.co_members(&change.user_id);
            }
            Stream::Room => {
                return Err(permanent("room events have their own consumer"));
            }
        }
        Ok(())
    }
}
