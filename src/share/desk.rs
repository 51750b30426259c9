//! How one VM's device reaches the share table and the other VMs
//! (docs/design/cross-vm-sharing.md, section 4). The device knows neither
//! the registry nor vhost: it is given a [`ShareLink`], its VM's name and a
//! [`Desk`], which the serving process implements (the registry's share
//! table, inboxes to the other VMs' workers, the importers' window
//! threads) and tests fake.

use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use super::{Action, ShareTable};

/// What a device needs of the serving process to share.
pub trait Desk: Send + Sync {
    /// The table, locked. A device lock may be held while taking it, never
    /// the reverse.
    fn table(&self) -> MutexGuard<'_, ShareTable>;
    /// The table's clock (monotonic).
    fn now(&self) -> Duration;
    /// Carries out, in order, what the table asked of VMs other than
    /// `from` or of their channels: events into their inboxes, unmaps on
    /// their windows, holds to drop in their models. Never waits for them.
    fn carry(&self, from: &str, actions: Vec<Action>);
}

/// A device's way to the share table: its VM's name and the desk.
#[derive(Clone)]
pub struct ShareLink {
    vm: String,
    desk: Arc<dyn Desk>,
}

impl ShareLink {
    pub fn new(vm: &str, desk: Arc<dyn Desk>) -> ShareLink {
        ShareLink {
            vm: vm.to_string(),
            desk,
        }
    }

    pub fn vm(&self) -> &str {
        &self.vm
    }

    pub fn desk(&self) -> &dyn Desk {
        &*self.desk
    }
}

impl std::fmt::Debug for ShareLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareLink").field("vm", &self.vm).finish()
    }
}
