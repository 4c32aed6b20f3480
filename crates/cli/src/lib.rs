//! The `qtask` binary's library: configuration, the server's wiring, key management,
//! and the signing API client shared by `qtask call` and the integration tests.
//!
//! Architecture invariant: this is the only crate that picks a store backend.

pub mod bench;
pub mod call;
pub mod catalog;
pub mod client;
pub mod config;
pub mod connection;
pub mod credentials;
pub mod database;
pub mod exit;
pub mod friendly;
pub mod keys;
pub mod logging;
pub mod output;
pub mod profile;
pub mod resources;
pub mod serve;
pub mod tasks;
pub mod wait;
