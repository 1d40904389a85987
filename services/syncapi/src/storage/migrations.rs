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
];
