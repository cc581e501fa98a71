//! Placeholder until the tern-bench harness lands.
fn main() {}
