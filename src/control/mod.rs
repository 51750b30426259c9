//! The control socket: a small, versioned JSON-lines protocol that lets
//! host programs see what the daemon holds (VMs, buffers, allocators,
//! counters) and map a guest buffer without a copy.
//!
//! - [`protocol`]: the requests and answers (one definition for both
//!   sides);
//! - [`server`]: the daemon's side (threads, request handling);
//! - [`export`]: from a buffer to guest memory files and offsets;
//! - [`cli`]: `cenallocctl`'s command line;
//! - [`client`]: the client library (`cenallocctl` uses it);
//! - [`snapshot`]: pixel formats → PNG for `cenallocctl snapshot`.
//!
//! Only [`server`] and [`export`] see the daemon's state (through the
//! [`crate::registry`]); the client side depends on nothing but the
//! protocol.

pub mod cli;
pub mod client;
pub mod export;
pub mod protocol;
pub mod server;
pub mod snapshot;
