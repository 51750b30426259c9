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

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

use log::{info, warn};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::registry::{Revocation, StatusPage};

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
    let mut kept: Vec<StatusPage> = Vec::new();
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
        let answer = match file.map(StatusPage::adopt) {
            Some(Ok(page)) => {
                // Revoked or released words are final: those pages go.
                kept.retain(|page| page.get() == 0);
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
    // The serving process is gone: nothing else writes these words.
    let mut revoked = 0;
    for page in kept.iter().filter(|page| page.get() == 0) {
        page.set(Revocation::DaemonRestarted);
        revoked += 1;
    }
    if revoked > 0 {
        info!("serving process {pid} is gone: {revoked} exports revoked (daemon_restarted)");
    }
}
