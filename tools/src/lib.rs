//! The `tern` crate's library: the native protocol's Rust client (`tern::client`). The `tern`
//! binary (`main.rs`) is the command line.

pub mod client;
