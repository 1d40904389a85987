//! Generates the gRPC and topic payload types from `proto/`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it was compiled: a compiled
    // build script may be reused for a checkout in another directory.
    let dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "common.proto",
        "userapi.proto",
        "roomserver.proto",
        "syncapi.proto",
        "topics.proto",
        "keyserver.proto",
        "federationapi.proto",
    ];
    let paths: Vec<_> = files.iter().map(|f| dir.join(f)).collect();
    for path in &paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The schema as protoc read it, for the wire-compatibility test.
    config.file_descriptor_set_path(
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("ganglion_descriptors.bin"),
    );
    tonic_prost_build::configure().compile_with_config(config, &paths, &[dir])?;
    Ok(())
}
