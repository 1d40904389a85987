use ganglion_base::Migration;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "timeline events, current state, consumed positions, filters",
        sql: "
        CREATE TABLE events (
            id {serial},
            log_partition BIGINT NOT NULL,
            log_offset BIGINT NOT NULL,
            room_id TEXT NOT NULL,
            event_id TEXT NOT NULL UNIQUE,
            event_type TEXT NOT NULL,
            state_key TEXT,
            sender TEXT NOT NULL,
            json TEXT NOT NULL,
            device_id TEXT NOT NULL,
            transaction_id TEXT NOT NULL
        );
        CREATE INDEX events_room_position ON events (room_id, log_offset);
        CREATE TABLE current_state (
            room_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            state_key TEXT NOT NULL,
            event_id TEXT NOT NULL,
            membership TEXT,
            log_offset BIGINT NOT NULL,
            PRIMARY KEY (room_id, event_type, state_key)
        );
        CREATE INDEX current_state_members ON current_state (state_key, event_type);
        CREATE TABLE positions (
            log_partition BIGINT PRIMARY KEY,
            next_offset BIGINT NOT NULL
        );
        CREATE TABLE filters (
            id {serial},
            user_id TEXT NOT NULL,
            json TEXT NOT NULL
        );
    ",
    },
    // A view's schema change: drop what was built from the log and build it
    // again from the start of roomserver.output (kept forever), so every
    // event gets the new columns. Filters are user data, not from the log.
    Migration {
        version: 2,
        description: "history visibility and relations per event, state history; rebuilt from the log",
        sql: "
            DELETE FROM events;
            DELETE FROM current_state;
            DELETE FROM positions;
            ALTER TABLE events ADD COLUMN history_visibility TEXT NOT NULL DEFAULT 'shared';
            ALTER TABLE events ADD COLUMN relates_to TEXT;
            ALTER TABLE events ADD COLUMN rel_type TEXT;
            CREATE INDEX events_relations ON events (relates_to, log_offset);
            CREATE TABLE state_history (
                room_id TEXT NOT NULL,
                event_type TEXT NOT NULL,
                state_key TEXT NOT NULL,
                log_offset BIGINT NOT NULL,
                event_id TEXT,
                membership TEXT,
                PRIMARY KEY (room_id, event_type, state_key, log_offset)
            );
            CREATE TABLE forgotten_rooms (
                room_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                log_offset BIGINT NOT NULL,
                PRIMARY KEY (room_id, user_id, log_offset)
            );
        ",
    },
    // The per-user and ephemeral streams, each consumed from its own topic,
    // and positions per (stream, partition).
    Migration {
        version: 3,
        description: "positions per stream; typing, receipts, presence, to-device, account data, notifications",
        sql: "
            CREATE TABLE stream_positions (
                stream TEXT NOT NULL,
                log_partition BIGINT NOT NULL,
                next_offset BIGINT NOT NULL,
                PRIMARY KEY (stream, log_partition)
            );
            INSERT INTO stream_positions (stream, log_partition, next_offset)
                SELECT 'room', log_partition, next_offset FROM positions;
            DROP TABLE positions;
            CREATE TABLE typing (
                room_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                expires_at BIGINT NOT NULL,
                PRIMARY KEY (room_id, user_id)
            );
            CREATE TABLE typing_changes (
                room_id TEXT PRIMARY KEY,
                log_partition BIGINT NOT NULL,
                log_offset BIGINT NOT NULL
            );
            CREATE TABLE receipts (
                room_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                receipt_type TEXT NOT NULL,
                thread_id TEXT NOT NULL,
                event_id TEXT NOT NULL,
                ts BIGINT NOT NULL,
                log_partition BIGINT NOT NULL,
                log_offset BIGINT NOT NULL,
                PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
            );
            CREATE INDEX receipts_position ON receipts (room_id, log_offset);
            CREATE TABLE presence (
                user_id TEXT PRIMARY KEY,
                presence TEXT NOT NULL,
                status_msg TEXT,
                last_active_ts BIGINT NOT NULL,
                currently_active BIGINT NOT NULL,
                automatic BIGINT NOT NULL,
                log_partition BIGINT NOT NULL,
                log_offset BIGINT NOT NULL
            );
            CREATE INDEX presence_position ON presence (log_offset);
            CREATE TABLE to_device (
                id {serial},
                user_id TEXT NOT NULL,
                device_id TEXT NOT NULL,
                message_id TEXT NOT NULL,
                sender TEXT NOT NULL,
                event_type TEXT NOT NULL,
                content TEXT NOT NULL,
                log_partition BIGINT NOT NULL,
                log_offset BIGINT NOT NULL,
                UNIQUE (user_id, device_id, message_id)
            );
            CREATE INDEX to_device_inbox ON to_device (user_id, device_id, log_offset);
            CREATE TABLE account_data (
                user_id TEXT NOT NULL,
                room_id TEXT NOT NULL,
                data_type TEXT NOT NULL,
                content TEXT NOT NULL,
                log_partition BIGINT NOT NULL,
                log_offset BIGINT NOT NULL,
                PRIMARY KEY (user_id, room_id, data_type)
            );
            CREATE TABLE notifications (
                user_id TEXT NOT NULL,
                room_id TEXT NOT NULL,
                log_offset BIGINT NOT NULL,
                thread_id TEXT NOT NULL,
                highlight BIGINT NOT NULL,
                PRIMARY KEY (user_id, room_id, log_offset)
            );
        ",
    },
    // Simplified sliding sync: each room's latest "bump" (the local row of
    // its latest message-like event, comparable across rooms), computed for
    // what is already stored, and the per-connection state (what each
    // connection was sent), keyed by the `pos` it was answered with.
    Migration {
        version: 4,
        description: "room bump stamps; sliding sync connections",
        sql: "
            CREATE TABLE room_bumps (
                room_id TEXT PRIMARY KEY,
                bump BIGINT NOT NULL
            );
            INSERT INTO room_bumps (room_id, bump)
                SELECT room_id, MAX(id) FROM events
                WHERE event_type IN ('m.room.create', 'm.room.message', 'm.room.encrypted',
                                     'm.sticker', 'm.call.invite', 'm.poll.start', 'm.beacon_info')
                GROUP BY room_id;
            CREATE TABLE sliding_connections (
                id {serial},
                user_id TEXT NOT NULL,
                device_id TEXT NOT NULL,
                conn_id TEXT NOT NULL,
                state TEXT NOT NULL
            );
            CREATE INDEX sliding_connections_by_conn ON sliding_connections (user_id, device_id, conn_id, id);
        ",
    },
    // device_lists: each user's latest device key change (from
    // keyserver.key_changes), and membership changes found by position.
    Migration {
        version: 5,
        description: "device key changes; state history by position",
        sql: "
            CREATE TABLE device_key_changes (
                user_id TEXT PRIMARY KEY,
                log_partition BIGINT NOT NULL,
                log_offset BIGINT NOT NULL
            );
            CREATE INDEX device_key_changes_position ON device_key_changes (log_offset);
            CREATE INDEX state_history_by_position ON state_history (room_id, event_type, log_offset);
        ",
    },
    // Invites from other servers to rooms we are not in: the stripped
    // state their servers sent, shown with the invite.
    Migration {
        version: 6,
        description: "invite state of invites from other servers",
        sql: "
            CREATE TABLE invite_state (
                room_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                events_json TEXT NOT NULL,
                PRIMARY KEY (room_id, user_id)
            );
        ",
    },
    // Unread notification counts per user, room and thread, kept as rows
    // are added and read: `/sync` counted every unread row instead, a cost
    // that grew with every message the reader had not read.
    Migration {
        version: 7,
        description: "notification counts",
        sql: "
            CREATE TABLE notification_counts (
                user_id TEXT NOT NULL,
                room_id TEXT NOT NULL,
                thread_id TEXT NOT NULL,
                notifications BIGINT NOT NULL,
                highlights BIGINT NOT NULL,
                PRIMARY KEY (user_id, room_id, thread_id)
            );
            INSERT INTO notification_counts (user_id, room_id, thread_id, notifications, highlights)
            SELECT user_id, room_id, thread_id, COUNT(*), CAST(COALESCE(SUM(highlight), 0) AS BIGINT)
            FROM notifications GROUP BY user_id, room_id, thread_id;
        ",
    },
    // Notifications stay once read, for `GET /notifications`: marked read
    // by receipts (rows before this were unread: read ones were deleted),
    // with when they were made and the actions that made them.
    Migration {
        version: 8,
        description: "notifications kept for /notifications",
        sql: "
            ALTER TABLE notifications ADD COLUMN unread BIGINT NOT NULL DEFAULT 1;
            ALTER TABLE notifications ADD COLUMN ts BIGINT NOT NULL DEFAULT 0;
            ALTER TABLE notifications ADD COLUMN actions TEXT;
            CREATE INDEX notifications_by_time ON notifications (user_id, ts);
            CREATE INDEX notifications_unread ON notifications (user_id, room_id, unread, log_offset);
        ",
    },
    // Full-text search of messages' bodies and rooms' names and topics:
    // SQLite's FTS5 (its rowid the event's id) and PostgreSQL's tsvector,
    // filled from what is already stored.
    Migration {
        version: 9,
        description: "full-text search",
        sql: "
--sqlite:CREATE VIRTUAL TABLE event_search USING fts5(text, key UNINDEXED, tokenize = 'unicode61 remove_diacritics 2');
--sqlite:INSERT INTO event_search (rowid, text, key) SELECT id, json_extract(json, '$.content.body'), 'content.body' FROM events WHERE event_type = 'm.room.message' AND log_offset >= 0 AND json_valid(json) AND json_type(json, '$.content.body') = 'text';
--sqlite:INSERT INTO event_search (rowid, text, key) SELECT id, json_extract(json, '$.content.name'), 'content.name' FROM events WHERE event_type = 'm.room.name' AND log_offset >= 0 AND json_valid(json) AND json_type(json, '$.content.name') = 'text';
--sqlite:INSERT INTO event_search (rowid, text, key) SELECT id, json_extract(json, '$.content.topic'), 'content.topic' FROM events WHERE event_type = 'm.room.topic' AND log_offset >= 0 AND json_valid(json) AND json_type(json, '$.content.topic') = 'text';
--postgres:CREATE TABLE event_search (event_id TEXT NOT NULL PRIMARY KEY, key TEXT NOT NULL, vector TSVECTOR NOT NULL);
--postgres:CREATE INDEX event_search_fts ON event_search USING GIN (vector);
--postgres:INSERT INTO event_search (event_id, key, vector) SELECT event_id, 'content.body', to_tsvector('simple', j->'content'->>'body') FROM (SELECT event_id, CASE WHEN strpos(json, '\\u') > 0 THEN NULL ELSE json::jsonb END AS j FROM events WHERE event_type = 'm.room.message' AND log_offset >= 0) found WHERE jsonb_typeof(j->'content'->'body') = 'string';
--postgres:INSERT INTO event_search (event_id, key, vector) SELECT event_id, 'content.name', to_tsvector('simple', j->'content'->>'name') FROM (SELECT event_id, CASE WHEN strpos(json, '\\u') > 0 THEN NULL ELSE json::jsonb END AS j FROM events WHERE event_type = 'm.room.name' AND log_offset >= 0) found WHERE jsonb_typeof(j->'content'->'name') = 'string';
--postgres:INSERT INTO event_search (event_id, key, vector) SELECT event_id, 'content.topic', to_tsvector('simple', j->'content'->>'topic') FROM (SELECT event_id, CASE WHEN strpos(json, '\\u') > 0 THEN NULL ELSE json::jsonb END AS j FROM events WHERE event_type = 'm.room.topic' AND log_offset >= 0) found WHERE jsonb_typeof(j->'content'->'topic') = 'string';
        ",
    },
    // Key changes one user alone hears of: their signature of another
    // user's master key (`DeviceKeyChange.seen_by`).
    Migration {
        version: 10,
        description: "key changes seen by one user",
        sql: "
            CREATE TABLE private_key_changes (
                viewer TEXT NOT NULL,
                user_id TEXT NOT NULL,
                log_partition BIGINT NOT NULL,
                log_offset BIGINT NOT NULL,
                PRIMARY KEY (viewer, user_id)
            );
        ",
    },
    // Each current state entry's partition beside its position, so that a
    // user's memberships are read without a lookup of each membership
    // event (nearly a fifth of an initial `/sync` of 1 000 rooms). Filled from the
    // events table; an entry whose event is not stored stays NULL and is
    // left out of memberships, as the join that read it before did.
    Migration {
        version: 11,
        description: "partitions of current state",
        sql: "
            ALTER TABLE current_state ADD COLUMN log_partition BIGINT;
            UPDATE current_state SET log_partition =
                (SELECT e.log_partition FROM events e WHERE e.event_id = current_state.event_id);
        ",
    },
];
