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
//!
//! The same channel carries the binary a control client's upgrade asks
//! for (`cenallocctl upgrade --binary PATH`), which the upgrade eventfd
//! cannot: before the serving process writes the eventfd it sends
//! [`MSG_UPGRADE_BINARY`] and the path (none: the holder's own path); the
//! holder checks and opens the file ([`super::binary::Binary::open`]) and
//! answers, the serving process refuses the request if the holder did.
//!
//! Messages (SOCK_SEQPACKET keeps their bounds), by their first byte:
//! [`MSG_PAGE`] with one descriptor, [`MSG_UPGRADE_BINARY`] with at most
//! [`super::binary::MAX_PATH_BYTES`] bytes of path. Answers: `1`, or `0`
//! and at most [`MAX_ANSWER`]` - 1` bytes saying why. Anything else is
//! refused.

use std::ffi::OsStr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};

use log::{info, warn};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::binary::{Allowed, Binary, MAX_PATH_BYTES};
use crate::registry::{Revocation, StatusPage};

/// A status page, with its descriptor.
pub const MSG_PAGE: u8 = 1;
/// The binary of the upgrade about to be asked, then its path's bytes
/// (none: the holder's own path).
pub const MSG_UPGRADE_BINARY: u8 = 2;
/// Largest message the holder takes.
pub const MAX_MESSAGE: usize = 1 + MAX_PATH_BYTES;
/// Largest answer.
pub const MAX_ANSWER: usize = 512;

/// What the upgrade a serving process asks for starts.
#[derive(Debug)]
pub struct Asked {
    /// The serving process that asked.
    pub pid: i32,
    /// The binary, checked and open; `None`: the holder's own path.
    pub binary: Option<Binary>,
}

/// The last upgrade binary asked, shared by the channels' threads and the
/// upgrade thread, which takes it.
pub type AskedBinary = Arc<Mutex<Option<Asked>>>;

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
/// the channel ends, then revokes those still valid; takes the binaries
/// its upgrades ask for (and `allowed` allows) into `asked`. Runs on a
/// thread of its own per serving process.
pub fn keep_pages(
    channel: OwnedFd,
    pid: i32,
    asked: AskedBinary,
    allowed: std::sync::Arc<Allowed>,
) {
    let socket = UnixDatagram::from(channel);
    let mut kept: Vec<StatusPage> = Vec::new();
    // One byte more than the largest message: a longer one is seen.
    let mut message = vec![0u8; MAX_MESSAGE + 1];
    loop {
        let (read, file) = match socket.recv_with_fd(&mut message) {
            Ok(received) => received,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(_) => (0, None),
        };
        if read == 0 {
            break;
        }
        let answer = match (message[0], file) {
            (MSG_PAGE, Some(file)) if read == 1 => match StatusPage::adopt(file) {
                Ok(page) => {
                    // Revoked or released words are final: those pages go.
                    kept.retain(|page| page.get() == 0);
                    kept.push(page);
                    Ok(())
                }
                Err(e) => {
                    warn!("serving process {pid}: a status page that cannot be kept: {e}");
                    Err(format!("the status page cannot be kept: {e}"))
                }
            },
            (MSG_UPGRADE_BINARY, None) if read <= MAX_MESSAGE => {
                take_binary(&message[1..read], pid, &asked, &allowed)
            }
            (MSG_UPGRADE_BINARY, None) => Err(format!(
                "the binary's path is longer than {MAX_PATH_BYTES} bytes"
            )),
            _ => Err("a message the holder does not know".to_string()),
        };
        let reply = match answer {
            Ok(()) => vec![1u8],
            Err(why) => {
                let mut reply = vec![0u8];
                reply.extend(why.bytes().take(MAX_ANSWER - 1));
                reply
            }
        };
        if socket.send(&reply).is_err() {
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

/// An upgrade's binary from serving process `pid`: checked and opened,
/// then the one the next upgrade asked through the control socket starts.
fn take_binary(
    path: &[u8],
    pid: i32,
    asked: &AskedBinary,
    allowed: &Allowed,
) -> Result<(), String> {
    let binary = if path.is_empty() {
        None
    } else {
        let path = Path::new(OsStr::from_bytes(path));
        match Binary::open(path, allowed) {
            Ok(binary) => Some(binary),
            Err(e) => {
                warn!("serving process {pid}: upgrade binary refused: {e}");
                return Err(e.to_string());
            }
        }
    };
    *asked.lock().unwrap_or_else(|e| e.into_inner()) = Some(Asked { pid, binary });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;

    /// A holder thread on one end of a channel; the other end.
    fn holder(pid: i32) -> (UnixDatagram, AskedBinary, std::thread::JoinHandle<()>) {
        let (keeper, theirs) = channel().unwrap();
        let asked = AskedBinary::default();
        let allowed = std::sync::Arc::new(Allowed::new(
            std::path::Path::new("/nonexistent"),
            &[std::env::temp_dir().join(format!("cenalloc-asked-{}", std::process::id()))],
        ));
        let thread = {
            let asked = asked.clone();
            std::thread::spawn(move || keep_pages(keeper, pid, asked, allowed))
        };
        (UnixDatagram::from(theirs), asked, thread)
    }

    fn ask(socket: &UnixDatagram, message: &[u8]) -> Vec<u8> {
        socket.send(message).unwrap();
        let mut answer = vec![0u8; MAX_ANSWER + 16];
        let read = socket.recv(&mut answer).unwrap();
        answer.truncate(read);
        answer
    }

    fn message(path: &[u8]) -> Vec<u8> {
        let mut message = vec![MSG_UPGRADE_BINARY];
        message.extend_from_slice(path);
        message
    }

    #[test]
    fn an_upgrade_binary_is_checked_opened_and_bounded() {
        let dir = std::env::temp_dir().join(format!("cenalloc-asked-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("cenallocd");
        std::fs::write(&good, b"\x7fELF").unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, b"").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (socket, asked, thread) = holder(77);

        // Refused, with why, and nothing taken.
        let too_long = message(format!("/{}", "a".repeat(MAX_PATH_BYTES + 10)).as_bytes());
        let long_answer = ask(&socket, &too_long);
        assert_eq!(long_answer[0], 0);
        assert!(String::from_utf8_lossy(&long_answer).contains("longer than"));
        for (path, why) in [
            (&b"relative/cenallocd"[..], "absolute"),
            (plain.as_os_str().as_bytes(), "not executable"),
            (dir.as_os_str().as_bytes(), "not a regular file"),
            (b"/nonexistent/cenallocd", "No such file"),
        ] {
            let answer = ask(&socket, &message(path));
            assert_eq!(answer[0], 0, "{}", String::from_utf8_lossy(path));
            let text = String::from_utf8_lossy(&answer[1..]);
            assert!(text.contains(why), "{text}");
            assert!(answer.len() <= MAX_ANSWER);
        }
        // A page message without its descriptor, an unknown kind.
        assert_eq!(
            ask(&socket, &[MSG_PAGE]),
            b"\0a message the holder does not know"
        );
        assert_eq!(ask(&socket, &[9, 1, 2])[0], 0);
        assert!(asked.lock().unwrap().is_none());

        // Taken: opened, for this process.
        assert_eq!(ask(&socket, &message(good.as_os_str().as_bytes())), vec![1]);
        {
            let taken = asked.lock().unwrap();
            let taken = taken.as_ref().unwrap();
            assert_eq!(taken.pid, 77);
            let binary = taken.binary.as_ref().unwrap();
            assert_eq!(binary.path(), good);
            assert_eq!(std::fs::read_link(binary.program()).unwrap(), good);
        }
        // None: the holder's own path.
        assert_eq!(ask(&socket, &message(b"")), vec![1]);
        assert!(asked.lock().unwrap().as_ref().unwrap().binary.is_none());
        // A status page still goes through.
        let page = std::fs::File::from(super::super::serving::journal_file().unwrap());
        page.set_len(crate::registry::exports::STATUS_PAGE_BYTES as u64)
            .unwrap();
        socket
            .send_with_fd(&[MSG_PAGE][..], page.as_raw_fd())
            .unwrap();
        let mut answer = [0u8; 4];
        assert_eq!(socket.recv(&mut answer).unwrap(), 1);
        assert_eq!(answer[0], 1);
        drop(socket);
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
