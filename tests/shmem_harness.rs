//! The test VMM's QEMU side of cross-VM sharing (tests/common/shmem.rs),
//! B's window first by itself.

mod common;

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use common::shmem::*;

/// The region the tests map into (shmid 0).
const WINDOW: u64 = 16 << 20;

fn page() -> u64 {
    host_page_size()
}

/// The bytes a test memfd holds at `offset`.
fn pattern(offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| (i.wrapping_mul(7) ^ (i >> 12)) as u8)
        .collect()
}

/// A memfd of `len` bytes holding [`pattern`].
fn memfd(len: u64) -> File {
    // SAFETY: memfd_create with a NUL-terminated name; checked, then owned
    // by the File.
    let fd = unsafe { libc::memfd_create(c"shmem-harness".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).unwrap();
    file.write_all_at(&pattern(0, len), 0).unwrap();
    file
}

#[test]
fn a_window_by_itself() {
    let p = page();
    assert!(Window::new(3 * p).is_err(), "not a power of two");
    let window = Window::new(WINDOW).unwrap();
    assert_eq!(window.size(), WINDOW);
    assert_eq!(window.kernel_protection(0).as_deref(), Some("---p"));
    let file = memfd(8 * p);
    let mapping = window.map(4 * p, 4 * p, &file, 2 * p, true).unwrap();
    assert_eq!((mapping.shm_offset, mapping.len), (4 * p, 4 * p));
    assert_eq!(window.read(4 * p, 4 * p).unwrap(), pattern(2 * p, 4 * p));
    assert_eq!(window.kernel_protection(4 * p).as_deref(), Some("rw-s"));
    assert!(matches!(
        window.map(6 * p, 4 * p, &file, 0, false),
        Err(WindowError::Overlap { .. })
    ));
    assert!(matches!(
        window.map(p / 2, p, &file, 0, false),
        Err(WindowError::Unaligned { .. })
    ));
    assert!(matches!(
        window.map(WINDOW - p, 2 * p, &file, 0, false),
        Err(WindowError::OutOfRange { .. })
    ));
    window.write(5 * p, b"B").unwrap();
    let mut back = [0u8; 1];
    file.read_exact_at(&mut back, 3 * p).unwrap();
    assert_eq!(&back, b"B");
    // A file that shrank under a mapping: an error, not a SIGBUS.
    file.set_len(4 * p).unwrap();
    assert!(matches!(
        window.read(4 * p, 4 * p),
        Err(WindowError::BeyondEof { offset }) if offset == 4 * p
    ));
    assert!(matches!(
        window.unmap(4 * p, 2 * p),
        Err(WindowError::NotMapped { .. })
    ));
    assert_eq!(window.unmap(4 * p, 4 * p).unwrap(), mapping);
    assert!(window.read(4 * p, 1).is_err());
    assert_eq!(window.kernel_protection(4 * p).as_deref(), Some("---p"));
    window.map(0, p, &file, 0, false).unwrap();
    window.map(p, p, &file, p, false).unwrap();
    assert_eq!(window.clear().len(), 2);
    assert!(window.mappings().is_empty());
}
