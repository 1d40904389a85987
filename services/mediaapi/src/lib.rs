//! mediaapi: see docs/architecture.md for what it will own. It has no work in this
//! build yet: `ganglion mediaapi` runs its process shell (health and metrics)
//! so deployments can already place it.
#![forbid(unsafe_code)]
