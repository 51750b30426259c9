//! The binary a live upgrade starts when it is given one
//! (`cenallocctl upgrade --binary PATH`) instead of the holder's own path.
//!
//! The path comes from a control client, through the serving process, to
//! the holder, which executes it without a sandbox: both check it. The
//! serving process ([`check`]) refuses at once what cannot be a binary to
//! run: not absolute, too long, not a regular file, no execute bit,
//! writable by its group or others. The holder ([`Binary::open`]) opens
//! the file (`O_PATH`), checks the open file the same way and that it
//! belongs to root or to the holder's own user, and keeps it open: the
//! serving processes are started from that file (`/proc/self/fd/N`), so
//! what runs is what was checked, whatever happens at the path later.
//!
//! And the holder runs only what the operator allowed ([`Allowed`]): its
//! own binary, or a file directly in a directory given with
//! `--upgrade-dir`. Without that, a control client could have the
//! unsandboxed holder run any executable root owns.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Longest path accepted, in bytes (PATH_MAX without its NUL).
pub const MAX_PATH_BYTES: usize = libc::PATH_MAX as usize - 1;

/// Why a binary is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BinaryError {
    #[error("the binary's path must be absolute")]
    NotAbsolute,
    #[error("the binary's path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("the binary's path holds a NUL byte")]
    Nul,
    #[error("{path}: {error}")]
    Unreachable { path: PathBuf, error: String },
    #[error("{0}: not a regular file")]
    NotRegular(PathBuf),
    #[error("{0}: not executable (no execute permission bit)")]
    NotExecutable(PathBuf),
    #[error("{0}: writable by its group or by others")]
    Writable(PathBuf),
    #[error("{0}: neither the holder's own binary nor in a directory of --upgrade-dir")]
    NotAllowed(PathBuf),
    #[error("{path}: owned by uid {owner}, neither root nor the holder's user ({holder})")]
    Owner {
        path: PathBuf,
        owner: u32,
        holder: u32,
    },
}

/// The checks on the path alone.
fn check_path(path: &Path) -> Result<(), BinaryError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() > MAX_PATH_BYTES {
        return Err(BinaryError::TooLong);
    }
    if bytes.contains(&0) {
        return Err(BinaryError::Nul);
    }
    if !path.is_absolute() {
        return Err(BinaryError::NotAbsolute);
    }
    Ok(())
}

/// The checks on the file's type, mode and (when `holder` is given) owner.
fn check_file(path: &Path, mode: u32, owner: u32, holder: Option<u32>) -> Result<(), BinaryError> {
    if mode & libc::S_IFMT != libc::S_IFREG {
        return Err(BinaryError::NotRegular(path.to_path_buf()));
    }
    if mode & 0o111 == 0 {
        return Err(BinaryError::NotExecutable(path.to_path_buf()));
    }
    if mode & 0o022 != 0 {
        return Err(BinaryError::Writable(path.to_path_buf()));
    }
    if let Some(holder) = holder {
        if owner != 0 && owner != holder {
            return Err(BinaryError::Owner {
                path: path.to_path_buf(),
                owner,
                holder,
            });
        }
    }
    Ok(())
}

/// The serving process's check of an asked binary (by its path: `statx`,
/// which its sandbox allows).
pub fn check(path: &Path) -> Result<(), BinaryError> {
    use std::os::unix::fs::MetadataExt;
    check_path(path)?;
    let meta = std::fs::metadata(path).map_err(|e| BinaryError::Unreachable {
        path: path.to_path_buf(),
        error: e.to_string(),
    })?;
    check_file(path, meta.mode(), meta.uid(), None)
}

/// A checked binary, held open by the holder.
#[derive(Debug)]
pub struct Binary {
    file: OwnedFd,
    path: PathBuf,
}

/// What the holder may run: its own binary, and files directly in the
/// `--upgrade-dir` directories (compared by their real paths).
#[derive(Clone, Debug, Default)]
pub struct Allowed {
    exe: Option<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Allowed {
    /// The holder's binary `exe` and the directories `dirs` (those that
    /// do not resolve allow nothing).
    pub fn new(exe: &Path, dirs: &[PathBuf]) -> Allowed {
        Allowed {
            exe: std::fs::canonicalize(exe).ok(),
            dirs: dirs
                .iter()
                .filter_map(|dir| std::fs::canonicalize(dir).ok())
                .collect(),
        }
    }

    fn allows(&self, real: &Path) -> bool {
        self.exe.as_deref() == Some(real)
            || real
                .parent()
                .is_some_and(|parent| self.dirs.iter().any(|dir| dir == parent))
    }
}

impl Binary {
    /// Opens and checks the binary at `path` (the holder's check), which
    /// `allowed` must allow.
    pub fn open(path: &Path, allowed: &Allowed) -> Result<Binary, BinaryError> {
        check_path(path)?;
        let unreachable = |error: std::io::Error| BinaryError::Unreachable {
            path: path.to_path_buf(),
            error: error.to_string(),
        };
        let name = CString::new(path.as_os_str().as_bytes()).map_err(|_| BinaryError::Nul)?;
        // SAFETY: open(2) of a NUL-terminated path; the result is checked.
        let fd = unsafe { libc::open(name.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(unreachable(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: stat is plain data; zeroes are a valid value.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on an open descriptor; `stat` is a valid out pointer.
        if unsafe { libc::fstat(file.as_raw_fd(), &mut stat) } != 0 {
            return Err(unreachable(std::io::Error::last_os_error()));
        }
        // SAFETY: geteuid has no preconditions.
        let holder = unsafe { libc::geteuid() };
        check_file(path, stat.st_mode, stat.st_uid, Some(holder))?;
        // The file opened, by its real path (no link, no `..` on the way).
        let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(unreachable)?;
        if !allowed.allows(&real) {
            return Err(BinaryError::NotAllowed(path.to_path_buf()));
        }
        Ok(Binary {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The path it was asked by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What to execute to run this very file (its descriptor in
    /// /proc/self/fd: valid in the holder and in its child until the exec).
    pub fn program(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn paths_are_absolute_bounded_and_without_nul() {
        assert_eq!(
            check_path(Path::new("cenallocd")),
            Err(BinaryError::NotAbsolute)
        );
        assert_eq!(check_path(Path::new("")), Err(BinaryError::NotAbsolute));
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(check_path(Path::new(&long)), Err(BinaryError::TooLong));
        assert_eq!(check_path(Path::new("/usr/\0bin")), Err(BinaryError::Nul));
        assert_eq!(check_path(Path::new("/usr/sbin/cenallocd")), Ok(()));
    }

    #[test]
    fn files_are_regular_executable_not_writable_by_others_owned_by_root_or_the_holder() {
        let path = Path::new("/x");
        let file = libc::S_IFREG;
        assert_eq!(check_file(path, file | 0o755, 0, Some(1000)), Ok(()));
        assert_eq!(check_file(path, file | 0o700, 1000, Some(1000)), Ok(()));
        assert_eq!(check_file(path, file | 0o500, 1000, None), Ok(()));
        assert!(matches!(
            check_file(path, libc::S_IFDIR | 0o755, 0, None),
            Err(BinaryError::NotRegular(_))
        ));
        assert!(matches!(
            check_file(path, file | 0o644, 0, None),
            Err(BinaryError::NotExecutable(_))
        ));
        for mode in [0o775, 0o757, 0o777] {
            assert!(matches!(
                check_file(path, file | mode, 0, None),
                Err(BinaryError::Writable(_))
            ));
        }
        assert!(matches!(
            check_file(path, file | 0o755, 1001, Some(1000)),
            Err(BinaryError::Owner { owner: 1001, .. })
        ));
    }

    #[test]
    fn open_checks_the_file_it_opened() {
        let dir = std::env::temp_dir().join(format!("cenalloc-binary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o755)).unwrap();
        let allowed = Allowed::new(Path::new("/nonexistent"), std::slice::from_ref(&dir));
        // Outside the allowed directories: refused, even when it is fine.
        assert!(matches!(
            Binary::open(&good, &Allowed::new(Path::new("/nonexistent"), &[])),
            Err(BinaryError::NotAllowed(_))
        ));
        // The holder's own binary is allowed without a directory.
        assert!(Binary::open(&good, &Allowed::new(&good, &[])).is_ok());
        // Through a link from elsewhere: what counts is where the file is.
        let elsewhere =
            std::env::temp_dir().join(format!("cenalloc-binary-link-{}", std::process::id()));
        let _ = std::fs::remove_file(&elsewhere);
        std::os::unix::fs::symlink(&good, &elsewhere).unwrap();
        assert!(Binary::open(&elsewhere, &allowed).is_ok());
        assert!(matches!(
            Binary::open(
                &good,
                &Allowed::new(Path::new("/nonexistent"), &[std::env::temp_dir()])
            ),
            Err(BinaryError::NotAllowed(_))
        ));
        std::fs::remove_file(&elsewhere).unwrap();
        let binary = Binary::open(&good, &allowed).unwrap();
        assert_eq!(binary.path(), good);
        assert_eq!(check(&good), Ok(()));
        // The program is the open file, not the path.
        let through = std::fs::read_link(binary.program()).unwrap();
        assert_eq!(through, good);
        std::fs::remove_file(&good).unwrap();
        assert!(std::fs::metadata(binary.program()).is_ok());

        let plain = dir.join("plain");
        std::fs::write(&plain, b"data").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Binary::open(&plain, &allowed),
            Err(BinaryError::NotExecutable(_))
        ));
        assert!(matches!(check(&plain), Err(BinaryError::NotExecutable(_))));
        assert!(matches!(
            Binary::open(&dir, &allowed),
            Err(BinaryError::NotRegular(_))
        ));
        assert!(matches!(
            Binary::open(&dir.join("missing"), &allowed),
            Err(BinaryError::Unreachable { .. })
        ));
        assert!(matches!(
            check(&dir.join("missing")),
            Err(BinaryError::Unreachable { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
