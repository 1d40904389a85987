use ganglion_base::Migration;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "joined hosts per room, PDU queues per destination, retry state",
        sql: "
        CREATE TABLE joined_hosts (
            room_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            server_name TEXT NOT NULL,
            PRIMARY KEY (room_id, user_id)
        );
        CREATE INDEX joined_hosts_by_room ON joined_hosts (room_id, server_name);
        CREATE TABLE queued_pdus (
            id {serial},
            destination TEXT NOT NULL,
            event_id TEXT NOT NULL,
            pdu_json TEXT NOT NULL,
            UNIQUE (destination, event_id)
        );
        CREATE INDEX queued_pdus_by_destination ON queued_pdus (destination, id);
        CREATE TABLE destinations (
            server_name TEXT PRIMARY KEY,
            failures BIGINT NOT NULL,
            retry_at_ms BIGINT NOT NULL
        );
    ",
    },
    // EDUs (typing, receipts) wait per destination beside the PDUs.
    Migration {
        version: 2,
        description: "EDU queues per destination",
        sql: "
            CREATE TABLE queued_edus (
                id {serial},
                destination TEXT NOT NULL,
                edu_json TEXT NOT NULL
            );
            CREATE INDEX queued_edus_by_destination ON queued_edus (destination, id);
        ",
    },
    // The last device list stream ID sent per local user (the next
    // update's `prev_id`).
    Migration {
        version: 3,
        description: "device list updates sent",
        sql: "
            CREATE TABLE device_list_sent (
                user_id TEXT PRIMARY KEY,
                stream_id BIGINT NOT NULL
            );
        ",
    },
    // Which replica delivers to a destination now, until when (renewed
    // while it works; released when its queue is empty).
    Migration {
        version: 4,
        description: "destination leases",
        sql: "
            CREATE TABLE destination_leases (
                server_name TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                expires_at_ms BIGINT NOT NULL
            );
        ",
    },
    // Since when a destination has failed without a success between, so
    // the queue of one that stays unreachable can be dropped (rows from
    // before count from their next retry).
    Migration {
        version: 5,
        description: "destinations failing since",
        sql: "
            ALTER TABLE destinations ADD COLUMN failing_since_ms BIGINT NOT NULL DEFAULT 0;
            UPDATE destinations SET failing_since_ms = retry_at_ms;
        ",
    },
    // How far into each partition of `roomserver.output` the joined hosts
    // are applied, written with them: a redelivered record changes nothing,
    // and a database rebuilt from the log knows where it stands.
    Migration {
        version: 6,
        description: "roomserver.output positions",
        sql: "
            CREATE TABLE output_positions (
                partition_id BIGINT PRIMARY KEY,
                next_offset BIGINT NOT NULL
            );
        ",
    },
];
