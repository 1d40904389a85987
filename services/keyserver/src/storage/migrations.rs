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
];
