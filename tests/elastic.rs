//! Elastic pools and leases through the vhost-user device, with the test
//! VMM as the driver: POOL_ADD beyond the size at probe and its limits,
//! POOL_REMOVE, LEASE (zeroed extents), LEASED_MAP (accepted, and hostile
//! reports refused), LEASE_RETURN, and MAP's -EAGAIN with the revoke event.

mod common;

use cenalloc::device::DeviceConfig;
use cenalloc::protocol::*;
use common::*;
use vm_memory::ByteValued;

const MIB: u64 = 1 << 20;

/// The default layout with small pools at probe (4, 2, 4, 2 MiB).
fn small() -> DeviceConfig {
    let mut config = DeviceConfig::default_layout();
    config.pool_sizes = vec![4 * MIB, 2 * MIB, 4 * MIB, 2 * MIB];
    config
}

fn ranges_cmd<T: ByteValued>(opcode: u16, head: T, ranges: &[(u64, u64)], resp_len: u32) -> Cmd {
    let mut payload = head.as_slice().to_vec();
    for &(addr, len) in ranges {
        payload.extend_from_slice(Range { addr, len }.as_slice());
    }
    Cmd::new(opcode, &payload, resp_len)
}

fn pool_remove(pool_index: u32, ranges: &[(u64, u64)]) -> Cmd {
    let head = PoolRemoveReq {
        pool_index,
        num_ranges: ranges.len() as u32,
    };
    ranges_cmd(CENALLOC_CMD_POOL_REMOVE, head, ranges, 0)
}

fn lease(allocator_id: u32, size: u64, count: u32) -> Cmd {
    let req = LeaseReq {
        allocator_id,
        count,
        size,
    };
    Cmd::new(CENALLOC_CMD_LEASE, req.as_slice(), 8 + 16 * count)
}

fn lease_return(allocator_id: u32, ranges: &[(u64, u64)]) -> Cmd {
    let head = LeaseReturnReq {
        allocator_id,
        num_ranges: ranges.len() as u32,
    };
    ranges_cmd(CENALLOC_CMD_LEASE_RETURN, head, ranges, 0)
}

/// A LEASED_MAP of one attachment (mask, SG) mapping bidirectionally.
fn leased_map(buffer_id: u32, attach_id: u32, size: u64, mask: u32, extent: u64) -> Cmd {
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

fn leased_extents(answer: &Answer) -> Vec<(u64, u64)> {
    let resp: LeaseResp = answer.get();
    (0..resp.num_extents as usize)
        .map(|i| {
            let range: Range = answer.get_at(8 + 16 * i);
            (range.addr, range.len)
        })
        .collect()
}

fn stats_json(harness: &mut Harness) -> serde_json::Value {
    let stats = harness.run(Cmd::stats(1 << 20));
    serde_json::from_slice(&stats.ok().payload).unwrap()
}

fn allocator(json: &serde_json::Value, id: usize) -> &serde_json::Value {
    &json["pool"]["allocators"][id]
}

#[test]
fn the_device_offers_elastic_pools_and_leases_and_asks_little_at_probe() {
    let harness = Harness::start();
    let offered = harness.offered;
    assert_ne!(offered & (1 << CENALLOC_F_ELASTIC), 0, "{offered:#x}");
    assert_ne!(offered & (1 << CENALLOC_F_LEASE), 0, "{offered:#x}");
    let pools = &harness.config.pools[..harness.config.num_pools as usize];
    let total: u64 = pools.iter().map(|p| p.size).sum();
    assert!(total <= 16 * MIB, "{total}");
    assert!(pools.iter().all(|p| p.max_mb == 0));

    let mut config = DeviceConfig::default_layout();
    config.pool.limits.max_lease_bytes = 0;
    let harness = Harness::start_with(config);
    assert_eq!(harness.offered & (1 << CENALLOC_F_LEASE), 0);
}

#[test]
fn a_pool_grows_up_to_its_maximum_and_its_share_of_guest_ram() {
    let mut config = small();
    config.pool_max_sizes[0] = 8 * MIB;
    let mut harness = Harness::start_with(config);
    harness.donate_all();
    // system (4 MiB at probe) grows by 4 MiB, not by one page more.
    let next = HIGH_BASE + HIGH_RAM - 8 * MIB;
    harness.run(Cmd::pool_add(0, &[(next, 4 * MIB)])).ok();
    let answer = harness.run(Cmd::pool_add(0, &[(next + 4 * MIB, 4096)]));
    assert_eq!(answer.status, -libc::ENOSPC);
    assert_eq!(harness.config.pools[0].max_mb, 8);

    // All pools together: at most half of guest RAM (288 MiB here).
    let mut harness = Harness::start_with(small());
    harness.donate_all();
    let half = (LOW_RAM + HIGH_RAM) / 2;
    let json = stats_json(&mut harness);
    let donated: u64 = (0..4)
        .map(|i| allocator(&json, i)["capacity"].as_u64().unwrap())
        .sum();
    let room = half - donated;
    let answer = harness.run(Cmd::pool_add(0, &[(64 * MIB, room + 4096)]));
    assert_eq!(answer.status, -libc::ENOSPC, "{answer:?}");
    harness.run(Cmd::pool_add(0, &[(64 * MIB, room)])).ok();
}

#[test]
fn pool_remove_gives_back_free_memory_only() {
    let mut harness = Harness::start_with(small());
    let donated = harness.donate_all();
    let (base, len) = donated[0][0];
    harness.run(Cmd::pool_add(0, &[(64 * MIB, 8 * MIB)])).ok();
    // A buffer in the grown part keeps that part.
    let answer = harness.batch(&[
        Cmd::create(len + MIB, 0),
        Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]),
        Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL, 8),
    ]);
    assert_eq!(answer.status, 0, "{answer:?}");
    let buffer: CreateResp = answer.answers[0].get();
    let attach: AttachResp = answer.answers[1].get();
    let (_, segments) = map_segments(&answer.answers[2]);
    let in_use = segments[0];

    let before = stats_json(&mut harness);
    let answer = harness.run(pool_remove(0, &[(64 * MIB + 4 * MIB, 4 * MIB), in_use]));
    assert_eq!(answer.status, -libc::EBUSY);
    let answer = harness.run(pool_remove(0, &[(base + len, 4096)]));
    assert_eq!(answer.status, -libc::ENOENT, "not donated");
    let answer = harness.run(pool_remove(1, &[(64 * MIB + 4 * MIB, 4096)]));
    assert_eq!(answer.status, -libc::ENOENT, "another pool's memory");
    let answer = harness.run(pool_remove(9, &[(64 * MIB, 4096)]));
    assert_eq!(answer.status, -libc::ENOENT, "no such pool");
    let answer = harness.run(pool_remove(0, &[(64 * MIB, 0)]));
    assert_eq!(answer.status, -libc::EINVAL);
    assert_eq!(
        allocator(&stats_json(&mut harness), 0),
        allocator(&before, 0),
        "failed removals changed the pool"
    );

    // Free the buffer: now everything above the probe donation goes back.
    let answer = harness.batch(&[
        Cmd::unmap(attach.attach_id, CENALLOC_DIR_BIDIRECTIONAL),
        Cmd::detach(attach.attach_id),
        Cmd::free(buffer.buffer_id),
    ]);
    assert_eq!(answer.status, 0, "{answer:?}");
    harness.run(pool_remove(0, &[(64 * MIB, 8 * MIB)])).ok();
    let json = stats_json(&mut harness);
    assert_eq!(allocator(&json, 0)["capacity"], len);
    assert_eq!(json["pool"]["counters"]["regions_removed"], 1);
}

#[test]
fn leased_extents_are_zeroed_and_a_leased_map_needs_no_answer() {
    let mut harness = Harness::start_with(small());
    harness.donate_all();
    harness.post_event_buffers(8, 16);
    let answer = harness.run(lease(0, 64 << 10, 4));
    let extents = leased_extents(answer.ok());
    assert_eq!(extents.len(), 4);
    for &(addr, len) in &extents {
        assert_eq!(len, 64 << 10);
        assert!(harness.ram.read(addr, len as usize).iter().all(|&b| b == 0));
    }
    let json = stats_json(&mut harness);
    assert_eq!(allocator(&json, 0)["leased"], 4 * (64 << 10));

    // A leased map: no answer slot at all; the device knows the buffer by
    // the driver's ids from then on.
    let buffer = CENALLOC_DRIVER_ID_FIRST + 1;
    let attach = CENALLOC_DRIVER_ID_FIRST + 2;
    let answer = harness.batch(&[
        leased_map(buffer, attach, 4096, CENALLOC_KIND_SYSTEM, extents[0].0),
        Cmd::phys(buffer),
        Cmd::unmap(attach, CENALLOC_DIR_BIDIRECTIONAL),
        Cmd::detach(attach),
        Cmd::free(buffer),
    ]);
    assert_eq!(answer.status, 0, "{answer:?}");
    let phys: PhysResp = answer.answers[1].get();
    assert_eq!((phys.addr, phys.len), (extents[0].0, 4096));
    let json = stats_json(&mut harness);
    assert_eq!(allocator(&json, 0)["leased"], 3 * (64 << 10));
    assert_eq!(json["pool"]["counters"]["leased_maps"], 1);
    assert_eq!(json["pool"]["buffers"].as_array().unwrap().len(), 0);

    // The unused extents go back.
    harness.run(lease_return(0, &extents[1..])).ok();
    let json = stats_json(&mut harness);
    assert_eq!(allocator(&json, 0)["leased"], 0);
    assert_eq!(allocator(&json, 0)["free"], allocator(&json, 0)["capacity"]);
}

#[test]
fn hostile_reports_are_refused_counted_and_change_nothing() {
    let mut harness = Harness::start_with(small());
    let donated = harness.donate_all();
    let extents = leased_extents(harness.run(lease(0, 4096, 2)).ok());
    let id = CENALLOC_DRIVER_ID_FIRST;
    let before = stats_json(&mut harness)["pool"].clone();
    // Memory the device did not lease (in the pool, but free).
    let (base, len) = donated[0][0];
    let not_leased = base + len - 4096;
    assert!(!extents.iter().any(|&(a, _)| a == not_leased));
    let cases = [
        (
            leased_map(id, id, 4096, CENALLOC_KIND_SYSTEM, not_leased),
            -libc::EPERM,
        ),
        (
            leased_map(id, id, 8192, CENALLOC_KIND_SYSTEM, extents[0].0),
            -libc::EINVAL,
        ),
        (
            leased_map(5, id, 4096, CENALLOC_KIND_SYSTEM, extents[0].0),
            -libc::EINVAL,
        ),
        (
            leased_map(id, id, 4096, CENALLOC_KIND_DMA32, extents[0].0),
            -libc::ESTALE,
        ),
    ];
    for (cmd, status) in cases {
        let answer = harness.run(cmd);
        assert_eq!(answer.status, status, "{answer:?}");
    }
    let json = stats_json(&mut harness);
    assert_eq!(json["pool"], before, "a refused report changed the pool");
    assert_eq!(json["device"]["leased_maps_refused"], 4);

    // Leased twice: the first report is taken, the second refused.
    harness
        .run(leased_map(id, id, 4096, CENALLOC_KIND_SYSTEM, extents[0].0))
        .ok();
    let answer = harness.run(leased_map(
        id + 1,
        id + 1,
        4096,
        CENALLOC_KIND_SYSTEM,
        extents[0].0,
    ));
    assert_eq!(answer.status, -libc::EPERM);
    // And an extent that was given back is no longer leased.
    harness.run(lease_return(0, &extents[1..])).ok();
    let answer = harness.run(lease_return(0, &extents[1..]));
    assert_eq!(answer.status, -libc::EPERM);
    let answer = harness.run(leased_map(
        id + 1,
        id + 1,
        4096,
        CENALLOC_KIND_SYSTEM,
        extents[1].0,
    ));
    assert_eq!(answer.status, -libc::EPERM);
}

#[test]
fn a_map_that_needs_leased_room_fails_with_eagain_and_revokes_the_lease() {
    let mut harness = Harness::start_with(small());
    harness.donate_all();
    harness.post_event_buffers(8, 16);
    let capacity = harness.config.pools[0].size;
    let extents = leased_extents(harness.run(lease(0, 64 << 10, 8)).ok());
    assert_eq!(extents.len(), 8);
    // Fill system but 64 KiB.
    let fill = capacity - 8 * (64 << 10) - (64 << 10);
    let answer = harness.batch(&[
        Cmd::create(fill, 0),
        Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]),
        Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL, 64),
    ]);
    assert_eq!(answer.status, 0, "{answer:?}");
    harness.take_events();
    // 128 KiB: system has the room only in the stock.
    let cmds = [
        Cmd::create(128 << 10, 0),
        Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]),
        Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL, 4),
    ];
    let answer = harness.batch(&cmds);
    assert_eq!(answer.answers[2].status, -libc::EAGAIN, "{answer:?}");
    let attach: AttachResp = answer.answers[1].get();
    let events = harness.take_events();
    assert!(
        events
            .iter()
            .any(|e| e.event_type == CENALLOC_EVENT_LEASE_REVOKE && e.data == 0),
        "{events:?}"
    );
    // Given back, the same map lands in system.
    harness.run(lease_return(0, &extents)).ok();
    let answer = harness.run(Cmd::map(attach.attach_id, CENALLOC_DIR_BIDIRECTIONAL, 4));
    let (resp, _) = map_segments(answer.ok());
    assert_eq!(resp.allocator_id, 0);
}

#[test]
fn lease_requests_are_checked() {
    let mut harness = Harness::start_with(small());
    harness.donate_all();
    for (cmd, status) in [
        (lease(9, 4096, 1), -libc::ENOENT),
        (lease(0, 4096, 0), -libc::EINVAL),
        (lease(0, 4096, CENALLOC_MAX_LEASE + 1), -libc::EINVAL),
        (lease(0, 4095, 1), -libc::EINVAL),
        (lease(0, CENALLOC_LEASE_MAX_SIZE + 4096, 1), -libc::EINVAL),
        (lease_return(9, &[(0, 4096)]), -libc::ENOENT),
    ] {
        assert_eq!(harness.run(cmd).status, status);
    }
    // A slot too small for count extents.
    let mut short = lease(0, 4096, 4);
    short.resp_len = 8 + 16 * 3;
    assert_eq!(harness.run(short).status, -libc::ENOSPC);
}

/// The daemon's default bound on the regions one VM's pools hold
/// (`Limits::max_regions`).
const MAX_REGIONS: u64 = 16384;

/// Issue 20, item 12(b): every donated range costs the daemon heap outside
/// the VM's memory. A guest that donates single, separate pages reaches a
/// bound: the range past it is refused with -ENOSPC and changes nothing,
/// and so is a POOL_REMOVE that would cut a region in two past it; giving
/// regions back makes room again.
#[test]
fn donated_regions_are_bounded() {
    assert_eq!(
        u64::from(cenalloc::model::Limits::default().max_regions),
        MAX_REGIONS
    );
    let mut harness = Harness::start();
    let donated = harness.donate_all();
    let mut held: u64 = donated.iter().map(|ranges| ranges.len() as u64).sum();
    // Single pages, one page apart, from 64 MiB up.
    let page = |i: u64| (64 * MIB + 2 * 4096 * i, 4096);
    let mut next = 0;
    while held < MAX_REGIONS {
        let cmds: Vec<Cmd> = (0..64)
            .map_while(|_| {
                let n = (MAX_REGIONS - held).min(256);
                if n == 0 {
                    return None;
                }
                let ranges: Vec<(u64, u64)> = (next..next + n).map(page).collect();
                next += n;
                held += n;
                Some(Cmd::pool_add(0, &ranges))
            })
            .collect();
        let answer = harness.batch(&cmds);
        assert_eq!(answer.status, 0, "POOL_ADD below the bound: {answer:?}");
    }
    let before = stats_json(&mut harness);
    let answer = harness.run(Cmd::pool_add(0, &[page(next)]));
    assert_eq!(
        answer.status,
        -libc::ENOSPC,
        "range {} accepted past the bound",
        held + 1
    );
    // Cutting the probe donation in two would also hold one more.
    let (base, len) = donated[0][0];
    let answer = harness.run(pool_remove(0, &[(base + len / 2, 4096)]));
    assert_eq!(answer.status, -libc::ENOSPC, "{answer:?}");
    assert_eq!(
        stats_json(&mut harness)["pool"],
        before["pool"],
        "refused commands changed the pool"
    );
    // Two pages back, then one more range and the cut fit.
    harness.run(pool_remove(0, &[page(0), page(1)])).ok();
    harness.run(Cmd::pool_add(0, &[page(next)])).ok();
    harness.run(pool_remove(0, &[(base + len / 2, 4096)])).ok();
}
