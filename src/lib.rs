//! cenalloc: constraint-enabled buffer allocation for virtual machines.
//!
//! The crate is layered the way the daemon is built:
//! - [`model`]: buffers, attachments, constraint masks, mapping types and the
//!   allocator pool. It knows nothing of vhost or virtqueues.
//! - [`protocol`]: the Rust mirror of the wire protocol header.
//! - [`device`]: the command executor: decodes a batch, runs it against the
//!   model and guest memory, encodes the answers. No vhost types.
//! - [`chain`]: gathers a descriptor chain into a request and scatters the
//!   response back; validates the chain's shape.
//! - [`ring`]: ring-state logic for the glue: taking chains, invalid ring
//!   states, the notification loop.
//! - [`registry`]: the VMs the daemon serves (one device state per
//!   connected front-end), their exports and the daemon-wide limits.
//! - [`vhu_cenalloc`]: the vhost-user backend, only virtqueue glue, and
//!   the serve loop of one VM socket; [`poll`]: how long it polls the
//!   control queue after an answer; [`memory_table`]: which guest memory
//!   files it accepts (sized and sealed: never a SIGBUS).
//! - [`control`]: the control socket (protocol, server, exports, client
//!   library, snapshots as PNG).
//! - [`listen`]: binding and inheriting the daemon's sockets.
//! - [`sandbox`]: privileges, Landlock and seccomp; [`fd_budget`]: the
//!   descriptor limit, and the control policy sized so that VMs keep theirs.
//! - [`config`]: command line and configuration file → daemon configuration.
//! - `fault` (cargo feature `fault-injection`, tests only): rewrites the
//!   device's answers on purpose, to test that the guest driver trusts none.
//!
//! Arrows point one way: main → config, control, vhu_cenalloc, listen,
//! sandbox; vhu_cenalloc → ring, chain, registry, memory_table; control → registry →
//! device → model, protocol.

pub mod model;

pub mod adoption;
pub mod chain;
pub mod config;
pub mod control;
pub mod device;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod fd_budget;
pub mod holder;
pub mod journal;
pub mod listen;
pub mod memory_table;
pub mod poll;
pub mod protocol;
pub mod registry;
pub mod ring;
pub mod sandbox;
pub mod share;
pub mod vhu_cenalloc;
