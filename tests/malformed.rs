//! The guest is untrusted: malformed chains, framing, payloads, ids and
//! ranges get an error status, change nothing, and the daemon keeps
//! serving.

mod common;

use cenalloc::protocol::*;
use common::*;
use vm_memory::ByteValued;

fn num_buffers(harness: &mut Harness) -> u32 {
    let info: InfoResp = harness.run(Cmd::get_info()).ok().get();
    info.num_buffers
}

fn capacities(harness: &mut Harness) -> Vec<u64> {
    let answer = harness.run(Cmd::get_info());
    let info: InfoResp = answer.ok().get();
    (0..info.num_allocators as usize)
        .map(|i| answer.get_at::<AllocatorInfo>(72 + 64 * i).capacity)
        .collect()
}

/// Sends raw request bytes with a writable part of `writable` bytes;
/// returns (used length, batch status).
fn raw(harness: &mut Harness, request: Vec<u8>, writable: u32) -> (u32, i32) {
    let used = harness
        .submit(&[Chain::simple(request, writable)])
        .remove(0);
    let status = if used.len >= 8 {
        u32::from_le_bytes(used.written[0..4].try_into().unwrap()) as i32
    } else {
        0
    };
    (used.len, status)
}

fn status_of(harness: &mut Harness, cmd: Cmd) -> i32 {
    harness.run(cmd).status
}

#[test]
fn batch_framing_errors_are_einval_and_run_nothing() {
    let mut harness = Harness::start();
    let create = Cmd::create(4096, 0);
    let good = encode_batch(std::slice::from_ref(&create));

    // Short header.
    assert_eq!(raw(&mut harness, vec![1, 0, 0, 0], 64), (8, -libc::EINVAL));
    // Empty readable part.
    let used = harness
        .submit(&[Chain::new(vec![Desc::Writable(64)])])
        .remove(0);
    assert_eq!(used.len, 8);
    // num_cmds 0, over max_batch, huge.
    for num_cmds in [0u32, CENALLOC_MAX_BATCH + 1, u32::MAX] {
        let mut request = good.clone();
        request[0..4].copy_from_slice(&num_cmds.to_le_bytes());
        assert_eq!(
            raw(&mut harness, request, 4096),
            (8, -libc::EINVAL),
            "num_cmds {num_cmds}"
        );
    }
    // Reserved field of the batch header.
    let mut request = good.clone();
    request[4] = 1;
    assert_eq!(raw(&mut harness, request, 64), (8, -libc::EINVAL));
    // Payload length not a multiple of 8; past the end; trailing bytes.
    for len in [12u32, 24, 1 << 30, u32::MAX] {
        let mut request = good.clone();
        request[8 + 4..8 + 8].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            raw(&mut harness, request, 64),
            (8, -libc::EINVAL),
            "len {len}"
        );
    }
    let mut request = good.clone();
    request.extend_from_slice(&[0; 8]);
    assert_eq!(raw(&mut harness, request, 64), (8, -libc::EINVAL));
    // Two commands announced, one present.
    let mut request = good.clone();
    request[0] = 2;
    assert_eq!(raw(&mut harness, request, 128), (8, -libc::EINVAL));
    // resp_len not a multiple of 8, and absurdly large.
    for resp_len in [20u32, 0x8000_0000, u32::MAX - 7] {
        let mut request = good.clone();
        request[8 + 8..8 + 12].copy_from_slice(&resp_len.to_le_bytes());
        assert_eq!(
            raw(&mut harness, request, 64),
            (8, -libc::EINVAL),
            "resp_len {resp_len}"
        );
    }
    // Writable part smaller than the answer: -ENOSPC, nothing runs.
    assert_eq!(
        raw(&mut harness, good.clone(), 8 + 16 + 8),
        (8, -libc::ENOSPC)
    );
    // Writable part smaller than a batch_resp: returned with 0 written.
    assert_eq!(raw(&mut harness, good.clone(), 4).0, 0);
    assert_eq!(
        num_buffers(&mut harness),
        0,
        "a rejected batch ran a command"
    );
    // And the exact size works.
    assert_eq!(raw(&mut harness, good, 8 + 16 + 16), (40, 0));
}

#[test]
fn malformed_chains_are_answered_and_never_stall_the_queue() {
    let mut harness = Harness::start();
    let cmds = [Cmd::create(4096, 0)];
    let request = encode_batch(&cmds);
    let need = response_len(&cmds);
    let good = Chain::simple(request.clone(), need);
    let chains = vec![
        good.clone(),
        // No writable part at all.
        Chain::new(vec![Desc::Readable(request.clone())]),
        // Readable after writable.
        Chain::new(vec![Desc::Writable(need), Desc::Readable(request.clone())]),
        // Readable descriptor outside guest RAM (the hole above low RAM).
        Chain::new(vec![
            Desc::Raw {
                addr: LOW_RAM + 4096,
                len: 64,
                write: false,
            },
            Desc::Writable(need),
        ]),
        // Readable descriptor running off the end of a RAM region.
        Chain::new(vec![
            Desc::Raw {
                addr: LOW_RAM - 16,
                len: 64,
                write: false,
            },
            Desc::Writable(need),
        ]),
        // Writable descriptor outside guest RAM: nothing can be written.
        Chain::new(vec![
            Desc::Readable(request.clone()),
            Desc::Raw {
                addr: u64::MAX - 4095,
                len: 4096,
                write: true,
            },
        ]),
        // A huge readable descriptor.
        Chain::new(vec![
            Desc::Raw {
                addr: 0,
                len: 0x8000_0000,
                write: false,
            },
            Desc::Writable(need),
        ]),
        // Readable part larger than any batch (2 MiB inside RAM).
        Chain::new(vec![
            Desc::Raw {
                addr: 32 << 20,
                len: 2 << 20,
                write: false,
            },
            Desc::Writable(need),
        ]),
        good.clone(),
        // (A chain longer than 2^32 bytes in total cannot be walked to its
        // end: an invalid ring state, tests/rings.rs.)
    ];
    let used = harness.submit(&chains);
    assert_eq!(used.len(), chains.len(), "every chain comes back");
    let status = |u: &Used| u32::from_le_bytes(u.written[0..4].try_into().unwrap()) as i32;
    assert_eq!(used[0].len, need);
    assert_eq!(status(&used[0]), 0);
    assert_eq!(used[1].len, 0);
    for (i, u) in used.iter().enumerate().take(5).skip(2) {
        assert_eq!((u.len, status(u)), (8, -libc::EINVAL), "chain {i}");
    }
    assert_eq!(used[5].len, 0);
    for (i, u) in used.iter().enumerate().take(8).skip(6) {
        assert_eq!((u.len, status(u)), (8, -libc::EINVAL), "chain {i}");
    }
    assert_eq!(used[8].len, need);
    assert_eq!(status(&used[8]), 0);
    // Only the two good chains created buffers.
    assert_eq!(num_buffers(&mut harness), 2);
    let stats = harness.run(Cmd::stats(1 << 20));
    let json: serde_json::Value = serde_json::from_slice(&stats.payload).unwrap();
    assert_eq!(json["device"]["malformed_chains"], 6, "{}", json["device"]);
}

#[test]
fn indirect_table_outside_ram_returns_the_chain_empty() {
    let mut harness = Harness::start();
    // An indirect table whose entries point outside RAM.
    let chain = Chain {
        descs: vec![
            Desc::Raw {
                addr: 3 << 30,
                len: 64,
                write: false,
            },
            Desc::Writable(64),
        ],
        indirect: true,
    };
    let used = harness.submit(&[chain]).remove(0);
    assert_eq!(used.len, 8);
    assert_eq!(
        u32::from_le_bytes(used.written[0..4].try_into().unwrap()) as i32,
        -libc::EINVAL
    );
    assert_eq!(num_buffers(&mut harness), 0);
}

#[test]
fn command_header_errors() {
    let mut harness = Harness::start();
    let mut unknown = Cmd::new(99, &[], 0);
    assert_eq!(status_of(&mut harness, unknown.clone()), -libc::EOPNOTSUPP);
    unknown.opcode = 0;
    assert_eq!(status_of(&mut harness, unknown), -libc::EOPNOTSUPP);
    let mut flagged = Cmd::get_info();
    flagged.flags = 1;
    assert_eq!(status_of(&mut harness, flagged), -libc::EINVAL);
    let mut reserved = Cmd::get_info();
    reserved.reserved = 0x100;
    assert_eq!(status_of(&mut harness, reserved), -libc::EINVAL);
}

#[test]
fn payload_sizes_must_be_exact() {
    let mut harness = Harness::start();
    let cases = [
        Cmd::new(CENALLOC_CMD_GET_INFO, &[0; 8], 1024),
        Cmd::new(CENALLOC_CMD_CREATE, &[0; 8], 16),
        Cmd::new(CENALLOC_CMD_CREATE, &[0; 24], 16),
        Cmd::new(CENALLOC_CMD_ATTACH, &[0; 40], 16),
        Cmd::new(CENALLOC_CMD_DETACH, &[], 0),
        Cmd::new(CENALLOC_CMD_MAP, &[0; 16], 64),
        Cmd::new(CENALLOC_CMD_UNMAP, &[], 0),
        Cmd::new(CENALLOC_CMD_FREE, &[0; 16], 0),
        Cmd::new(CENALLOC_CMD_PHYS, &[], 16),
        Cmd::new(CENALLOC_CMD_SYNC, &[0; 16], 0),
        Cmd::new(CENALLOC_CMD_STATS, &[0; 8], 4096),
        Cmd::new(CENALLOC_CMD_FILL, &[0; 8], 0),
        Cmd::new(CENALLOC_CMD_CHECKSUM, &[0; 16], 16),
        Cmd::new(CENALLOC_CMD_POOL_ADD, &[0; 8], 0),
        Cmd::new(CENALLOC_CMD_POOL_ADD, &[], 0),
    ];
    for cmd in cases {
        let status = status_of(&mut harness, cmd.clone());
        assert_eq!(status, -libc::EINVAL, "{cmd:?}");
    }
    // Response slots too small for fixed answers: -ENOSPC with needed.
    for (mut cmd, need) in [
        (Cmd::create(4096, 0), 16),
        (Cmd::phys(1), 16),
        (Cmd::checksum(1), 16),
    ] {
        cmd.resp_len = 8;
        let answer = harness.run(cmd);
        assert_eq!((answer.status, answer.needed), (-libc::ENOSPC, need));
    }
    assert_eq!(num_buffers(&mut harness), 0);
}

#[test]
fn bogus_ids_and_arguments() {
    let mut harness = Harness::start();
    harness.donate_all();
    let created: CreateResp = harness.run(Cmd::create(8192, 0)).ok().get();
    let buffer = created.buffer_id;

    for id in [0u32, 12345, 0x7fff_ffff] {
        assert_eq!(
            status_of(&mut harness, Cmd::attach(id, 1, &[CENALLOC_MAP_SG])),
            -libc::ENOENT
        );
        assert_eq!(status_of(&mut harness, Cmd::detach(id)), -libc::ENOENT);
        assert_eq!(status_of(&mut harness, Cmd::map(id, 0, 4)), -libc::ENOENT);
        assert_eq!(status_of(&mut harness, Cmd::unmap(id, 0)), -libc::ENOENT);
        assert_eq!(status_of(&mut harness, Cmd::free(id)), -libc::ENOENT);
        assert_eq!(status_of(&mut harness, Cmd::phys(id)), -libc::ENOENT);
        assert_eq!(status_of(&mut harness, Cmd::fill(id, 0)), -libc::ENOENT);
        assert_eq!(status_of(&mut harness, Cmd::checksum(id)), -libc::ENOENT);
        assert_eq!(
            status_of(
                &mut harness,
                Cmd::sync(id, CENALLOC_SYNC_BEGIN | CENALLOC_SYNC_READ)
            ),
            -libc::ENOENT
        );
    }
    // Batch references outside a batch (or to nothing) are -EINVAL.
    for id in [CENALLOC_BATCH_REF, 0xdead_beef, u32::MAX] {
        assert_eq!(status_of(&mut harness, Cmd::free(id)), -libc::EINVAL);
        assert_eq!(status_of(&mut harness, Cmd::detach(id)), -libc::EINVAL);
    }
    // ATTACH: type counts, unknown types, stray unused slots, reserved.
    for types in [&[][..], &[1, 1, 1, 1, 1, 1, 1, 1, 1][..]] {
        let mut cmd = Cmd::attach(buffer, 1, &[CENALLOC_MAP_SG]);
        let mut req = AttachReq::default();
        req.as_mut_slice().copy_from_slice(&cmd.payload);
        req.num_types = types.len() as u32;
        cmd.payload = req.as_slice().to_vec();
        assert_eq!(status_of(&mut harness, cmd), -libc::EINVAL);
    }
    assert_eq!(
        status_of(&mut harness, Cmd::attach(buffer, 1, &[3])),
        -libc::EINVAL
    );
    assert_eq!(
        status_of(&mut harness, Cmd::attach(buffer, 1, &[0x7fff])),
        -libc::EINVAL
    );
    let mut stray = Cmd::attach(buffer, 1, &[CENALLOC_MAP_SG]);
    stray.payload[16 + 4 * 7] = 1;
    assert_eq!(status_of(&mut harness, stray), -libc::EINVAL);
    let mut reserved = Cmd::attach(buffer, 1, &[CENALLOC_MAP_SG]);
    reserved.payload[12] = 1;
    assert_eq!(status_of(&mut harness, reserved), -libc::EINVAL);
    // Mask 0: empty access mask.
    assert_eq!(
        status_of(&mut harness, Cmd::attach(buffer, 0, &[CENALLOC_MAP_SG])),
        -libc::EINVAL
    );

    let attach: AttachResp = harness
        .run(Cmd::attach(buffer, CENALLOC_MASK_ANY, &[CENALLOC_MAP_SG]))
        .ok()
        .get();
    assert_eq!(
        status_of(&mut harness, Cmd::map(attach.attach_id, 3, 4)),
        -libc::EINVAL
    );
    assert_eq!(
        status_of(&mut harness, Cmd::map(attach.attach_id, u32::MAX, 4)),
        -libc::EINVAL
    );
    // SYNC flags.
    for flags in [
        0,
        CENALLOC_SYNC_BEGIN,
        CENALLOC_SYNC_READ,
        CENALLOC_SYNC_BEGIN | CENALLOC_SYNC_END | CENALLOC_SYNC_READ,
        CENALLOC_SYNC_BEGIN | CENALLOC_SYNC_READ | 0x10,
    ] {
        assert_eq!(
            status_of(&mut harness, Cmd::sync(buffer, flags)),
            -libc::EINVAL,
            "{flags:#x}"
        );
    }
    // CREATE: flags, zero and absurd sizes.
    let mut flagged = Cmd::create(4096, 0);
    flagged.payload[8] = 1;
    assert_eq!(status_of(&mut harness, flagged), -libc::EINVAL);
    assert_eq!(status_of(&mut harness, Cmd::create(0, 0)), -libc::EINVAL);
    assert_eq!(
        status_of(&mut harness, Cmd::create(u64::MAX, 0)),
        -libc::E2BIG
    );
    // Reserved fields of FREE / PHYS / FILL / CHECKSUM / DETACH.
    for (mut cmd, offset) in [
        (Cmd::free(buffer), 4),
        (Cmd::phys(buffer), 4),
        (Cmd::fill(buffer, 0), 4),
        (Cmd::checksum(buffer), 4),
        (Cmd::detach(attach.attach_id), 4),
    ] {
        cmd.payload[offset] = 1;
        assert_eq!(
            status_of(&mut harness, cmd.clone()),
            -libc::EINVAL,
            "{cmd:?}"
        );
    }
    // The buffer and attachment are untouched by all of this.
    assert_eq!(num_buffers(&mut harness), 1);
    harness.run(Cmd::map(attach.attach_id, 0, 8)).ok();
}

#[test]
fn pool_add_validates_every_range_and_is_all_or_nothing() {
    let mut harness = Harness::start();
    let page = 4096u64;
    let low = 64u64 << 20;
    let cases: Vec<(Cmd, i32)> = vec![
        (Cmd::pool_add(0, &[]), -libc::EINVAL),
        (Cmd::pool_add(9, &[(low, page)]), -libc::ENOENT),
        (Cmd::pool_add(0, &[(low + 1, page)]), -libc::EINVAL),
        (Cmd::pool_add(0, &[(low, page + 1)]), -libc::EINVAL),
        (Cmd::pool_add(0, &[(low, 0)]), -libc::EINVAL),
        (
            Cmd::pool_add(0, &[(u64::MAX - page + 1, page)]),
            -libc::EINVAL,
        ),
        (Cmd::pool_add(0, &[(!(page - 1), 2 * page)]), -libc::EINVAL),
        // In the hole between low RAM and 4 GiB.
        (Cmd::pool_add(0, &[(LOW_RAM, page)]), -libc::EFAULT),
        // Straddling the end of low RAM.
        (
            Cmd::pool_add(0, &[(LOW_RAM - page, 2 * page)]),
            -libc::EFAULT,
        ),
        // Past the end of high RAM.
        (
            Cmd::pool_add(0, &[(HIGH_BASE + HIGH_RAM - page, 2 * page)]),
            -libc::EFAULT,
        ),
        // dma32 pool (1) above 4 GiB.
        (Cmd::pool_add(1, &[(HIGH_BASE, page)]), -libc::ERANGE),
        // Overlap inside one request.
        (
            Cmd::pool_add(0, &[(low, 4 * page), (low + page, page)]),
            -libc::EEXIST,
        ),
        // First range good, second bad: nothing is added.
        (
            Cmd::pool_add(0, &[(low, page), (LOW_RAM, page)]),
            -libc::EFAULT,
        ),
    ];
    for (cmd, expected) in cases {
        assert_eq!(harness.run(cmd.clone()).status, expected, "{cmd:?}");
    }
    // Count above the protocol limit, and a count that disagrees with the payload.
    let many: Vec<(u64, u64)> = (0..257).map(|i| (low + i * page, page)).collect();
    assert_eq!(harness.run(Cmd::pool_add(0, &many)).status, -libc::EINVAL);
    let mut lying = Cmd::pool_add(0, &[(low, page)]);
    lying.payload[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(harness.run(lying).status, -libc::EINVAL);
    assert_eq!(
        capacities(&mut harness),
        vec![0, 0, 0, 0],
        "a failed POOL_ADD changed state"
    );

    // Good donation, then the same range again (any pool): -EEXIST.
    harness
        .run(Cmd::pool_add(0, &[(low, 4 * page), (HIGH_BASE, page)]))
        .ok();
    assert_eq!(
        harness.run(Cmd::pool_add(2, &[(low + page, page)])).status,
        -libc::EEXIST
    );
    assert_eq!(capacities(&mut harness), vec![5 * page, 0, 0, 0]);
}

#[test]
fn map_zeroes_backing_that_held_guest_data() {
    let mut harness = Harness::start();
    let donated = harness.donate_all();
    // Dirty all donated memory again after POOL_ADD (the guest may have
    // used it before donating).
    for ranges in &donated {
        for &(addr, len) in ranges {
            harness.ram.fill(addr, len, 0x5A);
        }
    }
    for mask in [
        CENALLOC_MASK_ANY,
        CENALLOC_KIND_DMA32,
        CENALLOC_KIND_CONTIG,
        CENALLOC_KIND_CONTIG_DMA32,
    ] {
        let answer = harness.batch(&[
            Cmd::create(40 << 10, 0),
            Cmd::attach(
                CENALLOC_BATCH_REF,
                mask,
                &[CENALLOC_MAP_SG, CENALLOC_MAP_CONTIG],
            ),
            Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL, 16),
        ]);
        assert_eq!(answer.status, 0, "{answer:?}");
        let (_, segments) = map_segments(&answer.answers[2]);
        let contents = read_buffer(&harness.ram, &segments);
        assert_eq!(contents.len(), 40 << 10);
        assert!(
            contents.iter().all(|&b| b == 0),
            "mask {mask:#x} not zeroed"
        );
    }
}

#[test]
fn daemon_survives_garbage_and_keeps_serving() {
    let mut harness = Harness::start();
    // Pseudo-random garbage requests of many sizes.
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut chains = Vec::new();
    for i in 0..64 {
        let len = (i * 37) % 600 + 1;
        let bytes: Vec<u8> = (0..len)
            .map(|j| {
                seed = cenalloc_pattern(seed, j as u64);
                seed as u8
            })
            .collect();
        chains.push(Chain::simple(bytes, (i as u32 * 53) % 512));
    }
    let used = harness.submit(&chains);
    assert_eq!(used.len(), 64);
    // Still alive and consistent.
    harness.donate_all();
    harness.run(Cmd::create(4096, 0)).ok();
}
