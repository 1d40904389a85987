use ganglion_base::Migration;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "rooms, events, current state, extremities, aliases, input dedupe, output outbox",
        sql: "
        CREATE TABLE rooms (
            room_nid {serial},
            room_id TEXT NOT NULL UNIQUE,
            room_version TEXT NOT NULL,
            depth BIGINT NOT NULL
        );
        CREATE TABLE events (
            event_nid {serial},
            event_id TEXT NOT NULL UNIQUE,
            room_nid BIGINT NOT NULL REFERENCES rooms(room_nid),
            event_type TEXT NOT NULL,
            state_key TEXT,
            depth BIGINT NOT NULL,
            json TEXT NOT NULL
        );
        CREATE TABLE current_state (
            room_nid BIGINT NOT NULL,
            event_type TEXT NOT NULL,
            state_key TEXT NOT NULL,
            event_nid BIGINT NOT NULL REFERENCES events(event_nid),
            PRIMARY KEY (room_nid, event_type, state_key)
        );
        CREATE TABLE forward_extremities (
            room_nid BIGINT NOT NULL,
            event_id TEXT NOT NULL,
            PRIMARY KEY (room_nid, event_id)
        );
        CREATE TABLE room_aliases (
            alias TEXT PRIMARY KEY,
            room_id TEXT NOT NULL
        );
        CREATE TABLE processed_inputs (
            request_id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL,
            event_ids TEXT NOT NULL
        );
        CREATE TABLE output_outbox (
            seq {serial},
            room_id TEXT NOT NULL,
            payload {bytes} NOT NULL
        );
    ",
    },
    Migration {
        version: 2,
        description: "state snapshots of shared blocks, integer IDs for types and state keys, event flags",
        sql: "
            CREATE TABLE event_types (
                event_type_nid {serial},
                event_type TEXT NOT NULL UNIQUE
            );
            CREATE TABLE event_state_keys (
                state_key_nid {serial},
                state_key TEXT NOT NULL UNIQUE
            );
            CREATE TABLE state_blocks (
                block_nid {serial},
                hash {bytes} NOT NULL UNIQUE,
                entries {bytes} NOT NULL
            );
            CREATE TABLE state_snapshots (
                snapshot_nid {serial},
                hash {bytes} NOT NULL UNIQUE,
                block_nids {bytes} NOT NULL,
                entry_count BIGINT NOT NULL
            );
            ALTER TABLE events ADD COLUMN state_before_nid BIGINT;
            ALTER TABLE events ADD COLUMN state_after_nid BIGINT;
            ALTER TABLE events ADD COLUMN rejected BIGINT NOT NULL DEFAULT 0;
            ALTER TABLE events ADD COLUMN soft_failed BIGINT NOT NULL DEFAULT 0;
            ALTER TABLE events ADD COLUMN outlier BIGINT NOT NULL DEFAULT 0;
            ALTER TABLE events ADD COLUMN redacted_by TEXT;
            CREATE INDEX events_room_depth ON events (room_nid, depth);
            ALTER TABLE rooms ADD COLUMN state_snapshot_nid BIGINT NOT NULL DEFAULT 0;
            ALTER TABLE rooms ADD COLUMN head_version BIGINT NOT NULL DEFAULT 0;
            CREATE TABLE redactions (
                redaction_event_id TEXT PRIMARY KEY,
                redacts_event_id TEXT NOT NULL
            );
            CREATE INDEX redactions_redacts ON redactions (redacts_event_id);
        ",
    },
    Migration {
        version: 3,
        description: "alias creators, published rooms, reports, membership in current state",
        sql: "
            ALTER TABLE room_aliases ADD COLUMN creator TEXT NOT NULL DEFAULT '';
            CREATE INDEX room_aliases_room ON room_aliases (room_id);
            CREATE TABLE published_rooms (
                room_id TEXT PRIMARY KEY
            );
            CREATE TABLE reports (
                report_id {serial},
                room_id TEXT NOT NULL,
                event_id TEXT,
                reporter TEXT NOT NULL,
                reason TEXT NOT NULL,
                score BIGINT,
                received_ts BIGINT NOT NULL
            );
            ALTER TABLE current_state ADD COLUMN membership TEXT;
            CREATE INDEX current_state_by_key ON current_state (state_key, event_type);
            CREATE TABLE backfills (
                name TEXT PRIMARY KEY
            );
        ",
    },
    // Invites from other servers to rooms this server is not in: who
    // invited whom, so a join can go through the inviter's server.
    Migration {
        version: 4,
        description: "invites from other servers to rooms we are not in",
        sql: "
            CREATE TABLE remote_invites (
                room_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                event_id TEXT NOT NULL,
                sender TEXT NOT NULL,
                PRIMARY KEY (room_id, user_id)
            );
        ",
    },
    // Knocks of our users on rooms this server is not in, beside the
    // invites: through which server, so rescinding one leaves through it.
    Migration {
        version: 5,
        description: "knocks on rooms we are not in",
        sql: "
            ALTER TABLE remote_invites ADD COLUMN membership TEXT NOT NULL DEFAULT 'invite';
            ALTER TABLE remote_invites ADD COLUMN via_server TEXT NOT NULL DEFAULT '';
        ",
    },
    // A join's state (outliers) is announced to the views as it is stored,
    // while the rest of the join is still being checked; other outliers,
    // and those stored before, when they become current.
    Migration {
        version: 6,
        description: "outliers announced when stored",
        sql: "
            ALTER TABLE events ADD COLUMN announced BIGINT NOT NULL DEFAULT 0;
        ",
    },
    // When each input was processed, so the record can be pruned.
    Migration {
        version: 7,
        description: "processed inputs timed",
        sql: "
            ALTER TABLE processed_inputs ADD COLUMN processed_ms BIGINT NOT NULL DEFAULT 0;
        ",
    },
    // A room's forward extremities beside its head in one row (a JSON
    // array of event IDs), written in the statement that moves the head.
    // A room not written since keeps NULL here and its extremities in
    // `forward_extremities` until its next write.
    Migration {
        version: 8,
        description: "forward extremities in the room's row",
        sql: "
            ALTER TABLE rooms ADD COLUMN extremities TEXT;
        ",
    },
];
