use ganglion_base::Migration;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "device keys, one-time keys, fallback keys",
        sql: "
        CREATE TABLE device_keys (
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            key_json TEXT NOT NULL,
            PRIMARY KEY (user_id, device_id)
        );
        CREATE TABLE one_time_keys (
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            key_id TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            key_json TEXT NOT NULL,
            PRIMARY KEY (user_id, device_id, key_id)
        );
        CREATE INDEX one_time_keys_by_algorithm ON one_time_keys (user_id, device_id, algorithm);
        CREATE TABLE fallback_keys (
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            key_id TEXT NOT NULL,
            key_json TEXT NOT NULL,
            used BIGINT NOT NULL,  -- 0/1: the Any driver has no SQLite BOOLEAN
            PRIMARY KEY (user_id, device_id, algorithm)
        );
    ",
    },
    // Device key changes wait here, written in the upload's transaction,
    // until they are on keyserver.key_changes; the row ID is the change's
    // stream ID.
    Migration {
        version: 2,
        description: "outbox of device key changes to keyserver.key_changes",
        sql: "
            CREATE TABLE key_changes_outbox (
                id {serial},
                user_id TEXT NOT NULL,
                device_id TEXT NOT NULL
            );
        ",
    },
    // Each user's latest device list stream ID (what /user/devices
    // answers with; later updates carry higher ones).
    Migration {
        version: 3,
        description: "device list stream IDs per user",
        sql: "
            CREATE TABLE device_list_streams (
                user_id TEXT PRIMARY KEY,
                stream_id BIGINT NOT NULL
            );
        ",
    },
    // Cross-signing keys, one per usage ("master", "self_signing",
    // "user_signing") and user, as uploaded; and the signatures uploaded
    // since, kept apart from what they sign and added when it is read.
    // The target key is a device ID or a master key's public key; the
    // signer's key ID is "ed25519:<device ID or public key>". A change of
    // the master or self-signing key goes through key_changes_outbox as
    // a row with an empty device ID.
    Migration {
        version: 4,
        description: "cross-signing keys and signatures",
        sql: "
            CREATE TABLE cross_signing_keys (
                user_id TEXT NOT NULL,
                usage TEXT NOT NULL,
                key_id TEXT NOT NULL,
                key_json TEXT NOT NULL,
                PRIMARY KEY (user_id, usage)
            );
            CREATE TABLE cross_signing_signatures (
                target_user_id TEXT NOT NULL,
                target_key_id TEXT NOT NULL,
                signer_user_id TEXT NOT NULL,
                signer_key_id TEXT NOT NULL,
                signature TEXT NOT NULL,
                PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
            );
            CREATE INDEX cross_signing_signatures_by_signer
                ON cross_signing_signatures (signer_user_id, target_user_id);
        ",
    },
    // Server-side key backups: each user's versions (numbers that only
    // grow: a deleted version stays, marked, so its number is not given
    // again), with an etag bumped by every change of its keys, and the
    // keys, one per room and session.
    Migration {
        version: 5,
        description: "key backups",
        sql: "
            CREATE TABLE backup_versions (
                user_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                algorithm TEXT NOT NULL,
                auth_data TEXT NOT NULL,
                etag BIGINT NOT NULL DEFAULT 0,
                deleted BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (user_id, version)
            );
            CREATE TABLE backup_keys (
                user_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                room_id TEXT NOT NULL,
                session_id TEXT NOT NULL,
                first_message_index BIGINT NOT NULL,
                forwarded_count BIGINT NOT NULL,
                is_verified BIGINT NOT NULL,
                session_data TEXT NOT NULL,
                PRIMARY KEY (user_id, version, room_id, session_id)
            );
        ",
    },
    // A signature of another user's master key is announced to its
    // signer alone (`DeviceKeyChange.seen_by`).
    Migration {
        version: 6,
        description: "key changes seen by one user",
        sql: "ALTER TABLE key_changes_outbox ADD COLUMN seen_by TEXT NOT NULL DEFAULT '';",
    },
];
