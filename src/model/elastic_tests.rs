//! Unit and property tests of elastic pools (memory given back) and leases
//! (stock, leased maps, the allocator rule with leased room).

use proptest::prelude::*;

use super::config::Strategy as Carving;
use super::{
    coalesce, kinds, AllocatorStats, AttachmentId, BufferId, Direction, Error, LeasedAttach,
    LeasedMap, Mapped, MappingType, Pool, PoolConfig, Segment, DRIVER_ID_FIRST, LEASE_MAX_COUNT,
    LEASE_MAX_EXTENT, PAGE_SIZE,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = PAGE_SIZE;
const DIR: Direction = Direction::Bidirectional;
const SG: MappingType = MappingType::ScatterGather;

const SYSTEM_ALLOC: usize = 0;
const DMA32_ALLOC: usize = 1;
const CONTIG_ALLOC: usize = 2;
const CONTIG32_ALLOC: usize = 3;

/// Default layout, small regions: system 4 MiB at 8 GiB, dma32 2 MiB at
/// 1 GiB, contig 4 MiB at 16 GiB, contig32 2 MiB at 2 GiB.
fn pool() -> Pool {
    let mut pool = Pool::new(PoolConfig::default_layout()).unwrap();
    pool.add_region(SYSTEM_ALLOC, 8 * GIB, 4 * MIB).unwrap();
    pool.add_region(DMA32_ALLOC, GIB, 2 * MIB).unwrap();
    pool.add_region(CONTIG_ALLOC, 16 * GIB, 4 * MIB).unwrap();
    pool.add_region(CONTIG32_ALLOC, 2 * GIB, 2 * MIB).unwrap();
    pool
}

fn seg(addr: u64, len: u64) -> Segment {
    Segment { addr, len }
}

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

/// Create + attach (mask) + map; returns (buffer, attachment, mapped).
fn buffer(
    pool: &mut Pool,
    size: u64,
    mask: u32,
) -> Result<(BufferId, AttachmentId, Mapped), Error> {
    let b = pool.create(size, 0, 0)?.id;
    let a = pool.attach(b, mask, &[SG])?.id;
    let m = pool.map(a, DIR)?;
    Ok((b, a, m))
}

fn leased(buffer_id: u32, attach_id: u32, size: u64, mask: u32, extent: u64) -> LeasedMap {
    LeasedMap {
        buffer_id,
        size,
        initial_mask: 0,
        attachments: vec![LeasedAttach {
            id: attach_id,
            mask,
            map_type: SG,
            importer_types: vec![SG],
        }],
        map_index: 0,
        direction: DIR,
        extent,
    }
}

// ------------------------------------------------------------ remove_regions

#[test]
fn free_memory_goes_back_and_the_region_splits() {
    let mut pool = pool();
    pool.remove_regions(SYSTEM_ALLOC, &[seg(8 * GIB + MIB, MIB)])
        .unwrap();
    let s = stats(&pool, SYSTEM_ALLOC);
    assert_eq!((s.capacity, s.free), (3 * MIB, 3 * MIB));
    let regions: Vec<(u64, u64)> = pool
        .snapshot()
        .regions
        .iter()
        .filter(|r| r.allocator == SYSTEM_ALLOC)
        .map(|r| (r.addr, r.len))
        .collect();
    assert_eq!(regions, vec![(8 * GIB, MIB), (8 * GIB + 2 * MIB, 2 * MIB)]);
    // Nothing is ever carved from it again: 3 MiB fit, 3 MiB + 1 page not.
    assert!(buffer(&mut pool, 3 * MIB, kinds::SYSTEM).is_ok());
    assert_eq!(pool.counters().regions_removed, 1);
    // The removed range can be donated again.
    pool.add_region(SYSTEM_ALLOC, 8 * GIB + MIB, MIB).unwrap();
}

#[test]
fn removal_is_all_or_nothing_and_refuses_memory_in_use() {
    let mut pool = pool();
    let (_, _, m) = buffer(&mut pool, 64 << 10, kinds::SYSTEM).unwrap();
    let used = m.segments[0];
    fails_unchanged(&mut pool, libc::EBUSY, |p| {
        p.remove_regions(SYSTEM_ALLOC, &[seg(8 * GIB + 2 * MIB, MIB), used])
    });
    // A lease counts as in use too.
    let stock = pool.lease(SYSTEM_ALLOC, PAGE, 1).unwrap();
    fails_unchanged(&mut pool, libc::EBUSY, |p| {
        p.remove_regions(SYSTEM_ALLOC, &stock)
    });
    // Memory of another allocator, or none at all.
    fails_unchanged(&mut pool, libc::ENOENT, |p| {
        p.remove_regions(SYSTEM_ALLOC, &[seg(GIB, PAGE)])
    });
    fails_unchanged(&mut pool, libc::ENOENT, |p| {
        p.remove_regions(SYSTEM_ALLOC, &[seg(8 * GIB + 3 * MIB, 2 * MIB)])
    });
    // Malformed: empty, unaligned, overlapping each other.
    fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.remove_regions(SYSTEM_ALLOC, &[seg(8 * GIB + 2 * MIB, 0)])
    });
    fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.remove_regions(SYSTEM_ALLOC, &[seg(8 * GIB + 2 * MIB + 1, PAGE)])
    });
    fails_unchanged(&mut pool, libc::EEXIST, |p| {
        p.remove_regions(
            SYSTEM_ALLOC,
            &[
                seg(8 * GIB + 2 * MIB, 2 * PAGE),
                seg(8 * GIB + 2 * MIB + PAGE, PAGE),
            ],
        )
    });
    fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.remove_regions(9, &[seg(8 * GIB + 2 * MIB, PAGE)])
    });
}

#[test]
fn a_range_may_span_adjacent_regions_of_one_allocator() {
    let mut pool = pool();
    pool.add_region(SYSTEM_ALLOC, 8 * GIB + 4 * MIB, MIB)
        .unwrap();
    pool.remove_regions(SYSTEM_ALLOC, &[seg(8 * GIB + 3 * MIB, 2 * MIB)])
        .unwrap();
    assert_eq!(stats(&pool, SYSTEM_ALLOC).capacity, 3 * MIB);
    // Adjacent memory of another allocator does not count as this one's.
    pool.add_region(CONTIG32_ALLOC, GIB + 2 * MIB, MIB).unwrap();
    fails_unchanged(&mut pool, libc::ENOENT, |p| {
        p.remove_regions(DMA32_ALLOC, &[seg(GIB + MIB, 2 * MIB)])
    });
}

// -------------------------------------------------------------------- leases

#[test]
fn a_lease_is_stock_not_free_and_keeps_an_eighth_free() {
    let mut pool = pool();
    let extents = pool.lease(SYSTEM_ALLOC, 64 << 10, 8).unwrap();
    assert_eq!(extents.len(), 8);
    let s = stats(&pool, SYSTEM_ALLOC);
    assert_eq!(s.leased, 8 * (64 << 10));
    assert_eq!(s.free, 4 * MIB - 8 * (64 << 10));
    assert_eq!(pool.stock(SYSTEM_ALLOC), {
        let mut e = extents.clone();
        e.sort();
        e
    });
    // The stock is capped by max_lease_bytes (2 MiB by default) ...
    let more = pool.lease(SYSTEM_ALLOC, MIB, 64).unwrap();
    assert_eq!(more.len(), 1, "2 MiB cap: 512 KiB + 1 MiB, not 2 more");
    // ... and by the reserve: the lease stops at an eighth of the capacity.
    let mut config = PoolConfig::default_layout();
    config.limits.max_lease_bytes = 64 * MIB;
    let mut big = Pool::new(config).unwrap();
    big.add_region(SYSTEM_ALLOC, 8 * GIB, 4 * MIB).unwrap();
    let all = big.lease(SYSTEM_ALLOC, 256 << 10, 64).unwrap();
    assert_eq!(all.len(), 14);
    assert_eq!(stats(&big, SYSTEM_ALLOC).free, 512 << 10);
    // No lease without max_lease_bytes.
    let mut config = PoolConfig::default_layout();
    config.limits.max_lease_bytes = 0;
    let mut none = Pool::new(config).unwrap();
    none.add_region(SYSTEM_ALLOC, 8 * GIB, 4 * MIB).unwrap();
    assert!(none.lease(SYSTEM_ALLOC, PAGE, 4).unwrap().is_empty());
}

#[test]
fn bad_leases_are_refused() {
    let mut pool = pool();
    for (size, count) in [
        (0, 1),
        (PAGE + 1, 1),
        (LEASE_MAX_EXTENT + PAGE, 1),
        (PAGE, 0),
        (PAGE, LEASE_MAX_COUNT + 1),
    ] {
        fails_unchanged(&mut pool, libc::EINVAL, |p| {
            p.lease(SYSTEM_ALLOC, size, count)
        });
    }
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.lease(7, PAGE, 1));
}

#[test]
fn only_unused_leased_extents_come_back() {
    let mut pool = pool();
    let extents = pool.lease(DMA32_ALLOC, PAGE, 4).unwrap();
    let before = stats(&pool, DMA32_ALLOC).free;
    // Unknown, wrong length, twice in one request, other allocator.
    fails_unchanged(&mut pool, libc::EPERM, |p| {
        p.lease_return(DMA32_ALLOC, &[seg(GIB + MIB, PAGE)])
    });
    fails_unchanged(&mut pool, libc::EPERM, |p| {
        p.lease_return(DMA32_ALLOC, &[seg(extents[0].addr, 2 * PAGE)])
    });
    fails_unchanged(&mut pool, libc::EPERM, |p| {
        p.lease_return(DMA32_ALLOC, &[extents[0], extents[0]])
    });
    fails_unchanged(&mut pool, libc::EPERM, |p| {
        p.lease_return(SYSTEM_ALLOC, &extents[..1])
    });
    pool.lease_return(DMA32_ALLOC, &extents[..2]).unwrap();
    assert_eq!(stats(&pool, DMA32_ALLOC).free, before + 2 * PAGE);
    fails_unchanged(&mut pool, libc::EPERM, |p| {
        p.lease_return(DMA32_ALLOC, &extents[..1])
    });
    assert_eq!(pool.counters().lease_returns, 2);
}

#[test]
fn a_leased_map_creates_attaches_and_maps_in_one_step() {
    let mut pool = pool();
    let extent = pool.lease(SYSTEM_ALLOC, 64 << 10, 1).unwrap()[0];
    let free = stats(&pool, SYSTEM_ALLOC).free;
    let id = DRIVER_ID_FIRST + 5;
    let mapped = pool
        .leased_map(&leased(id, id, 16 << 10, kinds::SYSTEM, extent.addr))
        .unwrap();
    assert_eq!(mapped.allocator, SYSTEM_ALLOC);
    assert_eq!(mapped.segments, vec![seg(extent.addr, 16 << 10)]);
    assert!(!mapped.newly_allocated, "zeroed at lease time");
    // The tail of the extent is free again, the stock is empty.
    let s = stats(&pool, SYSTEM_ALLOC);
    assert_eq!((s.free, s.leased, s.num_buffers), (free + (48 << 10), 0, 1));
    // The buffer lives with the driver's ids and behaves like any other.
    assert_eq!(pool.backing(id).unwrap(), &[seg(extent.addr, 16 << 10)][..]);
    pool.unmap(id, DIR).unwrap();
    pool.detach(id).unwrap();
    pool.free(id).unwrap();
    assert_eq!(stats(&pool, SYSTEM_ALLOC).free, 4 * MIB);
    assert_eq!(pool.counters().leased_maps, 1);
}

#[test]
fn hostile_leased_maps_are_refused_and_change_nothing() {
    let mut pool = pool();
    let extents = pool.lease(SYSTEM_ALLOC, PAGE, 2).unwrap();
    let dma = pool.lease(DMA32_ALLOC, PAGE, 1).unwrap()[0];
    let id = DRIVER_ID_FIRST;
    // Memory the device never leased.
    fails_unchanged(&mut pool, libc::EPERM, |p| {
        p.leased_map(&leased(id, id, PAGE, kinds::SYSTEM, 8 * GIB + 3 * MIB))
    });
    // Larger than the extent.
    fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.leased_map(&leased(id, id, 2 * PAGE, kinds::SYSTEM, extents[0].addr))
    });
    // The stock of an allocator the rule does not pick (system has room).
    fails_unchanged(&mut pool, libc::ESTALE, |p| {
        p.leased_map(&leased(id, id, PAGE, kinds::SYSTEM, dma.addr))
    });
    // Ids outside the driver's range, or the same id twice.
    fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.leased_map(&leased(7, id, PAGE, kinds::SYSTEM, extents[0].addr))
    });
    let mut two = leased(id, id + 1, PAGE, kinds::SYSTEM, extents[0].addr);
    two.attachments.push(two.attachments[0].clone());
    fails_unchanged(&mut pool, libc::EEXIST, |p| p.leased_map(&two));
    // A mapping type the device would not have negotiated.
    let mut contig = leased(id, id, PAGE, kinds::SYSTEM, extents[0].addr);
    contig.attachments[0].map_type = MappingType::Contiguous;
    contig.attachments[0].importer_types = vec![MappingType::Contiguous, SG];
    fails_unchanged(&mut pool, libc::EPROTO, |p| p.leased_map(&contig));
    // An empty access mask, a bad record index.
    let mut empty = leased(id, id, PAGE, kinds::SYSTEM, extents[0].addr);
    empty.initial_mask = kinds::DMA32;
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.leased_map(&empty));
    let mut index = leased(id, id, PAGE, kinds::SYSTEM, extents[0].addr);
    index.map_index = 1;
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.leased_map(&index));

    // Accepted once; the same extent reported again (leased twice) is not.
    pool.leased_map(&leased(id, id, PAGE, kinds::SYSTEM, extents[0].addr))
        .unwrap();
    fails_unchanged(&mut pool, libc::EEXIST, |p| {
        p.leased_map(&leased(id, id + 9, PAGE, kinds::SYSTEM, extents[1].addr))
    });
    fails_unchanged(&mut pool, libc::EPERM, |p| {
        p.leased_map(&leased(
            id + 1,
            id + 1,
            PAGE,
            kinds::SYSTEM,
            extents[0].addr,
        ))
    });
    // And a returned extent cannot be used either.
    pool.lease_return(SYSTEM_ALLOC, &extents[1..]).unwrap();
    fails_unchanged(&mut pool, libc::EPERM, |p| {
        p.leased_map(&leased(
            id + 1,
            id + 1,
            PAGE,
            kinds::SYSTEM,
            extents[1].addr,
        ))
    });
}

#[test]
fn a_map_whose_room_is_leased_fails_with_eagain_until_the_stock_is_back() {
    let mut pool = pool_with_stock(448 << 10);
    // A 128 KiB SYSTEM buffer: system has 64 KiB free + 448 KiB leased.
    let b = pool.create(128 << 10, 0, 0).unwrap().id;
    let a = pool.attach(b, kinds::SYSTEM, &[SG]).unwrap().id;
    assert_eq!(pool.chosen_allocator(b).unwrap(), Some(SYSTEM_ALLOC));
    let err = fails_unchanged(&mut pool, libc::EAGAIN, |p| p.map(a, DIR));
    assert!(matches!(err, Error::RoomLeased { allocator: 0, .. }));
    // The driver gives the stock back: the map lands where the rule said.
    let stock = pool.stock(SYSTEM_ALLOC);
    pool.lease_return(SYSTEM_ALLOC, &stock).unwrap();
    assert_eq!(pool.map(a, DIR).unwrap().allocator, SYSTEM_ALLOC);
}

/// The default pool, system filled so that 64 KiB are free and `stock`
/// bytes leased (in 64 KiB extents).
fn pool_with_stock(stock: u64) -> Pool {
    let mut config = PoolConfig::default_layout();
    config.limits.max_lease_bytes = 64 * MIB;
    let mut pool = Pool::new(config).unwrap();
    pool.add_region(SYSTEM_ALLOC, 8 * GIB, 4 * MIB).unwrap();
    pool.add_region(DMA32_ALLOC, GIB, 2 * MIB).unwrap();
    // Lease first (the reserve only looks at free space), then fill.
    let extents = pool
        .lease(SYSTEM_ALLOC, 64 << 10, (stock >> 16) as u32)
        .unwrap();
    assert_eq!(extents.len() as u64 * (64 << 10), stock);
    let fill = 4 * MIB - stock - (64 << 10);
    buffer(&mut pool, fill, kinds::SYSTEM).unwrap();
    assert_eq!(stats(&pool, SYSTEM_ALLOC).free, 64 << 10);
    pool
}

#[test]
fn without_stock_a_full_allocator_spills_over_as_before() {
    let mut pool = pool_with_stock(448 << 10);
    let stock = pool.stock(SYSTEM_ALLOC);
    pool.lease_return(SYSTEM_ALLOC, &stock).unwrap();
    buffer(&mut pool, 512 << 10, kinds::SYSTEM).unwrap();
    // system is full: a SYSTEM buffer goes to dma32, the next allocator.
    let (_, _, m) = buffer(&mut pool, 64 << 10, kinds::SYSTEM).unwrap();
    assert_eq!(m.allocator, DMA32_ALLOC);
}

#[test]
fn leased_stock_of_a_contiguous_allocator_serves_a_contiguous_buffer() {
    let mut pool = pool();
    let extent = pool.lease(CONTIG_ALLOC, PAGE, 1).unwrap()[0];
    let id = DRIVER_ID_FIRST;
    let mut req = leased(id, id, PAGE, kinds::CONTIG, extent.addr);
    req.attachments[0].map_type = MappingType::Contiguous;
    req.attachments[0].importer_types = vec![MappingType::Contiguous];
    let mapped = pool.leased_map(&req).unwrap();
    assert_eq!(mapped.map_type, MappingType::Contiguous);
    assert_eq!(pool.phys(id).unwrap(), seg(extent.addr, PAGE));
    // A CONTIG_DMA32 buffer: contig32 is the first allocator serving it.
    let extent = pool.lease(CONTIG32_ALLOC, PAGE, 1).unwrap()[0];
    let id = DRIVER_ID_FIRST + 1;
    let mapped = pool
        .leased_map(&leased(id, id, PAGE, kinds::CONTIG_DMA32, extent.addr))
        .unwrap();
    assert_eq!(mapped.allocator, CONTIG32_ALLOC);
}

// ------------------------------------------------------------------ property

/// Masks a device may have.
const MASKS: [u32; 8] = [
    kinds::SYSTEM,
    kinds::DMA32,
    kinds::CONTIG,
    kinds::CONTIG_DMA32,
    kinds::SYSTEM | kinds::DMA32,
    kinds::CONTIG | kinds::CONTIG_DMA32,
    kinds::ANY,
    kinds::DMA32 | kinds::CONTIG_DMA32,
];

#[derive(Clone, Debug)]
enum Op {
    /// A buffer: created, attached by one or two devices, first-mapped.
    Buffer {
        pages: u64,
        masks: (usize, Option<usize>),
        contiguous: bool,
    },
    Lease {
        allocator: usize,
        pages: u64,
        count: u32,
    },
    Return {
        allocator: usize,
        keep: usize,
    },
    Free {
        pick: usize,
    },
}

fn op(allocators: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop_oneof![6 => 1u64..5, 2 => 5u64..40], (0..MASKS.len(), proptest::option::of(0..MASKS.len())), any::<bool>())
            .prop_map(|(pages, masks, contiguous)| Op::Buffer { pages, masks, contiguous }),
        2 => (0..allocators, 1u64..5, 1u32..12)
            .prop_map(|(allocator, pages, count)| Op::Lease { allocator, pages, count }),
        1 => (0..allocators, 0usize..8).prop_map(|(allocator, keep)| Op::Return { allocator, keep }),
        3 => any::<usize>().prop_map(|pick| Op::Free { pick }),
    ]
}

/// A pool with little memory in every allocator, so that they fill up.
fn small(config: PoolConfig) -> Pool {
    let mut pool = Pool::new(config).unwrap();
    let bases = [8 * GIB, GIB, 16 * GIB, 2 * GIB];
    for (i, base) in bases
        .iter()
        .enumerate()
        .take(pool.config().allocators.len())
    {
        pool.add_region(i, *base, 96 * PAGE).unwrap();
        pool.add_region(i, *base + 128 * PAGE, 32 * PAGE).unwrap();
    }
    pool
}

fn lease_config(allocators: usize) -> PoolConfig {
    let mut config = PoolConfig::default_layout();
    config.allocators.truncate(allocators);
    config.limits.max_lease_bytes = 64 * PAGE;
    config
}

/// The driver's rule: the first allocator that serves a kind of the mask
/// at all (no state), and an extent of its stock that holds the buffer.
fn driver_lease(pool: &Pool, mask: u32, size: u64) -> Option<(usize, Segment)> {
    let allocator = pool
        .config()
        .allocators
        .iter()
        .position(|spec| spec.kinds & mask != 0)?;
    let extent = pool
        .stock(allocator)
        .into_iter()
        .filter(|e| e.len >= size)
        .min_by_key(|e| e.len)?;
    Some((allocator, extent))
}

/// An independent reference of the rule: the first allocator serving the
/// mask that would accept the allocation if its stock were free.
fn reference_choice(pool: &Pool, mask: u32, size: u64, single: bool) -> Option<usize> {
    let stats = pool.allocator_stats();
    (0..stats.len()).find(|&i| {
        if stats[i].kinds & mask == 0 {
            return false;
        }
        let mut free: Vec<Segment> = pool.free_extents(i);
        free.extend(pool.stock(i));
        free.sort();
        coalesce(&mut free);
        let align = stats[i].alloc_align;
        match stats[i].strategy {
            Carving::Scatter if !single => free.iter().map(|s| s.len).sum::<u64>() >= size,
            Carving::Scatter => free.iter().any(|s| s.len >= size),
            // Every candidate of a page-aligned allocator fits when it is
            // long enough (the default layout aligns contiguous
            // allocations to a page).
            Carving::Contiguous => {
                assert_eq!(align, PAGE);
                free.iter().any(|s| s.len >= size)
            }
        }
    })
}

/// Per allocator: capacity = free + stock + backing, and no byte is in two
/// of them.
fn check_accounting(pool: &Pool) {
    let snap = pool.snapshot();
    for stat in &snap.allocators {
        let backing: u64 = snap
            .buffers
            .iter()
            .filter(|b| b.allocator == Some(stat.id))
            .map(|b| b.size)
            .sum();
        assert_eq!(
            stat.capacity,
            stat.free + stat.leased + backing,
            "allocator {}",
            stat.id
        );
        let mut all: Vec<Segment> = pool.free_extents(stat.id);
        all.extend(pool.stock(stat.id));
        for b in snap.buffers.iter().filter(|b| b.allocator == Some(stat.id)) {
            all.extend(b.backing.iter().copied());
        }
        all.sort();
        for pair in all.windows(2) {
            assert!(pair[0].end() <= pair[1].addr, "{pair:?} overlap");
        }
    }
}

struct Driver {
    next_id: u32,
    live: Vec<(BufferId, Vec<AttachmentId>)>,
    leased_maps: usize,
}

impl Driver {
    fn new() -> Self {
        Driver {
            next_id: DRIVER_ID_FIRST,
            live: Vec::new(),
            leased_maps: 0,
        }
    }
}

/// What a buffer op did: the allocator (None: no room anywhere).
fn run_buffer(
    pool: &mut Pool,
    driver: &mut Driver,
    pages: u64,
    masks: (usize, Option<usize>),
    contiguous: bool,
    use_leases: bool,
) -> Option<usize> {
    let size = pages * PAGE;
    let types = if contiguous {
        vec![MappingType::Contiguous, SG]
    } else {
        vec![SG]
    };
    let mut device_masks = vec![MASKS[masks.0]];
    if let Some(m) = masks.1 {
        if MASKS[m] & MASKS[masks.0] != 0 {
            device_masks.push(MASKS[m]);
        }
    }
    let mask = device_masks.iter().fold(kinds::ANY, |a, m| a & m);

    if use_leases {
        if let Some((allocator, extent)) = driver_lease(pool, mask, size) {
            // The property: the non-leased path, on the same state, picks
            // the same allocator (or asks for this allocator's stock back).
            let mut twin = pool.clone();
            let b = twin.create(size, 0, 0).unwrap().id;
            let mut last = 0;
            for m in &device_masks {
                last = twin.attach(b, *m, &types).unwrap().id;
            }
            let single = twin
                .snapshot()
                .attachments
                .iter()
                .any(|a| a.buffer == b && a.map_type == MappingType::Contiguous);
            match twin.map(last, DIR) {
                Ok(m) => assert_eq!(m.allocator, allocator, "non-leased map went elsewhere"),
                Err(Error::RoomLeased { allocator: a, .. }) => assert_eq!(a, allocator),
                Err(e) => panic!("non-leased map of a leasable buffer failed: {e}"),
            }
            assert_eq!(
                reference_choice(pool, mask, size, single),
                Some(allocator),
                "the reference rule disagrees"
            );

            // The leased path itself must be accepted.
            let buffer_id = driver.next_id;
            driver.next_id += 1;
            let mut records = Vec::new();
            let mut negotiated = twin.snapshot().attachments;
            negotiated.retain(|a| a.buffer == b);
            for (m, n) in device_masks.iter().zip(&negotiated) {
                records.push(LeasedAttach {
                    id: driver.next_id,
                    mask: *m,
                    map_type: n.map_type,
                    importer_types: types.clone(),
                });
                driver.next_id += 1;
            }
            let ids = records.iter().map(|r| r.id).collect();
            let req = LeasedMap {
                buffer_id,
                size,
                initial_mask: 0,
                map_index: records.len() - 1,
                attachments: records,
                direction: DIR,
                extent: extent.addr,
            };
            let mapped = pool.leased_map(&req).expect("honest leased map refused");
            assert_eq!(mapped.allocator, allocator);
            driver.live.push((buffer_id, ids));
            driver.leased_maps += 1;
            return Some(allocator);
        }
    }

    let b = pool.create(size, 0, 0).unwrap().id;
    let mut ids = Vec::new();
    for m in &device_masks {
        ids.push(pool.attach(b, *m, &types).unwrap().id);
    }
    let last = *ids.last().unwrap();
    // The rule, computed independently of `Pool::choose` from the free
    // extents and the stock (giving the stock back changes no choice).
    let single = pool
        .snapshot()
        .attachments
        .iter()
        .any(|a| a.buffer == b && a.map_type == MappingType::Contiguous);
    let expected = reference_choice(pool, mask, size, single);
    let result = match pool.map(last, DIR) {
        Err(Error::RoomLeased { allocator, .. }) => {
            // The driver gives that allocator's stock back and maps again.
            assert_eq!(Some(allocator), expected, "EAGAIN from the wrong allocator");
            let stock = pool.stock(allocator);
            pool.lease_return(allocator, &stock).unwrap();
            pool.map(last, DIR)
        }
        other => other,
    };
    match result {
        Ok(m) => {
            assert_eq!(Some(m.allocator), expected, "the map broke the rule");
            driver.live.push((b, ids));
            Some(m.allocator)
        }
        Err(Error::OutOfMemory { .. }) => {
            assert_eq!(expected, None, "refused although an allocator had room");
            for a in ids {
                pool.detach(a).unwrap();
            }
            pool.free(b).unwrap();
            None
        }
        Err(e) => panic!("map failed: {e}"),
    }
}

fn free_one(pool: &mut Pool, driver: &mut Driver, pick: usize) {
    if driver.live.is_empty() {
        return;
    }
    let (b, ids) = driver.live.remove(pick % driver.live.len());
    let maps: Vec<(AttachmentId, [u32; 3])> = pool
        .snapshot()
        .attachments
        .iter()
        .filter(|a| a.buffer == b)
        .map(|a| (a.id, a.maps))
        .collect();
    for (a, counts) in maps {
        for (d, &n) in Direction::ALL.iter().zip(&counts) {
            for _ in 0..n {
                pool.unmap(a, *d).unwrap();
            }
        }
    }
    for a in ids {
        pool.detach(a).unwrap();
    }
    pool.free(b).unwrap();
}

fn run_ops(
    pool: &mut Pool,
    driver: &mut Driver,
    ops: &[Op],
    use_leases: bool,
) -> Vec<Option<usize>> {
    let mut choices = Vec::new();
    for op in ops {
        match *op {
            Op::Buffer {
                pages,
                masks,
                contiguous,
            } => choices.push(run_buffer(
                pool, driver, pages, masks, contiguous, use_leases,
            )),
            Op::Lease {
                allocator,
                pages,
                count,
            } if use_leases && allocator < pool.config().allocators.len() => {
                pool.lease(allocator, pages * PAGE, count).unwrap();
            }
            Op::Return { allocator, keep } if use_leases => {
                let stock = pool.stock(allocator);
                if stock.len() > keep {
                    pool.lease_return(allocator, &stock[keep..]).unwrap();
                }
            }
            Op::Free { pick } => free_one(pool, driver, pick),
            _ => {}
        }
        check_accounting(pool);
    }
    choices
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Leased and non-leased paths pick the same allocator: at every leased
    /// map, an ordinary map of the same buffer on the same state goes to
    /// the extent's allocator (or asks for its stock back), an independent
    /// reference of the rule agrees, and the model accepts the report.
    #[test]
    fn leased_and_ordinary_maps_pick_the_same_allocator(
        ops in proptest::collection::vec(op(4), 1..120),
    ) {
        let mut pool = small(lease_config(4));
        let mut driver = Driver::new();
        run_ops(&mut pool, &mut driver, &ops, true);
    }

    /// With scatter allocators (room is a byte count), the same operations
    /// with and without leases put every buffer in the same allocator.
    #[test]
    fn with_scatter_allocators_leasing_never_changes_a_choice(
        ops in proptest::collection::vec(op(2), 1..120),
    ) {
        let mut leasing = small(lease_config(2));
        let mut plain = small(lease_config(2));
        let with = run_ops(&mut leasing, &mut Driver::new(), &ops, true);
        let without = run_ops(&mut plain, &mut Driver::new(), &ops, false);
        prop_assert_eq!(with, without);
    }
}

#[test]
fn the_property_test_exercises_leased_maps() {
    // A fixed sequence that must take the leased path (guards against a
    // property test that never leases).
    let mut pool = small(lease_config(4));
    let mut driver = Driver::new();
    let ops = vec![
        Op::Lease {
            allocator: 0,
            pages: 2,
            count: 4,
        },
        Op::Buffer {
            pages: 1,
            masks: (0, None),
            contiguous: false,
        },
        Op::Buffer {
            pages: 2,
            masks: (6, Some(4)),
            contiguous: true,
        },
    ];
    run_ops(&mut pool, &mut driver, &ops, true);
    assert_eq!(driver.leased_maps, 2);
}

#[test]
fn the_model_s_lease_and_id_limits_are_the_protocol_s() {
    use crate::protocol::*;
    assert_eq!(LEASE_MAX_EXTENT, CENALLOC_LEASE_MAX_SIZE);
    assert_eq!(LEASE_MAX_COUNT, CENALLOC_MAX_LEASE);
    assert_eq!(DRIVER_ID_FIRST, CENALLOC_DRIVER_ID_FIRST);
    assert_eq!(super::DRIVER_ID_LAST, CENALLOC_BATCH_REF - 1);
}
