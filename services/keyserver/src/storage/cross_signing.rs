//! Cross-signing keys (one per user and usage) and the signatures uploaded
//! for keys, kept apart from what they sign.

use ganglion_base::sql;
use std::collections::BTreeMap;

use super::keys::PendingChange;
use super::{Storage, StorageError};

/// A stored cross-signing key: its ID (`ed25519:<public key>`) and JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SigningKey {
    pub(crate) key_id: String,
    pub(crate) json: String,
}

/// One uploaded signature of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signature {
    pub(crate) target_user_id: String,
    /// A device ID, or a master key's public key.
    pub(crate) target_key_id: String,
    pub(crate) signer_user_id: String,
    /// `ed25519:<device ID or public key>`.
    pub(crate) signer_key_id: String,
    pub(crate) signature: String,
}

impl Storage {
    /// A user's cross-signing keys by usage.
    pub(crate) async fn signing_keys(
        &self,
        user_id: &str,
    ) -> Result<BTreeMap<String, SigningKey>, StorageError> {
        let rows: Vec<(String, String, String)> = sql::query_as(
            "SELECT usage, key_id, key_json FROM cross_signing_keys WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(usage, key_id, json)| (usage, SigningKey { key_id, json }))
            .collect())
    }

    /// Stores a user's new cross-signing keys (usage → key) in one
    /// transaction; the signatures the replaced keys made go with them.
    /// With `announce`, an outbox row (empty device ID) tells of the
    /// change.
    pub(crate) async fn store_signing_keys(
        &self,
        user_id: &str,
        keys: &BTreeMap<&str, SigningKey>,
        announce: bool,
    ) -> Result<Option<PendingChange>, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        for (usage, key) in keys {
            let replaced: Option<String> = sql::query_scalar(
                "SELECT key_id FROM cross_signing_keys WHERE user_id = $1 AND usage = $2",
            )
            .bind(user_id)
            .bind(*usage)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(replaced) = replaced.filter(|old| *old != key.key_id) {
                sql::query(
                    "DELETE FROM cross_signing_signatures
                     WHERE signer_user_id = $1 AND signer_key_id = $2",
                )
                .bind(user_id)
                .bind(&replaced)
                .execute(&mut *tx)
                .await?;
            }
            sql::query(
                "INSERT INTO cross_signing_keys (user_id, usage, key_id, key_json)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id, usage)
                 DO UPDATE SET key_id = excluded.key_id, key_json = excluded.key_json",
            )
            .bind(user_id)
            .bind(*usage)
            .bind(&key.key_id)
            .bind(&key.json)
            .execute(&mut *tx)
            .await?;
        }
        let change = if announce {
            Some(Self::enqueue_change(&mut tx, user_id, "").await?)
        } else {
            None
        };
        tx.commit().await?;
        Ok(change)
    }

    /// The signatures of a user's keys made by the user themself or by
    /// `viewer` (when given).
    pub(crate) async fn signatures_of(
        &self,
        target_user_id: &str,
        viewer: Option<&str>,
    ) -> Result<Vec<Signature>, StorageError> {
        let rows: Vec<(String, String, String, String)> = sql::query_as(
            "SELECT target_key_id, signer_user_id, signer_key_id, signature
             FROM cross_signing_signatures
             WHERE target_user_id = $1 AND (signer_user_id = $1 OR signer_user_id = $2)
             ORDER BY target_key_id, signer_user_id, signer_key_id",
        )
        .bind(target_user_id)
        .bind(viewer.unwrap_or(target_user_id))
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(target_key_id, signer_user_id, signer_key_id, signature)| Signature {
                    target_user_id: target_user_id.to_owned(),
                    target_key_id,
                    signer_user_id,
                    signer_key_id,
                    signature,
                },
            )
            .collect())
    }

    /// The signatures `signer` made of other users' keys.
    pub(crate) async fn signatures_by(&self, signer: &str) -> Result<Vec<Signature>, StorageError> {
        let rows: Vec<(String, String, String, String)> = sql::query_as(
            "SELECT target_user_id, target_key_id, signer_key_id, signature
             FROM cross_signing_signatures
             WHERE signer_user_id = $1 AND target_user_id <> $1",
        )
        .bind(signer)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(target_user_id, target_key_id, signer_key_id, signature)| Signature {
                    target_user_id,
                    target_key_id,
                    signer_user_id: signer.to_owned(),
                    signer_key_id,
                    signature,
                },
            )
            .collect())
    }

    /// Stores signatures (one replaces the same signer key's earlier
    /// signature of the same key) in one transaction, with an outbox row
    /// for each (user, device ID) in `changed` (an empty device ID: the
    /// user's cross-signing keys).
    pub(crate) async fn store_signatures(
        &self,
        signatures: &[Signature],
        changed: &[(String, String)],
        (signer, signed_others): (&str, &[String]),
    ) -> Result<Vec<PendingChange>, StorageError> {
        let mut tx = self.db.pool.begin().await?;
        for one in signatures {
            sql::query(
                "INSERT INTO cross_signing_signatures
                 (target_user_id, target_key_id, signer_user_id, signer_key_id, signature)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id)
                 DO UPDATE SET signature = excluded.signature",
            )
            .bind(&one.target_user_id)
            .bind(&one.target_key_id)
            .bind(&one.signer_user_id)
            .bind(&one.signer_key_id)
            .bind(&one.signature)
            .execute(&mut *tx)
            .await?;
        }
        let mut changes = Vec::new();
        for (user_id, device_id) in changed {
            changes.push(Self::enqueue_change(&mut tx, user_id, device_id).await?);
        }
        for user_id in signed_others {
            changes.push(Self::enqueue_signer_change(&mut tx, user_id, signer).await?);
        }
        tx.commit().await?;
        Ok(changes)
    }
}
