//! The front-end's half of cross-VM sharing (docs/design/cross-vm-sharing.md,
//! "What decides the shape" and section 8): what QEMU does for a
//! `vhost-user-test-device-pci` with VIRTIO shared memory regions, for a
//! test to play importer B against a back-end.
//!
//! - [`Window`]: B's view of one shared memory region, a `PROT_NONE`
//!   reservation into which mappings go `MAP_SHARED | MAP_FIXED`.
//! - [`QemuShmem`]: the backend channel's SHMEM_MAP / SHMEM_UNMAP handler
//!   with QEMU's rules, a log of what happened, and switches.
//! - [`Channel`]: the socket pair (QEMU's `vhost_setup_backend_channel`)
//!   and the thread serving QEMU's end.
//! - [`set_up_window`]: the protocol features, GET_MAX_MEM_SLOTS,
//!   SET_BACKEND_REQ_FD and GET_SHMEM_CONFIG, when the back-end offers them.
//!
//! QEMU's rules, read in the series that added the requests (its last
//! posting, v11 of "vhost-user: Add VirtIO Shared Memory map request",
//! which the maintainer queued for after 10.2; the merged tree itself was
//! not at hand) and in `system/physmem.c`:
//!
//! hw/virtio/vhost-user.c, `vhost_user_backend_handle_shmem_map`, in order:
//! no fd: -EBADF; the device has no region or none with this `shmid`
//! (`virtio_find_shmem_region`); `shm_offset + len` wraps or passes the
//! region's size; the range overlaps a mapping of the region
//! (`ranges_overlap` over the `mmaps` list); then
//! `virtio_shared_memory_mapping_new` (hw/virtio/virtio.c): `len == 0`,
//! `dup(fd)`, `memory_region_init_ram_from_fd(len, RAM_SHARED [|
//! RAM_READONLY_FD], fd, fd_offset)`, which in `qemu_ram_alloc_from_fd`
//! rounds `len` up to the host page and refuses a non-empty file shorter
//! than `fd_offset` + the rounded length (an empty file it grows with
//! `ftruncate`), and in `file_ram_alloc` refuses an `fd_offset` that is
//! not a multiple of the fd's page size (the hugetlbfs page for hugetlbfs)
//! before it mmaps the fd `MAP_SHARED`. Every refusal is a reply of 1 (no
//! errno: `payload.u64 = !!ret`), sent only if the request asked for one
//! (NEED_REPLY), and the channel stays open. A map is added inside a
//! memory transaction that is committed **after** the reply.
//!
//! `vhost_user_backend_handle_shmem_unmap`: the same region checks, then
//! `virtio_find_shmem_map`, which wants a mapping with exactly this
//! `shm_offset` and this `len` (a part of a mapping, a range covering two,
//! or a mapping already dropped are all "not found", reply 1, channel
//! open); the reply goes first, then `virtio_del_shmem_map` removes the
//! subregion and commits. `virtio_reset` drops every mapping of every
//! region without a word to the back-end (its vhost device is stopped by
//! then: the back-end learns from the table QEMU sends at the next start).
//!
//! Where this harness differs, on purpose: it refuses `shm_offset` or
//! `len` that are not whole host pages (QEMU takes them and rounds the
//! mmap up; a daemon must never send them, see the design's window
//! thread) and an empty file (QEMU would grow it). It maps a mapping
//! without `WRITABLE` `PROT_READ`, as the flag is documented; QEMU v11
//! passes only `RAM_READONLY_FD`, which selects how a *path* is opened,
//! not the mmap protection (that is `RAM_READONLY`), so QEMU maps it
//! read-write: an `O_RDONLY` fd is then refused (EACCES) and an `O_RDWR`
//! one is writable by the guest. A request whose payload is longer than
//! QEMU's largest payload closes the channel, as in QEMU's `backend_read`;
//! a request other than the two is answered 1 (QEMU serves IOTLB, config
//! change, host notifier and shared-object requests; nothing here sends
//! them).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserMMap, VhostUserMMapFlags, VhostUserProtocolFeatures,
    VhostUserShMemConfig,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserFrontendReqHandler};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vm_memory::volatile_memory::VolatileSlice;
use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Where the harness puts B's shared memory BAR in guest-physical space
/// (far above its RAM, which ends at 4 GiB + 64 MiB): the regions follow
/// each other from here, as in `vhost-user-test-device-pci`'s BAR 4.
pub const WINDOW_GPA: u64 = 1 << 40;

/// How often the serving thread looks at its switches.
const TICK: Duration = Duration::from_millis(10);

/// How long a message may take to arrive whole, or a reply to go out.
const IO_BOUND: Duration = Duration::from_secs(2);

/// How long stopping or dropping a channel waits for its thread.
const STOP_BOUND: Duration = Duration::from_secs(5);

/// QEMU's largest backend-channel payload (`VhostUserPayload`, whose
/// biggest member is the shared memory configuration).
const MAX_PAYLOAD: usize = size_of::<VhostUserShMemConfig>();

/// QEMU's `VHOST_USER_BACKEND_MAX_FDS`.
const MAX_FDS: usize = 8;

const HEADER_LEN: usize = 12;
const FLAG_REPLY: u32 = 1 << 2;
const FLAG_NEED_REPLY: u32 = 1 << 3;
const BACKEND_SHMEM_MAP: u32 = 9;
const BACKEND_SHMEM_UNMAP: u32 = 10;

/// `HUGETLBFS_MAGIC` (linux/magic.h).
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// The host's page size.
pub fn host_page_size() -> u64 {
    // SAFETY: sysconf with a valid name; no memory is passed.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).unwrap_or(4096)
}

/// QEMU's `qemu_fd_getpagesize`: the huge page size of a hugetlbfs file,
/// else the host's page size.
fn fd_page_size(file: &File) -> u64 {
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs writes one statfs into the buffer, which lives
    // through the call; the result is read only when it succeeded.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), fs.as_mut_ptr()) };
    if rc == 0 {
        // SAFETY: fstatfs succeeded, so it initialised the struct.
        let fs = unsafe { fs.assume_init() };
        #[allow(clippy::unnecessary_cast)]
        let (kind, block) = (fs.f_type as i64, fs.f_bsize as u64);
        if kind == HUGETLBFS_MAGIC {
            return block;
        }
    }
    host_page_size()
}

fn round_up(value: u64, align: u64) -> Option<u64> {
    value.checked_add(align - 1).map(|v| v / align * align)
}

/// A duplicate of `fd` (QEMU `dup()`s the fd of a map: the back-end may
/// close its own).
fn dup_file(fd: RawFd) -> io::Result<File> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor number; no memory is
    // passed, and an invalid number only fails.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor owned by nobody else.
    Ok(unsafe { File::from_raw_fd(new) })
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// One mapping of a file range into a shared memory region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub shm_offset: u64,
    pub len: u64,
    pub fd_offset: u64,
    /// `VhostUserMMapFlags::WRITABLE` was set: mapped read-write, else
    /// read-only.
    pub writable: bool,
    /// The mapped file's device and inode (how a back-end recognises the
    /// file in a memory table).
    pub dev: u64,
    pub ino: u64,
}

/// Why a window access or change did not happen (nothing was touched).
#[derive(Debug)]
pub enum WindowError {
    /// The range leaves the window.
    OutOfRange {
        offset: u64,
        len: u64,
    },
    /// Offset or length not in whole host pages.
    Unaligned {
        offset: u64,
        len: u64,
    },
    /// No mapping covers this offset.
    Unmapped {
        offset: u64,
    },
    /// A write reaches a read-only mapping here.
    ReadOnly {
        offset: u64,
    },
    /// The mapping's file no longer backs this offset (it shrank).
    BeyondEof {
        offset: u64,
    },
    /// A mapping is there already.
    Overlap {
        offset: u64,
        len: u64,
    },
    /// No mapping with exactly this offset and length.
    NotMapped {
        offset: u64,
        len: u64,
    },
    Os(io::Error),
}

impl fmt::Display for WindowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowError::OutOfRange { offset, len } => {
                write!(f, "{offset:#x}+{len:#x} leaves the window")
            }
            WindowError::Unaligned { offset, len } => {
                write!(f, "{offset:#x}+{len:#x} is not in whole pages")
            }
            WindowError::Unmapped { offset } => write!(f, "nothing mapped at {offset:#x}"),
            WindowError::ReadOnly { offset } => write!(f, "read-only mapping at {offset:#x}"),
            WindowError::BeyondEof { offset } => {
                write!(f, "the file no longer backs {offset:#x}")
            }
            WindowError::Overlap { offset, len } => {
                write!(f, "{offset:#x}+{len:#x} overlaps a mapping")
            }
            WindowError::NotMapped { offset, len } => {
                write!(f, "no mapping is exactly {offset:#x}+{len:#x}")
            }
            WindowError::Os(e) => write!(f, "{e}"),
        }
    }
}

/// A file range mapped into this process, in no window yet: QEMU maps the
/// fd before it replies, the guest reaches it once the transaction is
/// committed ([`Window::install`]). Unmapped when dropped uninstalled.
pub struct Staged {
    addr: usize,
    mapping: Mapping,
    file: Arc<File>,
}

impl Staged {
    /// Maps `mapping.len` bytes of `file` from `mapping.fd_offset`,
    /// `MAP_SHARED`, `PROT_READ` or read-write as `mapping.writable` says.
    pub fn map(file: Arc<File>, mapping: Mapping) -> io::Result<Staged> {
        let len =
            usize::try_from(mapping.len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let offset = libc::off_t::try_from(mapping.fd_offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let prot = if mapping.writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new shared mapping of a file at an address the kernel
        // picks: it touches no existing memory; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Staged {
            addr: addr as usize,
            mapping,
            file,
        })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.addr != 0 {
            // SAFETY: `addr` is this value's own mapping of `len` bytes,
            // never handed out (installing it sets `addr` to 0).
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.mapping.len as usize) };
        }
    }
}

struct Installed {
    mapping: Mapping,
    file: Arc<File>,
}

/// B's view of one VIRTIO shared memory region: `len` bytes reserved
/// `PROT_NONE`, mappings placed `MAP_FIXED` over the reservation and
/// replaced by `PROT_NONE` again when they go, as QEMU's subregions. Its
/// own table says what is mapped; reads and writes check it first, so an
/// access to an unmapped or read-only range is an error, never a fault.
pub struct Window {
    base: usize,
    len: u64,
    table: Mutex<BTreeMap<u64, Installed>>,
}

impl Window {
    /// Reserves `len` bytes (a power of two of at least a page, as QEMU
    /// wants of a region).
    pub fn new(len: u64) -> io::Result<Window> {
        if !len.is_power_of_two() || len < host_page_size() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a window of {len:#x} bytes: not a power of two of at least a page"),
            ));
        }
        let size = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a new private anonymous reservation at an address the
        // kernel picks; no existing memory is touched; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Window {
            base: base as usize,
            len,
            table: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn size(&self) -> u64 {
        self.len
    }

    /// The reservation's address in this process (QEMU's host address of
    /// the region, the `userspace_addr` of its memory-table entries).
    pub fn host_addr(&self) -> u64 {
        self.base as u64
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<u64, Installed>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is mapped, by offset.
    pub fn mappings(&self) -> Vec<Mapping> {
        self.table().values().map(|i| i.mapping.clone()).collect()
    }

    fn installed(&self) -> Vec<(Mapping, Arc<File>)> {
        self.table()
            .values()
            .map(|i| (i.mapping.clone(), i.file.clone()))
            .collect()
    }

    fn check_range(
        &self,
        table: &BTreeMap<u64, Installed>,
        offset: u64,
        len: u64,
    ) -> Result<(), WindowError> {
        let page = host_page_size();
        if offset.checked_add(len).map_or(true, |end| end > self.len) {
            return Err(WindowError::OutOfRange { offset, len });
        }
        if offset % page != 0 || len % page != 0 || len == 0 {
            return Err(WindowError::Unaligned { offset, len });
        }
        let overlaps = table.values().any(|i| {
            offset < i.mapping.shm_offset + i.mapping.len && i.mapping.shm_offset < offset + len
        });
        if overlaps {
            return Err(WindowError::Overlap { offset, len });
        }
        Ok(())
    }

    /// Moves a staged mapping to `staged.mapping.shm_offset` of the window.
    pub fn install(&self, mut staged: Staged) -> Result<Mapping, WindowError> {
        let mut table = self.table();
        let (offset, len) = (staged.mapping.shm_offset, staged.mapping.len);
        self.check_range(&table, offset, len)?;
        let target = self.base + offset as usize;
        // SAFETY: moves this process's own staged mapping (`len` bytes at
        // `staged.addr`, referenced nowhere else) onto the window's
        // reservation, which the table says holds no mapping there: only
        // `PROT_NONE` pages of this window are replaced.
        let moved = unsafe {
            libc::mremap(
                staged.addr as *mut libc::c_void,
                len as usize,
                len as usize,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                target as *mut libc::c_void,
            )
        };
        if moved == libc::MAP_FAILED {
            return Err(WindowError::Os(io::Error::last_os_error()));
        }
        staged.addr = 0;
        let mapping = staged.mapping.clone();
        table.insert(
            offset,
            Installed {
                mapping: mapping.clone(),
                file: staged.file.clone(),
            },
        );
        Ok(mapping)
    }

    /// Maps `len` bytes of `file` from `fd_offset` at `shm_offset`.
    pub fn map(
        &self,
        shm_offset: u64,
        len: u64,
        file: &File,
        fd_offset: u64,
        writable: bool,
    ) -> Result<Mapping, WindowError> {
        let file = Arc::new(file.try_clone().map_err(WindowError::Os)?);
        let meta = file.metadata().map_err(WindowError::Os)?;
        self.check_range(&self.table(), shm_offset, len)?;
        let mapping = Mapping {
            shm_offset,
            len,
            fd_offset,
            writable,
            dev: meta.dev(),
            ino: meta.ino(),
        };
        self.install(Staged::map(file, mapping).map_err(WindowError::Os)?)
    }

    fn reserve(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: replaces `len` bytes of this window's own range (a
        // mapping the table held, now forgotten) by `PROT_NONE` anonymous
        // memory; nothing else lives there.
        let addr = unsafe {
            libc::mmap(
                (self.base + offset as usize) as *mut libc::c_void,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Unmaps the mapping that is exactly `offset`..`offset + len`.
    pub fn unmap(&self, offset: u64, len: u64) -> Result<Mapping, WindowError> {
        self.remove(offset, len).map(|(mapping, _)| mapping)
    }

    fn remove(&self, offset: u64, len: u64) -> Result<(Mapping, Arc<File>), WindowError> {
        let mut table = self.table();
        if table.get(&offset).map_or(true, |i| i.mapping.len != len) {
            return Err(WindowError::NotMapped { offset, len });
        }
        self.reserve(offset, len).map_err(WindowError::Os)?;
        let gone = table.remove(&offset).expect("checked above");
        Ok((gone.mapping, gone.file))
    }

    /// Unmaps everything; returns what was mapped.
    pub fn clear(&self) -> Vec<Mapping> {
        let mut table = self.table();
        let mut gone = Vec::new();
        for (offset, installed) in std::mem::take(&mut *table) {
            if let Err(e) = self.reserve(offset, installed.mapping.len) {
                panic!("cannot unmap the window at {offset:#x}: {e}");
            }
            gone.push(installed.mapping);
        }
        gone
    }

    /// The host ranges behind `offset`..`offset + len`, if mappings cover
    /// it all (writable ones for a write) and their files still back it.
    fn cover(
        &self,
        table: &BTreeMap<u64, Installed>,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<Vec<(usize, usize)>, WindowError> {
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.len)
            .ok_or(WindowError::OutOfRange { offset, len })?;
        let page = host_page_size();
        let mut pieces = Vec::new();
        let mut at = offset;
        while at < end {
            let (&start, installed) = table
                .range(..=at)
                .next_back()
                .filter(|(&start, i)| at < start + i.mapping.len)
                .ok_or(WindowError::Unmapped { offset: at })?;
            let mapping = &installed.mapping;
            if write && !mapping.writable {
                return Err(WindowError::ReadOnly { offset: at });
            }
            let stop = end.min(start + mapping.len);
            let size = installed.file.metadata().map_err(WindowError::Os)?.len();
            let backed = round_up(size, page).unwrap_or(u64::MAX);
            if mapping.fd_offset + (stop - start) > backed {
                return Err(WindowError::BeyondEof { offset: at });
            }
            pieces.push((self.base + at as usize, (stop - at) as usize));
            at = stop;
        }
        Ok(pieces)
    }

    /// `len` bytes from `offset`, as B's guest reads them.
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, WindowError> {
        let table = self.table();
        let mut out = Vec::with_capacity(len as usize);
        for (addr, size) in self.cover(&table, offset, len, false)? {
            let mut piece = vec![0u8; size];
            // SAFETY: `cover` found this range mapped (readable) and backed
            // by its file, and the table lock held here keeps it mapped
            // until the copy is done; the memory is shared with other
            // processes, hence the volatile copy.
            let slice = unsafe { VolatileSlice::new(addr as *mut u8, size) };
            slice.copy_to(&mut piece[..]);
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    /// Writes `bytes` at `offset`, as B's guest would; refused (nothing
    /// written) unless writable mappings cover it all.
    pub fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), WindowError> {
        let table = self.table();
        let mut done = 0;
        for (addr, size) in self.cover(&table, offset, bytes.len() as u64, true)? {
            // SAFETY: `cover` found this range mapped read-write and backed
            // by its file; the table lock keeps it mapped during the copy.
            let slice = unsafe { VolatileSlice::new(addr as *mut u8, size) };
            slice.copy_from(&bytes[done..done + size]);
            done += size;
        }
        Ok(())
    }

    /// Whether `offset` is mapped, and writable, by the window's table.
    pub fn protection(&self, offset: u64) -> Option<bool> {
        let table = self.table();
        table
            .range(..=offset)
            .next_back()
            .filter(|(&start, i)| offset < start + i.mapping.len)
            .map(|(_, i)| i.mapping.writable)
    }

    /// The kernel's protection of the page at `offset` as /proc/self/maps
    /// shows it ("r--s", "rw-s", "---p"), to check the table against.
    pub fn kernel_protection(&self, offset: u64) -> Option<String> {
        let addr = self.base as u64 + offset;
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        maps.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let (start, end) = (
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            );
            (start <= addr && addr < end).then(|| fields.next().map(str::to_string))?
        })
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: the whole reservation is this window's; no reference
        // into it outlives the window (reads copy out under the lock).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len as usize) };
    }
}

/// Why QEMU refused a request (the reply was 1; nothing was mapped or
/// unmapped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No fd came with a map (QEMU: -EBADF).
    NoFd,
    /// No region with this `shmid` (`virtio_find_shmem_region`).
    NoRegion,
    /// `shm_offset + len` wraps or passes the region's end.
    OutOfRegion,
    /// The range overlaps a mapping of the region.
    Overlap,
    /// `len == 0` (`virtio_shared_memory_mapping_new`).
    ZeroLength,
    /// `shm_offset` or `len` not whole host pages, or `len` not whole
    /// pages of the fd (harness only: QEMU rounds up).
    Unaligned,
    /// `dup(fd)` failed.
    Dup(i32),
    /// fstat of the fd failed.
    Fstat(i32),
    /// The file is empty (harness only: QEMU would `ftruncate` it).
    EmptyFile,
    /// The file is shorter than `fd_offset` + `len` rounded up to the
    /// host page (`qemu_ram_alloc_from_fd`).
    FileTooSmall,
    /// `fd_offset` not a multiple of the fd's page size (`file_ram_alloc`).
    FdOffsetAlignment,
    /// mmap of the fd failed (e.g. EACCES: `WRITABLE` on an `O_RDONLY` fd).
    Mmap(i32),
    /// Unmap: no mapping with exactly this `shm_offset` and `len`
    /// (`virtio_find_shmem_map`).
    NotMapped,
    /// The test asked for the next request to fail ([`QemuShmem::fail_next`]).
    Injected,
}

/// A shared memory mapping as the vhost memory table carries it: what an
/// ADD_MEM_REG / REM_MEM_REG for the window says.
#[derive(Clone, Debug)]
pub struct WindowRegion {
    pub shmid: u8,
    pub mapping: Mapping,
    /// The region's BAR address plus `shm_offset`.
    pub guest_phys_addr: u64,
    /// The window's host address plus `shm_offset` (QEMU's HVA).
    pub userspace_addr: u64,
    /// The mapped file (QEMU's dup of the back-end's fd).
    pub file: Arc<File>,
}

impl WindowRegion {
    /// The vhost region (`mmap_offset` is the file offset, `mmap_handle`
    /// the file).
    pub fn info(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: self.guest_phys_addr,
            memory_size: self.mapping.len,
            userspace_addr: self.userspace_addr,
            mmap_offset: self.mapping.fd_offset,
            mmap_handle: self.file.as_raw_fd(),
        }
    }
}

/// What a memory transaction commit tells the back-ends about a window.
#[derive(Clone, Debug)]
pub enum Commit {
    Add(WindowRegion),
    Remove(WindowRegion),
}

impl Commit {
    pub fn region(&self) -> &WindowRegion {
        match self {
            Commit::Add(region) | Commit::Remove(region) => region,
        }
    }
}

/// Why a channel closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// [`Channel::drop_channel`].
    Dropped,
    /// [`Channel::stop`] or the channel dropped.
    Stopped,
    /// The back-end closed its end.
    ByPeer,
    /// A malformed message or a socket error (QEMU's `close_backend_channel`).
    Broken(String),
}

/// One entry of the log, in the order it happened (the index is the
/// sequence number); every entry has its time.
#[derive(Clone, Debug)]
pub enum Event {
    /// A SHMEM_MAP, decided (`received` when it arrived, `at` when QEMU
    /// handled it, later if replies were held).
    Map {
        shmid: u8,
        shm_offset: u64,
        fd_offset: u64,
        len: u64,
        flags: u64,
        ok: bool,
        refused: Option<Refusal>,
        received: Instant,
        at: Instant,
    },
    /// A SHMEM_UNMAP, decided.
    Unmap {
        shmid: u8,
        shm_offset: u64,
        len: u64,
        ok: bool,
        refused: Option<Refusal>,
        received: Instant,
        at: Instant,
    },
    /// Another backend request (answered 1).
    Other {
        request: u32,
        received: Instant,
        at: Instant,
    },
    /// The reply to the last request, logged as it is written (requests
    /// without NEED_REPLY get none).
    Replied {
        request: u32,
        value: u64,
        at: Instant,
    },
    /// A commit: the window changed at `at`, and `sent` says whether the
    /// on-commit hook was called (not while stopped, nor without a hook);
    /// `error` is what the hook returned.
    Commit {
        commit: Commit,
        sent: bool,
        error: Option<String>,
        at: Instant,
    },
    /// [`QemuShmem::reset`]: every mapping dropped.
    Reset { dropped: Vec<Mapping>, at: Instant },
    /// The channel closed.
    Closed { why: Closed, at: Instant },
}

impl Event {
    pub fn at(&self) -> Instant {
        match self {
            Event::Map { at, .. }
            | Event::Unmap { at, .. }
            | Event::Other { at, .. }
            | Event::Replied { at, .. }
            | Event::Commit { at, .. }
            | Event::Reset { at, .. }
            | Event::Closed { at, .. } => *at,
        }
    }
}

/// A switch that holds something until released.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    held: bool,
    credits: u64,
    waiting: usize,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hold(&self) {
        self.lock().held = true;
    }

    fn release(&self, count: u64) {
        self.lock().credits += count;
        self.changed.notify_all();
    }

    fn open(&self) {
        let mut state = self.lock();
        state.held = false;
        state.credits = 0;
        self.changed.notify_all();
    }

    fn waiting(&self) -> usize {
        self.lock().waiting
    }

    fn wait_waiting(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.waiting < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left.min(TICK))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Waits until the gate lets one through; false if `abort` said so
    /// first.
    fn pass(&self, abort: &dyn Fn() -> bool) -> bool {
        let mut state = self.lock();
        state.waiting += 1;
        self.changed.notify_all();
        let passed = loop {
            if !state.held {
                break true;
            }
            if state.credits > 0 {
                state.credits -= 1;
                break true;
            }
            if abort() {
                break false;
            }
            state = self
                .changed
                .wait_timeout(state, TICK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        state.waiting -= 1;
        self.changed.notify_all();
        passed
    }
}

/// The hook a commit calls (on the channel's thread, or the test's for
/// [`QemuShmem::resume`]), e.g. [`frontend_hook`].
pub type CommitHook = Box<dyn FnMut(&Commit) -> Result<(), String> + Send>;

struct Listed {
    mapping: Mapping,
}

struct Region {
    len: u64,
    gpa: u64,
    window: Arc<Window>,
    /// QEMU's `mmaps` list of the region.
    maps: BTreeMap<u64, Listed>,
}

enum Pending {
    Map {
        shmid: u8,
        staged: Staged,
        generation: u64,
    },
    Unmap {
        shmid: u8,
        shm_offset: u64,
        len: u64,
        generation: u64,
    },
}

#[derive(Default)]
struct State {
    regions: BTreeMap<u8, Region>,
    next_gpa: u64,
    /// Changes decided and replied, waiting for their commit.
    pending: VecDeque<Pending>,
    /// Bumped by a reset: older pending changes are void.
    generation: u64,
    stopped: bool,
    fail_next: u32,
    /// What the back-end was told (QEMU's vhost shadow table).
    told: BTreeMap<(u8, u64), WindowRegion>,
}

/// QEMU's backend-channel handler for VIRTIO shared memory: regions,
/// their mappings, the log and the switches. Served by a [`Channel`];
/// [`VhostUserFrontendReqHandler::shmem_map`] and `shmem_unmap` decide a
/// request (the window changes at the commit the channel makes after its
/// reply).
pub struct QemuShmem {
    state: Mutex<State>,
    log: Mutex<Vec<Event>>,
    logged: Condvar,
    hook: Mutex<Option<CommitHook>>,
    replies: Gate,
    commits: Gate,
    main_loop: Arc<parking_lot::Mutex<()>>,
    received: Mutex<Option<Instant>>,
}

impl QemuShmem {
    /// No region yet (QEMU before GET_SHMEM_CONFIG: every request refused).
    pub fn new() -> Arc<QemuShmem> {
        Arc::new(QemuShmem {
            state: Mutex::new(State {
                next_gpa: WINDOW_GPA,
                ..State::default()
            }),
            log: Mutex::new(Vec::new()),
            logged: Condvar::new(),
            hook: Mutex::new(None),
            replies: Gate::default(),
            commits: Gate::default(),
            main_loop: Arc::new(parking_lot::Mutex::new(())),
            received: Mutex::new(None),
        })
    }

    /// One region, `shmid` 0, of `len` bytes.
    pub fn with_region(len: u64) -> Arc<QemuShmem> {
        let shmem = QemuShmem::new();
        shmem.add_region(0, len).unwrap();
        shmem
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds region `shmid` of `len` bytes (a power of two), placed after
    /// the others in the BAR; returns its window.
    pub fn add_region(&self, shmid: u8, len: u64) -> io::Result<Arc<Window>> {
        let window = Arc::new(Window::new(len)?);
        let mut state = self.state();
        if state.regions.contains_key(&shmid) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("region {shmid} exists"),
            ));
        }
        let gpa = state.next_gpa;
        state.next_gpa += len;
        state.regions.insert(
            shmid,
            Region {
                len,
                gpa,
                window: window.clone(),
                maps: BTreeMap::new(),
            },
        );
        Ok(window)
    }

    /// Region `shmid`'s window.
    pub fn window(&self, shmid: u8) -> Option<Arc<Window>> {
        self.state().regions.get(&shmid).map(|r| r.window.clone())
    }

    /// Region `shmid`'s guest-physical address.
    pub fn region_gpa(&self, shmid: u8) -> Option<u64> {
        self.state().regions.get(&shmid).map(|r| r.gpa)
    }

    /// QEMU's list of region `shmid`'s mappings (it changes when a request
    /// is decided; the window at the commit).
    pub fn mappings(&self, shmid: u8) -> Vec<Mapping> {
        self.state()
            .regions
            .get(&shmid)
            .map(|r| r.maps.values().map(|l| l.mapping.clone()).collect())
            .unwrap_or_default()
    }

    /// What the back-end was last told of the windows (ADD_MEM_REG sent,
    /// no REM_MEM_REG since).
    pub fn told(&self) -> Vec<WindowRegion> {
        self.state().told.values().cloned().collect()
    }

    /// The hook every commit calls from now on.
    pub fn set_on_commit(&self, hook: CommitHook) {
        *self.hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// QEMU's main loop: the channel holds it while it handles a request,
    /// replies and commits, as do [`QemuShmem::reset`] and
    /// [`QemuShmem::resume`]. A test that takes it around its own
    /// front-end requests gets QEMU's exclusion (no channel request is
    /// served while the front-end waits for the back-end); do not call
    /// `reset` or `resume` while holding it.
    pub fn main_loop(&self) -> Arc<parking_lot::Mutex<()>> {
        self.main_loop.clone()
    }

    /// Requests wait unanswered (QEMU's main loop busy elsewhere) until
    /// released.
    pub fn hold_replies(&self) {
        self.replies.hold();
    }

    /// Lets `count` held requests be handled and answered.
    pub fn release_replies(&self, count: u64) {
        self.replies.release(count);
    }

    /// Stops holding requests (the waiting ones go on).
    pub fn unhold_replies(&self) {
        self.replies.open();
    }

    /// How many requests wait for a release.
    pub fn held_requests(&self) -> usize {
        self.replies.waiting()
    }

    /// Waits until `count` requests are held; false after `timeout`.
    pub fn wait_held(&self, count: usize, timeout: Duration) -> bool {
        self.replies.wait_waiting(count, timeout)
    }

    /// Holds commits after their reply (widens QEMU's gap between the
    /// reply and the commit, in which B's vCPUs still reach what was
    /// unmapped and not yet what was mapped).
    pub fn hold_commits(&self) {
        self.commits.hold();
    }

    pub fn release_commits(&self, count: u64) {
        self.commits.release(count);
    }

    pub fn unhold_commits(&self) {
        self.commits.open();
    }

    /// Waits until `count` commits are held; false after `timeout`.
    pub fn wait_held_commits(&self, count: usize, timeout: Duration) -> bool {
        self.commits.wait_waiting(count, timeout)
    }

    /// The next request is refused ([`Refusal::Injected`], reply 1).
    pub fn fail_next(&self) {
        self.state().fail_next += 1;
    }

    /// QEMU's `virtio_reset` of B's device: every mapping of every region
    /// goes at once and the back-end is told nothing (QEMU stopped the
    /// vhost device first: this marks it stopped; [`QemuShmem::resume`]
    /// sends what changed). A map or unmap replied but not committed yet
    /// is void.
    pub fn reset(&self) {
        let _main_loop = self.main_loop.lock();
        let dropped = {
            let mut state = self.state();
            state.generation += 1;
            state.stopped = true;
            state.pending.clear();
            let mut dropped = Vec::new();
            for region in state.regions.values_mut() {
                region.maps.clear();
                dropped.extend(region.window.clear());
            }
            dropped
        };
        self.push(Event::Reset {
            dropped,
            at: Instant::now(),
        });
    }

    /// B's vhost device stopped (`true`): commits change the window but
    /// tell the back-end nothing. `false` is [`QemuShmem::resume`].
    pub fn set_stopped(&self, stopped: bool) {
        if stopped {
            let _main_loop = self.main_loop.lock();
            self.state().stopped = true;
        } else {
            self.resume();
        }
    }

    /// B's vhost device starts again: QEMU sends the table, with
    /// CONFIGURE_MEM_SLOTS as the difference from what the back-end had
    /// (`vhost_user_add_remove_regions`: removals first, then additions),
    /// through the hook, on this thread.
    pub fn resume(&self) {
        let _main_loop = self.main_loop.lock();
        let (removals, additions) = {
            let mut state = self.state();
            state.stopped = false;
            let mut now = BTreeMap::new();
            for (&shmid, region) in &state.regions {
                for (mapping, file) in region.window.installed() {
                    let window_region = WindowRegion {
                        shmid,
                        guest_phys_addr: region.gpa + mapping.shm_offset,
                        userspace_addr: region.window.host_addr() + mapping.shm_offset,
                        mapping,
                        file,
                    };
                    now.insert((shmid, window_region.mapping.shm_offset), window_region);
                }
            }
            let removals: Vec<WindowRegion> = state
                .told
                .iter()
                .filter(|(key, told)| now.get(key).map_or(true, |n| n.mapping != told.mapping))
                .map(|(_, told)| told.clone())
                .collect();
            let additions: Vec<WindowRegion> = now
                .iter()
                .filter(|(key, n)| {
                    state
                        .told
                        .get(key)
                        .map_or(true, |told| told.mapping != n.mapping)
                })
                .map(|(_, n)| n.clone())
                .collect();
            (removals, additions)
        };
        for region in removals {
            self.send(Commit::Remove(region), true, Instant::now());
        }
        for region in additions {
            self.send(Commit::Add(region), true, Instant::now());
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> Vec<Event> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `done` holds of the log; false after `timeout`.
    pub fn wait_log(&self, timeout: Duration, done: impl Fn(&[Event]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        while !done(&log) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            log = self
                .logged
                .wait_timeout(log, left.min(TICK))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    fn push(&self, event: Event) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
        self.logged.notify_all();
    }

    fn received(&self) -> Instant {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(Instant::now)
    }

    /// `vhost_user_backend_handle_shmem_map` up to its reply.
    fn decide_map(&self, req: &VhostUserMMap, fd: Option<RawFd>) -> Result<(), Refusal> {
        let (shmid, fd_offset, shm_offset, len, flags) =
            (req.shmid, req.fd_offset, req.shm_offset, req.len, req.flags);
        let mut state = self.state();
        if state.fail_next > 0 {
            state.fail_next -= 1;
            return Err(Refusal::Injected);
        }
        let fd = fd.ok_or(Refusal::NoFd)?;
        let generation = state.generation;
        let region = state.regions.get_mut(&shmid).ok_or(Refusal::NoRegion)?;
        if shm_offset
            .checked_add(len)
            .map_or(true, |end| end > region.len)
        {
            return Err(Refusal::OutOfRegion);
        }
        let overlaps = region.maps.values().any(|l| {
            shm_offset < l.mapping.shm_offset + l.mapping.len
                && l.mapping.shm_offset < shm_offset + len
        });
        if overlaps {
            return Err(Refusal::Overlap);
        }
        if len == 0 {
            return Err(Refusal::ZeroLength);
        }
        let page = host_page_size();
        if shm_offset % page != 0 || len % page != 0 {
            return Err(Refusal::Unaligned);
        }
        let file = Arc::new(dup_file(fd).map_err(|e| Refusal::Dup(errno_of(&e)))?);
        let meta = file.metadata().map_err(|e| Refusal::Fstat(errno_of(&e)))?;
        if meta.len() == 0 {
            return Err(Refusal::EmptyFile);
        }
        let needed = round_up(len, page).and_then(|rounded| fd_offset.checked_add(rounded));
        if needed.map_or(true, |needed| meta.len() < needed) {
            return Err(Refusal::FileTooSmall);
        }
        let fd_page = fd_page_size(&file);
        if fd_offset % fd_page != 0 {
            return Err(Refusal::FdOffsetAlignment);
        }
        if len % fd_page != 0 {
            return Err(Refusal::Unaligned);
        }
        let mapping = Mapping {
            shm_offset,
            len,
            fd_offset,
            writable: flags & VhostUserMMapFlags::WRITABLE.bits() != 0,
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let staged = Staged::map(file, mapping.clone()).map_err(|e| Refusal::Mmap(errno_of(&e)))?;
        region.maps.insert(shm_offset, Listed { mapping });
        state.pending.push_back(Pending::Map {
            shmid,
            staged,
            generation,
        });
        Ok(())
    }

    /// `vhost_user_backend_handle_shmem_unmap` up to its reply.
    fn decide_unmap(&self, req: &VhostUserMMap) -> Result<(), Refusal> {
        let (shmid, shm_offset, len) = (req.shmid, req.shm_offset, req.len);
        let mut state = self.state();
        if state.fail_next > 0 {
            state.fail_next -= 1;
            return Err(Refusal::Injected);
        }
        let generation = state.generation;
        let region = state.regions.get_mut(&shmid).ok_or(Refusal::NoRegion)?;
        if shm_offset
            .checked_add(len)
            .map_or(true, |end| end > region.len)
        {
            return Err(Refusal::OutOfRegion);
        }
        if region
            .maps
            .get(&shm_offset)
            .map_or(true, |l| l.mapping.len != len)
        {
            return Err(Refusal::NotMapped);
        }
        // QEMU takes it off its list right after the reply, before it reads
        // another request: the same for the next request's checks.
        region.maps.remove(&shm_offset);
        state.pending.push_back(Pending::Unmap {
            shmid,
            shm_offset,
            len,
            generation,
        });
        Ok(())
    }

    fn map_request(&self, req: &VhostUserMMap, fd: Option<RawFd>) -> u64 {
        let received = self.received();
        let outcome = self.decide_map(req, fd);
        self.push(Event::Map {
            shmid: req.shmid,
            shm_offset: req.shm_offset,
            fd_offset: req.fd_offset,
            len: req.len,
            flags: req.flags,
            ok: outcome.is_ok(),
            refused: outcome.err(),
            received,
            at: Instant::now(),
        });
        u64::from(outcome.is_err())
    }

    fn unmap_request(&self, req: &VhostUserMMap) -> u64 {
        let received = self.received();
        let outcome = self.decide_unmap(req);
        self.push(Event::Unmap {
            shmid: req.shmid,
            shm_offset: req.shm_offset,
            len: req.len,
            ok: outcome.is_ok(),
            refused: outcome.err(),
            received,
            at: Instant::now(),
        });
        u64::from(outcome.is_err())
    }

    /// The commit after a reply: the window changes, then the hook (unless
    /// stopped).
    fn commit_pending(&self) {
        loop {
            let (commit, allowed) = {
                let mut state = self.state();
                let Some(pending) = state.pending.pop_front() else {
                    return;
                };
                let current = state.generation;
                let commit = match pending {
                    Pending::Map { generation, .. } | Pending::Unmap { generation, .. }
                        if generation != current =>
                    {
                        continue;
                    }
                    Pending::Map { shmid, staged, .. } => {
                        let region = &state.regions[&shmid];
                        let file = staged.file.clone();
                        let mapping = region.window.install(staged).unwrap_or_else(|e| {
                            panic!("window {shmid}: cannot install a map QEMU accepted: {e}")
                        });
                        Commit::Add(WindowRegion {
                            shmid,
                            guest_phys_addr: region.gpa + mapping.shm_offset,
                            userspace_addr: region.window.host_addr() + mapping.shm_offset,
                            mapping,
                            file,
                        })
                    }
                    Pending::Unmap {
                        shmid,
                        shm_offset,
                        len,
                        ..
                    } => {
                        let region = &state.regions[&shmid];
                        let (mapping, file) =
                            region.window.remove(shm_offset, len).unwrap_or_else(|e| {
                                panic!("window {shmid}: cannot remove an unmap QEMU accepted: {e}")
                            });
                        Commit::Remove(WindowRegion {
                            shmid,
                            guest_phys_addr: region.gpa + shm_offset,
                            userspace_addr: region.window.host_addr() + shm_offset,
                            mapping,
                            file,
                        })
                    }
                };
                (commit, !state.stopped)
            };
            self.send(commit, allowed, Instant::now());
        }
    }

    /// Tells the back-end through the hook (if `allowed` and there is
    /// one); logs the commit.
    fn send(&self, commit: Commit, allowed: bool, at: Instant) {
        let mut sent = false;
        let mut error = None;
        if allowed {
            let mut hook = self.hook.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(hook) = hook.as_mut() {
                sent = true;
                if let Err(e) = hook(&commit) {
                    error = Some(e);
                }
            }
        }
        if sent && error.is_none() {
            let mut state = self.state();
            let region = commit.region();
            let key = (region.shmid, region.mapping.shm_offset);
            match &commit {
                Commit::Add(region) => {
                    state.told.insert(key, region.clone());
                }
                Commit::Remove(_) => {
                    state.told.remove(&key);
                }
            }
        }
        self.push(Event::Commit {
            commit,
            sent,
            error,
            at,
        });
    }
}

impl VhostUserFrontendReqHandler for QemuShmem {
    /// Decides a map as QEMU does; `Ok(0)` or `Ok(1)`, QEMU's reply.
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> io::Result<u64> {
        Ok(self.map_request(req, Some(fd.as_raw_fd())))
    }

    /// Decides an unmap as QEMU does; `Ok(0)` or `Ok(1)`, QEMU's reply.
    fn shmem_unmap(&self, req: &VhostUserMMap) -> io::Result<u64> {
        Ok(self.unmap_request(req))
    }
}

/// Sends a commit on a front-end: ADD_MEM_REG or REM_MEM_REG (which need
/// CONFIGURE_MEM_SLOTS), then GET_FEATURES, whose answer comes once the
/// back-end has handled them (QEMU, with REPLY_ACK, waits for each).
pub fn send_commit(frontend: &mut Frontend, commit: &Commit) -> Result<(), vhost::Error> {
    match commit {
        Commit::Add(region) => frontend.add_mem_region(&region.info()).map(|_| ())?,
        Commit::Remove(region) => frontend.remove_mem_region(&region.info())?,
    }
    frontend.get_features().map(|_| ())
}

/// A hook sending every commit on `frontend` (a clone of the test VMM's
/// front-end: the same connection, its requests one at a time).
pub fn frontend_hook(mut frontend: Frontend) -> CommitHook {
    Box::new(move |commit| send_commit(&mut frontend, commit).map_err(|e| e.to_string()))
}

/// One backend request as read off the channel.
struct Message {
    request: u32,
    flags: u32,
    payload: Vec<u8>,
    files: Vec<File>,
}

/// Reads one message: `Ok(None)` when the back-end closed its end.
fn read_message(stream: &UnixStream) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER_LEN];
    let mut fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: header.len(),
    }];
    // SAFETY: the iovec points at `header`, which outlives the call and may
    // take any bytes; the received descriptors are owned below.
    let (got, nfds) = unsafe { stream.recv_with_fds(&mut iov, &mut fds) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let files: Vec<File> = fds[..nfds]
        .iter()
        // SAFETY: each received descriptor is new and owned by nobody else.
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    if got == 0 {
        return Ok(None);
    }
    (&*stream).read_exact(&mut header[got..])?;
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
    let (request, flags, size) = (word(0), word(4), word(8) as usize);
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("request {request}: payload of {size} bytes"),
        ));
    }
    let mut payload = vec![0u8; size];
    (&*stream).read_exact(&mut payload)?;
    Ok(Some(Message {
        request,
        flags,
        payload,
        files,
    }))
}

/// QEMU's `vhost_user_send_resp`: the request's header, REPLY set and
/// NEED_REPLY cleared, and a u64.
fn write_reply(stream: &UnixStream, message: &Message, value: u64) -> io::Result<()> {
    let mut reply = Vec::with_capacity(HEADER_LEN + 8);
    reply.extend_from_slice(&message.request.to_le_bytes());
    reply.extend_from_slice(&((message.flags & !FLAG_NEED_REPLY) | FLAG_REPLY).to_le_bytes());
    reply.extend_from_slice(&8u32.to_le_bytes());
    reply.extend_from_slice(&value.to_le_bytes());
    (&*stream).write_all(&reply)
}

fn readable(stream: &UnixStream, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call, bounded wait.
    let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    match ready {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

#[derive(Default)]
struct Control {
    stop: AtomicBool,
    dropping: AtomicBool,
    closed: Mutex<bool>,
    closed_changed: Condvar,
}

impl Control {
    fn aborted(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.dropping.load(Ordering::Acquire)
    }

    fn why(&self) -> Closed {
        if self.dropping.load(Ordering::Acquire) {
            Closed::Dropped
        } else {
            Closed::Stopped
        }
    }

    fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        while !*closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            closed = self
                .closed_changed
                .wait_timeout(closed, left.min(TICK))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// QEMU's `backend_read` loop on its end of the channel.
fn serve(stream: UnixStream, shmem: Arc<QemuShmem>, control: Arc<Control>) {
    let why = serve_until_closed(&stream, &shmem, &control);
    drop(stream);
    {
        // Both under the log's lock: whoever sees one sees the other.
        let mut log = shmem.log.lock().unwrap_or_else(|p| p.into_inner());
        log.push(Event::Closed {
            why,
            at: Instant::now(),
        });
        *control.closed.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }
    shmem.logged.notify_all();
    control.closed_changed.notify_all();
}

fn serve_until_closed(stream: &UnixStream, shmem: &QemuShmem, control: &Control) -> Closed {
    if let Err(e) = stream
        .set_read_timeout(Some(IO_BOUND))
        .and_then(|()| stream.set_write_timeout(Some(IO_BOUND)))
    {
        return Closed::Broken(e.to_string());
    }
    let aborted = || control.aborted();
    loop {
        if aborted() {
            return control.why();
        }
        match readable(stream, TICK) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => return Closed::Broken(e.to_string()),
        }
        let received = Instant::now();
        let mut message = match read_message(stream) {
            Ok(Some(message)) => message,
            Ok(None) => return Closed::ByPeer,
            Err(e) => return Closed::Broken(e.to_string()),
        };
        // Held: QEMU's main loop has not read it yet.
        if !shmem.replies.pass(&aborted) {
            return control.why();
        }
        let Some(main_loop) = lock_main_loop(shmem, &aborted) else {
            return control.why();
        };
        *shmem.received.lock().unwrap_or_else(|p| p.into_inner()) = Some(received);
        let value = match message.request {
            BACKEND_SHMEM_MAP | BACKEND_SHMEM_UNMAP => {
                let mut req = VhostUserMMap::default();
                let take = message.payload.len().min(size_of::<VhostUserMMap>());
                req.as_mut_slice()[..take].copy_from_slice(&message.payload[..take]);
                if message.request == BACKEND_SHMEM_MAP {
                    shmem.map_request(&req, message.files.first().map(|f| f.as_raw_fd()))
                } else {
                    shmem.unmap_request(&req)
                }
            }
            request => {
                shmem.push(Event::Other {
                    request,
                    received: shmem.received(),
                    at: Instant::now(),
                });
                1
            }
        };
        // QEMU closes every fd the message brought once it is handled.
        drop(std::mem::take(&mut message.files));
        if message.flags & FLAG_NEED_REPLY != 0 {
            // Logged as it goes out, so that a back-end holding the reply
            // finds it in the log.
            shmem.push(Event::Replied {
                request: message.request,
                value,
                at: Instant::now(),
            });
            if let Err(e) = write_reply(stream, &message, value) {
                return Closed::Broken(format!("reply: {e}"));
            }
        }
        drop(main_loop);
        if !shmem.commits.pass(&aborted) {
            return control.why();
        }
        let Some(main_loop) = lock_main_loop(shmem, &aborted) else {
            return control.why();
        };
        shmem.commit_pending();
        drop(main_loop);
    }
}

fn lock_main_loop<'a>(
    shmem: &'a QemuShmem,
    aborted: &dyn Fn() -> bool,
) -> Option<parking_lot::MutexGuard<'a, ()>> {
    loop {
        if let Some(guard) = shmem.main_loop.try_lock_for(TICK) {
            return Some(guard);
        }
        if aborted() {
            return None;
        }
    }
}

/// The backend request channel: QEMU's socket pair, its end served on a
/// thread of its own (stopped and joined when dropped).
pub struct Channel {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
    backend_end: Option<UnixStream>,
}

impl Channel {
    /// Makes the pair and serves one end for `shmem`.
    pub fn spawn(shmem: &Arc<QemuShmem>) -> io::Result<Channel> {
        let (ours, theirs) = UnixStream::pair()?;
        let control = Arc::new(Control::default());
        let thread = {
            let (shmem, control) = (shmem.clone(), control.clone());
            std::thread::Builder::new()
                .name("qemu-backend-channel".into())
                .spawn(move || serve(ours, shmem, control))?
        };
        Ok(Channel {
            control,
            thread: Some(thread),
            backend_end: Some(theirs),
        })
    }

    /// The back-end's end (for SET_BACKEND_REQ_FD, or for a test's
    /// `Backend::from_stream`): QEMU closes its copy once sent.
    pub fn take_backend_end(&mut self) -> Option<UnixStream> {
        self.backend_end.take()
    }

    /// QEMU's `close_backend_channel`: the channel closes now, a held
    /// request unanswered. True once it is closed.
    pub fn drop_channel(&self) -> bool {
        self.control.dropping.store(true, Ordering::Release);
        self.control.wait_closed(STOP_BOUND)
    }

    pub fn is_closed(&self) -> bool {
        *self
            .control
            .closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Stops serving and joins the thread (given up after a bound, e.g. if
    /// a hook blocks on a back-end that never answers).
    pub fn stop(&mut self) {
        self.control.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            if self.control.wait_closed(STOP_BOUND) {
                let _ = thread.join();
            } else {
                eprintln!("the backend channel thread did not stop within {STOP_BOUND:?}");
            }
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The protocol features a front-end with a window takes when the
/// back-end offers them (QEMU's `vhost-user-test-device-pci`).
pub fn window_features(offered: VhostUserProtocolFeatures) -> VhostUserProtocolFeatures {
    offered
        & (VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::SHMEM
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
}

/// What [`set_up_window`] did.
pub struct WindowSetUp {
    pub acked: VhostUserProtocolFeatures,
    /// GET_MAX_MEM_SLOTS's answer (with CONFIGURE_MEM_SLOTS).
    pub max_mem_slots: Option<u64>,
    /// The regions GET_SHMEM_CONFIG gave (`shmid`, size), added to the
    /// handler (with SHMEM).
    pub regions: Vec<(u8, u64)>,
    /// The backend channel (with BACKEND_REQ); keep it alive.
    pub channel: Option<Channel>,
}

/// The rest of QEMU's set-up once SET_PROTOCOL_FEATURES(`acked`) is sent
/// (`vhost_user_backend_init`, then `vhost-user-base` realize):
/// GET_MAX_MEM_SLOTS, the backend channel and SET_BACKEND_REQ_FD (with
/// NEED_REPLY if REPLY_ACK is acked, as QEMU sends it),
/// GET_SHMEM_CONFIG (every region of non-zero size, its index the
/// `shmid`), each only if acked.
pub fn set_up_window(
    frontend: &mut Frontend,
    acked: VhostUserProtocolFeatures,
    shmem: &Arc<QemuShmem>,
) -> Result<WindowSetUp, vhost::Error> {
    let max_mem_slots = if acked.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS) {
        Some(frontend.get_max_mem_slots()?)
    } else {
        None
    };
    let channel = if acked.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
        let mut channel = Channel::spawn(shmem).map_err(vhost::Error::IOError)?;
        let end = channel
            .take_backend_end()
            .expect("a new channel has its end");
        // QEMU asks for its ack when REPLY_ACK is taken
        // (`vhost_setup_backend_channel`).
        if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let set = frontend.set_backend_request_fd(&end);
        frontend.set_hdr_flags(VhostUserHeaderFlag::empty());
        set?;
        drop(end);
        Some(channel)
    } else {
        None
    };
    let mut regions = Vec::new();
    if acked.contains(VhostUserProtocolFeatures::SHMEM) {
        let config = frontend.get_shmem_config()?;
        for (shmid, &size) in config.memory_sizes.iter().enumerate() {
            if size != 0 {
                let shmid = shmid as u8;
                shmem
                    .add_region(shmid, size)
                    .map_err(vhost::Error::IOError)?;
                regions.push((shmid, size));
            }
        }
    }
    Ok(WindowSetUp {
        acked,
        max_mem_slots,
        regions,
        channel,
    })
}
