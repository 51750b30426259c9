//! The rings' life cycle, with the test as the VMM: stopping and
//! restarting the rings (VM pause/resume) keeps the device state and the
//! events produced meanwhile.

mod common;

use std::time::Duration;

use cenalloc::protocol::*;
use common::*;
use vhost::VhostBackend;

fn info(harness: &mut Harness) -> (InfoResp, Vec<AllocatorInfo>) {
    let answer = harness.run(Cmd::get_info());
    let info: InfoResp = answer.ok().get();
    let allocators = (0..info.num_allocators as usize)
        .map(|i| answer.get_at(72 + 64 * i))
        .collect();
    (info, allocators)
}

/// Creates, attaches (with `mask`), maps and fills a buffer; returns
/// (buffer id, attachment id, checksum).
fn mapped_buffer(harness: &mut Harness, size: u64, mask: u32, seed: u64) -> (u32, u32, u64) {
    let answer = harness.batch(&[
        Cmd::create(size, 0),
        Cmd::attach(
            CENALLOC_BATCH_REF,
            mask,
            &[CENALLOC_MAP_CONTIG, CENALLOC_MAP_SG],
        ),
        Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL, 64),
        Cmd::fill(CENALLOC_BATCH_REF, seed),
        Cmd::checksum(CENALLOC_BATCH_REF),
    ]);
    assert_eq!(answer.status, 0, "{answer:?}");
    let created: CreateResp = answer.answers[0].get();
    let attached: AttachResp = answer.answers[1].get();
    let sum: ChecksumResp = answer.answers[4].get();
    (created.buffer_id, attached.attach_id, sum.checksum)
}

#[test]
fn pause_resume_keeps_buffers_mappings_and_pools() {
    let mut harness = Harness::start();
    harness.donate_all();
    let buffers = [
        mapped_buffer(&mut harness, 1 << 20, CENALLOC_KIND_SYSTEM, 1),
        mapped_buffer(&mut harness, 256 << 10, CENALLOC_KIND_CONTIG, 2),
        mapped_buffer(&mut harness, 64 << 10, CENALLOC_KIND_CONTIG_DMA32, 3),
    ];
    let before = info(&mut harness);
    assert_eq!(before.0.num_buffers, 3);

    for round in 0..2 {
        harness.pause_resume();
        let after = info(&mut harness);
        assert_eq!(after.0.num_buffers, 3, "round {round}: buffers lost");
        assert_eq!(after.1, before.1, "round {round}: pools changed");
        for &(buffer, _, sum) in &buffers {
            let now: ChecksumResp = harness.run(Cmd::checksum(buffer)).ok().get();
            assert_eq!(now.checksum, sum, "round {round}: buffer {buffer}");
        }
    }
    // New buffers still come from the same pools; then everything goes
    // back.
    let extra = mapped_buffer(&mut harness, 128 << 10, CENALLOC_KIND_CONTIG, 4);
    for &(buffer, attachment, _) in buffers.iter().chain([&extra]) {
        let answer = harness.batch(&[
            Cmd::unmap(attachment, CENALLOC_DIR_BIDIRECTIONAL),
            Cmd::detach(attachment),
            Cmd::free(buffer),
        ]);
        assert_eq!(answer.status, 0, "{answer:?}");
    }
    let end = info(&mut harness);
    assert_eq!(end.0.num_buffers, 0);
    for (a, b) in end.1.iter().zip(&before.1) {
        assert_eq!(a.free, a.capacity, "allocator {} not returned", a.id);
        assert_eq!(a.capacity, b.capacity);
    }
}

#[test]
fn events_produced_while_the_event_ring_is_stopped_come_after_restart() {
    let mut harness = Harness::start();
    harness.donate_all();
    harness.post_event_buffers(4, 16);
    let (buffer, attachment, sum) = mapped_buffer(&mut harness, 32 << 10, CENALLOC_MASK_ANY, 9);
    harness
        .run(Cmd::unmap(attachment, CENALLOC_DIR_BIDIRECTIONAL))
        .ok();
    // Only the event ring stops (its buffers stay posted).
    let event_base = harness.frontend.get_vring_base(1).unwrap() as u16;
    // A stricter attach makes the next MAP migrate: a MIGRATED event.
    let strict: AttachResp = harness
        .run(Cmd::attach(
            buffer,
            CENALLOC_KIND_CONTIG_DMA32,
            &[CENALLOC_MAP_CONTIG],
        ))
        .ok()
        .get();
    let mapped = harness.run(Cmd::map(strict.attach_id, CENALLOC_DIR_BIDIRECTIONAL, 4));
    let (resp, _) = map_segments(mapped.ok());
    assert_eq!(
        resp.flags & CENALLOC_MAP_F_MIGRATED,
        CENALLOC_MAP_F_MIGRATED
    );
    assert!(
        harness.take_events().is_empty(),
        "event sent on a stopped ring"
    );

    let control_base = harness.frontend.get_vring_base(0).unwrap() as u16;
    harness.start_queues(&[control_base, event_base]);
    // The restart itself delivers what waited; allow the worker a moment.
    let mut events = Vec::new();
    for _ in 0..200 {
        events.extend(harness.take_events());
        if !events.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event_type, CENALLOC_EVENT_MIGRATED);
    assert_eq!(events[0].buffer_id, buffer);
    let now: ChecksumResp = harness.run(Cmd::checksum(buffer)).ok().get();
    assert_eq!(now.checksum, sum);
    let stats = harness.run(Cmd::stats(1 << 20));
    let json: serde_json::Value = serde_json::from_slice(&stats.ok().payload).unwrap();
    assert_eq!(json["device"]["events_dropped"], 0, "{json}");
}
