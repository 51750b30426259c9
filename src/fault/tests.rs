//! The fault specs, the injector and the rewritten answers.

use std::fs;

use vm_memory::ByteValued;

use super::rewrite::read;
use super::*;

/// A batch of one MAP and the honest answer with `segments`.
fn map_batch(
    map_type: u32,
    flags: u32,
    segments: &[(u64, u64)],
    slot_segments: usize,
) -> (Vec<u8>, Vec<u8>) {
    let slot = size_of::<MapResp>() + slot_segments * size_of::<Range>();
    let mut request = BatchHdr {
        num_cmds: 1,
        reserved: 0,
    }
    .as_slice()
    .to_vec();
    request.extend_from_slice(
        CmdHdr {
            opcode: CENALLOC_CMD_MAP,
            flags: 0,
            len: size_of::<MapReq>() as u32,
            resp_len: slot as u32,
            reserved: 0,
        }
        .as_slice(),
    );
    request.extend_from_slice(
        MapReq {
            attach_id: 1,
            direction: 0,
        }
        .as_slice(),
    );
    let size: u64 = segments.iter().map(|s| s.1).sum();
    let mut response = BatchResp {
        status: 0,
        num_done: 1,
    }
    .as_slice()
    .to_vec();
    let len = size_of::<MapResp>() + segments.len() * size_of::<Range>();
    response.extend_from_slice(
        RespHdr {
            status: 0,
            len: len as u32,
            needed: 0,
            reserved: 0,
        }
        .as_slice(),
    );
    let mut slot_bytes = MapResp {
        map_type,
        num_segments: segments.len() as u32,
        allocator_id: 0,
        flags,
        size,
    }
    .as_slice()
    .to_vec();
    for &(addr, len) in segments {
        slot_bytes.extend_from_slice(Range { addr, len }.as_slice());
    }
    slot_bytes.resize(slot, 0);
    response.extend_from_slice(&slot_bytes);
    (request, response)
}

fn answer(verdict: Verdict) -> Vec<u8> {
    match verdict {
        Verdict::Answer(bytes) => bytes,
        Verdict::Withhold => panic!("withheld"),
    }
}

fn parse_map(response: &[u8]) -> (RespHdr, MapResp, Vec<Range>) {
    let hdr: RespHdr = read(response, 8).unwrap();
    let map: MapResp = read(response, 24).unwrap();
    let segments = (0..map.num_segments as usize)
        .map(|i| read(response, 48 + i * 16).unwrap())
        .collect();
    (hdr, map, segments)
}

#[test]
fn specs_parse_and_bad_ones_are_refused() {
    assert_eq!("none".parse(), Ok(Fault::None));
    assert_eq!("shared-backing".parse(), Ok(Fault::SharedBacking));
    assert_eq!("".parse(), Ok(Fault::None));
    assert_eq!(" split-segment\n".parse(), Ok(Fault::SplitSegment));
    assert_eq!("lease-outside-pool".parse(), Ok(Fault::LeaseOutsidePool));
    assert_eq!(
        "short-answer:pool-add".parse(),
        Ok(Fault::ShortAnswer(Some(CENALLOC_CMD_POOL_ADD)))
    );
    assert_eq!("no-answer".parse(), Ok(Fault::NoAnswer(None)));
    assert_eq!("slow:250".parse(), Ok(Fault::Slow(250)));
    assert_eq!("needed:0xfffffff8".parse(), Ok(Fault::Needed(0xffff_fff8)));
    assert!(matches!("slow:0".parse::<Fault>(), Err(Error::Delay(_))));
    assert!(matches!("slow".parse::<Fault>(), Err(Error::Delay(_))));
    assert!(matches!(
        "short-answer:nope".parse::<Fault>(),
        Err(Error::Opcode(_))
    ));
    assert!(matches!(
        "map-type:map".parse::<Fault>(),
        Err(Error::Argument(_))
    ));
    assert!(matches!(
        "sideways".parse::<Fault>(),
        Err(Error::Unknown(_))
    ));
    assert_eq!("max-batch:2".parse(), Ok(Fault::MaxBatch(2)));
    assert_eq!(
        "refuse-attach:0x100".parse(),
        Ok(Fault::RefuseAttach(0x100))
    );
    assert!(matches!(
        "refuse-attach".parse::<Fault>(),
        Err(Error::Number(_))
    ));
    assert!(matches!(
        "max-batch:x".parse::<Fault>(),
        Err(Error::Number(_))
    ));
    assert_eq!("pool-align:0x3000".parse(), Ok(Fault::PoolAlign(0x3000)));
    assert_eq!("info-placement".parse(), Ok(Fault::InfoPlacement));
    assert_eq!("info-count".parse(), Ok(Fault::InfoCount));
    assert_eq!(
        "errno:checksum:512".parse(),
        Ok(Fault::Errno(CENALLOC_CMD_CHECKSUM, 512))
    );
    for bad in [
        "errno",
        "errno:checksum",
        "errno:checksum:0",
        "errno:checksum:4096",
    ] {
        assert!(
            matches!(bad.parse::<Fault>(), Err(Error::Number(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        "errno:nope:5".parse::<Fault>(),
        Err(Error::Opcode(_))
    ));
}

#[test]
fn config_rewrite_sets_the_first_pools_align() {
    let mut injector = Injector::new(Source::Fixed(Fault::PoolAlign(0x3000)));
    let mut bytes = Config::default().as_slice().to_vec();
    injector.rewrite_config(0, &mut bytes);
    let read_back: Config = read(&bytes, 0).unwrap();
    assert_eq!(read_back.pools[0].align, 0x3000);
    assert_eq!(read_back.pools[1].align, 0);
}

#[test]
fn refuse_attach_zeroes_only_the_mask_asked_for() {
    let attach = |mask| AttachReq {
        buffer_id: 1,
        mask,
        num_types: 1,
        reserved: 0,
        types: [CENALLOC_MAP_SG, 0, 0, 0, 0, 0, 0, 0],
    };
    let mut request = BatchHdr {
        num_cmds: 2,
        reserved: 0,
    }
    .as_slice()
    .to_vec();
    for mask in [0x100, CENALLOC_KIND_SYSTEM] {
        request.extend_from_slice(
            CmdHdr {
                opcode: CENALLOC_CMD_ATTACH,
                flags: 0,
                len: size_of::<AttachReq>() as u32,
                resp_len: 16,
                reserved: 0,
            }
            .as_slice(),
        );
        request.extend_from_slice(attach(mask).as_slice());
    }
    refuse_attach(0x100, &mut request);
    let first: AttachReq = read(&request, 8 + 16).unwrap();
    let second: AttachReq = read(&request, 8 + 16 + 48 + 16).unwrap();
    assert_eq!((first.mask, second.mask), (0, CENALLOC_KIND_SYSTEM));
}

#[test]
fn an_honest_device_is_left_alone() {
    let (request, response) = map_batch(CENALLOC_MAP_SG, 1, &[(0x10000, 0x4000)], 4);
    assert_eq!(
        answer(rewrite(Fault::None, &request, response.clone())),
        response
    );
    // A MAP fault leaves other commands' answers alone.
    assert_eq!(
        answer(rewrite(Fault::AttachType, &request, response.clone())),
        response
    );
}

#[test]
fn split_segment_keeps_the_memory_and_adds_a_segment() {
    let (request, response) = map_batch(CENALLOC_MAP_SG, 1, &[(0x10000, 0x4000)], 4);
    let (hdr, map, segments) = parse_map(&answer(rewrite(Fault::SplitSegment, &request, response)));
    assert_eq!(hdr.status, 0);
    assert_eq!(map.num_segments, 2);
    assert_eq!(hdr.len, 24 + 32);
    assert_eq!(
        segments,
        vec![
            Range {
                addr: 0x10000,
                len: 0x2000
            },
            Range {
                addr: 0x12000,
                len: 0x2000
            }
        ]
    );
}

#[test]
fn a_lie_without_room_is_not_told() {
    let (request, response) = map_batch(CENALLOC_MAP_SG, 0, &[(0x10000, 0x4000)], 1);
    let unchanged = answer(rewrite(Fault::SplitSegment, &request, response.clone()));
    assert_eq!(unchanged, response);
}

/// What the executor answers to a lone MAP whose slot is 0 bytes.
fn enospc(needed: u32) -> Vec<u8> {
    let mut out = BatchResp {
        status: status_of_errno(libc::ENOSPC),
        num_done: 0,
    }
    .as_slice()
    .to_vec();
    out.extend_from_slice(
        RespHdr {
            status: status_of_errno(libc::ENOSPC),
            len: 0,
            needed,
            reserved: 0,
        }
        .as_slice(),
    );
    out
}

#[test]
fn faults_that_need_room_ask_for_it_without_a_mapping() {
    use crate::chain::Filter;

    let mut injector = Injector::new(Source::Fixed(Fault::SplitSegment));
    let (original, _) = map_batch(CENALLOC_MAP_SG, 0, &[(0x10000, 0x4000)], 1);
    let mut request = original.clone();
    injector.request(&mut request);
    let cmd: CmdHdr = read(&request, 8).unwrap();
    assert_eq!(cmd.resp_len, 0, "the executor sees no slot: maps nothing");
    let restored = injector.answer(&request, enospc(24 + 16)).unwrap();
    assert_eq!(restored.len(), 8 + 16 + 24 + 16, "the driver's layout");
    let hdr: RespHdr = read(&restored, 8).unwrap();
    assert_eq!(
        (hdr.status as i32, hdr.needed),
        (-libc::ENOSPC, 24 + 32),
        "room for one more segment"
    );
    // Asked again with that room: the MAP runs and the lie fits.
    let (original, response) = map_batch(CENALLOC_MAP_SG, 0, &[(0x10000, 0x4000)], 2);
    let mut request = original.clone();
    injector.request(&mut request);
    assert_eq!(request, original, "not hidden");
    let (hdr, map, _) = parse_map(&injector.answer(&request, response).unwrap());
    assert_eq!((hdr.status, map.num_segments), (0, 2));

    let mut huge = Injector::new(Source::Fixed(Fault::Needed(24 + 16 * 1000)));
    let mut request = original.clone();
    huge.request(&mut request);
    let (hdr, _, _) = parse_map(&huge.answer(&request, enospc(24 + 16)).unwrap());
    assert_eq!(
        (hdr.status as i32, hdr.needed),
        (-libc::ENOSPC, 24 + 16 * 1000)
    );
    // Asked with that room, the real (smaller) answer comes.
    let (original, response) = map_batch(CENALLOC_MAP_SG, 0, &[(0x10000, 0x4000)], 1000);
    let mut request = original.clone();
    huge.request(&mut request);
    let cmd: CmdHdr = read(&request, 8).unwrap();
    assert_eq!(cmd.resp_len, 24 + 16 * 1000, "not hidden");
    assert_eq!(huge.answer(&request, response.clone()).unwrap(), response);
}

#[test]
fn shared_backing_names_the_previous_allocation() {
    use crate::chain::Filter;

    let alloc = CENALLOC_MAP_F_ALLOCATED;
    let mut injector = Injector::new(Source::Fixed(Fault::SharedBacking));
    let mut run = |flags, segments: &[(u64, u64)]| {
        let (mut request, response) = map_batch(CENALLOC_MAP_SG, flags, segments, 4);
        injector.request(&mut request);
        let segments = parse_map(&injector.answer(&request, response).unwrap()).2;
        segments.iter().map(|r| (r.addr, r.len)).collect::<Vec<_>>()
    };
    let first = [(0x10000, 0x4000)];
    assert_eq!(run(alloc, &first), vec![(0x10000, 0x4000)], "remembered");
    // Not allocated: left alone.
    assert_eq!(run(0, &[(0x30000, 0x4000)]), vec![(0x30000, 0x4000)]);
    // Allocated, as many bytes in two segments: the first buffer's.
    assert_eq!(
        run(alloc, &[(0x20000, 0x2000), (0x28000, 0x2000)]),
        vec![(0x10000, 0x4000)]
    );
    // Another size: answered as it is, and remembered instead.
    assert_eq!(run(alloc, &[(0x40000, 0x8000)]), vec![(0x40000, 0x8000)]);
    assert_eq!(run(alloc, &[(0x50000, 0x8000)]), vec![(0x40000, 0x8000)]);
}

#[test]
fn segment_count_and_placement_faults() {
    let two = [(0x10000, 0x2000), (0x20000, 0x2000)];
    let (request, response) = map_batch(CENALLOC_MAP_SG, 1, &two, 4);
    let (_, map, segs) = parse_map(&answer(rewrite(
        Fault::ExtraSegment,
        &request,
        response.clone(),
    )));
    assert_eq!(
        (map.num_segments, segs[2]),
        (
            3,
            Range {
                addr: 0x20000,
                len: 0x2000
            }
        )
    );
    let (_, map, _) = parse_map(&answer(rewrite(
        Fault::FewerSegments,
        &request,
        response.clone(),
    )));
    assert_eq!(map.num_segments, 1);
    let (_, _, segs) = parse_map(&answer(rewrite(
        Fault::OutsidePool,
        &request,
        response.clone(),
    )));
    assert_eq!(segs[0].addr, 0);
    let (_, _, segs) = parse_map(&answer(rewrite(
        Fault::Dma32High,
        &request,
        response.clone(),
    )));
    assert_eq!((segs[0].addr, segs[1].addr), (0x1_0001_0000, 0x1_0002_0000));
    let (_, map, _) = parse_map(&answer(rewrite(Fault::MapType, &request, response.clone())));
    assert_eq!(map.map_type, CENALLOC_MAP_CONTIG);
    let (_, map, _) = parse_map(&answer(rewrite(
        Fault::AllocatorId,
        &request,
        response.clone(),
    )));
    assert_eq!(map.allocator_id, 99);
    // Only a map of existing backing moves.
    assert_eq!(
        answer(rewrite(Fault::MovedBacking, &request, response.clone())),
        response
    );
    let (request, response) = map_batch(CENALLOC_MAP_SG, 0, &two, 4);
    let (_, _, segs) = parse_map(&answer(rewrite(Fault::MovedBacking, &request, response)));
    assert_eq!(segs[0].addr, 0x11000);
}

#[test]
fn lease_outside_pool_moves_the_first_extent_of_a_lease_answer() {
    let mut request = BatchHdr {
        num_cmds: 1,
        reserved: 0,
    }
    .as_slice()
    .to_vec();
    let slot = size_of::<LeaseResp>() + 2 * size_of::<Range>();
    request.extend_from_slice(
        CmdHdr {
            opcode: CENALLOC_CMD_LEASE,
            flags: 0,
            len: size_of::<LeaseReq>() as u32,
            resp_len: slot as u32,
            reserved: 0,
        }
        .as_slice(),
    );
    request.extend_from_slice(LeaseReq::default().as_slice());
    let mut response = BatchResp {
        status: 0,
        num_done: 1,
    }
    .as_slice()
    .to_vec();
    response.extend_from_slice(
        RespHdr {
            status: 0,
            len: slot as u32,
            ..Default::default()
        }
        .as_slice(),
    );
    response.extend_from_slice(
        LeaseResp {
            num_extents: 2,
            ..Default::default()
        }
        .as_slice(),
    );
    for addr in [0x10000u64, 0x11000] {
        response.extend_from_slice(Range { addr, len: 0x1000 }.as_slice());
    }
    let first = size_of::<BatchResp>() + size_of::<RespHdr>() + size_of::<LeaseResp>();
    let lied = answer(rewrite(Fault::LeaseOutsidePool, &request, response.clone()));
    let extent = |bytes: &[u8], i: usize| read::<Range>(bytes, first + i * 16).unwrap();
    assert_eq!((extent(&lied, 0).addr, extent(&lied, 1).addr), (0, 0x11000));
    // Nothing else is touched: a MAP answer stays as it was.
    let (request, response) = map_batch(CENALLOC_MAP_SG, 1, &[(0x10000, 0x4000)], 4);
    assert_eq!(
        answer(rewrite(Fault::LeaseOutsidePool, &request, response.clone())),
        response
    );
}

#[test]
fn info_placement_flips_dma32_of_the_first_allocator_only() {
    let mut request = BatchHdr {
        num_cmds: 1,
        reserved: 0,
    }
    .as_slice()
    .to_vec();
    let slot = size_of::<InfoResp>() + 2 * size_of::<AllocatorInfo>();
    request.extend_from_slice(
        CmdHdr {
            opcode: CENALLOC_CMD_GET_INFO,
            flags: 0,
            len: 0,
            resp_len: slot as u32,
            reserved: 0,
        }
        .as_slice(),
    );
    let mut response = BatchResp {
        status: 0,
        num_done: 1,
    }
    .as_slice()
    .to_vec();
    response.extend_from_slice(
        RespHdr {
            status: 0,
            len: slot as u32,
            ..Default::default()
        }
        .as_slice(),
    );
    response.extend_from_slice(
        InfoResp {
            num_allocators: 2,
            ..Default::default()
        }
        .as_slice(),
    );
    for placement in [0, CENALLOC_PLACE_DMA32] {
        response.extend_from_slice(
            AllocatorInfo {
                placement,
                ..Default::default()
            }
            .as_slice(),
        );
    }
    let first = size_of::<BatchResp>() + size_of::<RespHdr>() + size_of::<InfoResp>();
    let lied = answer(rewrite(Fault::InfoPlacement, &request, response.clone()));
    let placement = |bytes: &[u8], i: usize| {
        read::<AllocatorInfo>(bytes, first + i * size_of::<AllocatorInfo>())
            .unwrap()
            .placement
    };
    assert_eq!(
        (placement(&lied, 0), placement(&lied, 1)),
        (CENALLOC_PLACE_DMA32, CENALLOC_PLACE_DMA32)
    );
    // info-count: one allocator more than the answer holds, nothing else.
    let info_at = size_of::<BatchResp>() + size_of::<RespHdr>();
    let counted = answer(rewrite(Fault::InfoCount, &request, response.clone()));
    let mut info = read::<InfoResp>(&counted, info_at).unwrap();
    assert_eq!(info.num_allocators, 3);
    info.num_allocators = 2;
    let mut restored = counted.clone();
    restored[info_at..info_at + size_of::<InfoResp>()].copy_from_slice(info.as_slice());
    assert_eq!(restored, response);
    let (request, response) = map_batch(CENALLOC_MAP_SG, 1, &[(0x10000, 0x4000)], 4);
    assert_eq!(
        answer(rewrite(Fault::InfoPlacement, &request, response.clone())),
        response
    );
}

#[test]
fn contig_split_only_touches_contiguous_maps() {
    let (request, response) = map_batch(CENALLOC_MAP_SG, 1, &[(0x10000, 0x4000)], 4);
    assert_eq!(
        answer(rewrite(Fault::ContigSplit, &request, response.clone())),
        response
    );
    let (request, response) = map_batch(CENALLOC_MAP_CONTIG, 1, &[(0x10000, 0x4000)], 4);
    let (_, map, _) = parse_map(&answer(rewrite(Fault::ContigSplit, &request, response)));
    assert_eq!((map.map_type, map.num_segments), (CENALLOC_MAP_CONTIG, 2));
}

#[test]
fn chain_level_faults() {
    let (request, response) = map_batch(CENALLOC_MAP_SG, 1, &[(0x10000, 0x4000)], 4);
    assert_eq!(
        rewrite(Fault::NoAnswer(None), &request, response.clone()),
        Verdict::Withhold
    );
    assert_eq!(
        answer(rewrite(
            Fault::NoAnswer(Some(CENALLOC_CMD_POOL_ADD)),
            &request,
            response.clone()
        )),
        response
    );
    assert_eq!(
        answer(rewrite(
            Fault::ShortAnswer(None),
            &request,
            response.clone()
        ))
        .len(),
        8
    );
    let garbled = answer(rewrite(
        Fault::StatusGarbage(None),
        &request,
        response.clone(),
    ));
    assert_eq!(read::<RespHdr>(&garbled, 8).unwrap().status, 0x1234);
    let errno = answer(rewrite(
        Fault::Errno(CENALLOC_CMD_MAP, 512),
        &request,
        response.clone(),
    ));
    let hdr = read::<RespHdr>(&errno, 8).unwrap();
    assert_eq!((hdr.status as i32, hdr.len), (-512, 0));
    assert_eq!(
        answer(rewrite(
            Fault::Errno(CENALLOC_CMD_CHECKSUM, 512),
            &request,
            response.clone()
        )),
        response
    );
    // A MAP the device did run is not turned into -ENOSPC.
    assert_eq!(
        answer(rewrite(Fault::Needed(1 << 20), &request, response.clone())),
        response
    );
}

#[test]
fn config_rewrite_hits_max_segments_at_any_offset() {
    let mut injector = Injector::new(Source::Fixed(Fault::MaxSegmentsHuge));
    let config = Config::default();
    let mut bytes = config.as_slice().to_vec();
    injector.rewrite_config(0, &mut bytes);
    let read_back: Config = read(&bytes, 0).unwrap();
    assert_eq!(read_back.max_segments, u32::MAX);
    // A read of 4 bytes at the field's offset.
    let field = std::mem::offset_of!(Config, max_segments);
    let mut word = [0u8; 4];
    injector.rewrite_config(field as u32, &mut word);
    assert_eq!(u32::from_le_bytes(word), u32::MAX);
    let mut batch = Injector::new(Source::Fixed(Fault::MaxBatch(2)));
    let mut bytes = config.as_slice().to_vec();
    batch.rewrite_config(0, &mut bytes);
    let read_back: Config = read(&bytes, 0).unwrap();
    assert_eq!((read_back.max_batch, read_back.max_segments), (2, 0));
    let mut honest = Injector::new(Source::Fixed(Fault::None));
    let mut untouched = [0u8; 4];
    honest.rewrite_config(field as u32, &mut untouched);
    assert_eq!(untouched, [0; 4]);
}

#[test]
fn the_fault_file_is_re_read_when_it_changes() {
    let dir = std::env::temp_dir().join(format!("cenalloc-fault-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fault");
    // As run-vm does: a new file renamed into place.
    let set = |spec: &str| {
        let tmp = dir.join("fault.tmp");
        fs::write(&tmp, spec).unwrap();
        fs::rename(&tmp, &path).unwrap();
    };
    let mut injector = Injector::new(Source::File(path.clone()));
    assert_eq!(injector.current(), Fault::None, "no file: honest");
    set("map-type\n");
    assert_eq!(injector.current(), Fault::MapType);
    set("attach-type");
    assert_eq!(injector.current(), Fault::AttachType);
    set("dma32-high\n");
    assert_eq!(
        injector.current(),
        Fault::Dma32High,
        "same length, new file"
    );
    set("bogus-fault");
    assert_eq!(injector.current(), Fault::None, "a bad spec: honest");
    set("no-answer:map");
    assert_eq!(injector.current(), Fault::NoAnswer(Some(CENALLOC_CMD_MAP)));
    fs::remove_dir_all(&dir).unwrap();
}
