pub(crate) mod destinations;
pub(crate) mod edus;
pub(crate) mod roomserver_output;
