//! The hostile-host mode (cargo feature `fault-injection`) through the real
//! queue glue: the test plays the VMM against an in-process cenallocd whose
//! fault comes from a file it rewrites between steps, as run-vm's `fault`
//! verb does. The rewrites themselves are unit-tested in src/fault/tests.rs.
#![cfg(feature = "fault-injection")]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cenalloc::config::Hooks;
use cenalloc::device::DeviceConfig;
use cenalloc::fault::Source;
use cenalloc::protocol::*;
use common::*;

struct FaultFile(PathBuf);

impl FaultFile {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("cenalloc-fault-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        FaultFile(dir.join("fault"))
    }

    /// A new file renamed into place, as run-vm writes it.
    fn set(&self, spec: &str) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, spec).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }
}

impl Drop for FaultFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn harness(file: &FaultFile) -> Harness {
    let hooks = Hooks {
        fault: Some(Source::File(file.0.clone())),
    };
    let socket = spawn_daemon_with(DeviceConfig::default_layout(), hooks);
    Harness::connect(&socket, WANTED_FEATURES)
}

/// CREATE + ATTACH + MAP of a fresh 64 KiB scatter buffer.
fn create_and_map(harness: &mut Harness) -> BatchAnswer {
    harness.batch(&[
        Cmd::create(64 << 10, 0),
        Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]),
        Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL, 8),
    ])
}

#[test]
fn map_answers_are_rewritten_and_an_empty_file_is_honest() {
    let file = FaultFile::new("rewrite");
    let mut harness = harness(&file);
    let donated = harness.donate_all();
    // Honest: inside what the pool of the allocator named was given.
    let inside = |resp: &MapResp, seg: (u64, u64)| {
        donated[resp.allocator_id as usize]
            .iter()
            .any(|&(start, len)| seg.0 >= start && seg.0 + seg.1 <= start + len)
    };

    let honest = create_and_map(&mut harness);
    let (resp, segments) = map_segments(honest.answers[2].ok());
    assert_eq!((resp.num_segments, segments.len()), (1, 1));

    // A lie that needs more room than the slot has: first -ENOSPC (and no
    // mapping on the device), then, asked again with that room, the lie.
    file.set("split-segment");
    let first = create_and_map(&mut harness);
    let map = &first.answers[2];
    assert_eq!(map.status, -libc::ENOSPC);
    assert_eq!(map.needed, 24 + 2 * 16);
    let attach: AttachResp = first.answers[1].ok().get();
    let again = harness.run(Cmd::map(attach.attach_id, CENALLOC_DIR_BIDIRECTIONAL, 2));
    let (resp, lies) = map_segments(again.ok());
    assert_eq!(resp.num_segments, 2, "one more segment");
    assert_eq!(lies.iter().map(|s| s.1).sum::<u64>(), 64 << 10, "same size");
    // One mapping on the device, not two: one UNMAP, then DETACH works.
    harness
        .run(Cmd::unmap(attach.attach_id, CENALLOC_DIR_BIDIRECTIONAL))
        .ok();
    harness.run(Cmd::detach(attach.attach_id)).ok();

    file.set("dma32-high");
    let lied = create_and_map(&mut harness);
    let (_, lies) = map_segments(lied.answers[2].ok());
    assert!(lies[0].0 >= 1 << 32);

    file.set("");
    let honest = create_and_map(&mut harness);
    let (resp, segments) = map_segments(honest.answers[2].ok());
    assert!(inside(&resp, segments[0]), "{segments:?} outside the pool");
}

#[test]
fn a_withheld_chain_never_comes_back_and_later_ones_do() {
    let file = FaultFile::new("withhold");
    let mut harness = harness(&file);
    file.set("no-answer:create");
    let before = harness.control_used_idx();
    let chain = Chain::simple(
        encode_batch(&[Cmd::create(4096, 0)]),
        response_len(&[Cmd::create(4096, 0)]),
    );
    harness.submit_on(0, &[chain], false);
    // The device took the chain and ended its pass: it asked for the next
    // kick past it (avail_event, EVENT_IDX). Had it answered, the answer
    // would be in the used ring by then.
    let deadline = Instant::now() + Duration::from_secs(20);
    while harness.avail_event(0) != before.wrapping_add(1) {
        assert!(Instant::now() < deadline, "the chain was never taken");
        std::thread::yield_now();
    }
    assert_eq!(
        harness.control_used_idx(),
        before,
        "withheld chain returned"
    );

    // Other commands still get answers while the fault is on.
    harness.run(Cmd::get_info()).ok();
    file.set("none");
    harness.run(Cmd::create(4096, 0)).ok();
    // The withheld CREATE did run: the device state moved on.
    let info: InfoResp = harness.run(Cmd::get_info()).ok().get();
    assert_eq!(info.num_buffers, 2);
}

#[test]
fn status_garbage_and_short_answers_reach_the_guest() {
    let file = FaultFile::new("garbage");
    let mut harness = harness(&file);
    file.set("status-garbage:get-info");
    let answer = harness.batch(&[Cmd::get_info()]);
    assert_eq!(answer.answers[0].status, 0x1234);
    file.set("short-answer");
    let chain = Chain::simple(
        encode_batch(&[Cmd::get_info()]),
        response_len(&[Cmd::get_info()]),
    );
    let used = harness.submit(&[chain]).remove(0);
    assert_eq!(used.len, size_of::<BatchResp>() as u32);
}

#[test]
fn huge_max_segments_reaches_the_config_space() {
    let file = FaultFile::new("config");
    file.set("max-segments-huge");
    let harness = harness(&file);
    assert_eq!(harness.config.max_segments, u32::MAX);
    file.set("none");
    let socket = harness.socket.clone();
    drop(harness);
    let honest = Harness::connect(&socket, WANTED_FEATURES);
    assert_ne!(honest.config.max_segments, u32::MAX);
}

#[test]
fn refuse_attach_is_a_refusal_the_device_state_agrees_with() {
    let file = FaultFile::new("refuse");
    let mut harness = harness(&file);
    file.set("refuse-attach:0x100");
    let created: CreateResp = harness.run(Cmd::create(4096, 0)).ok().get();
    let refused = harness.run(Cmd::attach(created.buffer_id, 0x100, &[CENALLOC_MAP_SG]));
    assert_eq!(refused.status, -libc::EINVAL);
    harness
        .run(Cmd::attach(
            created.buffer_id,
            CENALLOC_KIND_SYSTEM,
            &[CENALLOC_MAP_SG],
        ))
        .ok();
    // Freed with one attachment: the refused one never existed.
    harness.run(Cmd::free(created.buffer_id)).ok();
    let info: InfoResp = harness.run(Cmd::get_info()).ok().get();
    assert_eq!(info.num_buffers, 1, "alive until its one attachment goes");
}
