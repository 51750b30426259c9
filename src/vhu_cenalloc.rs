//! The vhost-user backend: virtqueue glue only. Control chains are taken
//! from their ring by [`ring::serve`] and answered through
//! [`chain::ControlWork`]; events produced by the device go out on the
//! event queue; the config space is the device's `cenalloc_config`. An
//! invalid ring state stops that queue ([`ring::Health`]).
//!
//! Locking: the library serves QEMU's vhost-user requests on its own
//! thread and calls this backend through `&self`; nothing here holds a lock
//! across a whole batch that such a request needs.
//! - `worker`: the device state, held by the vring worker thread while it
//!   serves a kick. A batch does its guest-memory work in steps of at most
//!   64 KiB and checks `stopping` between steps and between commands.
//! - `stop_vring` (GET_VRING_BASE) of the control queue sets `stopping`
//!   and takes `worker`: the worker hands its unfinished chain back to the
//!   ring (the ring's next_avail goes back to it, so the base QEMU saves
//!   does not count it) and keeps the batch as it stands; when the ring
//!   runs again and hands the same chain out, the batch goes on from there
//!   (a different chain: the batch is abandoned first). So a ring stop
//!   waits for at most one step of work, not a whole batch.
//! - `event_ring`: held while the event ring is used; `stop_vring` of the
//!   event queue waits for at most one delivery.
//! - `memory`: the guest memory this backend checked
//!   ([`crate::memory_table`]: files sized and sealed), swapped by
//!   SET_MEM_TABLE, loaded by the worker per kick. The library replaces its
//!   own copy (the vrings') before the backend sees the table, so every
//!   access to guest memory, the rings included, goes through this one: a
//!   table that is refused is never touched, and its connection ends.
//!
//! The control socket reads the device state through [`DeviceView`]: it
//! takes `worker` only to copy a snapshot (never `stopping`, which would
//! hand the guest's chain back), so a kick or a ring stop waits for at most
//! one such copy. The other way round, a guest that never lets its ring
//! drain must not keep the control socket waiting: a reader counts itself
//! in `readers` before it asks for `worker`, and the worker, between two
//! steps of work and between two chains, hands its chain back to the ring
//! as for a ring stop, gives the lock to the waiting readers (a fair
//! unlock: they get it before the worker takes it again) and goes on where
//! it stopped. So a control request waits for at most one step of each
//! VM's work (and may come between two commands of a batch, as during a
//! ring stop: see [`Device::preparing`]). The device tells the VM's
//! [`Exports`] of every command that changed a backing, before that
//! command touches guest memory and under `worker` (one atomic load when
//! there are no exports; see [`crate::registry::exports`]).

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use log::{debug, error, info, warn};
use vhost::vhost_user::message::{
    VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserVirtioFeatures,
};
use vhost::vhost_user::Backend;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use crate::adoption::{self, Adopted, JournalSlot};
use crate::chain::{self, ControlWork, Outcome};
use crate::config::Hooks;
use crate::device::{self, Device, DeviceConfig};
use crate::memory_table;
use crate::poll::Poller;
use crate::protocol::{
    CENALLOC_NUM_VQS, CENALLOC_SHM_WINDOW, CENALLOC_VQ_CONTROL, CENALLOC_VQ_EVENT,
};
use crate::registry::{self, DeviceView, Exports, Registry, Revocation, Vm};
use crate::ring::{self, Health, MemoryGuard, RingError, Served, Walk};

/// Largest queue the driver may set up.
pub const MAX_QUEUE_SIZE: usize = 1024;

type GuestMemory = GuestMemoryMmap<()>;
type AtomicMemory = GuestMemoryAtomic<GuestMemory>;

/// Errors of the backend glue.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("cannot build the device state: {0}")]
    Device(#[from] device::Error),
    #[error("cannot create the exit event: {0}")]
    ExitEvent(io::Error),
    #[error("device journal: {0}")]
    Journal(#[from] crate::journal::Error),
    #[error("cannot create the take-over event: {0}")]
    AdoptEvent(io::Error),
}

/// How long a backend taking a VM over waits for the vring worker to hand
/// it the vrings before it serves the front-end's requests.
const VRINGS_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// The event (past the queues and the exit event) that hands the vrings to
/// a backend taking a VM over before any kick ([`CenallocBackend::adopt_event`]).
pub const ADOPT_EVENT: u16 = CENALLOC_NUM_VQS as u16 + 1;

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::other(e)
    }
}

/// Locks `mutex`; a poisoned lock only means an earlier panic, and the
/// state is still consistent (the model changes nothing on failure).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A control chain handed back to its ring unfinished.
struct Suspended {
    /// Its avail index and head: the ring hands it out there again.
    position: u16,
    head: u16,
    work: ControlWork,
}

/// What the vring worker thread works on.
struct Worker {
    device: Device,
    control: Health,
    suspended: Option<Suspended>,
    /// How long the control ring is polled after a pass drained it.
    poller: Poller,
}

impl Worker {
    /// The worker of VM `vm` (named in the lines its guest causes), whose
    /// device tells `exports` of every change of a backing.
    fn new(config: DeviceConfig, exports: &Arc<Exports>, vm: &str) -> Result<Self, Error> {
        let mut device = Device::new(config.clone())?.with_watch(exports.clone());
        device.set_vm_name(vm);
        let mut control = Health::new("control");
        control.set_vm_name(vm);
        Ok(Worker {
            poller: Poller::new(config.poll_us),
            device,
            control,
            suspended: None,
        })
    }

    /// Answers the available control chains. Events a chain produced are
    /// sent right after its answer, before the next chain runs. Returns
    /// early, handing the chain at hand back, when `stopping` is set, or
    /// when a control request waits in `readers` (after at least one step
    /// of work): then it returns true, and the caller lets the readers in
    /// and calls again.
    #[allow(clippy::too_many_arguments)]
    fn serve_control(
        &mut self,
        control: &VringRwLock,
        events: &VringRwLock,
        event_ring: &Mutex<Health>,
        mem: &MemoryGuard,
        event_idx: bool,
        stopping: &AtomicBool,
        readers: &AtomicUsize,
        filter: &mut dyn chain::Filter,
    ) -> bool {
        let start = Instant::now();
        let polled_before = self.poller.stats().busy_ns;
        let Worker {
            device,
            control: health,
            suspended,
            poller,
        } = self;
        // Whether this round did some work yet, and whether it stopped for
        // the readers.
        let progressed = Cell::new(false);
        let for_readers = Cell::new(false);
        let readers_wait = || {
            let waiting = progressed.get() && readers.load(Ordering::Acquire) > 0;
            for_readers.set(for_readers.get() || waiting);
            waiting
        };
        let round = ring::serve_polled(control, mem, health, event_idx, poller, |taken| {
            if readers_wait() {
                // Untouched: the next round takes it again.
                return Served::Later;
            }
            let (position, head) = (taken.position, taken.head);
            let mut walk = Walk::new(taken.chain);
            let mut parsed = chain::parse(&**mem, &mut walk);
            if walk.cut() {
                return Served::Cut;
            }
            filter.request(&mut parsed.request);
            let mut work = work_for(suspended, device, position, head, parsed);
            // Asked after a step of work: progress is made either way.
            progressed.set(true);
            let mut yield_now = || stopping.load(Ordering::Acquire) || readers_wait();
            match work.run_filtered(device, &**mem, &mut yield_now, filter) {
                Outcome::Written(written) => {
                    deliver_events(device, &mut lock(event_ring), events, mem);
                    Served::Used(written)
                }
                Outcome::Yielded => {
                    *suspended = Some(Suspended {
                        position,
                        head,
                        work,
                    });
                    Served::Later
                }
                Outcome::Withheld => Served::Withheld,
            }
        });
        let busy = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let polls = self.poller.stats();
        let counters = &mut self.device.counters;
        // Answering only: the time spent polling is counted on its own.
        let polled = polls.busy_ns.saturating_sub(polled_before);
        counters.control_busy_ns = counters
            .control_busy_ns
            .saturating_add(busy.saturating_sub(polled));
        counters.control_signals += u64::from(round.signals);
        counters.poll_hits = polls.hits;
        counters.poll_misses = polls.misses;
        counters.poll_busy_ns = polls.busy_ns;
        counters.poll_window_ns = polls.window_ns;
        round.end == ring::End::HandedBack && for_readers.get() && !stopping.load(Ordering::Acquire)
    }
}

/// The work for a chain just taken: the suspended batch if this is its
/// chain again, else a new one (a suspended batch whose chain did not come
/// back is abandoned: the ring was set up anew).
fn work_for(
    suspended: &mut Option<Suspended>,
    device: &mut Device,
    position: u16,
    head: u16,
    parsed: chain::Parsed,
) -> ControlWork {
    if let Some(waiting) = suspended.take() {
        if waiting.position == position && waiting.head == head && waiting.work.same_chain(&parsed)
        {
            debug!("control chain {head} at {position} goes on");
            return waiting.work;
        }
        debug!(
            "control chain {} at {} did not come back: abandoned",
            waiting.head, waiting.position
        );
        waiting.work.abandon(device);
    }
    let mut work = ControlWork::start(device, parsed);
    work.set_chain(position, head);
    work
}

/// Sends the pending events, oldest first. While the event ring is stopped
/// (or broken) they wait in the device; on a running ring an event that
/// finds no event buffer posted is dropped and counted.
fn deliver_events(
    device: &mut Device,
    health: &mut Health,
    vring: &VringRwLock,
    mem: &MemoryGuard,
) {
    if !device.has_events() || health.is_broken() || !ring::running(vring) {
        return;
    }
    if let Err(error) = ring::check_usable(vring, mem) {
        health.fail(error);
        return;
    }
    let mut used = false;
    'events: while let Some(event) = device.next_event() {
        let mut delivered = false;
        while !delivered {
            let taken = match ring::take(vring, mem) {
                Ok(Some(taken)) => taken,
                Ok(None) => break,
                Err(error) => {
                    health.fail(error);
                    break 'events;
                }
            };
            let head = taken.head;
            let mut walk = Walk::new(taken.chain);
            let parsed = chain::parse(&**mem, &mut walk);
            if walk.cut() {
                health.fail(RingError::ChainCut { head });
                break 'events;
            }
            let written = match chain::deliver_parsed(&**mem, parsed, &event) {
                Ok(written) => {
                    delivered = true;
                    written
                }
                Err(e) => {
                    debug!("event buffer {head} unusable: {e}");
                    device.counters.malformed_chains += 1;
                    0
                }
            };
            used = true;
            if let Err(e) = ring::add_used(vring, mem, head, written) {
                health.fail(RingError::Memory(e.to_string()));
                break 'events;
            }
        }
        device.pop_event();
        if delivered {
            device.counters.events_sent += 1;
        } else {
            device.counters.events_dropped += 1;
        }
    }
    if used {
        ring::signal(vring, mem);
    }
}

/// The cenalloc vhost-user backend of one front-end connection.
pub struct CenallocBackend {
    /// The VM's name, for the log.
    name: String,
    config: DeviceConfig,
    config_space: Vec<u8>,
    /// Guest memory once a memory table passed [`memory_table::check`].
    memory: AtomicMemory,
    has_memory: AtomicBool,
    event_idx: AtomicBool,
    /// A ring stop (or device reset) waits for the worker: it hands its
    /// chain back at its next step.
    stopping: AtomicBool,
    /// Control socket requests waiting for `worker` (see the module doc).
    readers: AtomicUsize,
    worker: parking_lot::Mutex<Worker>,
    /// The event queue's health, held while the event ring is used.
    event_ring: Mutex<Health>,
    /// The exit events' consumers, owned here: see [`Self::exit_event`].
    exit_consumers: Mutex<Vec<EventConsumer>>,
    /// Test builds: the hostile-host mode (answers rewritten on purpose).
    #[cfg(feature = "fault-injection")]
    fault: Option<Mutex<crate::fault::Injector>>,
    /// Host views of this VM's buffers (the control socket's exports).
    exports: Arc<Exports>,
    /// Supervised restart: the journal to rebuild the device from, once the
    /// guest memory is known ([`crate::adoption`]).
    adoption: Mutex<Option<adoption::Pending>>,
    /// What the take-over found, once done.
    adopted: Mutex<Option<Adopted>>,
    /// Signalled once at start-up when taking over, so that the vrings
    /// reach this backend ([`ADOPT_EVENT`]) before any kick: a ring stop
    /// (GET_VRING_BASE) that comes first needs them, so the front-end's
    /// requests are served only once they are here
    /// ([`CenallocBackend::wait_for_vrings`]).
    adopt_event: Option<EventFd>,
    /// The vrings, from the first event.
    vrings: std::sync::OnceLock<Vec<VringRwLock>>,
    /// Taken over before the event ring ran: it goes on from its used
    /// index once it does.
    events_resync: AtomicBool,
    /// The back-end request channel QEMU gave (SET_BACKEND_REQ_FD), for a
    /// device with a window: where the window's maps will be sent.
    backend_channel: Mutex<Option<Backend>>,
}

impl CenallocBackend {
    pub fn new(config: DeviceConfig) -> Result<Self, Error> {
        Self::with_exports(config, Arc::new(Exports::new()))
    }

    /// A backend whose exports table is shared with the VM registry.
    pub fn with_exports(config: DeviceConfig, exports: Arc<Exports>) -> Result<Self, Error> {
        let worker = Worker::new(config.clone(), &exports, SINGLE_VM_NAME)?;
        let config_space = config.config_space().as_slice().to_vec();
        let mut event_ring = Health::new("event");
        event_ring.set_vm_name(SINGLE_VM_NAME);
        Ok(CenallocBackend {
            name: SINGLE_VM_NAME.to_string(),
            config,
            config_space,
            memory: GuestMemoryAtomic::new(GuestMemory::new()),
            has_memory: AtomicBool::new(false),
            event_idx: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            readers: AtomicUsize::new(0),
            worker: parking_lot::Mutex::new(worker),
            event_ring: Mutex::new(event_ring),
            exit_consumers: Mutex::new(Vec::new()),
            #[cfg(feature = "fault-injection")]
            fault: None,
            exports,
            adoption: Mutex::new(None),
            adopted: Mutex::new(None),
            adopt_event: None,
            vrings: std::sync::OnceLock::new(),
            events_resync: AtomicBool::new(false),
            backend_channel: Mutex::new(None),
        })
    }

    /// Whether QEMU gave the back-end request channel (a device with a
    /// window only).
    pub fn has_backend_channel(&self) -> bool {
        lock(&self.backend_channel).is_some()
    }

    /// The backend with its device journaled in `slot`'s file: a fresh
    /// journal, or one to take the VM over from (the device is rebuilt
    /// from it before the first chain; an empty file starts afresh). A
    /// journal that cannot be set up is logged and the device runs
    /// without one: the VM is served all the same.
    pub fn with_journal(mut self, slot: JournalSlot) -> Self {
        if let Err(e) = self.set_journal(slot) {
            error!(
                "{}: {e}: the device keeps no journal (a restart will not restore it)",
                self.name
            );
        }
        self
    }

    fn set_journal(&mut self, slot: JournalSlot) -> Result<(), Error> {
        let fd = match slot {
            // Even with a journal never written, the rings must go on
            // where the session left them.
            JournalSlot::Adopt(fd) => {
                let pending = adoption::Pending::open(fd, &self.config)?;
                let event = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(Error::AdoptEvent)?;
                event.write(1).map_err(Error::AdoptEvent)?;
                *lock(&self.adoption) = Some(pending);
                self.adopt_event = Some(event);
                return Ok(());
            }
            JournalSlot::Fresh(fd) => fd,
        };
        let worker = self.worker.get_mut();
        let journal = crate::journal::Journal::create_in(
            fd,
            worker.device.origin(),
            crate::journal::DEFAULT_LIMIT,
        )?;
        worker.device.set_journal(journal);
        Ok(())
    }

    /// The descriptor to register as [`ADOPT_EVENT`] with the vring
    /// handler, when taking a VM over (already signalled).
    pub fn adopt_event(&self) -> Option<std::os::fd::RawFd> {
        self.adopt_event.as_ref().map(|event| event.as_raw_fd())
    }

    /// Waits until the vring worker has handed this backend its vrings
    /// (it handles [`ADOPT_EVENT`] at start-up), at most `bound`; whether
    /// they came. A ring stop served before could not take the device
    /// over, and would return the base the session replayed (long stale)
    /// instead of where the ring is.
    pub fn wait_for_vrings(&self, bound: std::time::Duration) -> bool {
        let deadline = Instant::now() + bound;
        while self.vrings.get().is_none() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        true
    }

    /// What the take-over found, once it happened.
    pub fn adopted(&self) -> Option<Adopted> {
        lock(&self.adopted).clone()
    }

    /// Takes the VM over if a journal waits, the guest memory is known and
    /// the control ring runs (the replayed session set its base, which the
    /// take-over overrides), or, with `stopping`, is set up (a ring stop
    /// marks it not ready before it reaches the backend): the device
    /// rebuilt, the rings where the dead process left them. An event ring
    /// not running yet is set later ([`Self::resync_events`]).
    fn take_over(&self, vrings: &[VringRwLock], stopping: bool) {
        if !self.has_memory.load(Ordering::Acquire) {
            return;
        }
        let (Some(control), Some(events)) = (
            vrings.get(CENALLOC_VQ_CONTROL as usize),
            vrings.get(CENALLOC_VQ_EVENT as usize),
        ) else {
            return;
        };
        let ready =
            |vring: &VringRwLock| ring::running(vring) || (stopping && ring::configured(vring));
        if !ready(control) || lock(&self.adoption).is_none() {
            return;
        }
        // The worker first, the journal then: a ring stop, which waits for
        // the worker (stop_worker) before it reads the base it returns,
        // then finds the device taken over or still pending (and takes it
        // over itself), never taken but not rebuilt yet.
        let mut worker = self.worker.lock();
        let Some(pending) = lock(&self.adoption).take() else {
            return;
        };
        let events = if ready(events) {
            Some(events)
        } else {
            self.events_resync.store(true, Ordering::Release);
            None
        };
        let mem = self.memory.memory();
        match adoption::adopt(pending, &self.config, &mem, control, events) {
            Ok((device, adopted)) => {
                let mut device = device.with_watch(self.exports.clone());
                device.set_vm_name(&self.name);
                worker.device = device;
                worker.suspended = None;
                self.exports.check(worker.device.pool());
                *lock(&self.adopted) = Some(adopted);
            }
            Err(e) => error!("{}: cannot take the device over: {e}", self.name),
        }
    }

    /// The event ring of a device taken over before it ran goes on from
    /// its used index, once it runs.
    fn resync_events(&self, vrings: &[VringRwLock], stopping: bool) {
        if !self.events_resync.load(Ordering::Acquire) {
            return;
        }
        let Some(events) = vrings.get(CENALLOC_VQ_EVENT as usize) else {
            return;
        };
        if !(ring::running(events) || (stopping && ring::configured(events))) {
            return;
        }
        let _ring = lock(&self.event_ring);
        if self.events_resync.swap(false, Ordering::AcqRel) {
            match ring::resume_at_used(events, &self.memory.memory(), None) {
                Ok(at) => info!(
                    "{}: event ring goes on at {at:?} after the take-over",
                    self.name
                ),
                Err(e) => warn!("{}: event ring after the take-over: {e}", self.name),
            }
            // As for the control ring (crate::adoption): an event put on
            // the ring by the dead process may not have been notified.
            if let Err(e) = events.signal_used_queue() {
                warn!(
                    "{}: notifying the driver after the take-over: {e}",
                    self.name
                );
            }
        }
    }

    /// The backend with the test hooks of `hooks` (nothing in normal builds).
    #[cfg_attr(not(feature = "fault-injection"), allow(unused_mut, unused_variables))]
    pub fn with_hooks(mut self, hooks: &Hooks) -> Self {
        #[cfg(feature = "fault-injection")]
        if let Some(source) = &hooks.fault {
            warn!("fault injection on: this device lies to the guest on purpose");
            self.fault = Some(Mutex::new(crate::fault::Injector::new(source.clone())));
        }
        self
    }

    /// The backend of VM `name` (named in the log; default
    /// [`SINGLE_VM_NAME`]).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        let worker = self.worker.get_mut();
        worker.device.set_vm_name(name);
        worker.control.set_vm_name(name);
        self.event_ring
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .set_vm_name(name);
        self
    }

    /// The guest memory this backend accepted (empty before the first
    /// memory table): what the registry reads for exports and snapshots.
    pub fn memory(&self) -> AtomicMemory {
        self.memory.clone()
    }

    /// Shared handle, as `VhostUserDaemon` wants it.
    pub fn new_shared(config: DeviceConfig) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self::new(config)?))
    }

    /// The worker's state, once the worker has handed back what it was
    /// doing (for the front-end's requests, which must not wait a batch).
    fn stop_worker(&self) -> parking_lot::MutexGuard<'_, Worker> {
        self.stopping.store(true, Ordering::Release);
        let worker = self.worker.lock();
        self.stopping.store(false, Ordering::Release);
        worker
    }

    /// A kick that cannot be served: the queue stops (logged once).
    fn bad_kick(&self, queue: u16, reason: String) {
        match queue {
            CENALLOC_VQ_CONTROL => self.worker.lock().control.fail(RingError::BadKick(reason)),
            CENALLOC_VQ_EVENT => lock(&self.event_ring).fail(RingError::BadKick(reason)),
            other => warn!("event on unknown queue {other}"),
        }
    }
}

impl VhostUserBackend for CenallocBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        CENALLOC_NUM_VQS
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | self.config.features()
    }

    /// CONFIG for every VM. A VM with a window (an importer of a share
    /// group, issue 17) also gets what the window needs: its shared memory
    /// region (SHMEM), the back-end request channel the maps go on
    /// (BACKEND_REQ, with REPLY_ACK for their answers), and memory-table
    /// changes one region at a time (CONFIGURE_MEM_SLOTS: each mapped
    /// window becomes a region of the table). Every other VM is offered
    /// exactly what it was before sharing existed.
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut features = VhostUserProtocolFeatures::CONFIG;
        if self.config.window.is_some() {
            features |= VhostUserProtocolFeatures::SHMEM
                | VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        }
        features
    }

    /// GET_SHMEM_CONFIG (sent only if SHMEM was negotiated): one region,
    /// `CENALLOC_SHM_WINDOW`, of the configured window size.
    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        let window = self
            .config
            .window
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "this VM has no window"))?;
        let mut sizes = vec![0u64; usize::from(CENALLOC_SHM_WINDOW) + 1];
        sizes[usize::from(CENALLOC_SHM_WINDOW)] = window;
        Ok(VhostUserShMemConfig::new(sizes.len() as u32, &sizes))
    }

    /// SET_BACKEND_REQ_FD (sent only if BACKEND_REQ was negotiated, so
    /// for a VM with a window): kept for the window's maps. Logged at
    /// info, once per connection as "front-end connected" is: under a
    /// holder, the line after a restart shows that the replay handed the
    /// new serving process the channel again.
    fn set_backend_req_fd(&self, backend: Backend) {
        info!("{}: back-end request channel set", self.name);
        *lock(&self.backend_channel) = Some(backend);
    }

    /// VHOST_USER_RESET_DEVICE (not negotiated, so QEMU does not send it):
    /// everything goes, as at a new connection.
    fn reset_device(&self) {
        debug!("device reset: dropping all buffers");
        let mut worker = self.stop_worker();
        match Worker::new(self.config.clone(), &self.exports, &self.name) {
            Ok(mut fresh) => {
                // The journal goes on, from the new device's origin.
                if let Some(mut journal) = worker.device.take_journal() {
                    match journal.restart(fresh.device.origin()) {
                        Ok(()) => fresh.device.set_journal(journal),
                        Err(e) => {
                            error!("reset: the device journal cannot start over: {e}");
                            journal.mark_broken();
                        }
                    }
                }
                *worker = fresh
            }
            Err(e) => error!("reset: cannot rebuild the device state: {e}"),
        }
        self.exports.check(worker.device.pool());
        lock(&self.event_ring).clear();
    }

    /// Stopping a ring (GET_VRING_BASE: a VM pause, a snapshot, a guest
    /// driver reset) keeps the device state: only the driver's RESET
    /// command drops it (see cenalloc_proto.h, "Lifecycle"). A control
    /// chain the worker was answering goes back to the ring, unfinished,
    /// to go on when the ring runs again. A queue stopped for an invalid
    /// ring state may be used again once restarted.
    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // A ring stop right after a take-over: the base QEMU gets back must
        // be where the dead process left the ring.
        if let Some(vrings) = self.vrings.get() {
            self.take_over(vrings, true);
            self.resync_events(vrings, true);
        }
        match u16::try_from(queue_index) {
            Ok(CENALLOC_VQ_CONTROL) => {
                let mut worker = self.stop_worker();
                worker.control.clear();
                if let Some(suspended) = &worker.suspended {
                    debug!(
                        "control queue stopped with chain {} unfinished: it goes on at the restart",
                        suspended.head
                    );
                }
            }
            Ok(CENALLOC_VQ_EVENT) => lock(&self.event_ring).clear(),
            _ => {}
        }
        debug!("queue {queue_index} stopped; the device state is kept");
        Ok(())
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut out = vec![0u8; size as usize];
        let start = (offset as usize).min(self.config_space.len());
        let end = start
            .saturating_add(size as usize)
            .min(self.config_space.len());
        out[..end - start].copy_from_slice(&self.config_space[start..end]);
        #[cfg(feature = "fault-injection")]
        if let Some(fault) = &self.fault {
            lock(fault).rewrite_config(offset, &mut out);
        }
        out
    }

    /// SET_MEM_TABLE: the library has mapped the regions. A table whose
    /// files are short or could shrink is refused (the front-end's
    /// connection ends) before anything reads it; the memory of an
    /// accepted one is left out of core dumps.
    fn update_memory(&self, mem: AtomicMemory) -> io::Result<()> {
        let table = mem.memory();
        if let Err(refused) = memory_table::check(&table) {
            error!("memory table refused: {refused}");
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("memory table refused: {refused}"),
            ));
        }
        if let Err(errno) = memory_table::exclude_from_core_dumps(&table) {
            warn!("guest memory stays in core dumps: madvise(MADV_DONTDUMP): {errno}");
        }
        // Exported segments name offsets in the old regions' files.
        self.exports.revoke_all(Revocation::MemoryChanged);
        let accepted = GuestMemory::clone(&table);
        match self.memory.lock() {
            Ok(guard) => guard.replace(accepted),
            Err(poisoned) => poisoned.into_inner().replace(accepted),
        }
        self.has_memory.store(true, Ordering::Release);
        Ok(())
    }

    /// The exit event of a vring worker thread. vhost-user-backend 0.24
    /// registers the consumer's descriptor in its epoll set with
    /// `into_raw_fd()` and never closes it (one descriptor per connection
    /// leaked). So the backend keeps the consumer and hands out a
    /// non-owning alias of the same descriptor, which the library only ever
    /// turns back into a raw number; the descriptor closes when the backend
    /// drops, after every worker thread (each holds a reference to the
    /// backend) has ended and its epoll set is closed.
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
                Ok(pair) => pair,
                Err(e) => {
                    error!("{}", Error::ExitEvent(e));
                    return None;
                }
            };
        // SAFETY: `consumer` stays open in `exit_consumers` until the
        // backend drops. VringEpollHandler::new (vhost-user-backend 0.24,
        // event_loop.rs) calls `into_raw_fd()` on the alias at once and
        // never closes that number, so the descriptor has one closer (the
        // owner kept here) and the alias never outlives it in use: the
        // epoll set holding it belongs to a worker that ends before the
        // backend drops.
        let alias = unsafe { EventConsumer::from_raw_fd(consumer.as_raw_fd()) };
        lock(&self.exit_consumers).push(consumer);
        Some((alias, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if self.vrings.get().is_none() {
            let _ = self.vrings.set(vrings.to_vec());
        }
        if device_event == ADOPT_EVENT {
            if let Some(event) = &self.adopt_event {
                // Drained: the vrings are here now.
                let _ = event.read();
            }
            self.take_over(vrings, false);
            return Ok(());
        }
        self.take_over(vrings, false);
        self.resync_events(vrings, false);
        if lock(&self.adoption).is_some() {
            // Nothing is served before the take-over: the rings are not
            // where the dead process left them yet.
            return Ok(());
        }
        if evset != EventSet::IN {
            self.bad_kick(
                device_event,
                format!("event set {evset:?} on the kick descriptor"),
            );
            return Ok(());
        }
        if !self.has_memory.load(Ordering::Acquire) {
            self.bad_kick(device_event, "kicked before the memory table".to_string());
            return Ok(());
        }
        let mem = self.memory.memory();
        let (Some(control), Some(events)) = (
            vrings.get(CENALLOC_VQ_CONTROL as usize),
            vrings.get(CENALLOC_VQ_EVENT as usize),
        ) else {
            return Ok(());
        };
        let mut worker = self.worker.lock();
        let mut honest = chain::Honest;
        #[cfg(feature = "fault-injection")]
        let mut injector = self.fault.as_ref().map(lock);
        #[cfg(feature = "fault-injection")]
        let filter: &mut dyn chain::Filter = match injector.as_deref_mut() {
            Some(injector) => injector,
            None => &mut honest,
        };
        #[cfg(not(feature = "fault-injection"))]
        let filter: &mut dyn chain::Filter = &mut honest;
        match device_event {
            CENALLOC_VQ_CONTROL => {
                worker.device.counters.control_wakeups += 1;
                while worker.serve_control(
                    control,
                    events,
                    &self.event_ring,
                    &mem,
                    self.event_idx.load(Ordering::Acquire),
                    &self.stopping,
                    &self.readers,
                    &mut *filter,
                ) {
                    // A fair unlock: the readers waiting get the lock
                    // before this thread takes it again.
                    parking_lot::MutexGuard::bump(&mut worker);
                }
            }
            // Buffers posted, or the ring (re)started: send what waits.
            CENALLOC_VQ_EVENT => deliver_events(
                &mut worker.device,
                &mut lock(&self.event_ring),
                events,
                &mem,
            ),
            other => warn!("event on unknown queue {other}"),
        }
        Ok(())
    }
}

impl DeviceView for CenallocBackend {
    /// Holds `worker` for the copy only; never sets `stopping` (that would
    /// hand the guest's chain back to its ring). Counted in `readers` while
    /// it waits, so that the worker lets it in within one step of work.
    fn with_device(&self, f: &mut dyn FnMut(&Device)) {
        self.readers.fetch_add(1, Ordering::AcqRel);
        let worker = self.worker.lock();
        self.readers.fetch_sub(1, Ordering::AcqRel);
        f(&worker.device)
    }
}

/// Errors of the serve loop.
#[derive(thiserror::Error, Debug)]
pub enum ServeError {
    #[error(transparent)]
    Backend(#[from] Error),
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// No front-end could be taken on (e.g. out of descriptors): the
    /// connection, if any, waits in the listen backlog.
    #[error("cannot take a front-end on: {0}")]
    Accept(String),
}

/// Thread names are 15 bytes at most on Linux.
fn thread_name(vm: &str) -> String {
    let mut name = format!("vm-{vm}");
    while name.len() > 15 {
        name.pop();
    }
    name
}

/// Serves one front-end of VM `name` on `listener` with a fresh device
/// state, until the front-end disconnects. The VM is registered in
/// `registry` while connected (and refused, the connection closed, if the
/// daemon limits do not allow it). The listener stays bound, so the next
/// front-end can connect while this one is being torn down.
pub fn serve_one(
    listener: &mut vhost::vhost_user::Listener,
    name: &str,
    config: &DeviceConfig,
    hooks: &Hooks,
    registry: &Arc<Registry>,
) -> Result<(), ServeError> {
    serve_one_with(listener, name, config, hooks, registry, None)
}

/// [`serve_one`] with the device journaled in `journal` (supervised
/// mode): kept fresh, or taken over from ([`crate::adoption`]).
pub fn serve_one_with(
    listener: &mut vhost::vhost_user::Listener,
    name: &str,
    config: &DeviceConfig,
    hooks: &Hooks,
    registry: &Arc<Registry>,
    journal: Option<JournalSlot>,
) -> Result<(), ServeError> {
    let exports = Arc::new(Exports::new());
    let mut backend = CenallocBackend::with_exports(config.clone(), exports.clone())?
        .with_hooks(hooks)
        .named(name);
    // The daemon limits decide before the connection is accepted: once
    // `start` accepts it, its requests are served at once, and a refusal
    // after that would come when a quick front-end already had answers.
    wait_for_front_end(listener).map_err(|e| ServeError::Accept(e.to_string()))?;
    // The journal is set up (a fresh one written) only now that a
    // front-end is there: under a holder, the relay end closing can be the
    // holder's death, and the journal is then the next holder's to take
    // over, not this process's to start afresh before it dies too.
    if let Some(slot) = journal {
        backend = backend.with_journal(slot);
    }
    let backend = Arc::new(backend);
    let mut daemon = vhost_user_backend::VhostUserDaemon::new(
        thread_name(name),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemory::new()),
    )
    .map_err(|e| ServeError::Accept(e.to_string()))?;
    if let Some(fd) = backend.adopt_event() {
        // The vrings reach the backend through this event before any kick.
        match daemon.get_epoll_handlers().first() {
            Some(handler) => {
                if let Err(e) = handler.register_listener(fd, EventSet::IN, u64::from(ADOPT_EVENT))
                {
                    error!("{name}: cannot register the take-over event: {e}");
                } else if !backend.wait_for_vrings(VRINGS_BOUND) {
                    // Served anyway: the device is still taken over at
                    // the first kick, only a ring stop before it is wrong.
                    error!(
                        "{name}: the vring worker did not take the take-over event within {} s; \
                         a ring stop before the first kick returns the replayed base",
                        VRINGS_BOUND.as_secs()
                    );
                }
            }
            None => error!("{name}: no vring handler for the take-over event"),
        }
    }
    let memory = backend.memory();
    let vm = Vm::new(name, backend, memory, exports, config.pool.limits.clone());
    let admitted = match registry.admit(vm) {
        Ok(admitted) => admitted,
        Err(e) => {
            log::error!("{e}; closing the connection");
            // Taken off the backlog and closed unread.
            return match listener.accept() {
                Ok(_) => Ok(()),
                Err(e) => Err(ServeError::Accept(e.to_string())),
            };
        }
    };
    daemon
        .start(listener)
        .map_err(|e| ServeError::Accept(e.to_string()))?;
    log::info!("{name}: front-end connected");
    let result = daemon.wait();
    drop(admitted);
    log::info!("{name}: front-end disconnected; all device state dropped");
    match result {
        Ok(()) => Ok(()),
        // A front-end that goes away mid-message is an ordinary disconnect.
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(ServeError::Daemon(e.to_string())),
    }
}

/// Waits, without a bound, until a front-end connects to `listener` (a
/// connection waits in its backlog), without accepting it.
fn wait_for_front_end(listener: &vhost::vhost_user::Listener) -> io::Result<()> {
    let mut pollfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pollfd` is one valid, initialised pollfd that lives
        // across the call; the kernel only writes its `revents`.
        let ret = unsafe { libc::poll(&mut pollfd, 1, -1) };
        if ret > 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if ret < 0 && error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Serves the front-ends of VM `name` one after the other, forever. A
/// failing connection is logged and the next one served.
pub fn serve_vm(
    listener: &mut vhost::vhost_user::Listener,
    name: &str,
    config: &DeviceConfig,
    hooks: &Hooks,
    registry: &Arc<Registry>,
) -> Result<(), ServeError> {
    serve_vm_journaled(listener, name, config, hooks, registry, None)
}

/// A VM's device journal in supervised mode: its file (kept by the
/// holder), and whether the first front-end served is one whose session
/// outlived the previous serving process (its device is taken over).
pub struct VmJournal {
    pub file: std::os::fd::OwnedFd,
    pub adopt: bool,
}

/// [`serve_vm`] with every front-end's device journaled in `journal`: the
/// first one taken over from it if `adopt`, each later one afresh.
pub fn serve_vm_journaled(
    listener: &mut vhost::vhost_user::Listener,
    name: &str,
    config: &DeviceConfig,
    hooks: &Hooks,
    registry: &Arc<Registry>,
    mut journal: Option<VmJournal>,
) -> Result<(), ServeError> {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let slot = match &journal {
            Some(journal) => match journal.file.try_clone() {
                Ok(file) if journal.adopt => Some(JournalSlot::Adopt(file)),
                Ok(file) => Some(JournalSlot::Fresh(file)),
                Err(e) => {
                    error!("{name}: cannot use the device journal: {e}");
                    None
                }
            },
            None => None,
        };
        let served = serve_one_with(listener, name, config, hooks, registry, slot);
        if let (Some(journal), false) = (&mut journal, matches!(served, Err(ServeError::Accept(_))))
        {
            // Taken over (or tried): later front-ends start afresh.
            journal.adopt = false;
        }
        match served {
            Ok(()) => backoff = ACCEPT_BACKOFF_MIN,
            Err(e @ ServeError::Backend(_)) => return Err(e),
            Err(e @ ServeError::Daemon(_)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                warn!("{name}: connection ended with an error: {e}");
            }
            // Nothing was served: trying again at once would spin (and
            // log) as fast as the error comes back.
            Err(e @ ServeError::Accept(_)) => {
                warn!("{name}: {e}; trying again in {} ms", backoff.as_millis());
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Waits after a front-end could not be taken on: doubling from the first
/// to the second.
const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Name of the only VM of [`serve_forever`].
pub const SINGLE_VM_NAME: &str = "vm";

/// Serves front-ends on one socket one after the other, forever, with a
/// registry of its own (one VM named [`SINGLE_VM_NAME`], no daemon-wide
/// limits).
pub fn serve_forever(
    listener: &mut vhost::vhost_user::Listener,
    config: &DeviceConfig,
    hooks: &Hooks,
) -> Result<(), ServeError> {
    let registry = Registry::new(registry::DaemonLimits {
        max_vms: u32::MAX,
        max_buffers: u64::MAX,
        max_total_bytes: u64::MAX,
    });
    registry
        .add_socket(SINGLE_VM_NAME, "listener")
        .map_err(|e| ServeError::Daemon(e.to_string()))?;
    serve_vm(listener, SINGLE_VM_NAME, config, hooks, &registry)
}
