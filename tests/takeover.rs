//! A serving process taking a VM over from its journal (issue 16): an
//! in-process daemon serves a front-end with its device journaled, its
//! connection ends as a dead process's would, and a second daemon, given
//! the same journal to take over from, gets the session again exactly as
//! the holder of `cenallocd --supervise` replays it (the rings from the
//! bases they were first set up with, long behind). The second must have
//! the first one's buffers, go on from the used ring where the first left
//! it, publish an answer the first committed but did not put on the used
//! ring, and run no chain twice.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::thread::JoinHandle;

use cenalloc::adoption::JournalSlot;
use cenalloc::device::DeviceConfig;
use cenalloc::protocol::*;
use common::*;

fn journal_file() -> OwnedFd {
    // SAFETY: memfd_create with a NUL-terminated name; checked below.
    let fd = unsafe { libc::memfd_create(c"test-journal".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A VM's front-end, the daemon serving it, and its device journal.
struct Vm {
    harness: Harness,
    daemon: Option<JoinHandle<()>>,
    journal: OwnedFd,
}

/// A front-end served by a daemon that journals, with the pools donated.
fn journaled() -> Vm {
    let journal = journal_file();
    let (socket, daemon) = spawn_journaled(
        DeviceConfig::default_layout(),
        JournalSlot::Fresh(journal.try_clone().unwrap()),
    );
    let mut harness = Harness::connect(&socket, WANTED_FEATURES);
    harness.donate_all();
    Vm {
        harness,
        daemon: Some(daemon),
        journal,
    }
}

/// The daemon's connection ends (it is gone for good, as a killed
/// process), and the session is replayed into a new daemon that takes the
/// device over from the journal.
fn take_over(vm: &mut Vm) {
    let (old, journal) = (vm.daemon.take(), &vm.journal);
    let mut next = None;
    vm.harness.replay_session(|| {
        old.unwrap().join().unwrap();
        let (socket, daemon) = spawn_journaled(
            DeviceConfig::default_layout(),
            JournalSlot::Adopt(journal.try_clone().unwrap()),
        );
        next = Some(daemon);
        socket
    });
    vm.daemon = next;
}

/// A new buffer of `size` bytes, mapped and filled with `seed`'s pattern:
/// its id, its attachment's id and its checksum.
fn filled_buffer(harness: &mut Harness, size: u64, seed: u64) -> (u32, u32, u64) {
    let answer = harness.batch(&[
        Cmd::create(size, 0),
        Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]),
        Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_TO_DEVICE, 16),
        Cmd::fill(CENALLOC_BATCH_REF, seed),
        Cmd::checksum(CENALLOC_BATCH_REF),
    ]);
    assert_eq!(answer.status, 0, "{answer:?}");
    let created: CreateResp = answer.answers[0].get();
    let attached: AttachResp = answer.answers[1].get();
    let sum: ChecksumResp = answer.answers[4].get();
    (created.buffer_id, attached.attach_id, sum.checksum)
}

fn checksum(harness: &mut Harness, buffer: u32) -> u64 {
    let sum: ChecksumResp = harness.run(Cmd::checksum(buffer)).ok().get();
    sum.checksum
}

#[test]
fn the_device_taken_over_is_the_one_the_dead_process_had() {
    let mut vm = journaled();
    let harness = &mut vm.harness;
    let (a, a_attach, a_sum) = filled_buffer(harness, 64 << 10, 1);
    let (b, b_attach, _) = filled_buffer(harness, 8 << 10, 2);
    let (c, _, c_sum) = filled_buffer(harness, 4 << 10, 3);
    let answer = harness.batch(&[
        Cmd::unmap(b_attach, CENALLOC_DIR_TO_DEVICE),
        Cmd::detach(b_attach),
        Cmd::free(b),
    ]);
    assert_eq!(answer.status, 0, "{answer:?}");
    let avail = harness.control_avail_idx();

    take_over(&mut vm);
    let harness = &mut vm.harness;

    // The buffers, their backings and their contents: the checksums are
    // computed now, by the new process, over the segments it rebuilt.
    assert_eq!(checksum(harness, a), a_sum);
    assert_eq!(checksum(harness, c), c_sum);
    // The freed buffer stays freed; ids go on after the last one.
    assert_eq!(harness.run(Cmd::checksum(b)).status, -libc::ENOENT);
    let next: CreateResp = harness.run(Cmd::create(4096, 0)).ok().get();
    assert_eq!(next.buffer_id, c + 1);
    // The attachment and its mapping too: unmap, detach, free succeed.
    let answer = harness.batch(&[
        Cmd::unmap(a_attach, CENALLOC_DIR_TO_DEVICE),
        Cmd::detach(a_attach),
        Cmd::free(a),
    ]);
    assert_eq!(answer.status, 0, "{answer:?}");
    // No chain ran twice: the new process took only the chains posted
    // after the take-over (avail index `avail` on), one answer each.
    assert_eq!(harness.control_used_idx(), harness.control_avail_idx());
    assert_eq!(harness.control_avail_idx().wrapping_sub(avail), 5);
}

#[test]
fn an_answer_committed_but_not_on_the_used_ring_is_published_not_run_again() {
    let mut vm = journaled();
    let harness = &mut vm.harness;
    let created: CreateResp = harness.run(Cmd::create(4096, 0)).ok().get();
    let published = harness.control_used_idx();
    // As if the process died between the journal and the used ring.
    let entry = harness.unpublish_last_answer();

    take_over(&mut vm);
    let harness = &mut vm.harness;

    // The new process puts the same answer on the used ring, at the same
    // place, without running the CREATE again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while harness.control_used_idx() != published {
        assert!(
            std::time::Instant::now() < deadline,
            "the answer was never published"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(harness.control_used_entry(published.wrapping_sub(1)), entry);
    harness.resync_control(harness.control_avail_idx());
    let next: CreateResp = harness.run(Cmd::create(4096, 0)).ok().get();
    assert_eq!(next.buffer_id, created.buffer_id + 1);
}

#[test]
fn a_ring_stop_right_after_the_take_over_returns_where_the_ring_is() {
    let mut vm = journaled();
    let harness = &mut vm.harness;
    filled_buffer(harness, 4096, 1);
    filled_buffer(harness, 4096, 2);
    let avail = harness.control_avail_idx();
    assert!(avail > 2);

    take_over(&mut vm);
    let harness = &mut vm.harness;

    // The base QEMU would save at a pause is the ring's real position,
    // not the replayed base 0.
    let bases = harness.stop_queues();
    assert_eq!(bases[0], avail);
    harness.start_queues(&bases);
    assert_eq!(checksum(harness, 1), checksum(harness, 1));
    assert_eq!(harness.control_used_idx(), harness.control_avail_idx());
}

#[test]
fn an_unreadable_journal_gives_an_empty_device_not_a_dead_one() {
    let mut vm = journaled();
    let harness = &mut vm.harness;
    filled_buffer(harness, 4096, 1);
    // Garbage over the header.
    let file = std::fs::File::from(vm.journal.try_clone().unwrap());
    std::os::unix::fs::FileExt::write_all_at(&file, b"garbage!", 0).unwrap();

    take_over(&mut vm);
    let harness = &mut vm.harness;

    // The VM is served; its buffer is gone, as after a RESET.
    assert_eq!(harness.run(Cmd::checksum(1)).status, -libc::ENOENT);
    let info: InfoResp = harness.run(Cmd::get_info()).ok().get();
    assert_eq!(info.version, CENALLOC_PROTOCOL_VERSION);
}

#[test]
fn a_take_over_notifies_the_driver_of_what_the_dead_process_used() {
    let mut vm = journaled();
    filled_buffer(&mut vm.harness, 4096, 1);
    // As if the dead process put its last answer on the used ring but
    // died before the used-buffer notification.
    vm.harness.drain_call(0);
    vm.harness.drain_call(1);

    take_over(&mut vm);

    // A driver sleeping on the interrupt is woken.
    assert!(vm
        .harness
        .notified_within(0, std::time::Duration::from_secs(5)));
    assert!(vm
        .harness
        .notified_within(1, std::time::Duration::from_secs(5)));
}

/// The same, again and again: the new daemon serves the replayed session
/// before its vring worker may have run, and a ring stop that came
/// before the worker handed the backend its vrings returned the replayed
/// base (0) instead of where the ring is (a fifth to a third of these
/// take-overs, before the backend waited for its vrings).
#[test]
fn every_ring_stop_right_after_a_take_over_returns_where_the_ring_is() {
    let mut vm = journaled();
    for round in 0..50 {
        filled_buffer(&mut vm.harness, 4096, round);
        let avail = vm.harness.control_avail_idx();
        take_over(&mut vm);
        let bases = vm.harness.stop_queues();
        assert_eq!(bases[0], avail, "take-over {round}");
        vm.harness.start_queues(&bases);
    }
    assert_eq!(checksum(&mut vm.harness, 1), checksum(&mut vm.harness, 1));
    assert_eq!(
        vm.harness.control_used_idx(),
        vm.harness.control_avail_idx()
    );
}
