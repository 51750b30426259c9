//! The test VMM's QEMU side of cross-VM sharing (tests/common/shmem.rs),
//! checked against back-ends written here: vhost's `Backend` on the other
//! end of the backend channel sends SHMEM_MAP / SHMEM_UNMAP as a daemon
//! would; a small vhost-user-backend device offers the protocol features
//! cenallocd does not offer yet, for the front-end's set-up and the
//! commits' ADD_MEM_REG / REM_MEM_REG. B's guest is the window.

mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cenalloc::device::DeviceConfig;
use common::shmem::*;
use common::*;
use vhost::vhost_user::message::{
    VhostUserMMap, VhostUserMMapFlags, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserVirtioFeatures,
};
use vhost::vhost_user::{
    Backend, Frontend, Listener, VhostUserFrontend, VhostUserFrontendReqHandler,
};
use vhost::VhostBackend;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// The region the tests map into (shmid 0).
const WINDOW: u64 = 16 << 20;

/// How long a test waits for something the harness does on its thread.
const WAIT: Duration = Duration::from_secs(10);

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

/// The same file opened again read-only (as an export of a read-only
/// share would pass it).
fn read_only(file: &File) -> File {
    File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap()
}

fn request(shmid: u8, fd_offset: u64, shm_offset: u64, len: u64, writable: bool) -> VhostUserMMap {
    VhostUserMMap {
        shmid,
        fd_offset,
        shm_offset,
        len,
        flags: if writable {
            VhostUserMMapFlags::WRITABLE.bits()
        } else {
            0
        },
        ..Default::default()
    }
}

/// A channel served for `shmem`, and vhost's back-end end of it with
/// REPLY_ACK and SHMEM on (as vhost-user-backend sets them once
/// negotiated). Its waits for a reply are bounded, so a harness that
/// never answers fails the test instead of hanging it.
fn channel(shmem: &Arc<QemuShmem>) -> (Channel, Backend) {
    let mut channel = Channel::spawn(shmem).unwrap();
    let end = channel.take_backend_end().unwrap();
    end.set_read_timeout(Some(WAIT)).unwrap();
    let backend = Backend::from_stream(end);
    backend.set_reply_ack_flag(true);
    backend.set_shmem_flag(true);
    (channel, backend)
}

/// Commits the hook saw, with when.
fn recording_hook(shmem: &QemuShmem) -> mpsc::Receiver<(Instant, Commit)> {
    let (tx, rx) = mpsc::channel();
    shmem.set_on_commit(Box::new(move |commit: &Commit| {
        let _ = tx.send((Instant::now(), commit.clone()));
        Ok(())
    }));
    rx
}

fn last_map(shmem: &QemuShmem) -> Event {
    shmem
        .log()
        .into_iter()
        .rev()
        .find(|e| matches!(e, Event::Map { .. }))
        .expect("a map was logged")
}

fn commits(log: &[Event]) -> usize {
    log.iter()
        .filter(|e| matches!(e, Event::Commit { .. }))
        .count()
}

/// Waits for the `n`th commit of the log (the back-end's call returns with
/// the reply, the commit comes after it).
fn wait_commits(shmem: &QemuShmem, n: usize) {
    assert!(
        shmem.wait_log(WAIT, |log| commits(log) >= n),
        "no commit {n}: {:#?}",
        shmem.log()
    );
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

#[test]
fn the_window_shows_a_mapped_range_of_the_file() {
    let shmem = QemuShmem::with_region(WINDOW);
    let window = shmem.window(0).unwrap();
    let (_channel, backend) = channel(&shmem);
    let file = memfd(1 << 20);
    let p = page();

    assert!(matches!(
        window.read(0, p),
        Err(WindowError::Unmapped { offset: 0 })
    ));
    backend
        .shmem_map(&request(0, 16 * p, 1 << 20, 64 * p, false), &file)
        .unwrap();
    wait_commits(&shmem, 1);
    assert_eq!(
        window.read(1 << 20, 64 * p).unwrap(),
        pattern(16 * p, 64 * p)
    );
    // A second mapping right after the first, from elsewhere in the file: a
    // read across both sees each one's bytes.
    backend
        .shmem_map(&request(0, 0, (1 << 20) + 64 * p, 4 * p, false), &file)
        .unwrap();
    wait_commits(&shmem, 2);
    let mut expected = pattern(16 * p + 60 * p, 4 * p);
    expected.extend(pattern(0, 2 * p));
    assert_eq!(window.read((1 << 20) + 60 * p, 6 * p).unwrap(), expected);
    // Beyond the second mapping nothing is mapped: an error, not a fault.
    assert!(matches!(
        window.read((1 << 20) + 66 * p, 4 * p + 1),
        Err(WindowError::Unmapped { .. })
    ));
    assert!(matches!(
        window.read(WINDOW - p, 2 * p),
        Err(WindowError::OutOfRange { .. })
    ));
    // The file's later writes show (shared, not copied).
    file.write_all_at(b"later", 16 * p).unwrap();
    assert_eq!(window.read(1 << 20, 5).unwrap(), b"later");

    let stat = file.metadata().unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        shmem.mappings(0),
        vec![
            Mapping {
                shm_offset: 1 << 20,
                len: 64 * p,
                fd_offset: 16 * p,
                writable: false,
                dev: stat.dev(),
                ino: stat.ino(),
            },
            Mapping {
                shm_offset: (1 << 20) + 64 * p,
                len: 4 * p,
                fd_offset: 0,
                writable: false,
                dev: stat.dev(),
                ino: stat.ino(),
            },
        ]
    );
    assert_eq!(window.mappings(), shmem.mappings(0));
}

#[test]
fn each_qemu_rule_refuses_and_maps_nothing() {
    let shmem = QemuShmem::with_region(WINDOW);
    let window = shmem.window(0).unwrap();
    let (_channel, backend) = channel(&shmem);
    let p = page();
    let file = memfd(4 * p);
    let empty = memfd(0);
    let readonly = read_only(&file);
    let cases: Vec<(&str, VhostUserMMap, &File, Refusal)> = vec![
        (
            "unknown region",
            request(1, 0, 0, p, false),
            &file,
            Refusal::NoRegion,
        ),
        (
            "past the region's end",
            request(0, 0, WINDOW - p, 2 * p, false),
            &file,
            Refusal::OutOfRegion,
        ),
        (
            "offset + len wraps",
            request(0, 0, u64::MAX - p + 1, 2 * p, false),
            &file,
            Refusal::OutOfRegion,
        ),
        (
            "zero length",
            request(0, 0, 0, 0, false),
            &file,
            Refusal::ZeroLength,
        ),
        (
            "shm_offset not in pages",
            request(0, 0, 512, p, false),
            &file,
            Refusal::Unaligned,
        ),
        (
            "len not in pages",
            request(0, 0, 0, p + 512, false),
            &file,
            Refusal::Unaligned,
        ),
        (
            "fd_offset not in pages",
            request(0, 512, 0, p, false),
            &file,
            Refusal::FdOffsetAlignment,
        ),
        (
            "file shorter than fd_offset + len",
            request(0, 2 * p, 0, 3 * p, false),
            &file,
            Refusal::FileTooSmall,
        ),
        (
            "empty file",
            request(0, 0, 0, p, false),
            &empty,
            Refusal::EmptyFile,
        ),
        (
            "writable map of a read-only fd",
            request(0, 0, 0, p, true),
            &readonly,
            Refusal::Mmap(libc::EACCES),
        ),
    ];
    for (what, req, fd, refusal) in cases {
        let answer = backend.shmem_map(&req, fd);
        assert!(answer.is_err(), "{what}: accepted");
        match last_map(&shmem) {
            Event::Map { ok, refused, .. } => {
                assert!(!ok, "{what}");
                assert_eq!(refused, Some(refusal), "{what}");
            }
            _ => unreachable!(),
        }
        assert!(shmem.mappings(0).is_empty(), "{what}");
        assert!(window.mappings().is_empty(), "{what}");
    }
    // Every refusal was answered (1, QEMU's `!!ret`) and nothing committed.
    let log = shmem.log();
    assert_eq!(commits(&log), 0, "{log:#?}");
    let replies: Vec<u64> = log
        .iter()
        .filter_map(|e| match e {
            Event::Replied { value, .. } => Some(*value),
            _ => None,
        })
        .collect();
    assert_eq!(replies, vec![1; 10]);
    // The channel stayed open: a good request goes through. A read-only
    // map of the read-only fd is fine.
    backend
        .shmem_map(&request(0, p, 0, 3 * p, false), &readonly)
        .unwrap();
    wait_commits(&shmem, 1);
    assert_eq!(window.read(0, 3 * p).unwrap(), pattern(p, 3 * p));
}

/// Writes a raw backend request (no fd) on `stream`; returns the reply's
/// value.
fn raw_request(stream: &UnixStream, request: u32, payload: &[u8]) -> u64 {
    use std::io::{Read, Write};
    let mut message = Vec::new();
    message.extend_from_slice(&request.to_le_bytes());
    message.extend_from_slice(&(1u32 | (1 << 3)).to_le_bytes());
    message.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    message.extend_from_slice(payload);
    (&*stream).write_all(&message).unwrap();
    let mut reply = [0u8; 20];
    (&*stream).read_exact(&mut reply).unwrap();
    assert_eq!(u32::from_le_bytes(reply[0..4].try_into().unwrap()), request);
    assert_eq!(
        u32::from_le_bytes(reply[4..8].try_into().unwrap()),
        1 | (1 << 2)
    );
    assert_eq!(u32::from_le_bytes(reply[8..12].try_into().unwrap()), 8);
    u64::from_le_bytes(reply[12..20].try_into().unwrap())
}

#[test]
fn a_map_without_an_fd_and_other_requests_are_answered_1() {
    let shmem = QemuShmem::with_region(WINDOW);
    let mut channel = Channel::spawn(&shmem).unwrap();
    let end = channel.take_backend_end().unwrap();
    end.set_read_timeout(Some(WAIT)).unwrap();
    let map = request(0, 0, 0, page(), false);
    use vm_memory::ByteValued;
    assert_eq!(raw_request(&end, 9, map.as_slice()), 1);
    assert!(matches!(
        last_map(&shmem),
        Event::Map {
            refused: Some(Refusal::NoFd),
            ..
        }
    ));
    // CONFIG_CHANGE_MSG: not QEMU's business here, answered 1.
    assert_eq!(raw_request(&end, 2, &[]), 1);
    assert!(shmem
        .log()
        .iter()
        .any(|e| matches!(e, Event::Other { request: 2, .. })));
    // A payload longer than any QEMU knows closes the channel.
    use std::io::Write;
    let mut huge = Vec::new();
    huge.extend_from_slice(&9u32.to_le_bytes());
    huge.extend_from_slice(&1u32.to_le_bytes());
    huge.extend_from_slice(&(1u32 << 20).to_le_bytes());
    (&end).write_all(&huge).unwrap();
    assert!(shmem.wait_log(WAIT, |log| log.iter().any(|e| matches!(
        e,
        Event::Closed {
            why: Closed::Broken(_),
            ..
        }
    ))));
    assert!(channel.is_closed());
}

#[test]
fn an_overlapping_map_is_refused() {
    let shmem = QemuShmem::with_region(WINDOW);
    let window = shmem.window(0).unwrap();
    let (_channel, backend) = channel(&shmem);
    let p = page();
    let file = memfd(64 * p);
    backend
        .shmem_map(&request(0, 0, 8 * p, 8 * p, false), &file)
        .unwrap();
    for (shm_offset, len) in [
        (8 * p, 8 * p),
        (4 * p, 5 * p),
        (15 * p, 2 * p),
        (0, 32 * p),
        (9 * p, p),
    ] {
        assert!(backend
            .shmem_map(&request(0, 32 * p, shm_offset, len, false), &file)
            .is_err());
        assert!(matches!(
            last_map(&shmem),
            Event::Map {
                refused: Some(Refusal::Overlap),
                ..
            }
        ));
    }
    // Touching is not overlapping.
    backend
        .shmem_map(&request(0, 32 * p, 4 * p, 4 * p, false), &file)
        .unwrap();
    backend
        .shmem_map(&request(0, 40 * p, 16 * p, 4 * p, false), &file)
        .unwrap();
    wait_commits(&shmem, 3);
    assert_eq!(window.mappings().len(), 3);
    assert_eq!(window.read(4 * p, 16 * p).unwrap().len() as u64, 16 * p);
}

#[test]
fn an_unmapped_range_reads_as_an_error_and_unmap_wants_the_exact_mapping() {
    let shmem = QemuShmem::with_region(WINDOW);
    let window = shmem.window(0).unwrap();
    let (_channel, backend) = channel(&shmem);
    let p = page();
    let file = memfd(16 * p);
    backend
        .shmem_map(&request(0, 0, 0, 8 * p, false), &file)
        .unwrap();
    backend
        .shmem_map(&request(0, 8 * p, 8 * p, 8 * p, false), &file)
        .unwrap();
    wait_commits(&shmem, 2);
    // A part of a mapping, one spanning both, one of the wrong length: not
    // found (reply 1), nothing unmapped.
    for (shm_offset, len) in [
        (0, 4 * p),
        (4 * p, 4 * p),
        (0, 16 * p),
        (0, 9 * p),
        (32 * p, p),
    ] {
        assert!(backend
            .shmem_unmap(&request(0, 0, shm_offset, len, false))
            .is_err());
        match shmem.log().last().unwrap() {
            Event::Replied { value: 1, .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(shmem.log().iter().any(|e| matches!(
        e,
        Event::Unmap {
            refused: Some(Refusal::NotMapped),
            ..
        }
    )));
    assert_eq!(window.read(0, 16 * p).unwrap(), pattern(0, 16 * p));
    // The exact one goes; its range then reads as an error.
    backend
        .shmem_unmap(&request(0, 0, 0, 8 * p, false))
        .unwrap();
    wait_commits(&shmem, 3);
    assert!(matches!(
        window.read(0, p),
        Err(WindowError::Unmapped { offset: 0 })
    ));
    assert!(matches!(
        window.read(7 * p, 2 * p),
        Err(WindowError::Unmapped { offset }) if offset == 7 * p
    ));
    assert_eq!(window.read(8 * p, 8 * p).unwrap(), pattern(8 * p, 8 * p));
    assert_eq!(window.kernel_protection(0).as_deref(), Some("---p"));
    // Twice: not found any more.
    assert!(backend
        .shmem_unmap(&request(0, 0, 0, 8 * p, false))
        .is_err());
    // The region's other checks hold for an unmap too.
    assert!(backend
        .shmem_unmap(&request(3, 0, 8 * p, 8 * p, false))
        .is_err());
    assert!(matches!(
        shmem
            .log()
            .iter()
            .rev()
            .find(|e| matches!(e, Event::Unmap { .. })),
        Some(Event::Unmap {
            refused: Some(Refusal::NoRegion),
            ..
        })
    ));
    assert_eq!(shmem.mappings(0).len(), 1);
}

#[test]
fn a_held_request_is_answered_only_once_released() {
    let shmem = QemuShmem::with_region(WINDOW);
    let window = shmem.window(0).unwrap();
    let (_channel, backend) = channel(&shmem);
    let p = page();
    let file = memfd(4 * p);
    shmem.hold_replies();
    let mapping = {
        let (backend, file) = (backend.clone(), file.try_clone().unwrap());
        std::thread::spawn(move || backend.shmem_map(&request(0, 0, 0, 4 * p, false), &file))
    };
    assert!(shmem.wait_held(1, WAIT));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!mapping.is_finished(), "answered while held");
    assert!(
        !shmem.log().iter().any(|e| matches!(e, Event::Map { .. })),
        "decided while held"
    );
    assert!(window.read(0, p).is_err());
    let released = Instant::now();
    shmem.release_replies(1);
    mapping.join().unwrap().unwrap();
    match last_map(&shmem) {
        Event::Map {
            ok: true,
            received,
            at,
            ..
        } => {
            assert!(at >= released);
            assert!(at.duration_since(received) >= Duration::from_millis(100));
        }
        other => panic!("{other:?}"),
    }
    wait_commits(&shmem, 1);
    assert_eq!(window.read(0, 4 * p).unwrap(), pattern(0, 4 * p));
    // Still held for the next one; unholding lets it through.
    let unmapping = {
        let backend = backend.clone();
        std::thread::spawn(move || backend.shmem_unmap(&request(0, 0, 0, 4 * p, false)))
    };
    assert!(shmem.wait_held(1, WAIT));
    shmem.unhold_replies();
    unmapping.join().unwrap().unwrap();
    assert_eq!(shmem.held_requests(), 0);
}

#[test]
fn a_failed_next_request_maps_or_unmaps_nothing() {
    let shmem = QemuShmem::with_region(WINDOW);
    let window = shmem.window(0).unwrap();
    let (_channel, backend) = channel(&shmem);
    let p = page();
    let file = memfd(4 * p);
    let req = request(0, 0, 0, 4 * p, true);
    shmem.fail_next();
    assert!(backend.shmem_map(&req, &file).is_err());
    assert!(matches!(
        last_map(&shmem),
        Event::Map {
            refused: Some(Refusal::Injected),
            ..
        }
    ));
    assert!(shmem.mappings(0).is_empty() && window.mappings().is_empty());
    // Only the next one.
    backend.shmem_map(&req, &file).unwrap();
    wait_commits(&shmem, 1);
    shmem.fail_next();
    assert!(backend.shmem_unmap(&req).is_err());
    assert_eq!(shmem.mappings(0).len(), 1);
    assert_eq!(window.read(0, 4 * p).unwrap(), pattern(0, 4 * p));
    backend.shmem_unmap(&req).unwrap();
    wait_commits(&shmem, 2);
    assert!(window.mappings().is_empty());
}

#[test]
fn the_commit_comes_after_the_reply() {
    let shmem = QemuShmem::with_region(WINDOW);
    let window = shmem.window(0).unwrap();
    let hook = recording_hook(&shmem);
    let (_channel, backend) = channel(&shmem);
    let p = page();
    let file = memfd(4 * p);
    let req = request(0, 0, 2 * p, 4 * p, false);
    backend.shmem_map(&req, &file).unwrap();
    let (called, commit) = hook.recv_timeout(WAIT).unwrap();
    let Commit::Add(region) = commit else {
        panic!("{commit:?}")
    };
    assert_eq!(region.guest_phys_addr, WINDOW_GPA + 2 * p);
    assert_eq!(region.userspace_addr, window.host_addr() + 2 * p);
    assert_eq!(
        (region.info().memory_size, region.info().mmap_offset),
        (4 * p, 0)
    );
    // Logged once the hook returned.
    wait_commits(&shmem, 1);
    let log = shmem.log();
    let position = |pred: &dyn Fn(&Event) -> bool| log.iter().position(pred).unwrap();
    let map = position(&|e| matches!(e, Event::Map { ok: true, .. }));
    let replied = position(&|e| matches!(e, Event::Replied { value: 0, .. }));
    let committed = position(&|e| matches!(e, Event::Commit { sent: true, .. }));
    assert!(map < replied && replied < committed, "{log:#?}");
    assert!(called >= log[replied].at());
    assert_eq!(shmem.told().len(), 1);

    // Between the reply and the commit B still reaches what was unmapped.
    shmem.hold_commits();
    backend.shmem_unmap(&req).unwrap();
    assert!(shmem.wait_held_commits(1, WAIT));
    assert!(
        shmem.mappings(0).is_empty(),
        "QEMU's list changed at the reply"
    );
    assert_eq!(window.read(2 * p, 4 * p).unwrap(), pattern(0, 4 * p));
    assert!(hook.try_recv().is_err(), "told before the commit");
    assert_eq!(shmem.told().len(), 1);
    let released = Instant::now();
    shmem.release_commits(1);
    let (called, commit) = hook.recv_timeout(WAIT).unwrap();
    assert!(matches!(commit, Commit::Remove(_)));
    assert!(called >= released);
    wait_commits(&shmem, 2);
    assert!(window.read(2 * p, p).is_err());
    assert!(shmem.told().is_empty());
    shmem.unhold_commits();
}

#[test]
fn writable_and_read_only_mappings() {
    let shmem = QemuShmem::with_region(WINDOW);
    let window = shmem.window(0).unwrap();
    let (_channel, backend) = channel(&shmem);
    let p = page();
    let file = memfd(8 * p);
    backend
        .shmem_map(&request(0, 0, 0, 4 * p, false), &file)
        .unwrap();
    backend
        .shmem_map(&request(0, 4 * p, 8 * p, 4 * p, true), &file)
        .unwrap();
    wait_commits(&shmem, 2);
    assert_eq!(window.protection(0), Some(false));
    assert_eq!(window.protection(8 * p), Some(true));
    assert_eq!(window.protection(5 * p), None);
    // The kernel agrees with the table.
    assert_eq!(window.kernel_protection(0).as_deref(), Some("r--s"));
    assert_eq!(window.kernel_protection(8 * p).as_deref(), Some("rw-s"));
    assert_eq!(window.kernel_protection(5 * p).as_deref(), Some("---p"));
    // A write into the read-only mapping is refused, not faulted, and
    // changes nothing.
    assert!(matches!(
        window.write(10, b"no"),
        Err(WindowError::ReadOnly { offset: 10 })
    ));
    assert_eq!(window.read(0, 4 * p).unwrap(), pattern(0, 4 * p));
    // Through the writable one it reaches the file.
    window.write(8 * p + 10, b"from B").unwrap();
    let mut back = [0u8; 6];
    file.read_exact_at(&mut back, 4 * p + 10).unwrap();
    assert_eq!(&back, b"from B");
    // A write starting in the writable mapping and running out of it.
    assert!(matches!(
        window.write(12 * p - 2, b"abcd"),
        Err(WindowError::Unmapped { offset }) if offset == 12 * p
    ));
}

#[test]
fn a_reset_drops_every_mapping_silently() {
    let shmem = QemuShmem::with_region(WINDOW);
    let window = shmem.window(0).unwrap();
    let hook = recording_hook(&shmem);
    let (_channel, backend) = channel(&shmem);
    let p = page();
    let file = memfd(8 * p);
    let first = request(0, 0, 0, 4 * p, false);
    let second = request(0, 4 * p, 8 * p, 4 * p, true);
    backend.shmem_map(&first, &file).unwrap();
    backend.shmem_map(&second, &file).unwrap();
    for _ in 0..2 {
        assert!(matches!(hook.recv_timeout(WAIT).unwrap().1, Commit::Add(_)));
    }
    shmem.reset();
    assert!(window.mappings().is_empty() && shmem.mappings(0).is_empty());
    assert!(window.read(0, p).is_err());
    match shmem.log().last().unwrap() {
        Event::Reset { dropped, .. } => assert_eq!(dropped.len(), 2),
        other => panic!("{other:?}"),
    }
    assert!(
        hook.try_recv().is_err(),
        "a reset tells the back-end nothing"
    );
    // An unmap of a dropped mapping fails; the channel stays.
    assert!(backend.shmem_unmap(&first).is_err());
    assert!(matches!(
        shmem
            .log()
            .iter()
            .rev()
            .find(|e| matches!(e, Event::Unmap { .. })),
        Some(Event::Unmap {
            refused: Some(Refusal::NotMapped),
            ..
        })
    ));
    // The device starts again: the back-end loses both.
    shmem.resume();
    let removed: Vec<u64> = (0..2)
        .map(|_| match hook.recv_timeout(WAIT).unwrap().1 {
            Commit::Remove(region) => region.mapping.shm_offset,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(removed, vec![0, 8 * p]);
    assert!(shmem.told().is_empty());
    backend.shmem_map(&first, &file).unwrap();
    assert!(matches!(hook.recv_timeout(WAIT).unwrap().1, Commit::Add(_)));
}

#[test]
fn a_stopped_device_hears_of_the_windows_at_its_start() {
    let shmem = QemuShmem::with_region(WINDOW);
    let window = shmem.window(0).unwrap();
    let hook = recording_hook(&shmem);
    let (_channel, backend) = channel(&shmem);
    let p = page();
    let file = memfd(8 * p);
    let kept = request(0, 0, 0, 4 * p, false);
    let gone = request(0, 4 * p, 8 * p, 4 * p, false);
    backend.shmem_map(&gone, &file).unwrap();
    assert!(matches!(hook.recv_timeout(WAIT).unwrap().1, Commit::Add(_)));
    shmem.set_stopped(true);
    backend.shmem_map(&kept, &file).unwrap();
    backend.shmem_unmap(&gone).unwrap();
    wait_commits(&shmem, 3);
    // The window changed; the back-end was told nothing.
    assert_eq!(window.read(0, 4 * p).unwrap(), pattern(0, 4 * p));
    assert!(window.read(8 * p, p).is_err());
    assert!(hook.recv_timeout(Duration::from_millis(100)).is_err());
    let unsent = shmem
        .log()
        .iter()
        .filter(|e| matches!(e, Event::Commit { sent: false, .. }))
        .count();
    assert_eq!(unsent, 2);
    shmem.set_stopped(false);
    let order: Vec<(bool, u64)> = (0..2)
        .map(|_| {
            let commit = hook.recv_timeout(WAIT).unwrap().1;
            (
                matches!(commit, Commit::Add(_)),
                commit.region().mapping.shm_offset,
            )
        })
        .collect();
    assert_eq!(order, vec![(false, 8 * p), (true, 0)]);
    assert_eq!(shmem.told().len(), 1);
}

#[test]
fn a_dropped_channel_answers_nothing_more() {
    let shmem = QemuShmem::with_region(WINDOW);
    let (channel, backend) = channel(&shmem);
    let p = page();
    let file = memfd(4 * p);
    shmem.hold_replies();
    let mapping = {
        let (backend, file) = (backend.clone(), file.try_clone().unwrap());
        std::thread::spawn(move || backend.shmem_map(&request(0, 0, 0, 4 * p, false), &file))
    };
    assert!(shmem.wait_held(1, WAIT));
    assert!(channel.drop_channel());
    assert!(mapping.join().unwrap().is_err());
    let log = shmem.log();
    assert!(
        !log.iter().any(|e| matches!(e, Event::Map { .. })),
        "{log:#?}"
    );
    assert!(matches!(
        log.last(),
        Some(Event::Closed {
            why: Closed::Dropped,
            ..
        })
    ));
    assert!(backend
        .shmem_map(&request(0, 0, 0, 4 * p, false), &file)
        .is_err());
    assert!(shmem.window(0).unwrap().mappings().is_empty());
}

#[test]
fn a_back_end_that_closes_its_end_ends_the_channel() {
    let shmem = QemuShmem::with_region(WINDOW);
    let (channel, backend) = channel(&shmem);
    drop(backend);
    assert!(shmem.wait_log(WAIT, |log| log.iter().any(|e| matches!(
        e,
        Event::Closed {
            why: Closed::ByPeer,
            ..
        }
    ))));
    assert!(channel.is_closed());
}

#[test]
fn the_front_end_option_asks_cenallocd_for_nothing_it_does_not_offer() {
    let socket = spawn_daemon(DeviceConfig::default_layout());
    let shmem = QemuShmem::new();
    let (mut harness, setup) = Harness::connect_with_window(&socket, WANTED_FEATURES, &shmem);
    // vhost's back-end side offers REPLY_ACK to everyone; QEMU takes it.
    assert_eq!(
        window_features(setup.acked),
        VhostUserProtocolFeatures::REPLY_ACK,
        "{:?}",
        setup.acked
    );
    assert!(setup.channel.is_none() && setup.regions.is_empty());
    assert_eq!(setup.max_mem_slots, None);
    assert!(shmem.window(0).is_none());
    harness.run(Cmd::get_info()).ok();
}

/// A vhost-user-backend device offering what a window needs: the backend
/// channel, one shared memory region, REPLY_ACK and CONFIGURE_MEM_SLOTS.
#[derive(Default)]
struct WindowDevice {
    backend: Mutex<Option<Backend>>,
    memory: Mutex<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
}

impl VhostUserBackend for WindowDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> usize {
        256
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::SHMEM
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        *self.memory.lock().unwrap() = Some(mem);
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        *self.backend.lock().unwrap() = Some(backend);
    }

    fn get_shmem_config(&self) -> std::io::Result<VhostUserShMemConfig> {
        Ok(VhostUserShMemConfig::new(1, &[WINDOW]))
    }

    /// The library keeps the consumer's descriptor for good (one per
    /// connection, a test's worth); without an exit event its workers would
    /// never end.
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        _device_event: u16,
        _evset: EventSet,
        _vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        Ok(())
    }
}

impl WindowDevice {
    /// The back-end's guest memory as it stands.
    fn memory(&self) -> GuestMemoryMmap {
        let memory = self.memory.lock().unwrap();
        let memory = memory.as_ref().expect("a memory table");
        GuestMemoryMmap::clone(&memory.memory())
    }
}

#[test]
fn end_to_end_the_back_end_maps_and_sees_the_window_in_its_table() {
    let path = std::env::temp_dir().join(format!("shmem-harness-{}.sock", std::process::id()));
    let mut listener = Listener::new(&path, true).unwrap();
    let device = Arc::new(WindowDevice::default());
    let mut daemon = VhostUserDaemon::new(
        "window-device".into(),
        device.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .unwrap();
    let served = std::thread::spawn(move || {
        daemon.start(&mut listener).unwrap();
        let _ = daemon.wait();
    });

    // QEMU's set-up of the device.
    let mut frontend = Frontend::connect(&path, 1).unwrap();
    frontend.set_owner().unwrap();
    let features = frontend.get_features().unwrap();
    frontend.set_features(features).unwrap();
    let offered = frontend.get_protocol_features().unwrap();
    let acked = window_features(offered);
    assert_eq!(acked, device.protocol_features());
    frontend.set_protocol_features(acked).unwrap();
    let shmem = QemuShmem::new();
    let setup = set_up_window(&mut frontend, acked, &shmem).unwrap();
    assert_eq!(setup.regions, vec![(0, WINDOW)]);
    assert!(setup.max_mem_slots.is_some_and(|slots| slots > 8));
    assert!(setup.channel.is_some());
    let window = shmem.window(0).unwrap();
    assert_eq!(window.size(), WINDOW);
    shmem.set_on_commit(frontend_hook(frontend.clone()));
    // GET_SHMEM_CONFIG was answered after SET_BACKEND_REQ_FD was handled.
    let backend = device
        .backend
        .lock()
        .unwrap()
        .clone()
        .expect("the channel's end");

    // The back-end maps part of a file; the commit adds the window region
    // to its memory table, where it reads what B's window shows.
    let p = page();
    let file = memfd(64 * p);
    let map = request(0, 16 * p, 32 * p, 8 * p, true);
    backend.shmem_map(&map, &file).unwrap();
    wait_commits(&shmem, 1);
    match shmem.log().last().unwrap() {
        Event::Commit {
            sent: true,
            error: None,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let gpa = WINDOW_GPA + 32 * p;
    let mut seen = vec![0u8; (8 * p) as usize];
    device
        .memory()
        .read_slice(&mut seen, GuestAddress(gpa))
        .unwrap();
    assert_eq!(seen, pattern(16 * p, 8 * p));
    window.write(32 * p + 100, b"from B").unwrap();
    let mut back = [0u8; 6];
    device
        .memory()
        .read_slice(&mut back, GuestAddress(gpa + 100))
        .unwrap();
    assert_eq!(&back, b"from B");

    // The unmap's commit takes it out again.
    backend.shmem_unmap(&map).unwrap();
    wait_commits(&shmem, 2);
    use vm_memory::GuestMemoryBackend;
    assert!(!device.memory().address_in_range(GuestAddress(gpa)));
    assert!(shmem.told().is_empty());

    // A read-only fd in the memory table: vhost-user-backend maps every
    // region read-write, fails (EACCES) and ends the connection, which the
    // hook's fence finds closed. QEMU's window took the map.
    let readonly = read_only(&file);
    backend
        .shmem_map(&request(0, 0, 0, 4 * p, false), &readonly)
        .unwrap();
    wait_commits(&shmem, 3);
    match shmem.log().last().unwrap() {
        Event::Commit {
            sent: true,
            error: Some(_),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(window.read(0, 4 * p).unwrap(), pattern(0, 4 * p));
    let deadline = Instant::now() + WAIT;
    while !served.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the device kept a connection whose table it could not map"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    served.join().unwrap();
    drop((setup, shmem, frontend));
    let _ = std::fs::remove_file(&path);
}
