use ganglion_base::Migration;

pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
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
}];
