//! What operators do to media from the command line (`ganglion media
//! quarantine|unquarantine|delete`), on the mediaapi's database and store
//! directly: by MXC URI or by uploader. Quarantined media is kept but
//! served to nobody (404, as if it did not exist); deleted media is gone,
//! its blob with it once no other media holds the same bytes.

use std::sync::Arc;

use ganglion_base::{Config, Database};

use crate::storage::{self, Storage};
use crate::store::{self, BlobHash, BlobStore};

/// Which media an operator command acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One MXC URI.
    Media { origin: String, media_id: String },
    /// Everything a user uploaded.
    User(String),
}

impl Target {
    /// `mxc://server/id`, or a user ID.
    pub fn parse(mxc: Option<&str>, user: Option<&str>) -> Result<Target, OperatorError> {
        match (mxc, user) {
            (Some(mxc), None) => {
                let (origin, media_id) = mxc
                    .strip_prefix("mxc://")
                    .and_then(|rest| rest.split_once('/'))
                    .filter(|(origin, id)| {
                        !origin.is_empty() && !id.is_empty() && !id.contains('/')
                    })
                    .ok_or_else(|| OperatorError::Target(format!("{mxc} is not an mxc:// URI")))?;
                Ok(Target::Media {
                    origin: origin.to_owned(),
                    media_id: media_id.to_owned(),
                })
            }
            (None, Some(user)) => {
                ruma::UserId::parse(user)
                    .map_err(|_| OperatorError::Target(format!("{user} is not a user ID")))?;
                Ok(Target::User(user.to_owned()))
            }
            _ => Err(OperatorError::Target(
                "give one mxc:// URI or --user".to_owned(),
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{0}")]
    Target(String),
    #[error(transparent)]
    Open(#[from] ganglion_base::DatabaseError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the media store: {0}")]
    Store(String),
}

/// The mediaapi's database and store, for operator commands.
pub struct MediaAdmin {
    storage: Storage,
    store: Arc<dyn BlobStore>,
}

impl MediaAdmin {
    pub async fn open(config: &Config) -> Result<MediaAdmin, OperatorError> {
        let db = Database::open_for_service(config, "mediaapi", storage::MIGRATIONS).await?;
        let store = store::open(config).map_err(|e| OperatorError::Store(e.to_string()))?;
        Ok(MediaAdmin {
            storage: Storage { db },
            store,
        })
    }

    /// Quarantines (`on`) or releases the target's media; how many.
    pub async fn quarantine(&self, target: &Target, on: bool) -> Result<u64, OperatorError> {
        Ok(self.storage.set_quarantined(target, on).await?)
    }

    /// Deletes the target's media, and the blobs no other media holds:
    /// (media deleted, blobs deleted).
    pub async fn delete(&self, target: &Target) -> Result<(u64, u64), OperatorError> {
        let hashes = self.storage.delete(target).await?;
        let mut deleted_blobs = 0;
        for hash in &hashes.blobs {
            if self.storage.blob_in_use(hash).await? {
                continue;
            }
            let Some(name) = BlobHash::parse(hash) else {
                continue;
            };
            self.store
                .delete(&name)
                .await
                .map_err(|e| OperatorError::Store(e.to_string()))?;
            deleted_blobs += 1;
        }
        Ok((hashes.rows, deleted_blobs))
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn targets_are_an_mxc_uri_or_a_user() {
        assert_eq!(
            Target::parse(Some("mxc://example.org/abc"), None).ok(),
            Some(Target::Media {
                origin: "example.org".to_owned(),
                media_id: "abc".to_owned()
            })
        );
        assert_eq!(
            Target::parse(None, Some("@a:example.org")).ok(),
            Some(Target::User("@a:example.org".to_owned()))
        );
        for (mxc, user) in [
            (Some("https://example.org/abc"), None),
            (Some("mxc://example.org/"), None),
            (Some("mxc://example.org/a/b"), None),
            (None, Some("alice")),
            (None, None),
            (Some("mxc://example.org/abc"), Some("@a:example.org")),
        ] {
            assert!(Target::parse(mxc, user).is_err(), "{mxc:?} {user:?}");
        }
    }
}
