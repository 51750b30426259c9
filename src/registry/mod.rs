//! The VM registry: which VMs the daemon serves, the state of each
//! connected one, and the daemon-wide limits. The vhost glue registers a
//! VM when its front-end connects ([`Registry::admit`]) and the VM leaves
//! when the returned [`Admitted`] guard is dropped; the control socket
//! reads from here. No vhost types.
//!
//! # Names
//! A VM is named by the operator: every socket the daemon listens on is
//! one VM name ([`Registry::add_socket`]); the front-end that connects to
//! it is that VM. One front-end per socket at a time.
//!
//! # Locking
//! A VM's device state belongs to its queue worker; the control socket
//! reads it through [`DeviceView::with_device`], which holds the worker's
//! lock only for the closure: a snapshot copy, or one buffer's backing
//! looked up and an export recorded. So a kick or a vhost-user request of
//! QEMU waits for at most one such copy, and the control side for at most
//! one step of the worker's work: the worker lets a waiting reader in
//! between two steps, whatever the guest keeps on its ring (see
//! [`crate::vhu_cenalloc`]). The registry's own mutex guards only the
//! table of names.
//!
//! # Limits
//! Per VM: the model's [`Limits`] of its device configuration. Daemon
//! wide ([`DaemonLimits`]): the number of connected VMs, and the sums of
//! the connected VMs' `max_buffers` and `max_total_bytes`. A VM is admitted
//! only if its own limits fit in what the daemon has left, so the budget
//! is partitioned at connection time: one VM's load can never make
//! another VM's allocation fail.

pub mod exports;
pub mod sharing;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::device::Device;
use crate::model::Limits;
pub use exports::{AddError, Exports, Identity, Revocation, StatusPage};
pub use sharing::Sharing;

/// The guest memory of a VM, as the vhost glue keeps it up to date.
pub type VmMemory = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// Limits of the whole daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonLimits {
    /// VMs connected at once.
    pub max_vms: u32,
    /// Sum of the connected VMs' `max_buffers`.
    pub max_buffers: u64,
    /// Sum of the connected VMs' `max_total_bytes`.
    pub max_total_bytes: u64,
}

impl Default for DaemonLimits {
    fn default() -> Self {
        let vm = Limits::default();
        DaemonLimits {
            max_vms: 16,
            max_buffers: 16 * u64::from(vm.max_buffers),
            max_total_bytes: 16 * vm.max_total_bytes,
        }
    }
}

/// Why a VM cannot be found or admitted.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("no VM named {0:?}")]
    UnknownVm(String),
    #[error("VM {0:?} has no front-end connected")]
    NotConnected(String),
    #[error("VM {0:?} already has a front-end")]
    AlreadyConnected(String),
    #[error("VM name {0:?} is used twice")]
    DuplicateName(String),
    #[error("VM {name:?} refused: {reason}")]
    Refused { name: String, reason: String },
}

/// Read access to a VM's device state, for the control socket.
pub trait DeviceView: Send + Sync {
    /// Runs `f` on the device state, holding whatever protects it only for
    /// the call. `f` must be short: copy, don't compute.
    fn with_device(&self, f: &mut dyn FnMut(&Device));
}

/// A device of its own behind a mutex (tests, tools).
impl DeviceView for Mutex<Device> {
    fn with_device(&self, f: &mut dyn FnMut(&Device)) {
        // The model changes nothing on a failed operation: the state is
        // consistent even after a panic poisoned the lock.
        f(&self.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A connected VM.
pub struct Vm {
    pub name: String,
    pub connected_at: SystemTime,
    device: Arc<dyn DeviceView>,
    /// Kept current by the vhost glue (SET_MEM_TABLE).
    pub memory: VmMemory,
    pub exports: Arc<Exports>,
    limits: Limits,
}

impl Vm {
    pub fn new(
        name: &str,
        device: Arc<dyn DeviceView>,
        memory: VmMemory,
        exports: Arc<Exports>,
        limits: Limits,
    ) -> Self {
        Vm {
            name: name.to_string(),
            connected_at: SystemTime::now(),
            device,
            memory,
            exports,
            limits,
        }
    }

    /// Runs `f` on the device state (see [`DeviceView`]); `None` only if
    /// the view did not run it.
    pub fn read<T>(&self, f: impl FnOnce(&Device) -> T) -> Option<T> {
        let mut f = Some(f);
        let mut out = None;
        self.device.with_device(&mut |device| {
            if let Some(f) = f.take() {
                out = Some(f(device));
            }
        });
        out
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

struct Slot {
    /// Where front-ends connect (for people: a path or "fd 3").
    socket: String,
    vm: Option<Arc<Vm>>,
    /// Front-ends admitted so far.
    connections: u64,
    /// Front-ends refused by the daemon limits.
    refused: u64,
}

/// One VM name, connected or not.
#[derive(Clone)]
pub struct Listing {
    pub name: String,
    pub socket: String,
    pub vm: Option<Arc<Vm>>,
    pub connections: u64,
    pub refused: u64,
}

/// Every VM of the daemon.
pub struct Registry {
    limits: DaemonLimits,
    slots: Mutex<BTreeMap<String, Slot>>,
    next_id: AtomicU64,
    /// Cross-VM sharing, when the configuration has share groups.
    sharing: std::sync::OnceLock<Sharing>,
}

impl Registry {
    pub fn new(limits: DaemonLimits) -> Arc<Self> {
        Arc::new(Registry {
            limits,
            slots: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            sharing: std::sync::OnceLock::new(),
        })
    }

    /// Turns cross-VM sharing on (once, before any front-end is admitted):
    /// member VMs join the share table when admitted and leave when they
    /// go. False if it was on already.
    pub fn enable_sharing(&self, sharing: Sharing) -> bool {
        self.sharing.set(sharing).is_ok()
    }

    /// Cross-VM sharing, if on.
    pub fn sharing(&self) -> Option<&Sharing> {
        self.sharing.get()
    }

    fn slots(&self) -> MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn limits(&self) -> &DaemonLimits {
        &self.limits
    }

    /// A daemon-wide unique id (exports, control connections).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Declares VM `name`, served on `socket`.
    pub fn add_socket(&self, name: &str, socket: &str) -> Result<(), Error> {
        let mut slots = self.slots();
        if slots.contains_key(name) {
            return Err(Error::DuplicateName(name.to_string()));
        }
        slots.insert(
            name.to_string(),
            Slot {
                socket: socket.to_string(),
                vm: None,
                connections: 0,
                refused: 0,
            },
        );
        Ok(())
    }

    /// Registers the front-end that just connected to VM `vm.name`, if the
    /// daemon limits allow. The VM stays registered until the guard drops.
    pub fn admit(self: &Arc<Self>, vm: Vm) -> Result<Admitted, Error> {
        let mut slots = self.slots();
        let (count, buffers, bytes) = slots.values().filter_map(|s| s.vm.as_ref()).fold(
            (0u32, 0u64, 0u64),
            |(count, buffers, bytes), other| {
                (
                    count + 1,
                    buffers.saturating_add(u64::from(other.limits.max_buffers)),
                    bytes.saturating_add(other.limits.max_total_bytes),
                )
            },
        );
        let name = vm.name.clone();
        let refuse = |reason: String| Error::Refused {
            name: name.clone(),
            reason,
        };
        let reason = if count >= self.limits.max_vms {
            Some(format!(
                "{count} VMs connected, the daemon serves at most {}",
                self.limits.max_vms
            ))
        } else if buffers.saturating_add(u64::from(vm.limits.max_buffers)) > self.limits.max_buffers
        {
            Some(format!(
                "its max_buffers {} does not fit in the daemon's {} ({buffers} taken)",
                vm.limits.max_buffers, self.limits.max_buffers
            ))
        } else if bytes.saturating_add(vm.limits.max_total_bytes) > self.limits.max_total_bytes {
            Some(format!(
                "its max_total_bytes {} does not fit in the daemon's {} ({bytes} taken)",
                vm.limits.max_total_bytes, self.limits.max_total_bytes
            ))
        } else {
            None
        };
        let slot = slots
            .get_mut(&name)
            .ok_or_else(|| Error::UnknownVm(name.clone()))?;
        if slot.vm.is_some() {
            return Err(Error::AlreadyConnected(name));
        }
        if let Some(reason) = reason {
            slot.refused += 1;
            return Err(refuse(reason));
        }
        let vm = Arc::new(vm);
        slot.vm = Some(vm.clone());
        slot.connections += 1;
        if let Some(sharing) = self.sharing.get() {
            sharing.join(&name);
        }
        Ok(Admitted {
            registry: self.clone(),
            vm,
        })
    }

    /// Every VM name, sorted.
    pub fn list(&self) -> Vec<Listing> {
        self.slots()
            .iter()
            .map(|(name, slot)| Listing {
                name: name.clone(),
                socket: slot.socket.clone(),
                vm: slot.vm.clone(),
                connections: slot.connections,
                refused: slot.refused,
            })
            .collect()
    }

    /// The connected VM `name`.
    pub fn connected(&self, name: &str) -> Result<Arc<Vm>, Error> {
        let slots = self.slots();
        let slot = slots
            .get(name)
            .ok_or_else(|| Error::UnknownVm(name.to_string()))?;
        slot.vm
            .clone()
            .ok_or_else(|| Error::NotConnected(name.to_string()))
    }

    /// Whether a VM of that name exists (connected or not).
    pub fn contains(&self, name: &str) -> bool {
        self.slots().contains_key(name)
    }
}

/// A registered, connected VM; dropping it unregisters the VM and revokes
/// its exports.
pub struct Admitted {
    registry: Arc<Registry>,
    vm: Arc<Vm>,
}

impl Admitted {
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut slots = self.registry.slots();
        if let Some(slot) = slots.get_mut(&self.vm.name) {
            if slot.vm.as_ref().is_some_and(|vm| Arc::ptr_eq(vm, &self.vm)) {
                slot.vm = None;
            }
        }
        drop(slots);
        if let Some(sharing) = self.registry.sharing.get() {
            sharing.leave(&self.vm.name);
        }
        // Also refuses an export prepared while the VM was leaving.
        self.vm.exports.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceConfig;

    fn vm(name: &str, limits: Limits) -> Vm {
        let mut config = DeviceConfig::default_layout();
        config.pool.limits = limits.clone();
        let device = Arc::new(Mutex::new(Device::new(config).unwrap()));
        Vm::new(
            name,
            device,
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            Arc::new(Exports::new()),
            limits,
        )
    }

    fn limits(buffers: u32, bytes: u64) -> Limits {
        Limits {
            max_buffers: buffers,
            max_buffer_size: 4096,
            max_total_bytes: bytes,
            ..Limits::default()
        }
    }

    #[test]
    fn admission_partitions_the_daemon_budget() {
        let registry = Registry::new(DaemonLimits {
            max_vms: 3,
            max_buffers: 100,
            max_total_bytes: 1 << 30,
        });
        for name in ["a", "b", "c", "d"] {
            registry.add_socket(name, name).unwrap();
        }
        assert_eq!(
            registry.add_socket("a", "again"),
            Err(Error::DuplicateName("a".into()))
        );
        let a = registry.admit(vm("a", limits(60, 1 << 20))).unwrap();
        assert!(matches!(
            registry.admit(vm("a", limits(1, 4096))),
            Err(Error::AlreadyConnected(_))
        ));
        // 60 + 50 buffers > 100.
        let error = registry.admit(vm("b", limits(50, 1 << 20))).err().unwrap();
        assert!(error.to_string().contains("max_buffers"), "{error}");
        let b = registry.admit(vm("b", limits(39, 1 << 20))).unwrap();
        let error = registry.admit(vm("c", limits(1, 1 << 30))).err().unwrap();
        assert!(error.to_string().contains("max_total_bytes"), "{error}");
        let c = registry.admit(vm("c", limits(1, 1 << 20))).unwrap();
        let error = registry.admit(vm("d", limits(1, 4096))).err().unwrap();
        assert!(error.to_string().contains("at most 3"), "{error}");
        assert!(matches!(
            registry.admit(vm("zz", limits(1, 4096))),
            Err(Error::UnknownVm(_))
        ));
        let listing = registry.list();
        assert_eq!(listing.iter().filter(|l| l.vm.is_some()).count(), 3);
        assert_eq!(listing[3].refused, 1);

        // A VM that leaves gives its share back.
        drop(a);
        assert!(matches!(
            registry.connected("a"),
            Err(Error::NotConnected(_))
        ));
        let d = registry.admit(vm("d", limits(59, 1 << 20))).unwrap();
        assert_eq!(registry.connected("d").unwrap().name, "d");
        drop((b, c, d));
        assert!(registry.list().iter().all(|l| l.vm.is_none()));
    }

    #[test]
    fn leaving_revokes_the_exports() {
        let registry = Registry::new(DaemonLimits::default());
        registry.add_socket("a", "a").unwrap();
        let admitted = registry.admit(vm("a", Limits::default())).unwrap();
        let page = Arc::new(StatusPage::new().unwrap());
        let exports = admitted.vm().exports.clone();
        let identity = Identity {
            buffer: 1,
            backing: 2,
        };
        exports.add(1, 1, 1, identity, page.clone()).unwrap();
        drop(admitted);
        assert_eq!(page.get(), Revocation::Disconnected as u64);
        // An export prepared while the VM was leaving is refused.
        let late = Arc::new(StatusPage::new().unwrap());
        assert_eq!(
            exports.add(2, 1, 1, identity, late.clone()),
            Err(exports::AddError::Closed)
        );
        assert_eq!(exports.count(), 0);
    }
}
