-- One database per Ganglion service, and one per syncapi replica (each
-- replica is a view built from the log into its own database). Run once by
-- the postgres image, on its first start with an empty data volume.
CREATE DATABASE ganglion_userapi;
CREATE DATABASE ganglion_keyserver;
CREATE DATABASE ganglion_roomserver;
CREATE DATABASE ganglion_syncapi_0;
CREATE DATABASE ganglion_syncapi_1;
CREATE DATABASE ganglion_federationapi;
CREATE DATABASE ganglion_federationsender;
CREATE DATABASE ganglion_clientapi;
CREATE DATABASE ganglion_mediaapi;
