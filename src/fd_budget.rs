//! The daemon's file descriptors, budgeted so that control clients can
//! never take the ones a VM needs.
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit (the
//! systemd unit sets `LimitNOFILE=`). Out of that limit the daemon reserves
//! - [`BASE`] for itself (standard streams, listeners' spares, the signal
//!   thread, log output, the control listener),
//! - [`PER_VM`] for each VM socket: its listener and connection, the guest
//!   memory files (at most [`MAX_FDS_PER_MESSAGE`] per memory table, and a
//!   new table arrives while the old one is still mapped), the kick, call
//!   and error eventfds of both queues, the worker's epoll set and exit
//!   event, and the back-end request, log and inflight descriptors a
//!   front-end may send,
//! - [`PER_CLIENT`] for each control client: its connection and the guest
//!   memory files an export opens and sends (one per region),
//!
//! and what is left is what the exports held at once may use (each keeps
//! its status page, a memfd, open). [`size_policy`] lowers the control
//! policy's exports per client (and, on a very low limit, its clients) to
//! fit; a refused export then says the connection holds the most it may,
//! and a VM that reconnects always finds its descriptors.

use log::{info, warn};

use crate::control::server::ControlPolicy;

/// Most descriptors one vhost-user message carries (`vhost` crate).
pub const MAX_FDS_PER_MESSAGE: u64 = 32;
/// Descriptors the daemon keeps for itself.
pub const BASE: u64 = 64;
/// Descriptors reserved per VM socket: two memory tables' files, and 32
/// for the connection, listener, eventfds, epoll and the rest.
pub const PER_VM: u64 = 3 * MAX_FDS_PER_MESSAGE;
/// Descriptors reserved per control client besides its exports: its
/// connection and the guest memory files one export sends.
pub const PER_CLIENT: u64 = 1 + MAX_FDS_PER_MESSAGE;

/// Raises the soft `RLIMIT_NOFILE` to the hard one (capped at 1 Mi, the
/// kernel's default `nr_open`); returns the soft limit in effect. A limit
/// that cannot be raised is logged and kept.
pub fn raise_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(errno) => {
            warn!("getrlimit(RLIMIT_NOFILE): {errno}; assuming 1024 descriptors");
            return 1024;
        }
    };
    let wanted = hard.min(1 << 20);
    if wanted <= soft {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, wanted, hard) {
        Ok(()) => {
            info!("descriptors: soft limit raised from {soft} to {wanted}");
            wanted
        }
        Err(errno) => {
            warn!("descriptors: cannot raise the soft limit {soft} to {wanted}: {errno}");
            soft
        }
    }
}

/// The control policy that fits in `limit` descriptors beside `vms` VM
/// sockets: exports per client lowered first, then clients (each client
/// keeps at least one export). `None` when not even one client fits.
pub fn size_policy(limit: u64, vms: usize, wanted: ControlPolicy) -> Option<ControlPolicy> {
    let reserved = BASE.saturating_add(PER_VM.saturating_mul(vms as u64));
    let spare = limit.saturating_sub(reserved);
    let clients = u64::from(wanted.max_clients);
    let exports = u64::from(wanted.max_exports_per_client);
    if clients.saturating_mul(PER_CLIENT.saturating_add(exports)) <= spare {
        return Some(wanted);
    }
    let per_client = spare / clients.max(1);
    let policy = if per_client > PER_CLIENT {
        ControlPolicy {
            max_exports_per_client: u32::try_from(per_client - PER_CLIENT).unwrap_or(u32::MAX),
            ..wanted
        }
    } else {
        let clients = spare / (PER_CLIENT + 1);
        if clients == 0 {
            return None;
        }
        ControlPolicy {
            max_clients: u32::try_from(clients).unwrap_or(u32::MAX),
            max_exports_per_client: 1,
            ..wanted
        }
    };
    Some(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(clients: u32, exports: u32) -> ControlPolicy {
        ControlPolicy {
            max_clients: clients,
            max_exports_per_client: exports,
            ..ControlPolicy::default()
        }
    }

    fn used(limit_vms: usize, p: &ControlPolicy) -> u64 {
        BASE + PER_VM * limit_vms as u64
            + u64::from(p.max_clients) * (PER_CLIENT + u64::from(p.max_exports_per_client))
    }

    #[test]
    fn a_policy_that_fits_is_kept() {
        let wanted = policy(32, 64);
        let limit = used(4, &wanted);
        assert_eq!(size_policy(limit, 4, wanted.clone()), Some(wanted));
    }

    #[test]
    fn the_default_policy_is_cut_to_what_fits() {
        for (limit, vms) in [(1024, 2), (2048, 1), (3000, 8)] {
            let sized = size_policy(limit, vms, ControlPolicy::default()).unwrap();
            assert!(used(vms, &sized) <= limit, "{limit}: {sized:?}");
            // One more export per client, or one more client, would not fit.
            let more_exports = policy(sized.max_clients, sized.max_exports_per_client + 1);
            let more_clients = policy(sized.max_clients + 1, sized.max_exports_per_client);
            assert!(used(vms, &more_exports) > limit, "{limit}: {sized:?}");
            assert!(
                sized.max_clients == 32 || used(vms, &more_clients) > limit,
                "{limit}: {sized:?}"
            );
        }
        // The clients go only when one export each no longer fits.
        let sized = size_policy(2048, 1, ControlPolicy::default()).unwrap();
        assert_eq!(sized.max_clients, 32);
    }

    #[test]
    fn a_very_low_limit_keeps_fewer_clients_then_none() {
        let sized = size_policy(BASE + PER_VM + 3 * (PER_CLIENT + 1), 1, policy(32, 64)).unwrap();
        assert_eq!((sized.max_clients, sized.max_exports_per_client), (3, 1));
        assert_eq!(size_policy(BASE + PER_VM, 1, policy(32, 64)), None);
    }
}
