//! Ring-state logic of one virtqueue, for the backend glue
//! ([`crate::vhu_cenalloc`]): what the device may take from a ring, and
//! when it must stop using it.
//!
//! - [`take`] hands out the next available chain after the checks that
//!   concern the ring itself: the avail index at most a queue size ahead of
//!   the device's own, the head inside the descriptor table.
//! - [`Walk`] walks one chain and tells whether it was cut: it yielded
//!   nothing, or it ended on a descriptor that still says NEXT (a loop, a
//!   next index outside its table, an unreadable or nested indirect table,
//!   more than 4 GiB in total).
//! - [`Health`]: an invalid ring state stops the queue. The device then
//!   touches that ring no more (the chain it gave up on is not returned),
//!   logs why once, and uses the ring again only after the front-end
//!   restarts the queue (GET_VRING_BASE, then SET_VRING_*). A guest driver
//!   reset does exactly that. A queue the front-end stopped (not ready) is
//!   not an invalid state: [`serve`] leaves it alone.
//! - [`serve`]: the loop over the available chains, with the EVENT_IDX
//!   re-check, that can neither spin nor hold on to a broken ring;
//!   [`serve_polled`] polls the avail ring before it sleeps.

use std::sync::atomic::Ordering;

use log::warn;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{GuestMemoryLoadGuard, GuestMemoryMmap};

use crate::device::GuestLog;
use crate::poll::Poller;

/// Guest memory as the vring worker sees it for one event.
pub type MemoryGuard = GuestMemoryLoadGuard<GuestMemoryMmap<()>>;

/// An invalid ring state: the queue stops.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RingError {
    #[error("the rings are not usable (missing, misaligned or outside guest RAM)")]
    Unusable,
    #[error("avail index {avail} is more than the queue size {size} ahead of the device's {next}")]
    AvailIndex { avail: u16, next: u16, size: u16 },
    #[error("chain head {head} at avail position {position} is outside the queue of {size}")]
    Head { head: u16, position: u16, size: u16 },
    #[error(
        "the chain at head {head} cannot be walked to its end (a descriptor loop, a next \
         index outside its table, an unreadable or nested indirect table, or more than 4 GiB)"
    )]
    ChainCut { head: u16 },
    #[error("the ring announces chains that cannot be read")]
    Stalled,
    #[error("bad kick: {0}")]
    BadKick(String),
    #[error("guest memory access to the ring failed: {0}")]
    Memory(String),
}

/// Whether a queue may still be used, and why not.
#[derive(Debug)]
pub struct Health {
    name: &'static str,
    broken: Option<RingError>,
    /// A guest can break a ring, have it restarted (a device reset) and
    /// break it again: the lines are rate-limited.
    log: GuestLog,
}

impl Health {
    pub fn new(name: &'static str) -> Self {
        Health {
            name,
            broken: None,
            log: GuestLog::default(),
        }
    }

    /// Names the VM in the lines logged.
    pub fn set_vm_name(&mut self, name: &str) {
        self.log.set_vm(name);
    }

    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    pub fn broken(&self) -> Option<&RingError> {
        self.broken.as_ref()
    }

    /// Stops the queue for `error`; logs the first reason only.
    pub fn fail(&mut self, error: RingError) {
        if self.broken.is_none() {
            self.log.warn(format_args!(
                "{} queue stopped: {error}; it stays stopped until the front-end restarts it",
                self.name
            ));
            self.broken = Some(error);
        }
    }

    /// The front-end stopped the queue: it may set it up anew.
    pub fn clear(&mut self) {
        self.broken = None;
    }
}

/// One chain taken from the avail ring.
pub struct Taken<C> {
    /// Its avail index: where the ring's next_avail goes back to if the
    /// chain is handed back unanswered.
    pub position: u16,
    pub head: u16,
    pub chain: C,
}

/// A chain walked by [`Walk`].
pub type Chain = DescriptorChain<MemoryGuard>;

/// Ready (started by the front-end) and enabled.
pub fn running(vring: &VringRwLock) -> bool {
    let state = vring.get_ref();
    state.get_queue().ready() && state.is_enabled()
}

/// Its rings' addresses and size were set (address 0 means unset).
pub fn configured(vring: &VringRwLock) -> bool {
    let state = vring.get_ref();
    let queue = state.get_queue();
    queue.avail_ring() != 0 && queue.used_ring() != 0 && queue.size() != 0
}

/// Ready, with rings that were set (address 0 means unset, as for
/// virtio-queue), lie in guest RAM and are aligned.
pub fn check_usable(vring: &VringRwLock, mem: &MemoryGuard) -> Result<(), RingError> {
    let state = vring.get_ref();
    let queue = state.get_queue();
    if queue.avail_ring() != 0 && queue.used_ring() != 0 && queue.is_valid(&**mem) {
        Ok(())
    } else {
        Err(RingError::Unusable)
    }
}

/// After the serving process was replaced: the ring goes on from the used
/// index in guest memory (what the dead process published), not from the
/// base the session set up long ago. `committed` is the last answer the
/// dead process committed (avail position, head, used length): if the used
/// ring does not show it yet, it is published now, once, instead of its
/// chain running again. Returns where the ring goes on and whether that
/// answer was published now; `None` if the ring was never set up (nothing
/// ran on it).
pub fn resume_at_used(
    vring: &VringRwLock,
    mem: &MemoryGuard,
    committed: Option<(u16, u16, u32)>,
) -> Result<Option<(u16, bool)>, RingError> {
    let mut state = vring.get_mut();
    let queue = state.get_queue_mut();
    if queue.avail_ring() == 0 || queue.used_ring() == 0 || queue.size() == 0 {
        return Ok(None);
    }
    let used = queue
        .used_idx(&**mem, Ordering::Acquire)
        .map_err(|e| RingError::Memory(e.to_string()))?
        .0;
    queue.set_next_avail(used);
    queue.set_next_used(used);
    let Some((position, head, len)) = committed.filter(|&(position, ..)| position == used) else {
        return Ok(Some((used, false)));
    };
    if head >= queue.size() {
        return Err(RingError::Head {
            head,
            position,
            size: queue.size(),
        });
    }
    queue
        .add_used(&**mem, head, len)
        .map_err(|e| RingError::Memory(e.to_string()))?;
    let next = used.wrapping_add(1);
    queue.set_next_avail(next);
    Ok(Some((next, true)))
}

/// The next available chain; `None` when the ring is drained or no longer
/// ready (the front-end is stopping it).
pub fn take(vring: &VringRwLock, mem: &MemoryGuard) -> Result<Option<Taken<Chain>>, RingError> {
    let mut state = vring.get_mut();
    let queue = state.get_queue_mut();
    let size = queue.size();
    let position = queue.next_avail();
    let chain = match queue.iter(mem.clone()) {
        Ok(mut iter) => iter.next(),
        Err(virtio_queue::Error::QueueNotReady) => return Ok(None),
        Err(virtio_queue::Error::InvalidAvailRingIndex) => {
            let avail = queue
                .avail_idx(&**mem, Ordering::Relaxed)
                .map_or(0, |idx| idx.0);
            return Err(RingError::AvailIndex {
                avail,
                next: position,
                size,
            });
        }
        Err(e) => return Err(RingError::Memory(e.to_string())),
    };
    let Some(chain) = chain else {
        return Ok(None);
    };
    let head = chain.head_index();
    if head >= size {
        return Err(RingError::Head {
            head,
            position,
            size,
        });
    }
    Ok(Some(Taken {
        position,
        head,
        chain,
    }))
}

/// Hands chains back: the next [`take`] starts again at `position`.
pub fn put_back(vring: &VringRwLock, position: u16) {
    vring.set_queue_next_avail(position);
}

/// Walks a chain's descriptors and remembers whether the walk was cut.
pub struct Walk<I> {
    inner: I,
    yielded: usize,
    last_has_next: bool,
    exhausted: bool,
}

impl<I: Iterator<Item = Descriptor>> Walk<I> {
    pub fn new(inner: I) -> Self {
        Walk {
            inner,
            yielded: 0,
            last_has_next: false,
            exhausted: false,
        }
    }

    /// The walk ran out before the chain's last descriptor: an invalid
    /// ring state. (A walk its consumer stopped early is not cut.)
    pub fn cut(&self) -> bool {
        self.exhausted && (self.yielded == 0 || self.last_has_next)
    }
}

impl<I: Iterator<Item = Descriptor>> Iterator for Walk<I> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        if self.exhausted {
            return None;
        }
        match self.inner.next() {
            Some(desc) => {
                self.yielded += 1;
                self.last_has_next = desc.has_next();
                Some(desc)
            }
            None => {
                self.exhausted = true;
                None
            }
        }
    }
}

/// What the caller of [`serve`] did with one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Answered: this many bytes written into its writable part.
    Used(u32),
    /// Not answered yet: the chain goes back on the ring and the loop
    /// ends; a later [`serve`] takes it again.
    Later,
    /// The chain was cut ([`Walk::cut`]): an invalid ring state.
    Cut,
    /// Test builds (fault injection): the chain is kept and never
    /// returned, as by a device that stopped answering.
    Withheld,
}

/// Why [`serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Nothing more is available (or the front-end is stopping the ring).
    Drained,
    /// The caller handed a chain back ([`Served::Later`]).
    HandedBack,
    /// The queue is stopped for an invalid ring state ([`Health`]).
    Broken,
}

/// What one [`serve`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub end: End,
    /// Chains answered.
    pub used: u32,
    /// Used-buffer notifications sent to the driver.
    pub signals: u32,
}

/// Takes every available chain of `vring` and gives it to `answer`, in
/// ring order, until the ring is drained, the queue breaks, or `answer`
/// hands a chain back. With EVENT_IDX, notifications are off while it runs
/// and the ring is checked again after they are back on (a chain added
/// meanwhile is not missed). The driver is notified after each pass.
///
/// It never spins: a broken queue returns at once, and a pass that finds
/// nothing although the ring announced more breaks the queue.
pub fn serve(
    vring: &VringRwLock,
    mem: &MemoryGuard,
    health: &mut Health,
    event_idx: bool,
    answer: impl FnMut(Taken<Chain>) -> Served,
) -> Round {
    serve_polled(vring, mem, health, event_idx, &mut Poller::new(0), answer)
}

/// [`serve`], and when a pass finds the ring drained (with EVENT_IDX,
/// notifications still off) `poller` polls the avail ring for a while
/// first: a chain that comes within its window is served without a kick.
/// A poll that saw a chain counts as an announcement: a pass that then
/// finds nothing stops the queue, as for the EVENT_IDX re-check.
pub fn serve_polled(
    vring: &VringRwLock,
    mem: &MemoryGuard,
    health: &mut Health,
    event_idx: bool,
    poller: &mut Poller,
    mut answer: impl FnMut(Taken<Chain>) -> Served,
) -> Round {
    let mut round = Round {
        end: End::Drained,
        used: 0,
        signals: 0,
    };
    if health.is_broken() {
        round.end = End::Broken;
        return round;
    }
    // Stopped (GET_VRING_BASE marks the queue not ready before the
    // backend hears of the stop) or not started: nothing to serve, and
    // nothing wrong. A kick taken before the stop lands here after it;
    // judged unusable, the queue would stay broken after the restart.
    if !vring.get_ref().get_queue().ready() {
        return round;
    }
    if let Err(error) = check_usable(vring, mem) {
        health.fail(error);
        round.end = End::Broken;
        return round;
    }
    let mut announced = false;
    loop {
        if event_idx {
            if let Err(e) = vring.get_mut().get_queue_mut().disable_notification(&**mem) {
                health.fail(RingError::Memory(e.to_string()));
                round.end = End::Broken;
                return round;
            }
        }
        let mut took = false;
        let end = loop {
            let taken = match take(vring, mem) {
                Ok(Some(taken)) => taken,
                Ok(None) => break None,
                Err(error) => {
                    health.fail(error);
                    break Some(End::Broken);
                }
            };
            took = true;
            let (position, head) = (taken.position, taken.head);
            match answer(taken) {
                Served::Used(len) => {
                    if let Err(e) = add_used(vring, mem, head, len) {
                        health.fail(RingError::Memory(e.to_string()));
                        break Some(End::Broken);
                    }
                    round.used += 1;
                }
                Served::Later => {
                    put_back(vring, position);
                    break Some(End::HandedBack);
                }
                Served::Cut => {
                    health.fail(RingError::ChainCut { head });
                    break Some(End::Broken);
                }
                Served::Withheld => {}
            }
        };
        if signal(vring, mem) {
            round.signals += 1;
        }
        if let Some(end) = end {
            round.end = end;
            return round;
        }
        if announced && !took {
            health.fail(RingError::Stalled);
            round.end = End::Broken;
            return round;
        }
        if !event_idx || !running(vring) {
            return round;
        }
        if poller.poll(|| avail_pending(vring, mem)) {
            announced = true;
            continue;
        }
        match vring.get_mut().get_queue_mut().enable_notification(&**mem) {
            Ok(true) => announced = true,
            Ok(false) => return round,
            Err(e) => {
                health.fail(RingError::Memory(e.to_string()));
                round.end = End::Broken;
                return round;
            }
        }
    }
}

/// Whether the driver made a chain available that the device has not
/// taken (the avail index moved past the device's own).
fn avail_pending(vring: &VringRwLock, mem: &MemoryGuard) -> bool {
    let state = vring.get_ref();
    let queue = state.get_queue();
    queue
        .avail_idx(&**mem, Ordering::Acquire)
        .is_ok_and(|avail| avail.0 != queue.next_avail())
}

/// Puts a chain on the used ring, in `mem`.
///
/// Every access to the rings goes through the memory the caller checked
/// ([`crate::memory_table`]), never through the vring's own copy, which
/// the library replaces before the backend has seen the new table.
pub fn add_used(
    vring: &VringRwLock,
    mem: &MemoryGuard,
    head: u16,
    len: u32,
) -> Result<(), virtio_queue::Error> {
    vring.get_mut().get_queue_mut().add_used(&**mem, head, len)
}

/// Notifies the driver of used buffers unless it suppressed that (event
/// index); returns whether it was notified.
pub fn signal(vring: &VringRwLock, mem: &MemoryGuard) -> bool {
    let needed = vring.get_mut().get_queue_mut().needs_notification(&**mem);
    match needed {
        Ok(true) => match vring.signal_used_queue() {
            Ok(()) => true,
            Err(e) => {
                warn!("cannot notify the driver: {e}");
                false
            }
        },
        Ok(false) => false,
        Err(e) => {
            warn!("needs_notification failed: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

    const SIZE: u16 = 16;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    struct Fixture {
        atomic: GuestMemoryAtomic<GuestMemoryMmap<()>>,
        vring: VringRwLock,
        desc: u64,
        avail: u64,
        used: u64,
    }

    impl Fixture {
        /// A ready, enabled queue of SIZE entries: descriptor table at
        /// 0x1000, avail ring at 0x2000, used ring at 0x3000 (apart, so
        /// `used_event` and `avail_event` lie in no other ring; the layout
        /// of `MockSplitQueue` puts the used ring over the avail ring's
        /// `used_event`).
        fn new(event_idx: bool) -> Self {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let (desc, avail, used) = (0x1000, 0x2000, 0x3000);
            let atomic = GuestMemoryAtomic::new(mem);
            let vring = VringRwLock::new(atomic.clone(), SIZE).unwrap();
            vring.set_queue_size(SIZE);
            vring.set_queue_info(desc, avail, used).unwrap();
            vring.set_queue_event_idx(event_idx);
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            Fixture {
                atomic,
                vring,
                desc,
                avail,
                used,
            }
        }

        fn mem(&self) -> MemoryGuard {
            self.atomic.memory()
        }

        /// Writes descriptors at 0.. and publishes `heads` from avail
        /// position `from`.
        fn publish(&self, descs: &[RawDescriptor], heads: &[u16], from: u16) {
            let mem = self.mem();
            for (i, desc) in descs.iter().enumerate() {
                mem.write_obj(*desc, GuestAddress(self.desc + 16 * i as u64))
                    .unwrap();
            }
            for (i, &head) in heads.iter().enumerate() {
                let slot = (from as u64 + i as u64) % u64::from(SIZE);
                mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
                    .unwrap();
            }
            self.set_avail_idx(from.wrapping_add(heads.len() as u16));
        }

        fn set_avail_idx(&self, idx: u16) {
            self.mem()
                .write_obj(idx, GuestAddress(self.avail + 2))
                .unwrap();
        }

        fn used_idx(&self) -> u16 {
            self.mem().read_obj(GuestAddress(self.used + 2)).unwrap()
        }
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// Three one-descriptor chains at heads 0, 1, 2.
    fn three_chains(f: &Fixture) {
        let descs: Vec<_> = (0..3)
            .map(|i| desc(0x8000 + 0x100 * i, 64, WRITE, 0))
            .collect();
        f.publish(&descs, &[0, 1, 2], 0);
    }

    /// Answers every chain after walking it fully.
    fn walk_all(taken: Taken<Chain>) -> Served {
        let mut walk = Walk::new(taken.chain);
        for _ in walk.by_ref() {}
        if walk.cut() {
            Served::Cut
        } else {
            Served::Used(8)
        }
    }

    #[test]
    fn serves_every_chain_in_order_with_and_without_event_idx() {
        for event_idx in [false, true] {
            let f = Fixture::new(event_idx);
            three_chains(&f);
            let mut health = Health::new("test");
            let mut heads = Vec::new();
            let round = serve(&f.vring, &f.mem(), &mut health, event_idx, |taken| {
                heads.push((taken.position, taken.head));
                walk_all(taken)
            });
            assert_eq!(round.end, End::Drained);
            assert_eq!(round.used, 3);
            assert_eq!(heads, [(0, 0), (1, 1), (2, 2)]);
            assert_eq!(f.used_idx(), 3);
            assert!(!health.is_broken());
        }
    }

    /// A call eventfd on the vring, as the front-end gives it
    /// (SET_VRING_CALL); returns the test's end.
    fn with_call(f: &Fixture) -> vmm_sys_util::eventfd::EventFd {
        use std::os::fd::{AsRawFd, FromRawFd};
        use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        // SAFETY: dup of a valid descriptor; the result is checked and then
        // owned by the File.
        let fd = unsafe { libc::dup(call.as_raw_fd()) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        f.vring
            .set_call(Some(unsafe { std::fs::File::from_raw_fd(fd) }));
        call
    }

    /// Notifications the driver got since the last call (0 if none).
    fn notifications(call: &vmm_sys_util::eventfd::EventFd) -> u64 {
        call.read().unwrap_or(0)
    }

    #[test]
    fn the_driver_is_notified_after_serve_unless_it_suppressed_that() {
        // Without EVENT_IDX: after every pass that used chains.
        let f = Fixture::new(false);
        let call = with_call(&f);
        three_chains(&f);
        let mut health = Health::new("test");
        let round = serve(&f.vring, &f.mem(), &mut health, false, walk_all);
        assert_eq!((round.used, round.signals), (3, 1));
        assert_eq!(notifications(&call), 1, "no used-buffer notification");

        // With EVENT_IDX: when the used index passes `used_event`.
        let f = Fixture::new(true);
        let call = with_call(&f);
        let used_event = f.avail + 4 + 2 * u64::from(SIZE);
        f.mem().write_obj(0u16, GuestAddress(used_event)).unwrap();
        three_chains(&f);
        let round = serve(&f.vring, &f.mem(), &mut health, true, walk_all);
        assert_eq!((round.used, round.signals), (3, 1));
        assert_eq!(notifications(&call), 1, "no used-buffer notification");
        // The driver asks for an interrupt only after entry 5: the next
        // chain (entry 3) is used without one ...
        f.mem().write_obj(5u16, GuestAddress(used_event)).unwrap();
        let one = [desc(0x8000, 64, WRITE, 0)];
        f.publish(&one, &[0], 3);
        let round = serve(&f.vring, &f.mem(), &mut health, true, walk_all);
        assert_eq!((round.used, round.signals), (1, 0));
        assert_eq!(notifications(&call), 0, "notified although suppressed");
        // ... and then it asks for one at the next entry: it gets it.
        f.mem().write_obj(4u16, GuestAddress(used_event)).unwrap();
        f.publish(&one, &[0], 4);
        let round = serve(&f.vring, &f.mem(), &mut health, true, walk_all);
        assert_eq!((round.used, round.signals), (1, 1));
        assert_eq!(notifications(&call), 1, "no used-buffer notification");
        assert!(!health.is_broken());
    }

    #[test]
    fn an_avail_index_out_of_range_breaks_the_queue_once_and_never_spins() {
        for event_idx in [false, true] {
            let f = Fixture::new(event_idx);
            f.set_avail_idx(SIZE + 1);
            let mut health = Health::new("test");
            let mut calls = 0;
            for _ in 0..3 {
                let round = serve(&f.vring, &f.mem(), &mut health, event_idx, |_| {
                    calls += 1;
                    Served::Used(0)
                });
                assert_eq!(round.end, End::Broken);
            }
            assert_eq!(calls, 0);
            assert_eq!(
                health.broken(),
                Some(&RingError::AvailIndex {
                    avail: SIZE + 1,
                    next: 0,
                    size: SIZE
                })
            );
            // Behind the device is as invalid as too far ahead.
            let f = Fixture::new(event_idx);
            three_chains(&f);
            let mut health = Health::new("test");
            serve(&f.vring, &f.mem(), &mut health, event_idx, walk_all);
            f.set_avail_idx(1);
            let round = serve(&f.vring, &f.mem(), &mut health, event_idx, walk_all);
            assert_eq!(round.end, End::Broken);
            // Until the front-end restarts the queue.
            health.clear();
            f.set_avail_idx(3);
            let round = serve(&f.vring, &f.mem(), &mut health, event_idx, walk_all);
            assert_eq!(round.end, End::Drained);
        }
    }

    #[test]
    fn a_head_outside_the_table_breaks_the_queue() {
        let f = Fixture::new(true);
        f.publish(&[desc(0x8000, 64, WRITE, 0)], &[SIZE + 3], 0);
        let mut health = Health::new("test");
        let round = serve(&f.vring, &f.mem(), &mut health, true, walk_all);
        assert_eq!(round.end, End::Broken);
        assert_eq!(
            health.broken(),
            Some(&RingError::Head {
                head: SIZE + 3,
                position: 0,
                size: SIZE
            })
        );
        assert_eq!(f.used_idx(), 0, "the chain given up on is not returned");
    }

    #[test]
    fn cut_chains_break_the_queue_and_whole_chains_do_not() {
        let cases: [(&str, Vec<RawDescriptor>, bool); 4] = [
            (
                "whole",
                vec![desc(0x8000, 64, NEXT, 1), desc(0x9000, 64, WRITE, 0)],
                false,
            ),
            (
                "loop",
                vec![desc(0x8000, 64, NEXT, 1), desc(0x9000, 64, NEXT | WRITE, 0)],
                true,
            ),
            (
                "next outside the table",
                vec![desc(0x8000, 64, NEXT, SIZE + 1)],
                true,
            ),
            (
                "more than 4 GiB",
                vec![desc(0x8000, u32::MAX, NEXT, 1), desc(0x9000, 64, WRITE, 0)],
                true,
            ),
        ];
        for (name, descs, cut) in cases {
            let f = Fixture::new(true);
            f.publish(&descs, &[0], 0);
            let mut health = Health::new("test");
            let round = serve(&f.vring, &f.mem(), &mut health, true, walk_all);
            assert_eq!(round.end == End::Broken, cut, "{name}");
            assert_eq!(
                health.broken() == Some(&RingError::ChainCut { head: 0 }),
                cut,
                "{name}"
            );
        }
    }

    #[test]
    fn a_walk_stopped_by_its_consumer_is_not_cut() {
        let f = Fixture::new(false);
        f.publish(
            &[desc(0x8000, 64, NEXT, 1), desc(0x9000, 64, WRITE, 0)],
            &[0],
            0,
        );
        let taken = take(&f.vring, &f.mem()).unwrap().unwrap();
        let mut walk = Walk::new(taken.chain);
        assert!(walk.next().is_some());
        assert!(!walk.cut());
    }

    #[test]
    fn a_chain_handed_back_is_taken_again() {
        let f = Fixture::new(true);
        three_chains(&f);
        let mut health = Health::new("test");
        let round = serve(&f.vring, &f.mem(), &mut health, true, |taken| {
            if taken.head == 1 {
                Served::Later
            } else {
                walk_all(taken)
            }
        });
        assert_eq!(round.end, End::HandedBack);
        assert_eq!(round.used, 1);
        assert_eq!(f.vring.queue_next_avail(), 1);
        let mut heads = Vec::new();
        let round = serve(&f.vring, &f.mem(), &mut health, true, |taken| {
            heads.push(taken.head);
            walk_all(taken)
        });
        assert_eq!(round.end, End::Drained);
        assert_eq!(heads, [1, 2]);
        assert_eq!(f.used_idx(), 3);
    }

    /// GET_VRING_BASE marks the queue not ready before the backend hears
    /// of the stop, and a kick the worker took before can still be served
    /// after the stop cleared the queue's health: a stopped queue is left
    /// alone, not broken (only a stop clears a broken queue, and this one
    /// would come after it: the ring would stay dead after the restart).
    #[test]
    fn a_stopped_queue_is_left_alone_and_serves_again_once_restarted() {
        for event_idx in [false, true] {
            let f = Fixture::new(event_idx);
            three_chains(&f);
            f.vring.set_queue_ready(false);
            let mut health = Health::new("test");
            let round = serve(&f.vring, &f.mem(), &mut health, event_idx, walk_all);
            assert_eq!((round.end, round.used), (End::Drained, 0));
            assert!(!health.is_broken(), "{:?}", health.broken());
            assert_eq!(f.used_idx(), 0);
            // The restart: the same ring, ready again.
            f.vring.set_queue_ready(true);
            let round = serve(&f.vring, &f.mem(), &mut health, event_idx, walk_all);
            assert_eq!((round.end, round.used), (End::Drained, 3));
            assert_eq!(f.used_idx(), 3);
        }
    }

    #[test]
    fn rings_outside_memory_or_not_set_up_break_the_queue_untouched() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem);
        let vring = VringRwLock::new(atomic.clone(), SIZE).unwrap();
        vring.set_queue_size(SIZE);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let mut health = Health::new("test");
        let round = serve(&vring, &atomic.memory(), &mut health, true, walk_all);
        assert_eq!(round.end, End::Broken);
        assert_eq!(health.broken(), Some(&RingError::Unusable));
        // Nothing was written at guest address 0 (where an unset used
        // ring would point).
        let mut bytes = [1u8; 0x1000];
        atomic
            .memory()
            .read_slice(&mut bytes, GuestAddress(0))
            .unwrap();
        assert!(bytes.iter().all(|&b| b == 0));
    }
}
