//! End-to-end: the test plays the VMM (memfd guest RAM, vhost-user
//! front-end, split rings) against an in-process cenallocd and drives the
//! full buffer life cycle.

mod common;

use cenalloc::protocol::*;
use common::*;

#[test]
fn config_space_announces_the_default_pools() {
    let harness = Harness::start();
    let config = harness.config;
    assert_eq!(config.version, CENALLOC_PROTOCOL_VERSION);
    assert_eq!(config.num_pools, 4);
    assert_eq!(config.max_batch, CENALLOC_MAX_BATCH);
    let names: Vec<String> = config.pools[..4]
        .iter()
        .map(|p| {
            String::from_utf8_lossy(&p.name)
                .trim_end_matches('\0')
                .to_string()
        })
        .collect();
    assert_eq!(names, ["system", "dma32", "contig", "contig32"]);
    let total: u64 = config.pools.iter().map(|p| p.size).sum();
    assert!(total <= 256 << 20);
    assert_eq!(
        config.pools[3].placement,
        CENALLOC_PLACE_CONTIG | CENALLOC_PLACE_DMA32
    );
    assert_eq!(config.pools[0].placement, 0);
    // Entries past num_pools are zero.
    assert_eq!(config.pools[4], ConfigPool::default());
}

#[test]
fn get_info_reports_allocators_and_limits() {
    let mut harness = Harness::start();
    let answer = harness.run(Cmd::get_info());
    answer.ok();
    let info: InfoResp = answer.get();
    assert_eq!(info.version, CENALLOC_PROTOCOL_VERSION);
    assert_eq!(info.num_allocators, 4);
    assert_eq!(info.num_buffers, 0);
    assert_eq!(info.num_exporter_types, 2);
    assert_eq!(
        &info.exporter_types[..2],
        &[CENALLOC_MAP_CONTIG, CENALLOC_MAP_SG]
    );
    assert_eq!(answer.len as usize, 72 + 4 * 64);
    let contig: AllocatorInfo = answer.get_at(72 + 2 * 64);
    assert_eq!(contig.id, 2);
    assert_eq!(contig.capacity, 0);
    assert_eq!(&contig.name[..7], b"contig\0");

    harness.donate_all();
    let info = harness.run(Cmd::get_info());
    let contig: AllocatorInfo = info.get_at(72 + 2 * 64);
    assert_eq!(contig.capacity, harness.config.pools[2].size);
    assert_eq!(contig.free, contig.capacity);
    assert_eq!(contig.largest_free, contig.capacity);

    // A slot too small for the allocator table: -ENOSPC with the size needed.
    let small = harness.run(Cmd::new(CENALLOC_CMD_GET_INFO, &[], 72));
    assert_eq!(small.status, -libc::ENOSPC);
    assert_eq!(small.needed, 72 + 4 * 64);
}

#[test]
fn buffer_life_cycle_create_attach_map_fill_checksum_free() {
    let mut harness = Harness::start();
    harness.donate_all();

    let created = harness.run(Cmd::create(3 * 4096 + 100, 0));
    let created: CreateResp = created.ok().get();
    assert_eq!(created.size, 4 * 4096);
    assert_ne!(created.buffer_id, 0);
    assert_eq!(created.buffer_id & CENALLOC_BATCH_REF, 0);

    // No backing yet.
    assert_eq!(
        harness.run(Cmd::phys(created.buffer_id)).status,
        -libc::ENODATA
    );
    assert_eq!(
        harness.run(Cmd::fill(created.buffer_id, 1)).status,
        -libc::ENODATA
    );

    let attached = harness.run(Cmd::attach(
        created.buffer_id,
        CENALLOC_KIND_CONTIG,
        &[CENALLOC_MAP_SG, CENALLOC_MAP_CONTIG],
    ));
    let attached: AttachResp = attached.ok().get();
    assert_eq!(attached.map_type, CENALLOC_MAP_CONTIG);
    assert_eq!(attached.access_mask, CENALLOC_KIND_CONTIG);

    let mapped = harness.run(Cmd::map(attached.attach_id, CENALLOC_DIR_BIDIRECTIONAL, 4));
    mapped.ok();
    let (resp, segments) = map_segments(&mapped);
    assert_eq!(resp.map_type, CENALLOC_MAP_CONTIG);
    assert_eq!(resp.flags, CENALLOC_MAP_F_ALLOCATED);
    assert_eq!(resp.size, 4 * 4096);
    assert_eq!(segments.len(), 1);
    // The contig allocator (id 2 or 3) backs a CONTIG-only buffer.
    assert!(resp.allocator_id == 2 || resp.allocator_id == 3, "{resp:?}");
    // Zeroed through the daemon's mapping: the test sees zeros where the
    // donated memory held 0xA5.
    let contents = read_buffer(&harness.ram, &segments);
    assert!(contents.iter().all(|&b| b == 0), "backing not zeroed");

    let phys: PhysResp = harness.run(Cmd::phys(created.buffer_id)).ok().get();
    assert_eq!((phys.addr, phys.len), segments[0]);

    // FILL writes the pattern the test can read from its own mapping.
    harness.run(Cmd::fill(created.buffer_id, 0x1234)).ok();
    let contents = read_buffer(&harness.ram, &segments);
    for (i, word) in contents.chunks_exact(8).enumerate() {
        assert_eq!(
            u64::from_le_bytes(word.try_into().unwrap()),
            cenalloc_pattern(0x1234, i as u64),
            "word {i}"
        );
    }
    // CHECKSUM hashes what the test wrote itself.
    harness
        .ram
        .write(segments[0].0 + 17, b"written by the guest");
    let expected = fnv1a(&read_buffer(&harness.ram, &segments));
    let sum: ChecksumResp = harness.run(Cmd::checksum(created.buffer_id)).ok().get();
    assert_eq!(sum.checksum, expected);
    assert_eq!(sum.len, 4 * 4096);

    harness
        .run(Cmd::sync(
            created.buffer_id,
            CENALLOC_SYNC_BEGIN | CENALLOC_SYNC_READ,
        ))
        .ok();
    harness
        .run(Cmd::sync(
            created.buffer_id,
            CENALLOC_SYNC_END | CENALLOC_SYNC_READ | CENALLOC_SYNC_WRITE,
        ))
        .ok();

    // Detach with a map outstanding: -EBUSY.
    assert_eq!(
        harness.run(Cmd::detach(attached.attach_id)).status,
        -libc::EBUSY
    );
    harness
        .run(Cmd::unmap(attached.attach_id, CENALLOC_DIR_BIDIRECTIONAL))
        .ok();
    // A second unmap has nothing to undo.
    assert_eq!(
        harness
            .run(Cmd::unmap(attached.attach_id, CENALLOC_DIR_BIDIRECTIONAL))
            .status,
        -libc::EINVAL
    );
    harness.run(Cmd::free(created.buffer_id)).ok();
    // The attachment keeps the buffer alive until it detaches.
    let info: InfoResp = harness.run(Cmd::get_info()).get();
    assert_eq!(info.num_buffers, 1);
    harness.run(Cmd::detach(attached.attach_id)).ok();
    let info: InfoResp = harness.run(Cmd::get_info()).get();
    assert_eq!(info.num_buffers, 0);
    assert_eq!(
        harness.run(Cmd::phys(created.buffer_id)).status,
        -libc::ENOENT
    );
}

#[test]
fn batch_references_chain_create_attach_map_in_one_chain() {
    let mut harness = Harness::start();
    harness.donate_all();
    let cmds = [
        Cmd::create(64 << 10, 0),
        Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]),
        Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_TO_DEVICE, 16),
        Cmd::fill(CENALLOC_BATCH_REF, 7),
        Cmd::checksum(CENALLOC_BATCH_REF),
        Cmd::unmap(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_TO_DEVICE),
        Cmd::detach(CENALLOC_BATCH_REF | 1),
        Cmd::free(CENALLOC_BATCH_REF),
    ];
    let answer = harness.batch(&cmds);
    assert_eq!(answer.status, 0, "{answer:?}");
    assert_eq!(answer.num_done, cmds.len() as u32);
    let (resp, segments) = map_segments(&answer.answers[2]);
    assert_eq!(resp.map_type, CENALLOC_MAP_SG);
    let total: u64 = segments.iter().map(|s| s.1).sum();
    assert_eq!(total, 64 << 10);
    // The checksum equals FNV-1a over the pattern FILL wrote.
    let mut expected = Vec::new();
    for i in 0..(64 << 10) / 8 {
        expected.extend_from_slice(&cenalloc_pattern(7, i).to_le_bytes());
    }
    let sum: ChecksumResp = answer.answers[4].get();
    assert_eq!(sum.checksum, fnv1a(&expected));
    assert_eq!(read_buffer(&harness.ram, &segments), expected);

    // A reference to a command of the wrong kind, or to a later one, is -EINVAL.
    let bad = harness.batch(&[
        Cmd::create(4096, 0),
        Cmd::map(CENALLOC_BATCH_REF, CENALLOC_DIR_TO_DEVICE, 4),
        Cmd::attach(CENALLOC_BATCH_REF | 5, 1, &[CENALLOC_MAP_SG]),
    ]);
    assert_eq!(bad.status, -libc::EINVAL);
    assert_eq!(bad.num_done, 1);
    assert_eq!(bad.answers[1].status, -libc::EINVAL);
    assert_eq!(bad.answers[2].status, -libc::ECANCELED);
}

#[test]
fn batch_stops_at_first_failure_and_cancels_the_rest() {
    let mut harness = Harness::start();
    harness.donate_all();
    let answer = harness.batch(&[
        Cmd::create(4096, 0),
        Cmd::free(999_999),
        Cmd::create(4096, 0),
        Cmd::get_info(),
    ]);
    assert_eq!(answer.status, -libc::ENOENT);
    assert_eq!(answer.num_done, 1);
    assert_eq!(answer.answers[0].status, 0);
    assert_eq!(answer.answers[1].status, -libc::ENOENT);
    assert_eq!(answer.answers[2].status, -libc::ECANCELED);
    assert_eq!(answer.answers[3].status, -libc::ECANCELED);
    let info: InfoResp = harness.run(Cmd::get_info()).get();
    assert_eq!(info.num_buffers, 1, "the cancelled CREATE must not run");
}

#[test]
fn map_reply_that_does_not_fit_reports_needed_and_holds_no_mapping() {
    let mut harness = Harness::start();
    harness.donate_all();
    let cmds = [
        Cmd::create(16 << 10, 0),
        Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]),
    ];
    let answer = harness.batch(&cmds);
    assert_eq!(answer.status, 0);
    let attach: AttachResp = answer.answers[1].get();
    // Slot for the header only.
    let small = harness.run(Cmd::map(attach.attach_id, CENALLOC_DIR_BIDIRECTIONAL, 0));
    assert_eq!(small.status, -libc::ENOSPC);
    assert!(small.needed >= 24 + 16, "{small:?}");
    // The failed MAP left no mapping: after the retry's one UNMAP the
    // DETACH below works (a leaked map count would make it EBUSY).
    let retry_segments = (small.needed - 24) / 16;
    let mapped = harness.run(Cmd::map(
        attach.attach_id,
        CENALLOC_DIR_BIDIRECTIONAL,
        retry_segments,
    ));
    mapped.ok();
    let (resp, _) = map_segments(&mapped);
    // The backing was allocated by the failed MAP and kept.
    assert_eq!(resp.flags & CENALLOC_MAP_F_ALLOCATED, 0);
    harness
        .run(Cmd::unmap(attach.attach_id, CENALLOC_DIR_BIDIRECTIONAL))
        .ok();
    harness.run(Cmd::detach(attach.attach_id)).ok();
}

#[test]
fn late_stricter_attach_migrates_and_sends_an_event() {
    let mut harness = Harness::start();
    harness.donate_all();
    harness.post_event_buffers(8, 16);
    let answer = harness.batch(&[
        Cmd::create(32 << 10, 0),
        // A device that can access any memory: the system pool backs it.
        Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_MASK_ANY, &[CENALLOC_MAP_SG]),
        Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL, 64),
        Cmd::fill(CENALLOC_BATCH_REF, 99),
        Cmd::checksum(CENALLOC_BATCH_REF),
        Cmd::unmap(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL),
    ]);
    assert_eq!(answer.status, 0, "{answer:?}");
    let buffer: CreateResp = answer.answers[0].get();
    let before: ChecksumResp = answer.answers[4].get();
    let (first, _) = map_segments(&answer.answers[2]);
    assert_eq!(
        first.allocator_id, 0,
        "SYSTEM goes to the system pool first"
    );

    let strict = harness.run(Cmd::attach(
        buffer.buffer_id,
        CENALLOC_KIND_CONTIG_DMA32,
        &[CENALLOC_MAP_CONTIG, CENALLOC_MAP_SG],
    ));
    let strict: AttachResp = strict.ok().get();
    assert_eq!(
        strict.flags & CENALLOC_ATTACH_F_MIGRATE,
        CENALLOC_ATTACH_F_MIGRATE
    );
    let mapped = harness.run(Cmd::map(strict.attach_id, CENALLOC_DIR_BIDIRECTIONAL, 4));
    mapped.ok();
    let (resp, segments) = map_segments(&mapped);
    assert_eq!(
        resp.flags & CENALLOC_MAP_F_MIGRATED,
        CENALLOC_MAP_F_MIGRATED
    );
    assert_eq!(resp.allocator_id, 3);
    assert_eq!(segments.len(), 1);
    assert!(segments[0].0 + segments[0].1 <= 1 << 32);
    // Contents moved with the buffer.
    let after: ChecksumResp = harness.run(Cmd::checksum(buffer.buffer_id)).ok().get();
    assert_eq!(after.checksum, before.checksum);
    assert_eq!(
        fnv1a(&read_buffer(&harness.ram, &segments)),
        before.checksum
    );

    let events = harness.take_events();
    let migrated: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == CENALLOC_EVENT_MIGRATED)
        .collect();
    assert_eq!(migrated.len(), 1, "{events:?}");
    assert_eq!(migrated[0].buffer_id, buffer.buffer_id);
    assert_eq!(migrated[0].data, 3);
}

#[test]
fn pool_low_event_when_an_allocator_runs_short_and_drops_without_buffers() {
    let mut harness = Harness::start();
    harness.donate_all();
    // contig32 (id 3): take all but 64 KiB of it (less than an eighth).
    let size = harness.config.pools[3].size;
    assert!(size >= 1 << 20);
    let answer = harness.batch(&[
        Cmd::create(size - (64 << 10), 0),
        Cmd::attach(
            CENALLOC_BATCH_REF,
            CENALLOC_KIND_CONTIG_DMA32,
            &[CENALLOC_MAP_CONTIG],
        ),
        Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL, 1),
    ]);
    assert_eq!(answer.status, 0, "{answer:?}");
    // No event buffer was posted: the event was dropped, not queued.
    assert!(harness.take_events().is_empty());
    let stats = harness.run(Cmd::stats(1 << 20));
    let json: serde_json::Value = serde_json::from_slice(&stats.ok().payload).unwrap();
    assert_eq!(json["device"]["events_dropped"], 1, "{json}");

    harness.post_event_buffers(4, 16);
    let answer = harness.batch(&[
        Cmd::create(32 << 10, 0),
        Cmd::attach(
            CENALLOC_BATCH_REF,
            CENALLOC_KIND_CONTIG_DMA32,
            &[CENALLOC_MAP_CONTIG],
        ),
        Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL, 1),
    ]);
    assert_eq!(answer.status, 0, "{answer:?}");
    let events = harness.take_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event_type, CENALLOC_EVENT_POOL_LOW);
    assert_eq!(events[0].buffer_id, 0);
    assert_eq!(events[0].data, 3);
}

#[test]
fn stats_is_a_json_snapshot() {
    let mut harness = Harness::start();
    harness.donate_all();
    harness.run(Cmd::create(8192, 0)).ok();
    let stats = harness.run(Cmd::stats(1 << 20));
    stats.ok();
    assert_eq!(stats.len as usize, stats.payload.len());
    let json: serde_json::Value = serde_json::from_slice(&stats.payload).unwrap();
    assert_eq!(json["pool"]["buffers"].as_array().unwrap().len(), 1);
    assert_eq!(json["pool"]["allocators"].as_array().unwrap().len(), 4);
    assert!(json["device"]["commands"].as_u64().unwrap() >= 6);
    // Too small a slot: -ENOSPC with the exact length.
    let small = harness.run(Cmd::stats(8));
    assert_eq!(small.status, -libc::ENOSPC);
    assert!(small.needed as usize > 8);
    // The snapshot may grow by a few digits between the two calls (the
    // busy-time counter is in nanoseconds): some slack above `needed`.
    let exact = harness.run(Cmd::stats((small.needed + 64 + 7) & !7));
    exact.ok();
}

#[test]
fn chains_split_over_many_descriptors_and_indirect_tables() {
    let mut harness = Harness::start();
    harness.donate_all();
    let cmds = [
        Cmd::create(4096, 0),
        Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_MASK_ANY, &[CENALLOC_MAP_SG]),
        Cmd::get_info(),
    ];
    let request = encode_batch(&cmds);
    let need = response_len(&cmds);
    // Readable part in 7-byte pieces, writable part in 3 uneven pieces.
    let mut descs: Vec<Desc> = request
        .chunks(7)
        .map(|c| Desc::Readable(c.to_vec()))
        .collect();
    descs.push(Desc::Writable(5));
    descs.push(Desc::Writable(need - 5 - 100));
    descs.push(Desc::Writable(100));
    for indirect in [false, true] {
        let chain = Chain {
            descs: descs.clone(),
            indirect,
        };
        let used = harness.submit(&[chain]).remove(0);
        assert_eq!(used.len, need);
        let answer = decode_batch(&cmds, &used);
        assert_eq!(answer.status, 0, "indirect {indirect}: {answer:?}");
        assert_eq!(answer.num_done, 3);
        let info: InfoResp = answer.answers[2].get();
        assert_eq!(info.num_allocators, 4);
    }
}

#[test]
fn many_chains_per_kick_are_all_answered_in_order() {
    let mut harness = Harness::start();
    harness.donate_all();
    let chains: Vec<Chain> = (0..100)
        .map(|i| {
            let cmds = [Cmd::create(4096 * (i + 1), 0)];
            Chain::simple(encode_batch(&cmds), response_len(&cmds))
        })
        .collect();
    let used = harness.submit(&chains);
    assert_eq!(used.len(), 100);
    for (i, used) in used.iter().enumerate() {
        let answer = decode_batch(&[Cmd::create(0, 0)], used);
        assert_eq!(answer.status, 0);
        let created: CreateResp = answer.answers[0].get();
        assert_eq!(created.size, 4096 * (i as u64 + 1));
    }
}

#[test]
fn works_without_event_idx() {
    let socket = spawn_daemon(cenalloc::device::DeviceConfig::default_layout());
    let wanted = WANTED_FEATURES & !(1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);
    let mut harness = Harness::connect(&socket, wanted);
    assert!(!harness.event_idx());
    harness.donate_all();
    for _ in 0..3 {
        harness.run(Cmd::create(4096, 0)).ok();
    }
    let info: InfoResp = harness.run(Cmd::get_info()).get();
    assert_eq!(info.num_buffers, 3);
    // Every request was its own round, and each round notified the driver
    // (the harness also fails on a used chain without notification).
    let requests = u64::from(harness.config.num_pools) + 4;
    let stats = harness.run(Cmd::stats(1 << 20));
    let json: serde_json::Value = serde_json::from_slice(&stats.ok().payload).unwrap();
    let signals = json["device"]["control_signals"].as_u64().unwrap();
    assert!(
        signals >= requests,
        "{signals} notifications for {requests} requests"
    );
}

#[test]
fn reconnecting_front_end_gets_fresh_state() {
    let mut first = Harness::start();
    first.donate_all();
    first.run(Cmd::create(4096, 0)).ok();
    let info: InfoResp = first.run(Cmd::get_info()).get();
    assert_eq!(info.num_buffers, 1);
    let socket = first.socket.clone();
    drop(first);

    let mut second = Harness::connect(&socket, WANTED_FEATURES);
    let answer = second.run(Cmd::get_info());
    let info: InfoResp = answer.ok().get();
    assert_eq!(info.num_buffers, 0, "state survived the disconnect");
    let system: AllocatorInfo = answer.get_at(72);
    assert_eq!(system.capacity, 0, "donations survived the disconnect");
    // The new front-end's memory can be donated again at the same addresses.
    second.donate_all();
    second.run(Cmd::create(4096, 0)).ok();
}

#[test]
fn restarting_the_rings_keeps_the_state_until_reset() {
    let mut harness = Harness::start();
    harness.donate_all();
    harness.run(Cmd::create(4096, 0)).ok();
    // A guest driver reset: the rings stop and start again from scratch.
    harness.restart_queues();
    let answer = harness.run(Cmd::get_info());
    let info: InfoResp = answer.ok().get();
    assert_eq!(info.num_buffers, 1, "a ring restart dropped the buffers");
    let system: AllocatorInfo = answer.get_at(72);
    assert_eq!(system.capacity, harness.config.pools[0].size);
    // The driver's RESET is what drops the state; then the same memory can
    // be donated again.
    let dropped: ResetResp = harness.run(Cmd::reset(0, 0)).ok().get();
    assert_eq!(dropped.buffers, 1);
    let donated: u64 = harness.config.pools.iter().map(|p| p.size).sum();
    assert_eq!(dropped.donated, donated);
    let answer = harness.run(Cmd::get_info());
    let info: InfoResp = answer.ok().get();
    assert_eq!(info.num_buffers, 0);
    let system: AllocatorInfo = answer.get_at(72);
    assert_eq!(system.capacity, 0);
    harness.donate_all();
    harness.run(Cmd::create(4096, 0)).ok();
}

#[test]
fn reset_validates_its_fields_and_changes_nothing_on_error() {
    let mut harness = Harness::start();
    harness.donate_all();
    harness.run(Cmd::create(8192, 0)).ok();
    let bad = [
        (Cmd::reset(1, 0), -libc::EINVAL),
        (Cmd::reset(0x8000_0000, 0), -libc::EINVAL),
        (Cmd::reset(0, 1), -libc::EINVAL),
        (Cmd::new(CENALLOC_CMD_RESET, &[0u8; 16], 16), -libc::EINVAL),
        (Cmd::new(CENALLOC_CMD_RESET, &[], 16), -libc::EINVAL),
        (Cmd::new(CENALLOC_CMD_RESET, &[0u8; 8], 8), -libc::ENOSPC),
        (Cmd::new(CENALLOC_CMD_RESET, &[0u8; 8], 0), -libc::ENOSPC),
    ];
    for (cmd, status) in bad {
        let answer = harness.run(cmd.clone());
        assert_eq!(answer.status, status, "{cmd:?}");
        let info: InfoResp = harness.run(Cmd::get_info()).get();
        assert_eq!(info.num_buffers, 1, "{cmd:?} changed the state");
    }
    let mut flagged = Cmd::reset(0, 0);
    flagged.flags = 1;
    assert_eq!(harness.run(flagged).status, -libc::EINVAL);
    assert_eq!(
        harness.run(Cmd::get_info()).get::<InfoResp>().num_buffers,
        1
    );
}

#[test]
fn commands_after_reset_in_one_batch_run_on_the_fresh_state() {
    let mut harness = Harness::start();
    harness.donate_all();
    harness.post_event_buffers(4, 16);
    let answer = harness.batch(&[
        Cmd::create(4096, 0),
        Cmd::reset(0, 0),
        Cmd::create(4096, 0),
        Cmd::get_info(),
        Cmd::free(CENALLOC_BATCH_REF),
    ]);
    assert_eq!(answer.status, -libc::ENOENT, "{answer:?}");
    assert_eq!(answer.num_done, 4);
    let dropped: ResetResp = answer.answers[1].get();
    assert_eq!(dropped.buffers, 1);
    let info: InfoResp = answer.answers[3].get();
    assert_eq!(info.num_buffers, 1);
    let system: AllocatorInfo = answer.answers[3].get_at(72);
    assert_eq!(system.capacity, 0, "donations survived RESET");
    assert!(harness.take_events().is_empty());
}
