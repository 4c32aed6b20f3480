//! Integration tests: each starts the real `qtask` binary on ephemeral ports with its
//! own data directory and talks HTTP(S) to it, as a client would.

mod audit;
mod bench;
mod catalogs;
mod cli;
mod console;
mod durability;
mod engine;
mod hardening;
mod helpers;
mod http_limits;
mod lb;
mod ops;
mod protocol;
mod queue_health;
mod sdk;
mod tasks;
mod watch;
