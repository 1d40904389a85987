use ganglion_base::Migration;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "accounts and devices",
        sql: "
        CREATE TABLE accounts (
            localpart TEXT PRIMARY KEY,
            password_hash TEXT,
            is_admin BIGINT NOT NULL DEFAULT 0,  -- 0/1: the Any driver has no SQLite BOOLEAN
            created_ts BIGINT NOT NULL
        );
        CREATE TABLE devices (
            id {serial},
            localpart TEXT NOT NULL REFERENCES accounts(localpart),
            device_id TEXT NOT NULL,
            display_name TEXT,
            token_hash {bytes} NOT NULL UNIQUE,
            created_ts BIGINT NOT NULL,
            UNIQUE (localpart, device_id)
        );
    ",
    },
    Migration {
        version: 2,
        description: "guest accounts",
        sql: "ALTER TABLE accounts ADD COLUMN is_guest BIGINT NOT NULL DEFAULT 0;",
    },
    Migration {
        version: 3,
        description: "account data, and its outbox to userapi.account_data",
        sql: "
        CREATE TABLE account_data (
            localpart TEXT NOT NULL,
            room_id TEXT NOT NULL,
            data_type TEXT NOT NULL,
            content TEXT NOT NULL,
            PRIMARY KEY (localpart, room_id, data_type)
        );
        CREATE TABLE account_data_outbox (
            id {serial},
            localpart TEXT NOT NULL,
            room_id TEXT NOT NULL,
            data_type TEXT NOT NULL
        );
    ",
    },
    // Profiles: a displayname and an avatar URL per account.
    Migration {
        version: 4,
        description: "profiles",
        sql: "
        ALTER TABLE accounts ADD COLUMN displayname TEXT;
        ALTER TABLE accounts ADD COLUMN avatar_url TEXT;
    ",
    },
    // Registration tokens (`m.login.registration_token`), made by the
    // operator: how often each may be used (NULL: without limit), how
    // often it was, and until when (NULL: for ever).
    Migration {
        version: 5,
        description: "registration tokens",
        sql: "
        CREATE TABLE registration_tokens (
            token TEXT NOT NULL PRIMARY KEY,
            uses_allowed BIGINT,
            completed BIGINT NOT NULL DEFAULT 0,
            expiry_ms BIGINT
        );
    ",
    },
    Migration {
        version: 6,
        description: "devices' last sighting",
        sql: "
        ALTER TABLE devices ADD COLUMN last_seen_ts BIGINT;
        ALTER TABLE devices ADD COLUMN last_seen_ip TEXT;
        ALTER TABLE devices ADD COLUMN last_seen_user_agent TEXT;
    ",
    },
    Migration {
        version: 7,
        description: "deactivated accounts",
        sql: "ALTER TABLE accounts ADD COLUMN deactivated BIGINT NOT NULL DEFAULT 0;",
    },
];
