//! federationsender: see DESIGN.md §1 for what it will own. It has no work in this
//! build yet: `ganglion federationsender` runs its process shell (health and metrics)
//! so deployments can already place it.
#![forbid(unsafe_code)]
