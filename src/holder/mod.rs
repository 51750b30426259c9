//! The holder of `cenallocd --supervise` (not built yet beyond this
//! module; see docs/design/surviving-daemon.md): it keeps every front-end
//! connection and relays vhost-user frames to a serving process that may
//! be replaced. It contains no device logic.

pub mod frame;
pub mod record;
pub mod request;
