//! A test VMM for cenallocd: guest memory in a memfd, the vhost-user
//! front-end of the `vhost` crate over the daemon's socket, and a small
//! split-ring driver that writes descriptor chains into that memory.
//!
//! Guest-physical layout (two RAM regions, both from one memfd):
//! - `[0, 512 MiB)`: rings at 0x1000.., request/response scratch from
//!   1 MiB to 16 MiB, pool donations above 16 MiB.
//! - `[4 GiB, 4 GiB + 64 MiB)`: high RAM (donated to the `system` pool).

#![allow(dead_code)]

pub mod shmem;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use cenalloc::device::DeviceConfig;
use cenalloc::protocol::*;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, Listener, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{ByteValued, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const LOW_RAM: u64 = 512 << 20;
pub const HIGH_BASE: u64 = 1 << 32;
pub const HIGH_RAM: u64 = 64 << 20;
pub const QUEUE_SIZE: u16 = 256;
pub const SCRATCH_START: u64 = 1 << 20;
pub const SCRATCH_END: u64 = 16 << 20;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;

/// How long any wait for the daemon may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(20);

/// How long the used-buffer notification may lag behind the last chain the
/// device used on a queue with nothing else posted. The device notifies at
/// the end of the pass that used the chain: a driver such as cenalloc.ko
/// sleeps on that interrupt, so without it every request would time out.
/// Generous for a loaded CI machine (2 s passed the whole suite at a load
/// of 16 on 2 cores).
const NOTIFY_GRACE: Duration = Duration::from_secs(5);

/// Guest memory shared with the daemon through a memfd.
pub struct GuestRam {
    pub mem: GuestMemoryMmap,
    memfd: File,
}

impl GuestRam {
    /// Guest RAM as QEMU's `memory-backend-memfd` gives it: a memfd of the
    /// full size, sealed against shrinking and growing.
    pub fn new() -> Self {
        Self::with_file(LOW_RAM + HIGH_RAM, true)
    }

    /// Guest RAM whose memfd is `file_len` bytes long (the regions still
    /// span `LOW_RAM + HIGH_RAM`: a shorter file leaves their end without
    /// backing), sealed as QEMU seals it (F_SEAL_SHRINK | F_SEAL_GROW |
    /// F_SEAL_SEAL) if `seal`.
    pub fn with_file(file_len: u64, seal: bool) -> Self {
        let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // SAFETY: memfd_create with a NUL-terminated name; the result is
        // checked before use and then owned by a File.
        let fd = unsafe { libc::memfd_create(c"cenalloc-guest".as_ptr(), flags) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let memfd = unsafe { File::from_raw_fd(fd) };
        memfd.set_len(file_len).unwrap();
        if seal {
            // SAFETY: fcntl on a descriptor this function owns.
            let rc = unsafe {
                libc::fcntl(
                    memfd.as_raw_fd(),
                    libc::F_ADD_SEALS,
                    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
                )
            };
            assert_eq!(rc, 0, "F_ADD_SEALS: {}", std::io::Error::last_os_error());
        }
        let mem = GuestMemoryMmap::from_ranges_with_files([
            (
                GuestAddress(0),
                LOW_RAM as usize,
                Some(FileOffset::new(memfd.try_clone().unwrap(), 0)),
            ),
            (
                GuestAddress(HIGH_BASE),
                HIGH_RAM as usize,
                Some(FileOffset::new(memfd.try_clone().unwrap(), LOW_RAM)),
            ),
        ])
        .unwrap();
        GuestRam { mem, memfd }
    }

    pub fn regions(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.mem
            .iter()
            .map(|region| VhostUserMemoryRegionInfo::from_guest_region(region).unwrap())
            .collect()
    }

    fn host_address(&self, gpa: u64) -> u64 {
        self.mem.get_host_address(GuestAddress(gpa)).unwrap() as u64
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(gpa)).unwrap();
        out
    }

    pub fn write(&self, gpa: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(gpa)).unwrap();
    }

    pub fn fill(&self, gpa: u64, len: u64, byte: u8) {
        let chunk = vec![byte; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let step = (len - done).min(chunk.len() as u64);
            self.write(gpa + done, &chunk[..step as usize]);
            done += step;
        }
    }

    pub fn memfd(&self) -> &File {
        &self.memfd
    }
}

/// One descriptor of a chain the test builds.
#[derive(Clone, Debug)]
pub enum Desc {
    /// Device-readable, holding these bytes (placed in scratch memory).
    Readable(Vec<u8>),
    /// Device-writable, this many bytes (placed in scratch memory, filled
    /// with 0xEE so unwritten bytes show).
    Writable(u32),
    /// A descriptor exactly as given (for malformed chains).
    Raw { addr: u64, len: u32, write: bool },
}

/// A chain: its descriptors, direct or through an indirect table.
#[derive(Clone, Debug)]
pub struct Chain {
    pub descs: Vec<Desc>,
    pub indirect: bool,
}

impl Chain {
    pub fn new(descs: Vec<Desc>) -> Self {
        Chain {
            descs,
            indirect: false,
        }
    }

    /// The usual shape: one readable request, one writable answer.
    pub fn simple(request: Vec<u8>, writable: u32) -> Self {
        Chain::new(vec![Desc::Readable(request), Desc::Writable(writable)])
    }
}

/// What the device returned for one chain.
#[derive(Clone, Debug)]
pub struct Used {
    pub len: u32,
    /// The contents of the writable descriptors the harness placed, in
    /// order, concatenated.
    pub written: Vec<u8>,
}

/// Chains placed on a queue whose answers were not collected yet.
#[derive(Debug)]
pub struct Posted {
    index: usize,
    heads: Vec<u16>,
    writable_areas: Vec<Vec<(u64, u32)>>,
}

/// One split virtqueue driven by the test.
struct Queue {
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    /// Used entries the test has taken.
    used_idx: u16,
    /// Used entries the test may look at: those the device has sent a
    /// used-buffer notification for (and, with EVENT_IDX, those it added
    /// before it could see the latest `used_event`). The test waits on the
    /// call eventfd only; the used index alone never lets it go on.
    notified: u16,
    /// The `used_event` the test last wrote (EVENT_IDX).
    used_event: u16,
    kick: EventFd,
    call: EventFd,
}

impl Queue {
    fn new(base: u64) -> Self {
        Queue {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            avail_idx: 0,
            used_idx: 0,
            notified: 0,
            used_event: 0,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    /// The used index as the device wrote it.
    fn device_used_idx(&self, ram: &GuestRam) -> u16 {
        ram.mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .unwrap()
    }

    /// Reads the call eventfd without blocking. A notification covers
    /// every entry the device added before it: `notified` moves to the
    /// used index read after it.
    fn take_notification(&mut self, ram: &GuestRam) -> bool {
        let mut count = 0u64;
        // SAFETY: reading 8 bytes from a non-blocking eventfd into a u64.
        let read = unsafe { libc::read(self.call.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        if read == 8 && count > 0 {
            self.notified = self.device_used_idx(ram);
            true
        } else {
            false
        }
    }

    /// With EVENT_IDX, asks for a notification as soon as the device uses
    /// anything past `notified` (`used_event`, the driver's side of used
    /// buffer notification suppression), then reads the used index again,
    /// as a driver re-enabling its callback does: an entry added before the device could see the new
    /// `used_event` gets no notification, so it counts as notified and
    /// `used_event` moves on. Without EVENT_IDX every pass notifies.
    fn arm(&mut self, ram: &GuestRam, event_idx: bool) {
        // Only a new `used_event` can have been missed: the device has seen
        // the old one since before it used anything the test waits for.
        if !event_idx || self.used_event == self.notified {
            return;
        }
        loop {
            let used_event = self.avail + 4 + 2 * u64::from(QUEUE_SIZE);
            ram.write(used_event, &self.notified.to_le_bytes());
            self.used_event = self.notified;
            fence(Ordering::SeqCst);
            let used = self.device_used_idx(ram);
            if used == self.notified {
                return;
            }
            self.notified = used;
        }
    }

    /// Waits on the call eventfd until the device notified the used index
    /// `target` (or past it). The device owes that notification once the
    /// used index reached `owed_at` (its pass is over: nothing else posted
    /// for it to serve); if it does not come within [`NOTIFY_GRACE`] after
    /// that, or `target` is not reached within [`TIMEOUT`], the test fails.
    fn wait_notified(&mut self, ram: &GuestRam, event_idx: bool, target: u16, owed_at: u16) {
        let start = self.used_idx;
        let reached = |idx: u16, goal: u16| idx.wrapping_sub(start) >= goal.wrapping_sub(start);
        let deadline = Instant::now() + TIMEOUT;
        let mut unnotified_since: Option<Instant> = None;
        loop {
            self.take_notification(ram);
            self.arm(ram, event_idx);
            if reached(self.notified, target) {
                return;
            }
            let mut pfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, bounded timeout.
            let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
            if ready > 0 {
                continue;
            }
            let used = self.device_used_idx(ram);
            if used != self.notified && reached(used, owed_at) {
                let since = *unnotified_since.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < NOTIFY_GRACE,
                    "the device used the chains (used index {used}, want {target}) but sent no \
                     used-buffer notification within {NOTIFY_GRACE:?} (notified up to {}, \
                     EVENT_IDX {event_idx}): a driver sleeping on the interrupt waits for ever",
                    self.notified
                );
            } else {
                unnotified_since = None;
            }
            assert!(
                Instant::now() < deadline,
                "device did not answer in {TIMEOUT:?} (used {used}, notified {}, want {target})",
                self.notified
            );
        }
    }
}

/// A command for [`Harness::batch`].
#[derive(Clone, Debug)]
pub struct Cmd {
    pub opcode: u16,
    pub flags: u16,
    pub reserved: u32,
    pub payload: Vec<u8>,
    pub resp_len: u32,
}

impl Cmd {
    pub fn new(opcode: u16, payload: &[u8], resp_len: u32) -> Self {
        Cmd {
            opcode,
            flags: 0,
            reserved: 0,
            payload: payload.to_vec(),
            resp_len,
        }
    }
    pub fn get_info() -> Self {
        Cmd::new(CENALLOC_CMD_GET_INFO, &[], 1024)
    }
    pub fn pool_add(pool_index: u32, ranges: &[(u64, u64)]) -> Self {
        let mut payload = PoolAddReq {
            pool_index,
            num_ranges: ranges.len() as u32,
        }
        .as_slice()
        .to_vec();
        for &(addr, len) in ranges {
            payload.extend_from_slice(Range { addr, len }.as_slice());
        }
        Cmd::new(CENALLOC_CMD_POOL_ADD, &payload, 0)
    }
    pub fn create(size: u64, initial_mask: u32) -> Self {
        let req = CreateReq {
            size,
            flags: 0,
            initial_mask,
        };
        Cmd::new(CENALLOC_CMD_CREATE, req.as_slice(), 16)
    }
    pub fn attach(buffer_id: u32, mask: u32, types: &[u32]) -> Self {
        let mut req = AttachReq {
            buffer_id,
            mask,
            num_types: types.len() as u32,
            ..Default::default()
        };
        for (slot, &t) in req.types.iter_mut().zip(types) {
            *slot = t;
        }
        Cmd::new(CENALLOC_CMD_ATTACH, req.as_slice(), 16)
    }
    pub fn detach(attach_id: u32) -> Self {
        let req = DetachReq {
            attach_id,
            reserved: 0,
        };
        Cmd::new(CENALLOC_CMD_DETACH, req.as_slice(), 0)
    }
    pub fn map(attach_id: u32, direction: u32, max_segments: u32) -> Self {
        let req = MapReq {
            attach_id,
            direction,
        };
        Cmd::new(CENALLOC_CMD_MAP, req.as_slice(), 24 + 16 * max_segments)
    }
    pub fn unmap(attach_id: u32, direction: u32) -> Self {
        let req = UnmapReq {
            attach_id,
            direction,
        };
        Cmd::new(CENALLOC_CMD_UNMAP, req.as_slice(), 0)
    }
    pub fn free(buffer_id: u32) -> Self {
        let req = FreeReq {
            buffer_id,
            reserved: 0,
        };
        Cmd::new(CENALLOC_CMD_FREE, req.as_slice(), 0)
    }
    pub fn phys(buffer_id: u32) -> Self {
        let req = PhysReq {
            buffer_id,
            reserved: 0,
        };
        Cmd::new(CENALLOC_CMD_PHYS, req.as_slice(), 16)
    }
    pub fn sync(buffer_id: u32, flags: u32) -> Self {
        let req = SyncReq { buffer_id, flags };
        Cmd::new(CENALLOC_CMD_SYNC, req.as_slice(), 0)
    }
    pub fn stats(resp_len: u32) -> Self {
        Cmd::new(CENALLOC_CMD_STATS, &[], resp_len)
    }
    pub fn fill(buffer_id: u32, seed: u64) -> Self {
        let req = FillReq {
            buffer_id,
            reserved: 0,
            seed,
        };
        Cmd::new(CENALLOC_CMD_FILL, req.as_slice(), 0)
    }
    pub fn reset(flags: u32, reserved: u32) -> Self {
        let req = ResetReq { flags, reserved };
        Cmd::new(CENALLOC_CMD_RESET, req.as_slice(), 16)
    }
    pub fn checksum(buffer_id: u32) -> Self {
        let req = ChecksumReq {
            buffer_id,
            reserved: 0,
        };
        Cmd::new(CENALLOC_CMD_CHECKSUM, req.as_slice(), 16)
    }
}

/// Encodes a batch's readable part.
pub fn encode_batch(cmds: &[Cmd]) -> Vec<u8> {
    let mut out = BatchHdr {
        num_cmds: cmds.len() as u32,
        reserved: 0,
    }
    .as_slice()
    .to_vec();
    for cmd in cmds {
        let hdr = CmdHdr {
            opcode: cmd.opcode,
            flags: cmd.flags,
            len: cmd.payload.len() as u32,
            resp_len: cmd.resp_len,
            reserved: cmd.reserved,
        };
        out.extend_from_slice(hdr.as_slice());
        out.extend_from_slice(&cmd.payload);
    }
    out
}

/// Size of the writable part a batch needs.
pub fn response_len(cmds: &[Cmd]) -> u32 {
    8 + cmds.iter().map(|c| 16 + c.resp_len).sum::<u32>()
}

/// One command's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: i32,
    pub len: u32,
    pub needed: u32,
    pub payload: Vec<u8>,
}

impl Answer {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.status, 0, "command failed: {self:?}");
        self
    }
    pub fn get<T: ByteValued + Default>(&self) -> T {
        self.get_at(0)
    }
    pub fn get_at<T: ByteValued + Default>(&self, offset: usize) -> T {
        let mut value = T::default();
        value
            .as_mut_slice()
            .copy_from_slice(&self.payload[offset..offset + size_of::<T>()]);
        value
    }
}

/// A batch's answer.
#[derive(Clone, Debug)]
pub struct BatchAnswer {
    pub status: i32,
    pub num_done: u32,
    pub used_len: u32,
    pub answers: Vec<Answer>,
}

/// Decodes a batch's answer. The device writes either the whole answer
/// (every command's slot) or, for a batch it refused as a whole (framing,
/// a writable part too small), only the `batch_resp` with an error (virtio
/// spec 5.N.6.1.1): anything else fails the test, so a short answer can
/// never make a caller's checks over `answers` vanish.
pub fn decode_batch(cmds: &[Cmd], used: &Used) -> BatchAnswer {
    let bytes = &used.written;
    let word = |off: usize| u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap());
    let whole = used.len == response_len(cmds);
    assert!(
        whole || (used.len == 8 && word(0) != 0),
        "batch answered with {} bytes (status {}): neither the whole answer of {} bytes nor a \
         refusal",
        used.len,
        word(0) as i32,
        response_len(cmds)
    );
    let mut answers = Vec::new();
    let mut off = 8;
    if whole {
        for cmd in cmds {
            let len = word(off + 4);
            answers.push(Answer {
                status: word(off) as i32,
                len,
                needed: word(off + 8),
                payload: bytes[off + 16..off + 16 + len.min(cmd.resp_len) as usize].to_vec(),
            });
            off += 16 + cmd.resp_len as usize;
        }
    }
    BatchAnswer {
        status: word(0) as i32,
        num_done: word(4),
        used_len: used.len,
        answers,
    }
}

/// The test VMM: memory, front-end, the two queues.
pub struct Harness {
    pub ram: GuestRam,
    pub frontend: Frontend,
    pub config: Config,
    pub features: u64,
    /// Every virtio feature the device offered.
    pub offered: u64,
    control: Queue,
    events: Queue,
    scratch: u64,
    pub socket: PathBuf,
}

/// Starts an in-process daemon serving `config` on a fresh socket; returns
/// the socket path. The server thread serves front-ends until the process
/// ends.
pub fn spawn_daemon(config: DeviceConfig) -> PathBuf {
    spawn_daemon_with(config, cenalloc::config::Hooks::default())
}

/// [`spawn_daemon`] with test hooks (fault injection).
pub fn spawn_daemon_with(config: DeviceConfig, hooks: cenalloc::config::Hooks) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let socket =
        std::env::temp_dir().join(format!("cenalloc-test-{}-{n}.sock", std::process::id()));
    let mut listener = Listener::new(&socket, true).unwrap();
    std::thread::spawn(move || {
        let _ = cenalloc::vhu_cenalloc::serve_forever(&mut listener, &config, &hooks);
    });
    socket
}

/// Starts an in-process daemon that serves one front-end of VM `vm` with
/// its device journaled in `journal` (a fresh journal, or one to take the
/// device over from), then stops; returns the socket path.
pub fn spawn_journaled(
    config: DeviceConfig,
    journal: cenalloc::adoption::JournalSlot,
) -> (PathBuf, std::thread::JoinHandle<()>) {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let socket = std::env::temp_dir().join(format!(
        "cenalloc-journaled-{}-{n}.sock",
        std::process::id()
    ));
    let mut listener = Listener::new(&socket, true).unwrap();
    let served = std::thread::spawn(move || {
        let registry = cenalloc::registry::Registry::new(cenalloc::registry::DaemonLimits {
            max_vms: u32::MAX,
            max_buffers: u64::MAX,
            max_total_bytes: u64::MAX,
        });
        registry.add_socket("vm", "listener").unwrap();
        let _ = cenalloc::vhu_cenalloc::serve_one_with(
            &mut listener,
            "vm",
            &config,
            &cenalloc::config::Hooks::default(),
            &registry,
            Some(journal),
        );
    });
    (socket, served)
}

pub const WANTED_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC);

impl Harness {
    /// In-process daemon with the default layout, connected.
    pub fn start() -> Self {
        Self::start_with(DeviceConfig::default_layout())
    }

    pub fn start_with(config: DeviceConfig) -> Self {
        let socket = spawn_daemon(config);
        Self::connect(&socket, WANTED_FEATURES)
    }

    /// Connects a new front-end to `socket` with fresh guest memory and
    /// rings, negotiating `wanted` virtio features.
    pub fn connect(socket: &Path, wanted: u64) -> Self {
        Self::try_connect_with_ram(socket, wanted, GuestRam::new()).unwrap()
    }

    /// [`Harness::connect`] with the given guest RAM; an error when the
    /// daemon refuses the memory table (it closes the connection: the
    /// request after SET_MEM_TABLE that waits for an answer fails) or the
    /// queue set-up.
    pub fn try_connect_with_ram(
        socket: &Path,
        wanted: u64,
        ram: GuestRam,
    ) -> Result<Self, vhost::Error> {
        let frontend = Frontend::connect(socket, CENALLOC_NUM_VQS as u64)?;
        Self::try_set_up(frontend, socket, wanted, ram)
    }

    /// [`Harness::try_connect_with_ram`] over a front-end already connected
    /// (e.g. `Frontend::from_stream`, keeping a clone of the stream).
    pub fn try_set_up(
        frontend: Frontend,
        socket: &Path,
        wanted: u64,
        ram: GuestRam,
    ) -> Result<Self, vhost::Error> {
        Self::set_up(frontend, socket, wanted, ram, None).map(|(harness, _)| harness)
    }

    /// [`Harness::try_set_up`] as QEMU sets up a device with VIRTIO shared
    /// memory (importer B, docs/design/cross-vm-sharing.md section 8): the
    /// protocol features of [`shmem::window_features`] the daemon offers
    /// are taken too, then [`shmem::set_up_window`] serves `shmem` (the
    /// backend channel, GET_SHMEM_CONFIG's regions). Against a daemon that
    /// offers none of the window's own features, the session of
    /// `try_set_up` but for REPLY_ACK, which vhost's back-end side always
    /// offers and QEMU takes (the harness sets NEED_REPLY only on
    /// SET_BACKEND_REQ_FD, as QEMU does, and sends that only with
    /// BACKEND_REQ).
    pub fn try_set_up_with_window(
        frontend: Frontend,
        socket: &Path,
        wanted: u64,
        ram: GuestRam,
        shmem: &std::sync::Arc<shmem::QemuShmem>,
    ) -> Result<(Self, shmem::WindowSetUp), vhost::Error> {
        Self::set_up(frontend, socket, wanted, ram, Some(shmem))
            .map(|(harness, window)| (harness, window.expect("set up with a window")))
    }

    /// [`Harness::connect`] with a window ([`Harness::try_set_up_with_window`]).
    pub fn connect_with_window(
        socket: &Path,
        wanted: u64,
        shmem: &std::sync::Arc<shmem::QemuShmem>,
    ) -> (Self, shmem::WindowSetUp) {
        let frontend = Frontend::connect(socket, CENALLOC_NUM_VQS as u64).unwrap();
        Self::try_set_up_with_window(frontend, socket, wanted, GuestRam::new(), shmem).unwrap()
    }

    fn set_up(
        mut frontend: Frontend,
        socket: &Path,
        wanted: u64,
        ram: GuestRam,
        window: Option<&std::sync::Arc<shmem::QemuShmem>>,
    ) -> Result<(Self, Option<shmem::WindowSetUp>), vhost::Error> {
        frontend.set_owner()?;
        let offered = frontend.get_features()?;
        assert_eq!(
            offered & WANTED_FEATURES,
            WANTED_FEATURES,
            "features {offered:#x}"
        );
        let features = (offered & wanted) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        frontend.set_features(features)?;
        let protocol = frontend.get_protocol_features()?;
        assert!(protocol.contains(VhostUserProtocolFeatures::CONFIG));
        let acked = match window {
            Some(_) => VhostUserProtocolFeatures::CONFIG | shmem::window_features(protocol),
            None => {
                assert!(!protocol.contains(VhostUserProtocolFeatures::SHMEM));
                VhostUserProtocolFeatures::CONFIG
            }
        };
        frontend.set_protocol_features(acked)?;
        let window = match window {
            Some(shmem) => Some(shmem::set_up_window(&mut frontend, acked, shmem)?),
            None => None,
        };
        let size = size_of::<Config>() as u32;
        let (_, bytes) = frontend.get_config(
            0,
            size,
            VhostUserConfigFlags::WRITABLE,
            &vec![0u8; size as usize],
        )?;
        let mut config = Config::default();
        config.as_mut_slice().copy_from_slice(&bytes);

        frontend.set_mem_table(&ram.regions())?;
        // A request that waits for its answer: the daemon has handled the
        // memory table by then (and closed the connection if it refused it).
        frontend.get_features()?;
        let mut harness = Harness {
            frontend,
            config,
            features,
            offered,
            control: Queue::new(0x1000),
            events: Queue::new(0x4000),
            scratch: SCRATCH_START,
            socket: socket.to_path_buf(),
            ram,
        };
        for index in 0..CENALLOC_NUM_VQS {
            harness.try_setup_queue(index, 0)?;
        }
        Ok((harness, window))
    }

    /// What the holder of `cenallocd --supervise` does for a new serving
    /// process on `socket`: the same session again (features, memory
    /// table, both rings from the bases they were first set up with),
    /// with the same guest RAM, rings, kick and call eventfds. The
    /// harness's own ring state goes on where it was.
    /// The old connection is closed first, and `next` called once it is
    /// (it waits for the old daemon to end and starts the next one).
    pub fn replay_session(&mut self, next: impl FnOnce() -> PathBuf) {
        let (placeholder, _) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(std::mem::replace(
            &mut self.frontend,
            Frontend::from_stream(placeholder, CENALLOC_NUM_VQS as u64),
        ));
        let socket = &next();
        let mut frontend = Frontend::connect(socket, CENALLOC_NUM_VQS as u64).unwrap();
        frontend.set_owner().unwrap();
        frontend.get_features().unwrap();
        frontend.set_features(self.features).unwrap();
        frontend.get_protocol_features().unwrap();
        frontend
            .set_protocol_features(VhostUserProtocolFeatures::CONFIG)
            .unwrap();
        frontend.set_mem_table(&self.ram.regions()).unwrap();
        frontend.get_features().unwrap();
        self.frontend = frontend;
        self.socket = socket.to_path_buf();
        for index in 0..CENALLOC_NUM_VQS {
            self.setup_queue(index, 0);
        }
    }

    /// The last entry of the control queue's used ring (head, length), and
    /// the used index taken back over it, in guest memory and in the
    /// harness: as if the device had written the answer but died before
    /// it put it on the used ring.
    pub fn unpublish_last_answer(&mut self) -> (u16, u32) {
        let used = self.control_used_idx().wrapping_sub(1);
        let entry = self.control.used + 4 + 8 * u64::from(used % QUEUE_SIZE);
        let bytes = self.ram.read(entry, 8);
        let head = u16::from_le_bytes(bytes[0..2].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        self.ram
            .mem
            .store(used, GuestAddress(self.control.used + 2), Ordering::Release)
            .unwrap();
        self.control.used_idx = used;
        self.control.notified = used;
        (head, len)
    }

    /// The control queue's used entry at `index` (head, length).
    pub fn control_used_entry(&self, index: u16) -> (u16, u32) {
        let entry = self.control.used + 4 + 8 * u64::from(index % QUEUE_SIZE);
        let bytes = self.ram.read(entry, 8);
        (
            u16::from_le_bytes(bytes[0..2].try_into().unwrap()),
            u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
        )
    }

    /// Takes what the call eventfd of queue `index` (0 control, 1 event)
    /// holds; then whether a used-buffer notification comes within
    /// `within` (without taking it).
    pub fn drain_call(&self, index: usize) {
        let queue = if index == 0 {
            &self.control
        } else {
            &self.events
        };
        let _ = queue.call.read();
    }

    pub fn notified_within(&self, index: usize, within: Duration) -> bool {
        let queue = if index == 0 {
            &self.control
        } else {
            &self.events
        };
        let mut pfd = libc::pollfd {
            fd: queue.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, bounded timeout.
        unsafe { libc::poll(&mut pfd, 1, within.as_millis() as libc::c_int) > 0 }
    }

    /// The control queue's avail index as the harness wrote it.
    pub fn control_avail_idx(&self) -> u16 {
        self.control.avail_idx
    }

    /// SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE of queue `index` with the
    /// harness's ring memory, starting at avail index `base`.
    fn setup_queue(&mut self, index: usize, base: u16) {
        self.try_setup_queue(index, base).unwrap()
    }

    fn try_setup_queue(&mut self, index: usize, base: u16) -> Result<(), vhost::Error> {
        self.try_setup_queue_with(index, base, |frontend, kick| {
            frontend.set_vring_kick(index, kick)
        })
    }

    /// [`Harness::start_queues`] for ring `index` alone.
    pub fn start_queue(&mut self, index: usize, base: u16) {
        self.setup_queue(index, base)
    }

    /// [`Harness::start_queue`], its SET_VRING_KICK
    /// sent by `send_kick` with the ring's kick eventfd (e.g. as raw
    /// frames on a clone of the front-end's stream) instead of the
    /// front-end: the other messages before and after it as usual.
    pub fn start_queue_with_kick(
        &mut self,
        index: usize,
        base: u16,
        send_kick: impl FnOnce(&EventFd),
    ) {
        self.try_setup_queue_with(index, base, |_, kick| {
            send_kick(kick);
            Ok(())
        })
        .unwrap()
    }

    fn try_setup_queue_with(
        &mut self,
        index: usize,
        base: u16,
        send_kick: impl FnOnce(&mut Frontend, &EventFd) -> Result<(), vhost::Error>,
    ) -> Result<(), vhost::Error> {
        let queue = if index == 0 {
            &self.control
        } else {
            &self.events
        };
        let data = VringConfigData {
            queue_max_size: QUEUE_SIZE,
            queue_size: QUEUE_SIZE,
            flags: 0,
            desc_table_addr: self.ram.host_address(queue.desc),
            used_ring_addr: self.ram.host_address(queue.used),
            avail_ring_addr: self.ram.host_address(queue.avail),
            log_addr: None,
        };
        self.frontend.set_vring_num(index, QUEUE_SIZE)?;
        self.frontend.set_vring_addr(index, &data)?;
        self.frontend.set_vring_base(index, base)?;
        self.frontend.set_vring_call(index, &queue.call)?;
        send_kick(&mut self.frontend, &queue.kick)?;
        self.frontend.set_vring_enable(index, true)
    }

    /// What QEMU does at a guest driver reset and restart: stop both rings
    /// (GET_VRING_BASE), then set them up again from scratch.
    pub fn restart_queues(&mut self) {
        for index in 0..CENALLOC_NUM_VQS {
            self.frontend.get_vring_base(index).unwrap();
        }
        self.ram.fill(0x1000, 0x6000, 0);
        self.control = Queue::new(0x1000);
        self.events = Queue::new(0x4000);
        for index in 0..CENALLOC_NUM_VQS {
            self.setup_queue(index, 0);
        }
    }

    /// What QEMU does at a VM pause (QMP `stop`), a snapshot or a cancelled
    /// migration: stop both rings with GET_VRING_BASE. Returns the bases.
    pub fn stop_queues(&mut self) -> Vec<u16> {
        (0..CENALLOC_NUM_VQS)
            .map(|index| {
                let base = self.frontend.get_vring_base(index).unwrap();
                u16::try_from(base).expect("vring base above 16 bits")
            })
            .collect()
    }

    /// ... and at the resume (QMP `cont`): the same rings again, each from
    /// the base GET_VRING_BASE returned.
    pub fn start_queues(&mut self, bases: &[u16]) {
        for (index, &base) in bases.iter().enumerate() {
            self.setup_queue(index, base);
        }
    }

    /// Stops and restarts both rings at their bases (a pause/resume).
    pub fn pause_resume(&mut self) {
        let bases = self.stop_queues();
        self.start_queues(&bases);
    }

    /// Kicks queue `index` (0 control, 1 event) without adding anything.
    pub fn kick(&self, index: usize) {
        let queue = if index == 0 {
            &self.control
        } else {
            &self.events
        };
        queue.kick.write(1).unwrap();
    }

    /// The avail index after which the device asks to be kicked
    /// (`avail_event`, EVENT_IDX): it writes it when it re-enables
    /// notifications at the end of a pass, i.e. once it took every chain
    /// up to there.
    pub fn avail_event(&self, index: usize) -> u16 {
        let queue = if index == 0 {
            &self.control
        } else {
            &self.events
        };
        let addr = queue.used + 4 + 8 * u64::from(QUEUE_SIZE);
        self.ram
            .mem
            .load(GuestAddress(addr), Ordering::Acquire)
            .unwrap()
    }

    /// Whether the last kick of queue `index` is still unread: the
    /// device's worker reads the kick eventfd right before it serves the
    /// ring, so once this is false it has taken what was posted before.
    pub fn kick_pending(&self, index: usize) -> bool {
        let queue = if index == 0 {
            &self.control
        } else {
            &self.events
        };
        let mut pfd = libc::pollfd {
            fd: queue.kick.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
    }

    /// Writes `idx` as the avail index of queue `index`, as a broken or
    /// malicious driver would, and kicks. The harness's own count is not
    /// changed.
    pub fn write_avail_idx(&self, index: usize, idx: u16) {
        let queue = if index == 0 {
            &self.control
        } else {
            &self.events
        };
        fence(Ordering::SeqCst);
        self.ram
            .mem
            .store(idx, GuestAddress(queue.avail + 2), Ordering::Release)
            .unwrap();
        fence(Ordering::SeqCst);
        queue.kick.write(1).unwrap();
    }

    /// Writes descriptor `desc_index` of the control queue's table as given
    /// (for chains a driver could not build with [`Chain`]).
    pub fn write_control_desc(&self, desc_index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.write_desc(self.control.desc, desc_index, addr, len, flags, next);
    }

    /// Publishes `head` as the next available chain of the control queue
    /// and kicks, without waiting.
    pub fn publish_control_head(&mut self, head: u16) {
        let queue = &mut self.control;
        let slot = queue.avail + 4 + 2 * u64::from(queue.avail_idx % QUEUE_SIZE);
        self.ram.write(slot, &head.to_le_bytes());
        queue.avail_idx = queue.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        self.ram
            .mem
            .store(
                queue.avail_idx,
                GuestAddress(queue.avail + 2),
                Ordering::Release,
            )
            .unwrap();
        fence(Ordering::SeqCst);
        queue.kick.write(1).unwrap();
    }

    /// After a ring the device gave up on: makes `avail` the control
    /// queue's avail index (in memory and in the harness) and takes the
    /// device's used index as it is, without kicking.
    pub fn resync_control(&mut self, avail: u16) {
        self.control.used_idx = self.control_used_idx();
        self.control.notified = self.control.used_idx;
        self.control.avail_idx = avail;
        fence(Ordering::SeqCst);
        self.ram
            .mem
            .store(
                avail,
                GuestAddress(self.control.avail + 2),
                Ordering::Release,
            )
            .unwrap();
        fence(Ordering::SeqCst);
    }

    /// The control queue's used index as the device wrote it.
    pub fn control_used_idx(&self) -> u16 {
        self.ram
            .mem
            .load(GuestAddress(self.control.used + 2), Ordering::Acquire)
            .unwrap()
    }

    pub fn event_idx(&self) -> bool {
        self.features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0
    }

    /// Scratch memory for one round of chains; reset per round.
    fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.scratch;
        let end = (addr + len.max(1) + 63) & !63;
        assert!(end <= SCRATCH_END, "scratch exhausted");
        self.scratch = end;
        addr
    }

    fn write_desc(&self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = table + 16 * u64::from(index);
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes[12..14].copy_from_slice(&flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&next.to_le_bytes());
        self.ram.write(base, &bytes);
    }

    /// Places `chains` on the control queue, kicks once, waits for all of
    /// them to be used; returns what the device wrote for each.
    pub fn submit(&mut self, chains: &[Chain]) -> Vec<Used> {
        self.submit_on(0, chains, true)
    }

    /// Posts chains on queue `index` (0 control, 1 event); with `wait`,
    /// waits for them all to come back.
    pub fn submit_on(&mut self, index: usize, chains: &[Chain], wait: bool) -> Vec<Used> {
        let posted = self.place(index, chains);
        if !wait {
            return Vec::new();
        }
        self.wait_posted(posted)
    }

    /// Places `chains` on the control queue and kicks without waiting; the
    /// answers come with [`Harness::wait_posted`].
    pub fn post(&mut self, chains: &[Chain]) -> Posted {
        self.place(0, chains)
    }

    /// Writes `chains` into queue `index` and kicks.
    fn place(&mut self, index: usize, chains: &[Chain]) -> Posted {
        self.scratch = if index == 0 {
            SCRATCH_START
        } else {
            SCRATCH_END - (2 << 20)
        };
        let mut next_desc: u16 = 0;
        let mut writable_areas: Vec<Vec<(u64, u32)>> = Vec::new();
        let mut heads = Vec::new();
        let table_of_queue = if index == 0 {
            self.control.desc
        } else {
            self.events.desc
        };
        for chain in chains {
            let mut areas = Vec::new();
            let mut placed: Vec<(u64, u32, u16)> = Vec::new();
            for desc in &chain.descs {
                match desc {
                    Desc::Readable(bytes) => {
                        let addr = self.alloc(bytes.len() as u64);
                        self.ram.write(addr, bytes);
                        placed.push((addr, bytes.len() as u32, 0));
                    }
                    Desc::Writable(len) => {
                        let addr = self.alloc(u64::from(*len));
                        self.ram.fill(addr, u64::from(*len), 0xEE);
                        areas.push((addr, *len));
                        placed.push((addr, *len, DESC_F_WRITE));
                    }
                    Desc::Raw { addr, len, write } => {
                        placed.push((*addr, *len, if *write { DESC_F_WRITE } else { 0 }));
                    }
                }
            }
            let head = next_desc;
            if chain.indirect {
                let table = self.alloc(16 * placed.len() as u64);
                for (i, &(addr, len, flags)) in placed.iter().enumerate() {
                    let last = i + 1 == placed.len();
                    let flags = flags | if last { 0 } else { DESC_F_NEXT };
                    self.write_desc(table, i as u16, addr, len, flags, (i + 1) as u16);
                }
                self.write_desc(
                    table_of_queue,
                    head,
                    table,
                    16 * placed.len() as u32,
                    DESC_F_INDIRECT,
                    0,
                );
                next_desc += 1;
            } else {
                for (i, &(addr, len, flags)) in placed.iter().enumerate() {
                    let last = i + 1 == placed.len();
                    let flags = flags | if last { 0 } else { DESC_F_NEXT };
                    let index = next_desc;
                    self.write_desc(table_of_queue, index, addr, len, flags, index + 1);
                    next_desc += 1;
                }
            }
            assert!(
                next_desc <= QUEUE_SIZE,
                "too many descriptors for one round"
            );
            heads.push(head);
            writable_areas.push(areas);
        }

        let event_idx = self.event_idx();
        let queue = if index == 0 {
            &mut self.control
        } else {
            &mut self.events
        };
        for &head in &heads {
            let slot = queue.avail + 4 + 2 * u64::from(queue.avail_idx % QUEUE_SIZE);
            self.ram.write(slot, &head.to_le_bytes());
            queue.avail_idx = queue.avail_idx.wrapping_add(1);
        }
        // A notification left from earlier rounds covers only what is used
        // now, not the chains about to be published; then ask for an
        // interrupt as soon as the device uses anything new.
        queue.take_notification(&self.ram);
        queue.arm(&self.ram, event_idx);
        fence(Ordering::SeqCst);
        self.ram
            .mem
            .store(
                queue.avail_idx,
                GuestAddress(queue.avail + 2),
                Ordering::Release,
            )
            .unwrap();
        fence(Ordering::SeqCst);
        queue.kick.write(1).unwrap();
        Posted {
            index,
            heads,
            writable_areas,
        }
    }

    /// Waits until every chain of `posted` is used; returns what the device
    /// wrote for each, in the order they were posted.
    pub fn wait_posted(&mut self, posted: Posted) -> Vec<Used> {
        let Posted {
            index,
            heads,
            writable_areas,
        } = posted;
        let queue = if index == 0 {
            &mut self.control
        } else {
            &mut self.events
        };
        let target = queue.used_idx.wrapping_add(heads.len() as u16);
        let used_addr = queue.used;
        let start = queue.used_idx;
        let owed_at = queue.avail_idx;
        let event_idx = self.features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        queue.wait_notified(&self.ram, event_idx, target, owed_at);
        let mut by_head = std::collections::HashMap::new();
        for i in 0..heads.len() as u16 {
            let entry = used_addr + 4 + 8 * u64::from(start.wrapping_add(i) % QUEUE_SIZE);
            let bytes = self.ram.read(entry, 8);
            let id = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
            let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
            by_head.insert(id as u16, len);
        }
        let queue = if index == 0 {
            &mut self.control
        } else {
            &mut self.events
        };
        queue.used_idx = target;
        heads
            .iter()
            .zip(writable_areas)
            .map(|(head, areas)| {
                let len = *by_head.get(head).expect("chain not returned");
                let mut written = Vec::new();
                for (addr, area_len) in areas {
                    written.extend(self.ram.read(addr, area_len as usize));
                }
                Used { len, written }
            })
            .collect()
    }

    /// Runs one batch in one chain (request in one descriptor, answer in
    /// one descriptor sized exactly).
    pub fn batch(&mut self, cmds: &[Cmd]) -> BatchAnswer {
        let chain = Chain::simple(encode_batch(cmds), response_len(cmds));
        let used = self.submit(&[chain]).remove(0);
        decode_batch(cmds, &used)
    }

    /// Runs one command alone; returns its answer.
    pub fn run(&mut self, cmd: Cmd) -> Answer {
        let answer = self.batch(std::slice::from_ref(&cmd));
        assert_eq!(answer.answers.len(), 1, "{answer:?}");
        answer.answers[0].clone()
    }

    /// Posts `count` event buffers of `len` bytes on the event queue
    /// (without waiting); they come back as events happen.
    pub fn post_event_buffers(&mut self, count: usize, len: u32) {
        let chains: Vec<Chain> = (0..count)
            .map(|_| Chain::new(vec![Desc::Writable(len)]))
            .collect();
        self.post_events_raw(&chains);
    }

    fn post_events_raw(&mut self, chains: &[Chain]) {
        // Event buffers live at the top of the scratch area, away from control chains.
        self.submit_on(1, chains, false);
    }

    /// Events the device returned so far (reads the used ring). The
    /// device delivers events inside the pass that produced them and
    /// notifies at its end, so every event buffer it used must come with a
    /// notification; each must hold exactly one event (the harness posts
    /// only buffers of one event's size, so anything shorter is a device
    /// that consumed a buffer without delivering).
    pub fn take_events(&mut self) -> Vec<Event> {
        let event_idx = self.event_idx();
        let queue = &mut self.events;
        let used_idx = queue.device_used_idx(&self.ram);
        if used_idx != queue.used_idx {
            queue.wait_notified(&self.ram, event_idx, used_idx, used_idx);
        }
        let mut out = Vec::new();
        while queue.used_idx != used_idx {
            let entry = queue.used + 4 + 8 * u64::from(queue.used_idx % QUEUE_SIZE);
            let bytes = self.ram.read(entry, 8);
            let id = u16::from_le_bytes(bytes[0..2].try_into().unwrap());
            let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
            assert_eq!(
                len as usize,
                size_of::<Event>(),
                "event buffer {id} returned with {len} bytes written"
            );
            // The descriptor's address tells where the event is.
            let desc = self.ram.read(queue.desc + 16 * u64::from(id), 16);
            let addr = u64::from_le_bytes(desc[0..8].try_into().unwrap());
            let mut event = Event::default();
            event
                .as_mut_slice()
                .copy_from_slice(&self.ram.read(addr, size_of::<Event>()));
            out.push(event);
            queue.used_idx = queue.used_idx.wrapping_add(1);
        }
        out
    }

    /// Donates memory for every pool of the config space: pools that must
    /// lie below 4 GiB from low RAM, the others from high RAM first.
    /// Returns the ranges donated per pool.
    pub fn donate_all(&mut self) -> Vec<Vec<(u64, u64)>> {
        let mut low_next = 16u64 << 20;
        let mut high_next = HIGH_BASE;
        let mut donated = Vec::new();
        let pools = self.config.pools;
        for (index, pool) in pools
            .iter()
            .take(self.config.num_pools as usize)
            .enumerate()
        {
            let align = u64::from(pool.align).max(4096);
            let size = pool.size;
            let below_4g = pool.placement & CENALLOC_PLACE_DMA32 != 0;
            let start = if !below_4g && high_next + size <= HIGH_BASE + HIGH_RAM {
                let start = (high_next + align - 1) & !(align - 1);
                high_next = start + size;
                start
            } else {
                let start = (low_next + align - 1) & !(align - 1);
                low_next = start + size;
                start
            };
            assert!(start + size <= HIGH_BASE + HIGH_RAM);
            // Garbage, so zeroing by the daemon shows.
            self.ram.fill(start, size, 0xA5);
            let ranges = vec![(start, size)];
            let answer = self.run(Cmd::pool_add(index as u32, &ranges));
            assert_eq!(answer.status, 0, "POOL_ADD {index}: {answer:?}");
            donated.push(ranges);
        }
        donated
    }
}

/// Reads 64-bit word `i` of a buffer from its segments, as the test sees
/// guest memory.
pub fn read_buffer(ram: &GuestRam, segments: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(addr, len) in segments {
        out.extend(ram.read(addr, len as usize));
    }
    out
}

pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = Fnv1a64::default();
    hash.update(bytes);
    hash.finish()
}

/// Segments of a MAP answer.
pub fn map_segments(answer: &Answer) -> (MapResp, Vec<(u64, u64)>) {
    let resp: MapResp = answer.get();
    let segments = (0..resp.num_segments as usize)
        .map(|i| {
            let range: Range = answer.get_at(24 + 16 * i);
            (range.addr, range.len)
        })
        .collect();
    (resp, segments)
}

pub fn errno(e: i32) -> i32 {
    -e
}

/// An in-process daemon serving several named VMs and a control socket.
pub struct TestDaemon {
    /// The VM sockets, in the order given.
    pub sockets: Vec<PathBuf>,
    pub control: PathBuf,
    pub registry: std::sync::Arc<cenalloc::registry::Registry>,
}

/// Starts an in-process daemon: one socket per `(name, config)`, a control
/// socket, the given daemon limits and control policy. Its threads serve
/// until the process ends.
pub fn spawn_vms(
    vms: &[(&str, DeviceConfig)],
    limits: cenalloc::registry::DaemonLimits,
    policy: cenalloc::control::server::ControlPolicy,
) -> TestDaemon {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("cenalloc-vms-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let registry = cenalloc::registry::Registry::new(limits);
    let permissions = cenalloc::listen::SocketPermissions::default();
    let mut sockets = Vec::new();
    for (name, config) in vms {
        let path = dir.join(format!("{name}.sock"));
        let (listener, _) = cenalloc::listen::bind(&path, permissions).unwrap();
        registry
            .add_socket(name, &path.display().to_string())
            .unwrap();
        let mut listener = Listener::from(listener);
        let (name, config, registry) = (name.to_string(), config.clone(), registry.clone());
        std::thread::spawn(move || {
            let _ = cenalloc::vhu_cenalloc::serve_vm(
                &mut listener,
                &name,
                &config,
                &cenalloc::config::Hooks::default(),
                &registry,
            );
        });
        sockets.push(path);
    }
    let control = dir.join("control.sock");
    let (listener, _) = cenalloc::listen::bind(&control, permissions).unwrap();
    cenalloc::control::server::spawn(listener, registry.clone(), policy).unwrap();
    TestDaemon {
        sockets,
        control,
        registry,
    }
}

impl Harness {
    /// Creates a buffer, attaches with `mask` and `types`, maps it; returns
    /// (buffer id, attachment id, segments).
    pub fn mapped_buffer(
        &mut self,
        size: u64,
        mask: u32,
        types: &[u32],
    ) -> (u32, u32, Vec<(u64, u64)>) {
        let answer = self.batch(&[
            Cmd::create(size, 0),
            Cmd::attach(CENALLOC_BATCH_REF, mask, types),
            Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL, 1024),
        ]);
        assert_eq!(answer.status, 0, "{answer:?}");
        let created: CreateResp = answer.answers[0].get();
        let attached: AttachResp = answer.answers[1].get();
        let (_, segments) = map_segments(&answer.answers[2]);
        (created.buffer_id, attached.attach_id, segments)
    }

    /// Unmaps, detaches and frees a buffer made by [`Harness::mapped_buffer`].
    pub fn release_buffer(&mut self, buffer: u32, attachment: u32) {
        let answer = self.batch(&[
            Cmd::unmap(attachment, CENALLOC_DIR_BIDIRECTIONAL),
            Cmd::detach(attachment),
            Cmd::free(buffer),
        ]);
        assert_eq!(answer.status, 0, "{answer:?}");
    }

    /// Sends the memory table again (what QEMU does after memory hotplug)
    /// and returns once the daemon has handled it: SET_MEM_TABLE has no
    /// reply here, and a command on the ring does not wait for it (the
    /// worker keeps serving from the table it has), so a GET_FEATURES
    /// behind it on the same connection is the fence.
    pub fn resend_memory_table(&mut self) {
        self.frontend.set_mem_table(&self.ram.regions()).unwrap();
        self.frontend.get_features().unwrap();
    }

    /// The device's FNV-1a 64 checksum of a buffer.
    pub fn device_checksum(&mut self, buffer: u32) -> u64 {
        let answer = self.run(Cmd::checksum(buffer));
        let resp: ChecksumResp = answer.ok().get();
        resp.checksum
    }
}

/// Runs one vhost-user request on its own thread and waits at most `bound`
/// for the answer: `Some((result, elapsed))`, or `None` when the daemon did
/// not answer in time (the thread is left blocked; the test fails anyway).
pub fn timed_request<T: Send + 'static>(
    frontend: &Frontend,
    bound: Duration,
    request: impl FnOnce(&mut Frontend) -> T + Send + 'static,
) -> Option<(T, Duration)> {
    let mut frontend = frontend.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let result = request(&mut frontend);
        let _ = tx.send((result, start.elapsed()));
    });
    rx.recv_timeout(bound).ok()
}

/// The `cenallocd` executable run as its own process, its log (stderr) in
/// a file; killed when dropped.
pub struct DaemonProcess {
    pub child: std::process::Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl DaemonProcess {
    /// Starts `cenallocd --socket-path SOCK ARGS` with `RUST_LOG=info` and
    /// waits for its socket.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with(args, |_| {})
    }

    /// [`DaemonProcess::spawn`], with `configure` applied to the command
    /// first (limits in a `pre_exec`, more VM sockets...).
    pub fn spawn_with(args: &[&str], configure: impl FnOnce(&mut std::process::Command)) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir().join(format!("cenallocd-proc-{}-{n}", std::process::id()));
        let socket = base.with_extension("sock");
        let log = base.with_extension("log");
        let _ = std::fs::remove_file(&socket);
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cenallocd"));
        command
            .arg("--socket-path")
            .arg(&socket)
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(File::create(&log).unwrap());
        configure(&mut command);
        let child = command.spawn().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "cenallocd never created its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        DaemonProcess { child, socket, log }
    }

    /// [`DaemonProcess::spawn`] with a control socket too; returns its
    /// path once it accepts.
    pub fn spawn_with_control(args: &[&str]) -> (Self, PathBuf) {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let control = std::env::temp_dir().join(format!(
            "cenallocd-proc-{}-{n}-control.sock",
            std::process::id()
        ));
        let mut all = vec!["--control-socket", control.to_str().unwrap()];
        all.extend_from_slice(args);
        let daemon = Self::spawn(&all);
        let deadline = Instant::now() + TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&control).is_err() {
            assert!(
                Instant::now() < deadline,
                "the control socket never accepted"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        (daemon, control)
    }

    /// What the daemon logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the daemon process holds now. Fails the test if the daemon
    /// exited (a zombie lists no descriptors, threads or mappings).
    pub fn held(&mut self) -> Held {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("cenallocd exited ({status}):\n{}", self.log_text());
        }
        let proc_dir = PathBuf::from(format!("/proc/{}", self.child.id()));
        let entries = |name: &str| std::fs::read_dir(proc_dir.join(name)).unwrap().count();
        let held = Held {
            fds: entries("fd"),
            threads: entries("task"),
            maps: std::fs::read_to_string(proc_dir.join("maps"))
                .unwrap()
                .lines()
                .count(),
        };
        assert!(
            held.fds > 0 && held.threads > 0 && held.maps > 0,
            "cenallocd holds nothing: {held:?}"
        );
        held
    }
}

/// What a process holds: open descriptors, threads, memory mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub fds: usize,
    pub threads: usize,
    pub maps: usize,
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
