pub(crate) mod roomserver_output;
