//! End-to-end tests: real `ganglion` processes driven over HTTP.

mod accounts_and_rooms;
mod bad_input;
mod conversation;
mod e2ee_keys;
mod ephemeral;
mod federation_history;
mod federation_media;
mod federation_queries;
mod federation_rooms;
mod federation_security;
mod listeners;
mod matrix_sdk_sliding;
mod media;
mod media_previews;
mod monolith;
mod mutations;
mod polylith;
mod room_apis;
mod room_behaviours;
mod scaling;
mod sdk_scenarios;
mod sliding_sync;
mod synapse_peer;
mod sync_behaviours;
mod sync_filters;
mod tracing;
