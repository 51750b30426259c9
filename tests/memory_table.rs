//! Guest memory files a hostile front-end hands over (SET_MEM_TABLE): a
//! file shorter than its regions, or one it can shrink later, would make
//! the daemon's first access to the missing pages raise SIGBUS and kill
//! it, with every VM it serves. The daemon refuses such a memory table
//! (the connection of that front-end ends) and the other VMs keep their
//! device. Run against the real `cenallocd` process, sandboxed as
//! deployed (seccomp kill, Landlock).

mod common;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cenalloc::protocol::*;
use common::*;

/// A daemon with two VMs: `good` (the process's first socket) and `bad`.
fn two_vm_daemon() -> (DaemonProcess, PathBuf) {
    let bad = std::env::temp_dir().join(format!(
        "cenalloc-memtable-{}-{}.sock",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let _ = std::fs::remove_file(&bad);
    let bad_arg = format!("bad={}", bad.display());
    let daemon = DaemonProcess::spawn(&["--socket-path", &bad_arg]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bad.exists() {
        assert!(Instant::now() < deadline, "no socket {}", bad.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    (daemon, bad)
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The memfd keeps its first 16 MiB (rings and scratch, which this test
/// VMM writes itself); the pool memory above, in the regions, has none.
const SHORT_LEN: u64 = 16 << 20;

/// A guest's ordinary work: a buffer, filled by the device, checked.
fn guest_works(harness: &mut Harness) {
    let (buffer, attachment, segments) =
        harness.mapped_buffer(65536, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    harness.run(Cmd::fill(buffer, 42)).ok();
    let expected = fnv1a(&read_buffer(&harness.ram, &segments));
    assert_eq!(harness.device_checksum(buffer), expected);
    harness.release_buffer(buffer, attachment);
}

/// What a front-end does once its memory table was accepted: donate pool
/// memory in high RAM (where a short file has no pages) and have the
/// device zero and fill a buffer there. Run on a thread of its own: the
/// harness panics if the device stops answering.
fn touch_high_ram(mut harness: Harness) {
    let size = harness.config.pools[0].size.min(HIGH_RAM);
    let answer = harness.run(Cmd::pool_add(0, &[(HIGH_BASE, size)]));
    assert_eq!(answer.status, 0, "POOL_ADD: {answer:?}");
    let answer = harness.batch(&[
        Cmd::create(65536, 0),
        Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]),
        Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL, 1024),
    ]);
    let created: CreateResp = answer.answers[0].get();
    harness.run(Cmd::fill(created.buffer_id, 7));
}

/// Whether `connected` (a front-end whose memory table was accepted)
/// could make the daemon touch its missing pages: after that, the daemon
/// must still run and serve `good`.
fn check_daemon_survives(
    daemon: &mut DaemonProcess,
    good: &mut Harness,
    connected: Option<Harness>,
) {
    if let Some(bad) = connected {
        let hostile = std::thread::spawn(move || touch_high_ram(bad));
        // It ends with an error, or an answer, or the daemon's death.
        let _ = hostile.join();
    }
    if let Some(status) = daemon.child.try_wait().unwrap() {
        panic!(
            "one front-end's memory file killed the daemon for every VM: {status:?}\n{}",
            daemon.log_text()
        );
    }
    guest_works(good);
}

fn connect_good(socket: &Path) -> Harness {
    let mut good = Harness::connect(socket, WANTED_FEATURES);
    good.donate_all();
    guest_works(&mut good);
    good
}

#[test]
fn a_memory_file_shorter_than_its_regions_is_refused_and_the_other_vm_keeps_its_device() {
    let (mut daemon, bad_socket) = two_vm_daemon();
    let mut good = connect_good(&daemon.socket.clone());

    let short = GuestRam::with_file(SHORT_LEN, true);
    let attempt = Harness::try_connect_with_ram(&bad_socket, WANTED_FEATURES, short);
    let refused = attempt.is_err();
    check_daemon_survives(&mut daemon, &mut good, attempt.ok());
    assert!(
        refused,
        "a memory table with a short file was accepted\n{}",
        daemon.log_text()
    );
    assert!(
        daemon.log_text().contains("memory table refused"),
        "{}",
        daemon.log_text()
    );
    // The refusal ended that connection only: the VM's next front-end,
    // with whole memory, is served.
    let mut next = Harness::connect(&bad_socket, WANTED_FEATURES);
    next.donate_all();
    guest_works(&mut next);
    guest_works(&mut good);
}

#[test]
fn a_memory_file_the_front_end_could_shrink_later_is_refused() {
    let (mut daemon, bad_socket) = two_vm_daemon();
    let mut good = connect_good(&daemon.socket.clone());

    // Whole, but not sealed: the front-end shrinks it once the daemon
    // has mapped it.
    let unsealed = GuestRam::with_file(LOW_RAM + HIGH_RAM, false);
    let memfd = unsealed.memfd().try_clone().unwrap();
    let attempt = Harness::try_connect_with_ram(&bad_socket, WANTED_FEATURES, unsealed);
    let refused = attempt.is_err();
    memfd.set_len(SHORT_LEN).unwrap();
    check_daemon_survives(&mut daemon, &mut good, attempt.ok());
    assert!(
        refused,
        "a memory table with an unsealed file was accepted\n{}",
        daemon.log_text()
    );
    assert!(
        daemon.log_text().contains("F_SEAL_SHRINK"),
        "{}",
        daemon.log_text()
    );
}

#[test]
fn a_sealed_memory_file_cannot_shrink_and_is_served() {
    let (mut daemon, bad_socket) = two_vm_daemon();
    let mut good = connect_good(&daemon.socket.clone());

    // What QEMU's memory-backend-memfd gives (seal=on by default).
    let mut sealed = Harness::connect(&bad_socket, WANTED_FEATURES);
    let memfd = sealed.ram.memfd().try_clone().unwrap();
    let shrink = memfd.set_len(SHORT_LEN).unwrap_err();
    assert_eq!(shrink.raw_os_error(), Some(libc::EPERM), "{shrink}");
    // SAFETY: fcntl on a descriptor this test owns.
    let seals = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_GET_SEALS) };
    assert_ne!(seals & libc::F_SEAL_SHRINK, 0);
    sealed.donate_all();
    guest_works(&mut sealed);
    check_daemon_survives(&mut daemon, &mut good, None);
}
