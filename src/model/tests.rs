//! Unit tests: one or more per rule of the model, with the errno.

use super::allocator::fragmentation_permille;
use super::mapping::negotiate;
use super::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

const SG: MappingType = MappingType::ScatterGather;
const CONTIGUOUS: MappingType = MappingType::Contiguous;
const BOTH: &[MappingType] = &[MappingType::Contiguous, MappingType::ScatterGather];
const DIR: Direction = Direction::Bidirectional;

// Default layout ids.
const SYSTEM_ALLOC: usize = 0;
const DMA32_ALLOC: usize = 1;
const CONTIG_ALLOC: usize = 2;
const CONTIG32_ALLOC: usize = 3;

/// Default layout with memory in every allocator:
/// system 8 GiB+64 MiB, dma32 1 GiB+16 MiB, contig 16 GiB+64 MiB,
/// contig32 2 GiB+16 MiB.
fn default_pool() -> Pool {
    let mut pool = Pool::new(PoolConfig::default_layout()).unwrap();
    pool.add_region(SYSTEM_ALLOC, 8 * GIB, 64 * MIB).unwrap();
    pool.add_region(DMA32_ALLOC, GIB, 16 * MIB).unwrap();
    pool.add_region(CONTIG_ALLOC, 16 * GIB, 64 * MIB).unwrap();
    pool.add_region(CONTIG32_ALLOC, 2 * GIB, 16 * MIB).unwrap();
    pool
}

fn spec(name: &str, strategy: Strategy, kinds: u32, below_4g: bool) -> AllocatorSpec {
    AllocatorSpec {
        name: name.into(),
        strategy,
        kinds,
        placement: Placement {
            contiguous: strategy == Strategy::Contiguous,
            below_4g,
            align: PAGE_SIZE,
        },
        share: false,
    }
}

fn config_with(allocators: Vec<AllocatorSpec>) -> PoolConfig {
    PoolConfig {
        allocators,
        ..PoolConfig::default_layout()
    }
}

/// Runs `op` and checks that it fails with `errno` and changes nothing.
fn fails_unchanged<T: std::fmt::Debug>(
    pool: &mut Pool,
    errno: i32,
    op: impl FnOnce(&mut Pool) -> Result<T, Error>,
) -> Error {
    let before = pool.snapshot();
    let err = op(pool).expect_err("operation should fail");
    assert_eq!(err.errno(), errno, "{err}");
    assert_eq!(pool.snapshot(), before, "failed operation changed the pool");
    err
}

fn stats(pool: &Pool, allocator: usize) -> AllocatorStats {
    pool.allocator_stats().swap_remove(allocator)
}

// ---------------------------------------------------------------- header

/// Extracts `#define NAME value` from the protocol header.
fn header_define(name: &str) -> u64 {
    let header = include_str!("../../guest-driver/cenalloc_proto.h");
    for line in header.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("#define") && words.next() == Some(name) {
            let value = words.collect::<Vec<_>>().join(" ");
            let value = value.split("/*").next().unwrap().trim();
            let value = value.trim_start_matches('(').trim_end_matches(')');
            let value = value.trim_end_matches('u').trim_end_matches("ull");
            if let Some((base, shift)) = value.split_once("u << ") {
                return base.parse::<u64>().unwrap() << shift.parse::<u32>().unwrap();
            }
            if let Some(hex) = value.strip_prefix("0x") {
                return u64::from_str_radix(hex.trim_end_matches('u'), 16).unwrap();
            }
            return value.parse().unwrap();
        }
    }
    panic!("{name} not in the header");
}

#[test]
fn kinds_and_codes_equal_the_header() {
    assert_eq!(
        u64::from(kinds::SYSTEM),
        header_define("CENALLOC_KIND_SYSTEM")
    );
    assert_eq!(
        u64::from(kinds::CONTIG),
        header_define("CENALLOC_KIND_CONTIG")
    );
    assert_eq!(
        u64::from(kinds::DMA32),
        header_define("CENALLOC_KIND_DMA32")
    );
    assert_eq!(
        u64::from(kinds::CONTIG_DMA32),
        header_define("CENALLOC_KIND_CONTIG_DMA32")
    );
    assert_eq!(
        u64::from(kinds::WELL_KNOWN),
        header_define("CENALLOC_KIND_WELL_KNOWN")
    );
    assert_eq!(
        u64::from(kinds::CUSTOM),
        header_define("CENALLOC_KIND_CUSTOM")
    );
    assert_eq!(u64::from(kinds::ANY), header_define("CENALLOC_MASK_ANY"));
    assert_eq!(u64::from(SG.code()), header_define("CENALLOC_MAP_SG"));
    assert_eq!(
        u64::from(CONTIGUOUS.code()),
        header_define("CENALLOC_MAP_CONTIG")
    );
    assert_eq!(
        u64::from(mapping::CODE_PRIVATE_FIRST),
        header_define("CENALLOC_MAP_PRIVATE_FIRST")
    );
    assert_eq!(
        u64::from(mapping::CODE_PRIVATE_LAST),
        header_define("CENALLOC_MAP_PRIVATE_LAST")
    );
    assert_eq!(
        u64::from(ID_BATCH_REF_BIT),
        header_define("CENALLOC_BATCH_REF")
    );
    assert_eq!(PAGE_SIZE, header_define("CENALLOC_PAGE_SIZE"));
    for (dir, name) in [
        (Direction::Bidirectional, "CENALLOC_DIR_BIDIRECTIONAL"),
        (Direction::ToDevice, "CENALLOC_DIR_TO_DEVICE"),
        (Direction::FromDevice, "CENALLOC_DIR_FROM_DEVICE"),
    ] {
        assert_eq!(u64::from(dir.code()), header_define(name));
        assert_eq!(Direction::from_code(dir.code()), Some(dir));
    }
    assert_eq!(Direction::from_code(3), None);
}

#[test]
fn mapping_type_codes_round_trip() {
    assert_eq!(MappingType::from_code(1), Some(SG));
    assert_eq!(MappingType::from_code(2), Some(CONTIGUOUS));
    assert_eq!(
        MappingType::from_code(0x8000),
        Some(MappingType::Private(0x8000))
    );
    assert_eq!(
        MappingType::from_code(0xffff),
        Some(MappingType::Private(0xffff))
    );
    for bad in [0, 3, 0x7fff, 0x1_0000, u32::MAX] {
        assert_eq!(MappingType::from_code(bad), None, "{bad:#x}");
    }
    assert!(!MappingType::Private(5).is_valid());
    assert_eq!(MappingType::Private(0x8123).code(), 0x8123);
}

// ---------------------------------------------------------------- config

#[test]
fn default_layout_is_valid_and_documented() {
    let pool = Pool::new(PoolConfig::default_layout()).unwrap();
    let names: Vec<_> = pool.allocator_stats().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["system", "dma32", "contig", "contig32"]);
    let s = pool.allocator_stats();
    assert_eq!(s[DMA32_ALLOC].limit, FOUR_GIB);
    assert_eq!(s[CONTIG32_ALLOC].limit, FOUR_GIB);
    assert_eq!(s[SYSTEM_ALLOC].limit, u64::MAX);
    assert_eq!(pool.config().limits, Limits::default());
}

#[test]
fn invalid_configs_are_refused() {
    let bad = |config: PoolConfig| {
        let err = Pool::new(config).expect_err("config should be refused");
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
        assert_eq!(err.errno(), libc::EINVAL);
    };
    // A scatter allocator cannot serve a contiguous kind.
    bad(config_with(vec![spec(
        "s",
        Strategy::Scatter,
        kinds::CONTIG,
        false,
    )]));
    // A DMA32 kind needs a below-4G placement.
    bad(config_with(vec![spec(
        "s",
        Strategy::Scatter,
        kinds::DMA32,
        false,
    )]));
    // Undefined kind bits.
    bad(config_with(vec![spec(
        "s",
        Strategy::Scatter,
        1 << 9,
        false,
    )]));
    bad(config_with(vec![spec("s", Strategy::Scatter, 0, false)]));
    // Placement disagrees with the strategy.
    let mut s = spec("s", Strategy::Scatter, kinds::SYSTEM, false);
    s.placement.contiguous = true;
    bad(config_with(vec![s]));
    // Region alignment not a power of two.
    let mut s = spec("s", Strategy::Scatter, kinds::SYSTEM, false);
    s.placement.align = 3 * PAGE_SIZE;
    bad(config_with(vec![s]));
    // A share allocator that is not contiguous.
    let mut s = spec("s", Strategy::Scatter, kinds::SYSTEM, false);
    s.share = true;
    bad(config_with(vec![s]));
    // Names.
    bad(config_with(vec![spec(
        "",
        Strategy::Scatter,
        kinds::SYSTEM,
        false,
    )]));
    bad(config_with(vec![
        spec("a", Strategy::Scatter, kinds::SYSTEM, false),
        spec("a", Strategy::Scatter, kinds::SYSTEM, false),
    ]));
    bad(config_with(vec![]));
    // Exporter types.
    let mut c = PoolConfig::default_layout();
    c.exporter_types.clear();
    bad(c);
    let mut c = PoolConfig::default_layout();
    c.exporter_types = vec![SG, SG];
    bad(c);
    let mut c = PoolConfig::default_layout();
    c.exporter_types = vec![MappingType::Private(7)];
    bad(c);
    // Custom kinds.
    let kind = |bit, contiguous, align| KindSpec {
        bit,
        name: "k".into(),
        contiguous,
        max_address: u64::MAX,
        align,
    };
    for k in [
        kind(4, true, PAGE_SIZE),     // reserved well-known bit
        kind(32, true, PAGE_SIZE),    // out of range
        kind(8, true, 4 * MIB),       // alignment above 2 MiB
        kind(8, false, 2 * MIB),      // non-contiguous with big alignment
        kind(8, true, 3 * PAGE_SIZE), // not a power of two
    ] {
        let mut c = PoolConfig::default_layout();
        c.custom_kinds = vec![k];
        bad(c);
    }
    let mut c = PoolConfig::default_layout();
    c.custom_kinds = vec![kind(8, true, PAGE_SIZE), kind(8, true, PAGE_SIZE)];
    bad(c);
    // Limits.
    let mut c = PoolConfig::default_layout();
    c.limits.max_buffers = 0;
    bad(c);
    let mut c = PoolConfig::default_layout();
    c.limits.max_buffer_size = 1000;
    bad(c);
    let mut c = PoolConfig::default_layout();
    c.limits.max_total_bytes = PAGE_SIZE;
    bad(c);
}

#[test]
fn a_contiguous_allocator_may_be_a_share_allocator() {
    let mut s = spec("share", Strategy::Contiguous, kinds::CONTIG, false);
    s.share = true;
    s.placement.align = 2 * MIB;
    let pool = Pool::new(config_with(vec![s])).unwrap();
    assert!(pool.config().allocators[0].share);
    // Written before the field existed: not a share allocator.
    let old = r#"{"name":"contig","strategy":"Contiguous","kinds":2,
        "placement":{"contiguous":true,"below_4g":false,"align":4096}}"#;
    let spec: AllocatorSpec = serde_json::from_str(old).unwrap();
    assert!(!spec.share);
}

#[test]
fn custom_kind_sets_limit_and_alignment() {
    // A carve-out kind: contiguous, 2 MiB aligned, below 1 GiB.
    let mut config = config_with(vec![
        spec("system", Strategy::Scatter, kinds::SYSTEM, false),
        spec(
            "carveout",
            Strategy::Contiguous,
            1 << 8 | kinds::CONTIG,
            true,
        ),
    ]);
    config.custom_kinds = vec![KindSpec {
        bit: 8,
        name: "carveout".into(),
        contiguous: true,
        max_address: GIB,
        align: 2 * MIB,
    }];
    let mut pool = Pool::new(config).unwrap();
    assert_eq!(pool.defined_kinds(), 0x10f);
    let err = fails_unchanged(&mut pool, libc::ERANGE, |p| {
        p.add_region(1, GIB - 4 * MIB, 8 * MIB)
    });
    assert_eq!(
        err,
        Error::RegionOutOfPlacement {
            addr: GIB - 4 * MIB,
            len: 8 * MIB,
            limit: GIB
        }
    );
    pool.add_region(1, 256 * MIB + PAGE_SIZE, 16 * MIB).unwrap();
    let buffer = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    let a = pool.attach(buffer, 1 << 8, BOTH).unwrap();
    assert_eq!(a.map_type, CONTIGUOUS);
    let m = pool.map(a.id, DIR).unwrap();
    assert_eq!(m.allocator, 1);
    assert_eq!(m.segments.len(), 1);
    assert_eq!(m.segments[0].addr % (2 * MIB), 0);
    assert!(m.segments[0].end() <= GIB);
}

// ---------------------------------------------------------------- regions

#[test]
fn region_validation() {
    let mut pool = default_pool();
    // Misaligned start or length.
    fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.add_region(SYSTEM_ALLOC, 32 * GIB + 1, PAGE_SIZE)
    });
    fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.add_region(SYSTEM_ALLOC, 32 * GIB, PAGE_SIZE + 1)
    });
    // Empty.
    let err = fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.add_region(SYSTEM_ALLOC, 32 * GIB, 0)
    });
    assert_eq!(err, Error::EmptyRegion { addr: 32 * GIB });
    // Wraps.
    fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.add_region(SYSTEM_ALLOC, u64::MAX - PAGE_SIZE + 1, 2 * PAGE_SIZE)
    });
    // Overlap with a region of another allocator (contig's 16 GiB region).
    let err = fails_unchanged(&mut pool, libc::EEXIST, |p| {
        p.add_region(SYSTEM_ALLOC, 16 * GIB + 63 * MIB, 2 * MIB)
    });
    assert_eq!(
        err,
        Error::RegionOverlap {
            addr: 16 * GIB + 63 * MIB,
            len: 2 * MIB,
            allocator: CONTIG_ALLOC
        }
    );
    // Overlap at the start, and a region containing another.
    fails_unchanged(&mut pool, libc::EEXIST, |p| {
        p.add_region(CONTIG_ALLOC, 8 * GIB - MIB, 2 * MIB)
    });
    fails_unchanged(&mut pool, libc::EEXIST, |p| {
        p.add_region(CONTIG_ALLOC, 7 * GIB, 2 * GIB)
    });
    // Above 4 GiB for a DMA32 allocator.
    fails_unchanged(&mut pool, libc::ERANGE, |p| {
        p.add_region(DMA32_ALLOC, FOUR_GIB - MIB, 2 * MIB)
    });
    // Unknown allocator.
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.add_region(9, 32 * GIB, MIB));
    // Adjacent regions are fine; the last byte below 4 GiB too.
    pool.add_region(SYSTEM_ALLOC, 8 * GIB + 64 * MIB, MIB)
        .unwrap();
    pool.add_region(DMA32_ALLOC, FOUR_GIB - MIB, MIB).unwrap();
    assert_eq!(stats(&pool, SYSTEM_ALLOC).capacity, 65 * MIB);
    assert_eq!(
        stats(&pool, SYSTEM_ALLOC).free_extents,
        1,
        "adjacent regions coalesce"
    );
    assert_eq!(pool.snapshot().regions.len(), 6);
}

#[test]
fn add_regions_is_all_or_nothing() {
    let mut pool = default_pool();
    let seg = |addr, len| Segment { addr, len };
    // The third overlaps the contig region: none is added.
    let err = fails_unchanged(&mut pool, libc::EEXIST, |p| {
        p.add_regions(
            SYSTEM_ALLOC,
            &[seg(32 * GIB, MIB), seg(33 * GIB, MIB), seg(16 * GIB, MIB)],
        )
    });
    assert_eq!(err.errno(), libc::EEXIST);
    // Two that overlap each other.
    let err = fails_unchanged(&mut pool, libc::EEXIST, |p| {
        p.add_regions(SYSTEM_ALLOC, &[seg(33 * GIB, MIB), seg(32 * GIB, 2 * GIB)])
    });
    assert_eq!(
        err,
        Error::RegionOverlap {
            addr: 33 * GIB,
            len: MIB,
            allocator: SYSTEM_ALLOC
        }
    );
    // One misaligned.
    fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.add_regions(SYSTEM_ALLOC, &[seg(32 * GIB, MIB), seg(33 * GIB + 1, MIB)])
    });
    assert_eq!(pool.check_region(SYSTEM_ALLOC, 32 * GIB, MIB), Ok(()));
    pool.add_regions(SYSTEM_ALLOC, &[seg(32 * GIB, MIB), seg(33 * GIB, MIB)])
        .unwrap();
    assert_eq!(stats(&pool, SYSTEM_ALLOC).capacity, 66 * MIB);
    assert_eq!(pool.counters().regions_added, 6);
}

#[test]
fn region_alignment_of_the_placement() {
    let mut s = spec("big", Strategy::Contiguous, kinds::CONTIG, false);
    s.placement.align = 2 * MIB;
    let mut pool = Pool::new(config_with(vec![s])).unwrap();
    fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.add_region(0, GIB + PAGE_SIZE, MIB)
    });
    pool.add_region(0, GIB, MIB + PAGE_SIZE).unwrap();
}

// ---------------------------------------------------------------- create / free

#[test]
fn create_rounds_and_allocates_nothing() {
    let mut pool = default_pool();
    let before = pool.allocator_stats();
    let c = pool.create(1, 0, 0).unwrap();
    assert_eq!(c.size, PAGE_SIZE);
    assert_ne!(c.id, 0);
    assert_eq!(c.id & ID_BATCH_REF_BIT, 0);
    assert_eq!(pool.create(PAGE_SIZE, 0, 0).unwrap().size, PAGE_SIZE);
    assert_eq!(
        pool.create(PAGE_SIZE + 1, 0, 0).unwrap().size,
        2 * PAGE_SIZE
    );
    assert_eq!(pool.allocator_stats(), before);
    assert_eq!(pool.backing(c.id), Err(Error::NoBacking(c.id)));
    assert_eq!(pool.phys(c.id).unwrap_err().errno(), libc::ENODATA);
    assert_eq!(pool.num_buffers(), 3);
    assert_eq!(pool.buffer_size(c.id), Ok(PAGE_SIZE));
}

#[test]
fn create_errors() {
    let mut pool = default_pool();
    assert_eq!(
        fails_unchanged(&mut pool, libc::EINVAL, |p| p.create(0, 0, 0)),
        Error::ZeroSize
    );
    assert_eq!(
        fails_unchanged(&mut pool, libc::E2BIG, |p| p.create(GIB + 1, 0, 0)),
        Error::BufferTooLarge {
            size: GIB + 1,
            max: GIB
        }
    );
    fails_unchanged(&mut pool, libc::E2BIG, |p| p.create(u64::MAX, 0, 0));
    assert_eq!(
        fails_unchanged(&mut pool, libc::EINVAL, |p| p.create(PAGE_SIZE, 1, 0)),
        Error::InvalidFlags(1)
    );
    assert_eq!(pool.create(GIB, 0, 0).unwrap().size, GIB);
}

#[test]
fn limits_on_buffers_and_total_bytes() {
    let mut config = PoolConfig::default_layout();
    config.limits = Limits {
        max_buffers: 3,
        max_attachments_per_buffer: 2,
        max_buffer_size: 4 * PAGE_SIZE,
        max_total_bytes: 6 * PAGE_SIZE,
        ..Limits::default()
    };
    let mut pool = Pool::new(config).unwrap();
    let a = pool.create(4 * PAGE_SIZE, 0, 0).unwrap().id;
    pool.create(PAGE_SIZE, 0, 0).unwrap();
    // Total: 5 pages used, 2 more would exceed 6.
    let err = fails_unchanged(&mut pool, libc::ENOSPC, |p| p.create(2 * PAGE_SIZE, 0, 0));
    assert_eq!(
        err,
        Error::TotalBytesExceeded {
            in_use: 5 * PAGE_SIZE,
            size: 2 * PAGE_SIZE,
            max: 6 * PAGE_SIZE
        }
    );
    pool.create(PAGE_SIZE, 0, 0).unwrap();
    // Buffers: 3 live.
    let err = fails_unchanged(&mut pool, libc::ENOSPC, |p| p.create(PAGE_SIZE, 0, 0));
    assert_eq!(err, Error::TooManyBuffers { max: 3 });
    fails_unchanged(&mut pool, libc::E2BIG, |p| p.create(5 * PAGE_SIZE, 0, 0));
    // Attachments per buffer.
    pool.attach(a, kinds::ANY, &[SG]).unwrap();
    pool.attach(a, kinds::ANY, &[SG]).unwrap();
    let err = fails_unchanged(&mut pool, libc::ENOSPC, |p| p.attach(a, kinds::ANY, &[SG]));
    assert_eq!(err, Error::TooManyAttachments { buffer: a, max: 2 });
    // Freeing gives the room back once the attachments are gone.
    pool.free(a).unwrap();
    assert_eq!(pool.num_buffers(), 3, "attachments keep the freed buffer");
    fails_unchanged(&mut pool, libc::ENOSPC, |p| p.create(PAGE_SIZE, 0, 0));
    for att in pool.snapshot().buffers[0].attachments.clone() {
        pool.detach(att).unwrap();
    }
    assert_eq!(pool.num_buffers(), 2);
    pool.create(4 * PAGE_SIZE, 0, 0).unwrap();
}

#[test]
fn free_drops_the_creator_reference() {
    let mut pool = default_pool();
    let free_before = stats(&pool, SYSTEM_ALLOC).free;
    // Free without attachment: gone at once.
    let a = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    pool.free(a).unwrap();
    assert_eq!(pool.num_buffers(), 0);
    assert_eq!(
        fails_unchanged(&mut pool, libc::ENOENT, |p| p.free(a)),
        Error::UnknownBuffer(a)
    );

    // Free with an attachment: the id stays valid for it until the detach.
    let b = pool.create(3 * PAGE_SIZE, 0, 0).unwrap().id;
    let att = pool.attach(b, kinds::SYSTEM, &[SG]).unwrap().id;
    let mapped = pool.map(att, DIR).unwrap();
    assert!(mapped.newly_allocated);
    assert_eq!(stats(&pool, SYSTEM_ALLOC).free, free_before - 3 * PAGE_SIZE);
    pool.free(b).unwrap();
    assert_eq!(
        fails_unchanged(&mut pool, libc::EINVAL, |p| p.free(b)),
        Error::BufferReleased(b)
    );
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.attach(b, kinds::ANY, &[SG]));
    assert_eq!(pool.backing(b).unwrap(), mapped.segments.as_slice());
    // Still mappable through its attachment.
    assert_eq!(
        pool.map(att, Direction::ToDevice).unwrap().segments,
        mapped.segments
    );
    pool.unmap(att, Direction::ToDevice).unwrap();
    pool.unmap(att, DIR).unwrap();
    assert_eq!(stats(&pool, SYSTEM_ALLOC).free, free_before - 3 * PAGE_SIZE);
    pool.detach(att).unwrap();
    // Last reference gone: backing back in its allocator.
    assert_eq!(pool.num_buffers(), 0);
    assert_eq!(stats(&pool, SYSTEM_ALLOC).free, free_before);
    assert_eq!(stats(&pool, SYSTEM_ALLOC).num_buffers, 0);
    assert_eq!(pool.backing(b), Err(Error::UnknownBuffer(b)));
    let c = pool.counters();
    assert_eq!(
        (
            c.creates,
            c.frees,
            c.destroyed,
            c.total_bytes,
            c.backing_bytes
        ),
        (2, 2, 2, 0, 0)
    );
}

#[test]
fn detach_without_free_keeps_the_backing() {
    let mut pool = default_pool();
    let b = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    let att = pool.attach(b, kinds::SYSTEM, &[SG]).unwrap().id;
    let seg = pool.map(att, DIR).unwrap().segments;
    pool.unmap(att, DIR).unwrap();
    pool.detach(att).unwrap();
    assert_eq!(pool.backing(b).unwrap(), seg.as_slice());
    let att2 = pool.attach(b, kinds::SYSTEM, &[SG]).unwrap().id;
    let again = pool.map(att2, DIR).unwrap();
    assert!(!again.newly_allocated);
    assert_eq!(again.segments, seg);
}

// ---------------------------------------------------------------- attach / masks

#[test]
fn access_mask_is_the_intersection() {
    let mut pool = default_pool();
    let b = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    let a1 = pool
        .attach(b, kinds::SYSTEM | kinds::DMA32 | kinds::CONTIG_DMA32, &[SG])
        .unwrap();
    assert_eq!(
        a1.access_mask,
        kinds::SYSTEM | kinds::DMA32 | kinds::CONTIG_DMA32
    );
    let a2 = pool
        .attach(b, kinds::DMA32 | kinds::CONTIG_DMA32, &[SG])
        .unwrap();
    assert_eq!(a2.access_mask, kinds::DMA32 | kinds::CONTIG_DMA32);
    assert_ne!(a1.id, a2.id);
    assert_eq!(a2.id & ID_BATCH_REF_BIT, 0);
    // Would empty the intersection: EINVAL, nothing changes.
    let err = fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.attach(b, kinds::SYSTEM, &[SG])
    });
    assert_eq!(
        err,
        Error::EmptyAccessMask {
            access_mask: kinds::DMA32 | kinds::CONTIG_DMA32,
            mask: kinds::SYSTEM
        }
    );
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.attach(b, 0, &[SG]));
    // Detach recomputes and may widen.
    pool.detach(a2.id).unwrap();
    assert_eq!(
        pool.snapshot().buffers[0].access_mask,
        kinds::SYSTEM | kinds::DMA32 | kinds::CONTIG_DMA32
    );
    pool.detach(a1.id).unwrap();
    assert_eq!(pool.snapshot().buffers[0].access_mask, kinds::ANY);
    // Map picks the first allocator for the mask: DMA32 → dma32.
    let a3 = pool.attach(b, kinds::DMA32, &[SG]).unwrap().id;
    assert_eq!(pool.map(a3, DIR).unwrap().allocator, DMA32_ALLOC);
}

#[test]
fn initial_mask_counts_like_an_attachment() {
    let mut pool = default_pool();
    let b = pool
        .create(PAGE_SIZE, 0, kinds::CONTIG | kinds::CONTIG_DMA32)
        .unwrap()
        .id;
    assert_eq!(
        pool.snapshot().buffers[0].access_mask,
        kinds::CONTIG | kinds::CONTIG_DMA32
    );
    fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.attach(b, kinds::SYSTEM, &[SG])
    });
    let a = pool
        .attach(b, kinds::CONTIG_DMA32 | kinds::DMA32, &[SG])
        .unwrap();
    assert_eq!(a.access_mask, kinds::CONTIG_DMA32);
    pool.detach(a.id).unwrap();
    // Detach never widens past the initial mask.
    assert_eq!(
        pool.snapshot().buffers[0].access_mask,
        kinds::CONTIG | kinds::CONTIG_DMA32
    );
    let a = pool.attach(b, kinds::ANY, &[SG]).unwrap();
    assert_eq!(pool.map(a.id, DIR).unwrap().allocator, CONTIG_ALLOC);
}

#[test]
fn attach_argument_errors() {
    let mut pool = default_pool();
    let b = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    assert_eq!(
        fails_unchanged(&mut pool, libc::ENOENT, |p| p.attach(
            b + 1,
            kinds::ANY,
            &[SG]
        )),
        Error::UnknownBuffer(b + 1)
    );
    assert_eq!(
        fails_unchanged(&mut pool, libc::EINVAL, |p| p.attach(b, kinds::ANY, &[])),
        Error::NoImporterTypes
    );
    assert_eq!(
        fails_unchanged(&mut pool, libc::EINVAL, |p| {
            p.attach(b, kinds::ANY, &[SG, MappingType::Private(0x10)])
        }),
        Error::InvalidMappingType(0x10)
    );
    assert_eq!(
        fails_unchanged(&mut pool, libc::ENOENT, |p| p.detach(77)),
        Error::UnknownAttachment(77)
    );
    fails_unchanged(&mut pool, libc::ENOENT, |p| p.map(77, DIR));
    fails_unchanged(&mut pool, libc::ENOENT, |p| p.unmap(77, DIR));
    assert_eq!(pool.phys(999).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(pool.backing(999).unwrap_err().errno(), libc::ENOENT);
}

// ---------------------------------------------------------------- late attach / migration

#[test]
fn late_attach_satisfied_by_the_backing() {
    let mut pool = default_pool();
    let b = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    // Backed by contig32, which serves all four kinds.
    let a = pool.attach(b, kinds::CONTIG_DMA32, &[SG]).unwrap().id;
    let m = pool.map(a, DIR).unwrap();
    assert_eq!(m.allocator, CONTIG32_ALLOC);
    // Mapped, but the backing satisfies: accepted, no migration.
    let late = pool
        .attach(b, kinds::CONTIG_DMA32 | kinds::SYSTEM, &[SG])
        .unwrap();
    assert!(!late.migrate_pending);
    assert_eq!(late.access_mask, kinds::CONTIG_DMA32);
    let m2 = pool.map(late.id, DIR).unwrap();
    assert_eq!(m2.segments, m.segments);
    assert!(!m2.newly_allocated && m2.migrated_from.is_none());
}

#[test]
fn late_attach_while_mapped_is_busy() {
    let mut pool = default_pool();
    let b = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    let a = pool
        .attach(b, kinds::SYSTEM | kinds::DMA32, &[SG])
        .unwrap()
        .id;
    assert_eq!(pool.map(a, DIR).unwrap().allocator, SYSTEM_ALLOC);
    let err = fails_unchanged(&mut pool, libc::EBUSY, |p| p.attach(b, kinds::DMA32, &[SG]));
    assert_eq!(
        err,
        Error::MigrationWhileMapped {
            buffer: b,
            mask: kinds::DMA32
        }
    );
}

#[test]
fn late_attach_without_any_allocator_is_busy() {
    let mut pool = Pool::new(config_with(vec![
        spec("system", Strategy::Scatter, kinds::SYSTEM, false),
        spec("dma32", Strategy::Scatter, kinds::DMA32, true),
    ]))
    .unwrap();
    pool.add_region(0, 8 * GIB, MIB).unwrap();
    pool.add_region(1, GIB, MIB).unwrap();
    let b = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    let a = pool.attach(b, kinds::ANY, &[SG]).unwrap().id;
    pool.map(a, DIR).unwrap();
    pool.unmap(a, DIR).unwrap();
    // CONTIG is served by nobody.
    let err = fails_unchanged(&mut pool, libc::EBUSY, |p| {
        p.attach(b, kinds::CONTIG, &[SG])
    });
    assert_eq!(
        err,
        Error::NoAllocatorForMask {
            buffer: b,
            mask: kinds::CONTIG
        }
    );
    // DMA32 is: migration.
    assert!(pool.attach(b, kinds::DMA32, &[SG]).unwrap().migrate_pending);
}

#[test]
fn late_attach_migrates_at_the_next_map() {
    let mut pool = default_pool();
    let b = pool.create(2 * PAGE_SIZE, 0, 0).unwrap().id;
    let a = pool.attach(b, kinds::ANY, &[SG]).unwrap().id;
    let first = pool.map(a, DIR).unwrap();
    assert_eq!(first.allocator, SYSTEM_ALLOC);
    pool.unmap(a, DIR).unwrap();
    let system_free = stats(&pool, SYSTEM_ALLOC).free;

    let late = pool.attach(b, kinds::CONTIG, BOTH).unwrap();
    assert!(late.migrate_pending);
    assert_eq!(late.access_mask, kinds::CONTIG);
    // Contiguous: the backing will move to a contiguous-only set.
    assert_eq!(late.map_type, CONTIGUOUS);
    // Nothing moves before the map.
    assert_eq!(pool.backing(b).unwrap(), first.segments.as_slice());
    assert_eq!(stats(&pool, SYSTEM_ALLOC).free, system_free);

    let moved = pool.map(late.id, Direction::FromDevice).unwrap();
    assert_eq!(moved.allocator, CONTIG_ALLOC);
    assert_eq!(
        moved.migrated_from.as_deref(),
        Some(first.segments.as_slice())
    );
    assert!(!moved.newly_allocated);
    assert_eq!(moved.segments.len(), 1);
    assert_eq!(moved.segments[0].len, 2 * PAGE_SIZE);
    assert_eq!(pool.backing(b).unwrap(), moved.segments.as_slice());
    assert_eq!(pool.phys(b).unwrap(), moved.segments[0]);
    // Old backing back in the system allocator.
    assert_eq!(stats(&pool, SYSTEM_ALLOC).free, system_free + 2 * PAGE_SIZE);
    assert_eq!(stats(&pool, SYSTEM_ALLOC).num_buffers, 0);
    assert_eq!(stats(&pool, CONTIG_ALLOC).num_buffers, 1);
    assert_eq!(pool.counters().migrations, 1);
    assert_eq!(pool.counters().backing_bytes, 2 * PAGE_SIZE);
    // Later maps see the new backing, no second migration.
    let again = pool.map(a, DIR).unwrap();
    assert_eq!(again.segments, moved.segments);
    assert!(again.migrated_from.is_none());
}

#[test]
fn migration_out_of_memory_keeps_it_pending() {
    let mut pool = Pool::new(config_with(vec![
        spec("system", Strategy::Scatter, kinds::SYSTEM, false),
        spec("dma32", Strategy::Scatter, kinds::DMA32, true),
    ]))
    .unwrap();
    pool.add_region(0, 8 * GIB, MIB).unwrap();
    pool.add_region(1, GIB, PAGE_SIZE).unwrap();
    let b = pool.create(2 * PAGE_SIZE, 0, 0).unwrap().id;
    let a = pool.attach(b, kinds::ANY, &[SG]).unwrap().id;
    pool.map(a, DIR).unwrap();
    pool.unmap(a, DIR).unwrap();
    let late = pool.attach(b, kinds::DMA32, &[SG]).unwrap();
    assert!(late.migrate_pending);
    let err = fails_unchanged(&mut pool, libc::ENOMEM, |p| p.map(late.id, DIR));
    assert_eq!(
        err,
        Error::OutOfMemory {
            size: 2 * PAGE_SIZE,
            mask: kinds::DMA32
        }
    );
    pool.add_region(1, GIB + PAGE_SIZE, PAGE_SIZE).unwrap();
    let moved = pool.map(a, DIR).unwrap();
    assert_eq!(moved.allocator, 1);
    assert!(moved.migrated_from.is_some());
}

#[test]
fn detach_cancels_a_pending_migration() {
    let mut pool = default_pool();
    let b = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    let a = pool.attach(b, kinds::ANY, &[SG]).unwrap().id;
    let first = pool.map(a, DIR).unwrap();
    pool.unmap(a, DIR).unwrap();
    let late = pool.attach(b, kinds::DMA32, &[SG]).unwrap();
    assert!(late.migrate_pending);
    pool.detach(late.id).unwrap();
    assert!(!pool.snapshot().buffers[0].migrate_pending);
    let m = pool.map(a, DIR).unwrap();
    assert_eq!(m.segments, first.segments);
    assert!(m.migrated_from.is_none());
}

#[test]
fn detach_keeps_a_migration_that_a_contiguous_promise_needs() {
    let mut pool = Pool::new(config_with(vec![
        spec("system", Strategy::Scatter, kinds::SYSTEM, false),
        spec(
            "contig",
            Strategy::Contiguous,
            kinds::CONTIG | kinds::SYSTEM,
            false,
        ),
    ]))
    .unwrap();
    pool.add_region(0, 0x10_0000, PAGE_SIZE).unwrap();
    pool.add_region(0, 0x20_0000, PAGE_SIZE).unwrap();
    pool.add_region(1, 0x40_0000, MIB).unwrap();
    // Two pages from two system regions: two segments.
    let b = pool.create(2 * PAGE_SIZE, 0, 0).unwrap().id;
    let a = pool.attach(b, kinds::ANY, &[SG]).unwrap().id;
    assert_eq!(pool.map(a, DIR).unwrap().segments.len(), 2);
    pool.unmap(a, DIR).unwrap();
    // A CONTIG device: migration pending; then a wide Contiguous importer,
    // promised contiguity because the migration target is contiguous.
    let strict = pool.attach(b, kinds::CONTIG, &[SG]).unwrap();
    assert!(strict.migrate_pending);
    let wide = pool.attach(b, kinds::ANY, &[CONTIGUOUS]).unwrap();
    assert_eq!(wide.map_type, CONTIGUOUS);
    // The strict device leaves: the mask widens back to ANY, which the
    // system backing satisfies, but it is two segments: still migrate.
    pool.detach(strict.id).unwrap();
    assert!(pool.snapshot().buffers[0].migrate_pending);
    let m = pool.map(wide.id, DIR).unwrap();
    assert_eq!(m.segments.len(), 1);
    assert_eq!(m.allocator, 1);
    assert_eq!(m.migrated_from.map(|s| s.len()), Some(2));
}

// ---------------------------------------------------------------- map / unmap

#[test]
fn first_map_allocates_in_priority_order_and_falls_back() {
    let mut pool = default_pool();
    // Fill the contig allocator (64 MiB) with one buffer.
    let big = pool.create(64 * MIB, 0, 0).unwrap().id;
    let a = pool.attach(big, kinds::CONTIG, &[SG]).unwrap().id;
    let m = pool.map(a, DIR).unwrap();
    assert_eq!(m.allocator, CONTIG_ALLOC);
    assert_eq!(
        m.segments,
        vec![Segment {
            addr: 16 * GIB,
            len: 64 * MIB
        }]
    );
    assert_eq!(stats(&pool, CONTIG_ALLOC).free, 0);
    assert_eq!(stats(&pool, CONTIG_ALLOC).fragmentation_permille, 0);
    // contig is full: the next allocator serving CONTIG is contig32.
    let b = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    let a2 = pool.attach(b, kinds::CONTIG, &[SG]).unwrap().id;
    let m2 = pool.map(a2, DIR).unwrap();
    assert_eq!(m2.allocator, CONTIG32_ALLOC);
    assert!(m2.newly_allocated);
    // Nothing serves 17 MiB contiguous any more: ENOMEM, nothing changes.
    let c = pool.create(17 * MIB, 0, 0).unwrap().id;
    let a3 = pool.attach(c, kinds::CONTIG, &[SG]).unwrap().id;
    let err = fails_unchanged(&mut pool, libc::ENOMEM, |p| p.map(a3, DIR));
    assert_eq!(
        err,
        Error::OutOfMemory {
            size: 17 * MIB,
            mask: kinds::CONTIG
        }
    );
    // A mask nobody serves: ENOMEM at map.
    let d = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    let a4 = pool.attach(d, 1 << 20, &[SG]).unwrap().id;
    fails_unchanged(&mut pool, libc::ENOMEM, |p| p.map(a4, DIR));
}

#[test]
fn map_counts_per_attachment_and_direction() {
    let mut pool = default_pool();
    let b = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    let a = pool.attach(b, kinds::ANY, &[SG]).unwrap().id;
    let other = pool.attach(b, kinds::ANY, &[SG]).unwrap().id;
    let err = fails_unchanged(&mut pool, libc::EINVAL, |p| p.unmap(a, DIR));
    assert_eq!(
        err,
        Error::NotMapped {
            attachment: a,
            direction: DIR
        }
    );
    let m1 = pool.map(a, Direction::ToDevice).unwrap();
    assert!(m1.newly_allocated);
    let m2 = pool.map(a, Direction::ToDevice).unwrap();
    assert!(!m2.newly_allocated);
    assert_eq!(m1.segments, m2.segments);
    assert_eq!(pool.counters().allocations, 1);
    // Wrong direction.
    fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.unmap(a, Direction::FromDevice)
    });
    // The other attachment has no map: it detaches, `a` cannot.
    pool.detach(other).unwrap();
    assert_eq!(
        fails_unchanged(&mut pool, libc::EBUSY, |p| p.detach(a)),
        Error::AttachmentMapped(a)
    );
    pool.unmap(a, Direction::ToDevice).unwrap();
    fails_unchanged(&mut pool, libc::EBUSY, |p| p.detach(a));
    pool.unmap(a, Direction::ToDevice).unwrap();
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.unmap(a, Direction::ToDevice));
    pool.detach(a).unwrap();
    assert_eq!(pool.num_attachments(), 0);
    let snap = pool.snapshot();
    assert_eq!((snap.counters.maps, snap.counters.unmaps), (2, 2));
}

#[test]
fn scatter_gather_segments_are_coalesced_in_buffer_order() {
    // One small scatter allocator, fragmented on purpose.
    let mut pool = Pool::new(config_with(vec![spec(
        "system",
        Strategy::Scatter,
        kinds::SYSTEM,
        false,
    )]))
    .unwrap();
    pool.add_region(0, 0x10_0000, 8 * PAGE_SIZE).unwrap();
    let mut ids = Vec::new();
    for _ in 0..8 {
        let b = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
        let a = pool.attach(b, kinds::ANY, &[SG]).unwrap().id;
        pool.map(a, DIR).unwrap();
        pool.unmap(a, DIR).unwrap();
        pool.detach(a).unwrap();
        ids.push(b);
    }
    assert_eq!(stats(&pool, 0).free, 0);
    // Free pages 1, 2 (adjacent, coalesce), 5 and 7.
    for i in [1, 2, 5, 7] {
        pool.free(ids[i]).unwrap();
    }
    let s = stats(&pool, 0);
    assert_eq!(
        (s.free, s.largest_free, s.free_extents),
        (4 * PAGE_SIZE, 2 * PAGE_SIZE, 3)
    );
    assert_eq!(s.fragmentation_permille, 500);
    let b = pool.create(4 * PAGE_SIZE, 0, 0).unwrap().id;
    let a = pool.attach(b, kinds::ANY, BOTH).unwrap();
    assert_eq!(
        a.map_type, SG,
        "unallocated scatter buffer cannot promise contiguity"
    );
    let m = pool.map(a.id, DIR).unwrap();
    // Largest extent first (pages 1-2 as one segment), then best fits.
    let page = |i: u64| 0x10_0000 + i * PAGE_SIZE;
    assert_eq!(
        m.segments,
        vec![
            Segment {
                addr: page(1),
                len: 2 * PAGE_SIZE
            },
            Segment {
                addr: page(5),
                len: PAGE_SIZE
            },
            Segment {
                addr: page(7),
                len: PAGE_SIZE
            },
        ]
    );
    assert_eq!(m.segments.iter().map(|s| s.len).sum::<u64>(), m.size);
    // Not one range: phys says ENODEV.
    assert_eq!(pool.phys(b), Err(Error::NotContiguous(b)));
    assert_eq!(pool.phys(b).unwrap_err().errno(), libc::ENODEV);
    // A late importer that only takes Contiguous: no mutual type.
    let err = fails_unchanged(&mut pool, libc::EOPNOTSUPP, |p| {
        p.attach(b, kinds::ANY, &[CONTIGUOUS])
    });
    assert_eq!(err, Error::NoMutualMappingType);
}

// ---------------------------------------------------------------- phys

#[test]
fn phys_of_a_contiguous_backing() {
    let mut pool = default_pool();
    let b = pool.create(5 * PAGE_SIZE, 0, 0).unwrap().id;
    assert_eq!(pool.phys(b), Err(Error::NoBacking(b)));
    let a = pool.attach(b, kinds::CONTIG_DMA32, &[SG]).unwrap().id;
    let m = pool.map(a, DIR).unwrap();
    let phys = pool.phys(b).unwrap();
    assert_eq!(
        phys,
        Segment {
            addr: 2 * GIB,
            len: 5 * PAGE_SIZE
        }
    );
    assert_eq!(m.segments, vec![phys]);
    assert!(phys.end() <= FOUR_GIB);
}

// ---------------------------------------------------------------- mapping types

#[test]
fn negotiation_walks_the_exporter_list() {
    let private = MappingType::Private(0x8001);
    let accept = |_: MappingType| Ok(());
    // Exporter priority wins over importer order.
    assert_eq!(
        negotiate(&[CONTIGUOUS, SG], &[SG, CONTIGUOUS], accept),
        Ok(CONTIGUOUS)
    );
    assert_eq!(
        negotiate(&[SG, CONTIGUOUS], &[CONTIGUOUS, SG], accept),
        Ok(SG)
    );
    // Skip with MappingTypeUnsupported, abort with anything else.
    let skip_contig = |t: MappingType| {
        if t == CONTIGUOUS {
            Err(Error::MappingTypeUnsupported(t.code()))
        } else {
            Ok(())
        }
    };
    assert_eq!(negotiate(&[CONTIGUOUS, SG], BOTH, skip_contig), Ok(SG));
    let abort = |t: MappingType| {
        if t == CONTIGUOUS {
            Err(Error::NotContiguous(1))
        } else {
            Ok(())
        }
    };
    assert_eq!(
        negotiate(&[CONTIGUOUS, SG], BOTH, abort),
        Err(Error::NotContiguous(1))
    );
    // Private types pass through when both list the same code.
    assert_eq!(negotiate(&[private, SG], &[private], accept), Ok(private));
    assert_eq!(
        negotiate(&[private], &[MappingType::Private(0x8002)], accept),
        Err(Error::NoMutualMappingType)
    );
    assert_eq!(
        negotiate(&[SG], &[CONTIGUOUS], accept).unwrap_err().errno(),
        libc::EOPNOTSUPP
    );
}

#[test]
fn contiguous_matches_only_what_is_or_will_be_one_range() {
    let mut pool = default_pool();
    // Unallocated, mask served by a scatter allocator: SG.
    let b = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    assert_eq!(pool.attach(b, kinds::SYSTEM, BOTH).unwrap().map_type, SG);
    // Unallocated, mask only served by contiguous allocators: Contiguous.
    let c = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    assert_eq!(
        pool.attach(c, kinds::CONTIG | kinds::CONTIG_DMA32, BOTH)
            .unwrap()
            .map_type,
        CONTIGUOUS
    );
    // Allocated as one segment (even by a scatter allocator): Contiguous.
    let a = pool.attach(b, kinds::SYSTEM, &[SG]).unwrap().id;
    let m = pool.map(a, DIR).unwrap();
    assert_eq!((m.allocator, m.segments.len()), (SYSTEM_ALLOC, 1));
    let late = pool.attach(b, kinds::ANY, BOTH).unwrap();
    assert_eq!(late.map_type, CONTIGUOUS);
    let lm = pool.map(late.id, DIR).unwrap();
    assert_eq!(lm.segments, m.segments);
    // Importer without Contiguous: SG; importer only Contiguous on a
    // scatter-bound buffer: EOPNOTSUPP.
    let d = pool.create(PAGE_SIZE, 0, 0).unwrap().id;
    fails_unchanged(&mut pool, libc::EOPNOTSUPP, |p| {
        p.attach(d, kinds::SYSTEM, &[CONTIGUOUS])
    });
}

#[test]
fn exporter_list_is_configurable_and_private_types_pass_through() {
    let private = MappingType::Private(0xbeef);
    let mut config = PoolConfig::default_layout();
    config.exporter_types = vec![private, SG];
    let mut pool = Pool::new(config).unwrap();
    pool.add_region(CONTIG_ALLOC, 16 * GIB, 64 * MIB).unwrap();
    let b = pool.create(3 * PAGE_SIZE, 0, 0).unwrap().id;
    // No Contiguous in the exporter list: even a contiguous buffer gets SG.
    assert_eq!(pool.attach(b, kinds::CONTIG, BOTH).unwrap().map_type, SG);
    let a = pool.attach(b, kinds::CONTIG, &[SG, private]).unwrap();
    assert_eq!(a.map_type, private);
    let m = pool.map(a.id, DIR).unwrap();
    assert_eq!(m.map_type, private);
    assert_eq!(m.segments, pool.backing(b).unwrap());
    fails_unchanged(&mut pool, libc::EOPNOTSUPP, |p| {
        p.attach(b, kinds::ANY, &[CONTIGUOUS])
    });
}

#[test]
fn contiguous_attachment_keeps_later_allocations_single() {
    let mut pool = default_pool();
    let b = pool.create(2 * PAGE_SIZE, 0, 0).unwrap().id;
    // First CONTIG narrows the mask, then a wide importer that takes
    // Contiguous; then the narrow one leaves and the mask widens to SYSTEM.
    let narrow = pool.attach(b, kinds::CONTIG, &[SG]).unwrap().id;
    let wide = pool
        .attach(b, kinds::SYSTEM | kinds::CONTIG, &[CONTIGUOUS])
        .unwrap();
    assert_eq!(wide.map_type, CONTIGUOUS);
    pool.detach(narrow).unwrap();
    // Fragment the system allocator so that a scatter allocation would need
    // two segments: it keeps only two single, non-adjacent free pages.
    let free = stats(&pool, SYSTEM_ALLOC).free;
    let backed = |pool: &mut Pool, size: u64| {
        let id = pool.create(size, 0, 0).unwrap().id;
        let att = pool.attach(id, kinds::SYSTEM, &[SG]).unwrap().id;
        pool.map(att, DIR).unwrap();
        pool.unmap(att, DIR).unwrap();
        pool.detach(att).unwrap();
        id
    };
    backed(&mut pool, free - 3 * PAGE_SIZE);
    let holes = [0, 1, 2].map(|_| backed(&mut pool, PAGE_SIZE));
    pool.free(holes[0]).unwrap();
    pool.free(holes[2]).unwrap();
    let s = stats(&pool, SYSTEM_ALLOC);
    assert_eq!((s.free, s.free_extents), (2 * PAGE_SIZE, 2));
    // The system allocator has 2 pages free but not in one extent.
    let m = pool.map(wide.id, DIR).unwrap();
    assert_eq!(m.segments.len(), 1);
    assert_eq!(m.map_type, CONTIGUOUS);
    assert_ne!(m.allocator, SYSTEM_ALLOC);
}

// ---------------------------------------------------------------- allocators

#[test]
fn contiguous_allocator_best_fit_and_coalescing() {
    let mut alloc = ContiguousAllocator::new(u64::MAX, PAGE_SIZE, PAGE_SIZE);
    let base = 0x100_0000;
    alloc.add_region(base, 16 * PAGE_SIZE).unwrap();
    let take =
        |a: &mut ContiguousAllocator, pages: u64| a.alloc(pages * PAGE_SIZE, false).unwrap()[0];
    let s: Vec<Segment> = (0..6).map(|_| take(&mut alloc, 2)).collect();
    assert_eq!(s[0].addr, base);
    assert_eq!(s[5].addr, base + 10 * PAGE_SIZE);
    // Holes: 2 pages at s[1], 4 pages at s[3]+s[4] and 4 at the end.
    alloc.free(&[s[1]]);
    alloc.free(&[s[3]]);
    alloc.free(&[s[4]]);
    assert_eq!(alloc.free_extents(), 3);
    assert_eq!(alloc.free_bytes(), 10 * PAGE_SIZE);
    // Best fit: a 2-page request goes to the 2-page hole, not a 4-page one.
    assert_eq!(take(&mut alloc, 2), s[1]);
    // Equal fits: the lowest address.
    assert_eq!(take(&mut alloc, 3).addr, s[3].addr);
    assert_eq!(alloc.largest_free(), 4 * PAGE_SIZE);
    assert!(alloc.alloc(5 * PAGE_SIZE, false).is_none());
    // Free everything: one extent again.
    alloc.free(&[s[0], s[2], s[5], s[1]]);
    alloc.free(&[Segment {
        addr: s[3].addr,
        len: 3 * PAGE_SIZE,
    }]);
    assert_eq!(
        alloc.free_list(),
        vec![Segment {
            addr: base,
            len: 16 * PAGE_SIZE
        }]
    );
    assert_eq!(alloc.fragmentation_permille(), 0);
}

#[test]
fn contiguous_allocator_alignment() {
    let align = 2 * MIB;
    let mut alloc = ContiguousAllocator::new(u64::MAX, PAGE_SIZE, align);
    // A region that starts 1 page past a 2 MiB boundary.
    alloc.add_region(2 * MIB + PAGE_SIZE, 6 * MIB).unwrap();
    let a = alloc.alloc(PAGE_SIZE, false).unwrap()[0];
    assert_eq!(a.addr, 4 * MIB);
    let b = alloc.alloc(MIB, false).unwrap()[0];
    assert_eq!(b.addr % align, 0);
    assert_ne!(a.addr, b.addr);
    // Left: [2M+4K, 4M), [4M+4K, 6M), [7M, 8M+4K): no aligned 2 MiB.
    assert!(
        alloc.alloc(2 * MIB, false).is_none(),
        "no aligned 2 MiB left"
    );
    alloc.free(&[a]);
    alloc.free(&[b]);
    assert_eq!(alloc.free_bytes(), 6 * MIB);
    assert_eq!(alloc.free_extents(), 1);
}

#[test]
fn scatter_allocator_fewest_segments() {
    let mut alloc = ScatterAllocator::new(u64::MAX, PAGE_SIZE);
    alloc.add_region(0, 4 * PAGE_SIZE).unwrap();
    alloc.add_region(0x10_0000, 8 * PAGE_SIZE).unwrap();
    alloc.add_region(0x20_0000, 2 * PAGE_SIZE).unwrap();
    // Fits in one extent: best fit (the 2-page region).
    assert_eq!(
        alloc.alloc(2 * PAGE_SIZE, false).unwrap(),
        vec![Segment {
            addr: 0x20_0000,
            len: 2 * PAGE_SIZE
        }]
    );
    // 10 pages: the largest (8) whole, then the best fit for 2.
    let segs = alloc.alloc(10 * PAGE_SIZE, false).unwrap();
    assert_eq!(
        segs,
        vec![
            Segment {
                addr: 0x10_0000,
                len: 8 * PAGE_SIZE
            },
            Segment {
                addr: 0,
                len: 2 * PAGE_SIZE
            },
        ]
    );
    assert_eq!(alloc.free_bytes(), 2 * PAGE_SIZE);
    // More than free: None, unchanged.
    assert!(alloc.alloc(3 * PAGE_SIZE, false).is_none());
    assert_eq!(alloc.free_bytes(), 2 * PAGE_SIZE);
    alloc.free(&segs);
    // Single segment request: only an extent that holds it all.
    assert!(alloc.alloc(9 * PAGE_SIZE, true).is_none());
    assert_eq!(alloc.alloc(8 * PAGE_SIZE, true).unwrap().len(), 1);
    assert_eq!(alloc.capacity(), 14 * PAGE_SIZE);
}

#[test]
fn adjacent_segments_coalesce() {
    let mut segs = vec![
        Segment { addr: 0, len: 4096 },
        Segment {
            addr: 4096,
            len: 4096,
        },
        Segment {
            addr: 16384,
            len: 4096,
        },
        Segment {
            addr: 20480,
            len: 8192,
        },
        Segment {
            addr: 8192,
            len: 4096,
        },
    ];
    coalesce(&mut segs);
    assert_eq!(
        segs,
        vec![
            Segment { addr: 0, len: 8192 },
            Segment {
                addr: 16384,
                len: 12288
            },
            Segment {
                addr: 8192,
                len: 4096
            },
        ]
    );
}

#[test]
fn fragmentation_formula() {
    assert_eq!(fragmentation_permille(0, 0), 0);
    assert_eq!(fragmentation_permille(100, 100), 0);
    assert_eq!(fragmentation_permille(100, 25), 750);
    assert_eq!(fragmentation_permille(3, 1), 666);
    assert_eq!(fragmentation_permille(u64::MAX, 1), 999);
}

// ---------------------------------------------------------------- ids, snapshot

#[test]
fn ids_are_never_reused_while_live_and_wrap_skipping_live_ones() {
    use super::ids::{IdAllocator, IdMap};
    let mut ids = IdAllocator::new();
    let mut live: IdMap<()> = IdMap::default();
    for _ in 0..3 {
        let id = ids.peek(&live).unwrap();
        ids.commit(id);
        live.insert(id, ());
    }
    assert_eq!(live.len(), 3);
    assert!(live.contains_key(&1) && live.contains_key(&3));
    // Wrap: the id after MAX_ID is 1, which is live, so 4 comes next.
    ids.commit(MAX_ID);
    assert_eq!(ids.peek(&live), Some(4));
    ids.commit(MAX_ID - 1);
    assert_eq!(ids.peek(&live), Some(MAX_ID));
}

#[test]
fn snapshot_serializes_everything() {
    let mut pool = default_pool();
    let b = pool.create(PAGE_SIZE, 0, kinds::ANY).unwrap().id;
    let a = pool.attach(b, kinds::SYSTEM, BOTH).unwrap().id;
    pool.map(a, Direction::ToDevice).unwrap();
    let snap = pool.snapshot();
    assert_eq!(snap.buffers.len(), 1);
    assert_eq!(snap.attachments[0].maps, [0, 1, 0]);
    assert_eq!(snap.allocators.len(), 4);
    assert_eq!(snap.regions.len(), 4);
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["buffers"][0]["id"], b);
    assert_eq!(json["attachments"][0]["map_type"], "ScatterGather");
    assert_eq!(json["allocators"][0]["name"], "system");
    assert_eq!(json["counters"]["maps"], 1);
    assert_eq!(json["counters"]["backing_bytes"], PAGE_SIZE);
}
