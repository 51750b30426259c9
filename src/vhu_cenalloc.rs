//! The vhost-user backend: virtqueue glue only. Control chains go to
//! [`chain::answer_control`], events produced by the device go out on the
//! event queue; the config space is the device's `cenalloc_config`.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use log::{debug, error, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{
    ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::chain;
use crate::device::{self, Device, DeviceConfig};
use crate::poll::Poller;
use crate::protocol::{CENALLOC_NUM_VQS, CENALLOC_VQ_CONTROL, CENALLOC_VQ_EVENT};

/// Largest queue the driver may set up.
pub const MAX_QUEUE_SIZE: usize = 1024;

type GuestMemory = GuestMemoryMmap<()>;
type AtomicMemory = GuestMemoryAtomic<GuestMemory>;
type MemoryGuard = GuestMemoryLoadGuard<GuestMemory>;

/// Errors of the backend glue.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("cannot build the device state: {0}")]
    Device(#[from] device::Error),
    #[error("cannot create the exit event: {0}")]
    ExitEvent(io::Error),
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::other(e)
    }
}

/// The cenalloc vhost-user backend of one front-end connection.
pub struct CenallocBackend {
    config: DeviceConfig,
    /// Only ever locked through `get_mut` (the backend is `&mut` when it
    /// runs); the mutex makes the backend `Sync` for the daemon's threads.
    device: Mutex<Device>,
    config_space: Vec<u8>,
    mem: Option<AtomicMemory>,
    event_idx: bool,
    /// How long the control queue is polled after an answer.
    poller: Poller,
}

impl CenallocBackend {
    pub fn new(config: DeviceConfig) -> Result<Self, Error> {
        let device = Device::new(config.clone())?;
        let config_space = config.config_space().as_slice().to_vec();
        Ok(CenallocBackend {
            poller: Poller::new(config.poll_us),
            config,
            device: Mutex::new(device),
            config_space,
            mem: None,
            event_idx: false,
        })
    }

    /// Shared handle, as `VhostUserDaemon` wants it.
    pub fn new_shared(config: DeviceConfig) -> Result<Arc<RwLock<Self>>, Error> {
        Ok(Arc::new(RwLock::new(Self::new(config)?)))
    }

    fn device(&mut self) -> &mut Device {
        // A poisoned lock only means an earlier panic; the state is still
        // consistent (the model changes nothing on failure).
        match self.device.get_mut() {
            Ok(device) => device,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Answers every available control chain. Events a chain produced are
    /// sent (or dropped) right after its answer, before the next chain runs.
    fn process_control(&mut self, vring: &VringRwLock, events: &VringRwLock, mem: &MemoryGuard) {
        let chains: Vec<_> = match vring.get_mut().get_queue_mut().iter(mem.clone()) {
            Ok(iter) => iter.collect(),
            Err(e) => {
                warn!("control queue unusable: {e}");
                return;
            }
        };
        if chains.is_empty() {
            return;
        }
        let start = Instant::now();
        for chain in chains {
            let head = chain.head_index();
            let written = chain::answer_control(self.device(), &**mem, chain);
            if let Err(e) = vring.add_used(head, written) {
                warn!("control queue: add_used({head}) failed: {e}");
            }
            self.deliver_events(events, mem);
        }
        let busy = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let signalled = signal(vring, "control");
        let counters = &mut self.device().counters;
        counters.control_busy_ns = counters.control_busy_ns.saturating_add(busy);
        if signalled {
            counters.control_signals += 1;
        }
    }

    /// Polls the control ring for a new chain (the window is the poller's,
    /// microseconds); returns whether one came. The counters keep what the
    /// polling cost.
    fn poll_control(&mut self, vring: &VringRwLock, mem: &MemoryGuard) -> bool {
        let found = self.poller.poll(|| {
            let state = vring.get_ref();
            let queue = state.get_queue();
            queue
                .avail_idx(&**mem, Ordering::Acquire)
                .is_ok_and(|avail| avail.0 != queue.next_avail())
        });
        let stats = self.poller.stats();
        let counters = &mut self.device().counters;
        counters.poll_hits = stats.hits;
        counters.poll_misses = stats.misses;
        counters.poll_busy_ns = stats.busy_ns;
        counters.poll_window_ns = stats.window_ns;
        found
    }

    /// Sends the pending events; one with no event buffer posted is dropped.
    fn deliver_events(&mut self, vring: &VringRwLock, mem: &MemoryGuard) {
        if !self.device().has_events() {
            return;
        }
        let events = self.device().take_events();
        let ready = {
            let state = vring.get_ref();
            state.get_queue().ready() && state.is_enabled()
        };
        let mut used = false;
        for event in events {
            let mut delivered = false;
            while ready && !delivered {
                let Some(chain) = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone())
                else {
                    break;
                };
                let head = chain.head_index();
                let written = match chain::deliver_event(&**mem, chain, &event) {
                    Ok(written) => {
                        delivered = true;
                        written
                    }
                    Err(e) => {
                        debug!("event buffer {head} unusable: {e}");
                        self.device().counters.malformed_chains += 1;
                        0
                    }
                };
                used = true;
                if let Err(e) = vring.add_used(head, written) {
                    warn!("event queue: add_used({head}) failed: {e}");
                }
            }
            if delivered {
                self.device().counters.events_sent += 1;
            } else {
                self.device().counters.events_dropped += 1;
            }
        }
        if used {
            signal(vring, "event");
        }
    }
}

/// Notifies the driver of used buffers unless it suppressed that (event
/// index); returns whether it was notified.
fn signal(vring: &VringRwLock, name: &str) -> bool {
    match vring.needs_notification() {
        Ok(true) => {
            if let Err(e) = vring.signal_used_queue() {
                warn!("{name} queue: signal failed: {e}");
                return false;
            }
            true
        }
        Ok(false) => false,
        Err(e) => {
            warn!("{name} queue: needs_notification failed: {e}");
            false
        }
    }
}

impl VhostUserBackendMut for CenallocBackend {
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

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
    }

    fn reset_device(&mut self) {
        debug!("device reset: dropping all buffers");
        match Device::new(self.config.clone()) {
            Ok(device) => *self.device() = device,
            Err(e) => error!("reset: cannot rebuild the device state: {e}"),
        }
    }

    /// QEMU's vhost-user-base never sends RESET_DEVICE: a guest driver
    /// reset (status 0, e.g. module unload) reaches the backend as
    /// GET_VRING_BASE on every queue. Stopping the control queue is
    /// therefore the device reset: the donated pools and every buffer go,
    /// so a reloaded driver starts from a clean device.
    fn stop_vring(&mut self, queue_index: u32) -> io::Result<()> {
        if queue_index == u32::from(CENALLOC_VQ_CONTROL) {
            log::info!("control queue stopped (device reset): dropping all buffers and pools");
            self.reset_device();
        }
        Ok(())
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut out = vec![0u8; size as usize];
        let start = (offset as usize).min(self.config_space.len());
        let end = start
            .saturating_add(size as usize)
            .min(self.config_space.len());
        out[..end - start].copy_from_slice(&self.config_space[start..end]);
        out
    }

    fn update_memory(&mut self, mem: AtomicMemory) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK) {
            Ok(pair) => Some(pair),
            Err(e) => {
                error!("{}", Error::ExitEvent(e));
                None
            }
        }
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            warn!("unexpected event set {evset:?} on queue {device_event}");
            return Ok(());
        }
        let Some(atomic) = &self.mem else {
            warn!("queue {device_event} kicked before the memory table");
            return Ok(());
        };
        let mem = atomic.memory();
        match device_event {
            CENALLOC_VQ_CONTROL => {
                self.device().counters.control_wakeups += 1;
                let (Some(control), Some(events)) = (
                    vrings.get(CENALLOC_VQ_CONTROL as usize),
                    vrings.get(CENALLOC_VQ_EVENT as usize),
                ) else {
                    return Ok(());
                };
                if self.event_idx {
                    loop {
                        if let Err(e) = control.disable_notification() {
                            warn!("control queue: disable_notification: {e}");
                        }
                        self.process_control(control, events, &mem);
                        // With notifications still off: a request that
                        // comes within the window needs no kick.
                        if self.poll_control(control, &mem) {
                            continue;
                        }
                        match control.enable_notification() {
                            Ok(true) => continue,
                            Ok(false) => break,
                            Err(e) => {
                                warn!("control queue: enable_notification: {e}");
                                break;
                            }
                        }
                    }
                } else {
                    self.process_control(control, events, &mem);
                    while self.poll_control(control, &mem) {
                        self.process_control(control, events, &mem);
                    }
                }
            }
            CENALLOC_VQ_EVENT => {
                // The driver posted event buffers; events are sent as they
                // happen, so there is nothing pending here.
            }
            other => warn!("event on unknown queue {other}"),
        }
        Ok(())
    }
}

/// Errors of the serve loop.
#[derive(thiserror::Error, Debug)]
pub enum ServeError {
    #[error(transparent)]
    Backend(#[from] Error),
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
}

/// Serves one front-end connection on `listener` with a fresh device
/// state, until the front-end disconnects. The listener stays bound, so
/// the next front-end can connect while this one is being torn down.
pub fn serve_one(
    listener: &mut vhost::vhost_user::Listener,
    config: &DeviceConfig,
) -> Result<(), ServeError> {
    let backend = CenallocBackend::new_shared(config.clone())?;
    let mut daemon = vhost_user_backend::VhostUserDaemon::new(
        "cenallocd".to_string(),
        backend,
        GuestMemoryAtomic::new(GuestMemory::new()),
    )
    .map_err(|e| ServeError::Daemon(e.to_string()))?;
    daemon
        .start(listener)
        .map_err(|e| ServeError::Daemon(e.to_string()))?;
    log::info!("front-end connected");
    let result = daemon.wait();
    log::info!("front-end disconnected; all device state dropped");
    match result {
        Ok(()) => Ok(()),
        // A front-end that goes away mid-message is an ordinary disconnect.
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(ServeError::Daemon(e.to_string())),
    }
}

/// Serves front-ends one after the other, forever. A failing connection is
/// logged and the next one served.
pub fn serve_forever(
    listener: &mut vhost::vhost_user::Listener,
    config: &DeviceConfig,
) -> Result<(), ServeError> {
    loop {
        if let Err(e) = serve_one(listener, config) {
            match e {
                ServeError::Backend(_) => return Err(e),
                ServeError::Daemon(_) => warn!("connection ended with an error: {e}"),
            }
        }
    }
}
