//! Property tests: random operation sequences against simple reference
//! models (a page bitmap for the allocators, a shadow of ids, masks and map
//! counts for the pool), with the pool's invariants checked after each step.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::config::Strategy as Carving;
use super::{
    kinds, Allocator, AttachmentId, BufferId, ContiguousAllocator, Direction, Error, Limits,
    MappingType, Pool, PoolConfig, ScatterAllocator, Segment, ID_BATCH_REF_BIT, PAGE_SIZE,
};

const PAGE: u64 = PAGE_SIZE;

// ---------------------------------------------------------------- allocators

#[derive(Clone, Debug)]
enum AllocOp {
    Alloc { pages: u64, single: bool },
    Free { pick: usize },
}

fn alloc_op() -> impl Strategy<Value = AllocOp> {
    prop_oneof![
        3 => (1u64..24, any::<bool>()).prop_map(|(pages, single)| AllocOp::Alloc { pages, single }),
        2 => any::<usize>().prop_map(|pick| AllocOp::Free { pick }),
    ]
}

/// Page-granular reference: `true` = free. Covers `[0, pages * PAGE)`.
struct Bitmap {
    free: Vec<bool>,
}

impl Bitmap {
    /// Maximal free runs (start page, pages), address order.
    fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < self.free.len() {
            if self.free[i] {
                let start = i;
                while i < self.free.len() && self.free[i] {
                    i += 1;
                }
                runs.push((start as u64, (i - start) as u64));
            } else {
                i += 1;
            }
        }
        runs
    }

    fn set(&mut self, seg: Segment, free: bool) {
        for page in seg.addr / PAGE..seg.end() / PAGE {
            assert_ne!(
                self.free[page as usize], free,
                "page {page} already in that state"
            );
            self.free[page as usize] = free;
        }
    }
}

/// Runs `ops` on an allocator with three regions (with gaps) inside the
/// first 256 pages, checking it against the bitmap after every step.
fn check_allocator(mut alloc: Box<dyn Allocator>, align_pages: u64, ops: &[AllocOp]) {
    let mut bitmap = Bitmap {
        free: vec![false; 256],
    };
    for (start, pages) in [(8u64, 40u64), (64, 100), (180, 60)] {
        alloc.add_region(start * PAGE, pages * PAGE).unwrap();
        bitmap.set(
            Segment {
                addr: start * PAGE,
                len: pages * PAGE,
            },
            true,
        );
    }
    let contiguous = alloc.strategy() == Carving::Contiguous;
    let mut live: Vec<Vec<Segment>> = Vec::new();
    for op in ops {
        match *op {
            AllocOp::Alloc { pages, single } => {
                let size = pages * PAGE;
                let runs = bitmap.runs();
                let free_pages: u64 = runs.iter().map(|r| r.1).sum();
                match alloc.alloc(size, single) {
                    Some(segs) => {
                        assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), size);
                        for pair in segs.windows(2) {
                            assert_ne!(pair[0].end(), pair[1].addr, "not coalesced");
                        }
                        if contiguous || single {
                            assert_eq!(segs.len(), 1);
                        }
                        if contiguous {
                            assert_eq!(segs[0].addr % (align_pages * PAGE), 0);
                        } else {
                            // Fewest segments: k = how many of the largest
                            // runs it takes to hold `pages`.
                            let mut lens: Vec<u64> = runs.iter().map(|r| r.1).collect();
                            lens.sort_unstable_by(|a, b| b.cmp(a));
                            let mut sum = 0;
                            let k = lens
                                .iter()
                                .take_while(|&&l| {
                                    let before = sum;
                                    sum += l;
                                    before < pages
                                })
                                .count();
                            assert_eq!(segs.len(), k, "not the fewest segments");
                        }
                        for seg in &segs {
                            assert_eq!(seg.addr % PAGE, 0);
                            bitmap.set(*seg, false); // panics on overlap
                        }
                        live.push(segs);
                    }
                    None => {
                        let largest = runs.iter().map(|r| r.1).max().unwrap_or(0);
                        if !contiguous && !single {
                            assert!(free_pages < pages, "scatter refused with room");
                        } else if align_pages == 1 {
                            assert!(largest < pages, "refused with a fitting extent");
                        } else {
                            // Aligned: no free run holds an aligned fit of
                            // size + align - 1 pages (the guaranteed one).
                            assert!(largest < pages + align_pages - 1);
                        }
                    }
                }
            }
            AllocOp::Free { pick } => {
                if !live.is_empty() {
                    let segs = live.swap_remove(pick % live.len());
                    alloc.free(&segs);
                    for seg in &segs {
                        bitmap.set(*seg, true);
                    }
                }
            }
        }
        let runs = bitmap.runs();
        let free_pages: u64 = runs.iter().map(|r| r.1).sum();
        assert_eq!(
            alloc.free_bytes(),
            free_pages * PAGE,
            "free space not conserved"
        );
        assert_eq!(alloc.capacity(), 200 * PAGE);
        assert_eq!(
            alloc.largest_free(),
            runs.iter().map(|r| r.1).max().unwrap_or(0) * PAGE
        );
        assert_eq!(
            alloc.free_extents(),
            runs.len(),
            "free extents not coalesced"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn scatter_allocator_matches_a_page_bitmap(ops in prop::collection::vec(alloc_op(), 1..80)) {
        check_allocator(Box::new(ScatterAllocator::new(u64::MAX, PAGE)), 1, &ops);
    }

    #[test]
    fn contiguous_allocator_matches_a_page_bitmap(ops in prop::collection::vec(alloc_op(), 1..80)) {
        check_allocator(Box::new(ContiguousAllocator::new(u64::MAX, PAGE, PAGE)), 1, &ops);
    }

    #[test]
    fn aligned_contiguous_allocator_matches_a_page_bitmap(ops in prop::collection::vec(alloc_op(), 1..80)) {
        check_allocator(Box::new(ContiguousAllocator::new(u64::MAX, PAGE, 4 * PAGE)), 4, &ops);
    }
}

// ---------------------------------------------------------------- pool

const MASKS: [u32; 10] = [
    kinds::SYSTEM,
    kinds::CONTIG,
    kinds::DMA32,
    kinds::CONTIG_DMA32,
    kinds::SYSTEM | kinds::DMA32,
    kinds::CONTIG | kinds::CONTIG_DMA32,
    kinds::ANY,
    kinds::DMA32 | kinds::CONTIG_DMA32,
    1 << 9,
    0,
];

fn importer_types(choice: usize) -> Vec<MappingType> {
    let private = MappingType::Private(0x8000);
    match choice % 6 {
        0 => vec![MappingType::ScatterGather],
        1 => vec![MappingType::Contiguous],
        2 => vec![MappingType::Contiguous, MappingType::ScatterGather],
        3 => vec![private],
        4 => vec![MappingType::ScatterGather, private],
        _ => vec![],
    }
}

#[derive(Clone, Debug)]
enum PoolOp {
    AddRegion {
        allocator: usize,
        high: bool,
        slot: u64,
        pages: u64,
    },
    Create {
        pages: u64,
        initial: usize,
    },
    Attach {
        pick: usize,
        mask: usize,
        types: usize,
    },
    Detach {
        pick: usize,
    },
    Map {
        pick: usize,
        dir: usize,
    },
    Unmap {
        pick: usize,
        dir: usize,
    },
    Free {
        pick: usize,
    },
    /// The driver's RESET: everything goes, ids keep counting.
    Clear,
}

fn pool_op() -> impl Strategy<Value = PoolOp> {
    prop_oneof![
        1 => (0usize..5, any::<bool>(), 0u64..8, 1u64..24)
            .prop_map(|(allocator, high, slot, pages)| PoolOp::AddRegion { allocator, high, slot, pages }),
        3 => (prop_oneof![8 => 1u64..5, 1 => 0u64..12], 0usize..10).prop_map(|(pages, initial)| PoolOp::Create { pages, initial }),
        6 => (any::<usize>(), 0usize..10, 0usize..6)
            .prop_map(|(pick, mask, types)| PoolOp::Attach { pick, mask, types }),
        2 => any::<usize>().prop_map(|pick| PoolOp::Detach { pick }),
        4 => (any::<usize>(), 0usize..3).prop_map(|(pick, dir)| PoolOp::Map { pick, dir }),
        3 => (any::<usize>(), 0usize..3).prop_map(|(pick, dir)| PoolOp::Unmap { pick, dir }),
        1 => any::<usize>().prop_map(|pick| PoolOp::Free { pick }),
        1 => Just(PoolOp::Clear),
    ]
}

/// Shadow of what the pool must remember, independent of allocation.
#[derive(Default)]
struct Shadow {
    buffers: BTreeMap<BufferId, ShadowBuffer>,
    attachments: BTreeMap<AttachmentId, ShadowAttachment>,
}

struct ShadowBuffer {
    size: u64,
    initial: u32,
    released: bool,
    attachments: Vec<AttachmentId>,
    backing: Option<(usize, Vec<Segment>)>,
}

struct ShadowAttachment {
    buffer: BufferId,
    mask: u32,
    map_type: MappingType,
    maps: [u32; 3],
}

impl Shadow {
    fn access_mask(&self, id: BufferId) -> u32 {
        let b = &self.buffers[&id];
        let base = if b.initial == 0 {
            kinds::ANY
        } else {
            b.initial
        };
        b.attachments
            .iter()
            .fold(base, |m, a| m & self.attachments[a].mask)
    }
}

/// Mostly a live id; sometimes any id ever handed out (maybe dead), or
/// one never handed out.
fn pick<V>(live: &BTreeMap<u32, V>, ever: &[u32], pick: usize) -> u32 {
    let (choice, index) = (pick % 20, pick / 20);
    if choice < 16 && !live.is_empty() {
        *live.keys().nth(index % live.len()).unwrap_or(&0)
    } else if choice < 19 && !ever.is_empty() {
        ever[index % ever.len()]
    } else {
        0x7fff_0000
    }
}

fn check_invariants(pool: &Pool, shadow: &Shadow) {
    let snap = pool.snapshot();
    let allocator_kinds: Vec<u32> = snap.allocators.iter().map(|a| a.kinds).collect();
    // Every backing inside a region of its allocator; no two overlap.
    let mut all: Vec<(Segment, BufferId)> = Vec::new();
    let mut used = vec![0u64; snap.allocators.len()];
    let mut count = vec![0u32; snap.allocators.len()];
    for b in &snap.buffers {
        let sb = &shadow.buffers[&b.id];
        assert_eq!(b.size, sb.size);
        assert_eq!(b.released, sb.released);
        assert_eq!(b.attachments, sb.attachments);
        assert_eq!(b.access_mask, shadow.access_mask(b.id), "access mask");
        assert_eq!(b.allocator, sb.backing.as_ref().map(|k| k.0));
        if let Some(allocator) = b.allocator {
            assert_eq!(Some(&b.backing), sb.backing.as_ref().map(|k| &k.1));
            assert_eq!(b.backing.iter().map(|s| s.len).sum::<u64>(), b.size);
            for pair in b.backing.windows(2) {
                assert_ne!(pair[0].end(), pair[1].addr, "backing not coalesced");
            }
            // Masks respected: the backing satisfies the access mask unless
            // a migration is pending.
            if !b.migrate_pending {
                assert_ne!(
                    allocator_kinds[allocator] & b.access_mask,
                    0,
                    "mask violated"
                );
            }
            for seg in &b.backing {
                assert!(
                    snap.regions.iter().any(|r| r.allocator == allocator
                        && r.addr <= seg.addr
                        && seg.end() <= r.addr + r.len),
                    "segment {seg:?} outside the regions of allocator {allocator}"
                );
                all.push((*seg, b.id));
            }
            used[allocator] += b.size;
            count[allocator] += 1;
            let contiguous_attachment = b
                .attachments
                .iter()
                .any(|a| shadow.attachments[a].map_type == MappingType::Contiguous);
            if contiguous_attachment && !b.migrate_pending {
                assert_eq!(
                    b.backing.len(),
                    1,
                    "contiguous attachment, scattered backing"
                );
            }
        } else {
            assert!(!b.migrate_pending);
        }
    }
    assert_eq!(snap.buffers.len(), shadow.buffers.len());
    all.sort();
    for pair in all.windows(2) {
        assert!(
            pair[0].0.end() <= pair[1].0.addr,
            "backings overlap: {pair:?}"
        );
    }
    // Free space conserved.
    for (i, a) in snap.allocators.iter().enumerate() {
        let donated: u64 = snap
            .regions
            .iter()
            .filter(|r| r.allocator == i)
            .map(|r| r.len)
            .sum();
        assert_eq!(a.capacity, donated);
        assert_eq!(
            a.capacity - a.free,
            used[i],
            "allocator {i} leaks or double-counts"
        );
        assert_eq!(a.num_buffers, count[i]);
        assert!(a.largest_free <= a.free);
    }
    assert_eq!(snap.counters.backing_bytes, used.iter().sum::<u64>());
    assert_eq!(
        snap.counters.total_bytes,
        shadow.buffers.values().map(|b| b.size).sum::<u64>()
    );
    // Attachments.
    assert_eq!(snap.attachments.len(), shadow.attachments.len());
    for a in &snap.attachments {
        let sa = &shadow.attachments[&a.id];
        assert_eq!(
            (a.buffer, a.mask, a.map_type, a.maps),
            (sa.buffer, sa.mask, sa.map_type, sa.maps)
        );
    }
    // Regions never overlap.
    for pair in snap.regions.windows(2) {
        assert!(pair[0].addr + pair[0].len <= pair[1].addr);
    }
}

fn small_pool() -> Pool {
    let mut config = PoolConfig::default_layout();
    config.limits = Limits {
        max_buffers: 12,
        max_attachments_per_buffer: 3,
        max_buffer_size: 8 * PAGE,
        max_total_bytes: 48 * PAGE,
        ..Limits::default()
    };
    config.exporter_types = vec![
        MappingType::Contiguous,
        MappingType::Private(0x8000),
        MappingType::ScatterGather,
    ];
    let mut pool = Pool::new(config).expect("valid config");
    // A little memory to start with, the rest comes from AddRegion.
    pool.add_region(0, 8 << 30, 8 * PAGE).unwrap();
    pool.add_region(3, 2 << 30, 8 * PAGE).unwrap();
    pool
}

fn run_pool_ops(ops: &[PoolOp]) {
    let mut pool = small_pool();
    let mut shadow = Shadow::default();
    let mut buffer_ids: Vec<BufferId> = Vec::new();
    let mut attachment_ids: Vec<AttachmentId> = Vec::new();
    let limits = pool.config().limits.clone();
    for op in ops {
        let before = pool.snapshot();
        let result: Result<(), Error> = match *op {
            PoolOp::AddRegion {
                allocator,
                high,
                slot,
                pages,
            } => {
                let base = if high { 8u64 << 30 } else { 1u64 << 30 };
                pool.add_region(allocator, base + slot * 16 * PAGE, pages * PAGE)
            }
            PoolOp::Create { pages, initial } => {
                let size = pages * PAGE;
                let initial = MASKS[initial];
                let r = pool.create(size, 0, initial);
                let expect_ok = size > 0
                    && size <= limits.max_buffer_size
                    && shadow.buffers.len() < limits.max_buffers as usize
                    && shadow.buffers.values().map(|b| b.size).sum::<u64>() + size
                        <= limits.max_total_bytes;
                assert_eq!(r.is_ok(), expect_ok, "create {r:?}");
                r.map(|c| {
                    assert!(c.id != 0 && c.id & ID_BATCH_REF_BIT == 0);
                    assert!(!shadow.buffers.contains_key(&c.id));
                    assert!(!buffer_ids.contains(&c.id), "buffer id {} reused", c.id);
                    buffer_ids.push(c.id);
                    shadow.buffers.insert(
                        c.id,
                        ShadowBuffer {
                            size,
                            initial,
                            released: false,
                            attachments: Vec::new(),
                            backing: None,
                        },
                    );
                })
            }
            PoolOp::Attach {
                pick: p,
                mask,
                types,
            } => {
                let id = pick(&shadow.buffers, &buffer_ids, p);
                let mask = MASKS[mask];
                let types = importer_types(types);
                let r = pool.attach(id, mask, &types);
                match shadow.buffers.get(&id) {
                    None => assert_eq!(r.as_ref().err(), Some(&Error::UnknownBuffer(id))),
                    Some(b) if b.released => {
                        assert_eq!(r.as_ref().err(), Some(&Error::BufferReleased(id)))
                    }
                    Some(_) if types.is_empty() => {
                        assert_eq!(r.as_ref().err(), Some(&Error::NoImporterTypes))
                    }
                    Some(b)
                        if b.attachments.len() >= limits.max_attachments_per_buffer as usize =>
                    {
                        assert_eq!(r.as_ref().unwrap_err().errno(), libc::ENOSPC)
                    }
                    Some(b) => {
                        let new_mask = shadow.access_mask(id) & mask;
                        if new_mask == 0 {
                            assert_eq!(r.as_ref().unwrap_err().errno(), libc::EINVAL);
                        } else if let Err(e) = &r {
                            match e.errno() {
                                libc::EBUSY => {
                                    let (allocator, _) =
                                        b.backing.as_ref().expect("EBUSY needs backing");
                                    assert_eq!(before.allocators[*allocator].kinds & new_mask, 0);
                                }
                                libc::EOPNOTSUPP => {}
                                _ => panic!("unexpected attach error {e}"),
                            }
                        }
                    }
                }
                r.map(|a| {
                    assert_eq!(a.access_mask, shadow.access_mask(id) & mask);
                    assert!(
                        !attachment_ids.contains(&a.id),
                        "attachment id {} reused",
                        a.id
                    );
                    attachment_ids.push(a.id);
                    assert!(types.contains(&a.map_type));
                    shadow.attachments.insert(
                        a.id,
                        ShadowAttachment {
                            buffer: id,
                            mask,
                            map_type: a.map_type,
                            maps: [0; 3],
                        },
                    );
                    shadow.buffers.get_mut(&id).unwrap().attachments.push(a.id);
                })
            }
            PoolOp::Detach { pick: p } => {
                let id = pick(&shadow.attachments, &attachment_ids, p);
                let r = pool.detach(id);
                match shadow.attachments.get(&id) {
                    None => assert_eq!(r, Err(Error::UnknownAttachment(id))),
                    Some(a) if a.maps.iter().any(|&n| n > 0) => {
                        assert_eq!(r, Err(Error::AttachmentMapped(id)))
                    }
                    Some(_) => assert_eq!(r, Ok(())),
                }
                r.map(|()| {
                    let a = shadow.attachments.remove(&id).unwrap();
                    let b = shadow.buffers.get_mut(&a.buffer).unwrap();
                    b.attachments.retain(|&x| x != id);
                    if b.released && b.attachments.is_empty() {
                        shadow.buffers.remove(&a.buffer);
                    }
                })
            }
            PoolOp::Map { pick: p, dir } => {
                let id = pick(&shadow.attachments, &attachment_ids, p);
                let dir = Direction::ALL[dir];
                let r = pool.map(id, dir);
                match shadow.attachments.get(&id) {
                    None => assert_eq!(r.as_ref().err(), Some(&Error::UnknownAttachment(id))),
                    Some(_) => {
                        if let Err(e) = &r {
                            assert_eq!(e.errno(), libc::ENOMEM, "{e}");
                        }
                    }
                }
                r.map(|m| {
                    let a = shadow.attachments.get_mut(&id).unwrap();
                    a.maps[dir.code() as usize] += 1;
                    assert_eq!(m.map_type, a.map_type);
                    if m.map_type == MappingType::Contiguous {
                        assert_eq!(m.segments.len(), 1);
                    }
                    let b = shadow.buffers.get_mut(&a.buffer).unwrap();
                    assert_eq!(m.size, b.size);
                    let old = b.backing.replace((m.allocator, m.segments.clone()));
                    assert_eq!(m.newly_allocated, old.is_none());
                    match (&old, &m.migrated_from) {
                        (Some((_, old_segs)), Some(from)) => assert_eq!(old_segs, from),
                        (Some((_, old_segs)), None) => assert_eq!(old_segs, &m.segments),
                        (None, from) => assert!(from.is_none()),
                    }
                    let mask = before
                        .buffers
                        .iter()
                        .find(|x| x.id == a.buffer)
                        .unwrap()
                        .access_mask;
                    assert_ne!(before.allocators[m.allocator].kinds & mask, 0);
                })
            }
            PoolOp::Unmap { pick: p, dir } => {
                let id = pick(&shadow.attachments, &attachment_ids, p);
                let dir = Direction::ALL[dir];
                let r = pool.unmap(id, dir);
                match shadow.attachments.get_mut(&id) {
                    None => assert_eq!(r, Err(Error::UnknownAttachment(id))),
                    Some(a) if a.maps[dir.code() as usize] == 0 => {
                        assert_eq!(
                            r,
                            Err(Error::NotMapped {
                                attachment: id,
                                direction: dir
                            })
                        )
                    }
                    Some(a) => {
                        assert_eq!(r, Ok(()));
                        a.maps[dir.code() as usize] -= 1;
                    }
                }
                r
            }
            PoolOp::Free { pick: p } => {
                let id = pick(&shadow.buffers, &buffer_ids, p);
                let r = pool.free(id);
                match shadow.buffers.get_mut(&id) {
                    None => assert_eq!(r, Err(Error::UnknownBuffer(id))),
                    Some(b) if b.released => assert_eq!(r, Err(Error::BufferReleased(id))),
                    Some(b) => {
                        assert_eq!(r, Ok(()));
                        b.released = true;
                        if b.attachments.is_empty() {
                            shadow.buffers.remove(&id);
                        }
                    }
                }
                r
            }
            PoolOp::Clear => {
                let r = pool.clear();
                assert_eq!(r, Ok(()));
                shadow = Shadow::default();
                let snap = pool.snapshot();
                assert!(snap.regions.is_empty() && snap.buffers.is_empty());
                assert_eq!(snap.next_buffer_id, before.next_buffer_id);
                r
            }
        };
        if result.is_err() {
            assert_eq!(pool.snapshot(), before, "failed {op:?} changed the pool");
        }
        check_invariants(&pool, &shadow);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pool_random_operations_keep_invariants(ops in prop::collection::vec(pool_op(), 1..100)) {
        run_pool_ops(&ops);
    }
}
