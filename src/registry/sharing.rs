//! Cross-VM sharing in the registry (issue 17): the daemon's share table
//! and each member VM's view of what it may share. A member joins the
//! table when its front-end is admitted and leaves when it goes.
//!
//! Locking: the registry's table of names may be held while the share
//! table's lock is taken, never the reverse.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::warn;

use crate::config::{ShareConfig, VmShare};
use crate::share::{Action, ShareTable};

/// The daemon's sharing state.
pub struct Sharing {
    table: Mutex<ShareTable>,
    members: BTreeMap<String, VmShare>,
    started: Instant,
}

impl Sharing {
    /// Sharing among `members` (each member VM's view, from the
    /// configuration) under the groups of `config`; `key` makes tokens
    /// unguessable.
    pub fn new(config: ShareConfig, members: BTreeMap<String, VmShare>, key: [u8; 16]) -> Self {
        Sharing {
            table: Mutex::new(ShareTable::new(config, key)),
            members,
            started: Instant::now(),
        }
    }

    /// The share table.
    pub fn table(&self) -> MutexGuard<'_, ShareTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What VM `name` may share, if it is a member.
    pub fn member(&self, name: &str) -> Option<&VmShare> {
        self.members.get(name)
    }

    /// Every member, by name.
    pub fn members(&self) -> &BTreeMap<String, VmShare> {
        &self.members
    }

    /// The table's clock: monotonic, from the daemon's start.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    pub(super) fn join(&self, name: &str) {
        if let Some(share) = self.members.get(name) {
            self.table().join(name, share.clone());
        }
    }

    pub(super) fn leave(&self, name: &str) {
        if !self.members.contains_key(name) {
            return;
        }
        let now = self.now();
        let actions: Vec<Action> = self.table().leave(name, now);
        if !actions.is_empty() {
            // Nothing can share yet (the share commands are not served),
            // so a departure has nothing to revoke; should it ever, the
            // actions must not vanish without a trace.
            warn!(
                "{name} left the share table with {} actions nobody carries out yet: {actions:?}",
                actions.len()
            );
        }
    }
}

/// A key for tokens, from the kernel's random source; `None` if it gave
/// none (the caller refuses to share then rather than use a weak key).
pub fn draw_key() -> Option<[u8; 16]> {
    let mut key = [0u8; 16];
    // SAFETY: getrandom(2) writes at most `key.len()` bytes into `key`,
    // which lives across the call.
    let got = unsafe { libc::getrandom(key.as_mut_ptr().cast(), key.len(), 0) };
    (got == key.len() as isize).then_some(key)
}
