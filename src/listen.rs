//! The daemon's listening sockets: the VM sockets front-ends connect to and
//! the control socket. Nothing here knows vhost-user.
//!
//! A socket the daemon binds ([`bind`]) is created with mode 0600 unless
//! the caller asks for another mode or a group, and nobody can connect
//! before that mode and group are in place: the socket gets mode 0600
//! (`fchmod` on the unbound socket, which Linux applies at bind, under the
//! umask, thread-safely where a umask change would not be), is bound, then
//! `chmod`/`chown`ed to the requested mode and group, and only then
//! `listen`s. An existing path is examined first: a file that is not a
//! socket is refused, a socket some process still accepts on is refused
//! ("already in use"), and only a stale socket (connect: `ECONNREFUSED`)
//! is replaced. The bound socket's device and inode are kept, so that the
//! daemon removes at exit only the file it created ([`OwnedPath`]).
//!
//! Inherited sockets ([`listener_from_fd`]: `--fd`, systemd's
//! `LISTEN_FDS`, [`activated_sockets`]) belong to the caller: the daemon
//! never removes their files.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::{FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Mode of a socket file when nothing else is asked for.
pub const DEFAULT_MODE: u32 = 0o600;
/// Mode when only a group is given: the group may connect too.
pub const DEFAULT_GROUP_MODE: u32 = 0o660;
/// Pending connections the kernel queues per listener.
const BACKLOG: libc::c_int = 16;
/// First inherited descriptor of socket activation (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Permissions of a socket file the daemon creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketPermissions {
    /// Permission bits (0o7777 at most).
    pub mode: u32,
    /// Group to give the file, if any.
    pub group: Option<u32>,
}

impl Default for SocketPermissions {
    fn default() -> Self {
        SocketPermissions {
            mode: DEFAULT_MODE,
            group: None,
        }
    }
}

/// Why a socket cannot be bound or taken over.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("{0}: the path exists and is not a socket (refusing to replace it)")]
    NotASocket(PathBuf),
    #[error("{0}: already in use (another process accepts connections on it)")]
    InUse(PathBuf),
    #[error("{path}: cannot tell whether the existing socket is in use: {source}")]
    Probe { path: PathBuf, source: io::Error },
    #[error("{path}: cannot remove the stale socket: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("{path}: {what}: {source}")]
    Bind {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("{0}: path too long for a unix socket")]
    PathTooLong(PathBuf),
    #[error("--fd {0}: {1}")]
    FdUnusable(RawFd, io::Error),
    #[error("--fd {0} is not a socket")]
    FdNotSocket(RawFd),
    #[error("--fd {0} is not a unix stream socket")]
    FdNotUnixStream(RawFd),
    #[error("--fd {0} is not listening (cenallocd accepts front-ends on a listening socket only)")]
    FdNotListening(RawFd),
    #[error("socket activation: {0}")]
    Activation(String),
}

/// A socket file this daemon created, identified by device, inode and
/// change time (an inode number alone may be reused at once by a file
/// created after ours was removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedPath {
    pub path: PathBuf,
    identity: (u64, u64, i64, i64),
}

/// Removes the socket files of `owned` (each only if it still is the
/// socket this process created), logging what stays.
pub fn remove_owned(owned: &[OwnedPath]) {
    for path in owned {
        match path.remove() {
            Ok(true) => {}
            Ok(false) => log::warn!(
                "{}: not removed, it is no longer the socket this daemon created",
                path.path.display()
            ),
            Err(e) => log::warn!("{}: cannot remove: {e}", path.path.display()),
        }
    }
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

impl OwnedPath {
    /// Removes the file if it is still the socket this daemon bound;
    /// returns whether it did. Another process's socket at the same path
    /// (after ours was replaced) is left alone.
    pub fn remove(&self) -> io::Result<bool> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if identity(&meta) == self.identity => {
                std::fs::remove_file(&self.path)?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn bind_error<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Bind {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Examines what is at `path`: nothing, or a stale socket (removed), is
/// fine; anything else is an error.
fn clear_path(path: &Path) -> Result<(), Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Probe {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(Error::NotASocket(path.to_path_buf()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(Error::InUse(path.to_path_buf())),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(Error::RemoveStale {
                    path: path.to_path_buf(),
                    source,
                }),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Probe {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn c_path(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::PathTooLong(path.to_path_buf()))
}

/// Binds a listening unix stream socket at `path` with `permissions` (see
/// the module documentation for the order of the steps). Returns the
/// listener and the identity of the file it created.
pub fn bind(
    path: &Path,
    permissions: SocketPermissions,
) -> Result<(UnixListener, OwnedPath), Error> {
    clear_path(path)?;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(Error::PathTooLong(path.to_path_buf()));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(bind_error(path, "socket")(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh socket nobody else owns; the listener closes
    // it on every early return below.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    // SAFETY: fchmod on the socket we own; no pointers.
    if unsafe { libc::fchmod(fd, (permissions.mode & DEFAULT_MODE) as libc::mode_t) } != 0 {
        return Err(bind_error(path, "fchmod before bind")(
            io::Error::last_os_error(),
        ));
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is an initialised sockaddr_un and `len` covers the
    // family and the NUL-terminated path inside it.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EADDRINUSE) {
            return Err(Error::InUse(path.to_path_buf()));
        }
        return Err(bind_error(path, "bind")(e));
    }
    // From here on a failure removes the file we created (as far as a path
    // can tell).
    let mut owned = OwnedPath {
        path: path.to_path_buf(),
        identity: (0, 0, 0, 0),
    };
    let mut finish = || -> Result<(), Error> {
        let cpath = c_path(path)?;
        // SAFETY: `cpath` is a valid NUL-terminated path.
        if unsafe { libc::chmod(cpath.as_ptr(), permissions.mode as libc::mode_t) } != 0 {
            return Err(bind_error(path, "chmod")(io::Error::last_os_error()));
        }
        if let Some(gid) = permissions.group {
            // SAFETY: as above; uid -1 keeps the owner.
            if unsafe { libc::chown(cpath.as_ptr(), u32::MAX, gid) } != 0 {
                return Err(bind_error(path, "chown to the socket group")(
                    io::Error::last_os_error(),
                ));
            }
        }
        // After chmod/chown, which change the change time.
        let meta = std::fs::symlink_metadata(path).map_err(bind_error(path, "stat after bind"))?;
        owned.identity = identity(&meta);
        // SAFETY: listen(2) on the bound socket we own.
        if unsafe { libc::listen(fd, BACKLOG) } != 0 {
            return Err(bind_error(path, "listen")(io::Error::last_os_error()));
        }
        Ok(())
    };
    if let Err(e) = finish() {
        if owned.identity != (0, 0, 0, 0) {
            let _ = owned.remove();
        } else {
            let _ = std::fs::remove_file(path);
        }
        return Err(e);
    }
    Ok((listener, owned))
}

/// An integer socket option of `fd`.
fn socket_option(fd: RawFd, name: libc::c_int) -> Result<libc::c_int, Error> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid out pointers of the sizes given;
    // getsockopt only reads the descriptor number.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(Error::FdUnusable(fd, io::Error::last_os_error()));
    }
    Ok(value)
}

/// Takes over the listening unix stream socket `fd` handed down by the
/// caller (`--fd`, socket activation): checks that it is one, makes it
/// close-on-exec and blocking.
pub fn listener_from_fd(fd: RawFd) -> Result<UnixListener, Error> {
    // SAFETY: libc::stat is plain data; fstat fills it.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a valid out pointer; fstat only reads the number.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(Error::FdUnusable(fd, io::Error::last_os_error()));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(Error::FdNotSocket(fd));
    }
    if socket_option(fd, libc::SO_DOMAIN)? != libc::AF_UNIX
        || socket_option(fd, libc::SO_TYPE)? != libc::SOCK_STREAM
    {
        return Err(Error::FdNotUnixStream(fd));
    }
    if socket_option(fd, libc::SO_ACCEPTCONN)? == 0 {
        return Err(Error::FdNotListening(fd));
    }
    // SAFETY: fcntl on a descriptor checked open above; no pointers.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(Error::FdUnusable(fd, io::Error::last_os_error()));
    }
    // SAFETY: `fd` is an open listening unix stream socket that the caller
    // gave to this process for this purpose; nothing else here owns or
    // closes it, so the UnixListener may take ownership.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    // The caller may have left it non-blocking; accept() must wait.
    listener
        .set_nonblocking(false)
        .map_err(|e| Error::FdUnusable(fd, e))?;
    Ok(listener)
}

/// One socket passed by systemd socket activation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivatedSocket {
    pub fd: RawFd,
    /// `FileDescriptorName=` of its socket unit, without a `.socket`
    /// suffix (systemd's default name is the unit's name).
    pub name: String,
}

/// Parses the socket-activation protocol (`sd_listen_fds(3)`): the
/// variables count only when `LISTEN_PID` is this process. Pure, for
/// tests; [`take_activated_sockets`] reads and clears the environment.
pub fn activated_sockets(
    listen_pid: Option<&OsStr>,
    listen_fds: Option<&OsStr>,
    listen_fdnames: Option<&OsStr>,
    pid: u32,
) -> Result<Vec<ActivatedSocket>, Error> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(Vec::new());
    };
    let text = |value: &OsStr, what: &str| {
        value
            .to_str()
            .map(str::to_string)
            .ok_or_else(|| Error::Activation(format!("{what} is not UTF-8")))
    };
    let target: u32 = text(listen_pid, "LISTEN_PID")?
        .parse()
        .map_err(|_| Error::Activation("LISTEN_PID is not a number".into()))?;
    if target != pid {
        // Meant for another process (e.g. our parent): not ours.
        return Ok(Vec::new());
    }
    let count: RawFd = text(listen_fds, "LISTEN_FDS")?
        .parse()
        .ok()
        .filter(|n| (0..=1024).contains(n))
        .ok_or_else(|| Error::Activation("LISTEN_FDS is not a count 0..=1024".into()))?;
    let names: Vec<String> = match listen_fdnames {
        Some(names) => text(names, "LISTEN_FDNAMES")?
            .split(':')
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };
    if !names.is_empty() && names.len() != count as usize {
        return Err(Error::Activation(format!(
            "LISTEN_FDNAMES has {} names for {count} descriptors",
            names.len()
        )));
    }
    Ok((0..count)
        .map(|i| {
            let fd = LISTEN_FDS_START + i;
            let name = names
                .get(i as usize)
                .map(|n| n.strip_suffix(".socket").unwrap_or(n).to_string())
                .filter(|n| !n.is_empty() && n != "unknown")
                .unwrap_or_else(|| format!("fd{fd}"));
            ActivatedSocket { fd, name }
        })
        .collect())
}

/// Reads the socket-activation variables and removes them from the
/// environment (so nothing started later mistakes them for its own).
/// Call before any thread is started.
pub fn take_activated_sockets() -> Result<Vec<ActivatedSocket>, Error> {
    let pid = std::env::var_os("LISTEN_PID");
    let fds = std::env::var_os("LISTEN_FDS");
    let names = std::env::var_os("LISTEN_FDNAMES");
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    activated_sockets(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cenalloc-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        path
    }

    /// A group other than our effective one that we may give files to.
    fn other_group() -> Option<u32> {
        // SAFETY: getegid and geteuid have no preconditions.
        let (egid, euid) = unsafe { (libc::getegid(), libc::geteuid()) };
        if euid == 0 {
            return Some(65534);
        }
        nix::unistd::getgroups()
            .ok()?
            .into_iter()
            .map(|gid| gid.as_raw())
            .find(|&gid| gid != egid)
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn sockets_are_created_0600_by_default_and_with_the_mode_asked() {
        let path = temp_path("default.sock");
        let (_listener, owned) = bind(&path, SocketPermissions::default()).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert!(owned.remove().unwrap());
        assert!(!path.exists());

        let path = temp_path("group.sock");
        // A group the socket would not have anyway: nogroup as root (the
        // CI runs as root), else a supplementary group of ours.
        let Some(gid) = other_group() else {
            eprintln!("not root and in no second group: the chown cannot be shown");
            return;
        };
        let (_listener, owned) = bind(
            &path,
            SocketPermissions {
                mode: 0o660,
                group: Some(gid),
            },
        )
        .unwrap();
        assert_eq!(mode_of(&path), 0o660);
        assert_eq!(std::fs::symlink_metadata(&path).unwrap().gid(), gid);
        owned.remove().unwrap();
    }

    #[test]
    fn a_regular_file_is_refused_and_kept() {
        let path = temp_path("file.sock");
        std::fs::write(&path, b"precious").unwrap();
        let error = bind(&path, SocketPermissions::default()).unwrap_err();
        assert!(matches!(error, Error::NotASocket(_)), "{error}");
        assert!(error.to_string().contains("not a socket"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let path = temp_path("live.sock");
        let live = UnixListener::bind(&path).unwrap();
        let error = bind(&path, SocketPermissions::default()).unwrap_err();
        assert!(matches!(error, Error::InUse(_)), "{error}");
        assert!(error.to_string().contains("already in use"), "{error}");
        // Still the other listener's socket.
        assert!(UnixStream::connect(&path).is_ok());
        drop(live);
        // Now stale: nobody accepts; replaced.
        let (listener, owned) = bind(&path, SocketPermissions::default()).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(listener);
        owned.remove().unwrap();
    }

    #[test]
    fn removal_spares_a_socket_that_replaced_ours() {
        let path = temp_path("replaced.sock");
        let (listener, owned) = bind(&path, SocketPermissions::default()).unwrap();
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        // ext4 hands the freed inode number to the next file at once; the
        // change time tells them apart (past the timestamp granularity).
        std::thread::sleep(std::time::Duration::from_millis(20));
        let other = UnixListener::bind(&path).unwrap();
        assert!(!owned.remove().unwrap(), "removed another process's socket");
        assert!(path.exists());
        drop(other);
        std::fs::remove_file(&path).unwrap();
        assert!(!owned.remove().unwrap());
    }

    #[test]
    fn socket_activation_variables() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert!(activated_sockets(None, None, None, 7).unwrap().is_empty());
        // For another process.
        assert!(activated_sockets(os("8"), os("2"), None, 7)
            .unwrap()
            .is_empty());
        let sockets =
            activated_sockets(os("7"), os("3"), os("vm1:control:cenallocd.socket"), 7).unwrap();
        assert_eq!(
            sockets,
            vec![
                ActivatedSocket {
                    fd: 3,
                    name: "vm1".into()
                },
                ActivatedSocket {
                    fd: 4,
                    name: "control".into()
                },
                ActivatedSocket {
                    fd: 5,
                    name: "cenallocd".into()
                },
            ]
        );
        let unnamed = activated_sockets(os("7"), os("1"), None, 7).unwrap();
        assert_eq!(unnamed[0].name, "fd3");
        for (fds, names) in [("x", None), ("-1", None), ("2", os("a"))] {
            assert!(
                activated_sockets(os("7"), Some(OsStr::new(fds)), names, 7).is_err(),
                "{fds} {names:?}"
            );
        }
        assert!(activated_sockets(os("seven"), os("1"), None, 7).is_err());
    }
}
