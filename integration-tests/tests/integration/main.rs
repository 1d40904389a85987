//! End-to-end tests: real `ganglion` processes driven over HTTP.

mod accounts_and_rooms;
mod bad_input;
mod conversation;
mod ephemeral;
mod monolith;
mod polylith;
mod room_apis;
mod sync_filters;
mod tracing;
