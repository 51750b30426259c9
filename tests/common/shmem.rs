//! The front-end's half of cross-VM sharing (docs/design/cross-vm-sharing.md,
//! "What decides the shape" and section 8): what QEMU does for a
//! `vhost-user-test-device-pci` with VIRTIO shared memory regions, for a
//! test to play importer B against a back-end.
//!
//! - [`Window`]: B's view of one shared memory region, a `PROT_NONE`
//!   reservation into which mappings go `MAP_SHARED | MAP_FIXED`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::volatile_memory::VolatileSlice;

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
