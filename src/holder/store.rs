//! systemd's file descriptor store as the holder's own survival kit
//! (`sd_notify(3)` `FDSTORE=1`, `FDSTOREREMOVE=1`, `FDNAME=`; the fds come
//! back in `LISTEN_FDS` / `LISTEN_FDNAMES` when systemd starts the
//! service again).
//!
//! Under systemd (`NOTIFY_SOCKET` set and the unit's
//! `FileDescriptorStoreMax=` non-zero) the holder stores everything a VM's
//! device needs beyond its own death: the front-end's connection, the
//! device journal, the session image (super::persist) and the fds the
//! session holds (memory table, ring eventfds, backend channel), and the
//! export status pages. Names are `cenalloc.<vm>.<what>`, and
//! `cenalloc.status.<n>`; anything else in `LISTEN_FDS` is socket
//! activation's.
//!
//! A store that refuses an fd (no `FileDescriptorStoreMax=`, or full) is
//! logged once per VM: that VM's device then survives its serving process
//! (the holder) but not the holder.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

use log::warn;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Prefix of every name the holder stores.
pub const PREFIX: &str = "cenalloc.";
/// systemd's bound on an fd name.
const NAME_MAX: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("NOTIFY_SOCKET {0:?}: {1}")]
    Socket(String, std::io::Error),
    #[error("fd name {0:?} is not one systemd takes")]
    Name(String),
    #[error("sd_notify: {0}")]
    Send(std::io::Error),
}

/// Whether systemd takes `name` as an fd name: printable ASCII, no `:`,
/// at most 255 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// The service manager's notification socket.
pub struct FdStore {
    socket: UnixDatagram,
}

impl FdStore {
    /// The store of `NOTIFY_SOCKET` (a path, or `@name` for an abstract
    /// socket), if the variable is set.
    pub fn from_env() -> Result<Option<FdStore>, StoreError> {
        let Some(address) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let text = address.to_string_lossy().into_owned();
        let fail = |e| StoreError::Socket(text.clone(), e);
        let socket = UnixDatagram::unbound().map_err(fail)?;
        match text.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
                    .map_err(fail)?;
                socket.connect_addr(&addr).map_err(fail)?;
            }
            None => socket.connect(&text).map_err(fail)?,
        }
        Ok(Some(FdStore { socket }))
    }

    fn send(&self, message: &str, fds: &[RawFd]) -> Result<(), StoreError> {
        loop {
            match self.socket.send_with_fds(&[message.as_bytes()], fds) {
                Ok(_) => return Ok(()),
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) => return Err(StoreError::Send(e.into())),
            }
        }
    }

    /// `READY=1` (the unit is `Type=notify`), with a status line.
    pub fn ready(&self, status: &str) -> Result<(), StoreError> {
        self.send(&format!("READY=1\nSTATUS={status}"), &[])
    }

    /// Stores `fd` under `name` (systemd keeps a duplicate).
    pub fn put(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), StoreError> {
        if !valid_name(name) {
            return Err(StoreError::Name(name.to_string()));
        }
        self.send(&format!("FDSTORE=1\nFDNAME={name}"), &[fd.as_raw_fd()])
    }

    /// Closes systemd's fds named `name`.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        if !valid_name(name) {
            return Err(StoreError::Name(name.to_string()));
        }
        self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[])
    }
}

/// The fds systemd passed back, by name (`cenalloc.` names only). Each
/// is marked close-on-exec: serving processes get only what the holder
/// hands down.
#[derive(Default)]
pub struct Stored {
    fds: HashMap<String, OwnedFd>,
}

impl Stored {
    /// Takes the stored fds out of what `LISTEN_FDS` passed; returns them
    /// and the rest (socket activation's).
    pub fn split(
        passed: Vec<crate::listen::ActivatedSocket>,
    ) -> (Stored, Vec<crate::listen::ActivatedSocket>) {
        let mut stored = Stored::default();
        let mut rest = Vec::new();
        for socket in passed {
            if !socket.name.starts_with(PREFIX) {
                rest.push(socket);
                continue;
            }
            // SAFETY: systemd passed this descriptor to this process
            // (LISTEN_PID was ours); nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(socket.fd) };
            // SAFETY: fcntl on a descriptor we own.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            if stored.fds.insert(socket.name.clone(), fd).is_some() {
                warn!(
                    "fd store: {} passed twice; the first one closed",
                    socket.name
                );
            }
        }
        (stored, rest)
    }

    /// Takes the fd stored under `name`.
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        self.fds.remove(name)
    }

    /// Takes every fd whose name starts with `prefix`, with the rest of
    /// its name.
    pub fn take_prefixed(&mut self, prefix: &str) -> Vec<(String, OwnedFd)> {
        let names: Vec<String> = self
            .fds
            .keys()
            .filter(|name| name.starts_with(prefix))
            .cloned()
            .collect();
        names
            .into_iter()
            .filter_map(|name| {
                let fd = self.fds.remove(&name)?;
                Some((name[prefix.len()..].to_string(), fd))
            })
            .collect()
    }

    /// The names left (nobody took them).
    pub fn names(&self) -> Vec<String> {
        self.fds.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }
}

/// Name of VM `vm`'s `what` in the store.
pub fn vm_name(vm: &str, what: &str) -> String {
    format!("{PREFIX}{vm}.{what}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::ActivatedSocket;

    #[test]
    fn names_systemd_takes() {
        assert!(valid_name("cenalloc.vm1.conn"));
        assert!(!valid_name(""));
        assert!(!valid_name("a:b"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"x".repeat(256)));
        assert!(valid_name(&vm_name(
            &"v".repeat(64),
            "fd.18446744073709551615"
        )));
    }

    #[test]
    fn stored_fds_are_told_from_activated_sockets() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let passed = vec![
            ActivatedSocket {
                fd: std::os::fd::IntoRawFd::into_raw_fd(OwnedFd::from(a)),
                name: "cenalloc.vm1.conn".into(),
            },
            ActivatedSocket {
                fd: 1000,
                name: "vm1".into(),
            },
        ];
        let (mut stored, rest) = Stored::split(passed);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].name, "vm1");
        assert_eq!(stored.names(), vec!["cenalloc.vm1.conn".to_string()]);
        let fd = stored.take("cenalloc.vm1.conn").unwrap();
        // SAFETY: fcntl on a descriptor we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        assert!(stored.is_empty());
        drop(b);
    }
}
