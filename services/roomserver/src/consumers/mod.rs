//! What the roomserver consumes: one file per topic.
pub(crate) mod input;
