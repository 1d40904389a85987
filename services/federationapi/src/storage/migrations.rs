use ganglion_base::Migration;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "remote servers' signing keys and the key responses that vouched for them",
        sql: "
        CREATE TABLE server_keys (
            server_name TEXT NOT NULL,
            key_id TEXT NOT NULL,
            public_key TEXT NOT NULL,
            -- A current key: valid until then. An old key: 0.
            valid_until_ts BIGINT NOT NULL,
            -- An old key: when it expired. A current key: 0.
            expired_ts BIGINT NOT NULL,
            PRIMARY KEY (server_name, key_id)
        );
        -- The latest key response each server signed (served again to
        -- servers that ask us as a notary).
        CREATE TABLE server_key_responses (
            server_name TEXT PRIMARY KEY,
            response_json TEXT NOT NULL,
            valid_until_ts BIGINT NOT NULL
        );
    ",
    },
    // Inbound transactions by origin and ID, with the answer given: a
    // retried transaction is answered the same and changes nothing.
    Migration {
        version: 2,
        description: "inbound transactions",
        sql: "
            CREATE TABLE inbound_transactions (
                origin TEXT NOT NULL,
                txn_id TEXT NOT NULL,
                answer_json TEXT NOT NULL,
                received_ts BIGINT NOT NULL,
                PRIMARY KEY (origin, txn_id)
            );
        ",
    },
    // Which replica is taking an origin's transaction now: one at a time
    // per origin across every federationapi replica (a lease, so a
    // replica that dies holding it lets go when it expires).
    Migration {
        version: 3,
        description: "inbound transaction leases",
        sql: "
            CREATE TABLE inbound_origin_leases (
                origin TEXT NOT NULL PRIMARY KEY,
                holder TEXT NOT NULL,
                expires_ms BIGINT NOT NULL
            );
        ",
    },
];
