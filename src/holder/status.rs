//! The holder as the keeper of a serving process's export status pages.
//!
//! An export's status word (src/registry/exports.rs) is written through
//! the mapping of the process that made it, and the page is then sealed
//! against every other writer: once that process is gone, nothing could
//! revoke the export, and a host program would go on trusting segments
//! the guest reuses. So under `--supervise` each serving process sends
//! every status page to the holder before it seals it (one SOCK_SEQPACKET
//! channel per serving process, `--status-fd`); the holder maps it
//! read-write, acknowledges, and when the channel ends (the process died
//! or was upgraded) writes [`Revocation::DaemonRestarted`] into every page
//! whose word is still 0. Pages whose word is already set (revoked or
//! released: final) are dropped as new ones come, so the holder keeps at
//! most one page per live export.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{info, warn};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::registry::exports::STATUS_PAGE_BYTES;
use crate::registry::Revocation;

/// One status page mapped read-write in the holder.
struct Kept {
    word: NonNull<AtomicU64>,
    _file: std::fs::File,
}

impl Kept {
    fn word(&self) -> &AtomicU64 {
        // SAFETY: `word` is the start of a live, page-aligned shared
        // mapping of STATUS_PAGE_BYTES, unmapped only in Drop.
        unsafe { self.word.as_ref() }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `keep`, of that length, unused after.
        unsafe { libc::munmap(self.word.as_ptr().cast(), STATUS_PAGE_BYTES) };
    }
}

/// Maps a status page the serving process sent.
fn keep(file: std::fs::File) -> std::io::Result<Kept> {
    if file.metadata()?.len() != STATUS_PAGE_BYTES as u64 {
        return Err(std::io::Error::other("not a status page"));
    }
    // SAFETY: a shared mapping of the whole page-sized file; checked
    // below, unmapped in Drop.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STATUS_PAGE_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let word = NonNull::new(ptr.cast::<AtomicU64>())
        .ok_or_else(|| std::io::Error::other("mmap returned a null mapping"))?;
    Ok(Kept { word, _file: file })
}

/// A channel pair: the holder's end, and the serving process's end (to
/// hand down).
pub fn channel() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two descriptors into `fds` on success.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Keeps the status pages serving process `pid` sends on `channel` until
/// the channel ends, then revokes those still valid. Runs on a thread of
/// its own per serving process.
pub fn keep_pages(channel: OwnedFd, pid: i32) {
    let socket = UnixDatagram::from(channel);
    let mut kept: Vec<Kept> = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        let (read, file) = match socket.recv_with_fd(&mut byte) {
            Ok(received) => received,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(_) => (0, None),
        };
        if read == 0 {
            break;
        }
        let answer = match file.map(keep) {
            Some(Ok(page)) => {
                // Revoked or released words are final: those pages go.
                kept.retain(|page| page.word().load(Ordering::Acquire) == 0);
                kept.push(page);
                1u8
            }
            Some(Err(e)) => {
                warn!("serving process {pid}: a status page that cannot be kept: {e}");
                0
            }
            None => 0,
        };
        if socket.send(&[answer]).is_err() {
            break;
        }
    }
    let revoked = kept
        .iter()
        .filter(|page| {
            page.word()
                .compare_exchange(
                    0,
                    Revocation::DaemonRestarted as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        })
        .count();
    if revoked > 0 {
        info!("serving process {pid} is gone: {revoked} exports revoked (daemon_restarted)");
    }
}
