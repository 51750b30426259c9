//! The control socket through the VMM harness: every request, bad and
//! oversized requests, clients that vanish mid-request, and exports (bytes
//! equal to guest RAM, read-only as documented, revoked on free, migration,
//! disconnect and a new memory table).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use cenalloc::config::device_config;
use cenalloc::control::client::{Client, Status};
use cenalloc::control::protocol::*;
use cenalloc::control::server::ControlPolicy;
use cenalloc::device::DeviceConfig;
use cenalloc::protocol::*;
use cenalloc::registry::DaemonLimits;
use common::*;

fn pools(flags: &[&str]) -> DeviceConfig {
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    device_config(None, &flags).unwrap()
}

fn daemon(vms: &[(&str, DeviceConfig)]) -> TestDaemon {
    spawn_vms(vms, DaemonLimits::default(), ControlPolicy::default())
}

/// Sends raw bytes, returns the answer lines read until `count` lines or
/// end of file.
fn raw_exchange(stream: &mut UnixStream, bytes: &[u8], count: usize) -> Vec<serde_json::Value> {
    stream.write_all(bytes).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = Vec::new();
    for _ in 0..count {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        out.push(serde_json::from_str(&line).unwrap());
    }
    out
}

fn code_of(answer: &serde_json::Value) -> String {
    answer["error"]["code"].as_str().unwrap_or("").to_string()
}

#[test]
fn every_command_round_trips() {
    let daemon = daemon(&[
        ("alpha", pools(&["system:1M", "contig:1M"])),
        ("beta", pools(&["system:1M"])),
    ]);
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    let (buffer, _, segments) =
        harness.mapped_buffer(3 * 4096, CENALLOC_KIND_CONTIG, &[CENALLOC_MAP_CONTIG]);
    harness.run(Cmd::create(4096, 0)).ok();

    let mut client = Client::connect(&daemon.control).unwrap();
    let hello = client.hello().unwrap();
    assert_eq!(hello.protocol, PROTOCOL_VERSION);
    assert_eq!(hello.pid, std::process::id());

    let vms = client.vms().unwrap();
    assert_eq!(vms.len(), 2);
    assert_eq!(vms[0].name, "alpha");
    assert_eq!(vms[0].state, VmState::Connected);
    assert_eq!(vms[0].buffers, 2);
    assert_eq!(vms[0].total_bytes, 4 * 4096);
    assert_eq!(vms[0].backing_bytes, 3 * 4096);
    assert_eq!(vms[0].pool_capacity, 2 << 20);
    assert_eq!(vms[0].pool_free, (2 << 20) - 3 * 4096);
    assert_eq!(vms[0].connections, 1);
    assert_eq!(vms[1].name, "beta");
    assert_eq!(vms[1].state, VmState::Waiting);
    assert_eq!(vms[1].connected_secs, None);

    let buffers = client.buffers(None).unwrap();
    assert_eq!(buffers.len(), 2);
    let first = &buffers[0];
    assert_eq!(
        (first.vm.as_str(), first.id, first.size),
        ("alpha", buffer, 3 * 4096)
    );
    assert_eq!(first.allocator.as_deref(), Some("contig"));
    assert_eq!(
        first.backing,
        vec![GuestRange {
            gpa: segments[0].0,
            len: segments[0].1
        }]
    );
    assert_eq!((first.attachments, first.maps, first.exports), (1, 1, 0));
    assert_eq!(buffers[1].allocator, None);
    assert_eq!(client.buffers(Some("alpha")).unwrap(), buffers);
    assert!(client.buffers(Some("beta")).unwrap().is_empty());

    let allocators = client.allocators(Some("alpha")).unwrap();
    assert_eq!(allocators.len(), 2);
    assert_eq!(allocators[1].name, "contig");
    assert_eq!(allocators[1].strategy, "contiguous");
    assert_eq!(allocators[1].capacity, 1 << 20);
    assert_eq!(allocators[1].free, (1 << 20) - 3 * 4096);
    assert_eq!(allocators[1].buffers, 1);
    assert_eq!(client.allocators(None).unwrap(), allocators);

    let stats = client.stats(None).unwrap();
    assert_eq!(stats.daemon.vms, 2);
    assert_eq!(stats.daemon.connected, 1);
    assert_eq!(stats.daemon.control_clients, 1);
    assert_eq!(stats.vms.len(), 1);
    assert_eq!(stats.vms[0].model["live_buffers"], 2);
    assert!(stats.vms[0].device["commands"] >= 5);
    assert_eq!(client.stats(Some("beta")).unwrap().vms.len(), 0);

    let export = client.export("alpha", buffer, false).unwrap();
    assert_eq!(export.info.size, 3 * 4096);
    assert!(export.is_valid());
    assert_eq!(client.vms().unwrap()[0].exports, 1);
    assert_eq!(client.buffers(Some("alpha")).unwrap()[0].exports, 1);
    client.release(export.info.export).unwrap();
    assert_eq!(export.status(), Status::Revoked(Revocation::Released));
    assert_eq!(client.vms().unwrap()[0].exports, 0);

    // Unknown names and ids.
    for (result, code) in [
        (client.buffers(Some("gamma")).err(), ErrorCode::UnknownVm),
        (client.allocators(Some("gamma")).err(), ErrorCode::UnknownVm),
        (client.stats(Some("gamma")).err(), ErrorCode::UnknownVm),
        (client.export("gamma", 1, false).err(), ErrorCode::UnknownVm),
        (
            client.export("beta", 1, false).err(),
            ErrorCode::NotConnected,
        ),
        (
            client.export("alpha", 999, false).err(),
            ErrorCode::UnknownBuffer,
        ),
        (
            client.export("alpha", buffer + 1, false).err(),
            ErrorCode::NotExportable,
        ),
        (
            client.export("alpha", buffer, true).err(),
            ErrorCode::Forbidden,
        ),
        (
            client.release(export.info.export).err(),
            ErrorCode::UnknownExport,
        ),
    ] {
        let error = result.expect("a request that must fail succeeded");
        assert_eq!(error.code(), Some(code), "{error}");
    }
    // Still serving after the errors.
    assert_eq!(client.vms().unwrap().len(), 2);
}

#[test]
fn bad_and_oversized_requests_get_errors_and_change_nothing() {
    let daemon = daemon(&[("vm", pools(&["system:1M"]))]);
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    harness.run(Cmd::create(4096, 0)).ok();

    let mut stream = UnixStream::connect(&daemon.control).unwrap();
    // Pipelined in one write, answered in order.
    let answers = raw_exchange(
        &mut stream,
        b"garbage\n[]\n{\"cmd\":\"vms\"}\n{\"v\":7,\"cmd\":\"vms\"}\n{\"v\":1,\"cmd\":\"reboot\"}\n\
          {\"v\":1,\"cmd\":\"buffers\",\"vm\":\"vm\",\"all\":true}\n{\"v\":1,\"cmd\":\"export\",\"vm\":\"vm\",\"buffer\":\"1\"}\n\
          {\"v\":1,\"cmd\":\"release\",\"export\":1}\n{\"v\":1,\"cmd\":\"vms\"}\n",
        9,
    );
    let codes: Vec<String> = answers.iter().map(code_of).collect();
    assert_eq!(
        codes,
        [
            "bad_request",
            "bad_request",
            "unsupported_version",
            "unsupported_version",
            "bad_request",
            "bad_request",
            "bad_request",
            "unknown_export",
            ""
        ]
    );
    for answer in &answers {
        assert_eq!(answer["v"], 1, "{answer}");
    }
    assert_eq!(answers[8]["ok"]["vms"][0]["buffers"], 1);

    // A line longer than the limit: too_large, then the connection closes.
    let mut big = Vec::new();
    big.extend_from_slice(b"{\"v\":1,\"cmd\":\"vms\",\"pad\":\"");
    big.resize(MAX_REQUEST_BYTES + 10, b'x');
    let answers = raw_exchange(&mut stream, &big, 2);
    assert_eq!(answers.len(), 1);
    assert_eq!(code_of(&answers[0]), "too_large");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // The daemon and the VM are untouched.
    let mut client = Client::connect(&daemon.control).unwrap();
    assert_eq!(client.vms().unwrap()[0].buffers, 1);
    let info: InfoResp = harness.run(Cmd::get_info()).get();
    assert_eq!(info.num_buffers, 1);
}

/// Waits until `done` holds (bounded).
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_client_that_leaves_mid_request_releases_its_exports() {
    let daemon = daemon(&[("vm", pools(&["system:1M"]))]);
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    let (buffer, _, _) = harness.mapped_buffer(8192, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);

    let mut leaver = Client::connect(&daemon.control).unwrap();
    let export = leaver.export("vm", buffer, false).unwrap();
    let mut watcher = Client::connect(&daemon.control).unwrap();
    assert_eq!(watcher.vms().unwrap()[0].exports, 1);
    // The client holding the export sends half a request, then is gone.
    leaver.write_raw(b"{\"v\":1,\"cmd\":\"exp").unwrap();
    drop(leaver);
    eventually("the leaver's export was not released", || {
        export.status() == Status::Revoked(Revocation::Released)
    });
    assert_eq!(watcher.vms().unwrap()[0].exports, 0);
    eventually("client threads did not end", || {
        watcher.stats(None).unwrap().daemon.control_clients == 1
    });
    // The guest never noticed.
    harness.run(Cmd::fill(buffer, 3)).ok();
}

#[test]
fn export_of_a_buffer_in_several_segments_and_regions_equals_guest_ram() {
    let daemon = daemon(&[("vm", pools(&["system:128K"]))]);
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    // Three ranges, low and high RAM: a 120 KiB buffer takes all three.
    let low_a = 16 << 20;
    let low_b = 20 << 20;
    harness
        .run(Cmd::pool_add(
            0,
            &[(low_a, 64 << 10), (HIGH_BASE, 48 << 10), (low_b, 16 << 10)],
        ))
        .ok();
    let (buffer, _, segments) =
        harness.mapped_buffer(120 << 10, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    assert_eq!(segments.len(), 3, "{segments:x?}");
    assert!(segments.iter().any(|s| s.0 >= HIGH_BASE));
    // The test writes the guest's bytes straight into guest RAM.
    let mut expected = Vec::new();
    for (i, &(gpa, len)) in segments.iter().enumerate() {
        let bytes: Vec<u8> = (0..len)
            .map(|j| (j as u8) ^ (i as u8 * 37) ^ 0x5a)
            .collect();
        harness.ram.write(gpa, &bytes);
        expected.extend(bytes);
    }

    let mut client = Client::connect(&daemon.control).unwrap();
    let export = client.export("vm", buffer, false).unwrap();
    let info = &export.info;
    assert_eq!(info.size, 120 << 10);
    assert_eq!(info.segments.len(), 3);
    // Status page, low RAM region, high RAM region.
    assert_eq!(info.fds, 3);
    let gpas: Vec<(u64, u64)> = info.segments.iter().map(|s| (s.gpa, s.len)).collect();
    assert_eq!(gpas, segments);

    assert_eq!(export.read().unwrap(), expected);
    let view = export.map().unwrap();
    let mut contiguous = vec![0u8; view.len()];
    view.read_at(0, &mut contiguous);
    assert_eq!(contiguous, expected);
    let mut iterated = Vec::new();
    for segment in export.segments() {
        let segment = segment.unwrap();
        let mut bytes = vec![0u8; segment.len()];
        segment.read_at(0, &mut bytes);
        iterated.extend(bytes);
    }
    assert_eq!(iterated, expected);
    assert_eq!(harness.device_checksum(buffer), fnv1a(&expected));

    // Zero copy: a guest write shows in the mapped view at once.
    harness.ram.write(segments[1].0, b"written by the guest");
    let mut probe = [0u8; 20];
    view.read_at(segments[0].1 as usize, &mut probe);
    assert_eq!(&probe, b"written by the guest");
    assert!(export.is_valid());
}

#[test]
fn read_only_exports_are_as_read_only_as_documented() {
    let daemon = daemon(&[("vm", pools(&["system:1M"]))]);
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    let (buffer, _, segments) =
        harness.mapped_buffer(8192, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    let mut client = Client::connect(&daemon.control).unwrap();
    let export = client.export("vm", buffer, false).unwrap();
    let segment = export.info.segments[0];
    let file = export.file(segment.fd).unwrap();
    let fd = file.as_raw_fd();
    // SAFETY: fcntl with an integer command.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
    // write(2): EBADF.
    let error = std::os::unix::fs::FileExt::write_at(file, b"x", segment.offset).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EBADF));
    // A shared writable mapping: EACCES.
    // SAFETY: a mapping attempt whose result is only compared.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            segment.offset as libc::off_t,
        )
    };
    assert_eq!(ptr, libc::MAP_FAILED);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EACCES)
    );
    // mprotect(PROT_WRITE) of a read-only shared mapping: EACCES.
    // SAFETY: a fresh read-only shared mapping, unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            segment.offset as libc::off_t,
        )
    };
    assert_ne!(ptr, libc::MAP_FAILED);
    // SAFETY: the mapping made above.
    let rc = unsafe { libc::mprotect(ptr, 4096, libc::PROT_READ | libc::PROT_WRITE) };
    assert_eq!(rc, -1);
    // SAFETY: the mapping made above, not used after.
    unsafe { libc::munmap(ptr, 4096) };
    // What the kernel does not enforce (and the documentation says): the
    // holder may open its own descriptor again read-write through /proc
    // (a memfd's mode is 0777) and write guest memory.
    let reopened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{fd}"));
    let upgraded = reopened
        .map(|f| std::os::unix::fs::FileExt::write_at(&f, b"!", segment.offset).is_ok())
        .unwrap_or(false);
    assert!(
        upgraded,
        "the kernel now refuses the /proc upgrade: update src/control/export.rs"
    );
    assert_eq!(harness.ram.read(segments[0].0, 1), b"!");
    // Seals: the guest memory file cannot get any (F_SEAL_SEAL is set).
    // SAFETY: fcntl with integer arguments.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    assert_ne!(seals & libc::F_SEAL_SEAL, 0, "seals {seals:#x}");
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_FUTURE_WRITE) };
    assert_eq!(rc, -1);
}

#[test]
fn writable_exports_only_when_the_daemon_allows_them() {
    let daemon = spawn_vms(
        &[("vm", pools(&["system:1M"]))],
        DaemonLimits::default(),
        ControlPolicy {
            allow_writable_export: true,
            ..ControlPolicy::default()
        },
    );
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    let (buffer, _, segments) =
        harness.mapped_buffer(4096, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    let mut client = Client::connect(&daemon.control).unwrap();
    let export = client.export("vm", buffer, true).unwrap();
    assert!(export.info.writable);
    let segment = export.info.segments[0];
    let file = export.file(segment.fd).unwrap();
    std::os::unix::fs::FileExt::write_at(file, b"host", segment.offset).unwrap();
    assert_eq!(harness.ram.read(segments[0].0, 4), b"host");
}

#[test]
fn exports_are_revoked_when_the_buffer_is_freed() {
    let daemon = daemon(&[("vm", pools(&["system:64K"]))]);
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    let (buffer, attachment, segments) =
        harness.mapped_buffer(64 << 10, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    harness.run(Cmd::fill(buffer, 1)).ok();
    let mut client = Client::connect(&daemon.control).unwrap();
    let export = client.export("vm", buffer, false).unwrap();
    let before = export.read().unwrap();
    assert!(export.is_valid());

    // Freed by the guest: revoked before the guest had the FREE's answer.
    harness.release_buffer(buffer, attachment);
    assert_eq!(export.status(), Status::Revoked(Revocation::Freed));
    // The pages went back to the guest at once: the whole pool is free and
    // the next buffer gets them, with new contents the old view shows.
    let (next, _, next_segments) =
        harness.mapped_buffer(64 << 10, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    assert_eq!(next_segments, segments);
    harness.run(Cmd::fill(next, 2)).ok();
    let after = export.read().unwrap();
    assert_ne!(after, before);
    assert_eq!(fnv1a(&after), harness.device_checksum(next));
    assert!(client.buffers(None).unwrap()[0].exports == 0);
    // Releasing a revoked export is fine.
    client.release(export.info.export).unwrap();
}

#[test]
fn exports_are_revoked_when_the_buffer_migrates() {
    let daemon = daemon(&[("vm", pools(&["system:1M", "contig:1M"]))]);
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    // The first importer can use any page: the backing comes from the
    // scatter pool, the first in priority order.
    let (buffer, attachment, segments) = harness.mapped_buffer(
        16 << 10,
        CENALLOC_KIND_SYSTEM | CENALLOC_KIND_CONTIG,
        &[CENALLOC_MAP_SG],
    );
    harness.run(Cmd::fill(buffer, 9)).ok();
    let mut client = Client::connect(&daemon.control).unwrap();
    let old = client.export("vm", buffer, false).unwrap();
    let contents = old.read().unwrap();
    harness
        .run(Cmd::unmap(attachment, CENALLOC_DIR_BIDIRECTIONAL))
        .ok();
    // A contiguous-only importer arrives: the next map migrates.
    let late: AttachResp = harness
        .run(Cmd::attach(
            buffer,
            CENALLOC_KIND_CONTIG,
            &[CENALLOC_MAP_CONTIG],
        ))
        .ok()
        .get();
    assert_ne!(late.flags & CENALLOC_ATTACH_F_MIGRATE, 0);
    assert!(old.is_valid(), "revoked before the backing changed");
    let mapped = harness.run(Cmd::map(late.attach_id, CENALLOC_DIR_BIDIRECTIONAL, 4));
    let (resp, new_segments) = map_segments(mapped.ok());
    assert_ne!(resp.flags & CENALLOC_MAP_F_MIGRATED, 0);
    assert_ne!(new_segments, segments);
    assert_eq!(old.status(), Status::Revoked(Revocation::Migrated));
    // A new export sees the migrated contents at the new place.
    let new = client.export("vm", buffer, false).unwrap();
    assert_eq!(new.read().unwrap(), contents);
    assert_eq!(
        new.info
            .segments
            .iter()
            .map(|s| (s.gpa, s.len))
            .collect::<Vec<_>>(),
        new_segments
    );
}

/// Issue 20, item 1. One batch frees X and maps a new buffer Y on X's old
/// pages (zeroing them), then keeps working. A host reader that follows
/// the documented protocol (read, then check the status word) and sees
/// X's bytes change must see the export revoked: the daemon revokes
/// before it touches the pages, not when the chain is answered. A VM
/// pause in the middle of the batch keeps it revoked.
#[test]
fn an_export_is_revoked_before_the_daemon_touches_its_pages() {
    let daemon = daemon(&[("vm", pools(&["system:40M"]))]);
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    // CHECKSUMs of this one keep the batch running after the MAP.
    let (big, _, _) = harness.mapped_buffer(32 << 20, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    let (x, x_attach, x_segments) =
        harness.mapped_buffer(64 << 10, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    harness.run(Cmd::fill(x, 7)).ok();
    let mut client = Client::connect(&daemon.control).unwrap();
    let export = client.export("vm", x, false).unwrap();
    let view = export.map().unwrap();
    let before = export.read().unwrap();
    assert!(before.iter().any(|&b| b != 0), "FILL wrote zeros");

    let mut cmds = vec![
        Cmd::unmap(x_attach, CENALLOC_DIR_BIDIRECTIONAL),
        Cmd::detach(x_attach),
        Cmd::free(x),
        Cmd::create(64 << 10, 0),
        Cmd::attach(
            CENALLOC_BATCH_REF | 3,
            CENALLOC_KIND_SYSTEM,
            &[CENALLOC_MAP_SG],
        ),
        Cmd::map(CENALLOC_BATCH_REF | 4, CENALLOC_DIR_BIDIRECTIONAL, 16),
    ];
    cmds.extend((0..6).map(|_| Cmd::checksum(big)));
    let used_before = harness.control_used_idx();
    let posted = harness.post(&[Chain::simple(encode_batch(&cmds), response_len(&cmds))]);
    // The host reader: read X's pages, then the status word.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut now = vec![0u8; before.len()];
    let seen = loop {
        view.read_at(0, &mut now);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let status = export.status();
        if now != before {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "X's old pages were never touched"
        );
        std::hint::spin_loop();
    };
    // A VM pause while the batch goes on.
    let bases = harness.stop_queues();
    let answered_before_pause = harness.control_used_idx() != used_before;
    assert_eq!(
        seen,
        Status::Revoked(Revocation::Freed),
        "a reader saw X's pages change while X's export read {seen:?} \
         (the chain was answered by the pause: {answered_before_pause})"
    );
    assert!(
        !answered_before_pause,
        "the batch ended before the pause: its CHECKSUMs are too short to test the pause"
    );
    assert_eq!(export.status(), Status::Revoked(Revocation::Freed));
    harness.start_queues(&bases);
    let used = harness.wait_posted(posted).remove(0);
    let answer = decode_batch(&cmds, &used);
    assert_eq!(answer.status, 0, "{answer:?}");
    let (resp, y_segments) = map_segments(&answer.answers[5]);
    assert_ne!(resp.flags & CENALLOC_MAP_F_ALLOCATED, 0);
    assert_eq!(y_segments, x_segments, "Y did not get X's old pages");
    assert!(export.read().unwrap().iter().all(|&b| b == 0));
}

/// Issue 20, item 2: the control server looked the VM up (connected),
/// then the front-end left (every export revoked), then the export was
/// recorded. That late export must be refused, not left valid forever.
/// The interleaving, made deterministic: the test holds the `Vm` the
/// server would hold, waits until the disconnect has revoked the exports,
/// then exports.
#[test]
fn an_export_granted_while_the_vm_disconnects_is_refused() {
    let daemon = daemon(&[("vm", pools(&["system:1M"]))]);
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    let (buffer, _, _) = harness.mapped_buffer(8192, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    let mut client = Client::connect(&daemon.control).unwrap();
    let witness = client.export("vm", buffer, false).unwrap();
    // What the server holds once its `connected()` check passed.
    let vm = daemon.registry.connected("vm").unwrap();
    drop(harness);
    eventually("the disconnect did not revoke the exports", || {
        witness.status() == Status::Revoked(Revocation::Disconnected)
    });
    let late = cenalloc::control::export::export(&vm, 1, daemon.registry.next_id(), buffer, false);
    match late {
        Ok(prepared) => panic!(
            "an export was granted after the disconnect; its status word reads {} and \
             nothing will ever revoke it ({} exports recorded)",
            prepared.status.get(),
            vm.exports.count()
        ),
        Err(error) => assert_eq!(error.code, ErrorCode::NotConnected, "{}", error.message),
    }
    assert_eq!(vm.exports.count(), 0);
}

fn lease(allocator_id: u32, size: u64, count: u32) -> Cmd {
    let req = LeaseReq {
        allocator_id,
        count,
        size,
    };
    Cmd::new(
        CENALLOC_CMD_LEASE,
        vm_memory::ByteValued::as_slice(&req),
        8 + 16 * count,
    )
}

/// A LEASED_MAP of one scatter-gather attachment of `mask`.
fn leased_map(buffer_id: u32, attach_id: u32, size: u64, mask: u32, extent: u64) -> Cmd {
    use vm_memory::ByteValued;
    let req = LeasedMapReq {
        buffer_id,
        initial_mask: 0,
        size,
        extent,
        map_index: 0,
        direction: CENALLOC_DIR_BIDIRECTIONAL,
        num_attachments: 1,
        reserved: 0,
    };
    let mut record = LeasedAttach {
        attach_id,
        mask,
        map_type: CENALLOC_MAP_SG,
        num_types: 1,
        ..Default::default()
    };
    record.types[0] = CENALLOC_MAP_SG;
    let mut payload = req.as_slice().to_vec();
    payload.extend_from_slice(record.as_slice());
    Cmd::new(CENALLOC_CMD_LEASED_MAP, &payload, 0)
}

/// Issue 20, item 12(a): the driver chooses a leased buffer's id. In one
/// batch it frees buffer D and maps a new buffer with the same id D on the
/// same (re-leased, zeroed) extent: same id, same segments, another
/// buffer. The old export must read revoked.
#[test]
fn an_export_is_revoked_when_a_leased_map_reuses_its_id_and_extent() {
    let daemon = daemon(&[("vm", pools(&["system:4M"]))]);
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    let answer = harness.run(lease(0, 64 << 10, 1));
    let resp: LeaseResp = answer.ok().get();
    assert_eq!(resp.num_extents, 1);
    let extent: Range = answer.get_at(8);
    let (id, attach) = (CENALLOC_DRIVER_ID_FIRST + 1, CENALLOC_DRIVER_ID_FIRST + 2);
    let answer = harness.batch(&[
        leased_map(id, attach, 64 << 10, CENALLOC_KIND_SYSTEM, extent.addr),
        Cmd::fill(id, 7),
    ]);
    assert_eq!(answer.status, 0, "{answer:?}");
    let mut client = Client::connect(&daemon.control).unwrap();
    let export = client.export("vm", id, false).unwrap();
    let before = export.read().unwrap();

    let cmds = [
        Cmd::unmap(attach, CENALLOC_DIR_BIDIRECTIONAL),
        Cmd::detach(attach),
        Cmd::free(id),
        lease(0, 64 << 10, 1),
        leased_map(id, attach, 64 << 10, CENALLOC_KIND_SYSTEM, extent.addr),
        Cmd::fill(id, 8),
    ];
    let answer = harness.batch(&cmds);
    assert_eq!(answer.status, 0, "{answer:?}");
    let again: Range = answer.answers[3].get_at(8);
    assert_eq!(
        (again.addr, again.len),
        (extent.addr, extent.len),
        "the extent was not leased again"
    );
    let after = export.read().unwrap();
    assert_ne!(
        after, before,
        "the new buffer's FILL is not in the old view"
    );
    assert_eq!(
        export.status(),
        Status::Revoked(Revocation::Freed),
        "the export of the freed buffer {id:#x} reads as the new buffer {id:#x}"
    );
}

#[test]
fn exports_are_revoked_on_a_new_memory_table_and_on_disconnect() {
    let daemon = daemon(&[("vm", pools(&["system:1M"]))]);
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    let (buffer, _, _) = harness.mapped_buffer(4096, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    let mut client = Client::connect(&daemon.control).unwrap();
    let first = client.export("vm", buffer, false).unwrap();
    harness.resend_memory_table();
    // SET_MEM_TABLE has no reply without REPLY_ACK: wait for the daemon.
    eventually("not revoked by a new memory table", || {
        first.status() == Status::Revoked(Revocation::MemoryChanged)
    });
    let second = client.export("vm", buffer, false).unwrap();
    assert!(second.is_valid());
    drop(harness);
    eventually("the export survived the disconnect", || {
        second.status() == Status::Revoked(Revocation::Disconnected)
    });
    eventually("the VM is still listed as connected", || {
        client.vms().unwrap()[0].state == VmState::Waiting
    });
    let error = client.export("vm", buffer, false).err().unwrap();
    assert_eq!(error.code(), Some(ErrorCode::NotConnected));
}

#[test]
fn a_connection_holds_a_bounded_number_of_exports() {
    let daemon = spawn_vms(
        &[("vm", pools(&["system:1M"]))],
        DaemonLimits::default(),
        ControlPolicy {
            max_exports_per_client: 2,
            ..ControlPolicy::default()
        },
    );
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    let (buffer, _, _) = harness.mapped_buffer(4096, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    let mut client = Client::connect(&daemon.control).unwrap();
    let a = client.export("vm", buffer, false).unwrap();
    let _b = client.export("vm", buffer, false).unwrap();
    let error = client.export("vm", buffer, false).err().unwrap();
    assert_eq!(error.code(), Some(ErrorCode::TooManyExports));
    client.release(a.info.export).unwrap();
    client.export("vm", buffer, false).unwrap();
}

const CTL: &str = env!("CARGO_BIN_EXE_cenallocctl");

/// Runs cenallocctl against `control`; returns (status, stdout, stderr).
fn ctl(control: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(CTL)
        .arg("--socket")
        .arg(control)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn decode_png(path: &std::path::Path) -> (png::ColorType, u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut data = vec![0u8; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut data).unwrap();
    data.truncate(info.buffer_size());
    (info.color_type, info.width, info.height, data)
}

#[test]
fn cenallocctl_prints_tables_and_json_and_exits_0_1_2() {
    let daemon = daemon(&[
        ("vm1", pools(&["system:1M", "contig:1M"])),
        ("vm2", pools(&["system:1M"])),
    ]);
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    // A 32x8 frame with a 100-byte stride in a contiguous buffer.
    let (frame, _, segments) =
        harness.mapped_buffer(4096, CENALLOC_KIND_CONTIG, &[CENALLOC_MAP_CONTIG]);
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 253) as u8).collect();
    harness.ram.write(segments[0].0, &bytes);
    let dir = std::env::temp_dir().join(format!("cenallocctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    for (args, needle) in [
        (&["vms"][..], "vm1"),
        (&["buffers"], "contig"),
        (&["buffers", "vm1"], "ALLOCATOR"),
        (&["buffers", "vm2"], "FIRST_GPA"),
        (&["allocators"], "contiguous"),
        (&["allocators", "vm1"], "CAPACITY"),
        (&["stats"], "daemon: 2 VMs (1 connected"),
        (&["stats", "vm1"], "live_buffers"),
    ] {
        let (status, out, err) = ctl(&daemon.control, args);
        assert_eq!(status, 0, "{args:?}: {err}");
        assert!(out.contains(needle), "{args:?}:\n{out}");
    }
    let (status, out, _) = ctl(&daemon.control, &["--json", "buffers", "vm1"]);
    assert_eq!(status, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[0]["id"], frame);
    assert_eq!(json[0]["allocator"], "contig");
    let (_, out, _) = ctl(&daemon.control, &["vms", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[1]["state"], "waiting");

    // export: checksum and bytes.
    let raw = dir.join("frame.raw");
    let (status, out, err) = ctl(
        &daemon.control,
        &[
            "--json",
            "export",
            "vm1",
            &frame.to_string(),
            "-o",
            raw.to_str().unwrap(),
        ],
    );
    assert_eq!(status, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json["checksum"],
        format!("{:#018x}", harness.device_checksum(frame))
    );
    assert_eq!(std::fs::read(&raw).unwrap(), bytes);

    // snapshot: the PNG's pixels are the guest's bytes (rgb24, gray) or
    // their conversion (xrgb8888, yuyv).
    let stride = 100usize;
    let row = |r: usize, len: usize| &bytes[r * stride..r * stride + len];
    for (format, width, channels, expect) in [
        (
            "rgb24",
            32,
            3,
            (0..8)
                .flat_map(|r| row(r, 96).to_vec())
                .collect::<Vec<u8>>(),
        ),
        (
            "gray",
            32,
            1,
            (0..8).flat_map(|r| row(r, 32).to_vec()).collect(),
        ),
        (
            "xrgb8888",
            24,
            3,
            (0..8)
                .flat_map(|r| {
                    row(r, 96)
                        .chunks_exact(4)
                        .flat_map(|p| [p[2], p[1], p[0]])
                        .collect::<Vec<u8>>()
                })
                .collect(),
        ),
        (
            "yuyv",
            32,
            3,
            (0..8)
                .flat_map(|r| {
                    row(r, 64)
                        .chunks_exact(4)
                        .flat_map(|p| {
                            let a = cenalloc::control::snapshot::yuv_to_rgb(p[0], p[1], p[3]);
                            let b = cenalloc::control::snapshot::yuv_to_rgb(p[2], p[1], p[3]);
                            [a, b].concat()
                        })
                        .collect::<Vec<u8>>()
                })
                .collect(),
        ),
    ] {
        let png = dir.join(format!("{format}.png"));
        let (status, out, err) = ctl(
            &daemon.control,
            &[
                "snapshot",
                "vm1",
                &frame.to_string(),
                "--format",
                format,
                "--width",
                &width.to_string(),
                "--height",
                "8",
                "--stride",
                "100",
                "-o",
                png.to_str().unwrap(),
            ],
        );
        assert_eq!(status, 0, "{format}: {err}");
        assert!(out.contains(&format!("{width}x8")), "{out}");
        let (color, png_width, height, pixels) = decode_png(&png);
        assert_eq!((png_width, height), (width, 8));
        assert_eq!(
            color,
            if channels == 1 {
                png::ColorType::Grayscale
            } else {
                png::ColorType::Rgb
            }
        );
        assert_eq!(pixels, expect, "{format}");
    }

    // Exit status 1: the daemon refused, or cannot be reached.
    for args in [
        &["buffers", "vm9"][..],
        &["allocators", "vm9"],
        &["stats", "vm9"],
        &["export", "vm9", "1"],
        &["export", "vm1", "999"],
        &["export", "vm2", "1"],
        &["export", "vm1", &frame.to_string(), "--writable"],
        &[
            "snapshot",
            "vm1",
            "999",
            "--format",
            "gray",
            "--width",
            "4",
            "--height",
            "4",
            "-o",
            "/tmp/never.png",
        ],
        &[
            "snapshot",
            "vm1",
            &frame.to_string(),
            "--format",
            "rgb24",
            "--width",
            "64",
            "--height",
            "64",
            "-o",
            "/tmp/never.png",
        ],
    ] {
        let (status, _, err) = ctl(&daemon.control, args);
        assert_eq!(status, 1, "{args:?}: {err}");
        assert!(err.starts_with("cenallocctl: "), "{args:?}: {err}");
    }
    let (status, _, err) = ctl(&dir.join("nothing.sock"), &["vms"]);
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");

    // Exit status 2: bad arguments.
    for args in [
        &[][..],
        &["frobnicate"],
        &["vms", "--bogus"],
        &["export", "vm1"],
        &["export", "vm1", "seven"],
        &[
            "snapshot", "vm1", "1", "--format", "bmp", "--width", "4", "--height", "4", "-o",
            "x.png",
        ],
        &[
            "snapshot", "vm1", "1", "--format", "gray", "--width", "0", "--height", "4", "-o",
            "x.png",
        ],
        &[
            "snapshot", "vm1", "1", "--format", "yuyv", "--width", "3", "--height", "4", "-o",
            "x.png",
        ],
        &[
            "snapshot", "vm1", "1", "--format", "rgb24", "--width", "4", "--height", "4",
            "--stride", "8", "-o", "x.png",
        ],
        &[
            "snapshot", "vm1", "1", "--format", "gray", "--width", "4", "--height", "4",
        ],
    ] {
        let (status, _, err) = ctl(&daemon.control, args);
        assert_eq!(status, 2, "{args:?}: {err}");
        assert!(!err.is_empty(), "{args:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `shares` (issue 17): the share groups' members as the table sees them
/// (joined when their front-end connects, gone when it leaves), for one
/// VM or all; nothing is shared yet, as no command shares.
#[test]
fn shares_lists_the_members_and_follows_their_connections() {
    use cenalloc::config::{ShareAccess, ShareConfig, ShareGroup, ShareLimits, VmShare};
    use std::collections::BTreeMap;
    let window = 64 << 20;
    let daemon = daemon(&[
        ("alpha", pools(&["system:1M"])),
        (
            "beta",
            DeviceConfig {
                window: Some(window),
                ..pools(&["system:1M"])
            },
        ),
        ("gamma", pools(&["system:1M"])),
    ]);
    let mut client = Client::connect(&daemon.control).unwrap();
    // No share group: sharing is off, nothing listed.
    let off = client.shares(None).unwrap();
    assert!(!off.enabled && off.members.is_empty());
    let member = |exports: &[&str], imports: &[&str], window| VmShare {
        exporter_groups: exports.iter().map(|s| s.to_string()).collect(),
        importer_groups: imports.iter().map(|s| s.to_string()).collect(),
        window,
        limits: ShareLimits::default(),
    };
    let config = ShareConfig {
        groups: vec![ShareGroup {
            name: "camera".into(),
            exporters: vec!["alpha".into()],
            importers: vec!["beta".into()],
            access: ShareAccess::ReadOnly,
            max_importers: 4,
            kind_map: Vec::new(),
        }],
        ..ShareConfig::default()
    };
    let members = BTreeMap::from([
        ("alpha".to_string(), member(&["camera"], &[], None)),
        ("beta".to_string(), member(&[], &["camera"], Some(window))),
    ]);
    let sharing = cenalloc::registry::Sharing::new(config, members, [7; 16]);
    assert!(daemon.registry.enable_sharing(sharing));
    let all = client.shares(None).unwrap();
    assert!(all.enabled);
    let names: Vec<&str> = all.members.iter().map(|m| m.vm.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"], "gamma is in no group");
    assert!(all.members.iter().all(|m| !m.connected));
    assert!(all.shares.is_empty() && all.imports.is_empty());
    let beta = &all.members[1];
    assert_eq!(
        (beta.window, beta.mappings, beta.max_mappings),
        (Some(window), 0, 8)
    );
    assert_eq!(beta.imports_from, ["camera"]);
    // Beta connects: it is in the table; one VM is asked for.
    let shmem = common::shmem::QemuShmem::new();
    let (mut harness, _setup) =
        Harness::connect_with_window(&daemon.sockets[1], WANTED_FEATURES, &shmem);
    harness.run(Cmd::get_info()).ok();
    let only_beta = client.shares(Some("beta")).unwrap();
    assert_eq!(only_beta.members.len(), 1);
    assert!(only_beta.members[0].connected);
    assert!(client.shares(Some("gamma")).unwrap().members.is_empty());
    match client.shares(Some("nobody")) {
        Err(cenalloc::control::client::Error::Daemon(body)) => {
            assert_eq!(body.code, ErrorCode::UnknownVm)
        }
        other => panic!("expected unknown_vm, got {other:?}"),
    }
    // It leaves: gone from the table.
    drop(harness);
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.shares(Some("beta")).unwrap().members[0].connected {
        assert!(Instant::now() < deadline, "beta never left");
        std::thread::sleep(Duration::from_millis(10));
    }
}
