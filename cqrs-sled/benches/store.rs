//! Benchmarks of the sled event store (see docs/performance.md).
fn main() {}
