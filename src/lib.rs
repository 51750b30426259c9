//! cenalloc: constraint-enabled buffer allocation for virtual machines.
//!
//! The crate is layered the way the daemon is built:
//! - [`model`]: buffers, attachments, constraint masks, mapping types and the
//!   allocator pool. It knows nothing of vhost or virtqueues.

pub mod model;
