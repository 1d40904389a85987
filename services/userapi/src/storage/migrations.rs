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
    // Pushers (one per user, app and pushkey; gone with the device that
    // set them) with their delivery state, the notifications waiting for
    // them, and the push view of `roomserver.output`: who is in each room,
    // and the room's create, power levels and name as push needs them.
    Migration {
        version: 8,
        description: "pushers, their queue and the push view of rooms",
        sql: "
        CREATE TABLE pushers (
            id {serial},
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            app_id TEXT NOT NULL,
            pushkey TEXT NOT NULL,
            kind TEXT NOT NULL,
            app_display_name TEXT NOT NULL,
            device_display_name TEXT NOT NULL,
            profile_tag TEXT,
            lang TEXT NOT NULL,
            data TEXT NOT NULL,
            pushkey_ts BIGINT NOT NULL,
            failing_since BIGINT,
            last_error TEXT,
            attempts BIGINT NOT NULL DEFAULT 0,
            next_attempt_ms BIGINT NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until BIGINT NOT NULL DEFAULT 0
        );
        CREATE UNIQUE INDEX pushers_of_user ON pushers (user_id, app_id, pushkey);
        CREATE INDEX pushers_by_key ON pushers (app_id, pushkey);
        CREATE TABLE push_queue (
            id {serial},
            pusher_id BIGINT NOT NULL,
            event_id TEXT NOT NULL,
            notification TEXT NOT NULL,
            created_ms BIGINT NOT NULL
        );
        CREATE UNIQUE INDEX push_queue_once ON push_queue (pusher_id, event_id);
        CREATE TABLE push_members (
            room_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            membership TEXT NOT NULL,
            displayname TEXT,
            PRIMARY KEY (room_id, user_id)
        );
        CREATE INDEX push_members_joined ON push_members (room_id, membership);
        CREATE TABLE push_rooms (
            room_id TEXT NOT NULL PRIMARY KEY,
            create_event TEXT,
            power_levels_event TEXT,
            name TEXT,
            canonical_alias TEXT
        );
    ",
    },
    // Refresh tokens (a device's access token then expires; the refresh
    // token before the latest stays usable until the new access token is
    // used) and single-use login tokens (`m.login.token`).
    Migration {
        version: 9,
        description: "refresh tokens and login tokens",
        sql: "
        ALTER TABLE devices ADD COLUMN access_expires_ms BIGINT;
        ALTER TABLE devices ADD COLUMN refresh_hash {bytes};
        ALTER TABLE devices ADD COLUMN previous_refresh_hash {bytes};
        CREATE INDEX devices_by_refresh ON devices (refresh_hash);
        CREATE INDEX devices_by_previous_refresh ON devices (previous_refresh_hash);
        CREATE TABLE login_tokens (
            token_hash {bytes} NOT NULL PRIMARY KEY,
            localpart TEXT NOT NULL,
            expires_ms BIGINT NOT NULL
        );
    ",
    },
    Migration {
        version: 10,
        description: "dehydrated devices",
        // A device with dehydrated data is its user's dehydrated device
        // (MSC3814); it has no access token anyone knows.
        sql: "ALTER TABLE devices ADD COLUMN dehydrated_data TEXT;",
    },
    Migration {
        version: 11,
        description: "unread notifications for push badges",
        // What each member with a pusher was pushed for and has not read
        // (a read receipt of theirs in the room clears it): the badge
        // (`counts.unread`) every push carries.
        sql: "
        ALTER TABLE push_members ADD COLUMN unread BIGINT NOT NULL DEFAULT 0;
        CREATE INDEX push_members_unread ON push_members (user_id, unread);
    ",
    },
];
