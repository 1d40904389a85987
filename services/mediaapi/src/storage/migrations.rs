use ganglion_base::Migration;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "media metadata",
        sql: "
        -- One row per MXC URI this server knows: local uploads (and IDs
        -- made by /create that wait for theirs). A row's bytes are the
        -- blob named by sha256 in the blob store.
        CREATE TABLE media (
            origin TEXT NOT NULL,          -- the server name in the MXC URI
            media_id TEXT NOT NULL,
            user_id TEXT,                  -- who uploaded (or created) it
            content_type TEXT,             -- as the uploader declared it
            sniffed_type TEXT,             -- as its first bytes show it
            upload_name TEXT,
            size BIGINT,                   -- NULL until uploaded
            sha256 TEXT,                   -- NULL until uploaded
            created_ts BIGINT NOT NULL,
            uploaded_ts BIGINT,            -- NULL: created, not uploaded yet
            expires_ts BIGINT,             -- a created ID's upload deadline
            quarantined BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (origin, media_id)
        );
        CREATE INDEX media_by_user ON media (user_id, created_ts);
        CREATE INDEX media_by_sha256 ON media (sha256);
    ",
    },
    Migration {
        version: 2,
        description: "thumbnails",
        sql: "
        -- The thumbnails kept, by their media and size; bytes in the blob
        -- store like the media's own.
        CREATE TABLE thumbnails (
            origin TEXT NOT NULL,
            media_id TEXT NOT NULL,
            width BIGINT NOT NULL,
            height BIGINT NOT NULL,
            method TEXT NOT NULL,
            animated BIGINT NOT NULL,
            content_type TEXT NOT NULL,
            size BIGINT NOT NULL,
            sha256 TEXT NOT NULL,
            PRIMARY KEY (origin, media_id, width, height, method, animated)
        );
        CREATE INDEX thumbnails_by_sha256 ON thumbnails (sha256);
    ",
    },
    Migration {
        version: 3,
        description: "url previews",
        sql: "
        -- URL previews kept for a while: the OpenGraph object, as JSON.
        CREATE TABLE url_previews (
            url TEXT NOT NULL PRIMARY KEY,
            preview TEXT NOT NULL,
            fetched_ts BIGINT NOT NULL,
            expires_ts BIGINT NOT NULL
        );
        CREATE INDEX url_previews_by_expiry ON url_previews (expires_ts);
    ",
    },
];
