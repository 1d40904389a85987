//! The polylith: every service in its own process, gRPC between them, Kafka
//! (tansu) as the log, PostgreSQL per service. Filled in by the next step.
