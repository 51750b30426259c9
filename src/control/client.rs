//! The client side of the control protocol, for `cenallocctl` and any
//! host program: connect, send requests, receive answers and the
//! descriptors of an export, and map an exported buffer.
//!
//! ```no_run
//! use cenalloc::control::client::Client;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = Client::connect("/run/cenalloc/control.sock")?;
//! let export = client.export("vm1", 3, false)?;
//! let view = export.map()?;                  // one contiguous, read-only view
//! let mut frame = vec![0u8; view.len()];
//! view.read_at(0, &mut frame);
//! if export.is_valid() {
//!     // The whole read saw buffer 3's backing.
//! }
//! for segment in export.segments() {          // or one mapping per segment
//!     let segment = segment?;
//!     println!("{} bytes at guest address {:#x}", segment.len(), segment.gpa);
//! }
//! # Ok(()) }
//! ```
//!
//! An export stays usable (its descriptors and mappings stay valid memory)
//! after it is revoked; only its meaning changes: [`Export::status`] tells
//! why the segments no longer are the buffer.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::protocol::*;

/// Everything a control request can end in.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("cannot connect to {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    #[error("control protocol: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{0}")]
    Daemon(ErrorBody),
    #[error("mapping the export: {0}")]
    Map(io::Error),
    #[error("export {export}: {reason}")]
    NotContiguous { export: u64, reason: String },
}

impl Error {
    /// The daemon's error code, if the daemon answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Daemon(body) => Some(body.code),
            _ => None,
        }
    }
}

/// A connection to the daemon's control socket.
pub struct Client {
    stream: UnixStream,
    /// Bytes received past the last answer.
    pending: Vec<u8>,
    /// Descriptors received with bytes of `pending`.
    pending_files: Vec<File>,
}

/// The connection's socket (to poll it, or to see it closed).
impl AsFd for Client {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl Client {
    pub fn connect<P: AsRef<Path>>(path: P) -> Result<Self, Error> {
        let stream = UnixStream::connect(path.as_ref()).map_err(|source| Error::Connect {
            path: path.as_ref().to_path_buf(),
            source,
        })?;
        Ok(Client {
            stream,
            pending: Vec::new(),
            pending_files: Vec::new(),
        })
    }

    /// Sends one request and waits for its answer; returns the result and
    /// the descriptors that came with it.
    pub fn call(&mut self, request: &Request) -> Result<(serde_json::Value, Vec<File>), Error> {
        let (line, files) = match self.stream.write_all(&encode_request(request)) {
            Ok(()) => self.read_line()?,
            // A daemon that refuses a connection (its maximum of clients
            // reached) writes why and closes it, maybe before the request
            // came: that answer is still there to read.
            Err(e) => self.read_line().map_err(|_| Error::from(e))?,
        };
        let answer: Answer = serde_json::from_slice(&line)
            .map_err(|e| Error::Protocol(format!("bad answer: {e}")))?;
        if answer.v != PROTOCOL_VERSION {
            return Err(Error::Protocol(format!(
                "answer of protocol version {} (this client speaks {PROTOCOL_VERSION})",
                answer.v
            )));
        }
        match answer.outcome {
            Outcome::Ok(value) => Ok((value, files)),
            Outcome::Error(body) => Err(Error::Daemon(body)),
        }
    }

    /// Writes `bytes` to the daemon as they are, outside the protocol
    /// (tests: a client that leaves in the middle of a request).
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// [`Client::call`] for an answer of type `T` without descriptors.
    pub fn request<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, Error> {
        let (value, _) = self.call(request)?;
        serde_json::from_value(value).map_err(|e| Error::Protocol(format!("bad answer: {e}")))
    }

    /// Reads one answer line and the descriptors received with it.
    fn read_line(&mut self) -> Result<(Vec<u8>, Vec<File>), Error> {
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                // One answer at a time: descriptors belong to this line.
                return Ok((line, std::mem::take(&mut self.pending_files)));
            }
            if self.pending.len() > MAX_RESPONSE_BYTES {
                return Err(Error::Protocol(format!(
                    "answer longer than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            let mut fds: [RawFd; MAX_ANSWER_FDS] = [-1; MAX_ANSWER_FDS];
            let mut iov = [libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            }];
            // SAFETY: the iovec points at `chunk`, valid for its length and
            // only written as bytes.
            let received = unsafe { self.stream.recv_with_fds(&mut iov, &mut fds) };
            let (read, count) = match received {
                Ok(counts) => counts,
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) => return Err(Error::Io(io::Error::from_raw_os_error(e.errno()))),
            };
            for &fd in &fds[..count] {
                // SAFETY: recvmsg gave this process these descriptors; nobody
                // else owns them.
                let file = unsafe { File::from_raw_fd(fd) };
                // SAFETY: fcntl on a descriptor we own; no pointers.
                unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
                self.pending_files.push(file);
            }
            if read == 0 {
                return Err(Error::Protocol("the daemon closed the connection".into()));
            }
            self.pending.extend_from_slice(&chunk[..read]);
        }
    }

    pub fn hello(&mut self) -> Result<Hello, Error> {
        self.request(&Request::Hello {})
    }

    pub fn vms(&mut self) -> Result<Vec<VmInfo>, Error> {
        Ok(self.request::<Vms>(&Request::Vms {})?.vms)
    }

    pub fn buffers(&mut self, vm: Option<&str>) -> Result<Vec<BufferInfo>, Error> {
        let request = Request::Buffers {
            vm: vm.map(str::to_string),
        };
        Ok(self.request::<Buffers>(&request)?.buffers)
    }

    /// Cross-VM sharing, of one VM or of all.
    pub fn shares(&mut self, vm: Option<&str>) -> Result<Shares, Error> {
        let request = Request::Shares {
            vm: vm.map(str::to_string),
        };
        self.request::<Shares>(&request)
    }

    pub fn allocators(&mut self, vm: Option<&str>) -> Result<Vec<AllocatorInfo>, Error> {
        let request = Request::Allocators {
            vm: vm.map(str::to_string),
        };
        Ok(self.request::<Allocators>(&request)?.allocators)
    }

    pub fn stats(&mut self, vm: Option<&str>) -> Result<Stats, Error> {
        self.request(&Request::Stats {
            vm: vm.map(str::to_string),
        })
    }

    /// Exports buffer `buffer` of VM `vm`: read-only unless `writable`
    /// (which the daemon must allow).
    pub fn export(&mut self, vm: &str, buffer: u32, writable: bool) -> Result<Export, Error> {
        let (value, files) = self.call(&Request::Export {
            vm: vm.to_string(),
            buffer,
            writable,
        })?;
        let info: ExportInfo = serde_json::from_value(value)
            .map_err(|e| Error::Protocol(format!("bad export answer: {e}")))?;
        Export::new(info, files)
    }

    /// Gives export `id` back (closing the connection does too).
    pub fn release(&mut self, id: u64) -> Result<(), Error> {
        self.request::<Released>(&Request::Release { export: id })?;
        Ok(())
    }

    /// Asks the holder of `cenallocd --supervise` for a live upgrade, to
    /// the binary at its own path or to `binary`.
    pub fn upgrade(&mut self, binary: Option<&std::path::Path>) -> Result<Upgrading, Error> {
        self.request(&Request::Upgrade {
            binary: binary.map(std::path::Path::to_path_buf),
        })
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

/// A mapping owned by this module, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by the value; access goes
// through raw-pointer copies.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` at `offset` (page aligned), shared.
    fn new(fd: RawFd, offset: u64, len: usize, writable: bool) -> io::Result<Self> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset"))?;
        // SAFETY: a fresh mapping chosen by the kernel; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(ptr.cast())
            .map(|ptr| Mapping { ptr, len })
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping this value made, of this length.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// An exported buffer: its description, descriptors and status word.
pub struct Export {
    pub info: ExportInfo,
    files: Vec<File>,
    status: Mapping,
}

/// Why an export is no longer the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Valid,
    Revoked(Revocation),
    /// A status word this client does not know.
    Unknown(u64),
}

impl Export {
    fn new(info: ExportInfo, files: Vec<File>) -> Result<Self, Error> {
        if files.len() != info.fds as usize {
            return Err(Error::Protocol(format!(
                "export {} announced {} descriptors, {} arrived",
                info.export,
                info.fds,
                files.len()
            )));
        }
        let mut total = 0u64;
        for segment in &info.segments {
            if segment.fd as usize >= files.len() || segment.fd == info.status_fd {
                return Err(Error::Protocol(format!(
                    "export {}: segment names descriptor {}",
                    info.export, segment.fd
                )));
            }
            total = total.saturating_add(segment.len);
        }
        if total != info.size {
            return Err(Error::Protocol(format!(
                "export {}: segments hold {total} bytes, the buffer {}",
                info.export, info.size
            )));
        }
        let status_file = files.get(info.status_fd as usize).ok_or_else(|| {
            Error::Protocol(format!("export {}: no status descriptor", info.export))
        })?;
        let status = Mapping::new(status_file.as_raw_fd(), 0, page_size() as usize, false)
            .map_err(Error::Map)?;
        Ok(Export {
            info,
            files,
            status,
        })
    }

    /// The status word, read now.
    pub fn status(&self) -> Status {
        // Orders the reads of the buffer made before this call before the
        // load of the word (read, then check: the daemon sets the word
        // before it writes the pages for anything else).
        std::sync::atomic::fence(Ordering::SeqCst);
        // SAFETY: the status mapping is at least one page, page aligned,
        // and the daemon only ever stores whole words into it atomically.
        let word =
            unsafe { &*self.status.ptr.as_ptr().cast::<AtomicU64>() }.load(Ordering::Acquire);
        match (word, Revocation::from_word(word)) {
            (0, _) => Status::Valid,
            (_, Some(reason)) => Status::Revoked(reason),
            (word, None) => Status::Unknown(word),
        }
    }

    /// Whether the segments are still the buffer's backing.
    pub fn is_valid(&self) -> bool {
        self.status() == Status::Valid
    }

    /// The descriptor of segment `index`'s file (for passing on, e.g. to a
    /// GPU import).
    pub fn file(&self, index: u32) -> Option<&File> {
        self.files.get(index as usize)
    }

    /// Maps each segment on its own, in buffer order.
    pub fn segments(&self) -> impl Iterator<Item = Result<SegmentView, Error>> + '_ {
        let page = page_size();
        self.info.segments.iter().map(move |segment| {
            let fd = self.files[segment.fd as usize].as_raw_fd();
            let start = segment.offset - segment.offset % page;
            let lead = (segment.offset - start) as usize;
            let len = usize::try_from(segment.len)
                .map_err(|_| Error::Map(io::Error::other("segment too large")))?;
            let mapping =
                Mapping::new(fd, start, lead + len, self.info.writable).map_err(Error::Map)?;
            Ok(SegmentView {
                mapping,
                lead,
                len,
                gpa: segment.gpa,
            })
        })
    }

    /// Maps the whole buffer as one contiguous view: an address range is
    /// reserved, then each segment mapped into its place. Needs segments
    /// whose offsets and lengths are multiples of the page size (memfd and
    /// tmpfs guest memory; not hugetlbfs).
    pub fn map(&self) -> Result<ExportView, Error> {
        let page = page_size();
        let len = usize::try_from(self.info.size)
            .map_err(|_| Error::Map(io::Error::other("buffer too large")))?;
        if len == 0 {
            return Err(Error::NotContiguous {
                export: self.info.export,
                reason: "empty buffer".into(),
            });
        }
        for segment in &self.info.segments {
            if segment.offset % page != 0 || segment.len % page != 0 {
                return Err(Error::NotContiguous {
                    export: self.info.export,
                    reason: format!(
                        "segment at offset {:#x} of {:#x} bytes is not page aligned",
                        segment.offset, segment.len
                    ),
                });
            }
        }
        // SAFETY: reserving a fresh anonymous range chosen by the kernel.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::Map(io::Error::last_os_error()));
        }
        let Some(ptr) = NonNull::new(base.cast::<u8>()) else {
            return Err(Error::Map(io::Error::other("mmap returned null")));
        };
        let view = ExportView {
            mapping: Mapping { ptr, len },
        };
        let prot = if self.info.writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let mut done = 0usize;
        for segment in &self.info.segments {
            let seg_len = segment.len as usize;
            let offset = libc::off_t::try_from(segment.offset)
                .map_err(|_| Error::Map(io::Error::other("offset")))?;
            // SAFETY: `done + seg_len <= len` (the segments add up to the
            // size, checked in new()), so the fixed mapping replaces only
            // part of the range this view reserved and owns.
            let placed = unsafe {
                libc::mmap(
                    view.mapping.ptr.as_ptr().add(done).cast(),
                    seg_len,
                    prot,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    self.files[segment.fd as usize].as_raw_fd(),
                    offset,
                )
            };
            if placed == libc::MAP_FAILED {
                return Err(Error::Map(io::Error::last_os_error()));
            }
            done += seg_len;
        }
        Ok(view)
    }

    /// Copies the whole buffer out (through [`Export::map`], or segment by
    /// segment if it cannot be mapped contiguously).
    pub fn read(&self) -> Result<Vec<u8>, Error> {
        let mut out = vec![0u8; self.info.size as usize];
        match self.map() {
            Ok(view) => {
                view.read_at(0, &mut out);
            }
            Err(Error::NotContiguous { .. }) => {
                let mut done = 0;
                for segment in self.segments() {
                    let segment = segment?;
                    segment.read_at(0, &mut out[done..done + segment.len()]);
                    done += segment.len();
                }
            }
            Err(e) => return Err(e),
        }
        Ok(out)
    }
}

/// Copies `out.len()` bytes from `base + offset`, bounds checked against
/// `len`; returns how many it copied.
fn copy_from(base: *const u8, len: usize, offset: usize, out: &mut [u8]) -> usize {
    let count = out.len().min(len.saturating_sub(offset));
    if count > 0 {
        // SAFETY: `offset + count <= len` bytes of a live mapping; the
        // guest may change them concurrently, which a byte copy tolerates
        // (no reference to the shared memory is ever formed).
        unsafe { std::ptr::copy_nonoverlapping(base.add(offset), out.as_mut_ptr(), count) };
    }
    count
}

/// One segment of an export, mapped.
pub struct SegmentView {
    mapping: Mapping,
    /// Bytes before the segment in the page-aligned mapping.
    lead: usize,
    len: usize,
    pub gpa: u64,
}

impl SegmentView {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the segment in this process (memory shared with the guest).
    pub fn as_ptr(&self) -> *const u8 {
        // SAFETY: `lead` is inside the mapping.
        unsafe { self.mapping.ptr.as_ptr().add(self.lead) }
    }

    /// Copies bytes from `offset` into `out`; returns how many.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> usize {
        copy_from(self.as_ptr(), self.len, offset, out)
    }
}

/// A whole exported buffer mapped contiguously.
pub struct ExportView {
    mapping: Mapping,
}

impl ExportView {
    pub fn len(&self) -> usize {
        self.mapping.len
    }

    pub fn is_empty(&self) -> bool {
        self.mapping.len == 0
    }

    /// Start of the buffer in this process (memory shared with the guest:
    /// read it with copies, not references).
    pub fn as_ptr(&self) -> *const u8 {
        self.mapping.ptr.as_ptr()
    }

    /// Copies bytes from `offset` into `out`; returns how many.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> usize {
        copy_from(self.as_ptr(), self.len(), offset, out)
    }
}
