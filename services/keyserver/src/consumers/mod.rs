pub(crate) mod device_list_updates;
