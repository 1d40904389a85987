//! The mediaapi's tables: what each MXC URI holds (its blob, type, name,
//! uploader) and the IDs waiting for an upload.

mod migrations;

pub(crate) use migrations::MIGRATIONS;

use ganglion_base::{Database, sql};

#[derive(Clone)]
pub(crate) struct Storage {
    pub(crate) db: Database,
}

/// One MXC URI's row.
#[derive(Debug, Clone)]
pub(crate) struct Media {
    pub(crate) user_id: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) sniffed_type: Option<String>,
    pub(crate) upload_name: Option<String>,
    pub(crate) size: Option<i64>,
    pub(crate) sha256: Option<String>,
    pub(crate) created_ts: i64,
    /// `None`: created with `/create` and not uploaded yet.
    pub(crate) uploaded_ts: Option<i64>,
    pub(crate) expires_ts: Option<i64>,
    pub(crate) quarantined: bool,
}

/// What an upload stores about its bytes.
#[derive(Debug, Clone)]
pub(crate) struct Upload<'a> {
    /// Who uploaded it (`None`: another server's media, fetched).
    pub(crate) user_id: Option<&'a str>,
    pub(crate) content_type: Option<&'a str>,
    pub(crate) sniffed_type: Option<&'a str>,
    pub(crate) upload_name: Option<&'a str>,
    pub(crate) size: u64,
    pub(crate) sha256: &'a str,
}

/// Why an ID could not be created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CreateError {
    /// The user holds the most IDs waiting for uploads; the earliest of
    /// them expires in this many milliseconds.
    #[error("too many pending uploads")]
    TooMany { retry_after_ms: u64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Why bytes could not go to a created ID.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FillError {
    /// No such ID, or it expired.
    #[error("unknown media ID")]
    Unknown,
    /// Another user created it.
    #[error("created by another user")]
    NotYours,
    /// It holds its bytes already.
    #[error("already uploaded")]
    Uploaded,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

const INSERT_MEDIA: &str =
    "INSERT INTO media (origin, media_id, user_id, content_type, sniffed_type, upload_name,
                        size, sha256, created_ts, uploaded_ts, quarantined)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, 0)";
const INSERT_FETCHED: &str =
    "INSERT INTO media (origin, media_id, user_id, content_type, sniffed_type, upload_name,
                        size, sha256, created_ts, uploaded_ts, quarantined)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, 0)
     ON CONFLICT DO NOTHING";

/// One row by its MXC URI, in the order [`media_of`] reads.
const SELECT_MEDIA: &str = "SELECT user_id, content_type, sniffed_type, upload_name, size, sha256, \
                            created_ts, uploaded_ts, expires_ts, quarantined \
                            FROM media WHERE origin = $1 AND media_id = $2";

fn media_of(row: &sql::Row) -> Result<Media, sqlx::Error> {
    Ok(Media {
        user_id: row.try_get(0)?,
        content_type: row.try_get(1)?,
        sniffed_type: row.try_get(2)?,
        upload_name: row.try_get(3)?,
        size: row.try_get(4)?,
        sha256: row.try_get(5)?,
        created_ts: row.try_get(6)?,
        uploaded_ts: row.try_get(7)?,
        expires_ts: row.try_get(8)?,
        quarantined: row.try_get::<i64, _>(9)? != 0,
    })
}

impl Storage {
    /// The row of `mxc://origin/media_id`.
    pub(crate) async fn media(
        &self,
        origin: &str,
        media_id: &str,
    ) -> Result<Option<Media>, sqlx::Error> {
        let row = sql::query(SELECT_MEDIA)
            .bind(origin)
            .bind(media_id)
            .fetch_optional(&self.db.pool)
            .await?;
        row.as_ref().map(media_of).transpose()
    }

    /// Records an upload's bytes under a new ID.
    pub(crate) async fn insert_uploaded(
        &self,
        origin: &str,
        media_id: &str,
        upload: &Upload<'_>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        self.insert(INSERT_MEDIA, origin, media_id, upload, now)
            .await
    }

    /// Records another server's media fetched here (a replica that
    /// fetched it at the same time keeps its row).
    pub(crate) async fn insert_fetched(
        &self,
        origin: &str,
        media_id: &str,
        upload: &Upload<'_>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        self.insert(INSERT_FETCHED, origin, media_id, upload, now)
            .await
    }

    async fn insert(
        &self,
        statement: &'static str,
        origin: &str,
        media_id: &str,
        upload: &Upload<'_>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sql::query(statement)
            .bind(origin)
            .bind(media_id)
            .bind(upload.user_id)
            .bind(upload.content_type)
            .bind(upload.sniffed_type)
            .bind(upload.upload_name)
            .bind(upload.size as i64)
            .bind(upload.sha256)
            .bind(now)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Makes an ID that waits for its upload until `expires_ts`, unless the
    /// user already holds `max_pending` unexpired ones.
    pub(crate) async fn create_pending(
        &self,
        (origin, media_id): (&str, &str),
        user_id: &str,
        (now, expires_ts): (i64, i64),
        max_pending: u32,
    ) -> Result<(), CreateError> {
        let mut tx = self.db.pool.begin().await?;
        // Expired IDs of this user go now (the rest at the next sweep).
        sql::query(
            "DELETE FROM media WHERE user_id = $1 AND uploaded_ts IS NULL AND expires_ts <= $2",
        )
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let (pending, earliest): (i64, Option<i64>) = {
            let row = sql::query(
                "SELECT COUNT(*), MIN(expires_ts) FROM media
                 WHERE user_id = $1 AND uploaded_ts IS NULL",
            )
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
            (row.try_get(0)?, row.try_get(1)?)
        };
        if pending >= i64::from(max_pending) {
            let retry_after_ms = earliest.map_or(1_000, |at| (at - now).max(1) as u64);
            return Err(CreateError::TooMany { retry_after_ms });
        }
        sql::query(
            "INSERT INTO media (origin, media_id, user_id, created_ts, expires_ts, quarantined)
             VALUES ($1, $2, $3, $4, $5, 0)",
        )
        .bind(origin)
        .bind(media_id)
        .bind(user_id)
        .bind(now)
        .bind(expires_ts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether `user_id` may upload to the created ID now (checked before
    /// the bytes are read, and again by [`Storage::fill_pending`]).
    pub(crate) async fn may_fill(
        &self,
        (origin, media_id): (&str, &str),
        user_id: &str,
        now: i64,
    ) -> Result<(), FillError> {
        match self.media(origin, media_id).await? {
            None => Err(FillError::Unknown),
            Some(media) => fill_check(&media, user_id, now),
        }
    }

    /// Gives a created ID its bytes.
    pub(crate) async fn fill_pending(
        &self,
        (origin, media_id): (&str, &str),
        upload: &Upload<'_>,
        now: i64,
    ) -> Result<(), FillError> {
        let mut tx = self.db.pool.begin().await?;
        let row = sql::query(SELECT_MEDIA)
            .bind(origin)
            .bind(media_id)
            .fetch_optional(&mut *tx)
            .await?;
        let media = row
            .as_ref()
            .map(media_of)
            .transpose()?
            .ok_or(FillError::Unknown)?;
        fill_check(&media, upload.user_id.unwrap_or_default(), now)?;
        let updated = sql::query(
            "UPDATE media SET content_type = $3, sniffed_type = $4, upload_name = $5, size = $6,
                              sha256 = $7, uploaded_ts = $8, expires_ts = NULL
             WHERE origin = $1 AND media_id = $2 AND uploaded_ts IS NULL",
        )
        .bind(origin)
        .bind(media_id)
        .bind(upload.content_type)
        .bind(upload.sniffed_type)
        .bind(upload.upload_name)
        .bind(upload.size as i64)
        .bind(upload.sha256)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(FillError::Uploaded);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Bytes of media `user_id` has uploaded, in all.
    pub(crate) async fn usage(&self, user_id: &str) -> Result<u64, sqlx::Error> {
        // PostgreSQL sums BIGINTs as NUMERIC: cast back.
        let used: i64 = sql::query_scalar(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM media
             WHERE user_id = $1 AND uploaded_ts IS NOT NULL",
        )
        .bind(user_id)
        .fetch_one(&self.db.pool)
        .await?;
        Ok(used.max(0) as u64)
    }

    /// Removes created IDs whose upload deadline passed; how many.
    pub(crate) async fn sweep_expired(&self, now: i64) -> Result<u64, sqlx::Error> {
        Ok(
            sql::query("DELETE FROM media WHERE uploaded_ts IS NULL AND expires_ts <= $1")
                .bind(now)
                .execute(&self.db.pool)
                .await?
                .rows_affected(),
        )
    }
}

impl Storage {
    /// A kept thumbnail: (content type, blob hash).
    pub(crate) async fn thumbnail(
        &self,
        (origin, media_id): (&str, &str),
        (size, animated): (crate::thumbnail::Size, bool),
    ) -> Result<Option<(String, String)>, sqlx::Error> {
        let row = sql::query(
            "SELECT content_type, sha256 FROM thumbnails
             WHERE origin = $1 AND media_id = $2 AND width = $3 AND height = $4
               AND method = $5 AND animated = $6",
        )
        .bind(origin)
        .bind(media_id)
        .bind(i64::from(size.width))
        .bind(i64::from(size.height))
        .bind(size.method.as_str())
        .bind(i64::from(animated))
        .fetch_optional(&self.db.pool)
        .await?;
        row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .transpose()
    }

    /// Keeps a thumbnail (the first made of a size stays).
    pub(crate) async fn insert_thumbnail(
        &self,
        (origin, media_id): (&str, &str),
        (size, animated): (crate::thumbnail::Size, bool),
        content_type: &str,
        bytes: u64,
        sha256: &str,
    ) -> Result<(), sqlx::Error> {
        sql::query(
            "INSERT INTO thumbnails (origin, media_id, width, height, method, animated,
                                     content_type, size, sha256)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT DO NOTHING",
        )
        .bind(origin)
        .bind(media_id)
        .bind(i64::from(size.width))
        .bind(i64::from(size.height))
        .bind(size.method.as_str())
        .bind(i64::from(animated))
        .bind(content_type)
        .bind(bytes as i64)
        .bind(sha256)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }
}

impl Storage {
    /// The kept preview of `url`, unless it expired by `now`.
    pub(crate) async fn preview(
        &self,
        url: &str,
        now: i64,
    ) -> Result<Option<serde_json::Value>, sqlx::Error> {
        let preview: Option<String> = sql::query_scalar(
            "SELECT preview FROM url_previews WHERE url = $1 AND expires_ts > $2",
        )
        .bind(url)
        .bind(now)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(preview.and_then(|p| serde_json::from_str(&p).ok()))
    }

    /// Keeps the preview of `url` until `expires_ts` (replacing an older
    /// one), and drops previews expired by `now`.
    pub(crate) async fn keep_preview(
        &self,
        url: &str,
        preview: &serde_json::Value,
        now: i64,
        expires_ts: i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.db.pool.begin().await?;
        sql::query("DELETE FROM url_previews WHERE expires_ts <= $1 OR url = $2")
            .bind(now)
            .bind(url)
            .execute(&mut *tx)
            .await?;
        sql::query(
            "INSERT INTO url_previews (url, preview, fetched_ts, expires_ts) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(url)
        .bind(preview.to_string())
        .bind(now)
        .bind(expires_ts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

/// What a deletion removed: rows, and the blobs they named.
pub(crate) struct Deleted {
    pub(crate) rows: u64,
    pub(crate) blobs: Vec<String>,
}

impl Storage {
    /// Quarantines (`on`) or releases media; how many rows changed.
    pub(crate) async fn set_quarantined(
        &self,
        target: &crate::operator::Target,
        on: bool,
    ) -> Result<u64, sqlx::Error> {
        use crate::operator::Target;
        let flag = i64::from(on);
        let done = match target {
            Target::Media { origin, media_id } => {
                sql::query("UPDATE media SET quarantined = $3 WHERE origin = $1 AND media_id = $2")
                    .bind(origin.as_str())
                    .bind(media_id.as_str())
                    .bind(flag)
                    .execute(&self.db.pool)
                    .await?
            }
            Target::User(user_id) => {
                sql::query("UPDATE media SET quarantined = $2 WHERE user_id = $1")
                    .bind(user_id.as_str())
                    .bind(flag)
                    .execute(&self.db.pool)
                    .await?
            }
        };
        Ok(done.rows_affected())
    }

    /// Deletes media rows; the blob hashes they named.
    pub(crate) async fn delete(
        &self,
        target: &crate::operator::Target,
    ) -> Result<Deleted, sqlx::Error> {
        use crate::operator::Target;
        let mut tx = self.db.pool.begin().await?;
        let (blobs, done) = match target {
            Target::Media { origin, media_id } => {
                let blobs: Vec<Option<String>> = sql::query_scalar(
                    "SELECT sha256 FROM media WHERE origin = $1 AND media_id = $2
                     UNION ALL
                     SELECT sha256 FROM thumbnails WHERE origin = $1 AND media_id = $2",
                )
                .bind(origin.as_str())
                .bind(media_id.as_str())
                .fetch_all(&mut *tx)
                .await?;
                sql::query("DELETE FROM thumbnails WHERE origin = $1 AND media_id = $2")
                    .bind(origin.as_str())
                    .bind(media_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                let done = sql::query("DELETE FROM media WHERE origin = $1 AND media_id = $2")
                    .bind(origin.as_str())
                    .bind(media_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                (blobs, done)
            }
            Target::User(user_id) => {
                let blobs: Vec<Option<String>> = sql::query_scalar(
                    "SELECT sha256 FROM media WHERE user_id = $1
                     UNION ALL
                     SELECT t.sha256 FROM thumbnails t JOIN media m
                       ON t.origin = m.origin AND t.media_id = m.media_id
                     WHERE m.user_id = $1",
                )
                .bind(user_id.as_str())
                .fetch_all(&mut *tx)
                .await?;
                sql::query(
                    "DELETE FROM thumbnails WHERE EXISTS (
                         SELECT 1 FROM media m WHERE m.user_id = $1
                           AND m.origin = thumbnails.origin AND m.media_id = thumbnails.media_id)",
                )
                .bind(user_id.as_str())
                .execute(&mut *tx)
                .await?;
                let done = sql::query("DELETE FROM media WHERE user_id = $1")
                    .bind(user_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                (blobs, done)
            }
        };
        tx.commit().await?;
        let mut blobs: Vec<String> = blobs.into_iter().flatten().collect();
        blobs.sort();
        blobs.dedup();
        Ok(Deleted {
            rows: done.rows_affected(),
            blobs,
        })
    }

    /// Whether any media still holds the blob `sha256`.
    pub(crate) async fn blob_in_use(&self, sha256: &str) -> Result<bool, sqlx::Error> {
        Ok(sql::query_scalar::<i64>(
            "SELECT (SELECT COUNT(*) FROM media WHERE sha256 = $1)
                      + (SELECT COUNT(*) FROM thumbnails WHERE sha256 = $1)",
        )
        .bind(sha256)
        .fetch_one(&self.db.pool)
        .await?
            > 0)
    }
}

fn fill_check(media: &Media, user_id: &str, now: i64) -> Result<(), FillError> {
    if media.uploaded_ts.is_some() {
        return Err(FillError::Uploaded);
    }
    if media.expires_ts.is_some_and(|at| at <= now) {
        return Err(FillError::Unknown);
    }
    if media.user_id.as_deref() != Some(user_id) {
        return Err(FillError::NotYours);
    }
    Ok(())
}
