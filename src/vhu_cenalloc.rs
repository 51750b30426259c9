//! The vhost-user backend: virtqueue glue only. Control chains are taken
//! from their ring by [`ring::serve`] and answered by
//! [`chain::answer_parsed`]; events produced by the device go out on the
//! event queue; the config space is the device's `cenalloc_config`. An
//! invalid ring state stops that queue ([`ring::Health`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use log::{debug, error, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::chain;
use crate::device::{self, Device, DeviceConfig};
use crate::protocol::{CENALLOC_NUM_VQS, CENALLOC_VQ_CONTROL, CENALLOC_VQ_EVENT};
use crate::ring::{self, Health, MemoryGuard, Served, Walk};

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
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::other(e)
    }
}

/// What the vring worker thread works on: the device state and whether
/// each queue may still be used.
struct Worker {
    device: Device,
    control: Health,
    events: Health,
}

impl Worker {
    fn new(config: DeviceConfig) -> Result<Self, Error> {
        Ok(Worker {
            device: Device::new(config)?,
            control: Health::new("control"),
            events: Health::new("event"),
        })
    }

    /// Answers every available control chain. Events a chain produced are
    /// sent right after its answer, before the next chain runs.
    fn serve_control(
        &mut self,
        control: &VringRwLock,
        events: &VringRwLock,
        mem: &MemoryGuard,
        event_idx: bool,
    ) {
        self.device.counters.control_wakeups += 1;
        let start = Instant::now();
        let Worker {
            device,
            control: control_health,
            events: event_health,
        } = self;
        let round = ring::serve(control, mem, control_health, event_idx, |taken| {
            let mut walk = Walk::new(taken.chain);
            let parsed = chain::parse(&**mem, &mut walk);
            if walk.cut() {
                return Served::Cut;
            }
            let written = chain::answer_parsed(device, &**mem, parsed);
            deliver_events(device, event_health, events, mem);
            Served::Used(written)
        });
        let busy = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let counters = &mut self.device.counters;
        counters.control_busy_ns = counters.control_busy_ns.saturating_add(busy);
        counters.control_signals += u64::from(round.signals);
    }
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
                health.fail(ring::RingError::ChainCut { head });
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
            if let Err(e) = vring.add_used(head, written) {
                health.fail(ring::RingError::Memory(e.to_string()));
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
        ring::signal(vring);
    }
}

/// The cenalloc vhost-user backend of one front-end connection.
pub struct CenallocBackend {
    config: DeviceConfig,
    /// Only ever locked through `get_mut` (the backend is `&mut` when it
    /// runs); the mutex makes the backend `Sync` for the daemon's threads.
    worker: Mutex<Worker>,
    config_space: Vec<u8>,
    mem: Option<AtomicMemory>,
    event_idx: bool,
    /// The exit events' consumers, owned here: see [`Self::exit_event`].
    exit_consumers: Mutex<Vec<EventConsumer>>,
}

impl CenallocBackend {
    pub fn new(config: DeviceConfig) -> Result<Self, Error> {
        let worker = Worker::new(config.clone())?;
        let config_space = config.config_space().as_slice().to_vec();
        Ok(CenallocBackend {
            config,
            worker: Mutex::new(worker),
            config_space,
            mem: None,
            event_idx: false,
            exit_consumers: Mutex::new(Vec::new()),
        })
    }

    /// Shared handle, as `VhostUserDaemon` wants it.
    pub fn new_shared(config: DeviceConfig) -> Result<Arc<RwLock<Self>>, Error> {
        Ok(Arc::new(RwLock::new(Self::new(config)?)))
    }

    fn worker(&mut self) -> &mut Worker {
        // A poisoned lock only means an earlier panic; the state is still
        // consistent (the model changes nothing on failure).
        match self.worker.get_mut() {
            Ok(worker) => worker,
            Err(poisoned) => poisoned.into_inner(),
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
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
    }

    fn reset_device(&mut self) {
        debug!("device reset: dropping all buffers");
        match Worker::new(self.config.clone()) {
            Ok(worker) => *self.worker() = worker,
            Err(e) => error!("reset: cannot rebuild the device state: {e}"),
        }
    }

    /// Stopping a ring (GET_VRING_BASE: a VM pause, a snapshot, a guest
    /// driver reset) keeps the device state: only the driver's RESET
    /// command drops it (see cenalloc_proto.h, "Lifecycle"). A queue
    /// stopped for an invalid ring state may be used again once restarted.
    fn stop_vring(&mut self, queue_index: u32) -> io::Result<()> {
        debug!("queue {queue_index} stopped; the device state is kept");
        let worker = self.worker();
        match u16::try_from(queue_index) {
            Ok(CENALLOC_VQ_CONTROL) => worker.control.clear(),
            Ok(CENALLOC_VQ_EVENT) => worker.events.clear(),
            _ => {}
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
        match self.exit_consumers.lock() {
            Ok(mut owned) => owned.push(consumer),
            Err(poisoned) => poisoned.into_inner().push(consumer),
        }
        Some((alias, notifier))
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let kick_error = if evset != EventSet::IN {
            Some(format!("event set {evset:?} on the kick descriptor"))
        } else if self.mem.is_none() {
            Some("kicked before the memory table".to_string())
        } else {
            None
        };
        if let Some(reason) = kick_error {
            let worker = self.worker();
            match device_event {
                CENALLOC_VQ_CONTROL => worker.control.fail(ring::RingError::BadKick(reason)),
                CENALLOC_VQ_EVENT => worker.events.fail(ring::RingError::BadKick(reason)),
                other => warn!("event on unknown queue {other}"),
            }
            return Ok(());
        }
        let Some(atomic) = &self.mem else {
            return Ok(());
        };
        let mem = atomic.memory();
        let event_idx = self.event_idx;
        let (Some(control), Some(events)) = (
            vrings.get(CENALLOC_VQ_CONTROL as usize),
            vrings.get(CENALLOC_VQ_EVENT as usize),
        ) else {
            return Ok(());
        };
        let worker = self.worker();
        match device_event {
            CENALLOC_VQ_CONTROL => worker.serve_control(control, events, &mem, event_idx),
            // Buffers posted, or the ring (re)started: send what waits.
            CENALLOC_VQ_EVENT => {
                deliver_events(&mut worker.device, &mut worker.events, events, &mem);
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
