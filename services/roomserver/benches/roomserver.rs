//! Prints the roomserver's figures; see `src/benchmarks.rs`.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ganglion_roomserver::benchmarks::run().await
}
