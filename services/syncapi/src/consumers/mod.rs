//! What the syncapi consumes: one file per topic.
pub(crate) mod roomserver_output;
