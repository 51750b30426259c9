//! A throwaway vhost-user back-end that measures QEMU's VIRTIO shared memory
//! regions (issue 17, step 1 of docs/design/cross-vm-sharing.md); driven by
//! `qemu-scripts/shmem-probe`, results in docs/measurements.md.
//!
//! `shmem_probe SOCKET [REGION_MIB]` listens on SOCKET for one front-end,
//! offers protocol features REPLY_ACK, BACKEND_REQ, CONFIGURE_MEM_SLOTS and
//! SHMEM, and answers GET_SHMEM_CONFIG with one region, id 0, of REGION_MIB
//! MiB (64 by default). It serves no virtqueue. Every front-end message goes
//! to stderr with the host's CLOCK_MONOTONIC time (`[ SECONDS.MICROS]`), on
//! receipt and on return. It owns a memfd of the region's size and reads
//! commands on stdin, one per line, answering each with one line on stdout
//! (`ok ...` or `err ...`):
//!
//! - `map SHM_OFF FD_OFF LEN rw|ro rw|rdonly`: BACKEND_SHMEM_MAP of the memfd
//!   (flags WRITABLE or none; the fd as created, or reopened `O_RDONLY`
//!   through /proc/self/fd)
//! - `unmap SHM_OFF LEN`: BACKEND_SHMEM_UNMAP
//! - `hold MS`: the next GET_VRING_BASE answers MS milliseconds late
//! - `holdmem MS`: the next ADD_MEM_REG or REM_MEM_REG answers MS ms late
//! - `fill OFF LEN BYTE`, `peek OFF LEN`: the memfd's bytes, from the host
//! - `quit`
//!
//! Offsets and lengths are numbers, `0x` for hexadecimal.

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMMap, VhostUserMMapFlags, VhostUserMemoryRegion,
    VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Backend, BackendListener, Error, GpuBackend, Listener, Result, VhostUserBackendReqHandlerMut,
    VhostUserFrontendReqHandler,
};
use vhost::VhostUserMemoryRegionBase;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// CLOCK_MONOTONIC as `SECONDS.MICROS`, the clock QMP-side timestamps use
/// too (Python's `time.monotonic()`).
fn now() -> String {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    format!("{}.{:06}", ts.tv_sec, ts.tv_nsec / 1000)
}

macro_rules! note {
    ($($arg:tt)*) => {{
        eprintln!("[{:>17}] {}", now(), format_args!($($arg)*));
    }};
}

/// What a file the front-end sent is: the probe's memfd or another.
fn describe(file: &File, memfd_ino: u64) -> String {
    // SAFETY: fstat writes one stat we own; the fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0 {
        return "fstat failed".into();
    }
    let what = if st.st_ino == memfd_ino {
        "the probe's memfd"
    } else {
        "another file"
    };
    format!("fd ino {} size {} ({what})", st.st_ino, st.st_size)
}

struct Probe {
    region_len: u64,
    memfd_ino: u64,
    backend: Arc<Mutex<Option<Backend>>>,
    hold_ms: Arc<AtomicU64>,
    hold_mem_ms: Arc<AtomicU64>,
    bases: [u32; 8],
}

impl Probe {
    /// The `holdmem` delay, once, before a table change is answered.
    fn hold_mem(&self, what: &str) {
        let hold = self.hold_mem_ms.swap(0, Ordering::SeqCst);
        if hold > 0 {
            note!("  holding the {what} reply for {hold} ms");
            std::thread::sleep(Duration::from_millis(hold));
        }
        note!("done {what}");
    }
}

fn unsupported<T>(what: &'static str) -> Result<T> {
    note!("recv {what}: not supported");
    Err(Error::InvalidOperation(what))
}

impl VhostUserBackendReqHandlerMut for Probe {
    fn set_owner(&mut self) -> Result<()> {
        note!("recv SET_OWNER");
        Ok(())
    }
    fn reset_owner(&mut self) -> Result<()> {
        note!("recv RESET_OWNER");
        Ok(())
    }
    fn reset_device(&mut self) -> Result<()> {
        note!("recv RESET_DEVICE");
        Ok(())
    }
    fn get_features(&mut self) -> Result<u64> {
        note!("recv GET_FEATURES");
        Ok(VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES)
    }
    fn set_features(&mut self, features: u64) -> Result<()> {
        note!("recv SET_FEATURES {features:#x}");
        Ok(())
    }
    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        note!("recv SET_MEM_TABLE, {} regions", ctx.len());
        for (r, f) in ctx.iter().zip(files.iter()) {
            let (gpa, size, off) = (r.guest_phys_addr, r.memory_size, r.mmap_offset);
            note!(
                "  region gpa {gpa:#x} size {size:#x} mmap_offset {off:#x} {}",
                describe(f, self.memfd_ino)
            );
        }
        note!("done SET_MEM_TABLE");
        Ok(None)
    }
    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        note!("recv SET_VRING_NUM {index} {num}");
        Ok(())
    }
    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        note!(
            "recv SET_VRING_ADDR {index} desc {descriptor:#x} used {used:#x} avail {available:#x}"
        );
        Ok(())
    }
    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        note!("recv SET_VRING_BASE {index} {base}");
        if let Some(b) = self.bases.get_mut(index as usize) {
            *b = base;
        }
        Ok(())
    }
    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        note!("recv GET_VRING_BASE {index}");
        let hold = self.hold_ms.swap(0, Ordering::SeqCst);
        if hold > 0 {
            note!("  holding the GET_VRING_BASE reply for {hold} ms");
            std::thread::sleep(Duration::from_millis(hold));
        }
        let base = self.bases.get(index as usize).copied().unwrap_or(0);
        note!("done GET_VRING_BASE {index}: {base}");
        Ok(VhostUserVringState::new(index, base))
    }
    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        note!("recv SET_VRING_KICK {index} fd {}", fd.is_some());
        Ok(())
    }
    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        note!("recv SET_VRING_CALL {index} fd {}", fd.is_some());
        Ok(())
    }
    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        note!("recv SET_VRING_ERR {index} fd {}", fd.is_some());
        Ok(())
    }
    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        note!("recv GET_PROTOCOL_FEATURES");
        Ok(VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::SHMEM)
    }
    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        note!("recv SET_PROTOCOL_FEATURES {features:#x}");
        Ok(())
    }
    fn get_queue_num(&mut self) -> Result<u64> {
        note!("recv GET_QUEUE_NUM");
        Ok(2)
    }
    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        note!("recv SET_VRING_ENABLE {index} {enable}");
        Ok(())
    }
    fn get_config(&mut self, offset: u32, size: u32, _: VhostUserConfigFlags) -> Result<Vec<u8>> {
        note!("recv GET_CONFIG {offset} {size}");
        Ok(vec![0; size as usize])
    }
    fn set_config(&mut self, offset: u32, buf: &[u8], _: VhostUserConfigFlags) -> Result<()> {
        note!("recv SET_CONFIG {offset} {}", buf.len());
        Ok(())
    }
    fn set_backend_req_fd(&mut self, backend: Backend) {
        note!("recv SET_BACKEND_REQ_FD");
        backend.set_reply_ack_flag(true);
        backend.set_shmem_flag(true);
        *self.backend.lock().unwrap() = Some(backend);
    }
    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> Result<()> {
        unsupported("SET_GPU_SOCKET")
    }
    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        unsupported("GET_SHARED_OBJECT")
    }
    fn get_inflight_fd(&mut self, _: &VhostUserInflight) -> Result<(VhostUserInflight, File)> {
        unsupported("GET_INFLIGHT_FD")
    }
    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _file: File) -> Result<()> {
        unsupported("SET_INFLIGHT_FD")
    }
    fn get_max_mem_slots(&mut self) -> Result<u64> {
        note!("recv GET_MAX_MEM_SLOTS");
        Ok(509)
    }
    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        let (gpa, size, off) = (
            region.guest_phys_addr,
            region.memory_size,
            region.mmap_offset,
        );
        note!(
            "recv ADD_MEM_REG gpa {gpa:#x} size {size:#x} mmap_offset {off:#x} {}",
            describe(&fd, self.memfd_ino)
        );
        self.hold_mem("ADD_MEM_REG");
        Ok(None)
    }
    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> Result<()> {
        let (gpa, size) = (region.guest_phys_addr, region.memory_size);
        note!("recv REM_MEM_REG gpa {gpa:#x} size {size:#x}");
        self.hold_mem("REM_MEM_REG");
        Ok(())
    }
    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _fd: File,
    ) -> Result<Option<File>> {
        unsupported("SET_DEVICE_STATE_FD")
    }
    fn check_device_state(&mut self) -> Result<()> {
        unsupported("CHECK_DEVICE_STATE")
    }
    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        note!(
            "recv GET_SHMEM_CONFIG: one region, id 0, {:#x} bytes",
            self.region_len
        );
        Ok(VhostUserShMemConfig::new(1, &[self.region_len]))
    }
    fn set_log_base(&mut self, _: &VhostUserLog, _file: File) -> Result<()> {
        unsupported("SET_LOG_BASE")
    }
}

fn number(word: Option<&str>) -> std::result::Result<u64, String> {
    let word = word.ok_or("missing number")?;
    match word.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => word.parse(),
    }
    .map_err(|e| format!("{word}: {e}"))
}

/// Runs one command line; the answer's text.
fn command(
    line: &str,
    memfd: &File,
    backend: &Mutex<Option<Backend>>,
    hold_ms: &AtomicU64,
    hold_mem_ms: &AtomicU64,
) -> std::result::Result<String, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or("");
    match verb {
        "map" | "unmap" => {
            let shm_offset = number(words.next())?;
            let (fd_offset, len, writable, rdonly) = if verb == "map" {
                let fd_offset = number(words.next())?;
                let len = number(words.next())?;
                let writable = words.next() == Some("rw");
                let rdonly = words.next() == Some("rdonly");
                (fd_offset, len, writable, rdonly)
            } else {
                (0, number(words.next())?, false, false)
            };
            let flags = if writable {
                VhostUserMMapFlags::WRITABLE.bits()
            } else {
                0
            };
            let req = VhostUserMMap {
                shmid: 0,
                fd_offset,
                shm_offset,
                len,
                flags,
                ..Default::default()
            };
            let guard = backend.lock().unwrap();
            let backend = guard.as_ref().ok_or("no backend channel yet")?;
            let reopened;
            let fd: &File = if rdonly {
                reopened = File::open(format!("/proc/self/fd/{}", memfd.as_raw_fd()))
                    .map_err(|e| format!("O_RDONLY reopen: {e}"))?;
                &reopened
            } else {
                memfd
            };
            note!("send SHMEM_{} {line}", verb.to_uppercase());
            let result = if verb == "map" {
                backend.shmem_map(&req, fd)
            } else {
                backend.shmem_unmap(&req)
            };
            match result {
                Ok(v) => {
                    note!("reply SHMEM_{}: ok ({v})", verb.to_uppercase());
                    Ok(format!("{verb} replied ok"))
                }
                Err(e) => {
                    note!("reply SHMEM_{}: error: {e}", verb.to_uppercase());
                    Err(format!("{verb} replied with an error: {e}"))
                }
            }
        }
        "hold" => {
            let ms = number(words.next())?;
            hold_ms.store(ms, Ordering::SeqCst);
            note!("the next GET_VRING_BASE is held {ms} ms");
            Ok(format!("hold {ms}"))
        }
        "holdmem" => {
            let ms = number(words.next())?;
            hold_mem_ms.store(ms, Ordering::SeqCst);
            note!("the next ADD_MEM_REG or REM_MEM_REG is held {ms} ms");
            Ok(format!("holdmem {ms}"))
        }
        "fill" => {
            let (off, len, byte) = (
                number(words.next())?,
                number(words.next())?,
                number(words.next())?,
            );
            let buf = vec![byte as u8; len as usize];
            memfd.write_all_at(&buf, off).map_err(|e| e.to_string())?;
            Ok(format!("filled {len} bytes at {off:#x} with {byte:#04x}"))
        }
        "peek" => {
            let (off, len) = (number(words.next())?, number(words.next())?);
            let mut buf = vec![0u8; len as usize];
            memfd
                .read_exact_at(&mut buf, off)
                .map_err(|e| e.to_string())?;
            let hex: Vec<String> = buf.iter().map(|b| format!("{b:02x}")).collect();
            Ok(format!("peek {off:#x}: {}", hex.join("")))
        }
        _ => Err(format!("unknown command '{verb}'")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(socket) = args.first() else {
        eprintln!("usage: shmem_probe SOCKET [REGION_MIB]");
        std::process::exit(2);
    };
    let region_len = args.get(1).map_or(64, |m| m.parse::<u64>().unwrap_or(64)) << 20;

    // SAFETY: memfd_create with a NUL-terminated name; the fd is ours.
    let fd = unsafe { libc::memfd_create(c"shmem-probe".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: fd is a fresh memfd nobody else owns.
    let memfd = unsafe { File::from_raw_fd(fd) };
    memfd.set_len(region_len).expect("ftruncate");
    // SAFETY: fstat writes one stat we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    note!("memfd {fd}, ino {}, {region_len:#x} bytes", st.st_ino);

    let backend = Arc::new(Mutex::new(None));
    let hold_ms = Arc::new(AtomicU64::new(0));
    let hold_mem_ms = Arc::new(AtomicU64::new(0));
    let probe = Arc::new(Mutex::new(Probe {
        region_len,
        memfd_ino: st.st_ino,
        backend: backend.clone(),
        hold_ms: hold_ms.clone(),
        hold_mem_ms: hold_mem_ms.clone(),
        bases: [0; 8],
    }));
    let mut listener = Listener::new(socket, true).expect("listen");
    let mut listener = BackendListener::new(&mut listener, probe).expect("listener");
    note!("listening on {socket}");
    let mut handler = loop {
        if let Some(h) = listener.accept().expect("accept") {
            break h;
        }
    };
    note!("front-end connected");
    std::thread::spawn(move || loop {
        if let Err(e) = handler.handle_request() {
            note!("front-end channel: {e}");
            if matches!(
                e,
                Error::Disconnected
                    | Error::PartialMessage
                    | Error::SocketBroken(_)
                    | Error::SocketError(_)
            ) {
                note!("front-end gone");
                break;
            }
        }
    });

    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "quit" {
            break;
        }
        let answer = match command(line, &memfd, &backend, &hold_ms, &hold_mem_ms) {
            Ok(text) => format!("ok {text}"),
            Err(text) => format!("err {text}"),
        };
        let _ = writeln!(out, "{answer}");
        let _ = out.flush();
    }
    note!("quit");
}
