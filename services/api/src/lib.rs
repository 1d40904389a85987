//! Where services meet. Each service API is a Rust trait here with two
//! implementations behind one type: the service itself (called directly in
//! the monolith) and a tonic client (the polylith); callers cannot tell which
//! they hold. Topic names and payloads, the generated proto types, typed
//! errors and the shared consumer loop live here too.
#![forbid(unsafe_code)]

pub mod consume;
mod error;
pub mod federation;
pub(crate) mod grpc;
pub mod keys;
pub mod replicas;
pub mod roomserver;
pub mod spaces;
pub mod sync;
pub mod topics;
pub mod users;

pub use error::ApiError;

/// The protobuf schema (`proto/*.proto`) as a `FileDescriptorSet`: what the
/// wire-compatibility test compares with `proto/wire.lock`.
pub const PROTO_DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ganglion_descriptors.bin"));
pub use grpc::{lazy_channel, outgoing};

/// The generated protobuf types (`proto/*.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    pub mod common {
        tonic::include_proto!("ganglion.common");
    }
    pub mod userapi {
        tonic::include_proto!("ganglion.userapi");
    }
    pub mod roomserver {
        tonic::include_proto!("ganglion.roomserver");
    }
    pub mod syncapi {
        tonic::include_proto!("ganglion.syncapi");
    }
    pub mod topics {
        tonic::include_proto!("ganglion.topics");
    }
    pub mod keyserver {
        tonic::include_proto!("ganglion.keyserver");
    }
    pub mod federationapi {
        tonic::include_proto!("ganglion.federationapi");
    }
}
