//! The syncapi's background pruning: to-device messages waiting for a
//! device that no longer exists. A device deleted with its keys has its
//! messages dropped as the key change arrives; this catches the rest
//! (devices that never uploaded keys, messages sent to a device ID after
//! it was gone), a batch of recipients per round.

use std::future::Future;
use std::sync::Mutex;

use crate::storage::{Storage, StorageError};

/// Recipients whose devices are checked per round.
pub(crate) const BATCH: u32 = 500;

/// One round: checks the next `BATCH` recipients after `cursor` against
/// `live_devices` (the devices each has now) and drops the messages of the
/// devices that are gone; answers how many rows went. Once past the last
/// recipient the cursor starts over. A recipient whose devices cannot be
/// read is left for the next time round.
pub(crate) async fn prune_gone_devices<F, Fut, E>(
    storage: &Storage,
    cursor: &Mutex<String>,
    live_devices: F,
) -> Result<u64, StorageError>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Vec<String>, E>>,
    E: std::fmt::Display,
{
    let after = cursor.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let batch = storage.to_device_recipients(&after, BATCH).await?;
    let mut dropped = 0;
    let next = match batch.last() {
        Some((last, _)) if batch.len() == BATCH as usize => last.clone(),
        _ => String::new(),
    };
    for (user_id, up_to) in batch {
        match live_devices(user_id.clone()).await {
            Ok(live) => {
                dropped += storage
                    .drop_to_device_of_gone_devices(&user_id, &live, up_to)
                    .await?;
            }
            Err(error) => {
                tracing::debug!(user_id, %error, "devices unknown; to-device messages kept");
            }
        }
    }
    *cursor.lock().unwrap_or_else(|e| e.into_inner()) = next;
    Ok(dropped)
}
